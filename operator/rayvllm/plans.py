"""Pure decisions of the reconcile steps that are not the status or an engine's: which Secrets a spec
needs, what is wrong with them and when to look for a missing one again, and which pods must gain or lose the
serving label, and when a deletion has waited long enough. No I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from rayvllm.models.kube import SecretKeyRef
from rayvllm.models.spec import VLLMClusterSpec
from rayvllm.models.status import EngineStatus
from rayvllm.observed import PodView
from rayvllm.reasons import Reason
from rayvllm.status import Problem

# Something that was not there (a dashboard that does not answer, a Secret not yet created) is looked for
# again after 1, 2, 4, then every BACKOFF_LIMIT resyncs: at rest, 1000 objects waiting for their Secrets
# would otherwise cost the API server a GET each per resync and the operator most of its idle CPU.
BACKOFF_LIMIT = 4


def backoff_resyncs(failures: int) -> int:
    """How many resyncs to wait before looking again after `failures` misses in a row: 1, 2, 4, 4, ..."""
    return int(min(2 ** max(failures - 1, 0), BACKOFF_LIMIT))


@dataclass(frozen=True)
class Missing:
    """A Secret the last look did not find."""

    misses: int
    """Looks in a row that did not find it."""
    looked_at: datetime
    """When the last look was."""

    def wait_seconds(self, resync_seconds: float) -> float:
        """How long after the last look the next one is due."""
        return resync_seconds * backoff_resyncs(self.misses)


def after_look(previous: Missing | None, found: bool, now: datetime) -> Missing | None:
    """The record after a GET of the Secret: gone once found, else one more miss."""
    if found:
        return None
    return Missing((previous.misses if previous else 0) + 1, now)


def look_due(record: Missing | None, now: datetime, resync_seconds: float, jitter: float) -> bool:
    """Whether to GET the Secret in this pass. The loop spreads its wake-ups by up to `jitter` of the wait
    either way, so a pass that comes that much early looks too, rather than leaving the look to one more
    pass right after."""
    if record is None:
        return True
    elapsed = (now - record.looked_at).total_seconds()
    return elapsed >= record.wait_seconds(resync_seconds) * (1 - jitter)


def next_look_in(records: Iterable[Missing], now: datetime, resync_seconds: float) -> float | None:
    """Seconds until the soonest next look among `records` (0 when one is due); None without any."""
    waits = [r.wait_seconds(resync_seconds) - (now - r.looked_at).total_seconds() for r in records]
    return max(min(waits), 0.0) if waits else None


@dataclass(frozen=True)
class SecretUse:
    """A Secret key the spec references, and the field that references it (for messages)."""

    field: str
    ref: SecretKeyRef


def secret_uses(spec: VLLMClusterSpec) -> list[SecretUse]:
    uses: list[SecretUse] = []
    if spec.model.hf_token_secret_ref:
        uses.append(SecretUse("spec.model.hfTokenSecretRef", spec.model.hf_token_secret_ref))
    if spec.engine.api_key_secret_ref:
        uses.append(SecretUse("spec.engine.apiKeySecretRef", spec.engine.api_key_secret_ref))
    gcs = spec.ray.gcs_fault_tolerance
    if gcs is not None and gcs.redis_password_secret_ref is not None:
        uses.append(
            SecretUse("spec.ray.gcsFaultTolerance.redisPasswordSecretRef", gcs.redis_password_secret_ref)
        )
    return uses


def secret_problems(
    namespace: str, uses: Sequence[SecretUse], found: Mapping[str, Mapping[str, str] | None]
) -> list[Problem]:
    """`found` maps each referenced Secret's name to its data (None: it does not exist)."""
    problems = []
    for use in uses:
        data = found.get(use.ref.name)
        if data is None:
            problems.append(
                Problem(
                    Reason.SECRET_NOT_FOUND,
                    f"{use.field}: Secret {namespace}/{use.ref.name} does not exist: create it, or fix the reference",
                )
            )
        elif use.ref.key not in data:
            problems.append(
                Problem(
                    Reason.SECRET_NOT_FOUND,
                    f"{use.field}: Secret {namespace}/{use.ref.name} has no key {use.ref.key!r} "
                    f"(it has: {', '.join(sorted(data)) or 'none'})",
                )
            )
    return problems


def secret_values(uses: Sequence[SecretUse], found: Mapping[str, Mapping[str, str] | None]) -> frozenset[str]:
    """The values of the Secret keys the spec references, as read: what must never reach status or Events
    from an engine's log (rayvllm.engine.failure.redact)."""
    values = ((found.get(use.ref.name) or {}).get(use.ref.key) for use in uses)
    return frozenset(value for value in values if value)


def serving_changes(pods: Sequence[PodView], engines: Sequence[EngineStatus]) -> dict[str, bool]:
    """Pods whose serving label must change (True: add it, False: remove it). The Service routes to
    exactly the pods that host a ready engine's API server."""
    serving = {e.pod_name for e in engines if e.ready and e.pod_name}
    return {pod.name: pod.name in serving for pod in pods if (pod.name in serving) != pod.serving}


def deletion_overdue(deletion_timestamp: str | None, now: datetime, deadline_seconds: float) -> bool:
    """`deadline_seconds` have passed since the object's metadata.deletionTimestamp (RFC 3339, as the API
    server writes it). A timestamp that does not parse never makes a deletion overdue."""
    if not deletion_timestamp:
        return False
    try:
        since = datetime.fromisoformat(deletion_timestamp)
    except ValueError:
        return False
    return (now - since).total_seconds() >= deadline_seconds


def left_behind(ref: str, submission_ids: Iterable[str]) -> str:
    """What a finalizer released before every engine job was known to be stopped may leave behind."""
    ids = sorted(set(submission_ids))
    jobs = f"Ray job(s) {', '.join(ids)}" if ids else "Ray jobs of this VLLMCluster"
    return (
        f"{jobs} of {ref} may still run until its Ray pods are gone (the garbage collector deletes its "
        "RayCluster now); with GCS fault tolerance their records stay in the external Redis"
    )
