"""What status and Events say about a failed engine: the reason and the end of its log, secrets removed,
bounded to what EngineStatus.lastFailure holds. Pure."""

from __future__ import annotations

import re

LOG_LINES_KEPT = 20
LAST_FAILURE_LIMIT = 4000
# Token shapes that must never travel from engine logs into status or Events.
_REDACTIONS = (
    (re.compile(r"\bhf_[A-Za-z0-9]{6,}"), "<redacted>"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1<redacted>"),
    (
        re.compile(r"(?i)((?:api[_-]?key|token|password|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',]+"),
        r"\1<redacted>",
    ),
)


def redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def log_tail(logs: str | None, lines: int = LOG_LINES_KEPT) -> str:
    if not logs:
        return ""
    kept = [line for line in logs.splitlines() if line.strip()][-lines:]
    return redact("\n".join(kept))


def failure_text(reason: str, logs: str | None) -> str:
    """The reason, then the last log lines; the end is kept when too long (the error is at the end)."""
    tail = log_tail(logs)
    text = f"{reason}\n--- last log lines ---\n{tail}" if tail else reason
    return text if len(text) <= LAST_FAILURE_LIMIT else "..." + text[-(LAST_FAILURE_LIMIT - 3) :]
