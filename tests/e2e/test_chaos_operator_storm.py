"""Chaos: the in-cluster operator SIGKILLed at random 2-8 s intervals while VLLMClusters are created,
served under load, (in the full run) scaled 1 -> 2 -> 1 and given new engine settings, then deleted.

One real VLLMCluster on real pods carries an HF token and an API key from a Secret; beside it, objects that
never get a pod (their pods select no node: the control plane alone, nothing dials a fake pod address)
ride the same storm. Invariants:
- per engine replica and generation Ray never has two live jobs, and every submission is the one its
  record accounts for (attempt 0: no engine was restarted because the operator was);
- the endpoint Service never loses its endpoints and no request fails while the engine is healthy;
- once the storm ends every object settles where it would have without it (a twin object created before
  the storm is the yardstick);
- after delete nothing is left: no RayCluster, Service, pod, vLLM process, or VLLMCluster held by a finalizer;
- no secret value appears in any operator instance's log, the status, the Events, the Ray job records or
  the RayCluster (the run's secret scan, tests/e2e/leaks.py).

`RAYVLLM_CHAOS=full` (make chaos): 50 pod-less objects, and rounds of scale 1 -> 2 -> 1 and an engine-settings
change repeated until 100 operator processes were SIGKILLed. The reduced run (make test): create, serve and
delete under at least 10 kills with 8 pod-less objects; between storm and delete, with the operator left
alone, it also deletes the Ray head pod of the serving VLLMCluster (no GCS fault tolerance), the scenario
`make chaos` runs on a VLLMCluster of its own (tests/e2e/test_chaos_pods.py).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

from hack.localcluster.helm_release import OperatorRelease
from rayvllm.models.spec import RestartPolicySpec
from tests.e2e.chaos import (
    FULL,
    TABLE,
    ChaosRow,
    OperatorStorm,
    Watch,
    status_shape,
    submission_parts,
)
from tests.e2e.leaks import SecretScan
from tests.e2e.pod_faults import Served, lose_head_without_gcs_fault_tolerance
from tests.e2e.realnode import RealNodeWorld, pods_of
from tests.e2e.serving import (
    READY_TIMEOUT,
    Load,
    endpoint,
    engine_server_pids,
    engines,
    manifest,
    vllm,
    wait_ready,
    with_credentials,
    worker_pods,
)
from tests.support.kube import Kube
from tests.support.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

HF_TOKEN = "hf_chaosStormTokenNeverLogged0123456789"
API_KEY = "sk-chaos-storm-key-never-logged-0123456789"
SERVED = "storm"  # the served model name: the VLLMCluster's own, as tests/e2e/pod_faults.py expects
NOWHERE = {"rayvllm.io/chaos": "no-such-node"}
PODLESS = 50 if FULL else 8
KILLS = 100 if FULL else 40  # operator processes SIGKILLed: the full run's target, the reduced run's bound
MIN_KILLS = 100 if FULL else 10
SERVE_SECONDS = 60.0 if FULL else 20.0
MAX_ROUNDS = 5  # full run: rounds of scale and settings change at most (about 35 kills each)


def podless(name: str, real_node: RealNodeWorld) -> dict[str, Any]:
    body = manifest(name, real_node)
    for group in ("head", "worker"):
        body["spec"]["ray"][group]["nodeSelector"] = dict(NOWHERE)
    return body


def operator_ready(release: OperatorRelease) -> bool:
    pod = release.pod()
    conditions = ((pod or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def settled_like(kube: Kube, namespace: str, names: list[str], shape: dict[str, Any]) -> list[str]:
    """The objects among `names` whose status does not yet have `shape`."""
    listed = kube.get_json("vllmclusters", "-n", namespace)["items"]
    by_name = {o["metadata"]["name"]: o for o in listed}
    return [n for n in names if n not in by_name or status_shape(by_name[n]) != shape]


def serve_window(storm: OperatorStorm) -> None:
    """Serve for SERVE_SECONDS, and on until the storm has killed MIN_KILLS operator processes (the reduced
    run's floor)."""
    serve_until = time.monotonic() + SERVE_SECONDS
    while time.monotonic() < serve_until or (not FULL and storm.processes_killed < MIN_KILLS):
        assert time.monotonic() < serve_until + 120, f"only {storm.processes_killed} kills in the window"
        time.sleep(1)


def scale_up_and_back(kube: Kube, namespace: str, name: str) -> None:
    kube.kubectl("scale", "vllm", name, "-n", namespace, "--replicas=2")
    wait_ready(kube, namespace, name, replicas=2)
    kube.kubectl("scale", "vllm", name, "-n", namespace, "--replicas=1")
    wait_ready(kube, namespace, name, replicas=1)
    wait_for(
        lambda: len(worker_pods(kube, namespace, name, terminating=False)) == 1,
        timeout=READY_TIMEOUT,
        what="the retired engine's worker pod to go",
    )


def change_settings(kube: Kube, namespace: str, name: str, max_model_len: int) -> None:
    """An engine-settings change: engine 0 is recreated as the next generation."""
    generation = vllm(kube, namespace, name)["metadata"]["generation"]
    patch = json.dumps({"spec": {"engine": {"maxModelLen": max_model_len}}})
    kube.kubectl("patch", "vllm", name, "-n", namespace, "--type=merge", "-p", patch)

    def recreated() -> bool:
        engine = engines(vllm(kube, namespace, name)).get(0) or {}
        return f"-g{generation + 1}-a0-" in engine.get("submissionId", "") and bool(engine.get("ready"))

    wait_for(recreated, timeout=READY_TIMEOUT, what=f"the engine recreated with maxModelLen {max_model_len}")


@pytest.mark.timeout(5400 if FULL else 1500)
def test_operator_restart_storm(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    secret_scan: SecretScan,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = SERVED
    body = manifest(name, real_node)
    body["spec"]["model"]["servedModelName"] = SERVED
    with_credentials(kube, namespace, body, HF_TOKEN, API_KEY)
    secret_scan.secret(HF_TOKEN, "storm's HF token")
    secret_scan.secret(API_KEY, "storm's API key")

    # The yardstick: a pod-less object settled by an operator left alone.
    kube.apply(podless("yardstick", real_node), namespace)
    shape = wait_for(
        lambda: (s := status_shape(vllm(kube, namespace, "yardstick")))["phase"] and s,
        timeout=60,
        what="the yardstick object's status",
    )
    time.sleep(6)  # three resyncs: the shape it keeps, not a first impression
    shape = status_shape(vllm(kube, namespace, "yardstick"))
    crowd = [f"crowd-{i}" for i in range(PODLESS)]
    row = ChaosRow("operator restart storm")
    load_sent = load_failed = 0
    failures: list[str] = []
    storm_logs: list[str] = []

    with Watch(kube, namespace, name) as watch:
        # 1. Create and serve under the storm; the full run then repeats rounds of scale 1 -> 2 -> 1 (under
        # load) and an engine-settings change until the storm has SIGKILLed KILLS operator processes.
        with OperatorStorm(in_cluster_operator, limit=KILLS, seed=1) as storm:
            items = [body, *(podless(n, real_node) for n in crowd)]
            kube.apply({"apiVersion": "v1", "kind": "List", "items": items}, namespace)
            wait_ready(kube, namespace, name)
            base_url = endpoint(kube, namespace, name)
            rounds = 0
            while True:
                wait_ready(kube, namespace, name)
                watch.serving.set()
                with Load(base_url, SERVED, rate=2.0, limit=2000, api_key=API_KEY) as load:
                    if rounds == 0:
                        serve_window(storm)
                    if FULL:
                        scale_up_and_back(kube, namespace, name)
                load_sent += load.sent
                load_failed += len(load.failures)
                failures += load.failures[:5]
                watch.serving.clear()
                if not FULL:
                    break
                rounds += 1
                # Recreate: the endpoint goes dark by design while the new generation loads, so no load.
                change_settings(kube, namespace, name, max_model_len=128 if rounds % 2 else 256)
                if storm.processes_killed >= KILLS:
                    break
                assert rounds < MAX_ROUNDS, f"only {storm.processes_killed} kills in {rounds} rounds"
        storm_logs += storm.logs
        row.faults += storm.kills
        processes_killed = storm.processes_killed
        assert not storm.errors, storm.errors

        # 2. The storm is over: everything settles where it would have without it.
        ended = time.monotonic()
        wait_for(lambda: operator_ready(in_cluster_operator), timeout=180, what="an operator pod Ready")
        wait_ready(kube, namespace, name)
        wait_for(
            lambda: not settled_like(kube, namespace, crowd, shape),
            timeout=180,
            interval=1,
            what=f"every pod-less object settled as {shape}",
        )
        row.heal_seconds = time.monotonic() - ended

    obj = vllm(kube, namespace, name)
    row.requests_sent, row.requests_failed = load_sent, load_failed
    row.duplicate_submissions = watch.most_duplicates
    per_engine = Counter(parts[:2] for sid in watch.submissions if (parts := submission_parts(sid)))
    restarted = [sid for sid in watch.submissions if (parts := submission_parts(sid)) and parts[2] > 0]
    secret_scan.keep("storm: logs of the killed operators", "".join(storm_logs))
    secret_scan.keep_cluster("storm", kube, namespace, name)
    if not FULL:
        # The reduced run's head pod deleted without GCS fault tolerance (make chaos runs it on a VLLMCluster
        # of its own, tests/e2e/test_chaos_pods.py), on this one now that the storm is over.
        policy = RestartPolicySpec.model_validate(body["spec"]["restartPolicy"])
        lose_head_without_gcs_fault_tolerance(kube, namespace, Served(name, 1, policy, API_KEY), capsys)

    # 3. Delete everything under a second, shorter storm: nothing is left.
    with OperatorStorm(in_cluster_operator, limit=20 if FULL else 5, seed=2) as delete_storm:
        kube.kubectl("delete", "vllm", "--all", "-n", namespace, "--wait=false")
        deleted = time.monotonic()

        def leftovers() -> dict[str, int]:
            kinds = ("vllmclusters", "rayclusters", "services", "pods")
            counts = {k: len(kube.get_json(k, "-n", namespace)["items"]) for k in kinds}
            counts["vllm processes"] = len(engine_server_pids(SERVED))
            return {k: v for k, v in counts.items() if v}

        try:
            wait_for(lambda: not leftovers(), timeout=420, interval=2, what="nothing left after delete")
        finally:
            delete_storm.stop()
            row.orphans = sum(leftovers().values())
    row.faults += delete_storm.kills
    secret_scan.keep("storm: logs of the killed operators", "".join(delete_storm.logs))
    row.notes = (
        f"{processes_killed} operator processes SIGKILLed; {len(crowd) + 1} pod-less objects; "
        + (f"{rounds} rounds of scale 1 -> 2 -> 1 and a settings change; " if FULL else "")
        + "heal = storm end to all settled; "
        f"delete under {delete_storm.kills} more kills took {time.monotonic() - deleted:.0f}s; "
        f"Service dark in {watch.dark_samples}/{watch.samples} samples"
    )
    TABLE.append(row)
    with capsys.disabled():
        print(f"\n[chaos] {row}")

    assert processes_killed >= MIN_KILLS
    assert row.requests_failed == 0, failures
    assert watch.dark_samples == 0, f"the Service lost its endpoints in {watch.dark_samples} samples"
    assert row.duplicate_submissions == 0
    assert per_engine and all(n == 1 for n in per_engine.values()), sorted(watch.submissions)
    assert not restarted, f"engines restarted during the storm: {restarted}"
    assert all(e.get("restarts", 0) == 0 for e in engines(obj).values()), engines(obj)
    assert row.orphans == 0
    assert not pods_of(kube, namespace, name)
