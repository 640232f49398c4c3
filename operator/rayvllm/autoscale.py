"""The autoscaler's decision, pure: (signals, remembered windows, spec, now) -> the next spec.replicas (or
none) and why. No I/O, no clock: the reconcile step `autoscale` reads the signals, keeps the windows and
writes spec.replicas when a decision says so.

The signal is vLLM's own: `vllm:num_requests_running + vllm:num_requests_waiting` of each ready engine
(engine.health.requests_in_flight), or the average of the same since the last pass where that is larger
(averaged_loads), averaged over the ready engines. One engine is added when the average has
stayed above `targetRequestsPerReplica` for `scaleUpStabilizationSeconds`; one is removed when the same load
over one engine fewer has stayed below the target for `scaleDownDelaySeconds`. The gap between the two
thresholds is the hysteresis: a step up never makes a step down true for the same load, nor the reverse. A
window only runs while its condition is seen at every pass; anything else (the other condition, a missing
signal, a step still in progress, a new spec.replicas) closes it, so at most one step is taken per window and
none while the last one settles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from rayvllm.engine.probe import LoadSample
from rayvllm.events import Event
from rayvllm.models.spec import AutoscalingSpec
from rayvllm.models.status import EngineStage, EngineStatus, engine_stage
from rayvllm.reasons import EventReason

# Stages of an engine on its way in: a step (ours or a user's) has not settled while one is in them.
ARRIVING = frozenset({EngineStage.SUBMITTED, EngineStage.WAITING_FOR_RESOURCES, EngineStage.LOADING})


@dataclass(frozen=True)
class Signals:
    """What this pass read of the engines' load."""

    loads: tuple[float, ...]
    """Requests running + waiting of each ready engine whose /metrics said so."""
    missing: int = 0
    """Ready engines whose /metrics did not answer with both gauges."""
    settling: str | None = None
    """Why the last step is still in progress (an engine arriving or leaving); None: settled."""

    @property
    def total(self) -> float:
        return sum(self.loads)


def signals_of(engines: Sequence[EngineStatus], loads: Mapping[int, float | None], replicas: int) -> Signals:
    """The signals from this pass's engine records and the loads read from the ready ones (by index)."""
    leaving = sorted(e.index for e in engines if e.index >= replicas)
    arriving = sorted(e.index for e in engines if e.index < replicas and engine_stage(e) in ARRIVING)
    absent = replicas - len([e for e in engines if e.index < replicas])
    settling = None
    if leaving:
        settling = f"engine(s) {_indices(leaving)} still leaving"
    elif arriving:
        settling = f"engine(s) {_indices(arriving)} still starting"
    elif absent > 0:
        settling = f"{absent} engine(s) not created yet"
    ready = [e.index for e in engines if e.ready and e.index < replicas]
    read = [loads.get(index) for index in ready]
    return Signals(
        loads=tuple(load for load in read if load is not None),
        missing=sum(load is None for load in read),
        settling=settling,
    )


Sampled = tuple[LoadSample, datetime]


def averaged_loads(
    samples: Mapping[int, LoadSample | None], previous: Mapping[int, Sampled], now: datetime
) -> tuple[dict[int, float | None], dict[int, Sampled]]:
    """Each engine's load (by index) from this pass's read of its /metrics and the last one kept, and what
    to keep for the next pass. The load is the larger of the gauges read now and the average number of
    requests in flight since the last read (the growth of the summed request latency over the time between,
    Little's law). The gauges alone are a single moment: read between two bursts of short requests (or while
    a busy engine's server only answers /metrics between its steps) they say 0 under a steady load, while
    the average misses a long request until it finishes. A counter that went back (the engine restarted)
    gives no average this pass."""
    loads: dict[int, float | None] = {}
    kept: dict[int, Sampled] = {}
    for index, sample in samples.items():
        if sample is None:
            loads[index] = None
            continue
        kept[index] = (sample, now)
        before = previous.get(index)
        average = 0.0
        if before is not None:
            grown = sample.latency_seconds - before[0].latency_seconds
            elapsed = (now - before[1]).total_seconds()
            if grown >= 0 and elapsed > 0:
                average = grown / elapsed
        loads[index] = max(sample.in_flight, average)
    return loads, kept


@dataclass(frozen=True)
class Windows:
    """The open windows, kept between passes: since when the average has stayed above the target (the way
    up), or one engine fewer would have stayed below it (the way down); at most one is open. Measured at
    `replicas` engines: a different spec.replicas opens them afresh."""

    replicas: int | None = None
    above_since: datetime | None = None
    below_since: datetime | None = None


@dataclass(frozen=True)
class ScaleDecision:
    replicas: int | None
    """The spec.replicas to write; None: keep it."""
    windows: Windows
    """To remember until the next pass."""
    detail: str
    """Why (the Event's message when there is a step; for the log otherwise)."""
    event: Event | None = None
    look_again_after: float | None = None
    """Seconds until the open window ends (None: none is open)."""


def decide_scale(
    spec: AutoscalingSpec, replicas: int, signals: Signals, windows: Windows, now: datetime
) -> ScaleDecision:
    closed = Windows(replicas=replicas)
    out_of_bounds = bring_within_bounds(spec, replicas)
    if out_of_bounds is not None:
        return out_of_bounds
    if signals.settling is not None:
        return ScaleDecision(None, closed, f"waiting: {signals.settling}")
    if not signals.loads:
        return ScaleDecision(None, closed, "waiting: no ready engine reported its load")
    if signals.missing:
        return ScaleDecision(None, closed, f"waiting: {signals.missing} ready engine(s) did not report load")
    if windows.replicas != replicas:
        windows = closed
    ready, total, target = len(signals.loads), signals.total, spec.target_requests_per_replica
    average = total / ready
    measured = (
        f"{_n(total)} requests running+waiting over {ready} ready engine(s), {_n(average)} per engine, "
        f"target {_n(target)}"
    )
    if average > target and replicas < spec.max_replicas:
        since = windows.above_since or now
        held = (now - since).total_seconds()
        window = spec.scale_up_stabilization_seconds
        if held >= window:
            why = f"{measured}: above the target for {held:.0f}s (scaleUpStabilizationSeconds {window})"
            return _step(replicas, replicas + 1, why, closed)
        opened = Windows(replicas=replicas, above_since=since)
        return ScaleDecision(
            None, opened, f"{measured}: above for {held:.0f}s of {window}s", None, window - held
        )
    fewer = ready - 1
    if fewer >= 1 and total / fewer < target and replicas > spec.min_replicas:
        since = windows.below_since or now
        held = (now - since).total_seconds()
        window = spec.scale_down_delay_seconds
        over_fewer = f"{_n(total / fewer)} per engine over {fewer}"
        if held >= window:
            why = (
                f"{measured}; {over_fewer} would stay below the target, for {held:.0f}s "
                f"(scaleDownDelaySeconds {window})"
            )
            return _step(replicas, replicas - 1, why, closed)
        opened = Windows(replicas=replicas, below_since=since)
        detail = f"{measured}; {over_fewer}: below for {held:.0f}s of {window}s"
        return ScaleDecision(None, opened, detail, None, window - held)
    return ScaleDecision(None, closed, f"{measured}: steady")


def bring_within_bounds(spec: AutoscalingSpec, replicas: int) -> ScaleDecision | None:
    """A spec.replicas outside [minReplicas, maxReplicas] (a `kubectl scale`, or bounds just edited) goes to
    the nearest bound at once, whatever the load; None when it is within them."""
    closed = Windows(replicas=replicas)
    if replicas < spec.min_replicas:
        why = f"spec.replicas {replicas} is below minReplicas (spec.autoscaling owns spec.replicas)"
        return _step(replicas, spec.min_replicas, why, closed)
    if replicas > spec.max_replicas:
        why = f"spec.replicas {replicas} is above maxReplicas (spec.autoscaling owns spec.replicas)"
        return _step(replicas, spec.max_replicas, why, closed)
    return None


def _step(current: int, wanted: int, why: str, windows: Windows) -> ScaleDecision:
    reason = EventReason.SCALED_UP if wanted > current else EventReason.SCALED_DOWN
    detail = f"replicas {current} -> {wanted}: {why}"
    return ScaleDecision(wanted, windows, detail, Event("Normal", reason, detail))


def _n(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _indices(indices: Sequence[int]) -> str:
    return ", ".join(map(str, indices))
