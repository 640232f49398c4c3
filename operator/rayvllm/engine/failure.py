"""What status and Events say about an engine from its log: why an attempt failed (the reason and the end
of its log) and, while it loads, its latest meaningful line. Secrets removed, bounded to what
EngineStatus.lastFailure and lastLogLine hold. Pure."""

from __future__ import annotations

import re
from collections.abc import Collection

from rayvllm.models.status import LOG_LINE_LIMIT

LOG_LINES_KEPT = 20
LAST_FAILURE_LIMIT = 4000
# Of an over-long failure, how much of its first line is kept before its end.
FAILURE_HEAD_KEPT = 400
REDACTED = "<redacted>"
ELLIPSIS = "..."
# Token shapes that must never travel from engine logs into status or Events, whoever's they are.
_REDACTIONS = (
    (re.compile(r"\bhf_[A-Za-z0-9]{6,}"), REDACTED),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), rf"\1{REDACTED}"),
    (
        re.compile(r"(?i)((?:api[_-]?key|token|password|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',]+"),
        rf"\1{REDACTED}",
    ),
)
# A line worth showing has a word outside what a progress bar prints around it: terminal colour codes,
# tqdm's "[elapsed<remaining, rate]" and Ray's "(Actor pid=N, ip=...)" prefix of a worker's line. What is
# left of a bare bar ("100%|######| 2/2") has no word; "Loading safetensors checkpoint shards: 50%" has.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NOT_WORDS = re.compile(r"\[[^\]]*\]|^\([^)]*pid=[^)]*\)")
_WORD = re.compile(r"[A-Za-z]{3,}")


def redact(text: str, secrets: Collection[str] = ()) -> str:
    """`text` without the values of the Secrets the operator read for this object (`secrets`: exact values,
    longest first so a value containing another goes whole) and without anything shaped like a token."""
    for value in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _tail(logs: str | None, lines: int) -> str:
    return "\n".join([line for line in (logs or "").splitlines() if line.strip()][-lines:])


def log_tail(logs: str | None, lines: int = LOG_LINES_KEPT, secrets: Collection[str] = ()) -> str:
    return redact(_tail(logs, lines), secrets)


def failure_text(reason: str, logs: str | None, secrets: Collection[str] = ()) -> str:
    """The reason, then the last log lines, all redacted (Ray's job message, part of the reason, quotes the
    log too). When too long, the start of its first line (what failed, e.g. Ray's "Task was killed due to
    the node running low on memory") and the end (the error a log ends with) are kept."""
    tail = _tail(logs, LOG_LINES_KEPT)
    text = redact(f"{reason}\n--- last log lines ---\n{tail}" if tail else reason, secrets)
    if len(text) <= LAST_FAILURE_LIMIT:
        return text
    head = text.split("\n", 1)[0][:FAILURE_HEAD_KEPT]
    if len(head) == FAILURE_HEAD_KEPT:
        head = head[: -len(ELLIPSIS)] + ELLIPSIS
    end = LAST_FAILURE_LIMIT - len(head) - len(ELLIPSIS) - 1
    return f"{head}\n{ELLIPSIS}{text[-end:]}"


def meaningful(line: str) -> bool:
    """Not blank and not a bare progress bar: see _NOT_WORDS."""
    return _WORD.search(_NOT_WORDS.sub("", line.strip())) is not None


def last_log_line(logs: str | None, secrets: Collection[str] = ()) -> str | None:
    """The last meaningful line of a log, redacted, then cut to LOG_LINE_LIMIT characters (its start kept:
    vLLM's level, time and source file come first). str.splitlines also splits at the carriage returns
    tqdm redraws its bar with, so each redraw counts as a line and only the latest one is seen. Redacting
    before cutting: a Secret value cut in two would no longer match. An indented line continues the one
    above it (the source line Python's warnings module echoes, a traceback frame), which says more, so it
    is passed over. None when no line is meaningful."""
    for raw in reversed((logs or "").splitlines()):
        line = _ANSI.sub("", raw)
        if line[:1].isspace():
            continue
        line = line.strip()
        if meaningful(line):
            line = redact(line, secrets)
            if len(line) > LOG_LINE_LIMIT:
                line = line[: LOG_LINE_LIMIT - len(ELLIPSIS)] + ELLIPSIS
            return line
    return None
