"""upgradeStrategy RollingReplicas: which engines of older settings give way to new ones this pass, and which
step of the rollout the object is at. Pure: no I/O, no clock.

The scheme, kept in status.engines alone (so a restarted operator continues where the rollout stands):
replica i's engine of older settings (its configHash is not the spec's) moves to index 1000+i with
`outgoing` set, and a new engine takes index i at once (submitted like any new replica). Replica indexes
therefore stay 0..replicas-1 throughout, and submission ids stay those of (replica, generation, attempt).
- Surge (while fewer than maxSurge are surging): the new engine gets a worker pod of its own on top of the
  desired count (rayvllm.workers); the outgoing engine serves until it is ready, then drains and is retired
  like a scaled-down engine, and its pod goes through workersToDelete.
- InPlace (maxSurge spent or 0, or the surge pod cannot be scheduled, and maxUnavailable allows it): the
  outgoing engine drains first; its replacement is submitted on the engine slot it frees.
A new engine of the current settings that fails (a restart, or its budget spent) stalls the rollout: no
further engine gives way, the outgoing ones keep serving, nothing is rolled back. A change that replaces
the Ray pods (KubeRay replaces every pod when their template changes, e.g. spec.ray.image) cannot keep any
old engine serving: it goes through Recreate (engine.decide), said in an Event and the Progressing reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rayvllm.engine.context import EngineContext
from rayvllm.events import Event
from rayvllm.models.spec import VLLMClusterSpec
from rayvllm.models.status import OUTGOING_INDEX_OFFSET, EngineStatus, Outgoing
from rayvllm.reasons import EventReason, Reason


def new_engine(index: int, ctx: EngineContext) -> EngineStatus:
    """A replica with no job yet, running this generation's engine settings."""
    return EngineStatus(index=index, generation=ctx.ref.generation, config_hash=ctx.config_hash)


def outgoing_index(replica: int) -> int:
    return OUTGOING_INDEX_OFFSET + replica


def keeps_serving_until_replaced(record: EngineStatus, ctx: EngineContext) -> bool:
    """A staying engine of older settings that has served in its attempt: under RollingReplicas it is
    watched and serves on until its turn to give way. One that never served (or failed) protects no
    traffic and is replaced at once, as under Recreate; so is every one when the Ray pods are replaced."""
    return (
        ctx.spec.rolling
        and not ctx.pods_replaced
        and record.outgoing is None
        and record.config_hash != ctx.config_hash
        and record.submission_id is not None
        and not record.budget_exhausted
        and (record.ready or record.unhealthy_since is not None)
    )


def gives_way(outgoing: EngineStatus, successor: EngineStatus | None, ctx: EngineContext) -> bool:
    """An outgoing engine drains now: InPlace, its replacement serves (or is no longer asked for, after a
    scale-down), or the Ray pods are replaced under it anyway."""
    return (
        outgoing.outgoing == Outgoing.IN_PLACE
        or ctx.pods_replaced
        or successor is None
        or successor.ready
        or outgoing.replica >= ctx.spec.replicas
    )


def failing_new_engines(
    engines: Sequence[EngineStatus], spec: VLLMClusterSpec, config_hash: str
) -> list[EngineStatus]:
    """Engines of the current settings that failed in this rollout and do not serve: they stall it."""
    return [
        e
        for e in engines
        if e.outgoing is None
        and e.index < spec.replicas
        and e.config_hash == config_hash
        and not e.ready
        and (e.restarts > 0 or e.budget_exhausted)
    ]


def _in_progress(engines: Sequence[EngineStatus], spec: VLLMClusterSpec, config_hash: str) -> bool:
    return any(
        e.outgoing is not None or (e.index < spec.replicas and e.config_hash != config_hash) for e in engines
    )


@dataclass(frozen=True)
class Replacements:
    records: list[EngineStatus]
    """Every record, moved where an engine gave way, sorted by index."""
    events: list[Event]


@dataclass
class _Budget:
    """What maxSurge and maxUnavailable still allow this pass."""

    spec: VLLMClusterSpec
    by_index: dict[int, EngineStatus]

    def _count(self, mode: Outgoing) -> int:
        return sum(e.outgoing == mode for e in self.by_index.values())

    @property
    def serving(self) -> int:
        """Engines serving, not counting an InPlace outgoing one: it drains in this pass."""
        return sum(e.ready and e.outgoing != Outgoing.IN_PLACE for e in self.by_index.values())

    def may_surge(self) -> bool:
        return self._count(Outgoing.SURGE) < self.spec.upgrade_strategy.max_surge

    def may_go_unavailable(self) -> bool:
        """One more engine may stop before its replacement serves: within maxUnavailable, and the engines
        serving stay at least replicas - maxUnavailable (never fewer by the operator's own doing)."""
        allowed = self.spec.upgrade_strategy.max_unavailable
        return self._count(Outgoing.IN_PLACE) < allowed and self.serving - 1 >= self.spec.replicas - allowed


def begin_replacements(records: Sequence[EngineStatus], ctx: EngineContext) -> Replacements:
    """This pass's moves: surges that cannot be placed turn InPlace where maxUnavailable allows, then the
    engines of older settings that serve give way in index order while the budget allows and no new engine
    fails. Nothing moves under Recreate, while suspended, or while the Ray pods are being replaced."""
    spec = ctx.spec
    if not spec.rolling or spec.suspend or ctx.pods_replaced:
        return Replacements(sorted(records, key=lambda e: e.index), [])
    budget = _Budget(spec, {e.index: e for e in records})
    by_index, events = budget.by_index, []
    if ctx.worker_unschedulable:
        for old in sorted(by_index.values(), key=lambda e: e.index):
            successor = by_index.get(old.replica)
            # Submitted means it found a free engine slot: its pod exists and was placed.
            placed = successor is not None and successor.submission_id is not None
            if old.outgoing != Outgoing.SURGE or old.draining_since is not None or placed:
                continue
            if not budget.may_go_unavailable():
                break
            by_index[old.index] = old.model_copy(update={"outgoing": Outgoing.IN_PLACE})
            events.append(_in_place_event(old.replica, spec, "the surge worker pod cannot be scheduled"))
    if failing_new_engines(list(by_index.values()), spec, ctx.config_hash):
        return Replacements(sorted(by_index.values(), key=lambda e: e.index), events)
    for replica in range(spec.replicas):
        current = by_index.get(replica)
        if current is None or not current.ready or not keeps_serving_until_replaced(current, ctx):
            continue
        if outgoing_index(replica) in by_index:
            continue  # the engine it replaced is still draining
        # With a worker pod unschedulable, a surge pod would not be placed either: in place when allowed;
        # with maxUnavailable 0 the surge is the only way, and it waits for capacity.
        surge_placeable = not ctx.worker_unschedulable or spec.upgrade_strategy.max_unavailable == 0
        if budget.may_surge() and surge_placeable:
            mode = Outgoing.SURGE
            events.append(
                Event(
                    "Normal",
                    EventReason.ENGINE_REPLACING,
                    f"engine {replica}: engine settings changed; starting its replacement on an extra worker "
                    f"pod (maxSurge {spec.upgrade_strategy.max_surge}); the old engine serves until it is ready",
                )
            )
        elif budget.may_go_unavailable():
            mode = Outgoing.IN_PLACE
            why = "maxSurge is spent" if spec.upgrade_strategy.max_surge else "maxSurge is 0"
            if ctx.worker_unschedulable:
                why = "a worker pod cannot be scheduled"
            events.append(_in_place_event(replica, spec, why))
        else:
            break
        by_index[outgoing_index(replica)] = current.model_copy(
            update={"index": outgoing_index(replica), "outgoing": mode}
        )
        by_index[replica] = new_engine(replica, ctx)
    return Replacements(sorted(by_index.values(), key=lambda e: e.index), events)


def _in_place_event(replica: int, spec: VLLMClusterSpec, why: str) -> Event:
    return Event(
        "Normal",
        EventReason.ENGINE_REPLACING,
        f"engine {replica}: engine settings changed; {why}: draining the old engine first, its replacement "
        f"takes its engine slot (maxUnavailable {spec.upgrade_strategy.max_unavailable})",
    )


def standing_in(engines: Sequence[EngineStatus]) -> dict[int, EngineStatus]:
    """Outgoing engines that serve, by the replica whose new engine is not ready yet: they count as that
    replica's engine for readiness (the Service routes to them)."""
    by_index = {e.index: e for e in engines}
    return {
        e.replica: e
        for e in engines
        if e.outgoing is not None and e.ready and not (by_index.get(e.replica) or e).ready
    }


@dataclass(frozen=True)
class RolloutStep:
    """The Progressing condition during a rolling upgrade."""

    progressing: bool
    reason: Reason
    message: str


def rollout_step(
    spec: VLLMClusterSpec, config_hash: str, engines: Sequence[EngineStatus], *, pods_replaced: bool
) -> RolloutStep | None:
    """Where a RollingReplicas rollout stands; None when none is under way (or the strategy is Recreate)."""
    if not spec.rolling or spec.suspend or not _in_progress(engines, spec, config_hash):
        return None
    staying = [e for e in engines if e.outgoing is None and e.index < spec.replicas]
    outgoing = [e for e in engines if e.outgoing is not None]
    stale = [e for e in staying if e.config_hash != config_hash]
    updated = sum(e.ready and e.config_hash == config_hash for e in staying)
    tally = f"{updated}/{spec.replicas} engines serve the current engine settings"
    if pods_replaced and stale:
        return RolloutStep(
            True,
            Reason.ROLLOUT_RECREATE,
            "the Ray pods are being replaced (spec.ray.image or another pod setting changed), so the engines "
            f"are recreated: RollingReplicas only rolls engine settings that keep the pods; {tally}",
        )
    failing = failing_new_engines(engines, spec, config_hash)
    if failing:
        first = failing[0]
        why = f": {first.last_failure}" if first.last_failure else ""
        return RolloutStep(
            False,
            Reason.ROLLOUT_STALLED,
            f"the new engine settings fail (engine {first.index}{why}); the rollout is stopped and "
            f"{len(outgoing) + len(stale)} engine(s) of older settings keep serving; {tally}",
        )
    draining = [e for e in outgoing if e.outgoing == Outgoing.IN_PLACE or e.draining_since is not None]
    if draining:
        names = ", ".join(str(e.replica) for e in draining)
        return RolloutStep(
            True, Reason.ROLLING_DRAIN_OLD, f"draining the old engine of replica(s) {names}; {tally}"
        )
    if outgoing:
        names = ", ".join(str(e.replica) for e in outgoing)
        return RolloutStep(
            True,
            Reason.ROLLING_SURGE,
            f"the new engine of replica(s) {names} starts on an extra worker pod while the old one serves; {tally}",
        )
    return RolloutStep(
        True,
        Reason.ROLLOUT_WAITING,
        f"{len(stale)} engine(s) of older settings wait for maxSurge / maxUnavailable to allow their "
        f"replacement; {tally}",
    )
