"""upgradeStrategy RollingReplicas on real pods (docs/upgrades.md): replicas 1, maxSurge 1, maxUnavailable 0.
Under a steady load through the endpoint Service (the official `openai` client, retries off), a change of
the engine settings that keeps the Ray pods (spec.engine.maxModelLen) starts the new engine on a surge
worker pod while the old one serves, then drains and removes the old one: no request fails, never more than
two worker pods, and exactly one Ray job runs at the end. A new generation that cannot start (a model that
does not exist) stalls the rollout while the old engine keeps serving, with no rollback loop."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from hack.localcluster.helm_release import OperatorRelease
from tests.e2e.realnode import RealNodeWorld
from tests.e2e.serving import (
    READY_TIMEOUT,
    Load,
    conditions,
    endpoint,
    engines,
    jobs_of,
    manifest,
    pod_ip,
    report,
    serving_ips,
    vllm,
    wait_ready,
    worker_pods,
)
from tests.support.kube import Kube
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

ROLLING = {"type": "RollingReplicas", "maxSurge": 1, "maxUnavailable": 0}


class PodCeiling:
    """Samples the worker pods (terminating ones included: they still hold their share of the node) in a
    thread, keeping the most seen at once."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self._kube, self._namespace, self._name = kube, namespace, name
        self.most = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodCeiling:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, len(worker_pods(self._kube, self._namespace, self._name)))
            self.samples += 1
            self._stop.wait(0.5)


# Two model loads (the first engine, then its replacement beside it) on two shared cores.
@pytest.mark.timeout(1800)
def test_rolling_upgrade_under_load_fails_no_request(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = "rolling"
    body = manifest(name, real_node, upgradeStrategy=ROLLING)
    served = body["spec"]["model"].get("servedModelName", name)
    kube.apply(body, namespace)
    obj = wait_ready(kube, namespace, name)
    old = engines(obj)[0]
    assert obj["status"]["updatedReplicas"] == 1, obj["status"]
    assert conditions(obj)["Progressing"]["reason"] == "RolloutComplete", conditions(obj)
    old_pod = old["podName"]

    base_url = endpoint(kube, namespace, name)
    wait_for(lambda: serving_ips(kube, namespace, name), timeout=60, what="the Service's first endpoint")
    with PodCeiling(kube, namespace, name) as ceiling, Load(base_url, served, rate=2.0, limit=10_000) as load:
        time.sleep(5)  # the load runs against the old engine first
        changed, sent_before = time.monotonic(), load.sent
        max_model_len = body["spec"]["engine"]["maxModelLen"] // 2
        kube.kubectl(
            "patch",
            "vllm",
            name,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            f'{{"spec":{{"engine":{{"maxModelLen":{max_model_len}}}}}}}',
        )
        generation = vllm(kube, namespace, name)["metadata"]["generation"]
        reasons: list[str] = []

        def rolled() -> dict[str, Any] | None:
            obj = vllm(kube, namespace, name)
            reason = conditions(obj).get("Progressing", {}).get("reason", "")
            if not reasons or reasons[-1] != reason:
                reasons.append(reason)
            by_index = engines(obj)
            new = by_index.get(0, {})
            done = (
                set(by_index) == {0}
                and f"-g{generation}-a0-" in (new.get("submissionId") or "")
                and new.get("ready") is True
                and old_pod not in worker_pods(kube, namespace, name)
            )
            return obj if done else None

        # The new engine loads beside the serving old one on the same two cores; then the old pod goes.
        obj = wait_for(rolled, timeout=2 * READY_TIMEOUT, interval=1, what="the new engine serving alone")
        rolled_in, sent_during = time.monotonic() - changed, load.sent - sent_before
        time.sleep(5)  # requests keep succeeding on the new engine alone
    report(capsys, "rolling upgrade, replicas 1, maxSurge 1", {"rolled": rolled_in})

    # The load ran throughout (requests are sequential: a busy CPU slows them below the rate).
    assert sent_during >= 20, (sent_during, rolled_in)
    assert load.failures == [], f"{len(load.failures)}/{load.sent} requests failed: {load.failures[:5]}"
    assert ceiling.samples > 0 and ceiling.most <= 2, (ceiling.most, ceiling.samples)
    assert "RollingSurge" in reasons, reasons
    wait_for(
        lambda: conditions(vllm(kube, namespace, name))["Progressing"]["reason"] == "RolloutComplete",
        timeout=60,
        what="Progressing RolloutComplete",
    )
    obj = vllm(kube, namespace, name)
    assert obj["status"]["updatedReplicas"] == 1 and obj["status"]["readyReplicas"] == 1, obj["status"]
    assert conditions(obj)["Ready"]["status"] == "True", conditions(obj)
    jobs = jobs_of(kube, namespace, name)
    running = [sid for sid, status in jobs.items() if status == "RUNNING"]
    assert running == [engines(obj)[0]["submissionId"]], jobs
    assert jobs[old["submissionId"]] == "STOPPED", jobs
    assert len(worker_pods(kube, namespace, name, terminating=False)) == 1


@pytest.mark.timeout(1200)
def test_failing_new_generation_stalls_the_rollout_and_the_old_engine_serves(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = "rolling-bad"
    policy = {"maxRestarts": 1, "backoffSeconds": 2, "maxBackoffSeconds": 4}
    body = manifest(name, real_node, upgradeStrategy=ROLLING, restartPolicy=policy)
    served = body["spec"]["model"].get("servedModelName", name)
    kube.apply(body, namespace)
    old = engines(wait_ready(kube, namespace, name))[0]

    base_url = endpoint(kube, namespace, name)
    wait_for(lambda: serving_ips(kube, namespace, name), timeout=60, what="the Service's first endpoint")
    with Load(base_url, served, rate=2.0, limit=10_000) as load:
        changed = time.monotonic()
        # A model that does not exist, on the same pods (an absolute path: no volume changes).
        kube.kubectl(
            "patch",
            "vllm",
            name,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"spec":{"model":{"source":"/models/no-such-model"}}}',
        )

        def given_up() -> dict[str, Any] | None:
            obj = vllm(kube, namespace, name)
            return obj if engines(obj).get(0, {}).get("budgetExhausted") else None

        obj = wait_for(given_up, timeout=READY_TIMEOUT, interval=1, what="the new engine giving up")
        stalled_in = time.monotonic() - changed
        jobs = jobs_of(kube, namespace, name)
        time.sleep(10)  # no rollback loop, no further submission
        assert jobs_of(kube, namespace, name) == jobs, "a stalled rollout kept submitting"
    report(capsys, "failing new generation to stalled", {"stalled": stalled_in})

    assert load.failures == [], f"{len(load.failures)}/{load.sent} requests failed: {load.failures[:5]}"
    obj = vllm(kube, namespace, name)
    progressing = conditions(obj)["Progressing"]
    assert (progressing["status"], progressing["reason"]) == ("False", "RolloutStalled"), progressing
    by_index = engines(obj)
    assert by_index[1000]["submissionId"] == old["submissionId"] and by_index[1000]["ready"] is True, by_index
    assert obj["status"]["readyReplicas"] == 1 and obj["status"]["updatedReplicas"] == 0, obj["status"]
    assert jobs_of(kube, namespace, name)[old["submissionId"]] == "RUNNING"
    assert pod_ip(kube, namespace, by_index[1000]["podName"]) in serving_ips(kube, namespace, name)
    warnings = [e for e in kube.events(namespace, name) if e["type"] == "Warning"]
    assert any(e["reason"] == "RolloutStalled" for e in warnings), warnings
    kube.kubectl("delete", "vllm", name, "-n", namespace, "--timeout=180s")
