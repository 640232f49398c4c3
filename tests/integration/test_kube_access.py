"""Kube.get_json, one persistent Python client instead of a kubectl process per poll, answers what
`kubectl get ... -o json` prints, on the real API server: a namespace, lists of pods (by label, and by short
name across kinds), a Service, a VLLMCluster (with and without managedFields), Events by field selector;
None where kubectl says NotFound; and the API server's /metrics through the same client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.kube import Kube, apiserver_writes

pytestmark = pytest.mark.integration

# Matches no node: the pods stay Pending, so the scheduler's first verdict is the last change to them.
NOWHERE = {"rayvllm.io/test-no-such-node": "true"}


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "kube-access", "which": name}},
        "spec": {"nodeSelector": NOWHERE, "containers": [{"name": "c", "image": "example.invalid/none:1"}]},
    }


SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    # Not the VLLMCluster's name: a running operator makes a Service of that name.
    "metadata": {"name": "plain", "labels": {"app": "kube-access"}},
    "spec": {"selector": {"app": "kube-access"}, "ports": [{"port": 8000}]},
}
VLLMCLUSTER = {
    "apiVersion": "rayvllm.io/v1alpha1",
    "kind": "VLLMCluster",
    "metadata": {"name": "kube-access"},
    "spec": {
        "model": {"source": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
        "replicas": 1,
        "ray": {"image": "vllm/vllm-openai:v0.33.0", "worker": {"gpusPerWorker": 1}},
    },
}


def kubectl_get(kube: Kube, *args: str) -> Any:
    result = kube.kubectl("get", *args, "-o", "json", check=False)
    if result.returncode != 0 and "NotFound" in result.stderr:
        return None
    assert result.returncode == 0, f"kubectl get {' '.join(args)}: {result.stderr}"
    return json.loads(result.stdout)


def agrees_with_kubectl(kube: Kube, *args: str) -> Any:
    """get_json(*args), asserted equal to kubectl's answer read just before and just after it (when those
    two differ, something changed meanwhile: read all three again)."""
    for _ in range(20):
        before = kubectl_get(kube, *args)
        ours = kube.get_json(*args)
        after = kubectl_get(kube, *args)
        if before == after:
            assert ours == before, f"get_json{args} differs from kubectl's"
            return ours
    pytest.fail(f"kubectl get {' '.join(args)} kept changing: nothing to compare with")


@pytest.fixture
def objects(kube: Kube, crds: Path, namespace: str) -> str:
    for made in (pod("pod-a"), pod("pod-b"), SERVICE, VLLMCLUSTER):
        kube.apply(made, namespace)
    return namespace


def test_get_json_prints_what_kubectl_prints(kube: Kube, objects: str) -> None:
    ns = objects
    assert agrees_with_kubectl(kube, "namespace", ns)["metadata"]["name"] == ns

    pods = agrees_with_kubectl(kube, "pods", "-n", ns, "-l", "app=kube-access")
    assert sorted(p["metadata"]["name"] for p in pods["items"]) == ["pod-a", "pod-b"]
    assert all(p["kind"] == "Pod" and p["apiVersion"] == "v1" for p in pods["items"])
    assert len(agrees_with_kubectl(kube, "po", "-n", ns, "-l", "which=pod-b")["items"]) == 1
    assert agrees_with_kubectl(kube, "pod", "pod-a", "-n", ns)["status"]["phase"] == "Pending"

    assert agrees_with_kubectl(kube, "service", "plain", "-n", ns)["spec"]["ports"][0]["port"] == 8000
    assert agrees_with_kubectl(kube, "svc/plain", "-n", ns)["kind"] == "Service"
    # Selected: a running operator adds a Service (and Ray's pods) for the VLLMCluster.
    mixed = agrees_with_kubectl(kube, "services,pods", "-n", ns, "-l", "app=kube-access")
    assert [o["kind"] for o in mixed["items"]] == ["Service", "Pod", "Pod"]

    custom = agrees_with_kubectl(kube, "vllmcluster", "kube-access", "-n", ns)
    assert "managedFields" not in custom["metadata"]
    managed = agrees_with_kubectl(kube, "vllmcluster", "kube-access", "-n", ns, "--show-managed-fields")
    assert managed["metadata"]["managedFields"], "server-side apply records its manager"
    listed = agrees_with_kubectl(kube, "vllm", "-n", ns)
    assert [o["metadata"]["name"] for o in listed["items"]] == ["kube-access"]

    agrees_with_kubectl(kube, "events", "-n", ns, "--field-selector", "involvedObject.name=pod-a")


def test_missing_objects_are_none_as_kubectl_says_notfound(kube: Kube, namespace: str) -> None:
    for args in (
        ("pod", "no-such-pod", "-n", namespace),
        ("service", "no-such-service", "-n", namespace),
        ("namespace", f"{namespace}-gone"),
        ("raycluster", "no-such-cluster", "-n", f"{namespace}-gone"),
    ):
        assert kubectl_get(kube, *args) is None, f"kubectl finds {args}"
        assert kube.get_json(*args) is None, f"get_json finds {args}"
    assert agrees_with_kubectl(kube, "pods", "-n", namespace)["items"] == []


def test_the_api_servers_metrics_through_the_same_client(kube: Kube, namespace: str) -> None:
    assert "apiserver_request_total" in kube.get_raw("/metrics")
    applies = ("APPLY", "pods", "")
    before = apiserver_writes(kube).get(applies, 0.0)
    kube.apply(pod("counted"), namespace)
    assert apiserver_writes(kube).get(applies, 0.0) >= before + 1
