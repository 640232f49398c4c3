"""How many GPU worker pods the RayCluster keeps, and which ones KubeRay removes on a scale-down. Pure.

Left to itself KubeRay removes any worker when the count drops, possibly the pod of an engine that stays.
So a scale-down goes in two steps: while a retired engine drains (out of the Service, its job still
running), its pod is kept on top of the desired count; once its job is stopped, the workers that host no
engine are named in `scaleStrategy.workersToDelete`, which KubeRay deletes first (and at once: a pod is
named only when it is surplus)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rayvllm.models.spec import VLLMClusterSpec
from rayvllm.models.status import EngineStatus


@dataclass(frozen=True)
class WorkerPlan:
    replicas: int
    workers_to_delete: tuple[str, ...] = ()


def plan_workers(
    spec: VLLMClusterSpec, engines: Sequence[EngineStatus], worker_pods: Sequence[str]
) -> WorkerPlan:
    """`engines` as last written to status; `worker_pods` the names of the live worker pods."""
    desired = spec.desired_workers
    if spec.suspend:
        return WorkerPlan(desired)
    draining = {e.pod_name for e in engines if e.index >= spec.replicas and e.pod_name}
    kept = {e.pod_name for e in engines if e.index < spec.replicas and e.pod_name}
    if draining:
        return WorkerPlan(desired + len(draining - kept))
    excess = len(worker_pods) - desired
    if excess <= 0:
        return WorkerPlan(desired)
    idle = sorted(pod for pod in worker_pods if pod not in kept)
    return WorkerPlan(desired, tuple(idle[:excess]))
