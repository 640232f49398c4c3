"""How many GPU worker pods the RayCluster keeps, and which ones KubeRay removes on a scale-down. Pure.

Left to itself KubeRay removes any worker when the count drops, possibly the pod of an engine that stays.
So a scale-down goes in two steps: while a retired engine drains (out of the Service, its job still
running, then until Ray reports that job ended), its pod is kept on top of the desired count; once its
record is gone, the workers that host no engine are named in `scaleStrategy.workersToDelete`, which
KubeRay deletes first (and at once: a pod is named only when it is surplus)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from rayvllm.models.spec import VLLMClusterSpec
from rayvllm.models.status import EngineStatus, Outgoing


@dataclass(frozen=True)
class WorkerPlan:
    replicas: int
    workers_to_delete: tuple[str, ...] = ()


def plan_workers(
    spec: VLLMClusterSpec,
    engines: Sequence[EngineStatus],
    worker_pods: Sequence[str],
    unplaced: Collection[str] = (),
) -> WorkerPlan:
    """`engines` as last written to status; `worker_pods` the names of the live worker pods, `unplaced` those
    of them the scheduler cannot place (named first when some must go).

    On top of the desired count: the pod of each scaled-down engine still draining, and during a rolling
    upgrade (rayvllm.engine.rollout) one engine's worth of pods per surging replacement, never more than
    maxSurge engines' worth. An InPlace replacement takes its outgoing engine's slot: no pod on top."""
    desired = spec.desired_workers
    if spec.suspend:
        return WorkerPlan(desired)
    staying = {e.pod_name for e in engines if e.index < spec.replicas and e.pod_name}
    outgoing = {e.pod_name for e in engines if e.outgoing is not None and e.pod_name}
    # Leaving for good: scaled down, or outgoing for a replica that was scaled away.
    draining = {e.pod_name for e in engines if e.replica >= spec.replicas and e.pod_name}
    on_top = draining - staying
    surging = sum(e.outgoing == Outgoing.SURGE and e.replica < spec.replicas for e in engines)
    surge_workers = min(surging, spec.upgrade_strategy.max_surge) * spec.workers_per_engine
    target = desired + len(on_top) + surge_workers
    excess = len(worker_pods) - target
    if excess <= 0:
        return WorkerPlan(target)
    busy = staying | outgoing | on_top
    idle = sorted((pod for pod in worker_pods if pod not in busy), key=lambda pod: (pod not in unplaced, pod))
    return WorkerPlan(target, tuple(idle[:excess]))
