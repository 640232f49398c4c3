"""KubeRay's pods for real: the RayCluster our builder makes for the tiny CPU sample becomes a head and a
worker pod on the real node (containerd, runc, the CNI bridge) from the locally built Ray image; the worker
joins the head through CoreDNS; from this machine the head's dashboard answers through its Service, the
engine job our job builder makes lands on the worker pod through the slot resource, and vLLM serves a
completion from that pod. `kubectl logs` and `kubectl exec` reach the real kubelet."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from hack.localcluster.workloads import on_real_node, volumes
from rayvllm.builders.raycluster import RAY_AUTH_TOKEN_KEY, build_ray_cluster, ray_auth_secret_name
from rayvllm.engine.job import CPU_TEST_ENV, EngineJobOptions, EngineRef, build_engine_job
from rayvllm.models import ENGINE_SLOT_RESOURCE
from rayvllm.models.resource import VLLMCluster
from rayvllm.ray import JobInfo, RayDashboardClient
from tests.e2e.realnode import RealNodeWorld
from tests.support.kube import Kube
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "manifests" / "samples" / "tiny-cpu.yaml"


def pods_of(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    found = kube.get_json("pods", "-n", namespace, "-l", f"ray.io/cluster={name}")
    return list(found["items"]) if found else []


def running_on_real_node(pod: dict[str, Any], node: str) -> bool:
    status = pod.get("status") or {}
    ready = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready")
    return pod["spec"].get("nodeName") == node and status.get("phase") == "Running" and ready == "True"


def test_ray_cluster_on_real_pods_serves_an_engine(
    kube: Kube, namespace: str, real_node: RealNodeWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "tiny"
    for obj in volumes(namespace, real_node.model_root, real_node.cache_root(namespace)):
        kube.apply(obj)
    body = on_real_node(yaml.safe_load(SAMPLE.read_text()), real_node.images.ray)
    body["metadata"] = {"name": name, "namespace": namespace}
    resource = VLLMCluster.model_validate(body)
    ray_cluster = build_ray_cluster(resource.spec, name, namespace, uid="unused")
    # No VLLMCluster owns it here (the garbage collector would remove a child of a missing owner).
    del ray_cluster["metadata"]["ownerReferences"]
    start = time.monotonic()
    kube.apply(ray_cluster, namespace)

    def both_running() -> list[dict[str, Any]] | None:
        pods = pods_of(kube, namespace, name)
        ok = len(pods) == 2 and all(running_on_real_node(p, real_node.node_name) for p in pods)
        return pods if ok else None

    pods = wait_for(both_running, timeout=300, interval=1, what="head and worker pods Running on the real node")
    pods_running = time.monotonic() - start
    wait_for(
        lambda: (kube.get_json("raycluster", name, "-n", namespace).get("status") or {}).get("state") == "ready",
        timeout=180,
        interval=1,
        what="KubeRay reports the RayCluster ready",
    )
    ray_ready = time.monotonic() - start
    by_type = {p["metadata"]["labels"]["ray.io/node-type"]: p for p in pods}
    worker_ip = by_type["worker"]["status"]["podIP"]
    head_ip = by_type["head"]["status"]["podIP"]

    service = kube.get_json("service", f"{name}-head-svc", "-n", namespace)
    host = service["spec"]["clusterIP"]
    dashboard = f"http://{head_ip if host == 'None' else host}:8265"
    secret = kube.get_json("secret", ray_auth_secret_name(name), "-n", namespace)
    token = base64.b64decode(secret["data"][RAY_AUTH_TOKEN_KEY]).decode()

    job = build_engine_job(
        resource.spec,
        EngineRef(namespace, name, replica=0, generation=1, attempt=0),
        EngineJobOptions(extra_env=dict(CPU_TEST_ENV)),
    )

    async def submit_and_wait_running() -> JobInfo:
        async with RayDashboardClient(dashboard, token=token, timeout=10) as client:
            # The worker joined the head (through the head Service's DNS name): its slot is visible.
            deadline = time.monotonic() + 120
            while (await client.cluster_resources()).total(ENGINE_SLOT_RESOURCE) < 1:
                assert time.monotonic() < deadline, "the worker's engine slot never reached the Ray cluster"
                await asyncio.sleep(1)
            await client.submit(job)
            while True:
                info = await client.get(job.submission_id)
                assert info is not None and not info.terminal, info
                if info.status == "RUNNING" and info.driver_agent_http_address:
                    return info
                assert time.monotonic() < deadline + 120, info
                await asyncio.sleep(1)

    info = asyncio.run(submit_and_wait_running())
    job_running = time.monotonic() - start
    # The entrypoint runs on the worker pod (the slot resource), never on the head.
    assert urlparse(info.driver_agent_http_address).hostname == worker_ip, (info, worker_ip, head_ip)

    engine = f"http://{worker_ip}:{resource.spec.engine.port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{engine}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=420, interval=2, what=f"vLLM /health on the worker pod {engine}")
    engine_ready = time.monotonic() - start
    served = resource.spec.model.served_name(name)
    models = httpx.get(f"{engine}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [served]
    completion = httpx.post(
        f"{engine}/v1/completions",
        json={"model": served, "prompt": "The quick brown fox", "max_tokens": 8},
        timeout=60,
    )
    completion.raise_for_status()
    assert completion.json()["choices"][0]["text"]

    # kubectl logs and exec go through the API server to the real kubelet.
    head_log = kube.kubectl("logs", "-n", namespace, by_type["head"]["metadata"]["name"], "-c", "ray-head").stdout
    assert "Ray runtime started" in head_log, head_log[-2000:]
    version = kube.kubectl(
        "exec", "-n", namespace, by_type["worker"]["metadata"]["name"], "-c", "ray-worker", "--", "ray", "--version"
    ).stdout
    assert "2.60.0" in version, version

    with capsys.disabled():
        numbers = {"podsRunning": pods_running, "rayReady": ray_ready, "jobRunning": job_running, "engineReady": engine_ready}
        print("\n[e2e measurement] real pods, apply to serving: " + json.dumps({k: round(v, 1) for k, v in numbers.items()}))
    kube.kubectl("delete", "raycluster", name, "-n", namespace, "--wait=true", "--timeout=120s")
    wait_for(lambda: not pods_of(kube, namespace, name), timeout=120, what="the Ray pods to go")
