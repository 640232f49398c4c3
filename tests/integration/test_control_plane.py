"""The foundation: the local control plane, KubeRay and the fake GPU nodes behave like a real cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.kube import Kube
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

GPU = "nvidia.com/gpu"


def raycluster(name: str, worker_gpus: int, workers: int) -> dict[str, Any]:
    container = {"name": "ray", "image": "rayproject/ray:2.60.0"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name},
        "spec": {
            "rayVersion": "2.60.0",
            "headGroupSpec": {
                "rayStartParams": {},
                "template": {
                    "spec": {
                        "containers": [
                            {
                                **container,
                                "name": "ray-head",
                                "resources": {"limits": {"cpu": "2", "memory": "4Gi"}},
                            }
                        ]
                    }
                },
            },
            "workerGroupSpecs": [
                {
                    "groupName": "gpu",
                    "replicas": workers,
                    "minReplicas": workers,
                    "maxReplicas": workers,
                    "rayStartParams": {},
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    **container,
                                    "name": "ray-worker",
                                    "resources": {
                                        "limits": {"cpu": "8", "memory": "32Gi", GPU: str(worker_gpus)},
                                    },
                                }
                            ]
                        }
                    },
                }
            ],
        },
    }


def pods(kube: Kube, namespace: str, cluster: str) -> list[dict[str, Any]]:
    found = kube.get_json("pods", "-n", namespace, "-l", f"ray.io/cluster={cluster}")
    return list(found["items"]) if found else []


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return pod.get("status", {}).get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


def test_raycluster_with_gpu_workers_becomes_ready(kube: Kube, namespace: str) -> None:
    kube.apply(raycluster("gpu", worker_gpus=8, workers=2), namespace)

    def all_ready() -> list[dict[str, Any]] | None:
        found = pods(kube, namespace, "gpu")
        return found if len(found) == 3 and all(is_ready(p) for p in found) else None

    ready = wait_for(all_ready, timeout=90, what="head + 2 GPU workers Running and Ready")
    nodes = {p["metadata"]["labels"]["ray.io/node-type"]: [] for p in ready}  # type: dict[str, list[str]]
    for pod in ready:
        nodes[pod["metadata"]["labels"]["ray.io/node-type"]].append(pod["spec"]["nodeName"])
    assert len(nodes["worker"]) == 2
    assert all(n.startswith("gpu-node-") for n in nodes["worker"]), nodes
    # 8 GPUs per worker fill a GPU node each: the two workers cannot share one.
    assert len(set(nodes["worker"])) == 2, nodes
    head = next(p for p in ready if p["metadata"]["labels"]["ray.io/node-type"] == "head")
    assert all(GPU not in c.get("resources", {}).get("limits", {}) for c in head["spec"]["containers"])

    state = wait_for(
        lambda: (
            (kube.get_json("raycluster", "gpu", "-n", namespace) or {}).get("status", {}).get("state")
            == "ready"
        ),
        timeout=60,
        what="RayCluster status.state == ready",
    )
    assert state


def test_worker_larger_than_any_node_stays_unschedulable(kube: Kube, namespace: str) -> None:
    kube.apply(raycluster("too-big", worker_gpus=16, workers=1), namespace)

    def unschedulable_worker() -> dict[str, Any] | None:
        for pod in pods(kube, namespace, "too-big"):
            if pod["metadata"]["labels"].get("ray.io/node-type") != "worker":
                continue
            for c in pod.get("status", {}).get("conditions", []):
                if (
                    c["type"] == "PodScheduled"
                    and c["status"] == "False"
                    and c.get("reason") == "Unschedulable"
                ):
                    return dict(pod)
        return None

    pod = wait_for(unschedulable_worker, timeout=60, what="the 16-GPU worker to be reported Unschedulable")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")
    message = next(c["message"] for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert "Insufficient nvidia.com/gpu" in message


def test_deleting_raycluster_garbage_collects_its_pods(kube: Kube, namespace: str) -> None:
    kube.apply(raycluster("gc", worker_gpus=1, workers=1), namespace)
    wait_for(lambda: len(pods(kube, namespace, "gc")) == 2, timeout=60, what="KubeRay to create 2 pods")
    kube.kubectl("delete", "raycluster", "gc", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(
        lambda: pods(kube, namespace, "gc") == [], timeout=90, what="the garbage collector to remove the pods"
    )


def test_service_account_without_rbac_is_forbidden(kube: Kube, namespace: str, tmp_path: Path) -> None:
    kube.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = kube.kubectl("create", "token", "nobody", "-n", namespace, "--duration=10m").stdout.strip()
    assert token
    as_nobody = Kube(token_kubeconfig(kube, token, tmp_path / "nobody.kubeconfig"), kube.kubectl_path)
    assert "nobody" in as_nobody.kubectl("auth", "whoami").stdout
    result = as_nobody.kubectl("get", "pods", "-n", namespace, check=False)
    assert result.returncode != 0
    assert "Forbidden" in result.stderr, result.stderr
    assert f"system:serviceaccount:{namespace}:nobody" in result.stderr, result.stderr
    # The same request as the admin user succeeds, so the 403 is authorization, not a broken server.
    assert kube.kubectl("get", "pods", "-n", namespace).returncode == 0


def token_kubeconfig(kube: Kube, token: str, path: Path) -> Path:
    """A kubeconfig that authenticates with `token` alone (no client certificate to fall back on)."""
    admin = json.loads(kube.kubectl("config", "view", "--raw", "-o", "json").stdout)
    cluster = admin["clusters"][0]
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "token", "user": {"token": token}}],
                "contexts": [{"name": "token", "context": {"cluster": cluster["name"], "user": "token"}}],
                "current-context": "token",
            }
        )
    )
    return path
