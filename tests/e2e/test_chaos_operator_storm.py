"""Chaos, `make chaos`: the in-cluster operator SIGKILLed at random 2-8 s intervals while VLLMClusters are
created, served under load, scaled 1 -> 2 -> 1 and given new engine settings, then deleted, until 100 operator
processes were killed.

One real VLLMCluster on real pods carries an HF token and an API key from a Secret; beside it, 50 objects that
never get a pod (tests/e2e/storm.py) ride the same storm. Invariants:
- per engine replica and generation Ray never has two live jobs, and every submission is the one its
  record accounts for (attempt 0: no engine was restarted because the operator was);
- the endpoint Service never loses its endpoints and no request fails while the engine is healthy;
- once the storm ends every object settles where it would have without it (a twin object created before
  the storm is the yardstick);
- after delete nothing is left: no RayCluster, Service, pod, vLLM process, or VLLMCluster held by a finalizer;
- no secret value appears in any operator instance's log, the status, the Events, the Ray job records or
  the RayCluster (the run's secret scan, tests/e2e/leaks.py).

`make test` has a smaller storm beside its shared serving object (phase P4 of tests/e2e/test_shared_engine.py:
10 kills, 8 pod-less objects, no new load) and deletes that object under 5 more (P8).
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from hack.localcluster.helm_release import OperatorRelease
from hack.localcluster.procs import WaitTimeoutError
from tests.e2e.chaos import ChaosRow, OperatorStorm, Watch, record, submission_parts
from tests.e2e.leaks import SecretScan
from tests.e2e.realnode import RealNodeWorld
from tests.e2e.serving import (
    READY_TIMEOUT,
    Load,
    conditions,
    endpoint,
    engines,
    job_records,
    manifest,
    vllm,
    wait_ready,
    with_credentials,
    worker_pods,
)
from tests.e2e.storm import delete_under_storm, podless, wait_settled, yardstick
from tests.support.kube import Kube
from tests.support.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

HF_TOKEN = "hf_chaosStormTokenNeverLogged0123456789"
API_KEY = "sk-chaos-storm-key-never-logged-0123456789"
SERVED = "storm"  # the object's name, and so its served model name
PODLESS = 50
KILLS = 100  # operator processes SIGKILLed
SERVE_SECONDS = 60.0
MAX_ROUNDS = 5  # rounds of scale and settings change at most (about 35 kills each)


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

    seen: dict[str, object] = {}

    def recreated() -> bool:
        obj = vllm(kube, namespace, name)
        engine = engines(obj).get(0) or {}
        # Kept so a timeout names what the operator reported instead of a bare False.
        seen.update(engine=engine, phase=(obj.get("status") or {}).get("phase"), conditions=conditions(obj))
        return f"-g{generation + 1}-a0-" in engine.get("submissionId", "") and bool(engine.get("ready"))

    try:
        wait_for(
            recreated, timeout=READY_TIMEOUT, what=f"the engine recreated with maxModelLen {max_model_len}"
        )
    except WaitTimeoutError as error:
        try:
            seen["ray_jobs"] = {
                sid: (job.status, job.message) for sid, job in job_records(kube, namespace, name).items()
            }
        except Exception as unreadable:  # the timeout is the failure; this only adds detail
            seen["ray_jobs"] = f"unreadable: {unreadable!r}"
        raise WaitTimeoutError(f"{error}; last status: {json.dumps(seen, default=str)}") from error


@pytest.mark.timeout(5400)
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
    with_credentials(kube, namespace, body, HF_TOKEN, API_KEY)
    secret_scan.secret(HF_TOKEN, "storm's HF token")
    secret_scan.secret(API_KEY, "storm's API key")
    shape = yardstick(kube, namespace, real_node)
    crowd = [f"crowd-{i}" for i in range(PODLESS)]
    row = ChaosRow("operator restart storm")
    load_sent = load_failed = rounds = 0
    failures: list[str] = []

    with Watch(kube, namespace, name) as watch:
        # 1. Create and serve under the storm, then rounds of scale 1 -> 2 -> 1 (under load) and an
        # engine-settings change until the storm has SIGKILLed KILLS operator processes.
        with OperatorStorm(in_cluster_operator, limit=KILLS, seed=1) as storm:
            items = [body, *(podless(n, real_node) for n in crowd)]
            kube.apply({"apiVersion": "v1", "kind": "List", "items": items}, namespace)
            base_url = endpoint(kube, namespace, name)
            while True:
                wait_ready(kube, namespace, name)
                watch.serving.set()
                with Load(base_url, SERVED, rate=2.0, limit=2000, api_key=API_KEY) as load:
                    if rounds == 0:
                        time.sleep(SERVE_SECONDS)
                    scale_up_and_back(kube, namespace, name)
                load_sent += load.sent
                load_failed += len(load.failures)
                failures += load.failures[:5]
                watch.serving.clear()
                rounds += 1
                # Recreate: the endpoint goes dark by design while the new generation loads, so no load.
                change_settings(kube, namespace, name, max_model_len=128 if rounds % 2 else 256)
                if storm.processes_killed >= KILLS:
                    break
                assert rounds < MAX_ROUNDS, f"only {storm.processes_killed} kills in {rounds} rounds"
        row.faults += storm.kills
        processes_killed = storm.processes_killed

        # 2. The storm is over: everything settles where it would have without it.
        ended = time.monotonic()
        wait_settled(kube, namespace, in_cluster_operator, crowd, shape)
        wait_ready(kube, namespace, name)
        row.heal_seconds = time.monotonic() - ended

    obj = vllm(kube, namespace, name)
    row.requests_sent, row.requests_failed = load_sent, load_failed
    row.duplicate_submissions = watch.most_duplicates
    per_engine = Counter(parts[:2] for sid in watch.submissions if (parts := submission_parts(sid)))
    restarted = [sid for sid in watch.submissions if (parts := submission_parts(sid)) and parts[2] > 0]
    secret_scan.keep("storm: logs of the killed operators", "".join(storm.logs))
    secret_scan.keep_cluster("storm", kube, namespace, name)

    # 3. Delete everything under a second, shorter storm: nothing is left.
    deleted = delete_under_storm(kube, namespace, in_cluster_operator, [SERVED], kills=20, seed=2)
    row.faults += deleted.kills
    row.orphans = sum(deleted.left.values())
    secret_scan.keep("storm: logs of the killed operators", deleted.logs)
    row.notes = (
        f"{processes_killed} operator processes SIGKILLed ({len(storm.errors)} failed kills); "
        f"{len(crowd) + 1} pod-less objects; {rounds} rounds of scale 1 -> 2 -> 1 and a settings change; "
        f"heal = storm end to all settled; delete under {deleted.kills} more kills took {deleted.seconds:.0f}s; "
        f"Service dark in {watch.dark_samples}/{watch.samples} samples"
    )
    record(row, capsys)

    assert processes_killed >= KILLS, storm.errors[:3]
    assert load_sent >= SERVE_SECONDS and row.requests_failed == 0, (load_sent, failures)
    watch.assert_observed_throughout(SERVE_SECONDS)
    assert watch.samples > 0, watch
    assert watch.dark_samples == 0, f"the Service lost its endpoints in {watch.dark_samples} samples"
    assert row.duplicate_submissions == 0
    assert per_engine and all(n == 1 for n in per_engine.values()), sorted(watch.submissions)
    assert not restarted, f"engines restarted during the storm: {restarted}"
    assert all(e.get("restarts", 0) == 0 for e in engines(obj).values()), engines(obj)
    assert row.orphans == 0
