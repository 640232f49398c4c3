"""The real node as the e2e tier sees it: the images imported into its containerd, its name, and the host
directories behind the PersistentVolumes of the tiny model and the model cache."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hack.localcluster.images import Images
from hack.localcluster.procs import wait_for
from hack.localcluster.workloads import on_real_node, volumes
from rayvllm.builders.raycluster import RAY_AUTH_TOKEN_KEY, build_ray_cluster, ray_auth_secret_name
from rayvllm.models.resource import VLLMCluster
from tests.support.kube import Kube


@dataclass(frozen=True)
class RealNodeWorld:
    images: Images
    node_name: str
    model_root: Path
    volumes_root: Path

    def cache_root(self, namespace: str) -> Path:
        return self.volumes_root / "cache" / namespace


DASHBOARD_PORT = 8265
SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "tiny-cpu.yaml"


def tiny_sample(name: str, namespace: str, ray_image: str) -> VLLMCluster:
    """manifests/samples/tiny-cpu.yaml as it runs on the real node (hack.localcluster.workloads)."""
    body = on_real_node(yaml.safe_load(SAMPLE.read_text()), ray_image)
    body["metadata"] = {"name": name, "namespace": namespace}
    return VLLMCluster.model_validate(body)


def bare_ray_cluster(resource: VLLMCluster) -> dict[str, Any]:
    """The RayCluster our builder makes for `resource`, owned by nothing (no VLLMCluster object exists: the
    garbage collector would remove a child of a missing owner)."""
    name, namespace = resource.metadata.name, resource.metadata.namespace
    assert name and namespace
    built = build_ray_cluster(resource.spec, name, namespace, uid="none")
    del built["metadata"]["ownerReferences"]
    return built


def pods_of(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    found = kube.get_json("pods", "-n", namespace, "-l", f"ray.io/cluster={name}")
    return list(found["items"]) if found else []


def running_on(pod: dict[str, Any], node: str) -> bool:
    status = pod.get("status") or {}
    ready = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready")
    return pod["spec"].get("nodeName") == node and status.get("phase") == "Running" and ready == "True"


@dataclass(frozen=True)
class RayOnPods:
    """A RayCluster running on the real node, as this machine reaches it."""

    name: str
    namespace: str
    dashboard_url: str
    token: str
    head_pod: dict[str, Any]
    worker_pod: dict[str, Any]

    @property
    def head_ip(self) -> str:
        return str(self.head_pod["status"]["podIP"])

    @property
    def worker_ip(self) -> str:
        return str(self.worker_pod["status"]["podIP"])


def apply_volumes(kube: Kube, world: RealNodeWorld, namespace: str) -> None:
    """The tiny model's and the model cache's PersistentVolumes and claims for `namespace`."""
    uid = kube.get_json("namespace", namespace)["metadata"]["uid"]
    for obj in volumes(namespace, uid, world.model_root, world.cache_root(namespace)):
        kube.apply(obj)


def start_ray_on_pods(
    kube: Kube, world: RealNodeWorld, resource: VLLMCluster, timings: dict[str, float] | None = None
) -> RayOnPods:
    """Apply the volumes and the bare RayCluster of `resource`, and wait for a head and a worker pod Running
    on the real node and KubeRay's `ready`; the dashboard is reached through the head Service, with
    KubeRay's token."""
    name, namespace = resource.metadata.name, resource.metadata.namespace
    assert name and namespace
    node = world.node_name
    start = time.monotonic()
    apply_volumes(kube, world, namespace)
    kube.apply(bare_ray_cluster(resource), namespace)

    def both_running() -> list[dict[str, Any]] | None:
        pods = pods_of(kube, namespace, name)
        return pods if len(pods) == 2 and all(running_on(p, node) for p in pods) else None

    pods = wait_for(
        both_running, timeout=300, interval=1, what="head and worker pods Running on the real node"
    )
    if timings is not None:
        timings["podsRunning"] = time.monotonic() - start
    wait_for(
        lambda: (
            ((kube.get_json("raycluster", name, "-n", namespace) or {}).get("status") or {}).get("state")
            == "ready"
        ),
        timeout=180,
        interval=1,
        what="KubeRay reports the RayCluster ready",
    )
    if timings is not None:
        timings["rayReady"] = time.monotonic() - start
    by_type = {p["metadata"]["labels"]["ray.io/node-type"]: p for p in pods}
    dashboard, token = dashboard_of(kube, namespace, name)
    return RayOnPods(name, namespace, dashboard, token, by_type["head"], by_type["worker"])


def dashboard_host(kube: Kube, namespace: str, name: str) -> str | None:
    """Where this machine reaches RayCluster `name`'s dashboard: its head Service's ClusterIP (through
    kube-proxy), or for a headless head Service its one endpoint, the head pod's IP. None while KubeRay has
    not made the Service (or the headless Service's head pod has no IP yet)."""
    service = kube.get_json("service", f"{name}-head-svc", "-n", namespace)
    if not service:
        return None
    host = service["spec"]["clusterIP"]
    if host == "None":
        heads = [
            p for p in pods_of(kube, namespace, name) if p["metadata"]["labels"]["ray.io/node-type"] == "head"
        ]
        host = (heads[0].get("status") or {}).get("podIP") if len(heads) == 1 else None
    return str(host) if host else None


def dashboard_of(kube: Kube, namespace: str, name: str) -> tuple[str, str]:
    """RayCluster `name`'s dashboard URL as this machine reaches it (dashboard_host) and the token KubeRay
    generated for it."""
    host = dashboard_host(kube, namespace, name)
    assert host, f"no head Service (or head pod IP) for {namespace}/{name}"
    secret = kube.get_json("secret", ray_auth_secret_name(name), "-n", namespace)
    assert secret, f"KubeRay wrote no token Secret for {namespace}/{name}"
    return f"http://{host}:{DASHBOARD_PORT}", base64.b64decode(secret["data"][RAY_AUTH_TOKEN_KEY]).decode()


def stop_ray_on_pods(kube: Kube, ray: RayOnPods) -> None:
    kube.kubectl(
        "delete", "raycluster", ray.name, "-n", ray.namespace, "--wait=true", "--timeout=120s", check=False
    )
    wait_for(lambda: not pods_of(kube, ray.namespace, ray.name), timeout=120, what="the Ray pods to go")
