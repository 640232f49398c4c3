"""Chaos: the pods under a serving VLLMCluster fail, on real pods, under a steady load through the endpoint
Service (the official `openai` client at 2 requests a second, retries off, every failure counted), while
the VLLMCluster's Ray jobs are sampled for duplicates. Each scenario adds its row to the chaos table.

- A Ray worker pod deleted (gracefully, then `--force --grace-period=0`): its engine is resubmitted and
  Ready again within restart backoff + load time, and never two live jobs for one replica. With two
  engines (the full run) the other one keeps answering: requests sent to it straight never fail. The
  reduced run has one engine (two loading at once take ~4 min on two cores) and measures the outage.
- The head pod deleted without GCS fault tolerance: Ray loses its jobs, the operator finds them gone and
  resubmits them once KubeRay has a new head; nothing of the old attempt is left.
- The head pod deleted with `spec.ray.gcsFaultTolerance` (a Redis in the cluster, built locally): what the
  design promises (docs/gpu-cluster.md) is asserted: the engine's job survives (same submission, no
  restart, still known to Ray) and the Service keeps it meanwhile; failed requests are reported.
- Faults that leave the worker pod in place (same pod, same IP, Ready): the worker container killed so the
  kubelet restarts it, vLLM's API server killed inside the pod, and the container run out of memory under
  its limit so the kernel's OOM killer kills one of vLLM's processes. The serving label follows the engine,
  not the pod, so the Service never sends requests there while the engine is not back; the operator
  restarts the engine in the same pod.

Every scenario is bounded (its waits derive from the spec's restart policy, the e2e settings and
READY_TIMEOUT) and stops by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from hack.localcluster import images
from hack.localcluster.cluster import default_cluster
from hack.localcluster.helm_release import OperatorRelease
from hack.localcluster.workloads import REDIS_NAME, REDIS_PORT, WORKER_RESOURCES, redis
from rayvllm.engine.decide import JOB_GONE
from rayvllm.models.spec import RestartPolicySpec
from tests.e2e.chaos import (
    FULL,
    ChaosRow,
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
    record,
    restart_count,
)
from tests.e2e.conftest import E2E_SETTINGS
from tests.e2e.leaks import SecretScan
from tests.e2e.realnode import RealNodeWorld, pods_of, running_on
from tests.e2e.serving import (
    READY_TIMEOUT,
    Load,
    conditions,
    endpoint,
    engine_server_pids,
    engines,
    jobs_of,
    manifest,
    serving_ips,
    vllm,
    wait_ready,
)
from tests.e2e.test_engine_faults import pod_of_role
from tests.support.kube import Kube
from tests.support.wait import wait_for

# Four scenarios of several model loads each (~25 min on 2 cores): `make chaos`, beyond make test's budget.
pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.heavy]

WORKER_CONTAINER = "ray-worker"
REDIS_PASSWORD = "chaos-redis-password-never-logged-0123456789"
# How long the operator has to notice a dead engine and take it out of the Service: a pass each resync
# (2 s here, +-20%) or at once on the pod's watch event, its probes' timeouts, the label patch, then the
# EndpointSlice update. Looks at the routes before this are not judged.
NOTICE_SECONDS = 15.0
# A new head pod Running and its Ray answering, on two cores (image present: no pull).
HEAD_BACK_TIMEOUT = 300.0
# Ray workers without GCS fault tolerance give up on a lost head after gcs_rpc_server_reconnect_timeout_s
# (60 s by default) and their container restarts, which ends the old attempt's processes.
OLD_ATTEMPT_GONE_TIMEOUT = 180.0
LOAD_LIMIT = 3000  # rate 2: 25 min, longer than any scenario: the load never stops on its own before the end


@dataclass(frozen=True)
class Served:
    """A VLLMCluster of this module serving on real pods. Its served model name is its own name, so
    engine_server_pids(name) finds this scenario's vLLM processes only (no name here prefixes another)."""

    name: str
    replicas: int
    policy: RestartPolicySpec


def serve(
    kube: Kube,
    namespace: str,
    world: RealNodeWorld,
    name: str,
    replicas: int = 1,
    worker: Mapping[str, Any] | None = None,
    **ray: Any,
) -> tuple[Served, dict[str, Any]]:
    """Apply a VLLMCluster on the real node (`ray` merged into spec.ray, `worker` into spec.ray.worker) and
    wait until every engine is Ready and in the Service."""
    body = manifest(name, world, replicas=replicas)
    body["spec"]["model"]["servedModelName"] = name
    body["spec"]["ray"].update(ray)
    body["spec"]["ray"]["worker"].update(worker or {})
    kube.apply(body, namespace)
    obj = wait_ready(kube, namespace, name, replicas=replicas)
    wait_for(
        lambda: len(serving_ips(kube, namespace, name)) == replicas,
        timeout=60,
        what=f"the Service on {replicas} engine(s)",
    )
    policy = RestartPolicySpec.model_validate(body["spec"].get("restartPolicy") or {})
    return Served(name, replicas, policy), obj


def restart_bound(served: Served, restarts_so_far: int) -> float:
    """The longest a lost engine may take to be Ready again: noticed (unhealthy grace and a resync), its
    restart backoff, then a load."""
    noticed = E2E_SETTINGS["unhealthyGraceSeconds"] + 2 * E2E_SETTINGS["resyncSeconds"] + NOTICE_SECONDS
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


def leftovers(kube: Kube, namespace: str, served: Served, processes_when_ready: int) -> int:
    """What is left of earlier attempts once healed: live Ray jobs beyond one per replica, and vLLM API
    server processes of this model beyond those counted when every engine was first Ready."""
    live = live_jobs_per_replica(jobs_of(kube, namespace, served.name))
    extra_jobs = sum(max(0, n - 1) for n in live.values())
    return extra_jobs + max(0, len(engine_server_pids(served.name)) - processes_when_ready)


def wait_for_old_processes_gone(served: Served, processes_when_ready: int, timeout: float) -> None:
    wait_for(
        lambda: len(engine_server_pids(served.name)) <= processes_when_ready,
        timeout=timeout,
        interval=1,
        what=f"no vLLM API server of {served.name} beyond the {processes_when_ready} of the running engines",
    )


@contextmanager
def under_load(kube: Kube, namespace: str, served: Served, row: ChaosRow) -> Iterator[tuple[Watch, Load]]:
    """While the block runs: the steady load through the endpoint Service, and the Ray jobs sampled (and
    the Service's darkness counted). After it, `row` has the requests sent and failed and the most
    duplicate submissions seen at once."""
    with Watch(kube, namespace, served.name) as watch:
        watch.serving.set()
        with Load(endpoint(kube, namespace, served.name), served.name, rate=2.0, limit=LOAD_LIMIT) as load:
            yield watch, load
    row.requests_sent, row.requests_failed = load.sent, len(load.failures)
    row.duplicate_submissions = watch.most_duplicates


@pytest.mark.timeout(3000 if FULL else 1500)
def test_worker_pod_deleted_while_serving(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    served, obj = serve(kube, namespace, real_node, "lose-worker", replicas=2 if FULL else 1)
    processes = len(engine_server_pids(served.name))
    assert processes >= served.replicas, f"{processes} vLLM API servers for {served.replicas} engines"
    lost_index = served.replicas - 1  # the last engine: with two, engine 0 keeps serving
    kept = engines(obj).get(0) if served.replicas > 1 else None
    row = ChaosRow(f"worker pod deleted (replicas={served.replicas})")
    heals: list[float] = []
    kept_sent = 0
    kept_failures: list[str] = []

    with under_load(kube, namespace, served, row) as (watch, load):
        for force in (False, True):
            before = engines(vllm(kube, namespace, served.name))[lost_index]
            with ExitStack() as stack:
                # The kept engine asked straight at its own address: none of its requests may fail.
                direct = (
                    stack.enter_context(Load(kept["url"], served.name, rate=1.0, limit=LOAD_LIMIT))
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
    wait_for_old_processes_gone(served, processes, OLD_ATTEMPT_GONE_TIMEOUT)
    live = live_jobs_per_replica(jobs_of(kube, namespace, served.name))
    row.orphans = leftovers(kube, namespace, served, processes)
    row.heal_seconds = max(heals)
    row.notes = (
        f"heal graceful {heals[0]:.0f}s, force {heals[1]:.0f}s; "
        + (f"kept engine asked straight: {kept_sent} sent / {len(kept_failures)} failed; " if kept else "")
        + f"Service dark in {watch.dark_samples}/{watch.samples} samples; first failures {failures[:2]}"
    )
    record(row, capsys)

    assert row.faults == 2
    assert row.duplicate_submissions == 0, f"live together: {watch.worst}"
    assert live == dict.fromkeys(range(served.replicas), 1), live
    assert row.orphans == 0
    if kept:
        final = engines(vllm(kube, namespace, served.name))[0]
        assert (final["submissionId"], final["restarts"]) == (kept["submissionId"], kept["restarts"]), final
        assert kept_sent > 0 and kept_failures == [], (kept_sent, kept_failures[:5])
        # The Service kept an endpoint throughout: the kept engine never left it.
        assert watch.dark_samples == 0, f"the Service lost every endpoint in {watch.dark_samples} samples"


@pytest.mark.timeout(1500)
def test_head_pod_deleted_without_gcs_fault_tolerance(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    served, obj = serve(kube, namespace, real_node, "lose-head")
    processes = len(engine_server_pids(served.name))
    before = engines(obj)[0]
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
    wait_for_old_processes_gone(served, processes, OLD_ATTEMPT_GONE_TIMEOUT)
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
    assert live == {0: 1}, live
    assert row.orphans == 0


@dataclass(frozen=True)
class InClusterRedis:
    address: str
    secret: str
    key: str


@pytest.fixture
def in_cluster_redis(kube: Kube, namespace: str, real_node: RealNodeWorld) -> Iterator[InClusterRedis]:
    """Redis from the locally built image on the real node, with a password from a Secret. Teardown deletes
    the namespace's VLLMClusters and waits for their RayClusters to go first: KubeRay's GCS fault-tolerance
    finalizer runs a Job that cleans the cluster's data from this Redis, which must still be there."""
    image = images.ensure_redis(default_cluster().node.containerd_socket)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "redis-credentials"},
        "stringData": {"password": REDIS_PASSWORD},
    }
    kube.apply(secret, namespace)
    for obj in redis(image, "redis-credentials", "password"):
        kube.apply(obj, namespace)
    kube.kubectl("rollout", "status", f"deployment/{REDIS_NAME}", "-n", namespace, "--timeout=120s")
    service = kube.get_json("service", REDIS_NAME, "-n", namespace)
    # The ClusterIP rather than the Service's DNS name: a head restart is tested here, not CoreDNS.
    yield InClusterRedis(f"{service['spec']['clusterIP']}:{REDIS_PORT}", "redis-credentials", "password")
    kube.kubectl("delete", "vllmclusters", "--all", "-n", namespace, "--wait=false", check=False)
    wait_for(
        lambda: not (kube.get_json("rayclusters", "-n", namespace) or {}).get("items"),
        timeout=360,
        interval=2,
        what="the RayClusters gone (KubeRay's Redis cleanup Job done) before Redis goes",
    )


@pytest.mark.timeout(1500)
def test_head_pod_deleted_with_gcs_fault_tolerance(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    in_cluster_redis: InClusterRedis,
    secret_scan: SecretScan,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret_scan.secret(REDIS_PASSWORD, "the Redis password of GCS fault tolerance")
    ft = {
        "redisAddress": in_cluster_redis.address,
        "redisPasswordSecretRef": {"name": in_cluster_redis.secret, "key": in_cluster_redis.key},
    }
    served, obj = serve(kube, namespace, real_node, "ft-head", gcsFaultTolerance=ft)
    ray_cluster = kube.get_json("raycluster", served.name, "-n", namespace)
    assert ray_cluster["spec"]["gcsFaultToleranceOptions"]["redisAddress"] == in_cluster_redis.address
    before = engines(obj)[0]
    head = pod_of_role(kube, namespace, served.name, "head")
    row = ChaosRow("head pod deleted, GCS fault tolerance (Redis)")
    seen_unreachable = False

    with under_load(kube, namespace, served, row) as (watch, load):
        time.sleep(2)
        kube.kubectl("delete", "pod", head, "-n", namespace, "--wait=false")
        faulted = time.monotonic()
        row.faults = 1

        def ray_back() -> dict[str, str] | None:
            nonlocal seen_unreachable
            current = vllm(kube, namespace, served.name)
            unreachable = any(
                c.get("reason") == "RayDashboardUnreachable" for c in conditions(current).values()
            )
            seen_unreachable |= unreachable
            # The old head gone and a new one Ready: before, the old head may still answer while it stops.
            pods = pods_of(kube, namespace, served.name)
            heads = [p for p in pods if p["metadata"]["labels"].get("ray.io/node-type") == "head"]
            if unreachable or not heads or not all(running_on(p, real_node.node_name) for p in heads):
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
        time.sleep(10 * E2E_SETTINGS["resyncSeconds"])
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
        f"Service dark in {watch.dark_samples}/{watch.samples} samples; first failures {failures}; "
        "heal = head deleted to Ray answering with the job"
    )
    record(row, capsys)

    # docs/gpu-cluster.md: the jobs run on the worker pods and survive a head restart; the operator
    # submits, restarts and stops nothing while the dashboard is away, and keeps answering engines served.
    assert jobs.get(before["submissionId"]) == "RUNNING", jobs
    assert (after["submissionId"], after["restarts"]) == (before["submissionId"], before["restarts"]), after
    assert after["ready"] and after_obj["status"]["readyReplicas"] == 1, after_obj["status"]
    assert watch.dark_samples == 0, f"the Service lost its engine in {watch.dark_samples} samples"
    assert row.duplicate_submissions == 0, f"live together: {watch.worst}"
    assert row.orphans == 0


# The OOM fault's worker container: a memory limit the engine loads under (its cgroup peaked at 5.4 GB with
# page cache on this machine, 3.3 GB of it anonymous) and a /dev/shm larger than the room the limit leaves
# once the engine is loaded, so filling /dev/shm must run the container out of memory.
OOM_WORKER = {"resources": {**WORKER_RESOURCES, "limits": {"memory": "6Gi"}}, "shmSize": "4Gi"}
SHM_FILL = "/dev/shm/rayvllm-chaos-fill"
ENGINE_SERVER = "vllm.entrypoints.openai.api_server"


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
    kills_before = oom_kills(cgroup)
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
    return 1, (
        f"kernel OOM kills {kills} {kernel_oom_victims(running)}; first gone of vLLM's processes {victims} "
        f"(filler exit {filled.returncode})"
    )


@dataclass(frozen=True)
class InPlace:
    """A fault that leaves the worker pod where it is: same pod, same IP, no new pod from KubeRay."""

    scenario: str
    inject: Callable[[Kube, str, str, str], tuple[int, str]]
    """(kube, namespace, pod, worker container id) -> (faults injected, what was done)"""
    container_restarts: bool
    worker: Mapping[str, Any] | None = None


IN_PLACE = {
    "container": InPlace("worker container restarted in place", kill_worker_container, True),
    "engine": InPlace("engine killed in its pod (SIGKILL)", kill_engine, False),
    "oom": InPlace("engine OOM-killed in its container", run_out_of_memory, False, OOM_WORKER),
}


@pytest.mark.parametrize("kind", list(IN_PLACE))
@pytest.mark.timeout(1500)
def test_fault_in_place_serving_label_follows_the_engine(
    kind: str,
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The engine dies while its pod stays (Ready, at the same IP): the serving label, and so the Service,
    follow the engine, never the pod; the operator restarts the engine in the same pod."""
    fault = IN_PLACE[kind]
    served, obj = serve(kube, namespace, real_node, f"in-place-{kind}", worker=fault.worker)
    processes = len(engine_server_pids(served.name))
    before = engines(obj)[0]
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
    wait_for_old_processes_gone(served, processes, OLD_ATTEMPT_GONE_TIMEOUT)
    pod = kube.get_json("pod", before["podName"], "-n", namespace)
    after = engines(obj)[0]
    samples = routes.samples
    wrong = misrouted(samples, NOTICE_SECONDS)
    pod_ready_engine_not = sum(
        s.pod_ready and not s.engine_answers for s in samples if s.after >= NOTICE_SECONDS
    )
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
        # Out of memory indeed: the kernel's OOM killer acted, or Ray's memory monitor says it did.
        said = "memory" in (after.get("lastFailure") or "").lower()
        assert said or "kernel OOM kills 0 " not in done, (done, after.get("lastFailure"))
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
