"""upgradeStrategy RollingReplicas with no Ray and no cluster: the planner (rayvllm.engine.rollout) as a table
of records in and out, the decisions about outgoing and older engines (rayvllm.engine.decide), the worker
pods they need (rayvllm.workers), the status they make (rayvllm.status) and the Events of its steps."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rayvllm.engine.actions import Action, Drain, Retire, Submit, Wait, Waiting
from rayvllm.engine.context import EngineContext
from rayvllm.engine.decide import (
    RETIRED_PODS_REPLACED,
    RETIRED_RECREATED,
    RETIRED_REPLACED,
    RETIRED_STOPPED_SERVING,
    decide,
    engine_base_url,
    watched,
)
from rayvllm.engine.fingerprint import engine_config_hash
from rayvllm.engine.probe import EngineProbe, EngineState
from rayvllm.engine.rollout import begin_replacements, rollout_step
from rayvllm.identity import ClusterRef
from rayvllm.models import VLLMClusterSpec
from rayvllm.models.rayapi import JobInfo
from rayvllm.models.status import ConditionType, EngineStatus, Outgoing, Phase
from rayvllm.observed import PodCounts
from rayvllm.reasons import EventReason, Reason
from rayvllm.reconcile import transition_events
from rayvllm.settings import Settings
from rayvllm.status import Observation, compute_status
from rayvllm.workers import WorkerPlan, plan_workers

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
REF = ClusterRef("team-a", "llm", "uid-1", generation=7)
SETTINGS = Settings(drain_seconds=5, starting_probe_seconds=1.5, engine_host_override=None)
OLD, NEWER = "old0hash0000000a", "prev0hash000000b"


def make_spec(
    replicas: int = 2,
    strategy: str = "RollingReplicas",
    max_surge: int = 1,
    max_unavailable: int = 0,
    **more: Any,
) -> VLLMClusterSpec:
    body: dict[str, Any] = {
        "model": {"source": "hf://org/model"},
        "ray": {"image": "img"},
        "replicas": replicas,
        "upgradeStrategy": {"type": strategy, "maxSurge": max_surge, "maxUnavailable": max_unavailable},
    }
    body.update(more)
    return VLLMClusterSpec.model_validate(body)


def make_ctx(spec: VLLMClusterSpec | None = None, **flags: Any) -> EngineContext:
    flags.setdefault("pod_by_ip", {"10.0.0.7": "p0"})  # where job() runs: one of the object's pods
    return EngineContext(REF, spec or make_spec(), SETTINGS, NOW, **flags)


NEW = make_ctx().config_hash


def engine(index: int, config: str = OLD, *, ready: bool = True, **fields: Any) -> EngineStatus:
    """An engine of `config` that serves (or, not ready, is loading) on pod p<index>."""
    base: dict[str, Any] = {
        "index": index,
        "config_hash": config,
        "generation": 7 if config == NEW else 3,
        "submission_id": f"job-{index}-{config}",
        "job_status": "RUNNING",
        "ready": ready,
        "pod_name": f"p{index}" if ready else None,
        "started_at": NOW - timedelta(minutes=5),
    }
    return EngineStatus.model_validate({**base, **fields})


def new(index: int) -> EngineStatus:
    """A replacement just created by the planner: no job yet."""
    return EngineStatus(index=index, generation=7, config_hash=NEW)


def outgoing(replica: int, mode: Outgoing = Outgoing.SURGE, config: str = OLD, **fields: Any) -> EngineStatus:
    return engine(replica, config, **fields).model_copy(update={"index": 1000 + replica, "outgoing": mode})


# ---- the planner ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    records: list[EngineStatus]
    expect: list[EngineStatus]
    ctx: EngineContext = field(default_factory=make_ctx)
    events: int = 0
    """EngineReplacing Events posted."""


PLANS = {
    "surge-starts-the-lowest-replica": Case(
        [engine(0), engine(1)], [new(0), engine(1), outgoing(0)], events=1
    ),
    "one-surge-at-a-time": Case(
        [engine(0, NEW, ready=False), engine(1), outgoing(0)],
        [engine(0, NEW, ready=False), engine(1), outgoing(0)],
    ),
    "maxSurge-2-starts-two": Case(
        [engine(0), engine(1)],
        [new(0), new(1), outgoing(0), outgoing(1)],
        ctx=make_ctx(make_spec(max_surge=2)),
        events=2,
    ),
    "next-replica-once-the-last-is-done": Case(
        [engine(0, NEW), engine(1)], [engine(0, NEW), new(1), outgoing(1)], events=1
    ),
    "waits-while-the-replaced-engine-drains": Case(
        [engine(0, NEW), engine(1), outgoing(0, draining_since=NOW, ready=False)],
        [engine(0, NEW), new(1), outgoing(0, draining_since=NOW, ready=False), outgoing(1)],
        ctx=make_ctx(make_spec(max_surge=2)),
        events=1,
    ),
    "no-capacity-turns-the-surge-in-place": Case(
        [new(0), engine(1), outgoing(0)],
        [new(0), engine(1), outgoing(0, Outgoing.IN_PLACE)],
        ctx=make_ctx(make_spec(max_unavailable=1), worker_unschedulable=True),
        events=1,
    ),
    "no-capacity-keeps-a-placed-surge": Case(
        # maxSurge is spent by the placed surge; maxUnavailable 1 lets replica 1 go in place meanwhile.
        [engine(0, NEW, ready=False, pod_name="p9"), engine(1), outgoing(0)],
        [engine(0, NEW, ready=False, pod_name="p9"), new(1), outgoing(0), outgoing(1, Outgoing.IN_PLACE)],
        ctx=make_ctx(make_spec(max_unavailable=1), worker_unschedulable=True),
        events=1,
    ),
    "placed-surge-with-maxUnavailable-0-waits": Case(
        [engine(0, NEW, ready=False, pod_name="p9"), engine(1), outgoing(0)],
        [engine(0, NEW, ready=False, pod_name="p9"), engine(1), outgoing(0)],
    ),
    "no-capacity-and-maxUnavailable-0-waits": Case(
        [new(0), engine(1), outgoing(0)],
        [new(0), engine(1), outgoing(0)],
        ctx=make_ctx(worker_unschedulable=True),
    ),
    "no-capacity-starts-in-place": Case(
        [engine(0), engine(1)],
        [new(0), engine(1), outgoing(0, Outgoing.IN_PLACE)],
        ctx=make_ctx(make_spec(max_unavailable=1), worker_unschedulable=True),
        events=1,
    ),
    "maxSurge-0-goes-in-place": Case(
        [engine(0), engine(1)],
        [new(0), engine(1), outgoing(0, Outgoing.IN_PLACE)],
        ctx=make_ctx(make_spec(max_surge=0, max_unavailable=1)),
        events=1,
    ),
    "maxSurge-0-one-unavailable-at-a-time": Case(
        [new(0), engine(1), outgoing(0, Outgoing.IN_PLACE)],
        [new(0), engine(1), outgoing(0, Outgoing.IN_PLACE)],
        ctx=make_ctx(make_spec(max_surge=0, max_unavailable=1)),
    ),
    "never-below-replicas-minus-maxUnavailable": Case(
        # Engine 1 already fails: stopping engine 0 would leave none serving.
        [engine(0), engine(1, ready=False, unhealthy_since=NOW)],
        [engine(0), engine(1, ready=False, unhealthy_since=NOW)],
        ctx=make_ctx(make_spec(max_surge=0, max_unavailable=1)),
    ),
    "a-failing-new-engine-stalls-the-rollout": Case(
        [engine(0, NEW, ready=False, restarts=1), engine(1), outgoing(0)],
        [engine(0, NEW, ready=False, restarts=1), engine(1), outgoing(0)],
        ctx=make_ctx(make_spec(max_surge=2)),
    ),
    "a-given-up-new-engine-stalls-the-rollout": Case(
        [engine(0, NEW, ready=False, budget_exhausted=True, restarts=3), engine(1), outgoing(0)],
        [engine(0, NEW, ready=False, budget_exhausted=True, restarts=3), engine(1), outgoing(0)],
        ctx=make_ctx(make_spec(max_surge=2)),
    ),
    "edit-mid-rollout-replaces-the-previous-new-engine-like-an-old-one": Case(
        [engine(0, NEWER), engine(1)], [new(0), engine(1), outgoing(0, config=NEWER)], events=1
    ),
    "edit-mid-rollout-leaves-a-loading-previous-engine-to-decide": Case(
        [engine(0, NEWER, ready=False), engine(1), outgoing(0)],
        [engine(0, NEWER, ready=False), engine(1), outgoing(0)],
    ),
    "recreate-moves-nothing": Case(
        [engine(0), engine(1)], [engine(0), engine(1)], ctx=make_ctx(make_spec(strategy="Recreate"))
    ),
    "pods-replaced-moves-nothing": Case(
        [engine(0), engine(1)], [engine(0), engine(1)], ctx=make_ctx(pods_replaced=True)
    ),
    "suspend-moves-nothing": Case(
        [engine(0), outgoing(1)], [engine(0), outgoing(1)], ctx=make_ctx(make_spec(suspend=True))
    ),
    "scale-down-starts-nothing-past-replicas": Case(
        [engine(0, NEW), engine(1)], [engine(0, NEW), engine(1)], ctx=make_ctx(make_spec(replicas=1))
    ),
    "settled": Case([engine(0, NEW), engine(1, NEW)], [engine(0, NEW), engine(1, NEW)]),
}


@pytest.mark.parametrize("case", PLANS.values(), ids=PLANS.keys())
def test_begin_replacements(case: Case) -> None:
    planned = begin_replacements(case.records, case.ctx)
    assert planned.records == sorted(case.expect, key=lambda e: e.index)
    assert [e.reason for e in planned.events] == [EventReason.ENGINE_REPLACING] * case.events


def test_replacing_events_say_which_way() -> None:
    (surge,) = begin_replacements([engine(0), engine(1)], make_ctx()).events
    assert "extra worker pod" in surge.message and surge.message.startswith("engine 0:")
    ctx = make_ctx(make_spec(max_unavailable=1), worker_unschedulable=True)
    (in_place,) = begin_replacements([new(0), engine(1), outgoing(0)], ctx).events
    assert (
        in_place.message.startswith("engine 0:")
        and "surge worker pod cannot be scheduled" in in_place.message
    )
    assert "draining the old engine first" in in_place.message


# ---- decisions about outgoing engines and engines of older settings ----------------------------------


def job(status: str = "RUNNING") -> JobInfo:
    return JobInfo.model_validate(
        {"submission_id": "job", "status": status, "driver_agent_http_address": "http://10.0.0.7:52365"}
    )


READY = EngineProbe(EngineState.READY, "ok")


@dataclass(frozen=True)
class Verdict:
    record: EngineStatus
    expect: type[Action]
    successor: EngineStatus | None = None
    ctx: EngineContext = field(default_factory=make_ctx)
    job: JobInfo | None = None
    probe: EngineProbe | None = None
    why: str | None = None


VERDICTS = {
    "surge-serves-while-its-replacement-loads": Verdict(
        outgoing(0), Wait, successor=engine(0, NEW, ready=False), why=Waiting.REPLACEMENT_STARTING
    ),
    "surge-drains-once-its-replacement-is-ready": Verdict(outgoing(0), Drain, successor=engine(0, NEW)),
    "drained-is-retired": Verdict(
        outgoing(0, ready=False, draining_since=NOW - timedelta(seconds=6)),
        Retire,
        successor=engine(0, NEW),
        why=RETIRED_REPLACED,
    ),
    "surge-serves-on-when-the-new-engine-gave-up": Verdict(
        outgoing(0),
        Wait,
        successor=engine(0, NEW, ready=False, budget_exhausted=True),
        why=Waiting.REPLACEMENT_STARTING,
    ),
    "in-place-drains-at-once": Verdict(
        outgoing(0, Outgoing.IN_PLACE), Drain, successor=new(0), ctx=make_ctx(make_spec(max_unavailable=1))
    ),
    "scaled-away-replica-gives-way": Verdict(
        outgoing(1), Drain, successor=None, ctx=make_ctx(make_spec(replicas=1))
    ),
    "pods-replaced-gives-way": Verdict(
        outgoing(0), Drain, successor=new(0), ctx=make_ctx(pods_replaced=True)
    ),
    "suspend-retires-it": Verdict(outgoing(0), Retire, ctx=make_ctx(make_spec(suspend=True))),
    "older-engine-serves-until-its-turn": Verdict(
        engine(0), Wait, job=job(), probe=READY, why=Waiting.SERVING
    ),
    "older-engine-that-fails-is-replaced-at-once": Verdict(
        engine(0), Retire, job=job("FAILED"), why=RETIRED_STOPPED_SERVING
    ),
    "older-engine-never-ready-is-replaced-at-once": Verdict(
        engine(0, ready=False), Retire, why=RETIRED_STOPPED_SERVING
    ),
    "pods-replaced-recreates": Verdict(
        engine(0), Retire, ctx=make_ctx(pods_replaced=True), why=RETIRED_PODS_REPLACED
    ),
    "recreate-unchanged": Verdict(
        engine(0), Retire, ctx=make_ctx(make_spec(strategy="Recreate")), why=RETIRED_RECREATED
    ),
}


@pytest.mark.parametrize("case", VERDICTS.values(), ids=VERDICTS.keys())
def test_decide_during_a_rollout(case: Verdict) -> None:
    action = decide(
        case.record,
        case.job,
        case.probe,
        case.ctx,
        may_submit=True,
        slot_free=True,
        successor=case.successor,
    )
    assert type(action) is case.expect, action
    if case.why is not None:
        assert getattr(action, "why", None) == case.why, action


def test_older_engine_is_watched_only_under_rolling_replicas() -> None:
    assert watched(engine(0), make_ctx())
    assert not watched(engine(0), make_ctx(make_spec(strategy="Recreate")))
    assert not watched(engine(0), make_ctx(pods_replaced=True))
    assert not watched(outgoing(0), make_ctx())


def test_an_outgoing_engine_that_serves_is_probed_without_ray() -> None:
    serving = outgoing(0, url="http://10.0.0.7:8000/v1")
    assert engine_base_url(serving, make_ctx()) == "http://10.0.0.7:8000"
    draining = serving.model_copy(update={"ready": False, "draining_since": NOW})
    assert engine_base_url(draining, make_ctx()) is None


def test_a_failed_older_engine_is_replaced_by_a_new_one() -> None:
    action = decide(engine(0), job("FAILED"), None, make_ctx(), may_submit=True, slot_free=True)
    assert isinstance(action, Retire) and isinstance(action.replacement, Submit)
    assert action.replacement.pending.config_hash == NEW and action.replacement.pending.index == 0


def test_drain_and_stop_events_name_the_outgoing_engine() -> None:
    drain = decide(
        outgoing(0), None, None, make_ctx(), may_submit=False, slot_free=False, successor=engine(0, NEW)
    )
    assert isinstance(drain, Drain)
    (event,) = drain.events
    assert event.message.startswith("engine 0 (older settings, being replaced): replaced by its new engine")
    retire = decide(
        drain.record.model_copy(update={"draining_since": NOW - timedelta(seconds=9)}),
        None,
        None,
        make_ctx(),
        may_submit=False,
        slot_free=False,
        successor=engine(0, NEW),
    )
    assert isinstance(retire, Retire)
    assert [e.reason for e in retire.events] == [EventReason.ENGINE_STOPPED]


# ---- worker pods -----------------------------------------------------------------------------------------


WORKERS = [
    # (spec, engines in status, live worker pods, unplaced, plan)
    pytest.param(
        make_spec(replicas=1), [new(0), outgoing(0)], ["p0"], (), WorkerPlan(2), id="surge-adds-a-pod"
    ),
    pytest.param(
        make_spec(replicas=1),
        [engine(0, NEW, ready=False, pod_name="p9"), outgoing(0)],
        ["p0", "p9"],
        (),
        WorkerPlan(2),
        id="surge-keeps-both",
    ),
    pytest.param(
        make_spec(replicas=2, max_surge=1),
        [new(0), new(1), outgoing(0), outgoing(1)],
        ["p0", "p1"],
        (),
        WorkerPlan(3),
        id="never-past-maxSurge",
    ),
    pytest.param(
        make_spec(
            replicas=1, engine={"tensorParallelSize": 2}, ray={"image": "img", "worker": {"gpusPerWorker": 1}}
        ),
        [new(0), outgoing(0)],
        ["p0", "p0b"],
        (),
        WorkerPlan(4),
        id="one-engine-worth-of-pods",
    ),
    pytest.param(
        make_spec(replicas=1, max_unavailable=1),
        [new(0), outgoing(0, Outgoing.IN_PLACE)],
        ["p0", "p9"],
        {"p9"},
        WorkerPlan(1, ("p9",)),
        id="in-place-gives-up-the-unplaced-pod",
    ),
    pytest.param(
        make_spec(replicas=1, max_unavailable=1),
        [new(0)],
        ["a-pod", "z-pending"],
        {"z-pending"},
        WorkerPlan(1, ("z-pending",)),
        id="the-unplaced-pod-goes-first",
    ),
    pytest.param(
        make_spec(replicas=1),
        [engine(0, NEW, pod_name="p9")],
        ["p0", "p9"],
        (),
        WorkerPlan(1, ("p0",)),
        id="retired-old-pod-is-deleted",
    ),
    pytest.param(
        make_spec(replicas=1),
        [engine(0, NEW), new(1), outgoing(1)],
        ["p0", "p1"],
        (),
        WorkerPlan(2),
        id="outgoing-of-a-scaled-away-replica-drains-on-top",
    ),
]


@pytest.mark.parametrize(("spec", "engines", "pods", "unplaced", "plan"), WORKERS)
def test_plan_workers_during_a_rollout(
    spec: VLLMClusterSpec, engines: list[EngineStatus], pods: list[str], unplaced: Any, plan: WorkerPlan
) -> None:
    assert plan_workers(spec, engines, pods, unplaced) == plan


# ---- status ------------------------------------------------------------------------------------------------


def ray_cluster() -> dict[str, Any]:
    return {"metadata": {"name": "llm", "generation": 1}, "status": {"observedGeneration": 1}}


def status_of(
    engines: list[EngineStatus],
    spec: VLLMClusterSpec | None = None,
    *,
    outdated: int = 0,
    previous: Any = None,
) -> Any:
    spec = spec or make_spec(replicas=1)
    observation = Observation(
        ref=REF,
        spec=spec,
        ray_cluster=ray_cluster(),
        pods=PodCounts(head_ready=True, ready_workers=spec.desired_workers, outdated=outdated),
        engines=engines,
        previous=previous,
    )
    return compute_status(observation, NOW)


def progressing(status: Any) -> tuple[str, str]:
    condition = status.condition(ConditionType.PROGRESSING)
    return condition.status, condition.reason


def test_status_while_surging_stays_ready_on_the_old_engine() -> None:
    status = status_of([engine(0, NEW, ready=False), outgoing(0)])
    assert (status.phase, status.ready_replicas, status.updated_replicas) == (Phase.READY, 1, 0)
    assert progressing(status) == ("True", Reason.ROLLING_SURGE)
    assert [e.index for e in status.engines] == [0, 1000]


def test_status_while_draining_the_old_engine() -> None:
    status = status_of([engine(0, NEW), outgoing(0, ready=False, draining_since=NOW)])
    assert (status.ready_replicas, status.updated_replicas) == (1, 1)
    assert progressing(status) == ("True", Reason.ROLLING_DRAIN_OLD)


def test_status_when_the_rollout_is_complete() -> None:
    status = status_of([engine(0, NEW)])
    assert (status.phase, status.updated_replicas) == (Phase.READY, 1)
    assert progressing(status) == ("False", Reason.ROLLOUT_COMPLETE)
    recreate = status_of(
        [engine(0, engine_config_hash(make_spec(replicas=1, strategy="Recreate")))],
        make_spec(replicas=1, strategy="Recreate"),
    )
    assert progressing(recreate) == ("False", Reason.RECONCILE_COMPLETE)


def test_status_of_a_stalled_rollout_keeps_the_old_engine_serving() -> None:
    failed = engine(0, NEW, ready=False, restarts=3, budget_exhausted=True, last_failure="no such model")
    status = status_of([failed, outgoing(0)])
    assert (status.phase, status.ready_replicas) == (Phase.DEGRADED, 1)
    assert progressing(status) == ("False", Reason.ROLLOUT_STALLED)
    assert "no such model" in status.condition(ConditionType.PROGRESSING).message
    assert status.condition(ConditionType.READY).reason == Reason.RESTART_BUDGET_EXHAUSTED


def test_status_when_the_pods_are_replaced() -> None:
    status = status_of([engine(0)], outdated=2)
    assert progressing(status) == ("True", Reason.ROLLOUT_RECREATE)


def test_status_while_older_engines_wait_their_turn() -> None:
    step = rollout_step(
        make_spec(max_surge=0, max_unavailable=1),
        NEW,
        [engine(0), engine(1, ready=False, unhealthy_since=NOW)],
        pods_replaced=False,
    )
    assert step is not None and step.reason == Reason.ROLLOUT_WAITING and step.progressing


def test_rollout_events() -> None:
    surging = status_of([engine(0, NEW, ready=False), outgoing(0)])
    stalled = status_of(
        [engine(0, NEW, ready=False, restarts=1, last_failure="boom"), outgoing(0)], previous=surging
    )
    (warning,) = [e for e in transition_events(surging, stalled) if e.reason == Reason.ROLLOUT_STALLED]
    assert warning.type == "Warning" and "boom" in warning.message
    draining = status_of([engine(0, NEW), outgoing(0, ready=False, draining_since=NOW)], previous=surging)
    done = status_of([engine(0, NEW)], previous=draining)
    assert [e.reason for e in transition_events(draining, done)] == [Reason.ROLLOUT_COMPLETE]
    assert transition_events(done, status_of([engine(0, NEW)], previous=done)) == []


# ---- one replica through a whole surge, pass by pass -----------------------------------------------------


def test_a_surge_pass_by_pass() -> None:
    ctx = make_ctx(make_spec(replicas=1))
    records = begin_replacements([engine(0)], ctx).records
    assert records == [new(0), outgoing(0)]
    assert plan_workers(ctx.spec, records, ["p0"]) == WorkerPlan(2)
    # The new engine is submitted on the surge pod's slot while the old one serves.
    action = decide(records[0], None, None, ctx, may_submit=True, slot_free=True)
    assert isinstance(action, Submit)
    loading = replace_ready(action.pending, ready=False, pod_name="p9")
    assert begin_replacements([loading, records[1]], ctx).records == [loading, records[1]]
    assert isinstance(
        decide(records[1], None, None, ctx, may_submit=False, slot_free=False, successor=loading), Wait
    )
    # Ready: the old engine drains, then is retired; its pod is the one removed.
    ready = replace_ready(loading, ready=True)
    drain = decide(records[1], None, None, ctx, may_submit=False, slot_free=False, successor=ready)
    assert isinstance(drain, Drain) and not drain.record.ready
    later = replace(ctx, now=NOW + timedelta(seconds=SETTINGS.drain_seconds))
    retire = decide(drain.record, None, None, later, may_submit=False, slot_free=False, successor=ready)
    assert isinstance(retire, Retire) and retire.replacement is None
    assert plan_workers(ctx.spec, [ready], ["p0", "p9"]) == WorkerPlan(1, ("p0",))


def replace_ready(record: EngineStatus, **update: Any) -> EngineStatus:
    return record.model_copy(update={"job_status": "RUNNING", **update})


def test_strategy_defaults_keep_what_a_stored_object_does() -> None:
    stored = VLLMClusterSpec.model_validate({"model": {"source": "hf://org/model"}, "ray": {"image": "img"}})
    assert (stored.upgrade_strategy.type, stored.rolling) == ("Recreate", False)
    rolling = make_spec(max_surge=0, max_unavailable=1)
    assert rolling.rolling and rolling.upgrade_strategy.max_unavailable == 1
    with pytest.raises(ValueError, match=r"maxSurge \+ spec.upgradeStrategy.maxUnavailable must be >= 1"):
        make_spec(max_surge=0, max_unavailable=0)
    # Under Recreate both 0 is meaningless but harmless: only RollingReplicas needs the budget.
    assert not make_spec(strategy="Recreate", max_surge=0, max_unavailable=0).rolling
