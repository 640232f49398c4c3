"""The worker-count decision of a scale-down (rayvllm.workers): a table of engines, pods and the plan."""

from __future__ import annotations

from typing import Any

import pytest

from rayvllm.builders import build_ray_cluster
from rayvllm.builders.labels import SPEC_HASH_ANNOTATION
from rayvllm.models import parse_spec
from rayvllm.models.status import EngineStatus
from rayvllm.workers import WorkerPlan, plan_workers


def spec(replicas: int, **changes: Any) -> Any:
    body: dict[str, Any] = {
        "model": {"source": "hf://org/model"},
        "ray": {"image": "img"},
        "replicas": replicas,
    }
    body.update(changes)
    return parse_spec(body)


def engine(index: int, pod: str | None, *, ready: bool = True) -> EngineStatus:
    return EngineStatus(index=index, pod_name=pod, ready=ready, submission_id=f"job-{index}")


CASES = [
    # (replicas, engines in status, live worker pods, plan)
    pytest.param(2, [], [], WorkerPlan(2), id="fresh"),
    pytest.param(2, [engine(0, "a")], ["a", "b"], WorkerPlan(2), id="scaling-up"),
    pytest.param(1, [engine(0, "a"), engine(1, "b")], ["a", "b"], WorkerPlan(2), id="draining-keeps-its-pod"),
    pytest.param(1, [engine(0, "a")], ["a", "b"], WorkerPlan(1, ("b",)), id="drained-names-the-idle-pod"),
    pytest.param(1, [engine(0, "b")], ["a", "b"], WorkerPlan(1, ("a",)), id="never-the-serving-pod"),
    pytest.param(1, [engine(0, "a")], ["a"], WorkerPlan(1), id="done"),
    pytest.param(
        1, [engine(0, "a"), engine(1, None)], ["a", "b"], WorkerPlan(1, ("b",)), id="retired-never-served"
    ),
    pytest.param(
        3,
        [engine(0, "a"), engine(1, "b"), engine(2, "c")],
        ["a", "b", "c", "d"],
        WorkerPlan(3, ("d",)),
        id="stray-pod",
    ),
]


@pytest.mark.parametrize(("replicas", "engines", "pods", "plan"), CASES)
def test_plan_workers(replicas: int, engines: list[EngineStatus], pods: list[str], plan: WorkerPlan) -> None:
    assert plan_workers(spec(replicas), engines, pods) == plan


def test_suspended_keeps_the_desired_shape() -> None:
    assert plan_workers(spec(1, suspend=True), [engine(0, "a"), engine(1, "b")], ["a", "b"]) == WorkerPlan(1)


def test_the_plan_reaches_the_worker_group() -> None:
    built = build_ray_cluster(spec(1), "x", "ns", "uid", WorkerPlan(2, ("x-gpu-worker-abc",)))
    (group,) = built["spec"]["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (2, 2, 2)
    assert group["scaleStrategy"] == {"workersToDelete": ["x-gpu-worker-abc"]}
    (plain,) = build_ray_cluster(spec(1), "x", "ns", "uid")["spec"]["workerGroupSpecs"]
    assert "scaleStrategy" not in plain and plain["replicas"] == 1


def _spec_hash(built: dict[str, Any]) -> str:
    annotations: set[str] = {
        g["template"]["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        for g in (built["spec"]["headGroupSpec"], *built["spec"]["workerGroupSpecs"])
    }
    (digest,) = annotations
    return digest


def test_spec_hash_ignores_worker_counts_and_follows_pod_changes() -> None:
    base = _spec_hash(build_ray_cluster(spec(1), "x", "ns", "uid"))
    assert _spec_hash(build_ray_cluster(spec(3), "x", "ns", "uid")) == base
    assert _spec_hash(build_ray_cluster(spec(1), "x", "ns", "uid", WorkerPlan(2, ("p",)))) == base
    assert _spec_hash(build_ray_cluster(spec(1, ray={"image": "img:2"}), "x", "ns", "uid")) != base
