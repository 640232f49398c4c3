"""`make day2`: upgradeStrategy RollingReplicas on real pods (docs/upgrades.md), under a steady load through the
endpoint Service (the official `openai` client, retries off), for a change of the engine settings that keeps
the Ray pods (spec.engine.maxModelLen): replicas 2 with room for exactly one surge pod (no request fails,
never more than three worker pods); replicas 2 with no room and maxUnavailable 1 (in place, one engine serves
at every moment, failures counted); a new generation that cannot start (a model that does not exist) stalls
the rollout while the old engine keeps serving, with no rollback loop.

`make test` has replicas 1 (a failing new generation, then fixed forward by a surge) as phases P5 and P6 of
its shared serving object (tests/e2e/test_shared_engine.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

from hack.localcluster.helm_release import OperatorRelease
from hack.localcluster.workloads import MODEL_CLAIM
from tests.e2e.chaos import RolloutWatch
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

pytestmark = [pytest.mark.e2e, pytest.mark.day2]

ROLLING = {"type": "RollingReplicas", "maxSurge": 1, "maxUnavailable": 0}
# Three worker pods and the head within the real node's two cores (200m + 3 x 550m, and a fourth does not
# fit): capacity for exactly one surge pod beside two replicas. KubeRay still gives each worker one Ray CPU.
SLIM_WORKER = {"requests": {"cpu": "550m", "memory": "2Gi"}}


@dataclass(frozen=True)
class Rolled:
    seconds: float
    sent: int
    failures: list[str]
    reasons: list[str]
    watch: RolloutWatch
    obj: dict[str, Any]


def roll(
    kube: Kube, namespace: str, name: str, body: dict[str, Any], replicas: int, *, surge: bool = True
) -> Rolled:
    """Applies `body`, waits for it to serve, then under a steady load through the Service halves
    spec.engine.maxModelLen (an engine setting that keeps the Ray pods) and waits until every replica's
    engine of the new generation serves alone and, when the new engines `surge` onto pods of their own, every
    old worker pod is gone (in place, the new engines run on the old pods)."""
    served = body["spec"]["model"]["servedModelName"]
    kube.apply(body, namespace)
    obj = wait_ready(kube, namespace, name, replicas)
    assert obj["status"]["updatedReplicas"] == replicas, obj["status"]
    assert conditions(obj)["Progressing"]["reason"] == "RolloutComplete", conditions(obj)
    old_pods = {e["podName"] for e in engines(obj).values()}
    base_url = endpoint(kube, namespace, name)
    wait_for(
        lambda: len(serving_ips(kube, namespace, name)) == replicas,
        timeout=60,
        what="the Service's endpoints",
    )
    with RolloutWatch(kube, namespace, name) as watch, Load(base_url, served, rate=2.0, limit=10_000) as load:
        time.sleep(5)  # the load runs against the old engines first
        changed, sent_before = time.monotonic(), load.sent
        max_model_len = body["spec"]["engine"]["maxModelLen"] // 2
        patch = f'{{"spec":{{"engine":{{"maxModelLen":{max_model_len}}}}}}}'
        kube.kubectl("patch", "vllm", name, "-n", namespace, "--type=merge", "-p", patch)
        generation = vllm(kube, namespace, name)["metadata"]["generation"]
        reasons: list[str] = []

        def rolled() -> dict[str, Any] | None:
            obj = vllm(kube, namespace, name)
            reason = conditions(obj).get("Progressing", {}).get("reason", "")
            if not reasons or reasons[-1] != reason:
                reasons.append(reason)
            by_index = engines(obj)
            done = (
                set(by_index) == set(range(replicas))
                and all(f"-g{generation}-a" in (e.get("submissionId") or "") for e in by_index.values())
                and all(e.get("ready") is True for e in by_index.values())
                and not (surge and old_pods & set(worker_pods(kube, namespace, name)))
            )
            return obj if done else None

        # Each new engine loads beside the serving old ones on the same two cores; then the old pod goes.
        obj = wait_for(
            rolled, timeout=(replicas + 1) * READY_TIMEOUT, interval=1, what="the new engines alone"
        )
        seconds, sent = time.monotonic() - changed, load.sent - sent_before
        time.sleep(5)  # requests keep succeeding on the new engines alone
    return Rolled(seconds, sent, list(load.failures), reasons, watch, obj)


def assert_settled(kube: Kube, namespace: str, name: str, rolled: Rolled, replicas: int) -> None:
    """The rollout ended as the docs say: RolloutComplete, every replica updated and ready, exactly one
    running Ray job per replica (the new ones), one worker pod per replica."""
    wait_for(
        lambda: conditions(vllm(kube, namespace, name))["Progressing"]["reason"] == "RolloutComplete",
        timeout=60,
        what="Progressing RolloutComplete",
    )
    obj = vllm(kube, namespace, name)
    status = obj["status"]
    assert status["updatedReplicas"] == replicas and status["readyReplicas"] == replicas, status
    assert conditions(obj)["Ready"]["status"] == "True", conditions(obj)
    jobs = jobs_of(kube, namespace, name)
    running = sorted(sid for sid, state in jobs.items() if state == "RUNNING")
    assert running == sorted(e["submissionId"] for e in engines(obj).values()), jobs
    wait_for(
        lambda: len(worker_pods(kube, namespace, name)) == replicas, timeout=120, what="the old pods gone"
    )


# Three engines at once at the surge's peak, on two shared cores. (replicas 1 is `make test`'s phase P6 on the
# shared serving object, tests/e2e/test_shared_engine.py.)
@pytest.mark.timeout(3000)
@pytest.mark.parametrize("replicas", [2])
def test_rolling_upgrade_surging_into_spare_capacity_fails_no_request(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    capsys: pytest.CaptureFixture[str],
    replicas: int,
) -> None:
    name = f"rolling-{replicas}"
    body = manifest(name, real_node, replicas=replicas, upgradeStrategy=ROLLING)
    if replicas > 1:
        body["spec"]["ray"]["worker"]["resources"] = SLIM_WORKER
    rolled = roll(kube, namespace, name, body, replicas=replicas)
    report(capsys, f"rolling upgrade, replicas {replicas}, maxSurge 1", {"rolled": rolled.seconds})
    print(
        f"rolling replicas {replicas}: {rolled.sent} requests, {len(rolled.failures)} failed, {rolled.reasons}"
    )

    # The load ran throughout (requests are sequential: a busy CPU slows them below the rate).
    assert rolled.sent >= 20, (rolled.sent, rolled.seconds)
    assert rolled.failures == [], f"{len(rolled.failures)}/{rolled.sent} failed: {rolled.failures[:5]}"
    rolled.watch.assert_observed_throughout(rolled.seconds)
    assert rolled.watch.most_pods <= replicas + 1, rolled.watch
    assert rolled.watch.fewest_serving, rolled.watch
    assert "RollingSurge" in rolled.reasons, rolled.reasons
    assert_settled(kube, namespace, name, rolled, replicas=replicas)


@pytest.mark.timeout(3000)
def test_rolling_upgrade_without_spare_capacity_goes_in_place_and_one_engine_always_serves(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two replicas on the node's two workers leave no room for a third: the surge pod stays Pending as
    unschedulable, and with maxUnavailable 1 engines are replaced in place while another serves."""
    name = "rolling-full"
    strategy = {"type": "RollingReplicas", "maxSurge": 1, "maxUnavailable": 1}
    body = manifest(name, real_node, replicas=2, upgradeStrategy=strategy)
    rolled = roll(kube, namespace, name, body, replicas=2, surge=False)
    report(capsys, "rolling upgrade, replicas 2, no spare capacity", {"rolled": rolled.seconds})
    print(
        f"rolling in place: {rolled.sent} requests, {len(rolled.failures)} failed, reasons {rolled.reasons}"
    )

    assert rolled.sent >= 20, (rolled.sent, rolled.seconds)
    rolled.watch.assert_observed_throughout(rolled.seconds)
    assert rolled.watch.fewest_serving, rolled.watch  # never dark
    assert "RollingDrainOld" in rolled.reasons, rolled.reasons
    assert_settled(kube, namespace, name, rolled, replicas=2)
    # Like a Deployment's, both budgets are spent at once: one engine surges (its pod never placed), the
    # other is replaced in place, and the surge's new engine lands on a slot an in-place drain freed.
    replacing = [e["message"] for e in kube.events(namespace, name) if e["reason"] == "EngineReplacing"]
    assert any("draining the old engine first" in m for m in replacing), replacing


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
    served = body["spec"]["model"]["servedModelName"]
    kube.apply(body, namespace)
    old = engines(wait_ready(kube, namespace, name))[0]

    base_url = endpoint(kube, namespace, name)
    wait_for(lambda: serving_ips(kube, namespace, name), timeout=60, what="the Service's first endpoint")
    with Load(base_url, served, rate=2.0, limit=10_000) as load:
        changed = time.monotonic()
        # A model that does not exist on the same claim: the pods keep their volumes (another claim, or a
        # plain path, would change the pod template and so go the Recreate way).
        missing = f"pvc://{MODEL_CLAIM}/no-such-model"
        patch = f'{{"spec":{{"model":{{"source":"{missing}"}}}}}}'
        kube.kubectl("patch", "vllm", name, "-n", namespace, "--type=merge", "-p", patch)

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
