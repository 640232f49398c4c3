"""Faults that leave an engine's API answering while something behind it is gone, on real pods under a
steady load through the endpoint Service (the official `openai` client, retries off, every failure
counted):

- the Ray dashboard frozen (SIGSTOP of its process in the head pod): Ray's view of the jobs is unknown,
  but the engine still answers its own probe, so it keeps serving: no request fails, no restart, and the
  status says `RayDashboardUnreachable` until the dashboard answers again;
- the engine hung (SIGSTOP of vLLM's engine core in the worker pod): `/health` and `/v1/models` still
  answer 200, only the canary completion finds it (it times out while the engine's token counters stand
  still); the engine is restarted within canary interval + canary timeout + unhealthy grace, and nothing
  of the frozen attempt is left behind.

The VLLMCluster carries an HF token and an API key from a Secret (the probes and the canary present the
key); at the end no value of either appears in its status, its Events, the operator's log, its Ray job
records (entrypoint, metadata, runtime_env) or its RayCluster.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from hack.localcluster.helm_release import OperatorRelease
from tests.e2e.chaos import ChaosRow, Watch, record
from tests.e2e.conftest import E2E_SETTINGS
from tests.e2e.leaks import SecretScan
from tests.e2e.realnode import RealNodeWorld, pods_of
from tests.e2e.serving import (
    Load,
    conditions,
    endpoint,
    engines,
    jobs_of,
    manifest,
    report,
    serving_ips,
    vllm,
    wait_ready,
    with_credentials,
)
from tests.support.kube import Kube
from tests.support.wait import wait_for

# Part of the chaos table too; one model load: in make test's budget.
pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

DASHBOARD_PROCESS = "ray/dashboard/dashboard.py"
ENGINE_CORE_PROCESS = "VLLM::EngineCore"
HF_TOKEN = "hf_e2eFaultsTokenNeverLogged0123456789"
API_KEY = "sk-e2e-faults-key-never-logged-0123456789"
# Long enough for a pass whose Ray calls time out (5 s x 3 attempts) to report it; short enough that
# KubeRay's head readiness probe (which asks the dashboard; 10 x 5 s) does not fail the head pod.
DASHBOARD_FROZEN_SECONDS = 30.0


def signal_in_pod(kube: Kube, namespace: str, pod: str, container: str, signal: str, pattern: str) -> None:
    kube.kubectl("exec", "-n", namespace, pod, "-c", container, "--", "pkill", f"-{signal}", "-f", pattern)


def stopped_processes(pattern: str) -> list[int]:
    """Processes on this machine (the pods' included) in state T (stopped) whose command line has
    `pattern`: what a frozen engine would leave behind if its attempt were not cleaned up."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state == "T" and pattern in cmdline:
            found.append(int(proc.name))
    return found


def pod_of_role(kube: Kube, namespace: str, name: str, role: str) -> str:
    pods = [
        p for p in pods_of(kube, namespace, name) if p["metadata"]["labels"].get("ray.io/node-type") == role
    ]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return str(pods[0]["metadata"]["name"])


@pytest.mark.timeout(1200)
def test_dashboard_freeze_keeps_serving_and_a_hung_engine_is_restarted(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    secret_scan: SecretScan,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, served = "faults", "tiny-llama"
    body = manifest(name, real_node)
    with_credentials(kube, namespace, body, HF_TOKEN, API_KEY)
    secret_scan.secret(HF_TOKEN, "engine faults' HF token")
    secret_scan.secret(API_KEY, "engine faults' API key")
    kube.apply(body, namespace)
    obj = wait_ready(kube, namespace, name)
    engine = engines(obj)[0]
    base_url = endpoint(kube, namespace, name)
    head = pod_of_role(kube, namespace, name, "head")
    worker = engine["podName"]
    wait_for(
        lambda: len(serving_ips(kube, namespace, name)) == 1, timeout=60, what="the Service on the engine"
    )

    # Ray's jobs sampled throughout for duplicate submissions (samples while the dashboard is frozen fail).
    with Watch(kube, namespace, name) as watch:
        # 1. The dashboard frozen under load: the engine serves on, nothing is restarted, the status tells.
        seen_unreachable: list[dict[str, Any]] = []
        with Load(base_url, served, rate=2.0, limit=400, api_key=API_KEY) as load:
            time.sleep(2)
            signal_in_pod(kube, namespace, head, "ray-head", "STOP", DASHBOARD_PROCESS)
            try:
                deadline = time.monotonic() + DASHBOARD_FROZEN_SECONDS
                while time.monotonic() < deadline:
                    current = vllm(kube, namespace, name)
                    if any(
                        c.get("reason") == "RayDashboardUnreachable" for c in conditions(current).values()
                    ):
                        seen_unreachable.append(current)
                    time.sleep(1)
            finally:
                signal_in_pod(kube, namespace, head, "ray-head", "CONT", DASHBOARD_PROCESS)
            thawed = time.monotonic()

            def recovered() -> dict[str, Any] | None:
                current = vllm(kube, namespace, name)
                reasons = {c.get("reason") for c in conditions(current).values()}
                return (
                    current
                    if "RayDashboardUnreachable" not in reasons and current["status"]["readyReplicas"] == 1
                    else None
                )

            obj = wait_for(
                recovered, timeout=120, interval=1, what="the status without RayDashboardUnreachable"
            )
            recovery = time.monotonic() - thawed
            time.sleep(2)
        assert seen_unreachable, (
            "the status never said RayDashboardUnreachable while the dashboard was frozen"
        )
        assert all(s["status"]["readyReplicas"] == 1 for s in seen_unreachable), "the engine left the Service"
        assert load.sent >= 2 * DASHBOARD_FROZEN_SECONDS * 0.8 and load.failures == [], (
            load.sent,
            load.failures[:5],
        )
        after = engines(obj)[0]
        assert (after["submissionId"], after["restarts"]) == (engine["submissionId"], engine["restarts"])
        report(capsys, f"dashboard frozen {DASHBOARD_FROZEN_SECONDS:.0f} s", {"recoveredAfterThaw": recovery})
        record(
            ChaosRow(
                f"Ray dashboard frozen {DASHBOARD_FROZEN_SECONDS:.0f} s (SIGSTOP)",
                faults=1,
                requests_sent=load.sent,
                requests_failed=len(load.failures),
                duplicate_submissions=watch.most_duplicates,
                heal_seconds=recovery,
                notes="heal = thaw to RayDashboardUnreachable cleared; the engine kept serving, no restart",
            ),
            capsys,
        )
        with capsys.disabled():
            print(f"[e2e measurement] requests while the dashboard was frozen: sent={load.sent}, failed=0")

        # 2. The engine core frozen: /health and /v1/models still answer; the canary finds it.
        frozen_id = after["submissionId"]
        with Load(base_url, served, rate=2.0, limit=600, api_key=API_KEY) as hung_load:
            signal_in_pod(kube, namespace, worker, "ray-worker", "STOP", ENGINE_CORE_PROCESS)
            frozen = time.monotonic()

            def judged() -> dict[str, Any] | None:
                e = engines(vllm(kube, namespace, name)).get(0, {})
                return (
                    e
                    if e.get("submissionId") != frozen_id or e.get("health") in ("Hung", "NotGenerating")
                    else None
                )

            wait_for(judged, timeout=120, interval=0.5, what="the frozen engine found by the canary")
            detected = time.monotonic() - frozen

            def restarted() -> dict[str, Any] | None:
                current = vllm(kube, namespace, name)
                e = engines(current).get(0, {})
                return current if e.get("submissionId") != frozen_id else None

            wait_for(restarted, timeout=120, interval=0.5, what="the frozen engine restarted")
            restart_decided = time.monotonic() - frozen
            obj = wait_ready(kube, namespace, name)
            healed = time.monotonic() - frozen
        engine = engines(obj)[0]
        assert engine["restarts"] == 1 and "canary" in (engine.get("lastFailure") or ""), engine
        bound = E2E_SETTINGS["canaryIntervalSeconds"] + 10 + E2E_SETTINGS["unhealthyGraceSeconds"]
        # The loop looks every resync (2 s here) and each look takes its own calls' time: slack for that.
        assert restart_decided <= bound + 30, (restart_decided, bound)
        assert jobs_of(kube, namespace, name)[frozen_id] in ("STOPPED", "FAILED")
        wait_for(lambda: not stopped_processes("VLLM"), timeout=60, what="no frozen vLLM process left")
        record(
            ChaosRow(
                "engine hung (engine core SIGSTOP)",
                faults=1,
                requests_sent=hung_load.sent,
                requests_failed=len(hung_load.failures),
                duplicate_submissions=watch.most_duplicates,
                orphans=len(stopped_processes("VLLM")),
                heal_seconds=healed,
                notes=f"found by the canary after {detected:.1f}s, restart decided after {restart_decided:.1f}s; "
                "one replica: requests fail until it is back",
            ),
            capsys,
        )
        report(
            capsys,
            "engine core frozen (SIGSTOP)",
            {"detected": detected, "restartDecided": restart_decided, "readyAgain": healed},
        )
        with capsys.disabled():
            print(
                f"[e2e measurement] requests while the engine hung (one replica): sent={hung_load.sent}, "
                f"failed={len(hung_load.failures)}"
            )

    assert watch.most_duplicates == 0, f"live together: {watch.worst}"

    # 3. Secrets never leak: the run's secret scan searches status, Events, Ray's job records, the RayCluster
    # and the operator's log (kept when its module ends) for the token and the key.
    secret_scan.keep_cluster("engine faults", kube, namespace, name)

    kube.kubectl("delete", "vllm", name, "-n", namespace, "--timeout=180s")
    wait_for(lambda: not pods_of(kube, namespace, name), timeout=420, interval=1, what="the Ray pods to go")
    assert kube.get_json("raycluster", name, "-n", namespace) is None
