"""Status computation: phases, condition reasons and lastTransitionTime bookkeeping across transitions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rayvllm.identity import ClusterRef
from rayvllm.models import (
    ConditionType,
    EngineStage,
    EngineStatus,
    Phase,
    VLLMClusterSpec,
    VLLMClusterStatus,
    engine_stage,
)
from rayvllm.status import Observation, PodCounts, Problem, Reason, compute_status, staged

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NAME, NAMESPACE = "llama", "team-a"


def _spec(replicas: int = 2, suspend: bool = False, max_restarts: int = 5) -> VLLMClusterSpec:
    return VLLMClusterSpec.model_validate(
        {
            "model": {"source": "hf://org/model"},
            "engine": {"tensorParallelSize": 2},
            "replicas": replicas,
            "ray": {"image": "img", "worker": {"gpusPerWorker": 2}},
            "restartPolicy": {"maxRestarts": max_restarts},
            "suspend": suspend,
        }
    )


def _ray_cluster(
    head_ready: bool = True,
    ready_workers: int = 2,
    generation: int = 1,
    seen: int = 1,
    failure: str | None = None,
) -> dict[str, Any]:
    """A RayCluster as KubeRay v1.6.1 reports it."""
    conditions: list[dict[str, Any]] = [
        {
            "type": "HeadPodReady",
            "status": "True" if head_ready else "False",
            "reason": "HeadPodRunningAndReady",
        },
        {"type": "RayClusterProvisioned", "status": "True", "reason": "AllPodRunningAndReadyFirstTime"},
    ]
    if failure:
        conditions.append(
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreateWorkerPod",
                "message": failure,
            }
        )
    return {
        "metadata": {"name": NAME, "generation": generation},
        "status": {
            "state": "ready",
            "readyWorkerReplicas": ready_workers,
            "desiredWorkerReplicas": 2,
            "observedGeneration": seen,
            "conditions": conditions,
        },
    }


def _engine(index: int, ready: bool = True, restarts: int = 0, exhausted: bool = False) -> EngineStatus:
    return EngineStatus(
        index=index,
        submission_id=f"rayvllm-{index}",
        job_status="RUNNING" if ready else "FAILED",
        ready=ready,
        restarts=restarts,
        last_failure=None if ready else "engine exited with code 1",
        budget_exhausted=exhausted,
    )


def _observe(
    spec: VLLMClusterSpec | None = None,
    ray_cluster: dict[str, Any] | None = None,
    engines: tuple[EngineStatus, ...] = (),
    problems: tuple[Problem, ...] = (),
    previous: VLLMClusterStatus | None = None,
    pods: PodCounts | None = None,
    generation: int = 3,
) -> Observation:
    return Observation(
        ref=ClusterRef(NAMESPACE, NAME, "uid-1", generation),
        spec=spec or _spec(),
        ray_cluster=ray_cluster,
        pods=pods,
        engines=engines,
        problems=problems,
        previous=previous,
    )


def _summary(status: VLLMClusterStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_nothing_exists_yet() -> None:
    status = compute_status(_observe(), T0)
    assert status.phase is Phase.PENDING
    assert _summary(status) == {
        "Ready": ("False", Reason.RAY_CLUSTER_NOT_FOUND),
        "RayClusterReady": ("False", Reason.RAY_CLUSTER_NOT_FOUND),
        "EnginesReady": ("False", Reason.ENGINE_NOT_LAUNCHED),
        "Progressing": ("True", "Pending"),
        "Degraded": ("False", Reason.AS_EXPECTED),
    }
    assert status.ray_cluster is None
    assert status.endpoint is not None and status.endpoint.url == "http://llama.team-a.svc:8000/v1"
    assert status.selector == "rayvllm.io/cluster=llama,rayvllm.io/serving=true"
    assert (status.observed_generation, status.replicas, status.ready_replicas) == (3, 2, 0)


@pytest.mark.parametrize(
    ("ray_cluster", "reason", "message"),
    [
        (
            _ray_cluster(head_ready=False, ready_workers=0),
            Reason.HEAD_POD_NOT_READY,
            "the Ray head pod is not ready",
        ),
        (_ray_cluster(ready_workers=1), Reason.WORKERS_NOT_READY, "1/2 GPU worker pods ready"),
        (_ray_cluster(generation=2, seen=1), Reason.RAY_CLUSTER_UPDATING, "KubeRay has not yet processed"),
        (
            _ray_cluster(failure="exceeded quota: gpu"),
            Reason.RAY_CLUSTER_REPLICA_FAILURE,
            "exceeded quota: gpu",
        ),
    ],
)
def test_provisioning(ray_cluster: dict[str, Any], reason: str, message: str) -> None:
    status = compute_status(_observe(ray_cluster=ray_cluster), T0)
    ready = status.condition(ConditionType.READY)
    assert ready is not None and ready.status == "False" and ready.reason == reason
    assert message in (status.message or "")
    assert _summary(status)["RayClusterReady"] == ("False", reason)
    if reason == Reason.RAY_CLUSTER_REPLICA_FAILURE:
        assert status.phase is Phase.PENDING
        assert _summary(status)["Degraded"] == ("True", reason)
    else:
        assert status.phase is Phase.PROVISIONING


def test_pod_counts_override_kuberay_counters() -> None:
    stale = _ray_cluster(head_ready=False, ready_workers=0)
    status = compute_status(_observe(ray_cluster=stale, pods=PodCounts(head_ready=True, ready_workers=2)), T0)
    assert _summary(status)["RayClusterReady"] == ("True", Reason.RAY_CLUSTER_READY)
    assert status.ray_cluster is not None and status.ray_cluster.ready_workers == 2


def test_ray_cluster_ready_but_no_engine_is_never_ready() -> None:
    status = compute_status(_observe(ray_cluster=_ray_cluster()), T0)
    assert status.phase is Phase.LAUNCHING
    assert _summary(status)["Ready"] == ("False", Reason.ENGINE_NOT_LAUNCHED)
    assert _summary(status)["RayClusterReady"] == ("True", Reason.RAY_CLUSTER_READY)
    assert status.ray_cluster is not None and status.ray_cluster.desired_workers == 2


def test_engines_loading() -> None:
    loading = _engine(1, ready=False).model_copy(update={"job_status": "RUNNING", "last_failure": None})
    status = compute_status(_observe(ray_cluster=_ray_cluster(), engines=(_engine(0), loading)), T0)
    assert status.phase is Phase.LAUNCHING
    assert _summary(status)["Ready"] == ("False", Reason.ENGINES_NOT_READY)
    assert status.message == "1/2 engines ready; engine 1 loading since 12:00:00 UTC"
    assert status.ready_replicas == 1


def test_all_engines_ready() -> None:
    status = compute_status(_observe(ray_cluster=_ray_cluster(), engines=(_engine(1), _engine(0))), T0)
    assert status.phase is Phase.READY
    assert _summary(status) == {
        "Ready": ("True", Reason.ALL_ENGINES_READY),
        "RayClusterReady": ("True", Reason.RAY_CLUSTER_READY),
        "EnginesReady": ("True", Reason.ALL_ENGINES_READY),
        "Progressing": ("False", Reason.RECONCILE_COMPLETE),
        "Degraded": ("False", Reason.AS_EXPECTED),
    }
    assert [e.index for e in status.engines] == [0, 1]
    assert status.ready_replicas == 2


def test_engine_crash_after_ready_degrades() -> None:
    engines = (_engine(0), _engine(1, ready=False, restarts=1))
    status = compute_status(_observe(ray_cluster=_ray_cluster(), engines=engines), T0)
    assert status.phase is Phase.DEGRADED
    assert _summary(status)["Degraded"] == ("True", Reason.ENGINE_RESTARTING)
    assert _summary(status)["Progressing"] == ("True", Reason.RECOVERING)
    assert "engine 1: engine exited with code 1" in (status.message or "")


def test_restart_budget_exhausted_fails() -> None:
    engines = (_engine(0), _engine(1, ready=False, restarts=5, exhausted=True))
    status = compute_status(_observe(ray_cluster=_ray_cluster(), engines=engines), T0)
    assert status.phase is Phase.FAILED
    assert _summary(status)["Ready"] == ("False", Reason.RESTART_BUDGET_EXHAUSTED)
    assert _summary(status)["Progressing"] == ("False", Reason.RESTART_BUDGET_EXHAUSTED)
    assert "restartPolicy.maxRestarts (5)" in (status.message or "")


def test_suspended() -> None:
    status = compute_status(_observe(spec=_spec(suspend=True), ray_cluster=_ray_cluster(ready_workers=0)), T0)
    assert status.phase is Phase.SUSPENDED
    assert _summary(status)["Ready"] == ("False", Reason.SUSPENDED)
    assert _summary(status)["Progressing"] == ("False", Reason.SUSPENDED)


def test_scaled_to_zero_is_ready_once_the_head_is() -> None:
    spec = _spec(replicas=0)
    assert spec.desired_workers == 0
    status = compute_status(_observe(spec=spec, ray_cluster=_ray_cluster(ready_workers=0)), T0)
    assert status.phase is Phase.READY
    assert _summary(status)["Ready"] == ("True", Reason.SCALED_TO_ZERO)
    waiting = compute_status(
        _observe(spec=spec, ray_cluster=_ray_cluster(head_ready=False, ready_workers=0)), T0
    )
    assert waiting.phase is Phase.PROVISIONING


def test_engines_beyond_replicas_do_not_count() -> None:
    engines = (_engine(0), _engine(1), _engine(2))
    status = compute_status(_observe(spec=_spec(replicas=2), ray_cluster=_ray_cluster(), engines=engines), T0)
    assert status.ready_replicas == 2 and status.phase is Phase.READY
    assert [e.index for e in status.engines] == [0, 1, 2]


def test_cluster_side_problem_blocks_and_is_reported() -> None:
    problem = Problem(
        Reason.SECRET_NOT_FOUND, "Secret team-a/hf-token not found (spec.model.hfTokenSecretRef)"
    )
    status = compute_status(_observe(ray_cluster=_ray_cluster(head_ready=False), problems=(problem,)), T0)
    assert status.phase is Phase.PENDING
    assert _summary(status)["Ready"] == ("False", Reason.SECRET_NOT_FOUND)
    assert _summary(status)["Degraded"] == ("True", Reason.SECRET_NOT_FOUND)
    assert status.message == problem.message


def test_problem_while_serving_degrades() -> None:
    problem = Problem(Reason.SECRET_NOT_FOUND, "Secret team-a/hf-token not found")
    status = compute_status(
        _observe(ray_cluster=_ray_cluster(), engines=(_engine(0), _engine(1)), problems=(problem,)), T0
    )
    assert status.phase is Phase.DEGRADED
    assert _summary(status)["Ready"] == ("False", Reason.SECRET_NOT_FOUND)


def test_fatal_problem_fails() -> None:
    problem = Problem(Reason.WORKER_UNSCHEDULABLE, "no node offers 64 nvidia.com/gpu", fatal=True)
    status = compute_status(_observe(ray_cluster=_ray_cluster(ready_workers=0), problems=(problem,)), T0)
    assert status.phase is Phase.FAILED
    assert _summary(status)["Ready"] == ("False", Reason.WORKER_UNSCHEDULABLE)


def test_last_transition_time_moves_only_on_status_change() -> None:
    first = compute_status(_observe(ray_cluster=_ray_cluster(ready_workers=1)), T0)
    later = T0 + timedelta(minutes=5)
    # Same statuses, different reason (WorkersNotReady -> EngineNotLaunched for Ready): times are kept.
    second = compute_status(_observe(ray_cluster=_ray_cluster(), previous=first), later)
    times = {c.type: c.last_transition_time for c in second.conditions}
    assert times["Ready"] == T0 and times["Degraded"] == T0 and times["Progressing"] == T0
    assert times["RayClusterReady"] == later  # False -> True
    third = compute_status(
        _observe(ray_cluster=_ray_cluster(), engines=(_engine(0), _engine(1)), previous=second),
        later + timedelta(minutes=1),
    )
    third_ready = third.condition(ConditionType.READY)
    assert third_ready is not None and third_ready.last_transition_time == later + timedelta(minutes=1)


def test_recomputing_an_unchanged_world_is_a_no_op() -> None:
    observed = _observe(ray_cluster=_ray_cluster(), engines=(_engine(0), _engine(1)))
    first = compute_status(observed, T0)
    again = compute_status(
        _observe(ray_cluster=_ray_cluster(), engines=(_engine(0), _engine(1)), previous=first),
        T0 + timedelta(hours=1),
    )
    assert again.to_wire() == first.to_wire()


def test_status_wire_form() -> None:
    wire = compute_status(
        _observe(ray_cluster=_ray_cluster(), engines=(_engine(0), _engine(1))), T0.replace(microsecond=123)
    ).to_wire()
    ready = next(c for c in wire["conditions"] if c["type"] == "Ready")
    assert ready == {
        "type": "Ready",
        "status": "True",
        "reason": "AllEnginesReady",
        "message": "2/2 engines ready",
        "lastTransitionTime": "2026-03-01T12:00:00Z",
        "observedGeneration": 3,
    }
    assert wire["rayCluster"] == {"name": NAME, "desiredWorkers": 2, "readyWorkers": 2}
    assert wire["endpoint"] == {"service": NAME, "url": "http://llama.team-a.svc:8000/v1"}
    assert "kopf" not in wire


def test_now_must_be_utc_aware() -> None:
    with pytest.raises(ValueError, match="UTC"):
        compute_status(_observe(), datetime(2026, 3, 1))


def test_observed_pods_outrank_kuberays_stale_observed_generation() -> None:
    # KubeRay leaves status.observedGeneration behind after a change that alters none of its status (a
    # workersToDelete entry): with the pods observed, their spec hash decides, not that counter.
    stale = _ray_cluster(generation=5, seen=3)
    ready = compute_status(_observe(ray_cluster=stale, pods=PodCounts(head_ready=True, ready_workers=2)), T0)
    ray_cluster_ready = ready.condition(ConditionType.RAY_CLUSTER_READY)
    assert ray_cluster_ready is not None and ray_cluster_ready.status == "True"
    replacing = compute_status(
        _observe(ray_cluster=stale, pods=PodCounts(head_ready=True, ready_workers=2, outdated=1)), T0
    )
    condition = replacing.condition(ConditionType.RAY_CLUSTER_READY)
    assert condition is not None
    assert (condition.status, condition.reason) == ("False", Reason.RAY_CLUSTER_UPDATING)
    assert "older spec" in condition.message


def test_a_message_past_the_schema_limit_is_truncated_not_fatal() -> None:
    many = tuple(
        Problem(Reason.WORKER_UNSCHEDULABLE, f"pod worker-{i:04d}: 0/3 nodes are available" * 4)
        for i in range(400)
    )
    status = compute_status(
        _observe(ray_cluster=_ray_cluster(), problems=many), datetime(2030, 1, 1, tzinfo=UTC)
    )
    messages = [c.message for c in status.conditions] + [status.message or ""]
    assert max(len(m) for m in messages) <= 32768
    assert any(m.endswith("(truncated)") for m in messages)


# ---- engine progress: stage, since when, and the message --------------------------------------------------

BACKOFF_END = T0 + timedelta(seconds=40)


def _record(**fields: Any) -> EngineStatus:
    return EngineStatus.model_validate({"index": 1, **fields})


SID = {"submission_id": "rayvllm-1"}
STAGES = {
    "new-engine-not-submitted": (_record(), EngineStage.WAITING_FOR_RESOURCES),
    "submitted-not-yet-seen-by-ray": (_record(**SID), EngineStage.SUBMITTED),
    "job-pending": (_record(**SID, job_status="PENDING"), EngineStage.WAITING_FOR_RESOURCES),
    "job-running-not-answering": (
        _record(**SID, job_status="RUNNING", health="Starting"),
        EngineStage.LOADING,
    ),
    "job-running-model-not-served-yet": (
        _record(**SID, job_status="RUNNING", health="ModelNotServed"),
        EngineStage.LOADING,
    ),
    "ready": (_record(**SID, job_status="RUNNING", ready=True, load_seconds=60), EngineStage.READY),
    "unhealthy-within-grace": (
        _record(**SID, job_status="RUNNING", unhealthy_since=T0, load_seconds=60),
        EngineStage.UNHEALTHY,
    ),
    "served-and-not-answering-without-ray": (
        _record(**SID, job_status="RUNNING", load_seconds=60),
        EngineStage.UNHEALTHY,
    ),
    "backing-off": (_record(restarts=1, attempt=1, restart_after=BACKOFF_END), EngineStage.RESTARTING),
    "job-ended-this-pass": (_record(**SID, job_status="FAILED"), EngineStage.RESTARTING),
    "draining": (_record(**SID, job_status="RUNNING", draining_since=T0), EngineStage.DRAINING),
    "budget-spent": (_record(**SID, job_status="FAILED", budget_exhausted=True), EngineStage.FAILED),
}


@pytest.mark.parametrize(("record", "stage"), STAGES.values(), ids=STAGES.keys())
def test_engine_stage_is_read_from_the_record(record: EngineStatus, stage: EngineStage) -> None:
    assert engine_stage(record) is stage


def test_every_stage_is_derived_by_some_record() -> None:
    assert {stage for _, stage in STAGES.values()} == set(EngineStage)


LOADING = _record(**SID, job_status="RUNNING", health="Starting")
EARLIER = T0 - timedelta(minutes=5)
SINCE = {
    "first-seen-now": (LOADING, None, T0),
    "kept-from-the-record": (
        LOADING.model_copy(update={"stage": "Loading", "stage_since": EARLIER}),
        None,
        EARLIER,
    ),
    "kept-from-the-stored-status": (
        LOADING,
        LOADING.model_copy(update={"stage": "Loading", "stage_since": EARLIER}),
        EARLIER,
    ),
    "a-new-stage-begins-now": (
        LOADING.model_copy(update={"stage": "WaitingForResources", "stage_since": EARLIER}),
        None,
        T0,
    ),
    "the-stored-status-of-another-stage-is-not-used": (
        LOADING,
        LOADING.model_copy(update={"stage": "Submitted", "stage_since": EARLIER}),
        T0,
    ),
}


@pytest.mark.parametrize(("record", "before", "since"), SINCE.values(), ids=SINCE.keys())
def test_stage_since_is_kept_while_the_stage_is(
    record: EngineStatus, before: EngineStatus | None, since: datetime
) -> None:
    out = staged(record, before, T0)
    assert (out.stage, out.stage_since) == (EngineStage.LOADING, since)


def _running(index: int, **fields: Any) -> EngineStatus:
    return EngineStatus.model_validate(
        {"index": index, "submission_id": f"rayvllm-{index}", "job_status": "RUNNING", **fields}
    )


MESSAGES = {
    "one-loading": (
        (_running(0, ready=True), _running(1, stage="Loading", stage_since=T0 - timedelta(seconds=70))),
        "1/2 engines ready; engine 1 loading since 11:58:50 UTC",
    ),
    "loading-first-seen-now": (
        (_running(0, ready=True), _running(1)),
        "1/2 engines ready; engine 1 loading since 12:00:00 UTC",
    ),
    "submitted-and-pending": (
        (_running(0, job_status=None), _running(1, job_status="PENDING")),
        "0/2 engines ready; engine 0 submitted since 12:00:00 UTC; engine 1 waiting for resources since 12:00:00 UTC",
    ),
    "not-submitted-yet": (
        (_running(0, ready=True), EngineStatus(index=1)),
        "1/2 engines ready; engine 1 waiting for resources since 12:00:00 UTC",
    ),
}


@pytest.mark.parametrize(("engines", "message"), MESSAGES.values(), ids=MESSAGES.keys())
def test_the_message_says_which_engines_are_not_ready_and_since_when(
    engines: tuple[EngineStatus, ...], message: str
) -> None:
    status = compute_status(_observe(ray_cluster=_ray_cluster(), engines=engines), T0)
    assert status.phase is Phase.LAUNCHING
    assert status.message == message
    engines_ready = status.condition(ConditionType.ENGINES_READY)
    assert engines_ready is not None and engines_ready.message == message


def test_a_restarting_engine_says_when_it_restarts() -> None:
    backing_off = EngineStatus(index=1, restarts=1, attempt=1, restart_after=BACKOFF_END, last_failure="boom")
    status = compute_status(
        _observe(ray_cluster=_ray_cluster(), engines=(_running(0, ready=True), backing_off)), T0
    )
    assert status.phase is Phase.DEGRADED  # the failure is the headline...
    engines = status.condition(ConditionType.ENGINES_READY)
    assert engines is not None and engines.message == "1/2 engines ready; engine 1 restarting at 12:00:40 UTC"


def test_the_message_names_a_few_engines_whatever_the_replicas() -> None:
    engines = tuple(_running(i, job_status="PENDING") for i in range(1000))
    status = compute_status(
        _observe(
            spec=_spec(replicas=1000),
            ray_cluster=_ray_cluster(),
            pods=PodCounts(head_ready=True, ready_workers=1000),
            engines=engines,
        ),
        T0,
    )
    assert status.message == (
        "0/1000 engines ready; engine 0 waiting for resources since 12:00:00 UTC; engine 1 waiting for resources "
        "since 12:00:00 UTC; engine 2 waiting for resources since 12:00:00 UTC; 997 more not ready"
    )


def test_a_settled_ready_status_is_byte_identical_at_every_later_pass() -> None:
    """The zero-writes-at-rest invariant: each pass starts from the stored status (its engines included), as
    reconcile does, and later clocks change nothing."""
    engines = tuple(
        _running(i, ready=True, health="Ready", load_seconds=95, started_at=T0 - timedelta(minutes=10))
        for i in range(2)
    )
    stored = compute_status(_observe(ray_cluster=_ray_cluster(), engines=engines), T0)
    wire = json.dumps(stored.to_wire(), sort_keys=True)
    assert [(e.stage, e.stage_since, e.load_seconds) for e in stored.engines] == [
        (EngineStage.READY, T0, 95)
    ] * 2
    for later in (timedelta(seconds=15), timedelta(minutes=30), timedelta(days=3)):
        stored = VLLMClusterStatus.model_validate(json.loads(wire))
        again = compute_status(
            _observe(ray_cluster=_ray_cluster(), engines=tuple(stored.engines), previous=stored), T0 + later
        )
        assert json.dumps(again.to_wire(), sort_keys=True) == wire
