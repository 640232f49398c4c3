"""The product as users run it: the operator installed by its Helm chart runs in the cluster from the image
built from our Dockerfile; a VLLMCluster (the tiny CPU sample, its model on a PersistentVolume as
`pvc://`) becomes a KubeRay RayCluster whose head and worker pods run Ray for real on the real node; the
operator submits each engine through the head Service's Jobs API, the engine lands on a worker pod
through the slot resource, and clients call the endpoint Service with the official `openai` client.

One long scenario per model load budget: serve, scale 1 -> 2 -> 1 under load, recreate on an
engine-settings change, delete cleanly. A killed engine healed in its pod and an operator restarted without
resubmitting are the chaos suite's (tests/e2e/pod_faults.py, test_chaos_operator_storm.py), under load
and with more invariants.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from hack.localcluster.helm_release import OperatorRelease
from tests.e2e.conftest import E2E_SETTINGS, RAY_VERSION
from tests.e2e.realnode import RealNodeWorld, pods_of
from tests.e2e.serving import (
    READY_TIMEOUT,
    Load,
    client,
    conditions,
    endpoint,
    engine_server_pids,
    engines,
    job_records,
    jobs_of,
    manifest,
    pod_ip,
    ready_in_stages,
    report,
    served_requests,
    vllm,
    wait_ready,
    worker_pods,
)
from tests.support.kube import Kube, apiserver_writes, operator_writes, write_delta
from tests.support.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.day2]


# Three model loads and a scale-down drain on two shared cores: past pytest's 600 s default.
@pytest.mark.timeout(1800)
def test_serve_scale_recreate_delete(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = served = "supervised"
    start = time.monotonic()
    kube.apply(manifest(name, real_node), namespace)

    # 1. apply -> Ready, split into its stages.
    obj, marks = ready_in_stages(kube, namespace, name, start)
    report(capsys, "apply to Ready on real pods", marks)

    # A Ready VLLMCluster at rest costs the API server no writes, while the loop keeps probing it.
    before = apiserver_writes(kube)
    time.sleep(10)  # five resync periods of the e2e operator
    assert operator_writes(write_delta(apiserver_writes(kube), before)) == {}

    first = engines(obj)[0]
    workers = worker_pods(kube, namespace, name)
    assert first["podName"] in workers, (first, list(workers))
    assert first["url"] == f"http://{workers[first['podName']]['status']['podIP']}:8000/v1"
    assert obj["status"]["endpoint"]["url"] == f"http://{name}.{namespace}.svc:8000/v1"
    assert (
        kube.kubectl(
            "wait", "--for=condition=Ready", f"vllm/{name}", "-n", namespace, "--timeout=10s"
        ).returncode
        == 0
    )

    # kubectl logs and exec go through the API server to the real kubelet; the pods run the pinned Ray.
    head_pod = next(p for p in pods_of(kube, namespace, name) if p["metadata"]["name"] not in workers)
    head_log = kube.kubectl("logs", "-n", namespace, head_pod["metadata"]["name"], "-c", "ray-head").stdout
    assert "Ray runtime started" in head_log, head_log[-2000:]
    version = kube.kubectl(
        "exec", "-n", namespace, first["podName"], "-c", "ray-worker", "--", "ray", "--version"
    ).stdout
    assert f"version {RAY_VERSION}" in version, version

    # 2. The endpoint Service, with the official client: a completion and a streamed chat completion.
    base_url = endpoint(kube, namespace, name)
    api = client(base_url)
    completion = api.completions.create(model=served, prompt="The quick brown fox", max_tokens=8)
    assert completion.choices[0].text
    stream = api.chat.completions.create(
        model=served, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8, stream=True
    )
    chunks = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(chunks) > 1 and "".join(chunks), chunks

    # 3. Scale 1 -> 2: a second worker pod, a second engine on it; the Service spreads requests to both.
    scaled = time.monotonic()
    kube.kubectl("scale", f"vllm/{name}", "-n", namespace, "--replicas=2")
    obj = wait_ready(kube, namespace, name, replicas=2)
    report(capsys, "replicas 1 -> 2", {"ready": time.monotonic() - scaled})
    by_index = engines(obj)
    pods = {i: by_index[i]["podName"] for i in (0, 1)}
    assert pods[0] != pods[1] and set(pods.values()) == set(worker_pods(kube, namespace, name))
    ips = {i: pod_ip(kube, namespace, pods[i]) for i in (0, 1)}
    served_before = {i: served_requests(ips[i]) for i in (0, 1)}
    counting = time.monotonic()
    many_users = client(base_url, new_connection_per_request=True)
    for _ in range(40):
        assert many_users.completions.create(model=served, prompt="Hi", max_tokens=2).choices
    served_after = {i: served_requests(ips[i]) for i in (0, 1)}
    spread = {i: served_after[i] - served_before[i] for i in (0, 1)}
    # The engines' counters also count the operator's canary completions (one per engine per interval).
    canaries = 2 * (int((time.monotonic() - counting) // E2E_SETTINGS["canaryIntervalSeconds"]) + 1)
    assert 40 <= sum(spread.values()) <= 40 + canaries and all(n > 0 for n in spread.values()), spread

    # 4. Scale 2 -> 1 under load: engine 1 leaves the Service, its job stops, exactly its pod goes (through
    #    KubeRay's workersToDelete), and engine 0 serves on, on the same pod, with zero failed requests.
    keep_uid = worker_pods(kube, namespace, name)[pods[0]]["metadata"]["uid"]
    retired_job = by_index[1]["submissionId"]
    with Load(base_url, served) as load:
        time.sleep(3)
        kube.kubectl("scale", f"vllm/{name}", "-n", namespace, "--replicas=1")
        scaled_down = time.monotonic()
        scaled_down_wall = time.time()
        # KubeRay deletes exactly the retired engine's pod (workersToDelete): it is terminating, the other not.
        wait_for(
            lambda: set(worker_pods(kube, namespace, name, terminating=False)) == {pods[0]},
            timeout=180,
            interval=1,
            what=f"only {pods[0]} left (not terminating)",
        )
        removed = time.monotonic()
        time.sleep(5)
    # A Ray pod's PID 1 (KubeRay's bash) ignores SIGTERM, so its end takes the 30 s grace at least; with the
    # engine's job stopped at the same moment, containerd 1.6's shim here missed the container's exit and
    # the pod went only with its sandbox (after kubelet's runtimeRequestTimeout).
    wait_for(
        lambda: set(worker_pods(kube, namespace, name)) == {pods[0]},
        timeout=420,
        interval=2,
        what=f"the retired pod gone, {pods[0]} left",
    )
    assert load.sent >= 10 and load.failures == [], (load.sent, load.failures[:5])
    assert worker_pods(kube, namespace, name)[pods[0]]["metadata"]["uid"] == keep_uid
    obj = wait_ready(kube, namespace, name, replicas=1)
    assert list(engines(obj)) == [0] and engines(obj)[0]["podName"] == pods[0]
    retired = job_records(kube, namespace, name)[retired_job]
    assert retired.status == "STOPPED", (
        retired.status,
        retired.error_type,
        (retired.message or "")[-1500:],
        f"ended {(retired.end_time or 0) / 1000 - scaled_down_wall:.1f} s after the scale",
    )
    report(capsys, "replicas 2 -> 1 under load", {"retiredPodTerminating": removed - scaled_down})
    with capsys.disabled():
        print(f"[e2e measurement] requests during 2 -> 1: sent={load.sent}, failed={len(load.failures)}")

    # 5. An engine-settings change -> Recreate: the old job stops, a new one (new generation) serves.
    running_id = engines(obj)[0]["submissionId"]
    kube.kubectl(
        "patch",
        "vllm",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"engine":{"maxModelLen":128}}}',
    )
    changed = time.monotonic()
    generation = vllm(kube, namespace, name)["metadata"]["generation"]

    def recreated() -> dict[str, Any] | None:
        obj = vllm(kube, namespace, name)
        e = engines(obj).get(0, {})
        return obj if f"-g{generation}-a0-" in (e.get("submissionId") or "") and e.get("ready") else None

    obj = wait_for(recreated, timeout=READY_TIMEOUT, interval=1, what="the engine recreated")
    report(capsys, "engine settings change to Ready", {"recreate": time.monotonic() - changed})
    jobs = jobs_of(kube, namespace, name)
    assert jobs[running_id] == "STOPPED", jobs

    # 6. Delete -> every job stopped first (the finalizer), then no pod and no vLLM process left.
    assert engine_server_pids(served), "no vLLM API server process found on this machine"
    kube.kubectl("delete", "vllm", name, "-n", namespace, "--timeout=180s")
    wait_for(lambda: not pods_of(kube, namespace, name), timeout=420, interval=1, what="the Ray pods to go")
    wait_for(lambda: not engine_server_pids(served), timeout=60, what="the vLLM processes to exit")
    assert kube.get_json("raycluster", name, "-n", namespace) is None


def test_engine_that_cannot_start_backs_off_then_fails(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = "broken"
    policy = {"maxRestarts": 1, "backoffSeconds": 2, "maxBackoffSeconds": 4}
    body = manifest(name, real_node, restartPolicy=policy)
    body["spec"]["model"]["source"] = "pvc://models/no-such-model"
    start = time.monotonic()
    kube.apply(body, namespace)

    def failed() -> dict[str, Any] | None:
        obj = vllm(kube, namespace, name)
        return obj if (obj.get("status") or {}).get("phase") == "Failed" else None

    obj = wait_for(failed, timeout=READY_TIMEOUT, interval=1, what="phase Failed")
    report(capsys, "bad model path to Failed", {"failed": time.monotonic() - start})
    ready = conditions(obj)["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "RestartBudgetExhausted", ready
    engine = engines(obj)[0]
    assert engine["budgetExhausted"] is True and engine["restarts"] == 1
    assert "no-such-model" in engine["lastFailure"], engine["lastFailure"]

    # Exactly maxRestarts + 1 submissions, then nothing: no hot loop.
    assert len(jobs_of(kube, namespace, name)) == 2
    time.sleep(6)  # three resync periods: the quantity measured is "no further submission"
    assert len(jobs_of(kube, namespace, name)) == 2
    reasons = [e["reason"] for e in kube.events(namespace, name) if e["type"] == "Warning"]
    assert "EngineFailed" in reasons and "EngineRestarting" in reasons, reasons
    kube.kubectl("delete", "vllm", name, "-n", namespace, "--timeout=180s")
