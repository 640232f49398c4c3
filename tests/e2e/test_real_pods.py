"""`make day2`: the engine on a RayCluster without the operator. KubeRay's pods for real: the RayCluster our builder makes for the tiny CPU sample becomes a head and a
worker pod on the real node (containerd, runc, the CNI bridge) from the locally built Ray image; the worker
joins the head through CoreDNS; from this machine the head's dashboard answers through its Service, the
engine job our job builder makes lands on the worker pod through the slot resource, and vLLM serves a
completion from that pod. `kubectl logs` and `kubectl exec` reach the real kubelet. (`make test` proves the
same through the operator, phase P0 of its shared serving object, and the Ray contract alone in
tests/e2e/test_ray_client.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlparse

import httpx
import pytest

from hack.localcluster.workloads import CPU_ENGINE_ENV
from rayvllm.engine.job import EngineJobOptions, EngineRef, build_engine_job
from rayvllm.placement import ENGINE_SLOT_RESOURCE
from rayvllm.ray import JobInfo, RayDashboardClient
from tests.e2e.realnode import RealNodeWorld, start_ray_on_pods, stop_ray_on_pods, tiny_sample
from tests.support.kube import Kube
from tests.support.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.day2]


# A model load and two pods' lifecycles on two shared cores.
@pytest.mark.timeout(1200)
def test_ray_cluster_on_real_pods_serves_an_engine(
    kube: Kube, namespace: str, real_node: RealNodeWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "tiny"
    resource = tiny_sample(name, namespace, real_node.images.ray)
    start = time.monotonic()
    timings: dict[str, float] = {}
    ray = start_ray_on_pods(kube, real_node, resource, timings)

    job = build_engine_job(
        resource.spec,
        EngineRef(namespace, name, replica=0, generation=1, attempt=0),
        EngineJobOptions(extra_env=dict(CPU_ENGINE_ENV)),
    )

    async def submit_and_wait_running() -> JobInfo:
        async with RayDashboardClient(ray.dashboard_url, token=ray.token, timeout=10) as client:
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
    timings["jobRunning"] = time.monotonic() - start
    # The entrypoint runs on the worker pod (the slot resource), never on the head.
    host = urlparse(info.driver_agent_http_address).hostname
    assert host == ray.worker_ip != ray.head_ip, (info, ray.worker_ip, ray.head_ip)

    engine = f"http://{ray.worker_ip}:{resource.spec.engine.port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{engine}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=420, interval=2, what=f"vLLM /health on the worker pod {engine}")
    timings["engineReady"] = time.monotonic() - start
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
    head_log = kube.kubectl(
        "logs", "-n", namespace, ray.head_pod["metadata"]["name"], "-c", "ray-head"
    ).stdout
    assert "Ray runtime started" in head_log, head_log[-2000:]
    worker = ray.worker_pod["metadata"]["name"]
    version = kube.kubectl(
        "exec", "-n", namespace, worker, "-c", "ray-worker", "--", "ray", "--version"
    ).stdout
    assert "2.60.0" in version, version

    with capsys.disabled():
        rounded = {k: round(v, 1) for k, v in timings.items()}
        print(f"\n[e2e measurement] real pods, apply to serving (s): {json.dumps(rounded)}")
    stop_ray_on_pods(kube, ray)
