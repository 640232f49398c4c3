"""The operator's Ray dashboard client against a real Ray 2.60 cluster that KubeRay runs on the real node (the
RayCluster our builder makes for the tiny sample, no engine): job submission and supervision calls, placement
through the engine-slot resource, cluster state, token auth. The dashboard is reached through the head
Service from this machine."""

from __future__ import annotations

import asyncio
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from rayvllm.errors import RayAuthError, RayError
from rayvllm.placement import ENGINE_SLOT_RESOURCE
from rayvllm.ray import JobInfo, JobSubmitRequest, RayDashboardClient, RayRequestRejectedError, RetryPolicy
from tests.e2e.realnode import RayOnPods, RealNodeWorld, start_ray_on_pods, stop_ray_on_pods, tiny_sample
from tests.support.kube import Kube

pytestmark = pytest.mark.e2e

T = TypeVar("T")
FAST_RETRY = RetryPolicy(attempts=2, backoff_seconds=0.1)


@pytest.fixture(scope="module")
def ray(kube: Kube, real_node: RealNodeWorld) -> Iterator[RayOnPods]:
    """One RayCluster (a head, a worker with one engine slot) for this module, in a namespace of its own."""
    namespace = f"t-ray-client-{secrets.token_hex(3)}"
    kube.kubectl("create", "namespace", namespace)
    try:
        started = start_ray_on_pods(kube, real_node, tiny_sample("client", namespace, real_node.images.ray))
        yield started
        stop_ray_on_pods(kube, started)
    finally:
        kube.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=120s")


def run(make: Callable[[RayDashboardClient], Awaitable[T]], url: str, token: str | None) -> T:
    async def go() -> T:
        async with RayDashboardClient(url, token=token, timeout=10) as client:
            return await make(client)

    return asyncio.run(go())


async def wait_for(
    client: RayDashboardClient, sid: str, done: Callable[[JobInfo], bool], within: float = 60
) -> JobInfo:
    deadline = time.monotonic() + within
    while True:
        job = await client.get(sid)
        assert job is not None, f"job {sid} vanished"
        if done(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {sid} still {job.status} after {within}s: {job.message}")
        await asyncio.sleep(0.3)


def python_job(sid: str, code: str, **fields: object) -> JobSubmitRequest:
    return JobSubmitRequest.model_validate(
        {"entrypoint": shlex.join(["python", "-c", code]), "submission_id": sid, **fields}
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns() % 10**10}"


def test_gcs_health_and_version(ray: RayOnPods) -> None:
    assert run(lambda c: c.gcs_healthy(), ray.dashboard_url, ray.token) is True
    assert run(lambda c: c.ray_version(), ray.dashboard_url, ray.token) == "2.60.0"


def test_cluster_resources(ray: RayOnPods) -> None:
    cluster = run(lambda c: c.cluster_resources(), ray.dashboard_url, ray.token)
    assert len(cluster.alive_nodes) == 2
    heads = [n for n in cluster.alive_nodes if n.is_head]
    workers = [n for n in cluster.alive_nodes if not n.is_head]
    assert len(heads) == 1 and len(workers) == 1
    # Ray's node addresses are the pods' addresses on the cluster bridge.
    assert heads[0].node_ip == ray.head_ip and workers[0].node_ip == ray.worker_ip
    # The head carries no engine slot (so no vLLM server lands there); the worker exactly one.
    assert ENGINE_SLOT_RESOURCE not in heads[0].resources_total
    assert workers[0].resources_total[ENGINE_SLOT_RESOURCE] == 1.0
    assert cluster.total(ENGINE_SLOT_RESOURCE) == 1.0
    # The worker's logical GPU: gpusPerWorker (1 in the sample), as the RayCluster builder declares it.
    assert cluster.gpus_total == 1.0
    # Availability comes from the autoscaler's report. Our RayCluster runs no in-tree autoscaler, so there
    # is none (seen over 60 s in CI): unknown is None, never a guess, and the supervisor counts totals.
    time.sleep(5)
    cluster = run(lambda c: c.cluster_resources(), ray.dashboard_url, ray.token)
    assert cluster.available(ENGINE_SLOT_RESOURCE) is None
    assert all(n.resources_available is None for n in cluster.alive_nodes if not n.is_head)


def test_engine_slot_job_lifecycle_on_the_worker(ray: RayOnPods) -> None:
    sid = unique("e2e-lifecycle")
    request = python_job(
        sid,
        "import os, sys, time; print('PROBE', os.environ['RAYVLLM_PROBE'], sys.executable, flush=True); "
        "time.sleep(600)",
        runtime_env={
            "env_vars": {"RAYVLLM_PROBE": "hello-from-runtime-env", "RAY_JOB_STOP_WAIT_TIME_S": "5"}
        },
        metadata={"rayvllm.io/name": "lifecycle"},
        entrypoint_num_cpus=0.5,
        entrypoint_resources={ENGINE_SLOT_RESOURCE: 1.0},
    )

    second_sid = unique("e2e-second")
    second = python_job(second_sid, "print('second')", entrypoint_resources={ENGINE_SLOT_RESOURCE: 1.0})

    async def scenario(client: RayDashboardClient) -> None:
        cluster = await client.cluster_resources()
        worker = next(n for n in cluster.alive_nodes if not n.is_head)
        head = next(n for n in cluster.alive_nodes if n.is_head)

        first = await client.submit(request)
        assert first.created and first.submission_id == sid
        try:
            # A restarted operator resubmitting the same id adopts the job instead of duplicating it.
            again = await client.submit(request)
            assert not again.created

            job = await wait_for(client, sid, lambda j: j.status == "RUNNING")
            assert job.driver_node_id == worker.node_id != head.node_id
            assert job.driver_node_ip == ray.worker_ip
            assert job.driver_agent_http_address and job.driver_agent_http_address.startswith(
                f"http://{ray.worker_ip}:"
            )
            assert job.metadata == {"rayvllm.io/name": "lifecycle"}
            assert job.started_at is not None and job.ended_at is None

            deadline = time.monotonic() + 30
            while "PROBE" not in (logs := await client.logs(sid) or ""):
                assert time.monotonic() < deadline, f"no PROBE line in logs: {logs!r}"
                await asyncio.sleep(0.3)
            # The image's Python (the relocatable venv at /opt/ray) runs the entrypoint.
            assert "PROBE hello-from-runtime-env /opt/ray/bin/python" in logs

            assert sid in {j.submission_id for j in await client.list()}
            # The one slot is taken: a second job that needs it waits (Ray's scheduler is the truth here; a
            # KubeRay cluster without the in-tree autoscaler reports no fresh availability).
            await client.submit(second)
            await asyncio.sleep(3)
            waiting = await client.get(second_sid)
            assert waiting is not None and waiting.status == "PENDING", waiting

            with pytest.raises(RayRequestRejectedError, match="not terminal"):
                await client.delete(sid)
        finally:
            assert await client.stop(sid) is True
        job = await wait_for(client, sid, lambda j: j.terminal, within=30)
        assert job.status == "STOPPED"
        # The freed slot goes to the waiting job.
        assert (await wait_for(client, second_sid, lambda j: j.terminal, within=120)).status == "SUCCEEDED"
        assert await client.delete(second_sid) is True
        assert job.ended_at is not None
        assert await client.stop(sid) is False
        assert await client.delete(sid) is True
        assert await client.get(sid) is None
        assert await client.logs(sid) is None
        assert await client.delete(sid) is False
        assert await client.stop(sid) is False

    run(scenario, ray.dashboard_url, ray.token)


def test_without_entrypoint_resources_the_driver_runs_on_the_head(ray: RayOnPods) -> None:
    # Why the builder always sets entrypoint_resources: Ray's default puts the entrypoint on the head,
    # which has no GPU on a real cluster.
    sid = unique("e2e-head")

    async def scenario(client: RayDashboardClient) -> JobInfo:
        await client.submit(python_job(sid, "print('on the head')"))
        return await wait_for(client, sid, lambda j: j.terminal)

    job = run(scenario, ray.dashboard_url, ray.token)
    cluster = run(lambda c: c.cluster_resources(), ray.dashboard_url, ray.token)
    head = next(n for n in cluster.alive_nodes if n.is_head)
    assert job.status == "SUCCEEDED", job.message
    assert job.driver_node_id == head.node_id
    assert job.driver_exit_code == 0
    run(lambda c: c.delete(sid), ray.dashboard_url, ray.token)


def test_failed_entrypoint_reports_why(ray: RayOnPods) -> None:
    sid = unique("e2e-fail")

    async def scenario(client: RayDashboardClient) -> JobInfo:
        await client.submit(
            python_job(
                sid,
                "import sys; print('engine exploded', file=sys.stderr); sys.exit(3)",
                entrypoint_resources={ENGINE_SLOT_RESOURCE: 1.0},
            )
        )
        return await wait_for(client, sid, lambda j: j.terminal)

    job = run(scenario, ray.dashboard_url, ray.token)
    assert job.status == "FAILED"
    assert job.error_type == "JOB_ENTRYPOINT_COMMAND_ERROR"
    assert job.driver_exit_code == 3
    assert job.message is not None and "engine exploded" in job.message
    run(lambda c: c.delete(sid), ray.dashboard_url, ray.token)


def test_killed_entrypoint_leaves_no_process_behind(kube: Kube, ray: RayOnPods) -> None:
    # vLLM's API server (the entrypoint) starts its engine core and workers as children. Killed, it must not
    # leave them holding the pod's memory: Ray's watcher kills the entrypoint's process group once the job's
    # supervisor exits, which our workers' Ray settings keep working (builders.raycluster.ORPHAN_CLEANUP_ENV),
    # and the exit code stays Ray's to report (the subreaper setting lost it: every job SUCCEEDED).
    sid = unique("e2e-orphan")
    child = "sleep 613"
    code = f"import subprocess, time; subprocess.Popen({child.split()!r}); print('spawned', flush=True); time.sleep(600)"
    request = python_job(sid, code, entrypoint_resources={ENGINE_SLOT_RESOURCE: 1.0})
    request = request.model_copy(update={"entrypoint": f"exec {request.entrypoint}"})
    pod, container = ray.worker_pod["metadata"]["name"], ray.worker_pod["spec"]["containers"][0]["name"]

    def processes() -> dict[str, tuple[str, str]]:
        """Command line -> (pid, state) of the worker container's processes."""
        listing = kube.kubectl(
            "exec", "-n", ray.namespace, pod, "-c", container, "--", "ps", "-eo", "pid=,stat=,args="
        )
        rows = (line.split(None, 2) for line in listing.stdout.splitlines())
        return {row[2]: (row[0], row[1]) for row in rows if len(row) == 3}

    run(lambda c: c.submit(request), ray.dashboard_url, ray.token)
    run(lambda c: wait_for(c, sid, lambda j: j.status == "RUNNING"), ray.dashboard_url, ray.token)
    deadline = time.monotonic() + 30
    while not any(line == child for line in processes()):
        assert time.monotonic() < deadline, f"the entrypoint's child never started: {processes()}"
        time.sleep(0.5)
    (entrypoint_pid,) = [pid for line, (pid, _) in processes().items() if line.startswith("python -c")]
    kube.kubectl("exec", "-n", ray.namespace, pod, "-c", container, "--", "kill", "-9", entrypoint_pid)

    job = run(lambda c: wait_for(c, sid, lambda j: j.terminal), ray.dashboard_url, ray.token)
    assert (job.status, job.driver_exit_code) == ("FAILED", -9), job
    deadline = time.monotonic() + 15
    # Dead: gone, or a zombie of the container's init (`ray start`, which reaps nobody): it holds no memory.
    while (left := processes().get(child)) is not None and not left[1].startswith("Z"):
        assert time.monotonic() < deadline, f"the killed entrypoint's child lives on: {left}"
        time.sleep(0.5)
    run(lambda c: c.delete(sid), ray.dashboard_url, ray.token)


def test_job_needing_more_slots_than_exist_stays_pending_even_when_stopped(ray: RayOnPods) -> None:
    # Ray 2.60 facts the supervisor must live with: a job whose supervisor actor cannot be placed stays
    # PENDING (until the head's RAY_JOB_START_TIMEOUT_SECONDS, default 900 s, fails it); stop() answers
    # True but is only queued on the unplaced actor; delete() is refused while it is not terminal.
    sid = unique("e2e-pending")

    async def scenario(client: RayDashboardClient) -> tuple[JobInfo, bool, JobInfo]:
        await client.submit(
            python_job(sid, "print('never')", entrypoint_resources={ENGINE_SLOT_RESOURCE: 2.0})
        )
        await asyncio.sleep(3)
        before = await client.get(sid)
        assert before is not None
        stopped = await client.stop(sid)
        await asyncio.sleep(5)
        after = await client.get(sid)
        assert after is not None
        with pytest.raises(RayRequestRejectedError, match="not terminal"):
            await client.delete(sid)
        return before, stopped, after

    before, stopped, after = run(scenario, ray.dashboard_url, ray.token)
    assert before.status == "PENDING"
    assert before.message is not None and "waiting for resources" in before.message
    assert stopped is True
    assert after.status == "PENDING"


def test_unreachable_dashboard_is_a_transient_error() -> None:
    async def scenario() -> None:
        async with RayDashboardClient("http://127.0.0.1:9", retry=FAST_RETRY, timeout=2) as client:
            with pytest.raises(RayError, match="unreachable"):
                await client.get("anything")
            with pytest.raises(RayError):
                await client.gcs_healthy()

    asyncio.run(scenario())


# --- token auth -----------------------------------------------------------------------------------


def test_token_auth(ray: RayOnPods) -> None:
    # KubeRay's token mode (authOptions.mode token, as our RayCluster sets it) guards the Jobs API.
    with pytest.raises(RayAuthError, match="401"):
        run(lambda c: c.list(), ray.dashboard_url, token=None)
    with pytest.raises(RayAuthError, match="403"):
        run(lambda c: c.list(), ray.dashboard_url, token="wrong")
    assert isinstance(run(lambda c: c.list(), ray.dashboard_url, token=ray.token), list)
    # The health endpoint stays open, as KubeRay's probes need it to.
    assert run(lambda c: c.gcs_healthy(), ray.dashboard_url, token=None) is True
