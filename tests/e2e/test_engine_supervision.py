"""The engine supervisor end to end: the real control plane and KubeRay, the operator as users run it, a real
local Ray cluster and real vLLM (CPU build) serving a tiny generated model.

The simulated cluster's pods are not where Ray runs here: the operator's documented address settings
point it at the local Ray dashboard and at engines on 127.0.0.1. Nothing else is stood in for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from hack.local_operator import local_operator_env
from tests.e2e.conftest import LocalRay, RayVenv
from tests.support.kube import Kube
from tests.support.operator import OperatorProcess
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "manifests" / "samples" / "tiny-cpu.yaml"
READY_TIMEOUT = 420.0  # measured ~1 min warm on 2 cores; generous for a cold page cache


@pytest.fixture(scope="session")
def tiny_model(ray_venv: RayVenv, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny-llama"
    subprocess.run(
        [str(ray_venv.python), str(REPO / "hack" / "tiny_model.py"), str(out)], check=True, timeout=300
    )
    assert (out / "config.json").exists()
    return out


def e2e_operator_env(local_ray: LocalRay) -> dict[str, str]:
    """The documented settings for an operator outside the cluster network, aimed at the local Ray; a
    short unhealthy grace so a dead engine is noticed within the test's patience."""
    return {
        **local_operator_env(local_ray.dashboard_url, local_ray.venv.python),
        "RAYVLLM_UNHEALTHY_GRACE_SECONDS": "4",
    }


@pytest.fixture(scope="module")
def e2e_operator(
    kube: Kube,
    crds: Path,
    operator: OperatorProcess,
    local_ray: LocalRay,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The operator aimed at the local Ray. The integration tier's operator watches every namespace too,
    so it is paused meanwhile: two operators must never reconcile one object."""
    process = OperatorProcess(
        kube.kubeconfig, tmp_path_factory.mktemp("e2e-operator") / "operator.log", e2e_operator_env(local_ray)
    )
    operator.stop()
    try:
        process.start()
        yield process
    finally:
        process.stop()
        operator.start()


def manifest(name: str, model: Path | str, **spec_changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    body["metadata"]["name"] = name
    body["spec"]["model"]["source"] = str(model)
    body["spec"].update(spec_changes)
    return body


def vllm(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    found = kube.get_json("vllmcluster", name, "-n", namespace)
    assert found is not None, f"{namespace}/{name} is gone"
    return dict(found)


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def engine0(obj: dict[str, Any]) -> dict[str, Any]:
    engines = (obj.get("status") or {}).get("engines") or []
    return dict(engines[0]) if engines else {}


def jobs_of(local_ray: LocalRay, namespace: str, name: str) -> list[dict[str, Any]]:
    """Every Ray job the operator submitted for this VLLMCluster, read from Ray itself."""
    response = httpx.get(f"{local_ray.dashboard_url}/api/jobs/", timeout=10)
    response.raise_for_status()
    return [
        job
        for job in response.json()
        if (job.get("metadata") or {}).get("rayvllm.io/namespace") == namespace
        and (job.get("metadata") or {}).get("rayvllm.io/name") == name
    ]


def wait_ready(kube: Kube, namespace: str, name: str, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = vllm(kube, namespace, name)
        return obj if conditions(obj).get("Ready", {}).get("status") == "True" else None

    return wait_for(ready, timeout=timeout, interval=1, what=f"{namespace}/{name} Ready")


def complete(url: str, model: str) -> str:
    response = httpx.post(
        f"{url}/completions",
        json={"model": model, "prompt": "The quick brown fox", "max_tokens": 8},
        timeout=60,
    )
    response.raise_for_status()
    text = response.json()["choices"][0]["text"]
    assert isinstance(text, str)
    return text


def engine_server_pids(name: str) -> list[int]:
    """The vLLM API server processes serving this VLLMCluster's model on this machine."""
    found = subprocess.run(
        ["pgrep", "-f", f"vllm.entrypoints.openai.api_server.*--served-model-name {name}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [int(pid) for pid in found.stdout.split()]


def report(capsys: pytest.CaptureFixture[str], what: str, numbers: dict[str, float]) -> None:
    with capsys.disabled():
        print(f"\n[e2e measurement] {what}: " + ", ".join(f"{k}={v:.1f}s" for k, v in numbers.items()))


def test_serve_kill_adopt_delete(
    kube: Kube,
    namespace: str,
    e2e_operator: OperatorProcess,
    local_ray: LocalRay,
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = "tiny"
    served = "tiny-llama"
    start = time.monotonic()
    kube.apply(manifest(name, tiny_model), namespace)

    # 1. apply -> Ready -> a completion through the URL in status.
    wait_for(
        lambda: conditions(vllm(kube, namespace, name)).get("RayClusterReady", {}).get("status") == "True",
        timeout=120,
        what="RayClusterReady",
    )
    cluster_ready = time.monotonic() - start
    wait_for(
        lambda: engine0(vllm(kube, namespace, name)).get("submissionId"), timeout=60, what="a submission"
    )
    submitted = time.monotonic() - start
    wait_for(
        lambda: engine0(vllm(kube, namespace, name)).get("jobStatus") == "RUNNING",
        timeout=120,
        what="job RUNNING",
    )
    running = time.monotonic() - start
    obj = wait_ready(kube, namespace, name)
    ready = time.monotonic() - start
    report(
        capsys,
        "apply to Ready",
        {"rayClusterReady": cluster_ready, "submitted": submitted, "jobRunning": running, "ready": ready},
    )

    engine = engine0(obj)
    assert obj["status"]["phase"] == "Ready"
    assert obj["status"]["readyReplicas"] == 1
    assert engine["ready"] is True and engine["restarts"] == 0 and engine["attempt"] == 0
    assert engine["url"] == "http://127.0.0.1:8000/v1"
    assert complete(engine["url"], served)
    assert (
        kube.kubectl(
            "wait", "--for=condition=Ready", f"vllm/{name}", "-n", namespace, "--timeout=10s"
        ).returncode
        == 0
    )
    first_id = engine["submissionId"]
    assert [j["submission_id"] for j in jobs_of(local_ray, namespace, name)] == [first_id]

    # 2. Kill the vLLM process -> noticed, restarted after backoff, Ready again with restarts == 1.
    pids = engine_server_pids(served)
    assert pids, "no vLLM API server process found"
    killed = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)

    def restarted_and_ready() -> dict[str, Any] | None:
        obj = vllm(kube, namespace, name)
        e = engine0(obj)
        return obj if e.get("restarts") == 1 and e.get("ready") is True else None

    obj = wait_for(
        restarted_and_ready, timeout=READY_TIMEOUT, interval=1, what="the engine restarted and Ready again"
    )
    report(capsys, "kill to Ready again", {"recovery": time.monotonic() - killed})
    engine = engine0(obj)
    assert engine["attempt"] == 1 and engine["submissionId"] != first_id
    assert "attempt 0" in engine["lastFailure"]
    assert complete(engine["url"], served)
    jobs = {j["submission_id"]: j["status"] for j in jobs_of(local_ray, namespace, name)}
    assert jobs[first_id] in ("FAILED", "STOPPED") and jobs[engine["submissionId"]] == "RUNNING"
    assert len(jobs) == 2, jobs
    events = kube.events(namespace, name)
    assert any(e["reason"] == "EngineRestarting" and e["type"] == "Warning" for e in events)

    # 3. Restart the operator while the engine runs -> the same job is adopted, nothing new is submitted.
    running_id = engine["submissionId"]
    e2e_operator.stop()
    e2e_operator.start()
    wait_for(
        lambda: e2e_operator.log_text().count(f"[{namespace}/{name}] Resuming is processed") >= 1,
        timeout=60,
        what="the restarted operator to resume the object",
    )
    time.sleep(6)  # three resync periods: the quantity measured is "no new submission"
    obj = vllm(kube, namespace, name)
    assert engine0(obj)["submissionId"] == running_id and engine0(obj)["ready"] is True
    assert len(jobs_of(local_ray, namespace, name)) == 2

    # 4. Change an engine setting -> upgradeStrategy Recreate: the old job is stopped, a new one (new
    #    generation in its id) serves. Scaling alone would not restart it (the fingerprint ignores replicas).
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
        e = engine0(obj)
        return (
            obj if f"-g{generation}-a0-" in (e.get("submissionId") or "") and e.get("ready") is True else None
        )

    obj = wait_for(
        recreated, timeout=READY_TIMEOUT, interval=1, what="the engine recreated for the new settings"
    )
    report(capsys, "engine settings change to Ready", {"recreate": time.monotonic() - changed})
    jobs = {j["submission_id"]: j["status"] for j in jobs_of(local_ray, namespace, name)}
    assert jobs[running_id] == "STOPPED", jobs
    assert len(jobs) == 3 and engine0(obj)["restarts"] == 0, jobs

    # 5. Delete -> every job stopped, no vLLM process left, the object gone.
    kube.kubectl("delete", "vllm", name, "-n", namespace, "--timeout=120s")
    remaining = {j["submission_id"]: j["status"] for j in jobs_of(local_ray, namespace, name)}
    assert all(status in ("STOPPED", "FAILED", "SUCCEEDED") for status in remaining.values()), remaining
    wait_for(lambda: not engine_server_pids(served), timeout=60, what="the vLLM processes to exit")


def test_engine_that_cannot_start_backs_off_then_fails(
    kube: Kube,
    namespace: str,
    e2e_operator: OperatorProcess,
    local_ray: LocalRay,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = "broken"
    policy = {"maxRestarts": 2, "backoffSeconds": 2, "maxBackoffSeconds": 4}
    start = time.monotonic()
    kube.apply(manifest(name, "/nonexistent/model", restartPolicy=policy), namespace)

    def failed() -> dict[str, Any] | None:
        obj = vllm(kube, namespace, name)
        return obj if (obj.get("status") or {}).get("phase") == "Failed" else None

    obj = wait_for(failed, timeout=READY_TIMEOUT, interval=1, what="phase Failed")
    report(capsys, "bad model path to Failed", {"failed": time.monotonic() - start})
    ready = conditions(obj)["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "RestartBudgetExhausted", ready
    engine = engine0(obj)
    assert engine["budgetExhausted"] is True and engine["restarts"] == 2
    assert "/nonexistent/model" in engine["lastFailure"] or "FAILED" in engine["lastFailure"], engine[
        "lastFailure"
    ]

    # Exactly maxRestarts + 1 submissions, then nothing: no hot loop.
    assert len(jobs_of(local_ray, namespace, name)) == 3
    time.sleep(6)  # three resync periods: the quantity measured is "no further submission"
    assert len(jobs_of(local_ray, namespace, name)) == 3
    events = kube.events(namespace, name)
    reasons = [e["reason"] for e in events if e["type"] == "Warning"]
    assert "EngineFailed" in reasons and "EngineRestarting" in reasons, reasons
    kube.kubectl("delete", "vllm", name, "-n", namespace, "--timeout=120s")
