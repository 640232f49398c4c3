"""The endpoint half of supervision on the real control plane: the operator labels exactly the pods hosting
ready engines, and the real EndpointSlice controller then routes the `<name>` Service to those pods only.

(Engines need Ray and vLLM, which the e2e tier has; there the engines run on local Ray nodes, not in the
simulated pods. Here the engine records are given, and everything Kubernetes does is real.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rayvllm.builders import build_service, cluster_labels
from rayvllm.builders.raycluster import scrape_annotations
from rayvllm.k8s.api import connect
from rayvllm.k8s.resources import Kubernetes
from rayvllm.models import parse_spec
from rayvllm.models.status import EngineStatus
from rayvllm.observed import pod_view
from rayvllm.reconcile import label_serving_pods
from tests.support.kube import Kube
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

NAME = "svc"
RAY_CLUSTER_LABEL = "ray.io/cluster"
SPEC = parse_spec({"model": {"source": "hf://org/model"}, "ray": {"image": "img"}})
SCRAPE = scrape_annotations(SPEC)


def worker_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        # The labels KubeRay's pods get from our RayCluster's template, plus KubeRay's own.
        "metadata": {
            "name": name,
            "labels": {**cluster_labels(NAME), RAY_CLUSTER_LABEL: NAME, "ray.io/node-type": "worker"},
        },
        "spec": {"containers": [{"name": "ray-worker", "image": "img", "ports": [{"containerPort": 8000}]}]},
    }


def relabel(kube: Kube, namespace: str, engines: list[EngineStatus]) -> None:
    async def run() -> None:
        async with connect(4, str(kube.kubeconfig)) as api:
            k8s = Kubernetes(api, "rayvllm")
            pods = [pod_view(p) for p in kube.get_json("pods", "-n", namespace)["items"]]
            await label_serving_pods(k8s, namespace, pods, engines, "rayvllm-serving", SCRAPE)

    asyncio.run(run())


def endpoint_ips(kube: Kube, namespace: str) -> set[str]:
    slices = kube.get_json("endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={NAME}")
    return {
        address
        for item in (slices or {}).get("items", [])
        for endpoint in item.get("endpoints") or []
        if (endpoint.get("conditions") or {}).get("ready")
        for address in endpoint["addresses"]
    }


def test_service_routes_only_to_pods_of_ready_engines(kube: Kube, namespace: str) -> None:
    service = build_service(SPEC, NAME, namespace, "00000000-0000-0000-0000-000000000000")
    del service["metadata"]["ownerReferences"]  # no VLLMCluster owns it here
    kube.apply(service, namespace)
    for pod in ("worker-a", "worker-b"):
        kube.apply(worker_pod(pod), namespace)

    def pod_ips() -> dict[str, str] | None:
        pods = kube.get_json("pods", "-n", namespace)["items"]
        ips = {
            p["metadata"]["name"]: p["status"].get("podIP")
            for p in pods
            if p["status"].get("phase") == "Running"
        }
        return ips if len(ips) == 2 and all(ips.values()) else None

    ips = wait_for(pod_ips, timeout=60, what="both pods Running with an IP")
    assert ips["worker-a"] != ips["worker-b"], ips
    assert endpoint_ips(kube, namespace) == set()

    # Engine 0 is ready on worker-a, engine 1 is still loading on worker-b.
    engines = [
        EngineStatus(index=0, ready=True, pod_name="worker-a"),
        EngineStatus(index=1, ready=False, pod_name="worker-b"),
    ]
    relabel(kube, namespace, engines)
    labels = {
        p["metadata"]["name"]: p["metadata"].get("labels", {})
        for p in kube.get_json("pods", "-n", namespace)["items"]
    }
    assert labels["worker-a"].get("rayvllm.io/serving") == "true"
    assert "rayvllm.io/serving" not in labels["worker-b"]
    # The serving pod also carries Prometheus' scrape annotations (same write), the other does not.
    annotations = {
        p["metadata"]["name"]: p["metadata"].get("annotations") or {}
        for p in kube.get_json("pods", "-n", namespace)["items"]
    }
    assert {k: annotations["worker-a"].get(k) for k in SCRAPE} == SCRAPE
    assert not set(SCRAPE) & set(annotations["worker-b"])
    wait_for(
        lambda: endpoint_ips(kube, namespace) == {ips["worker-a"]},
        timeout=60,
        what="the Service to route to worker-a only",
    )

    # Engine 0 fails, engine 1 becomes ready: the label moves, and so does the traffic.
    relabel(
        kube,
        namespace,
        [engines[0].model_copy(update={"ready": False}), engines[1].model_copy(update={"ready": True})],
    )
    wait_for(
        lambda: endpoint_ips(kube, namespace) == {ips["worker-b"]},
        timeout=60,
        what="the Service to route to worker-b only",
    )
    labels = {
        p["metadata"]["name"]: p["metadata"].get("labels", {})
        for p in kube.get_json("pods", "-n", namespace)["items"]
    }
    assert "rayvllm.io/serving" not in labels["worker-a"]
    gone = kube.get_json("pod", "worker-a", "-n", namespace)["metadata"].get("annotations") or {}
    assert not set(SCRAPE) & set(gone), gone
    # The operator's other labels are untouched: it owns only the serving label on pods.
    assert labels["worker-a"][RAY_CLUSTER_LABEL] == NAME

    # No engine ready: nothing is routed.
    relabel(kube, namespace, [])
    wait_for(lambda: endpoint_ips(kube, namespace) == set(), timeout=60, what="the Service to route nowhere")
