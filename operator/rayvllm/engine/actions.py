"""What the supervisor may do about one engine replica in a pass: a small closed set of verdicts, each with
its reason and the record status keeps after it. Pure: engine.decide chooses one, the executor
(rayvllm.supervisor) carries it out. Where the outcome depends on I/O (a failed attempt's logs, whether a
submission created a job), the action holds everything else and a method finishes the record."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from rayvllm.engine.failure import failure_text
from rayvllm.engine.job import EngineRef
from rayvllm.events import Event
from rayvllm.models.status import EngineStatus
from rayvllm.reasons import EventReason


class Waiting(StrEnum):
    """Why an engine is left as it is this pass."""

    BUDGET_SPENT = "restartPolicy.maxRestarts is spent; the engine stays down until the spec changes"
    NOT_SUBMITTABLE = "the RayCluster is not ready or its GCS is not healthy"
    BACKOFF = "backing off before the next attempt"
    NO_FREE_SLOT = "no free engine slot in the Ray cluster"
    PENDING = "the Ray job is PENDING"
    PREVIOUS_ENDING = "the failed attempt's Ray job was stopped and has not ended in Ray yet"
    NO_ADDRESS = "the Ray job is RUNNING but where its API server listens is not known yet"
    FOREIGN_ADDRESS = "the Ray job is RUNNING on a host that is none of the object's pods: not probed"
    NOT_PROBED = "the Ray job is RUNNING but its engine was not probed"
    STARTING = "the engine is starting"
    REPLACEMENT_STARTING = "its replacement (upgradeStrategy RollingReplicas) is not ready yet: it serves on"
    SERVING = "the engine serves"


@dataclass(frozen=True)
class Wait:
    """Nothing to do; `record` has this pass's observations folded in."""

    record: EngineStatus
    why: Waiting


@dataclass(frozen=True)
class MarkReady:
    """The engine answered its probe for the first time since it was (re)started or fell ill."""

    record: EngineStatus

    @property
    def events(self) -> tuple[Event, ...]:
        return (
            Event(
                "Normal", EventReason.ENGINE_READY, f"engine {self.record.index}: ready at {self.record.url}"
            ),
        )


@dataclass(frozen=True)
class Unhealthy:
    """A once-ready engine fails its probe, still within settings.unhealthy_grace_seconds: out of the
    Service (not ready; after one late answer it serves on till the next probe, decide.serves_through) but
    not restarted yet."""

    record: EngineStatus
    detail: str


@dataclass(frozen=True)
class Submit:
    """Submit the Ray job `engine` names. Ray's client adopts an existing job of that id (created False)
    instead of submitting it twice, so a restarted operator finds the job it submitted before."""

    engine: EngineRef
    pending: EngineStatus
    """The record once submitted (or adopted)."""

    @property
    def event(self) -> Event:
        """Posted only when the submission created a job."""
        return Event(
            "Normal",
            EventReason.ENGINE_SUBMITTED,
            f"engine {self.pending.index}: submitted Ray job {self.pending.submission_id} "
            f"(attempt {self.pending.attempt})",
        )


@dataclass(frozen=True)
class _Failure:
    """The current attempt failed: the executor fetches its logs (for lastFailure) and stops what is left of
    its job, then keeps `after(logs)`."""

    failed: EngineStatus
    """The record of the failed attempt, this pass's observations folded in."""
    reason: str
    stop_job: bool
    """The job may still run in Ray (not terminal, or unknown to it)."""
    max_restarts: int
    secrets: frozenset[str] = field(default_factory=frozenset, repr=False, kw_only=True)
    """Values redacted from the logs kept in lastFailure (EngineContext.secrets); never in a repr."""

    @property
    def submission_id(self) -> str:
        assert self.failed.submission_id is not None, "only a submitted attempt can fail"
        return self.failed.submission_id

    def _failed_record(self, logs: str | None, **update: object) -> EngineStatus:
        return self.failed.model_copy(
            update={
                "ready": False,
                "last_failure": failure_text(
                    f"attempt {self.failed.attempt}: {self.reason}", logs, self.secrets
                ),
                "unhealthy_since": None,
                "url": None,
                # lastFailure tells the end of the attempt now.
                "last_log_line": None,
                "last_log_read_at": None,
                **update,
            }
        )


@dataclass(frozen=True)
class Restart(_Failure):
    """Schedule attempt+1 after an exponential backoff (restartPolicy)."""

    delay_seconds: int
    now: datetime

    @property
    def restart_after(self) -> datetime:
        return self.now + timedelta(seconds=self.delay_seconds)

    def after(self, logs: str | None) -> EngineStatus:
        return self._failed_record(
            logs,
            restarts=self.failed.restarts + 1,
            attempt=self.failed.attempt + 1,
            submission_id=None,
            restart_after=self.restart_after,
            # Ray may report a job that was stopped as live for a while (its node lost): the next attempt
            # waits for it to end.
            stopping_submission_id=self.failed.submission_id if self.stop_job else None,
        )

    @property
    def events(self) -> tuple[Event, ...]:
        message = (
            f"engine {self.failed.index}: {self.reason}; restart {self.failed.restarts + 1}/"
            f"{self.max_restarts} in {self.delay_seconds}s"
        )
        return (Event("Warning", EventReason.ENGINE_RESTARTING, message),)


@dataclass(frozen=True)
class GiveUp(_Failure):
    """The restart budget is spent: the engine stays down until the spec changes."""

    def after(self, logs: str | None) -> EngineStatus:
        return self._failed_record(logs, budget_exhausted=True)

    @property
    def events(self) -> tuple[Event, ...]:
        message = (
            f"engine {self.failed.index}: {self.reason}; restartPolicy.maxRestarts ({self.max_restarts}) "
            "spent, giving up"
        )
        return (Event("Warning", EventReason.ENGINE_FAILED, message),)


@dataclass(frozen=True)
class Retire:
    """Stop the engine's job for good (scale-down, suspend). Under upgradeStrategy Recreate a changed
    engine is retired too, and `replacement` is what to do with the new engine that takes its index."""

    record: EngineStatus
    why: str
    replacement: Submit | Wait | None = None

    @property
    def events(self) -> tuple[Event, ...]:
        index, sid = self.record.index, self.record.submission_id
        events = []
        if sid:
            events.append(
                Event(
                    "Normal",
                    EventReason.ENGINE_STOPPED,
                    f"{self.record.label}: stopped Ray job {sid} ({self.why})",
                )
            )
        if self.replacement is not None:
            events.append(
                Event(
                    "Normal",
                    EventReason.ENGINE_RECREATING,
                    f"engine {index}: settings changed, starting a new engine",
                )
            )
        return tuple(events)


@dataclass(frozen=True)
class Drain:
    """A scaled-down (or, under RollingReplicas, replaced) engine that served: out of the Service (not
    ready), its job still running, until in-flight requests had settings.drain_seconds to finish."""

    record: EngineStatus
    started: bool
    """This pass took it out of the Service."""
    drain_seconds: float
    why: str = "scaled down"

    @property
    def events(self) -> tuple[Event, ...]:
        if not self.started:
            return ()
        message = f"{self.record.label}: {self.why}; out of the Service, stopping in {self.drain_seconds:g}s"
        return (Event("Normal", EventReason.ENGINE_DRAINING, message),)


Action = Wait | MarkReady | Unhealthy | Submit | Restart | GiveUp | Retire | Drain


def takes_slot(action: Action) -> bool:
    """It submits a job, which takes an engine slot of the Ray cluster."""
    return isinstance(action, Submit) or (
        isinstance(action, Retire) and isinstance(action.replacement, Submit)
    )
