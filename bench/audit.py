"""API writes counted from the kube-apiserver's audit log.

The policy logs, at Metadata level (no bodies: cheap), only write verbs of the operator's ServiceAccount
group and of the admin user (KubeRay, kwok and the benchmark's kubectl share the admin identity; KubeRay's
share is told apart by user agent). Reads are not logged: at N=1000 they would multiply the log and, in
blocking mode, slow the requests being measured. Dry-run writes are logged like any other and counted
apart (their requestURI carries dryRun=All)."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
ADMIN_USER = "kubernetes-admin"


def policy(groups: Sequence[str], users: Sequence[str]) -> dict[str, Any]:
    """Writes of `groups` and `users` at Metadata level, nothing else. Only the ResponseComplete stage (and
    Panic): one event per request."""
    rules: list[dict[str, Any]] = []
    if groups:
        rules.append({"level": "Metadata", "userGroups": list(groups), "verbs": list(WRITE_VERBS)})
    if users:
        rules.append({"level": "Metadata", "users": list(users), "verbs": list(WRITE_VERBS)})
    rules.append({"level": "None"})
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived", "ResponseStarted"],
        "rules": rules,
    }


def write_policy(path: Path, groups: Sequence[str], users: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(policy(groups, users), indent=2))
    return path


@dataclass(frozen=True, slots=True)
class Write:
    t: float  # requestReceivedTimestamp, epoch seconds
    user: str
    agent: str
    verb: str
    resource: str  # "vllmclusters", "vllmclusters/status", "events", ...
    namespace: str
    code: int
    dry_run: bool

    @property
    def key(self) -> str:
        """How the tables name a kind of write: "patch vllmclusters/status", "create events (dry-run)"."""
        return f"{self.verb} {self.resource}" + (" (dry-run)" if self.dry_run else "")


def _write(event: dict[str, Any]) -> Write | None:
    if event.get("stage") not in ("ResponseComplete", "Panic"):
        return None
    ref = event.get("objectRef") or {}
    resource = str(ref.get("resource", "?"))
    if ref.get("subresource"):
        resource += f"/{ref['subresource']}"
    received = event.get("requestReceivedTimestamp") or event.get("stageTimestamp")
    if not isinstance(received, str):
        return None
    return Write(
        t=datetime.fromisoformat(received).timestamp(),
        user=str((event.get("user") or {}).get("username", "")),
        agent=str(event.get("userAgent", "")),
        verb=str(event.get("verb", "")),
        resource=resource,
        namespace=str(ref.get("namespace", "")),
        code=int((event.get("responseStatus") or {}).get("code") or 0),
        dry_run="dryRun=" in str(event.get("requestURI", "")),
    )


class AuditLog:
    """Reads the audit log incrementally (from the last offset: the file only grows)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writes: list[Write] = []
        self._offset = 0
        self._partial = b""

    def read(self) -> list[Write]:
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as f:
            f.seek(self._offset)
            data = self._partial + f.read()
            self._offset = f.tell()
            lines = data.split(b"\n")
            self._partial = lines.pop()  # an event still being written
            for line in lines:
                if line.strip():
                    write = _write(json.loads(line))
                    if write is not None:
                        self.writes.append(write)
        return self.writes

    def between(self, start: float, end: float, who: Callable[[Write], bool]) -> list[Write]:
        return [w for w in self.read() if start <= w.t < end and who(w)]


def by_user(username: str) -> Callable[[Write], bool]:
    return lambda w: w.user == username


def kuberay(write: Write) -> bool:
    """KubeRay's writes: the admin identity, not kubectl's or kwok's user agent."""
    agent = write.agent.lower()
    return write.user == ADMIN_USER and not agent.startswith(("kubectl", "kwok"))


def per_object_minute(writes: Sequence[Write], objects: int, seconds: float) -> dict[str, float]:
    """Writes per object per minute, by "verb resource", plus "total" and "failed" (HTTP code >= 400)."""
    scale = 60.0 / seconds / max(objects, 1)
    counts = Counter(w.key for w in writes)
    result = {key: round(n * scale, 3) for key, n in sorted(counts.items())}
    result["total"] = round(len(writes) * scale, 3)
    result["failed"] = round(sum(w.code >= 400 for w in writes) * scale, 3)
    return result
