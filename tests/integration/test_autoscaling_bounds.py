"""spec.autoscaling on the real control plane with the real KubeRay (no Ray here, so no load signal: what is
tested is the part that needs none). A spec.replicas past a bound is brought back before the RayCluster is
sized from it, with an Event that says why; the operator's write of spec.replicas holds only if
spec.replicas is still what it decided on, and is owned by its field manager. The load-driven steps run on
real pods in tests/e2e/test_autoscaling.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayvllm.k8s.api import connect
from rayvllm.k8s.resources import Kubernetes
from tests.support.kube import Kube
from tests.support.operator import OperatorProcess
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "manifests" / "samples" / "minimal-gpu.yaml"


def sample(**spec: Any) -> dict[str, Any]:
    body = yaml.safe_load(SAMPLE.read_text())
    body["spec"].update(spec)
    return dict(body)


def get(kube: Kube, kind: str, namespace: str, name: str) -> dict[str, Any]:
    # kubectl leaves managedFields out unless asked; the write's owner is read from them.
    found = kube.get_json(kind, name, "-n", namespace, "--show-managed-fields")
    assert found is not None, f"{kind} {namespace}/{name} not found"
    return dict(found)


def scale_events(kube: Kube, namespace: str, name: str, reason: str) -> list[str]:
    return [e["message"] for e in kube.events(namespace, name) if e["reason"] == reason]


def test_replicas_past_a_bound_come_back_before_the_ray_cluster_is_sized(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    body = sample(replicas=3, autoscaling={"minReplicas": 1, "maxReplicas": 2, "targetRequestsPerReplica": 4})
    name = body["metadata"]["name"]
    kube.apply(body, namespace)

    wait_for(
        lambda: get(kube, "vllmcluster", namespace, name)["spec"]["replicas"] == 2,
        timeout=60,
        what="spec.replicas brought down to maxReplicas",
    )
    ray_cluster = wait_for(
        lambda: kube.get_json("raycluster", name, "-n", namespace), timeout=60, what="the RayCluster"
    )
    group = ray_cluster["spec"]["workerGroupSpecs"][0]
    assert group["replicas"] == 2
    # Created once, with 2 workers: never sized from the 3 that was past the bound.
    assert ray_cluster["metadata"]["generation"] == 1
    (message,) = wait_for(
        lambda: scale_events(kube, namespace, name, "ScaledDown"), timeout=30, what="the ScaledDown Event"
    )
    assert message == (
        "replicas 3 -> 2: spec.replicas 3 is above maxReplicas (spec.autoscaling owns spec.replicas)"
    )

    # kubectl scale below minReplicas: accepted by the API server, then brought back up to the bound.
    kube.kubectl("scale", f"vllm/{name}", "-n", namespace, "--replicas=0")
    wait_for(lambda: scale_events(kube, namespace, name, "ScaledUp"), timeout=60, what="the ScaledUp Event")
    assert get(kube, "vllmcluster", namespace, name)["spec"]["replicas"] == 1
    assert scale_events(kube, namespace, name, "ScaledUp") == [
        "replicas 0 -> 1: spec.replicas 0 is below minReplicas (spec.autoscaling owns spec.replicas)"
    ]
    wait_for(
        lambda: get(kube, "raycluster", namespace, name)["spec"]["workerGroupSpecs"][0]["replicas"] == 1,
        timeout=60,
        what="the RayCluster at 1 worker",
    )


def test_the_replicas_write_holds_only_if_replicas_is_unchanged(
    kube: Kube, namespace: str, crds: Path
) -> None:
    body = sample(replicas=1)
    name = body["metadata"]["name"]
    kube.apply(body, namespace)

    async def set_replicas(expected: int, replicas: int) -> str | None:
        async with connect(4, str(kube.kubeconfig)) as api:
            return await Kubernetes(api, "rayvllm").set_replicas(namespace, name, expected, replicas)

    refused = asyncio.run(set_replicas(expected=7, replicas=2))
    assert refused is not None and "422" in refused, refused
    assert get(kube, "vllmcluster", namespace, name)["spec"]["replicas"] == 1

    assert asyncio.run(set_replicas(expected=1, replicas=2)) is None
    stored = get(kube, "vllmcluster", namespace, name)
    assert stored["spec"]["replicas"] == 2
    owners = [
        entry["manager"]
        for entry in stored["metadata"].get("managedFields") or []
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
    ]
    assert owners == ["rayvllm"], stored["metadata"].get("managedFields")
