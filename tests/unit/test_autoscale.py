"""The autoscaler's decision as a table: (spec.replicas, signals, remembered windows, now) -> the next
spec.replicas, the Event and the windows to remember; the signals read from the engines' records; and the two
reconcile steps around it (with a recording stand-in for the one Kubernetes call, as test_steps does: the
real write is tested in tests/integration/test_autoscaling_bounds.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest

from rayvllm.autoscale import ScaleDecision, Signals, Windows, averaged_loads, decide_scale, signals_of
from rayvllm.engine.probe import LoadSample
from rayvllm.errors import TransientError
from rayvllm.identity import ClusterRef
from rayvllm.models import parse_spec
from rayvllm.models.spec import AutoscalingSpec
from rayvllm.models.status import EngineStatus
from rayvllm.reasons import EventReason
from rayvllm.reconcile import Children, Clients, Memory, Pass, autoscale, bound_replicas
from rayvllm.settings import Settings

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
UP, DOWN = 20, 60  # scaleUpStabilizationSeconds, scaleDownDelaySeconds

SPEC = AutoscalingSpec.model_validate(
    {
        "minReplicas": 1,
        "maxReplicas": 3,
        "targetRequestsPerReplica": 2,
        "scaleUpStabilizationSeconds": UP,
        "scaleDownDelaySeconds": DOWN,
    }
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def above(since: float, replicas: int) -> Windows:
    return Windows(replicas=replicas, above_since=at(since))


def below(since: float, replicas: int) -> Windows:
    return Windows(replicas=replicas, below_since=at(since))


@dataclass(frozen=True)
class Case:
    id: str
    replicas: int
    signals: Signals
    windows: Windows
    now: float
    step_to: int | None
    remembered: Windows


CASES = [
    # The way up: above the target (2 per engine) for the stabilization window.
    Case("above-opens-the-up-window", 1, Signals((5,)), Windows(), 0, None, above(0, 1)),
    Case("no-up-before-the-window", 1, Signals((5,)), above(0, 1), UP - 1, None, above(0, 1)),
    Case("up-after-the-window", 1, Signals((5,)), above(0, 1), UP, 2, Windows(replicas=1)),
    Case("up-is-one-step-however-high", 1, Signals((50,)), above(0, 1), UP, 2, Windows(replicas=1)),
    Case("average-over-ready-engines", 2, Signals((4, 1)), above(0, 2), UP, 3, Windows(replicas=2)),
    Case("at-the-target-is-not-above", 1, Signals((2,)), above(0, 1), UP, None, Windows(replicas=1)),
    Case("never-above-max", 3, Signals((9, 9, 9)), above(0, 3), UP, None, Windows(replicas=3)),
    # The way down: the same load over one engine fewer stays below the target, for the delay.
    Case("below-opens-the-down-window", 2, Signals((1, 0)), Windows(), 0, None, below(0, 2)),
    Case("no-down-before-the-delay", 2, Signals((1, 0)), below(0, 2), DOWN - 1, None, below(0, 2)),
    Case("down-after-the-delay", 2, Signals((1, 0)), below(0, 2), DOWN, 1, Windows(replicas=2)),
    Case("down-is-one-step-however-idle", 3, Signals((0, 0, 0)), below(0, 3), DOWN, 2, Windows(replicas=3)),
    # 3 requests: 1.5 per engine over 2 (below 2), but 3 over one engine fewer would be above: hysteresis.
    Case(
        "no-down-when-one-fewer-would-be-above",
        2,
        Signals((2, 1)),
        below(0, 2),
        DOWN,
        None,
        Windows(replicas=2),
    ),
    Case("never-below-min", 1, Signals((0,)), below(0, 1), DOWN, None, Windows(replicas=1)),
    # A flip of the condition closes the other window and opens its own.
    Case("up-window-resets-on-a-flip-to-below", 2, Signals((0, 0)), above(0, 2), UP, None, below(UP, 2)),
    Case(
        "down-window-resets-on-a-flip-to-above", 2, Signals((5, 5)), below(0, 2), DOWN, None, above(DOWN, 2)
    ),
    Case("in-between-closes-both", 2, Signals((2, 1.5)), above(0, 2), UP, None, Windows(replicas=2)),
    # Windows measured at another spec.replicas (our last step, or kubectl scale) start again.
    Case("new-replicas-restart-the-window", 2, Signals((5, 5)), above(0, 1), UP, None, above(UP, 2)),
    # Nothing is decided without a full signal, nor while the last step settles; windows close.
    Case("no-ready-engines", 1, Signals(()), above(0, 1), UP, None, Windows(replicas=1)),
    Case("missing-signal", 2, Signals((5,), missing=1), above(0, 2), UP, None, Windows(replicas=2)),
    Case(
        "settling",
        2,
        Signals((5,), settling="engine(s) 1 still starting"),
        above(0, 2),
        UP,
        None,
        Windows(replicas=2),
    ),
    # spec.replicas outside the bounds (kubectl scale, or bounds edited) comes back at once.
    Case("below-min-comes-up-at-once", 0, Signals(()), Windows(), 0, 1, Windows(replicas=0)),
    Case("above-max-comes-down-at-once", 5, Signals((9,) * 5), Windows(), 0, 3, Windows(replicas=5)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_the_decision_table(case: Case) -> None:
    decision = decide_scale(SPEC, case.replicas, case.signals, case.windows, at(case.now))
    assert decision.replicas == case.step_to, decision.detail
    assert decision.windows == case.remembered, decision.detail
    if case.step_to is None:
        assert decision.event is None
    else:
        assert decision.event is not None
        wanted = EventReason.SCALED_UP if case.step_to > case.replicas else EventReason.SCALED_DOWN
        assert decision.event.reason is wanted
        assert decision.event.message.startswith(f"replicas {case.replicas} -> {case.step_to}: ")


def test_the_event_carries_the_numbers_that_drove_it() -> None:
    up = decide_scale(SPEC, 2, Signals((4, 3)), above(0, 2), at(25))
    assert up.event is not None
    assert up.event.message == (
        "replicas 2 -> 3: 7 requests running+waiting over 2 ready engine(s), 3.5 per engine, target 2: "
        "above the target for 25s (scaleUpStabilizationSeconds 20)"
    )
    down = decide_scale(SPEC, 2, Signals((1, 0.5)), below(0, 2), at(60))
    assert down.event is not None
    assert down.event.message == (
        "replicas 2 -> 1: 1.5 requests running+waiting over 2 ready engine(s), 0.75 per engine, target 2; "
        "1.5 per engine over 1 would stay below the target, for 60s (scaleDownDelaySeconds 60)"
    )


def test_an_open_window_asks_to_look_again_when_it_ends() -> None:
    decision = decide_scale(SPEC, 1, Signals((5,)), above(0, 1), at(5))
    assert decision.look_again_after == UP - 5
    settled: ScaleDecision = decide_scale(SPEC, 2, Signals((2, 1.5)), Windows(), at(0))
    assert settled.look_again_after is None


def test_a_ramp_takes_one_step_up_then_one_step_down() -> None:
    """Passes every 2 s: 3 requests in flight for 60 s (above the target on one engine, not on two), then
    none. One step up once the window passed, none while the new engine loads (10 s, settling), none back
    while the load lasts, one step down after the delay."""
    replicas, windows = 1, Windows()
    steps: list[tuple[int, int]] = []
    for tick in range(0, 200, 2):
        loading = replicas == 2 and tick < steps[0][0] + 10 if steps else False
        load = 3.0 if tick < 60 else 0.0
        per_engine = (load / replicas,) * (replicas - 1 if loading else replicas)
        signals = Signals(per_engine, settling="engine(s) 1 still starting" if loading else None)
        decision = decide_scale(SPEC, replicas, signals, windows, at(tick))
        windows = decision.windows
        if decision.replicas is not None:
            steps.append((tick, decision.replicas))
            replicas = decision.replicas
    assert steps == [(UP, 2), (60 + DOWN, 1)], steps


def engine(index: int, **fields: object) -> EngineStatus:
    return EngineStatus.model_validate({"index": index, "submissionId": f"s{index}", **fields})


READY = {"jobStatus": "RUNNING", "ready": True}


def test_signals_average_the_ready_staying_engines() -> None:
    engines = [engine(0, **READY), engine(1, **READY), engine(2, jobStatus="RUNNING", loadSeconds=5)]
    assert signals_of(engines, {0: 3.0, 1: None, 2: 7.0}, replicas=3) == Signals((3.0,), missing=1)


def test_signals_say_when_a_step_has_not_settled() -> None:
    loading = [engine(0, **READY), engine(1, jobStatus="RUNNING")]
    assert signals_of(loading, {0: 1.0}, replicas=2).settling == "engine(s) 1 still starting"
    leaving = [engine(0, **READY), engine(1, **READY, drainingSince=T0.isoformat())]
    assert signals_of(leaving, {0: 1.0, 1: 0.0}, replicas=1).settling == "engine(s) 1 still leaving"
    assert signals_of([engine(0, **READY)], {0: 1.0}, replicas=2).settling == "1 engine(s) not created yet"
    assert signals_of([engine(0, **READY)], {0: 1.0}, replicas=1) == Signals((1.0,))


# ---- the reconcile steps around the decision --------------------------------------------------------


class _ReplicasKube:
    """Records the writes of spec.replicas; refuses them (as the API server does when its `test` fails) while
    `refuse` is set."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.writes: list[tuple[int, int]] = []

    async def set_replicas(self, namespace: str, name: str, expected: int, replicas: int) -> str | None:
        if self.refuse is None:
            self.writes.append((expected, replicas))
        return self.refuse


AUTOSCALED = {
    "minReplicas": 1,
    "maxReplicas": 2,
    "targetRequestsPerReplica": 2,
    "scaleUpStabilizationSeconds": UP,
}
BODY = {"metadata": {"namespace": "team", "name": "llama", "uid": "uid-1", "generation": 1}}


def a_pass(memory: Memory, now: float, replicas: int, **spec: Any) -> Pass:
    parsed = parse_spec(
        {"model": {"source": "hf://org/m"}, "ray": {"image": "img"}, "replicas": replicas, **spec}
    )
    return Pass(ClusterRef.of(BODY), BODY, Settings(), at(now), Children(), memory, None, spec=parsed)


def test_a_replicas_past_a_bound_is_written_back_and_the_pass_goes_on_with_it() -> None:
    kube = _ReplicasKube()
    p = a_pass(Memory(), 0, replicas=5, autoscaling=AUTOSCALED)
    asyncio.run(bound_replicas(p, cast(Clients, SimpleNamespace(kube=kube))))
    assert kube.writes == [(5, 2)]
    assert p.spec is not None and p.spec.replicas == 2 and p.outcome.writes == 1
    assert [(e.reason, e.message) for e in p.outcome.events] == [
        (
            EventReason.SCALED_DOWN,
            "replicas 5 -> 2: spec.replicas 5 is above maxReplicas (spec.autoscaling owns spec.replicas)",
        )
    ]


def test_a_refused_bound_write_runs_the_pass_again_from_what_was_written() -> None:
    p = a_pass(Memory(), 0, replicas=5, autoscaling=AUTOSCALED)
    with pytest.raises(TransientError):
        asyncio.run(bound_replicas(p, cast(Clients, SimpleNamespace(kube=_ReplicasKube(refuse="HTTP 422")))))
    assert p.spec is not None and p.spec.replicas == 5 and p.outcome.events == []


def test_the_step_writes_only_when_the_decision_takes_a_step() -> None:
    kube, memory = _ReplicasKube(), Memory()
    io = cast(Clients, SimpleNamespace(kube=kube))
    ready = [EngineStatus(index=0, submission_id="s0", job_status="RUNNING", ready=True)]
    passes = []
    for now, load in ((0, 5.0), (UP / 2, 5.0), (UP, 5.0)):
        p = a_pass(memory, now, replicas=1, autoscaling=AUTOSCALED)
        p.engines, p.loads = list(ready), {0: LoadSample(load, 0.0)}
        asyncio.run(autoscale(p, io))
        passes.append((p.outcome.writes, [e.reason for e in p.outcome.events]))
    assert passes == [(0, []), (0, []), (1, [EventReason.SCALED_UP])]
    assert kube.writes == [(1, 2)]
    # At rest, not observed, or without autoscaling: nothing is written.
    quiet: list[tuple[dict[int, LoadSample | None] | None, dict[str, Any]]] = [
        ({0: LoadSample(0.0, 0.0)}, {"autoscaling": AUTOSCALED}),
        (None, {"autoscaling": AUTOSCALED}),
        ({0: LoadSample(9.0, 0.0)}, {}),
    ]
    for loads, spec in quiet:
        p = a_pass(memory, UP * 10, replicas=1, **spec)
        p.engines, p.loads = list(ready), loads
        asyncio.run(autoscale(p, io))
        assert p.outcome.writes == 0 and p.outcome.events == []
    assert kube.writes == [(1, 2)] and memory.scale_windows == Windows()


def test_a_refused_step_is_dropped_without_an_event() -> None:
    memory = Memory(scale_windows=above(0, 1))
    p = a_pass(memory, UP, replicas=1, autoscaling=AUTOSCALED)
    p.engines = [EngineStatus(index=0, submission_id="s0", job_status="RUNNING", ready=True)]
    p.loads = {0: LoadSample(5.0, 0.0)}
    asyncio.run(autoscale(p, cast(Clients, SimpleNamespace(kube=_ReplicasKube(refuse="HTTP 422")))))
    assert p.outcome.writes == 0 and p.outcome.events == []


@pytest.mark.parametrize(
    ("sample", "previous", "expected"),
    [
        # No earlier read: the gauges alone.
        (LoadSample(2.0, 50.0), None, 2.0),
        # 10 s of summed latency over 5 s: two requests in flight on average, though the gauges read 0
        # (short requests between two reads).
        (LoadSample(0.0, 60.0), (LoadSample(0.0, 50.0), 5.0), 2.0),
        # A long request still running: the gauges say more than the finished ones' latency.
        (LoadSample(3.0, 50.0), (LoadSample(3.0, 50.0), 5.0), 3.0),
        # The counter went back (the engine restarted): no average this pass.
        (LoadSample(1.0, 2.0), (LoadSample(0.0, 50.0), 5.0), 1.0),
        # The engine did not say: no load, and nothing kept.
        (None, (LoadSample(0.0, 50.0), 5.0), None),
    ],
)
def test_a_load_is_the_larger_of_the_gauges_and_the_average_since_the_last_read(
    sample: LoadSample | None, previous: tuple[LoadSample, float] | None, expected: float | None
) -> None:
    now = T0 + timedelta(seconds=10)
    kept_before = {} if previous is None else {0: (previous[0], now - timedelta(seconds=previous[1]))}
    loads, kept = averaged_loads({0: sample}, kept_before, now)
    assert loads == {0: expected}
    assert kept == ({} if sample is None else {0: (sample, now)})
