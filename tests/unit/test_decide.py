"""The engine supervisor's decision table (rayvllm.engine.decide), with no Ray and no engine: every verdict
for one replica, the slot plan across replicas, and when to look again."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rayvllm.engine.actions import (
    Action,
    Drain,
    GiveUp,
    MarkReady,
    Restart,
    Retire,
    Submit,
    Unhealthy,
    Wait,
    Waiting,
)
from rayvllm.engine.context import EngineContext
from rayvllm.engine.decide import (
    JOB_GONE,
    RETIRED_RECREATED,
    RETIRED_SCALED_DOWN,
    RETIRED_SUSPENDED,
    Observed,
    answered_late,
    decide,
    engine_base_url,
    foreign_address,
    free_engine_slots,
    judge_without_ray,
    leaving_records,
    logs_due,
    observed_submission,
    plan_replicas,
    probe_address,
    replica_records,
    requeue_after,
    watched,
)
from rayvllm.engine.failure import LAST_FAILURE_LIMIT
from rayvllm.engine.job import EngineRef, submission_id
from rayvllm.engine.probe import EngineProbe, EngineState
from rayvllm.events import Event
from rayvllm.identity import ClusterRef
from rayvllm.models import EngineStatus, VLLMClusterSpec
from rayvllm.models.rayapi import ClusterResources, JobInfo, RayNode
from rayvllm.placement import ENGINE_SLOT_RESOURCE
from rayvllm.reasons import EventReason
from rayvllm.settings import Settings

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
REF = ClusterRef("team-a", "llm", "uid-1", generation=3)
POD_IP, POD = "10.0.0.7", "llm-gpu-0"
SETTINGS = Settings(
    unhealthy_grace_seconds=30,
    drain_seconds=5,
    starting_probe_seconds=1.5,
    engine_host_override=None,
)
MAX_RESTARTS = 3
STARTUP_TIMEOUT = 600


def make_spec(**changes: Any) -> VLLMClusterSpec:
    body: dict[str, Any] = {
        "model": {"source": "hf://org/model"},
        "ray": {"image": "img"},
        "replicas": 2,
        "engine": {"startupTimeoutSeconds": STARTUP_TIMEOUT},
        "restartPolicy": {"maxRestarts": MAX_RESTARTS, "backoffSeconds": 10, "maxBackoffSeconds": 60},
    }
    body.update(changes)
    return VLLMClusterSpec.model_validate(body)


def make_ctx(now: datetime = NOW, **spec_changes: Any) -> EngineContext:
    return EngineContext(REF, make_spec(**spec_changes), SETTINGS, now, pod_by_ip={POD_IP: POD})


CTX = make_ctx()


def sid(index: int = 0, attempt: int = 0, generation: int = 3) -> str:
    return submission_id(EngineRef(REF.namespace, REF.name, index, generation, attempt))


def fresh(index: int = 0, **fields: Any) -> EngineStatus:
    """A replica that has no job: new, or backing off after a failure."""
    return EngineStatus.model_validate(
        {"index": index, "generation": 3, "config_hash": CTX.config_hash, **fields}
    )


def submitted(index: int = 0, attempt: int = 0, **fields: Any) -> EngineStatus:
    """A replica whose job was submitted a minute ago and has not served yet."""
    base: dict[str, Any] = {
        "submission_id": sid(index, attempt),
        "attempt": attempt,
        "restarts": attempt,
        "job_status": "PENDING",
        "started_at": NOW - timedelta(seconds=60),
    }
    return fresh(index, **{**base, **fields})


def serving(index: int = 0, **fields: Any) -> EngineStatus:
    """A replica that has served for long: past its startup timeout, so only the unhealthy grace applies."""
    base: dict[str, Any] = {
        "job_status": "RUNNING",
        "ready": True,
        "url": f"http://{POD_IP}:8000/v1",
        "pod_name": POD,
        "started_at": NOW - timedelta(hours=2),
        "health": "Ready",
    }
    return submitted(index, **{**base, **fields})


def job(
    status: str = "RUNNING", message: str | None = None, ip: str | None = POD_IP, index: int = 0
) -> JobInfo:
    return JobInfo.model_validate(
        {
            "submission_id": sid(index),
            "status": status,
            "message": message,
            "driver_agent_http_address": f"http://{ip}:52365" if ip else None,
        }
    )


def probe(state: EngineState) -> EngineProbe:
    return EngineProbe(state, f"probe says {state.value}")


READY = probe(EngineState.READY)
STARTING = probe(EngineState.STARTING)
API_KEY = "sk-the-engines-api-key"
SECRET_CTX = replace(CTX, secrets=frozenset({API_KEY, "hf_held0token0value"}))


# ---- the table ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    record: EngineStatus
    expect: type[Action]
    job: JobInfo | None = None
    probe: EngineProbe | None = None
    ctx: EngineContext = CTX
    may_submit: bool = True
    slot_free: bool = True
    logs: str | None = None
    why: Waiting | str | None = None
    """Wait: its Waiting; failures: a part of the reason; Retire: why."""
    kept: dict[str, Any] = field(default_factory=dict)
    """Fields of the record status keeps after the action (logs of a failure: none)."""


def kept_record(action: Action) -> EngineStatus | None:
    match action:
        case Wait() | MarkReady() | Unhealthy() | Drain():
            return action.record
        case Submit():
            return action.pending
        case Restart() | GiveUp():
            return action.after(None)
        case Retire():
            return kept_record(action.replacement) if action.replacement else None


def reason_of(action: Action) -> str | None:
    match action:
        case Wait():
            return action.why
        case Restart() | GiveUp():
            return action.reason
        case Retire():
            return action.why
        case _:
            return None


CASES = {
    # -- submission and its gates
    "new-engine-submits": Case(
        fresh(),
        Submit,
        kept={"submission_id": sid(0, 0), "job_status": None, "started_at": NOW, "ready": False},
    ),
    "submit-needs-may-submit": Case(fresh(), Wait, may_submit=False, why=Waiting.NOT_SUBMITTABLE),
    "submit-needs-a-free-slot": Case(fresh(), Wait, slot_free=False, why=Waiting.NO_FREE_SLOT),
    "backoff-not-over-waits": Case(
        fresh(attempt=1, restarts=1, restart_after=NOW + timedelta(seconds=5)), Wait, why=Waiting.BACKOFF
    ),
    "backoff-over-submits-next-attempt": Case(
        fresh(attempt=1, restarts=1, restart_after=NOW - timedelta(seconds=1), health="Unhealthy"),
        Submit,
        kept={"submission_id": sid(0, 1), "restart_after": None, "restarts": 1, "health": None},
    ),
    "backoff-ends-at-restart-after": Case(fresh(attempt=1, restart_after=NOW), Submit),
    # The failed attempt's job was stopped but Ray still reports it live (its node lost, not noticed yet):
    # the next attempt waits for it, so the replica never has two live jobs; then it goes, clearing it.
    "previous-job-still-live-waits": Case(
        fresh(attempt=1, restart_after=NOW - timedelta(seconds=30), stopping_submission_id=sid(0, 0)),
        Wait,
        job=job("RUNNING"),
        why=Waiting.PREVIOUS_ENDING,
        kept={"stopping_submission_id": sid(0, 0), "submission_id": None},
    ),
    "previous-job-ended-submits": Case(
        fresh(attempt=1, restart_after=NOW - timedelta(seconds=30), stopping_submission_id=sid(0, 0)),
        Submit,
        job=job("FAILED"),
        kept={"submission_id": sid(0, 1), "stopping_submission_id": None},
    ),
    "previous-job-unknown-to-ray-submits": Case(
        fresh(attempt=1, restart_after=NOW, stopping_submission_id=sid(0, 0)), Submit, job=None
    ),
    "previous-job-live-past-the-timeout-submits": Case(
        fresh(attempt=1, restart_after=NOW - timedelta(minutes=2), stopping_submission_id=sid(0, 0)),
        Submit,
        job=job("RUNNING"),
    ),
    "backoff-comes-before-the-previous-job": Case(
        fresh(attempt=1, restart_after=NOW + timedelta(seconds=5), stopping_submission_id=sid(0, 0)),
        Wait,
        job=job("RUNNING"),
        why=Waiting.BACKOFF,
    ),
    "budget-spent-never-submits": Case(fresh(budget_exhausted=True), Wait, why=Waiting.BUDGET_SPENT),
    "given-up-engine-is-not-judged-again": Case(
        submitted(attempt=MAX_RESTARTS, job_status="FAILED", budget_exhausted=True),
        Wait,
        job=job("FAILED"),
        why=Waiting.BUDGET_SPENT,
        kept={"submission_id": sid(0, MAX_RESTARTS), "budget_exhausted": True},
    ),
    "submit-keeps-generation-of-record": Case(
        fresh(generation=2), Submit, kept={"submission_id": sid(0, 0, generation=2)}
    ),
    # -- adoption: a record with a submission id is watched, never submitted again
    "adopt-running-job": Case(
        submitted(),
        Wait,
        job=job("RUNNING"),
        probe=STARTING,
        why=Waiting.STARTING,
        kept={"submission_id": sid(0, 0), "job_status": "RUNNING", "health": "Starting", "pod_name": POD},
    ),
    "adopt-pending-job": Case(
        submitted(), Wait, job=job("PENDING"), why=Waiting.PENDING, kept={"submission_id": sid(0, 0)}
    ),
    "adopt-even-without-may-submit": Case(
        submitted(), Wait, job=job("PENDING"), may_submit=False, slot_free=False, why=Waiting.PENDING
    ),
    # -- the job is gone or over: restart
    "job-gone-restarts": Case(
        submitted(job_status="RUNNING"),
        Restart,
        job=None,
        why=JOB_GONE,
        kept={
            "submission_id": None,
            "attempt": 1,
            "restarts": 1,
            "restart_after": NOW + timedelta(seconds=10),
        },
    ),
    "job-failed-restarts": Case(
        submitted(),
        Restart,
        job=job("FAILED", "exit code 1"),
        why="Ray job FAILED: exit code 1",
        kept={"job_status": "FAILED", "ready": False, "url": None},
    ),
    "job-stopped-restarts": Case(submitted(), Restart, job=job("STOPPED"), why="Ray job STOPPED"),
    "job-succeeded-restarts": Case(serving(), Restart, job=job("SUCCEEDED"), why="Ray job SUCCEEDED"),
    # -- startup timeout (only for an attempt that never served)
    "pending-within-startup-timeout-waits": Case(submitted(), Wait, job=job("PENDING"), why=Waiting.PENDING),
    "pending-too-long-restarts": Case(
        submitted(started_at=NOW - timedelta(seconds=STARTUP_TIMEOUT + 1)),
        Restart,
        job=job("PENDING"),
        why="Ray job still PENDING after startupTimeoutSeconds: no resources?",
    ),
    "pending-exactly-at-startup-timeout-waits": Case(
        submitted(started_at=NOW - timedelta(seconds=STARTUP_TIMEOUT)),
        Wait,
        job=job("PENDING"),
        why=Waiting.PENDING,
    ),
    "running-not-ready-too-long-restarts": Case(
        submitted(job_status="RUNNING", started_at=NOW - timedelta(seconds=STARTUP_TIMEOUT + 1)),
        Restart,
        job=job("RUNNING"),
        probe=STARTING,
        why=f"not ready within startupTimeoutSeconds ({STARTUP_TIMEOUT}s): probe says Starting",
        kept={"pod_name": POD, "url": None, "health": "Starting"},
    ),
    "running-late-but-ready-is-ready": Case(
        submitted(job_status="RUNNING", started_at=NOW - timedelta(seconds=STARTUP_TIMEOUT + 1)),
        MarkReady,
        job=job("RUNNING"),
        probe=READY,
    ),
    "running-without-address-waits": Case(
        submitted(), Wait, job=job("RUNNING", ip=None), why=Waiting.NO_ADDRESS
    ),
    "running-not-probed-waits": Case(submitted(), Wait, job=job("RUNNING"), why=Waiting.NOT_PROBED),
    "model-not-served-is-still-starting": Case(
        submitted(),
        Wait,
        job=job("RUNNING"),
        probe=probe(EngineState.MODEL_NOT_SERVED),
        why=Waiting.STARTING,
        kept={"health": "ModelNotServed", "ready": False},
    ),
    "unauthorized-is-still-starting": Case(
        submitted(),
        Wait,
        job=job("RUNNING"),
        probe=probe(EngineState.UNAUTHORIZED),
        why=Waiting.STARTING,
        kept={"health": "Unauthorized"},
    ),
    # -- ready
    "first-ready-probe-marks-ready": Case(
        submitted(),
        MarkReady,
        job=job("RUNNING"),
        probe=READY,
        kept={"ready": True, "url": f"http://{POD_IP}:8000/v1", "pod_name": POD, "health": "Ready"},
    ),
    "ready-stays-ready": Case(serving(), Wait, job=job("RUNNING"), probe=READY, why=Waiting.SERVING),
    "recovered-within-grace-is-ready-again": Case(
        serving(ready=False, unhealthy_since=NOW - timedelta(seconds=10)),
        MarkReady,
        job=job("RUNNING"),
        probe=READY,
        kept={"ready": True, "unhealthy_since": None},
    ),
    # -- unhealthy grace (a once-ready engine; its startup timeout is long past and does not apply)
    "ready-turns-unhealthy": Case(
        serving(),
        Unhealthy,
        job=job("RUNNING"),
        probe=probe(EngineState.UNHEALTHY),
        kept={"ready": False, "unhealthy_since": NOW, "health": "Unhealthy"},
    ),
    # One late answer (a probe timed out after one that answered) may be a busy engine: it serves on until
    # the next probe; a second in a row takes it out.
    "ready-answers-late-once-serves-on": Case(
        serving(),
        Unhealthy,
        job=job("RUNNING"),
        probe=probe(EngineState.UNRESPONSIVE),
        kept={"ready": True, "unhealthy_since": NOW, "health": "Unresponsive"},
    ),
    "ready-answers-late-twice-leaves": Case(
        serving(health="Unresponsive", unhealthy_since=NOW - timedelta(seconds=6)),
        Unhealthy,
        job=job("RUNNING"),
        probe=probe(EngineState.UNRESPONSIVE),
        kept={"ready": False, "unhealthy_since": NOW - timedelta(seconds=6), "health": "Unresponsive"},
    ),
    "ready-answers-late-then-well-is-serving": Case(
        serving(health="Unresponsive", unhealthy_since=NOW - timedelta(seconds=6)),
        Wait,
        job=job("RUNNING"),
        probe=READY,
        why=Waiting.SERVING,
        kept={"ready": True, "unhealthy_since": None, "health": "Ready"},
    ),
    "unhealthy-within-grace-keeps-its-start": Case(
        serving(ready=False, unhealthy_since=NOW - timedelta(seconds=29)),
        Unhealthy,
        job=job("RUNNING"),
        probe=probe(EngineState.UNRESPONSIVE),
        kept={"unhealthy_since": NOW - timedelta(seconds=29), "health": "Unresponsive"},
    ),
    "unhealthy-past-grace-restarts": Case(
        serving(ready=False, unhealthy_since=NOW - timedelta(seconds=30)),
        Restart,
        job=job("RUNNING"),
        probe=probe(EngineState.UNRESPONSIVE),
        why="engine unhealthy for over 30s: probe says Unresponsive",
        kept={"unhealthy_since": None, "ready": False, "attempt": 1},
    ),
    # -- restart budget and backoff
    "last-restart-of-budget": Case(
        submitted(attempt=MAX_RESTARTS - 1),
        Restart,
        job=job("FAILED"),
        kept={"restarts": MAX_RESTARTS, "restart_after": NOW + timedelta(seconds=40)},
    ),
    "budget-exactly-spent-gives-up": Case(
        submitted(attempt=MAX_RESTARTS),
        GiveUp,
        job=job("FAILED"),
        why="Ray job FAILED",
        kept={
            "budget_exhausted": True,
            "restarts": MAX_RESTARTS,
            "attempt": MAX_RESTARTS,
            "submission_id": sid(0, MAX_RESTARTS),
            "restart_after": None,
        },
    ),
    "backoff-is-capped": Case(
        submitted(attempt=2),
        Restart,
        job=job("FAILED"),
        ctx=make_ctx(restartPolicy={"maxRestarts": 9, "backoffSeconds": 10, "maxBackoffSeconds": 25}),
        kept={"restart_after": NOW + timedelta(seconds=25)},
    ),
    # -- scale-down
    "scaled-down-serving-engine-drains": Case(
        serving(index=2),
        Drain,
        kept={"ready": False, "draining_since": NOW, "submission_id": sid(2, 0)},
    ),
    "draining-engine-keeps-draining": Case(
        serving(index=2, ready=False, draining_since=NOW - timedelta(seconds=4)),
        Drain,
        kept={"draining_since": NOW - timedelta(seconds=4)},
    ),
    "drained-engine-retires": Case(
        serving(index=2, ready=False, draining_since=NOW - timedelta(seconds=5)),
        Retire,
        why=RETIRED_SCALED_DOWN,
    ),
    "never-served-engine-retires-at-once": Case(submitted(index=2), Retire, why=RETIRED_SCALED_DOWN),
    "engine-without-pod-retires-at-once": Case(
        serving(index=2, pod_name=None), Retire, why=RETIRED_SCALED_DOWN
    ),
    # -- suspend
    "suspend-retires-a-serving-engine": Case(
        serving(), Retire, ctx=make_ctx(suspend=True), why=RETIRED_SUSPENDED
    ),
    "suspend-retires-a-waiting-engine": Case(
        fresh(restart_after=NOW + timedelta(seconds=5)),
        Retire,
        ctx=make_ctx(suspend=True),
        why=RETIRED_SUSPENDED,
    ),
    # -- engine settings changed (upgradeStrategy Recreate)
    "settings-changed-recreates": Case(
        serving(config_hash="old", generation=2, attempt=2, restarts=2, budget_exhausted=False),
        Retire,
        job=job("RUNNING"),
        probe=READY,
        why=RETIRED_RECREATED,
        kept={
            "submission_id": sid(0, 0, generation=3),
            "generation": 3,
            "restarts": 0,
            "ready": False,
            "config_hash": CTX.config_hash,
        },
    ),
    "recreate-resets-a-spent-budget": Case(
        fresh(config_hash="old", budget_exhausted=True, restarts=3),
        Retire,
        why=RETIRED_RECREATED,
        kept={"budget_exhausted": False, "restarts": 0, "job_status": None},
    ),
    # -- progress: the loading engine's log line and the time to ready
    "submission-starts-without-progress": Case(
        fresh(attempt=1, restart_after=NOW, load_seconds=30, last_log_line="old", last_log_read_at=NOW),
        Submit,
        kept={"job_status": None, "load_seconds": None, "last_log_line": None, "last_log_read_at": None},
    ),
    "loading-engine-keeps-its-latest-log-line": Case(
        submitted(),
        Wait,
        job=job("RUNNING"),
        probe=STARTING,
        ctx=SECRET_CTX,
        logs=f"INFO downloading\nINFO loading model with key {API_KEY}\n\n",
        why=Waiting.STARTING,
        kept={"last_log_line": "INFO loading model with key <redacted>", "last_log_read_at": NOW},
    ),
    "log-read-before-the-address-is-known": Case(
        submitted(),
        Wait,
        job=job("RUNNING", ip=None),
        logs="INFO starting\n",
        why=Waiting.NO_ADDRESS,
        kept={"last_log_line": "INFO starting", "last_log_read_at": NOW},
    ),
    "log-not-read-keeps-the-last-line": Case(
        submitted(last_log_line="INFO earlier", last_log_read_at=NOW - timedelta(seconds=10)),
        Wait,
        job=job("RUNNING"),
        probe=STARTING,
        kept={"last_log_line": "INFO earlier", "last_log_read_at": NOW - timedelta(seconds=10)},
    ),
    "log-without-a-meaningful-line": Case(
        submitted(last_log_line="INFO earlier"),
        Wait,
        job=job("RUNNING"),
        probe=STARTING,
        logs="\n100%|#####| 2/2 [00:01<00:00]\n",
        kept={"last_log_line": None, "last_log_read_at": NOW},
    ),
    "first-ready-fixes-load-seconds-from-submission-and-drops-the-log-line": Case(
        submitted(last_log_line="INFO loading", last_log_read_at=NOW - timedelta(seconds=5)),
        MarkReady,
        job=job("RUNNING"),
        probe=READY,
        kept={"load_seconds": 60, "last_log_line": None, "last_log_read_at": None},
    ),
    "recovery-keeps-the-first-load-seconds": Case(
        serving(ready=False, unhealthy_since=NOW - timedelta(seconds=10), load_seconds=42),
        MarkReady,
        job=job("RUNNING"),
        probe=READY,
        kept={"load_seconds": 42},
    ),
    "serving-engine-keeps-its-load-seconds": Case(
        serving(load_seconds=42), Wait, job=job("RUNNING"), probe=READY, kept={"load_seconds": 42}
    ),
    "failure-drops-the-log-line-for-last-failure": Case(
        submitted(last_log_line="INFO loading", last_log_read_at=NOW),
        Restart,
        job=job("FAILED", f"exit 1: {API_KEY}"),
        ctx=SECRET_CTX,
        kept={
            "last_log_line": None,
            "last_log_read_at": None,
            "last_failure": "attempt 0: Ray job FAILED: exit 1: <redacted>",
        },
    ),
    "recreate-waits-for-the-cluster": Case(
        serving(config_hash="old"),
        Retire,
        may_submit=False,
        why=RETIRED_RECREATED,
        kept={"submission_id": None, "config_hash": CTX.config_hash},
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_decide(case: Case) -> None:
    action = decide(
        case.record,
        case.job,
        case.probe,
        case.ctx,
        may_submit=case.may_submit,
        slot_free=case.slot_free,
        logs=case.logs,
    )
    assert type(action) is case.expect, action
    if case.why is not None:
        reason = reason_of(action)
        assert reason is not None and (reason == case.why or str(case.why) in reason), reason
    record = kept_record(action)
    for name, value in case.kept.items():
        assert record is not None, action
        assert getattr(record, name) == value, (name, record)


def test_failure_stops_only_a_job_that_may_still_run() -> None:
    running = decide(
        serving(ready=False, unhealthy_since=NOW - timedelta(minutes=1)),
        job("RUNNING"),
        probe(EngineState.UNHEALTHY),
        CTX,
        may_submit=True,
        slot_free=True,
    )
    gone = decide(submitted(), None, None, CTX, may_submit=True, slot_free=True)
    failed = decide(submitted(), job("FAILED"), None, CTX, may_submit=True, slot_free=True)
    assert isinstance(running, Restart) and running.stop_job
    assert isinstance(gone, Restart) and gone.stop_job  # Ray may have lost only the record of it
    assert isinstance(failed, Restart) and not failed.stop_job
    # A stopped job is remembered until Ray reports it ended; an ended one is not.
    assert running.after(None).stopping_submission_id == sid(0, 0)
    assert failed.after(None).stopping_submission_id is None


def test_failed_record_keeps_the_reason_and_the_log_tail_without_secrets() -> None:
    action = decide(submitted(attempt=1), job("FAILED", "exit 1"), None, CTX, may_submit=True, slot_free=True)
    assert isinstance(action, Restart)
    record = action.after(
        "loading\nOSError: token=hf_abcdefghijklmn\n" + "x" * 10_000 + "\nCUDA out of memory"
    )
    assert record.last_failure is not None
    assert record.last_failure.startswith("attempt 1: Ray job FAILED: exit 1\n...")
    assert len(record.last_failure) <= LAST_FAILURE_LIMIT
    assert record.last_failure.endswith("CUDA out of memory")
    assert "hf_abcdefghijklmn" not in record.last_failure
    assert action.after(None).last_failure == "attempt 1: Ray job FAILED: exit 1"


def test_events_say_what_happened_in_the_words_of_before() -> None:
    """Alerts and the e2e tier match on these reasons; people read the messages. The reasons are spelled
    out as the words themselves: EventReason(word) fails for a word the operator no longer posts."""
    restart = decide(submitted(), job("FAILED"), None, CTX, may_submit=True, slot_free=True)
    give_up = decide(submitted(attempt=3), job("FAILED"), None, CTX, may_submit=True, slot_free=True)
    ready = decide(submitted(), job("RUNNING"), READY, CTX, may_submit=True, slot_free=True)
    submit = decide(fresh(), None, None, CTX, may_submit=True, slot_free=True)
    drain = decide(serving(index=2), None, None, CTX, may_submit=True, slot_free=True)
    recreate = decide(serving(config_hash="old"), None, None, CTX, may_submit=True, slot_free=True)
    assert isinstance(restart, Restart) and restart.events == (
        Event("Warning", EventReason("EngineRestarting"), "engine 0: Ray job FAILED; restart 1/3 in 10s"),
    )
    assert isinstance(give_up, GiveUp) and give_up.events == (
        Event(
            "Warning",
            EventReason("EngineFailed"),
            "engine 0: Ray job FAILED; restartPolicy.maxRestarts (3) spent, giving up",
        ),
    )
    assert isinstance(ready, MarkReady) and ready.events == (
        Event("Normal", EventReason("EngineReady"), f"engine 0: ready at http://{POD_IP}:8000/v1"),
    )
    assert isinstance(submit, Submit) and submit.event == Event(
        "Normal", EventReason("EngineSubmitted"), f"engine 0: submitted Ray job {sid(0, 0)} (attempt 0)"
    )
    assert isinstance(drain, Drain) and drain.events == (
        Event(
            "Normal",
            EventReason("EngineDraining"),
            "engine 2: scaled down; out of the Service, stopping in 5s",
        ),
    )
    assert isinstance(recreate, Retire) and recreate.events == (
        Event(
            "Normal",
            EventReason("EngineStopped"),
            f"engine 0: stopped Ray job {sid(0, 0)} ({RETIRED_RECREATED})",
        ),
        Event("Normal", EventReason("EngineRecreating"), "engine 0: settings changed, starting a new engine"),
    )
    # A second pass of a drain, and the retirement of an engine that has no job, say nothing.
    again = decide(serving(index=2, draining_since=NOW), None, None, CTX, may_submit=True, slot_free=True)
    jobless = decide(fresh(index=2), None, None, CTX, may_submit=True, slot_free=True)
    assert isinstance(again, Drain) and again.events == ()
    assert isinstance(jobless, Retire) and jobless.events == ()


def test_submission_ids_are_deterministic() -> None:
    first = decide(fresh(index=1, attempt=2), None, None, CTX, may_submit=True, slot_free=True)
    second = decide(fresh(index=1, attempt=2), None, None, CTX, may_submit=True, slot_free=True)
    assert isinstance(first, Submit) and isinstance(second, Submit)
    assert first.engine == second.engine == EngineRef("team-a", "llm", 1, 3, 2)
    assert first.pending.submission_id == second.pending.submission_id == sid(1, 2)


# ---- which engines are observed ----------------------------------------------------------------------


def test_only_staying_submitted_engines_of_current_settings_are_watched() -> None:
    assert watched(submitted(), CTX)
    assert not watched(fresh(), CTX)
    assert not watched(submitted(index=2), CTX)
    assert not watched(submitted(config_hash="old"), CTX)
    assert not watched(submitted(), make_ctx(suspend=True))
    assert not watched(submitted(budget_exhausted=True), CTX)  # given up: its job is not asked about again
    # Between attempts, the failed attempt's stopped job is watched until it ends.
    stopping = fresh(attempt=1, stopping_submission_id=sid(0, 0))
    assert watched(stopping, CTX) and observed_submission(stopping) == sid(0, 0)
    assert observed_submission(submitted()) == sid(0, 0)


def test_records_split_into_leaving_and_staying() -> None:
    previous = [serving(index=3), submitted(index=0), serving(index=2)]
    assert [e.index for e in leaving_records(previous, CTX.spec)] == [2, 3]
    staying = replica_records(previous, CTX)
    assert [e.index for e in staying] == [0, 1]
    assert staying[0] == previous[1] and staying[1] == fresh(index=1)
    assert replica_records(previous, make_ctx(suspend=True)) == []
    assert [e.index for e in leaving_records(previous, make_ctx(suspend=True).spec)] == [0, 2, 3]


def test_probe_address() -> None:
    assert probe_address(job("RUNNING"), CTX) == f"http://{POD_IP}:8000"
    assert probe_address(job("PENDING"), CTX) is None
    assert probe_address(job("FAILED"), CTX) is None
    assert probe_address(job("RUNNING", ip=None), CTX) is None
    assert probe_address(None, CTX) is None
    outside = EngineContext(
        REF, CTX.spec, SETTINGS.model_copy(update={"engine_host_override": "127.0.0.1"}), NOW
    )
    assert probe_address(job("RUNNING", ip=None), outside) == "http://127.0.0.1:8000"


FORGED_IP = "169.254.169.254"  # e.g. a cloud metadata service, which the operator's pod may reach


def test_an_address_that_is_none_of_the_object_s_pods_is_never_probed_and_is_named() -> None:
    forged = job("RUNNING", ip=FORGED_IP)
    assert probe_address(forged, CTX) is None
    assert foreign_address(forged, CTX) == FORGED_IP
    assert foreign_address(job("RUNNING"), CTX) is None
    assert foreign_address(job("PENDING", ip=FORGED_IP), CTX) is None
    action = decide(submitted(0, job_status="RUNNING"), forged, None, CTX, may_submit=True, slot_free=True)
    assert isinstance(action, Wait) and action.why is Waiting.FOREIGN_ADDRESS
    # An administrator's override is trusted: the operator then runs outside the cluster network.
    outside = EngineContext(
        REF, CTX.spec, SETTINGS.model_copy(update={"engine_host_override": "127.0.0.1"}), NOW
    )
    assert foreign_address(forged, outside) is None


def test_a_serving_engine_s_last_address_is_asked_only_while_it_is_still_one_of_the_pods() -> None:
    assert engine_base_url(serving(), CTX) == f"http://{POD_IP}:8000"
    # The pod went (its IP may now be another namespace's pod's), or an older status held a forged address.
    assert engine_base_url(serving(), EngineContext(REF, CTX.spec, SETTINGS, NOW)) is None
    assert engine_base_url(serving(url=f"http://{FORGED_IP}:8000/v1"), CTX) is None


# ---- slots across replicas ---------------------------------------------------------------------------


def kinds(actions: list[Action]) -> list[str]:
    return [type(a).__name__ + (f":{a.why.name}" if isinstance(a, Wait) else "") for a in actions]


def test_plan_never_submits_more_than_the_free_slots_lowest_index_first() -> None:
    ctx = make_ctx(replicas=3)
    records = replica_records([], ctx)
    assert kinds(plan_replicas(records, {}, ctx, may_submit=True, free_slots=2)) == [
        "Submit",
        "Submit",
        "Wait:NO_FREE_SLOT",
    ]
    assert kinds(plan_replicas(records, {}, ctx, may_submit=True, free_slots=0)) == ["Wait:NO_FREE_SLOT"] * 3
    assert (
        kinds(plan_replicas(records, {}, ctx, may_submit=False, free_slots=5)) == ["Wait:NOT_SUBMITTABLE"] * 3
    )


def test_plan_gives_slots_only_to_engines_that_submit() -> None:
    ctx = make_ctx(replicas=4)
    records = [
        submitted(index=0),  # watched: uses its own observation, takes no slot
        fresh(index=1, budget_exhausted=True),
        fresh(index=2, restart_after=NOW + timedelta(seconds=9)),
        fresh(index=3),
    ]
    observed = {0: Observed(job("PENDING"))}
    assert kinds(plan_replicas(records, observed, ctx, may_submit=True, free_slots=1)) == [
        "Wait:PENDING",
        "Wait:BUDGET_SPENT",
        "Wait:BACKOFF",
        "Submit",
    ]


def test_plan_counts_the_recreated_engine_against_the_slots() -> None:
    records = [serving(index=0, config_hash="old"), fresh(index=1)]
    plan = plan_replicas(records, {}, CTX, may_submit=True, free_slots=1)
    assert isinstance(plan[0], Retire) and isinstance(plan[0].replacement, Submit)
    assert kinds(plan)[1] == "Wait:NO_FREE_SLOT"


def test_plan_reads_each_watched_engines_own_observation() -> None:
    records = [submitted(index=0), submitted(index=1)]
    observed = {0: Observed(job("PENDING")), 1: Observed(None)}
    plan = plan_replicas(records, observed, CTX, may_submit=True, free_slots=0)
    assert isinstance(plan[0], Wait) and isinstance(plan[1], Restart) and plan[1].reason == JOB_GONE
    with pytest.raises(KeyError):
        plan_replicas(records, {0: Observed(job("PENDING"))}, CTX, may_submit=True, free_slots=0)


def node(slots: float, gpus: float, available: dict[str, float] | None, alive: bool = True) -> RayNode:
    return RayNode(
        node_id=f"n{slots}{gpus}",
        node_ip="10.0.0.9",
        is_head=False,
        state="ALIVE" if alive else "DEAD",
        resources_total={ENGINE_SLOT_RESOURCE: slots, "GPU": gpus},
        resources_available=available,
    )


@pytest.mark.parametrize(
    ("nodes", "executor", "free"),
    [
        ((node(2, 2, {ENGINE_SLOT_RESOURCE: 1.0, "GPU": 1.0}),), "ray", 1),
        # No availability report: the totals, and Ray queues what does not fit.
        ((node(2, 2, None),), "ray", 2),
        # Fewer GPUs than the engines need in all: vLLM's ray executor would wait for placement forever.
        ((node(1, 1, {ENGINE_SLOT_RESOURCE: 1.0, "GPU": 1.0}),), "ray", 0),
        ((node(1, 1, {ENGINE_SLOT_RESOURCE: 1.0, "GPU": 1.0}),), "mp", 1),
        ((node(2, 2, {ENGINE_SLOT_RESOURCE: 2.0}, alive=False),), "mp", 0),
    ],
    ids=["available", "unreported", "too-few-gpus", "mp-ignores-gpu-total", "dead-node"],
)
def test_free_engine_slots(nodes: tuple[RayNode, ...], executor: str, free: int) -> None:
    spec = make_spec(engine={"executorBackend": executor})
    assert spec.total_gpus == 2
    assert free_engine_slots(ClusterResources(nodes), spec) == free


# ---- how soon to look again --------------------------------------------------------------------------

REQUEUE = {
    "nothing": ([], None),
    "all-serving": ([serving(0), serving(1)], None),
    # A given-up engine keeps the submission id of its last attempt (GiveUp.after).
    "given-up-and-serving": ([submitted(0, job_status="FAILED", budget_exhausted=True), serving(1)], None),
    "pending": ([serving(0), submitted(1)], 1.5),
    "running-not-ready": ([submitted(0, job_status="RUNNING")], 1.5),
    "unhealthy-within-grace": ([serving(0, ready=False, unhealthy_since=NOW)], 1.5),
    "serving-through-a-late-answer": ([serving(0, health="Unresponsive", unhealthy_since=NOW)], 1.5),
    "draining": ([serving(0), serving(2, ready=False, draining_since=NOW)], 1.5),
    "backing-off": ([serving(0), fresh(1, restart_after=NOW + timedelta(seconds=7))], 7.0),
    "backoff-nearly-over": ([fresh(0, restart_after=NOW + timedelta(seconds=0.1))], 0.5),
    "starting-beats-backoff": ([submitted(0), fresh(1, restart_after=NOW + timedelta(seconds=7))], 1.5),
    "backoff-over-waits-for-a-slot": ([fresh(0, restart_after=NOW - timedelta(seconds=1))], None),
    "new-engine-waits-for-the-cluster": ([fresh(0)], None),
    "backoff-over-previous-job-ending": (
        [fresh(0, restart_after=NOW, stopping_submission_id=sid(0, 0))],
        1.5,
    ),
}


@pytest.mark.parametrize(("engines", "expected"), REQUEUE.values(), ids=REQUEUE.keys())
def test_requeue_after(engines: list[EngineStatus], expected: float | None) -> None:
    assert requeue_after(engines, CTX) == expected


# ---- purity ------------------------------------------------------------------------------------------

PURE_MODULES = ["decide", "actions", "context", "probe", "failure", "fingerprint", "job"]
IMPURE = (
    "httpx",
    "kopf",
    "kubernetes_asyncio",
    "kubernetes",
    "rayvllm.k8s",
    "rayvllm.supervisor",
    "rayvllm.ray.client",
    "rayvllm.ray.http",
    "rayvllm.engine.health",
    "rayvllm.reconcile",
)
ENGINE_DIR = Path(__file__).resolve().parents[2] / "operator" / "rayvllm" / "engine"


@pytest.mark.parametrize("module", PURE_MODULES)
def test_decision_modules_import_nothing_that_does_io(module: str) -> None:
    tree = ast.parse((ENGINE_DIR / f"{module}.py").read_text())
    imported = [alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names]
    imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert imported, "the parse found no imports at all"
    bad = [name for name in imported if any(name == i or name.startswith(i + ".") for i in IMPURE)]
    assert not bad, bad


# ---- a Ray dashboard that does not answer ------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "url"),
    [
        pytest.param(serving(), f"http://{POD_IP}:8000", id="serving: asked at its probe address"),
        pytest.param(
            serving(ready=False, unhealthy_since=NOW - timedelta(seconds=5)),
            f"http://{POD_IP}:8000",
            id="unhealthy within grace: asked",
        ),
        pytest.param(submitted(url=f"http://{POD_IP}:8000/v1"), None, id="never served: waits for Ray"),
        pytest.param(serving(url=None), None, id="no address known"),
        pytest.param(serving(index=2), None, id="leaving (scaled down): not asked"),
        pytest.param(serving(config_hash="old"), None, id="old settings: not asked"),
    ],
)
def test_which_engines_are_asked_themselves_without_ray(record: EngineStatus, url: str | None) -> None:
    assert engine_base_url(record, CTX) == url


def test_without_ray_an_engine_that_answers_keeps_serving() -> None:
    kept = judge_without_ray(serving(), READY, NOW)
    assert kept.ready and kept.health == "Ready" and kept.unhealthy_since is None


def test_without_ray_an_engine_that_answers_again_ends_its_grace() -> None:
    kept = judge_without_ray(serving(ready=False, health="Unhealthy", unhealthy_since=NOW), READY, NOW)
    assert kept.ready and kept.unhealthy_since is None


@pytest.mark.parametrize(
    ("state", "before"),
    [
        (EngineState.UNHEALTHY, "Ready"),
        (EngineState.HUNG, "Ready"),
        (EngineState.UNRESPONSIVE, "Unresponsive"),  # the second late answer in a row
    ],
)
def test_without_ray_an_engine_that_does_not_answer_leaves_the_service_but_is_not_restarted(
    state: EngineState, before: str
) -> None:
    record = serving(health=before)
    kept = judge_without_ray(record, probe(state), NOW)
    assert not kept.ready and kept.health == state.value
    # Its grace starts; nothing else moves: no failure, no restart count (restarts resume with Ray).
    assert kept.unhealthy_since == NOW
    same = ("submission_id", "attempt", "restarts", "last_failure", "restart_after")
    assert {f: getattr(kept, f) for f in same} == {f: getattr(record, f) for f in same}
    # A later pass without Ray keeps the grace's start.
    later = judge_without_ray(kept, probe(state), NOW + timedelta(seconds=60))
    assert later.unhealthy_since == NOW


def test_once_ray_answers_an_engine_silent_since_the_outage_is_judged_as_once_ready() -> None:
    """The head restarted (or the dashboard went away) while the engine stopped answering: with Ray back,
    it is ready again as soon as it answers, and restarted once the grace is over, not left to wait out
    startupTimeoutSeconds as an engine still loading."""
    silent = judge_without_ray(serving(), probe(EngineState.UNHEALTHY), NOW)
    grace = CTX.settings.unhealthy_grace_seconds
    back = make_ctx(now=NOW + timedelta(seconds=grace + 1))
    answered = decide(silent, job(), READY, back, may_submit=True, slot_free=True)
    assert isinstance(answered, MarkReady) and answered.record.ready
    still_silent = decide(silent, job(), probe(EngineState.UNHEALTHY), back, may_submit=True, slot_free=True)
    assert isinstance(still_silent, Restart), still_silent
    assert "unhealthy for over" in still_silent.reason, still_silent


def test_without_ray_one_late_answer_serves_on_and_is_looked_at_again_soon() -> None:
    record = serving()
    kept = judge_without_ray(record, probe(EngineState.UNRESPONSIVE), NOW)
    assert kept.ready and kept.health == "Unresponsive" and kept.unhealthy_since is None
    assert answered_late(kept) and requeue_after([kept], CTX) == 1.5
    assert not judge_without_ray(kept, probe(EngineState.UNRESPONSIVE), NOW).ready


def test_without_ray_an_engine_not_asked_is_not_ready() -> None:
    assert not judge_without_ray(serving(), None, NOW).ready


# ---- progress: when a loading engine's log is read ------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "seen", "seen_probe", "due"),
    [
        pytest.param(submitted(), job("RUNNING"), STARTING, True, id="loading-never-read"),
        pytest.param(submitted(), job("RUNNING", ip=None), None, True, id="loading-no-address-yet"),
        pytest.param(
            submitted(last_log_read_at=NOW - timedelta(seconds=29.9)),
            job("RUNNING"),
            STARTING,
            False,
            id="read-29.9s-ago",
        ),
        pytest.param(
            submitted(last_log_read_at=NOW - timedelta(seconds=30)),
            job("RUNNING"),
            STARTING,
            True,
            id="read-30s-ago",
        ),
        pytest.param(submitted(), job("PENDING"), None, False, id="pending-has-no-log"),
        pytest.param(submitted(), None, None, False, id="job-gone"),
        pytest.param(submitted(), job("FAILED"), None, False, id="failed-its-tail-goes-to-lastFailure"),
        pytest.param(submitted(), job("RUNNING"), READY, False, id="ready-this-pass"),
        pytest.param(serving(), job("RUNNING"), READY, False, id="serving"),
        pytest.param(
            serving(ready=False, unhealthy_since=NOW),
            job("RUNNING"),
            probe(EngineState.UNHEALTHY),
            False,
            id="unhealthy",
        ),
        pytest.param(
            serving(ready=False, load_seconds=60), job("RUNNING"), None, False, id="served-this-attempt"
        ),
    ],
)
def test_logs_due(
    record: EngineStatus, seen: JobInfo | None, seen_probe: EngineProbe | None, due: bool
) -> None:
    assert logs_due(record, seen, seen_probe, CTX) is due


def test_a_failure_reason_never_carries_a_held_secret_into_events() -> None:
    action = decide(
        submitted(),
        job("FAILED", f"last logs: key={API_KEY} {API_KEY}"),
        None,
        SECRET_CTX,
        may_submit=True,
        slot_free=True,
    )
    assert isinstance(action, Restart)
    assert API_KEY not in action.reason and all(API_KEY not in e.message for e in action.events)
    assert API_KEY not in repr(action) and API_KEY not in repr(SECRET_CTX)
    assert API_KEY not in (action.after(f"boom {API_KEY}").last_failure or "")
