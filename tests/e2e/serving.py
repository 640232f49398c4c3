"""What the e2e tests (and the chaos suite) do with a VLLMCluster on real pods: read its status and its Ray
jobs, wait for Ready, call its endpoint Service with the official `openai` client under a bounded steady
load, find its pods and its engines' processes."""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import openai
import pytest
import yaml

from hack.localcluster.workloads import on_real_node
from rayvllm.ray import JobInfo, RayDashboardClient
from tests.e2e.realnode import SAMPLE, RealNodeWorld, dashboard_of, pods_of
from tests.support.kube import Kube
from tests.support.wait import wait_for

READY_TIMEOUT = 600.0  # a model load on a worker pod sharing two cores: ~1-2 min measured; generous


def manifest(name: str, world: RealNodeWorld, **spec_changes: Any) -> dict[str, Any]:
    """The tiny CPU sample as VLLMCluster `name` on the real node. It serves its own name as its model name,
    so its vLLM processes are told from any other test's by their command line."""
    body: dict[str, Any] = on_real_node(yaml.safe_load(SAMPLE.read_text()), world.images.ray)
    body["metadata"]["name"] = name
    body["spec"]["model"]["servedModelName"] = name
    body["spec"].update(spec_changes)
    return body


def with_credentials(kube: Kube, namespace: str, body: dict[str, Any], hf_token: str, api_key: str) -> None:
    """Stores an HF token and an API key in a Secret named after the object and points its spec at them:
    the values a test later looks for where they must never appear."""
    secret = f"{body['metadata']['name']}-credentials"
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret},
            "stringData": {"hf-token": hf_token, "api-key": api_key},
        },
        namespace,
    )
    body["spec"]["model"]["hfTokenSecretRef"] = {"name": secret, "key": "hf-token"}
    body["spec"]["engine"]["apiKeySecretRef"] = {"name": secret, "key": "api-key"}


def vllm(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    found = kube.get_json("vllmcluster", name, "-n", namespace)
    assert found is not None, f"{namespace}/{name} is gone"
    return dict(found)


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def engines(obj: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {e["index"]: e for e in (obj.get("status") or {}).get("engines") or []}


def job_records(kube: Kube, namespace: str, name: str) -> dict[str, JobInfo]:
    """submission id -> Ray's record of every Ray job of this VLLMCluster, read from Ray itself."""
    url, token = dashboard_of(kube, namespace, name)

    async def listed() -> dict[str, JobInfo]:
        async with RayDashboardClient(url, token=token, timeout=10) as client:
            return {
                job.submission_id: job
                for job in await client.list()
                if job.metadata.get("rayvllm.io/namespace") == namespace
                and job.metadata.get("rayvllm.io/name") == name
            }

    return asyncio.run(listed())


def jobs_of(kube: Kube, namespace: str, name: str) -> dict[str, str]:
    """submission id -> status of every Ray job of this VLLMCluster, read from Ray itself."""
    return {sid: job.status for sid, job in job_records(kube, namespace, name).items()}


def wait_ready(kube: Kube, namespace: str, name: str, replicas: int = 1) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = vllm(kube, namespace, name)
        ok = conditions(obj).get("Ready", {}).get("status") == "True"
        return obj if ok and (obj.get("status") or {}).get("readyReplicas") == replicas else None

    return wait_for(
        ready, timeout=READY_TIMEOUT, interval=0.5, what=f"{namespace}/{name} Ready with {replicas}"
    )


def ready_in_stages(
    kube: Kube, namespace: str, name: str, start: float
) -> tuple[dict[str, Any], dict[str, float]]:
    """Waits, looking once a second, until VLLMCluster `name` is Ready with one engine, and times its stages
    from `start`: its pods Running, RayClusterReady, engine 0's job RUNNING, the engine's own first /health 200
    as seen from this machine (from there to Ready is the operator's own delay), and Ready. A stage passed
    between two looks gets the time of the look that saw it."""
    marks: dict[str, float] = {}

    def mark(stage: str, reached: bool) -> None:
        if reached and stage not in marks:
            marks[stage] = time.monotonic() - start

    def look() -> dict[str, Any] | None:
        pods = pods_of(kube, namespace, name)
        mark(
            "podsRunning",
            len(pods) >= 2 and all((p.get("status") or {}).get("phase") == "Running" for p in pods),
        )
        obj = vllm(kube, namespace, name)
        mark("rayReady", conditions(obj).get("RayClusterReady", {}).get("status") == "True")
        mark("jobRunning", engines(obj).get(0, {}).get("jobStatus") == "RUNNING")
        if "jobRunning" in marks and "firstHealth200" not in marks:
            ips = [(p.get("status") or {}).get("podIP") for p in worker_pods(kube, namespace, name).values()]
            mark("firstHealth200", any(ip and answers_health(ip) for ip in ips))
        ready = conditions(obj).get("Ready", {}).get("status") == "True"
        mark("engineReady", ready and (obj.get("status") or {}).get("readyReplicas") == 1)
        return obj if "engineReady" in marks else None

    obj = wait_for(look, timeout=READY_TIMEOUT, interval=1, max_interval=1, what=f"{namespace}/{name} Ready")
    return obj, marks


def answers_health(ip: str, port: int = 8000) -> bool:
    """The engine at `ip` answers GET /health with 200 (within 2 s)."""
    try:
        return httpx.get(f"http://{ip}:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def endpoint(kube: Kube, namespace: str, name: str) -> str:
    """The endpoint Service's ClusterIP URL: this machine reaches it through kube-proxy, as pods do."""
    service = kube.get_json("service", name, "-n", namespace)
    return f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}/v1"


def client(
    base_url: str, *, new_connection_per_request: bool = False, api_key: str = "unused"
) -> openai.OpenAI:
    """No retries: every failed request is counted, never hidden. kube-proxy balances connections, not
    requests: a client that reuses one connection talks to one engine, as a single user's client does; many
    users are many connections. The client is httpx2's: the HTTP library openai is built on and typed for."""
    http = (
        httpx2.Client(limits=httpx2.Limits(max_keepalive_connections=0))
        if new_connection_per_request
        else None
    )
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60, http_client=http)


def served_requests(pod_ip: str) -> float:
    """Requests an engine finished, from its own /metrics (vllm:request_success_total, all reasons)."""
    text = httpx.get(f"http://{pod_ip}:8000/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)$", text, flags=re.M))


def serving_ips(kube: Kube, namespace: str, name: str) -> set[str]:
    """The ready endpoints of the endpoint Service, from its EndpointSlices."""
    found = kube.get_json("endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={name}")
    return {
        address
        for item in (found or {}).get("items", [])
        for endpoint in item.get("endpoints") or []
        if (endpoint.get("conditions") or {}).get("ready")
        for address in endpoint.get("addresses", [])
    }


def pod_ip(kube: Kube, namespace: str, pod: str) -> str:
    found = kube.get_json("pod", pod, "-n", namespace)
    assert found, f"pod {pod} is gone"
    return str(found["status"]["podIP"])


def worker_pods(
    kube: Kube, namespace: str, name: str, *, terminating: bool = True
) -> dict[str, dict[str, Any]]:
    return {
        p["metadata"]["name"]: p
        for p in pods_of(kube, namespace, name)
        if p["metadata"]["labels"].get("ray.io/node-type") == "worker"
        and (terminating or not p["metadata"].get("deletionTimestamp"))
    }


@dataclass
class Load:
    """A bounded, steady load through the endpoint Service: `rate` completions a second until stopped or
    `limit` requests were sent; every failure is kept."""

    base_url: str
    model: str
    rate: float = 2.0
    limit: int = 600
    api_key: str = "unused"
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._run, daemon=True)]
        self._threads[0].start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _run(self) -> None:
        try:
            api = client(self.base_url, new_connection_per_request=True, api_key=self.api_key)
        except Exception as failure:  # counted like a failed request: a load that never ran is no evidence
            self.failures.append(f"the load's client: {type(failure).__name__}: {failure}")
            return
        while not self._stop.is_set() and self.sent < self.limit:
            started = time.monotonic()
            self.sent += 1
            try:
                answer = api.completions.create(model=self.model, prompt="Hello", max_tokens=4)
                assert answer.choices[0].text is not None
            except Exception as failure:  # every kind of failure counts
                self.failures.append(f"{type(failure).__name__}: {failure}")
            self._stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))


def engine_server_pids(served: str) -> list[int]:
    """vLLM API server processes of this model anywhere on this machine (the pods' processes included)."""
    found = subprocess.run(
        ["pgrep", "-f", f"vllm.entrypoints.openai.api_server.*--served-model-name {served}( |$)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [int(pid) for pid in found.stdout.split()]


def report(capsys: pytest.CaptureFixture[str], what: str, numbers: dict[str, float]) -> None:
    with capsys.disabled():
        print(f"\n[e2e measurement] {what}: " + ", ".join(f"{k}={v:.1f}s" for k, v in numbers.items()))
