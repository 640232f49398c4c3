"""The chaos scenarios that fail something under a serving VLLMCluster on real pods, each a function that takes
a VLLMCluster already serving, injects its fault under a steady load through the endpoint Service (the
official `openai` client at 2 requests a second, retries off, every failure counted) while the Ray jobs are
sampled for duplicates, waits for the heal, adds its row to the chaos table and asserts its invariants.

`make chaos` runs each on a VLLMCluster of its own (tests/e2e/test_chaos_pods.py, test_engine_faults.py);
`make test`'s reduced run runs them one after the other on one, after the Ray dashboard faults
(test_chaos_dashboard.py), so every scenario costs one model load at most. Every wait is bounded (from the
spec's restart policy, the e2e settings and READY_TIMEOUT) and every scenario stops by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from hack.localcluster.workloads import WORKER_RESOURCES
from rayvllm.engine.decide import JOB_GONE
from rayvllm.models.spec import RestartPolicySpec
from rayvllm.reasons import Reason
from tests.e2e.chaos import (
    ChaosRow,
    RouteSample,
    RouteWatch,
    Watch,
    container_id,
    container_processes,
    kernel_oom_victims,
    kill_container,
    live_jobs_per_replica,
    memory_cgroup,
    misrouted,
    oom_kills,
    ray_memory_monitor_lines,
    ray_pod_processes,
    record,
    restart_count,
)
from tests.e2e.conftest import E2E_SETTINGS, OperatorSettings
from tests.e2e.leaks import SecretScan
from tests.e2e.realnode import RealNodeWorld, pods_of, running_on
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
    with_credentials,
)
from tests.support.kube import Kube
from tests.support.wait import wait_for

UNREACHABLE = Reason.RAY_DASHBOARD_UNREACHABLE.value
WORKER_CONTAINER = "ray-worker"
HEAD_CONTAINER = "ray-head"
# How long the operator has to notice a dead engine and take it out of the Service: a pass each resync
# (2 s here, +-20%) or at once on the pod's watch event, its probes' timeouts (two in a row for an engine
# that stops answering in time: decide.serves_through), the label patch, then the
# EndpointSlice update. Looks at the routes before this are not judged.
NOTICE_SECONDS = 15.0
# A new head pod Running and its Ray answering, on two cores (image present: no pull).
HEAD_BACK_TIMEOUT = 300.0
# Ray workers without GCS fault tolerance give up on a lost head after gcs_rpc_server_reconnect_timeout_s
# (60 s by default) and their container restarts, which ends the old attempt's processes.
OLD_ATTEMPT_GONE_TIMEOUT = 180.0
LOAD_LIMIT = 3000  # rate 2: 25 min, longer than any scenario: the load never stops on its own before the end
DASHBOARD_PROCESS = "ray/dashboard/dashboard.py"
ENGINE_CORE_PROCESS = "VLLM::EngineCore"
ENGINE_SERVER = "vllm.entrypoints.openai.api_server"
# What every vLLM process's command line has: the API server's module path, the engine core's and workers'
# own names (VLLM::EngineCore, VLLM::Worker...).
VLLM_PROCESS = "vllm"
# Long enough for a pass whose Ray calls time out (5 s x 3 attempts) to report it; short enough that
# KubeRay's head readiness probe (which asks the dashboard; 10 x 5 s) does not fail the head pod.
DASHBOARD_FROZEN_SECONDS = 30.0
# The OOM fault's worker container: a memory limit the engine runs well under (its cgroup peaked at 5.6 GB
# with page cache on this machine, 3.6 GB of it anonymous; under a 6Gi limit the engine once left the Service
# for ~6 s while the head restarted, memory pressure the likely cause) and a /dev/shm larger than the room
# the limit leaves once the engine is loaded, so filling /dev/shm must run the container out of memory.
OOM_WORKER = {"resources": {**WORKER_RESOURCES, "limits": {"memory": "8Gi"}}, "shmSize": "6Gi"}
SHM_FILL = "/dev/shm/rayvllm-chaos-fill"


@dataclass(frozen=True)
class Served:
    """A VLLMCluster serving on real pods, in `namespace`, supervised by an operator with `settings`. Its
    served model name is its own name, so engine_server_pids(name) finds its vLLM processes only (no
    scenario's name prefixes another's)."""

    namespace: str
    name: str
    replicas: int
    policy: RestartPolicySpec
    api_key: str = "unused"
    settings: OperatorSettings = field(default_factory=lambda: E2E_SETTINGS)


def serve(
    kube: Kube,
    namespace: str,
    world: RealNodeWorld,
    name: str,
    replicas: int = 1,
    worker: Mapping[str, Any] | None = None,
    credentials: tuple[str, str] | None = None,
    restart_policy: Mapping[str, int] | None = None,
    once_applied: Callable[[], None] | None = None,
    **ray: Any,
) -> tuple[Served, dict[str, Any]]:
    """Apply a VLLMCluster on the real node (`ray` merged into spec.ray, `worker` into spec.ray.worker; an HF
    token and an API key from a Secret when `credentials` are given), call `once_applied`, and wait until
    every engine is Ready and in the Service."""
    body = manifest(name, world, replicas=replicas)
    body["spec"]["ray"].update(ray)
    body["spec"]["ray"]["worker"].update(worker or {})
    body["spec"]["restartPolicy"].update(restart_policy or {})
    if credentials:
        with_credentials(kube, namespace, body, *credentials)
    kube.apply(body, namespace)
    if once_applied is not None:
        once_applied()
    obj = wait_ready(kube, namespace, name, replicas=replicas)
    wait_for(
        lambda: len(serving_ips(kube, namespace, name)) == replicas,
        timeout=60,
        what=f"the Service on {replicas} engine(s)",
    )
    policy = RestartPolicySpec.model_validate(body["spec"]["restartPolicy"])
    return Served(namespace, name, replicas, policy, credentials[1] if credentials else "unused"), obj


def restart_bound(served: Served, restarts_so_far: int) -> float:
    """The longest a lost engine may take to be Ready again: noticed (unhealthy grace and a resync), its
    restart backoff, then a load."""
    settings = served.settings
    noticed = settings["unhealthyGraceSeconds"] + 2 * settings["resyncSeconds"] + NOTICE_SECONDS
    return noticed + served.policy.backoff_before_restart(restarts_so_far) + READY_TIMEOUT


def resubmitted_and_ready(
    kube: Kube, namespace: str, served: Served, index: int, old_submission: str
) -> dict[str, Any] | None:
    """The object once engine `index` runs a submission other than `old_submission` and is ready, and the
    object has every replica ready again."""
    obj = vllm(kube, namespace, served.name)
    engine = engines(obj).get(index) or {}
    healed = (
        engine.get("submissionId") not in (None, old_submission)
        and engine.get("ready")
        and (obj.get("status") or {}).get("readyReplicas") == served.replicas
    )
    return obj if healed else None


def vllm_processes(kube: Kube, served: Served) -> int:
    """vLLM's processes (API servers, engine cores, workers) in the containers of this VLLMCluster's pods: an
    attempt's processes that outlive it, orphans included, show as more than were counted while every engine
    ran. (A pod's processes cannot outlive its containers' cgroups, so nothing is missed by looking only
    there.)"""
    return len(ray_pod_processes(kube, served.namespace, served.name, VLLM_PROCESS))


def leftovers(kube: Kube, namespace: str, served: Served, processes_when_ready: int) -> int:
    """What is left of earlier attempts once healed: live Ray jobs beyond one per replica, and vLLM processes
    (vllm_processes) beyond those counted when every engine was Ready before the fault."""
    live = live_jobs_per_replica(jobs_of(kube, namespace, served.name))
    extra_jobs = sum(max(0, n - 1) for n in live.values())
    return extra_jobs + max(0, vllm_processes(kube, served) - processes_when_ready)


def wait_for_old_processes_gone(
    kube: Kube, served: Served, processes_when_ready: int, timeout: float
) -> None:
    wait_for(
        lambda: vllm_processes(kube, served) <= processes_when_ready,
        timeout=timeout,
        interval=1,
        what=f"no vLLM process of {served.name} beyond the {processes_when_ready} of the running engines",
    )


def engine_processes(kube: Kube, served: Served) -> int:
    """vllm_processes now, once every engine runs (at least one API server per engine)."""
    servers = len(ray_pod_processes(kube, served.namespace, served.name, ENGINE_SERVER))
    assert servers >= served.replicas, f"{servers} vLLM API servers for {served.replicas} engines"
    return vllm_processes(kube, served)


@contextmanager
def under_load(kube: Kube, namespace: str, served: Served, row: ChaosRow) -> Iterator[tuple[Watch, Load]]:
    """While the block runs: the steady load through the endpoint Service, and the Ray jobs sampled (and
    the Service's darkness counted). After it, `row` has the requests sent and failed and the most
    duplicate submissions seen at once. Both must have run: at least one request sent, and the watcher
    looked throughout (what it did not see is then evidence)."""
    started = time.monotonic()
    with Watch(kube, namespace, served.name) as watch:
        watch.serving.set()
        base_url = endpoint(kube, namespace, served.name)
        with Load(base_url, served.name, rate=2.0, limit=LOAD_LIMIT, api_key=served.api_key) as load:
            yield watch, load
    row.requests_sent, row.requests_failed = load.sent, len(load.failures)
    row.duplicate_submissions = watch.most_duplicates
    assert load.sent > 0, load.failures[:3]
    watch.assert_observed_throughout(time.monotonic() - started)


def pod_of_role(kube: Kube, namespace: str, name: str, role: str) -> str:
    pods = [
        p for p in pods_of(kube, namespace, name) if p["metadata"]["labels"].get("ray.io/node-type") == role
    ]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return str(pods[0]["metadata"]["name"])


def signal_in_pod(kube: Kube, namespace: str, pod: str, container: str, signal: str, pattern: str) -> None:
    kube.kubectl("exec", "-n", namespace, pod, "-c", container, "--", "pkill", f"-{signal}", "-f", pattern)


def stopped_processes(kube: Kube, served: Served) -> list[int]:
    """vLLM's processes in this VLLMCluster's pods in state T (stopped): what a frozen engine would leave
    behind if its attempt were not cleaned up."""
    found = []
    for pid in ray_pod_processes(kube, served.namespace, served.name, VLLM_PROCESS):
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "T":
            found.append(pid)
    return found


def unreachable_reported(obj: dict[str, Any]) -> bool:
    return any(c.get("reason") == UNREACHABLE for c in conditions(obj).values())


# --- The Ray worker pod deleted ---------------------------------------------------------------------------


def lose_worker_pod(
    kube: Kube, namespace: str, served: Served, forces: Sequence[bool], capsys: pytest.CaptureFixture[str]
) -> None:
    """The last engine's worker pod deleted (per `forces`: gracefully, or `--force --grace-period=0`): it is
    resubmitted and Ready again within restart backoff + load time, never two live jobs for one replica;
    with two engines the other keeps answering (asked straight, none of its requests fails)."""
    obj = vllm(kube, namespace, served.name)
    processes = engine_processes(kube, served)
    lost_index = served.replicas - 1  # the last engine: with two, engine 0 keeps serving
    kept = engines(obj).get(0) if served.replicas > 1 else None
    row = ChaosRow(f"worker pod deleted (replicas={served.replicas})")
    heals: list[float] = []
    kept_sent = 0
    kept_failures: list[str] = []

    with under_load(kube, namespace, served, row) as (watch, load):
        for force in forces:
            before = engines(vllm(kube, namespace, served.name))[lost_index]
            with ExitStack() as stack:
                # The kept engine asked straight at its own address: none of its requests may fail.
                direct = (
                    stack.enter_context(
                        Load(kept["url"], served.name, rate=1.0, limit=LOAD_LIMIT, api_key=served.api_key)
                    )
                    if kept
                    else None
                )
                how = ["--force", "--grace-period=0"] if force else []
                kube.kubectl("delete", "pod", before["podName"], "-n", namespace, "--wait=false", *how)
                faulted = time.monotonic()
                row.faults += 1
                obj = wait_for(
                    partial(
                        resubmitted_and_ready, kube, namespace, served, lost_index, before["submissionId"]
                    ),
                    timeout=restart_bound(served, before["restarts"]),
                    interval=1,
                    what=f"engine {lost_index} resubmitted and Ready after its pod was deleted",
                )
                heals.append(time.monotonic() - faulted)
                wait_for(
                    lambda: len(serving_ips(kube, namespace, served.name)) == served.replicas,
                    timeout=60,
                    what="the Service on every engine again",
                )
            if direct:
                kept_sent += direct.sent
                kept_failures += direct.failures
            after = engines(obj)[lost_index]
            assert after["podName"] != before["podName"], after
            assert after["restarts"] == before["restarts"] + 1, after
    failures = load.failures[:5]
    wait_for_old_processes_gone(kube, served, processes, OLD_ATTEMPT_GONE_TIMEOUT)
    live = live_jobs_per_replica(jobs_of(kube, namespace, served.name))
    row.orphans = leftovers(kube, namespace, served, processes)
    row.heal_seconds = max(heals)
    row.notes = (
        ", ".join(f"heal {'force' if f else 'graceful'} {h:.0f}s" for f, h in zip(forces, heals, strict=True))
        + "; "
        + (f"kept engine asked straight: {kept_sent} sent / {len(kept_failures)} failed; " if kept else "")
        + f"Service dark in {watch.dark_samples}/{watch.samples} samples; first failures {failures[:2]}"
    )
    record(row, capsys)

    assert row.faults == len(forces)
    assert row.duplicate_submissions == 0, f"live together: {watch.worst}"
    assert live == dict.fromkeys(range(served.replicas), 1), live
    assert row.orphans == 0
    if kept:
        final = engines(vllm(kube, namespace, served.name))[0]
        assert (final["submissionId"], final["restarts"]) == (kept["submissionId"], kept["restarts"]), final
        assert kept_sent > 0 and kept_failures == [], (kept_sent, kept_failures[:5])
        # The Service kept an endpoint throughout: the kept engine never left it.
        assert watch.dark_samples == 0, f"the Service lost every endpoint in {watch.dark_samples} samples"


def route_counts(samples: Sequence[RouteSample]) -> str:
    """Where the route to an engine's pod broke, if it did, over a fault's looks: the pod not Ready, the
    serving label off, the pod out of the Service's endpoints, the engine not answering /health."""
    return (
        f"of {len(samples)} route samples: pod not Ready in {sum(not s.pod_ready for s in samples)}, "
        f"label off in {sum(not s.labelled for s in samples)}, out of the Service in "
        f"{sum(not s.in_service for s in samples)}, engine silent in {sum(not s.engine_answers for s in samples)}"
    )


# --- The head pod deleted -------------------------------------------------------------------------------


def lose_head_without_gcs_fault_tolerance(
    kube: Kube, namespace: str, served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ray loses its jobs with the head; the operator finds the engine's job gone and resubmits it once
    KubeRay has a new head (docs/gpu-cluster.md); nothing of the old attempt is left."""
    processes = engine_processes(kube, served)
    before = engines(vllm(kube, namespace, served.name))[0]
    head = pod_of_role(kube, namespace, served.name, "head")
    row = ChaosRow("head pod deleted, no GCS fault tolerance")

    with under_load(kube, namespace, served, row) as (watch, load):
        time.sleep(2)
        kube.kubectl("delete", "pod", head, "-n", namespace, "--wait=false")
        faulted = time.monotonic()
        row.faults = 1
        obj = wait_for(
            lambda: resubmitted_and_ready(kube, namespace, served, 0, before["submissionId"]),
            timeout=HEAD_BACK_TIMEOUT + restart_bound(served, before["restarts"]),
            interval=1,
            what="the engine resubmitted to the new head and Ready",
        )
        row.heal_seconds = time.monotonic() - faulted
    failures = load.failures[:2]
    wait_for_old_processes_gone(kube, served, processes, OLD_ATTEMPT_GONE_TIMEOUT)
    after = engines(obj)[0]
    new_head = pod_of_role(kube, namespace, served.name, "head")
    live = live_jobs_per_replica(jobs_of(kube, namespace, served.name))
    row.orphans = leftovers(kube, namespace, served, processes)
    row.notes = (
        f"Service dark in {watch.dark_samples}/{watch.samples} samples; first failures {failures}; "
        f"lastFailure: {(after.get('lastFailure') or '').splitlines()[:1]}"
    )
    record(row, capsys)

    assert new_head != head
    # docs/gpu-cluster.md: the operator finds the job gone and resubmits it, counted as a restart.
    assert JOB_GONE in (after.get("lastFailure") or ""), after
    assert after["restarts"] == before["restarts"] + 1, after
    assert before["submissionId"] not in jobs_of(kube, namespace, served.name)  # the new head never knew it
    assert row.duplicate_submissions == 0, f"live together: {watch.worst}"
    assert live == dict.fromkeys(range(served.replicas), 1), live
    assert row.orphans == 0


def lose_head_with_gcs_fault_tolerance(
    kube: Kube,
    namespace: str,
    served: Served,
    redis_address: str,
    world: RealNodeWorld,
    secret_scan: SecretScan,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With `spec.ray.gcsFaultTolerance` (Redis in the cluster) what the design promises (docs/gpu-cluster.md)
    holds: the engine's job survives (same submission, no restart, still known to Ray) and the Service keeps
    it meanwhile: its pod never leaves the Service while it answers, and no request fails."""
    ray_cluster = kube.get_json("raycluster", served.name, "-n", namespace)
    assert ray_cluster["spec"]["gcsFaultToleranceOptions"]["redisAddress"] == redis_address
    before = engines(vllm(kube, namespace, served.name))[0]
    head = pod_of_role(kube, namespace, served.name, "head")
    row = ChaosRow("head pod deleted, GCS fault tolerance (Redis)")
    seen_unreachable = False

    worker = before["podName"]
    with (
        under_load(kube, namespace, served, row) as (watch, load),
        RouteWatch(kube, namespace, served.name, worker, pod_ip(kube, namespace, worker)) as routes,
    ):
        time.sleep(2)
        kube.kubectl("delete", "pod", head, "-n", namespace, "--wait=false")
        faulted = time.monotonic()
        row.faults = 1

        def ray_back() -> dict[str, str] | None:
            nonlocal seen_unreachable
            current = vllm(kube, namespace, served.name)
            unreachable = unreachable_reported(current)
            seen_unreachable |= unreachable
            # The old head gone and a new one Ready: before, the old head may still answer while it stops.
            pods = pods_of(kube, namespace, served.name)
            heads = [p for p in pods if p["metadata"]["labels"].get("ray.io/node-type") == "head"]
            if unreachable or not heads or not all(running_on(p, world.node_name) for p in heads):
                return None
            if any(p["metadata"]["name"] == head for p in heads):
                return None
            try:
                return jobs_of(kube, namespace, served.name) or None
            except Exception:  # the new head's dashboard not answering yet
                return None

        first_jobs = wait_for(
            ray_back, timeout=HEAD_BACK_TIMEOUT, interval=1, what="Ray answering from a new head"
        )
        row.heal_seconds = time.monotonic() - faulted
        # A restart decided on the first passes after the head is back would show within a few resyncs.
        time.sleep(10 * served.settings["resyncSeconds"])
    failures = load.failures[:2]
    after_obj = vllm(kube, namespace, served.name)
    after = engines(after_obj)[0]
    jobs = jobs_of(kube, namespace, served.name)
    survived = (
        after["submissionId"] == before["submissionId"] and jobs.get(before["submissionId"]) == "RUNNING"
    )
    row.orphans = sum(max(0, n - 1) for n in live_jobs_per_replica(jobs).values())
    secret_scan.keep_cluster("head pod deleted with GCS FT", kube, namespace, served.name)
    row.notes = (
        f"engine survived: {survived} (restarts {after['restarts']}; its job known to the new head at "
        f"once: {before['submissionId'] in first_jobs}); "
        f"RayDashboardUnreachable seen: {seen_unreachable}; "
        f"Service dark in {watch.dark_samples}/{watch.samples} samples; {route_counts(routes.samples)}; "
        f"first failures {failures}; heal = head deleted to Ray answering with the job"
    )
    record(row, capsys)

    # docs/gpu-cluster.md: the jobs run on the worker pods and survive a head restart; the operator
    # submits, restarts and stops nothing while the dashboard is away, and keeps answering engines served.
    assert jobs.get(before["submissionId"]) == "RUNNING", jobs
    assert (after["submissionId"], after["restarts"]) == (before["submissionId"], before["restarts"]), after
    assert after["ready"] and after_obj["status"]["readyReplicas"] == served.replicas, after_obj["status"]
    # The engine answered throughout, so its pod stays in the Service and no request fails. Failures seen
    # here were the operator's: one late answer taking the pod out (now let through, serves_through), then a
    # probe sent on a kept-alive connection vLLM's server was closing (now asked again, engine.health).
    routes.assert_observed(10)
    off = [s for s in routes.samples if s.engine_answers and not (s.labelled and s.in_service)]
    assert not off, f"the answering engine's pod left the Service: {route_counts(routes.samples)}"
    assert row.requests_failed == 0, f"{row.requests_failed} requests failed: {failures}"
    assert row.duplicate_submissions == 0, f"live together: {watch.worst}"
    assert row.orphans == 0


# --- Faults behind an engine whose API still answers -------------------------------------------------------


def freeze_dashboard(kube: Kube, namespace: str, served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    """The Ray dashboard frozen (SIGSTOP of its process in the head pod): Ray's view of the jobs is unknown,
    but the engine still answers its own probe, so it keeps serving: no request fails, no restart, and the
    status says RayDashboardUnreachable until the dashboard answers again."""
    before = engines(vllm(kube, namespace, served.name))[0]
    head = pod_of_role(kube, namespace, served.name, "head")
    row = ChaosRow(f"Ray dashboard frozen {DASHBOARD_FROZEN_SECONDS:.0f} s (SIGSTOP)", faults=1)
    seen_unreachable: list[dict[str, Any]] = []

    with under_load(kube, namespace, served, row) as (watch, load):
        time.sleep(2)
        signal_in_pod(kube, namespace, head, HEAD_CONTAINER, "STOP", DASHBOARD_PROCESS)
        try:
            deadline = time.monotonic() + DASHBOARD_FROZEN_SECONDS
            while time.monotonic() < deadline:
                current = vllm(kube, namespace, served.name)
                if unreachable_reported(current):
                    seen_unreachable.append(current)
                time.sleep(1)
        finally:
            signal_in_pod(kube, namespace, head, HEAD_CONTAINER, "CONT", DASHBOARD_PROCESS)
        thawed = time.monotonic()

        def recovered() -> dict[str, Any] | None:
            current = vllm(kube, namespace, served.name)
            back = current["status"]["readyReplicas"] == served.replicas
            return current if back and not unreachable_reported(current) else None

        obj = wait_for(recovered, timeout=120, interval=1, what="the status without RayDashboardUnreachable")
        row.heal_seconds = time.monotonic() - thawed
        time.sleep(2)
    row.notes = "heal = thaw to RayDashboardUnreachable cleared; the engine kept serving, no restart"
    record(row, capsys)
    report(
        capsys, f"dashboard frozen {DASHBOARD_FROZEN_SECONDS:.0f} s", {"recoveredAfterThaw": row.heal_seconds}
    )

    assert seen_unreachable, "the status never said RayDashboardUnreachable while the dashboard was frozen"
    assert all(s["status"]["readyReplicas"] == served.replicas for s in seen_unreachable), "an engine left"
    # The load ran through the freeze (sequential requests: a busy CPU slows them below the rate).
    assert load.sent >= 20 and load.failures == [], (load.sent, load.failures[:5])
    after = engines(obj)[0]
    assert (after["submissionId"], after["restarts"]) == (before["submissionId"], before["restarts"]), after
    assert row.duplicate_submissions == 0, f"live together: {watch.worst}"


def hang_engine(kube: Kube, namespace: str, served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    """The engine core frozen (SIGSTOP of vLLM's engine core in the worker pod): /health and /v1/models still
    answer 200, only the canary completion finds it (it times out while the engine's token counters stand
    still); the engine is restarted within canary interval + canary timeout + unhealthy grace, and nothing
    of the frozen attempt is left behind."""
    processes = engine_processes(kube, served)
    before = engines(vllm(kube, namespace, served.name))[0]
    frozen_id = before["submissionId"]
    row = ChaosRow("engine hung (engine core SIGSTOP)", faults=1)

    with under_load(kube, namespace, served, row) as (watch, _load):
        signal_in_pod(kube, namespace, before["podName"], WORKER_CONTAINER, "STOP", ENGINE_CORE_PROCESS)
        frozen = time.monotonic()

        def judged() -> dict[str, Any] | None:
            e = engines(vllm(kube, namespace, served.name)).get(0, {})
            moved_on = e.get("submissionId") != frozen_id
            return e if moved_on or e.get("health") in ("Hung", "NotGenerating") else None

        # Found by the next canary (one interval), which times out; restarted after the unhealthy grace; the
        # loop looks every resync. The waits allow three times that (measured: tests' note in the README).
        settings = served.settings
        canary = (
            settings["canaryIntervalSeconds"] + settings["canaryTimeoutSeconds"] + settings["resyncSeconds"]
        )
        wait_for(judged, timeout=3 * canary, interval=1, what="the frozen engine found by the canary")
        detected = time.monotonic() - frozen

        def restarted() -> dict[str, Any] | None:
            e = engines(vllm(kube, namespace, served.name)).get(0, {})
            return e if e.get("submissionId") != frozen_id else None

        decided = canary + settings["unhealthyGraceSeconds"] + 2 * settings["resyncSeconds"]
        wait_for(restarted, timeout=3 * decided, interval=1, what="the frozen engine restarted")
        restart_decided = time.monotonic() - frozen
        obj = wait_ready(kube, namespace, served.name, replicas=served.replicas)
        row.heal_seconds = time.monotonic() - frozen
    engine = engines(obj)[0]
    frozen_job = jobs_of(kube, namespace, served.name)[frozen_id]
    wait_for(lambda: not stopped_processes(kube, served), timeout=60, what="no frozen vLLM process left")
    wait_for_old_processes_gone(kube, served, processes, OLD_ATTEMPT_GONE_TIMEOUT)
    row.orphans = len(stopped_processes(kube, served)) + leftovers(kube, namespace, served, processes)
    row.notes = (
        f"found by the canary after {detected:.1f}s, restart decided after {restart_decided:.1f}s; "
        "one replica: requests fail until it is back"
    )
    record(row, capsys)
    report(
        capsys,
        "engine core frozen (SIGSTOP)",
        {"detected": detected, "restartDecided": restart_decided, "readyAgain": row.heal_seconds},
    )

    assert engine["restarts"] == before["restarts"] + 1 and "canary" in (engine.get("lastFailure") or ""), (
        engine
    )
    assert frozen_job in ("STOPPED", "FAILED"), frozen_job
    assert row.duplicate_submissions == 0, f"live together: {watch.worst}"
    assert row.orphans == 0


# --- Faults that leave the worker pod in place -----------------------------------------------------------


def exited(pid: int) -> bool:
    """The process is gone, or dead and not yet reaped by its parent (a zombie)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def kill_worker_container(kube: Kube, namespace: str, pod: str, running: str) -> tuple[int, str]:
    """Every process of the worker container SIGKILLed from this machine: the kubelet restarts it in place."""
    killed = kill_container(running)
    assert killed > 0
    return 1, f"{killed} processes SIGKILLed"


def kill_engine(kube: Kube, namespace: str, pod: str, running: str) -> tuple[int, str]:
    """vLLM's API server SIGKILLed inside the pod (kubectl exec); the container's main process lives on."""
    kube.kubectl(
        "exec", "-n", namespace, pod, "-c", WORKER_CONTAINER, "--", "pkill", "-9", "-f", ENGINE_SERVER
    )
    return 1, "vLLM's API server SIGKILLed"


def run_out_of_memory(kube: Kube, namespace: str, pod: str, running: str) -> tuple[int, str]:
    """The worker container out of memory: a file written to its memory-backed /dev/shm is charged to the
    container's memory cgroup but owned by no process, so what dies is chosen by the killers' own rules
    among the container's processes, whichever acts first: Ray's memory monitor (at 95% of the container's
    limit it kills Ray workers, vLLM's processes among them) or the kernel's OOM killer (Ray gives its
    workers oom_score_adj 1000; the filler, run by kubectl exec, has the container's lower one). Returns
    once one of vLLM's processes is dead and the file is gone again (the restarted engine needs that
    memory)."""
    cgroup = memory_cgroup(running)
    kills_before, monitor_before = oom_kills(cgroup), ray_memory_monitor_lines(running)
    engine = {pid: cmd for pid, cmd in container_processes(running).items() if "vllm" in cmd.lower()}
    assert engine, container_processes(running)
    exec_in_worker = ("exec", "-n", namespace, pod, "-c", WORKER_CONTAINER, "--")
    with ThreadPoolExecutor(1) as pool:
        # Bounded by /dev/shm's size and by time; stopped as soon as a vLLM process is dead.
        fill = pool.submit(
            kube.kubectl, *exec_in_worker, "timeout", "120", "dd", "if=/dev/zero", f"of={SHM_FILL}", "bs=16M",
            check=False,
        )  # fmt: skip
        victims = wait_for(
            lambda: [cmd.split()[0] for pid, cmd in engine.items() if exited(pid)],
            timeout=150,
            interval=0.2,
            what="one of vLLM's processes killed as the worker container ran out of memory",
        )
        kube.kubectl(*exec_in_worker, "sh", "-c", f"pkill -x dd; rm -f {SHM_FILL}", check=False)
        filled = fill.result(timeout=150)
    kills = oom_kills(cgroup) - kills_before
    monitor = ray_memory_monitor_lines(running) - monitor_before
    return 1, (
        f"kernel OOM kills {kills} {kernel_oom_victims(running)}; Ray memory monitor log lines {monitor}; "
        f"first gone of vLLM's processes {victims} (filler exit {filled.returncode})"
    )


@dataclass(frozen=True)
class InPlace:
    """A fault that leaves the worker pod where it is: same pod, same IP, no new pod from KubeRay."""

    scenario: str
    inject: Callable[[Kube, str, str, str], tuple[int, str]]
    """(kube, namespace, pod, worker container id) -> (faults injected, what was done)"""
    container_restarts: bool
    worker: Mapping[str, Any] | None = None
    """What the worker group needs for the fault (merged into spec.ray.worker)."""


IN_PLACE = {
    "container": InPlace("worker container restarted in place", kill_worker_container, True),
    "engine": InPlace("engine killed in its pod (SIGKILL)", kill_engine, False),
    "oom": InPlace("engine OOM-killed in its container", run_out_of_memory, False, OOM_WORKER),
}


def fault_in_place(
    kube: Kube, namespace: str, served: Served, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The engine dies while its pod stays (Ready, at the same IP): the serving label, and so the Service,
    follow the engine, never the pod; the operator restarts the engine in the same pod."""
    fault = IN_PLACE[kind]
    processes = engine_processes(kube, served)
    before = engines(vllm(kube, namespace, served.name))[0]
    pod = kube.get_json("pod", before["podName"], "-n", namespace)
    ip, restarts_before = pod["status"]["podIP"], restart_count(pod, WORKER_CONTAINER)
    running = container_id(pod, WORKER_CONTAINER)
    assert running, pod["status"].get("containerStatuses")
    row = ChaosRow(fault.scenario)

    with under_load(kube, namespace, served, row) as (watch, load):
        time.sleep(2)
        with RouteWatch(kube, namespace, served.name, before["podName"], ip) as routes:
            row.faults, done = fault.inject(kube, namespace, before["podName"], running)
            faulted = time.monotonic()
            # inject returns once the engine is dead: filling the memory takes seconds (the OOM fault), and
            # the operator's time to notice runs from the death.
            notice = faulted - routes.started + NOTICE_SECONDS
            obj = wait_for(
                lambda: resubmitted_and_ready(kube, namespace, served, 0, before["submissionId"]),
                timeout=restart_bound(served, before["restarts"]),
                interval=1,
                what="the engine resubmitted in the same pod and Ready",
            )
            row.heal_seconds = time.monotonic() - faulted
            wait_for(
                lambda: ip in serving_ips(kube, namespace, served.name),
                timeout=60,
                what="the pod back in the Service",
            )
    failures = load.failures[:2]
    wait_for_old_processes_gone(kube, served, processes, OLD_ATTEMPT_GONE_TIMEOUT)
    pod = kube.get_json("pod", before["podName"], "-n", namespace)
    after = engines(obj)[0]
    samples = routes.samples
    wrong = misrouted(samples, notice)
    pod_ready_engine_not = sum(s.pod_ready and not s.engine_answers for s in samples if s.after >= notice)
    row.orphans = leftovers(kube, namespace, served, processes)
    row.notes = (
        f"{done}; {len(samples)} route samples, {len(wrong)} misrouted; pod Ready while its engine was not "
        f"in {pod_ready_engine_not}; first failures {failures}"
    )
    record(row, capsys)
    with capsys.disabled():
        print(f"[chaos] {fault.scenario}: the engine's lastFailure:\n{after.get('lastFailure')}")

    assert row.faults >= 1
    if kind == "oom":
        # Out of memory indeed: the kernel's OOM killer acted, or Ray's memory monitor says it did (in the
        # engine's failure when the job's end reached the operator first, else in the raylet's log: the
        # engine's /health may go silent before Ray marks the job failed).
        said = "memory" in (after.get("lastFailure") or "").lower()
        killers = ("kernel OOM kills 0 ", "Ray memory monitor log lines 0;")
        assert said or not all(k in done for k in killers), (done, after.get("lastFailure"))
    # The same pod, at the same IP; its container restarted by the kubelet only when it was killed.
    assert pod is not None and pod["status"]["podIP"] == ip
    restarted = restart_count(pod, WORKER_CONTAINER) > restarts_before
    assert restarted == fault.container_restarts, pod["status"]["containerStatuses"]
    assert after["podName"] == before["podName"] and after["restarts"] == before["restarts"] + 1, after
    # The label (and so the Service) followed the engine: never on the pod while no engine answered there,
    # and taken off at least once (the fault was seen).
    assert wrong == [], wrong[:5]
    assert any(not s.labelled for s in samples), "the serving label never left the pod"
    assert row.duplicate_submissions == 0, f"live together: {watch.worst}"
    assert live_jobs_per_replica(jobs_of(kube, namespace, served.name)) == {0: 1}
    assert row.orphans == 0
