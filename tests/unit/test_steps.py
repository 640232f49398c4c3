"""The pure halves of the reconcile steps: when a child needs a write, what the watches keep of pods, which
Secrets a spec needs, which pods gain or lose the serving label, and the status of an invalid spec."""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from rayvllm.bounded import Bounds
from rayvllm.builders import build_ray_cluster, build_service
from rayvllm.builders.labels import SERVING_LABEL, SPEC_HASH_ANNOTATION
from rayvllm.drift import holds, needs_apply
from rayvllm.engine.fingerprint import engine_config_hash
from rayvllm.engine.health import EngineProber
from rayvllm.engine.probe import EngineProbe, EngineState, LoadSample
from rayvllm.errors import KubernetesRejectedError, RayError
from rayvllm.identity import ClusterRef
from rayvllm.models import EngineStatus, Phase, parse_spec
from rayvllm.models.rayapi import ClusterResources, JobInfo
from rayvllm.observed import PodCounts, count_pods, live_workers, newer, pod_view, trimmed
from rayvllm.plans import (
    BACKOFF_LIMIT,
    Missing,
    after_look,
    backoff_resyncs,
    look_due,
    next_look_in,
    secret_problems,
    secret_uses,
    secret_values,
    serving_changes,
)
from rayvllm.reasons import Reason
from rayvllm.reconcile import (
    Children,
    Clients,
    Memory,
    Pass,
    apply_ray_cluster,
    read_secrets,
    supervise_engines,
)
from rayvllm.settings import Settings
from rayvllm.status import (
    Observation,
    Problem,
    compute_status,
    differs_only_in_messages,
    unschedulable_problems,
)
from rayvllm.workers import WorkerPlan

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SPEC = parse_spec(
    {
        "model": {"source": "hf://org/model", "hfTokenSecretRef": {"name": "hf", "key": "token"}},
        "engine": {"apiKeySecretRef": {"name": "api", "key": "key"}},
        "ray": {"image": "img"},
    }
)


def stored(manifest: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    """The object as the API server would hand it back: a JSON round trip, server-set metadata, defaults."""
    obj: dict[str, Any] = json.loads(json.dumps(manifest))
    obj["metadata"].update(uid="u-1", resourceVersion="42", generation=1, managedFields=[{"manager": "x"}])
    for path, value in defaults.items():
        node: Any = obj
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[leaf] = value
    obj["status"] = {"state": "ready"}
    return obj


# ---- RayCluster and Service steps: write only on a difference ---------------------------------------


def test_a_stored_service_with_server_defaults_needs_no_write() -> None:
    built = build_service(SPEC, "llama", "team", "uid-1")
    observed = stored(built, **{"spec.clusterIP": "10.96.0.7", "spec.sessionAffinity": "None"})
    assert not needs_apply(built, trimmed(observed))


def test_a_stored_ray_cluster_needs_no_write_until_someone_edits_it() -> None:
    built = build_ray_cluster(SPEC, "llama", "team", "uid-1", WorkerPlan(1))
    observed = trimmed(stored(built))
    assert not needs_apply(built, observed)
    edited = copy.deepcopy(observed)
    edited["spec"]["workerGroupSpecs"][0]["replicas"] = 5
    assert needs_apply(built, edited)
    relabelled = copy.deepcopy(observed)
    del relabelled["metadata"]["labels"][next(iter(built["metadata"]["labels"]))]
    assert needs_apply(built, relabelled)


def test_a_missing_child_or_a_spec_change_needs_a_write() -> None:
    built = build_service(SPEC, "llama", "team", "uid-1")
    assert needs_apply(built, None)
    other_port = build_service(
        parse_spec({**SPEC.to_wire(), "engine": {"port": 9000}}), "llama", "team", "uid-1"
    )
    assert needs_apply(other_port, trimmed(stored(built)))


@pytest.mark.parametrize(
    ("observed", "desired", "expected"),
    [
        ({"a": 1, "b": 2}, {"a": 1}, True),
        ({"a": 1}, {"a": 2}, False),
        ({}, {"a": None}, True),
        ({"a": 1}, {"a": None}, False),
        ({"l": [1, 2]}, {"l": [1]}, False),
        ({"l": [{"x": 1, "y": 2}]}, {"l": [{"x": 1}]}, True),
        ({"a": "1"}, {"a": 1}, False),
        ({"a": {"b": 1}}, {"a": "b"}, False),
    ],
)
def test_holds_is_containment(observed: Any, desired: Any, expected: bool) -> None:
    assert holds(observed, desired) is expected


def test_the_newer_copy_of_a_child_wins() -> None:
    old, new = {"metadata": {"resourceVersion": "9"}}, {"metadata": {"resourceVersion": "10"}}
    assert newer(old, new) is new and newer(new, old) is new
    assert newer(None, old) is old and newer(old, None) is old and newer(None, None) is None


def test_the_cache_keeps_no_managed_fields() -> None:
    kept = trimmed(stored(build_service(SPEC, "llama", "team", "uid-1")))
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["ownerReferences"] and kept["status"] == {"state": "ready"}


# ---- pods as the watches keep them ------------------------------------------------------------------


def pod(name: str, node_type: str = "worker", ready: bool = True, **extra: Any) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if extra.get("unschedulable"):
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": extra["unschedulable"],
            }
        )
    return {
        "metadata": {
            "name": name,
            "labels": {
                "ray.io/node-type": node_type,
                **({SERVING_LABEL: "true"} if extra.get("serving") else {}),
            },
            "annotations": {SPEC_HASH_ANNOTATION: extra.get("hash", "h1")},
            **({"deletionTimestamp": "2026-03-01T12:00:00Z"} if extra.get("deleting") else {}),
        },
        "status": {
            "phase": "Running" if ready else "Pending",
            "podIP": extra.get("ip"),
            "conditions": conditions,
        },
    }


def test_pod_counts_only_count_current_ready_pods() -> None:
    views = [
        pod_view(pod("head", "head")),
        pod_view(pod("w1")),
        pod_view(pod("w2", ready=False)),
        pod_view(pod("w-old", hash="h0")),
        pod_view(pod("w-going", deleting=True)),
    ]
    counts = count_pods(views, "h1")
    assert (counts.head_ready, counts.ready_workers, counts.outdated) == (True, 1, 1)
    assert live_workers(views) == ["w1", "w2", "w-old"]
    assert not pod_view(pod("w-going", deleting=True)).ready


def test_an_unschedulable_pod_is_a_problem_naming_it() -> None:
    views = [
        pod_view(pod("w1", ready=False, unschedulable="0/3 nodes: Insufficient nvidia.com/gpu")),
        pod_view(pod("w2")),
    ]
    (problem,) = unschedulable_problems(views)
    assert problem.reason == Reason.WORKER_UNSCHEDULABLE
    assert problem.message == "pod w1 (worker) cannot be scheduled: 0/3 nodes: Insufficient nvidia.com/gpu"


# ---- secrets ----------------------------------------------------------------------------------------


def test_every_referenced_secret_is_checked_with_the_field_that_names_it() -> None:
    uses = secret_uses(SPEC)
    assert [u.field for u in uses] == ["spec.model.hfTokenSecretRef", "spec.engine.apiKeySecretRef"]
    problems = secret_problems("team", uses, {"hf": None, "api": {"other": "x"}})
    assert [p.reason for p in problems] == [Reason.SECRET_NOT_FOUND] * 2
    assert problems[0].message.startswith("spec.model.hfTokenSecretRef: Secret team/hf does not exist")
    assert "has no key 'key' (it has: other)" in problems[1].message
    assert secret_problems("team", uses, {"hf": {"token": "t"}, "api": {"key": "k"}}) == []


@pytest.mark.parametrize(
    ("found", "values"),
    [
        (
            {"hf": {"token": "hf-value", "other": "not-referenced"}, "api": {"key": "api-value"}},
            {"hf-value", "api-value"},
        ),
        ({"hf": None, "api": {"key": "api-value"}}, {"api-value"}),
        ({"hf": {"token": ""}, "api": {}}, set()),
        ({}, set()),
    ],
)
def test_the_values_to_redact_are_those_of_the_referenced_keys(
    found: dict[str, dict[str, str] | None], values: set[str]
) -> None:
    assert secret_values(secret_uses(SPEC), found) == values


# ---- serving labels ---------------------------------------------------------------------------------


def test_serving_labels_follow_ready_engines_only() -> None:
    views = [pod_view(pod("w1", serving=True)), pod_view(pod("w2")), pod_view(pod("w3", serving=True))]
    engines = [
        EngineStatus(index=0, ready=True, pod_name="w2"),
        EngineStatus(index=1, ready=True, pod_name="w3"),
        EngineStatus(index=2, ready=False, pod_name="w1"),
    ]
    assert serving_changes(views, engines) == {"w1": False, "w2": True}
    settled = [pod_view(pod("w2", serving=True)), pod_view(pod("w3", serving=True)), pod_view(pod("w1"))]
    assert serving_changes(settled, engines) == {}


# ---- status: an invalid spec has the same home as every other phase ---------------------------------


def test_an_invalid_spec_fails_with_its_field_and_keeps_transition_times() -> None:
    problem = Problem(Reason.INVALID_SPEC, "spec.replicas: must be >= 0", fatal=True)
    observed = Observation(
        ref=ClusterRef("team", "llama", "u", 4), spec=None, ray_cluster=None, problems=[problem]
    )
    status = compute_status(observed, T0)
    assert status.phase == Phase.FAILED and status.message == "spec.replicas: must be >= 0"
    conditions = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conditions == {
        "Ready": ("False", "InvalidSpec"),
        "Progressing": ("False", "InvalidSpec"),
        "Degraded": ("True", "InvalidSpec"),
    }
    later = compute_status(
        Observation(ref=observed.ref, spec=None, ray_cluster=None, problems=[problem], previous=status),
        T0.replace(hour=13),
    )
    assert later == status


# ---- a settled object's pass recomputes nothing -----------------------------------------------------


def test_memory_recomputes_only_when_the_inputs_change() -> None:
    memory, calls = Memory(), []

    def compute() -> int:
        calls.append(1)
        return len(calls)

    assert memory.derive("x", ("gen", 1), compute) == 1
    assert memory.derive("x", ("gen", 1), compute) == 1
    assert memory.derive("x", ("gen", 2), compute) == 2
    assert memory.derive("y", ("gen", 2), compute) == 3
    assert len(calls) == 3


def test_a_status_in_other_words_is_told_apart_from_a_new_verdict() -> None:
    """KubeRay names a new pod in its ReplicaFailure message on every retry: the same verdict, which the
    status step writes at most once a resync."""
    ref = ClusterRef("team", "llama", "uid-1", 1)
    quota = 'pods "llama-head-{}" is forbidden: exceeded quota'
    failing = {
        "metadata": {},
        "status": {
            "conditions": [{"type": "ReplicaFailure", "status": "True", "message": quota.format("abcde")}]
        },
    }
    first = compute_status(Observation(ref, SPEC, failing), T0).to_wire()
    failing["status"]["conditions"][0]["message"] = quota.format("fghij")
    again = compute_status(Observation(ref, SPEC, failing), T0).to_wire()
    assert first != again and differs_only_in_messages(again, first)
    assert not differs_only_in_messages(first, first)
    healed = compute_status(Observation(ref, SPEC, {"metadata": {}, "status": {}}), T0).to_wire()
    assert not differs_only_in_messages(healed, first)


class _RefusingKube:
    """A Kubernetes that refuses every RayCluster apply as invalid, counting the attempts."""

    def __init__(self) -> None:
        self.applies = 0

    async def apply_raycluster(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.applies += 1
        raise KubernetesRejectedError("apply RayCluster team/llama: HTTP 422 Unprocessable Entity: bad", 422)


def test_a_refused_child_is_said_in_status_and_not_sent_again() -> None:
    """A spec admission let through can still make a child the API server refuses: that is a fatal problem
    in status (not only a log line, with no status at all), and the same child is not re-sent every pass."""
    kube = _RefusingKube()
    io = cast(Clients, SimpleNamespace(kube=kube))
    memory = Memory()
    body = {"metadata": {"namespace": "team", "name": "llama", "uid": "uid-1", "generation": 1}}
    for _ in range(3):
        p = Pass(ClusterRef.of(body), body, Settings(), T0, Children(), memory, None, spec=SPEC)
        asyncio.run(apply_ray_cluster(p, io))
        assert p.done and [problem.reason for problem in p.problems] == [Reason.CHILD_REJECTED]
        assert "HTTP 422" in p.problems[0].message and p.problems[0].fatal
    assert kube.applies == 1
    status = compute_status(Observation(p.ref, SPEC, None, problems=p.problems), T0)
    assert status.phase == Phase.FAILED


def test_a_missing_secret_is_looked_for_again_with_backoff() -> None:
    """1, 2, 4, then every 4 resyncs after the last miss; a pass that comes early by the loop's jitter
    looks too; found, the record is gone."""
    resync, jitter = 15.0, 0.2
    record = None
    looked = []
    for second in range(0, 400):
        now = T0 + timedelta(seconds=second)
        if look_due(record, now, resync, jitter):
            looked.append(second)
            record = after_look(record, found=False, now=now)
    # Due at 0, then 0.8 x (15, 30, 60, 60, ...) after each look.
    assert looked[:6] == [0, 12, 36, 84, 132, 180], looked
    assert record is not None and record.misses == len(looked)
    assert after_look(record, found=True, now=T0) is None


def test_the_next_look_is_the_soonest_of_the_missing_secrets() -> None:
    now = T0 + timedelta(seconds=100)
    once = Missing(1, T0 + timedelta(seconds=95))  # due 15 s after its look: in 10 s
    often = Missing(5, T0 + timedelta(seconds=70))  # due 60 s after its look: in 30 s
    assert next_look_in([once, often], now, 15.0) == 10.0
    assert next_look_in([often], now, 15.0) == 30.0
    assert next_look_in([Missing(1, T0)], now, 15.0) == 0.0
    assert next_look_in([], now, 15.0) is None


class _SecretlessKube:
    """A Kubernetes in which no Secret exists, counting the GETs."""

    def __init__(self) -> None:
        self.gets = 0

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        self.gets += 1
        return None


def test_an_object_waiting_for_its_secret_passes_only_when_the_secret_is_next_looked_for() -> None:
    """Nothing exists to supervise while the Secret is missing: the pass asks to come back at the next look
    (once that is more than a resync away), and a pass that comes sooner (woken by an edit) does not GET."""
    spec = SPEC  # two Secrets (the HF token and the API key), neither of which exists
    kube = _SecretlessKube()
    io = cast(Clients, SimpleNamespace(kube=kube))
    memory = Memory()
    body = {"metadata": {"namespace": "team", "name": "llama", "uid": "uid-1", "generation": 1}}
    settings = Settings()
    requeues = []
    now = T0
    for _ in range(5):
        p = Pass(ClusterRef.of(body), body, settings, now, Children(), memory, None, spec=spec)
        asyncio.run(read_secrets(p, io))
        asyncio.run(apply_ray_cluster(p, io))
        assert [problem.reason for problem in p.problems] == [Reason.SECRET_NOT_FOUND] * 2
        requeues.append(p.outcome.requeue_after)
        last, now = now, now + timedelta(seconds=p.outcome.requeue_after or settings.resync_seconds)
    resync = settings.resync_seconds
    assert requeues == [None, 2 * resync, 4 * resync, 4 * resync, 4 * resync], requeues
    assert kube.gets == 2 * 5
    # Woken early (an edit of something else): no GET before the look is due.
    p = Pass(
        ClusterRef.of(body), body, settings, last + timedelta(seconds=1), Children(), memory, None, spec=spec
    )
    asyncio.run(read_secrets(p, io))
    assert kube.gets == 2 * 5


def test_backoff_is_capped() -> None:
    assert [backoff_resyncs(n) for n in range(1, 7)] == [1, 2, 4, BACKOFF_LIMIT, BACKOFF_LIMIT, BACKOFF_LIMIT]


def test_a_cluster_not_ready_with_no_engine_waits_for_its_pods_watch() -> None:
    """Nothing runs and nothing may start (an unschedulable worker, pods still starting): the pass asks Ray
    nothing and comes back after BACKOFF_LIMIT resyncs at the latest; the pods' watch wakes it sooner."""
    body = {"metadata": {"namespace": "team", "name": "llama", "uid": "uid-1", "generation": 1}}
    settings = Settings()
    p = Pass(ClusterRef.of(body), body, settings, T0, Children(), Memory(), None, spec=SPEC)
    p.ray_cluster = {"metadata": {"name": "llama"}}
    asyncio.run(supervise_engines(p, cast(Clients, SimpleNamespace())))
    assert p.outcome.requeue_after == settings.resync_seconds * BACKOFF_LIMIT
    assert p.engines == [] and p.loads is None


# ---- engines while the Ray dashboard fails ---------------------------------------------------------------

SERVING_POD = "llama-gpu-0"
SERVING_ENGINE = EngineStatus(
    index=0,
    submission_id="rayvllm-llama-r0-g1-a0-0123abcd",
    generation=1,
    config_hash=engine_config_hash(SPEC),
    job_status="RUNNING",
    ready=True,
    health=EngineState.READY.value,
    url="http://10.88.0.7:8000/v1",
    pod_name=SERVING_POD,
    started_at=T0 - timedelta(minutes=5),
    load_seconds=60,
)


# The RayCluster's uid and its head pods (these passes list none) whose token auth was verified before.
VERIFIED_HEAD = ("rc-uid", ())


class FailingDashboard:
    """A Ray dashboard behind a network that fails at the call named `fails_at` (RayError, as the client
    raises it once its retries are spent: a timeout, a reset, a refused connection, an answer cut short).
    Every call is recorded. It has no submit, stop or logs: a pass that called one would fail."""

    base_url = "http://10.88.0.1:41000"

    def __init__(self, fails_at: str) -> None:
        self.fails_at = fails_at
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fails_at:
            raise RayError(f"GET {self.base_url}: timed out (ReadTimeout)")

    async def gcs_healthy(self) -> bool:
        self._call("gcs_healthy")
        return True

    async def cluster_resources(self) -> ClusterResources:
        self._call("cluster_resources")
        return ClusterResources(nodes=())

    async def get(self, submission_id: str) -> JobInfo:
        self._call("get")
        return JobInfo(
            submission_id=submission_id, status="RUNNING", driver_agent_http_address="http://10.88.0.7:52365"
        )

    async def aclose(self) -> None:
        pass


@dataclass
class Engine:
    """The engine's own API as the prober finds it."""

    state: EngineState

    async def probe(self, base_url: str, served_model_name: str, api_key: str | None = None) -> EngineProbe:
        return EngineProbe(self.state, self.state.value)

    async def load(self, base_url: str) -> LoadSample | None:
        return None


def pass_with_dashboard_fault(ray: FailingDashboard, engine: Engine) -> Pass:
    """One supervision pass over a ready RayCluster whose one engine has been serving."""
    body = {"metadata": {"namespace": "team", "name": "llama", "uid": "uid-1", "generation": 1}}
    # The token is known (no Secret read) and this head was seen to enforce it (the check is not repeated).
    memory = Memory(ray_token="token", ray_token_of="rc-uid", ray_auth_verified_for=VERIFIED_HEAD)
    children = Children(pods=(pod_view(pod(SERVING_POD, serving=True, ip="10.88.0.7")),))
    p = Pass(ClusterRef.of(body), body, Settings(resync_seconds=2), T0, children, memory, None, spec=SPEC)
    p.ray_cluster = {"metadata": {"name": "llama", "uid": "rc-uid"}}
    p.pods = PodCounts(head_ready=True, ready_workers=SPEC.desired_workers)
    p.engines = [SERVING_ENGINE]
    io = SimpleNamespace(
        dashboards=SimpleNamespace(client=lambda url, token: ray),
        prober=engine,
        limiter=asyncio.Semaphore(4),
    )
    asyncio.run(supervise_engines(p, cast(Clients, io)))
    return p


FAILING_CALLS = ("gcs_healthy", "cluster_resources", "get")


@pytest.mark.parametrize("fails_at", FAILING_CALLS)
def test_a_dashboard_fault_alone_keeps_an_answering_engine_serving(fails_at: str) -> None:
    ray = FailingDashboard(fails_at)
    p = pass_with_dashboard_fault(ray, Engine(EngineState.READY))
    # Only reads, up to the one that failed: nothing submitted, stopped or restarted.
    assert ray.calls == list(FAILING_CALLS[: FAILING_CALLS.index(fails_at) + 1])
    assert p.engines == [SERVING_ENGINE]
    assert serving_changes([pod_view(pod(SERVING_POD, serving=True))], p.engines) == {}
    assert [problem.reason for problem in p.problems] == [Reason.RAY_DASHBOARD_UNREACHABLE]
    # A serving engine's own probe keeps the normal cadence: no backoff.
    assert p.outcome.requeue_after == p.settings.resync_seconds


@pytest.mark.parametrize("fails_at", FAILING_CALLS)
def test_with_the_dashboard_failing_one_late_answer_serves_on_and_is_probed_again_soon(fails_at: str) -> None:
    p = pass_with_dashboard_fault(FailingDashboard(fails_at), Engine(EngineState.UNRESPONSIVE))
    (engine,) = p.engines
    assert engine.ready and engine.health == "Unresponsive"
    assert serving_changes([pod_view(pod(SERVING_POD, serving=True))], p.engines) == {}
    assert p.outcome.requeue_after == p.settings.starting_probe_seconds


@pytest.mark.parametrize("fails_at", FAILING_CALLS)
def test_with_the_dashboard_failing_an_engine_that_stops_answering_leaves_the_service_unrestarted(
    fails_at: str,
) -> None:
    p = pass_with_dashboard_fault(FailingDashboard(fails_at), Engine(EngineState.STARTING))
    (engine,) = p.engines
    assert not engine.ready
    assert serving_changes([pod_view(pod(SERVING_POD, serving=True))], p.engines) == {SERVING_POD: False}
    kept = ("submission_id", "attempt", "restarts", "restart_after", "last_failure")
    assert {f: getattr(engine, f) for f in kept} == {f: getattr(SERVING_ENGINE, f) for f in kept}
    # Its unhealthy grace starts now: once Ray answers it is judged as once ready (decide.judge_without_ray).
    assert engine.unhealthy_since == T0


# ---- an engine address from the dashboard is dialled only when it is one of the object's pods ----------


class AnsweringDashboard:
    """A Ray dashboard that says the engine's job runs on `driver_ip`: the tenant's head may say anything."""

    base_url = "http://10.88.0.1:41000"

    def __init__(self, driver_ip: str) -> None:
        self.driver_ip = driver_ip

    async def gcs_healthy(self) -> bool:
        return True

    async def cluster_resources(self) -> ClusterResources:
        return ClusterResources(nodes=())

    async def get(self, submission_id: str) -> JobInfo:
        return JobInfo(
            submission_id=submission_id,
            status="RUNNING",
            driver_agent_http_address=f"http://{self.driver_ip}:52365",
            driver_node_id="node-1",
        )

    async def logs(self, submission_id: str) -> str:
        return "INFO loading\n"

    async def aclose(self) -> None:
        pass


def pass_with_engine_on(driver_ip: str, pod_ip: str) -> tuple[Pass, int]:
    """One supervision pass of a loading engine that the dashboard reports on `driver_ip`, the object's one
    worker pod having `pod_ip`; the engine's port is a real listener on 127.0.0.1, probed by the operator's
    real prober. Returns the pass and how many connections the listener got."""
    connections = 0

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    async def run() -> Pass:
        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        spec = parse_spec(
            {"model": {"source": "hf://org/model"}, "ray": {"image": "img"}, "engine": {"port": port}}
        )
        body = {"metadata": {"namespace": "team", "name": "llama", "uid": "uid-1", "generation": 1}}
        children = Children(pods=(pod_view(pod(SERVING_POD, ip=pod_ip)),))
        memory = Memory(ray_token="token", ray_token_of="rc-uid", ray_auth_verified_for=VERIFIED_HEAD)
        settings = Settings(resync_seconds=2, engine_host_override=None)
        p = Pass(ClusterRef.of(body), body, settings, T0, children, memory, None, spec=spec)
        p.ray_cluster = {"metadata": {"name": "llama", "uid": "rc-uid"}}
        p.pods = PodCounts(head_ready=True, ready_workers=spec.desired_workers)
        p.engines = [
            SERVING_ENGINE.model_copy(
                update={
                    "config_hash": engine_config_hash(spec),
                    "ready": False,
                    "url": None,
                    "load_seconds": None,
                }
            )
        ]
        async with httpx.AsyncClient() as http:
            io = SimpleNamespace(
                dashboards=SimpleNamespace(client=lambda url, token: AnsweringDashboard(driver_ip)),
                prober=EngineProber(http, Bounds(timeout=1, deadline=2)),
                limiter=asyncio.Semaphore(4),
            )
            await supervise_engines(p, cast(Clients, io))
        server.close()
        await server.wait_closed()
        return p

    p = asyncio.run(run())
    return p, connections


def test_an_engine_address_outside_the_object_s_pods_is_reported_and_never_dialled() -> None:
    # The listener is at 127.0.0.1, which is none of the object's pods (its one pod is 10.88.0.7).
    p, connections = pass_with_engine_on("127.0.0.1", pod_ip="10.88.0.7")
    assert connections == 0
    (problem,) = p.problems
    assert problem.reason is Reason.ENGINE_ADDRESS_NOT_OWN_POD
    assert "engine 0 at 127.0.0.1, none of this VLLMCluster's pods: not probed" in problem.message
    (engine,) = p.engines
    assert not engine.ready and engine.url is None


def test_an_engine_on_one_of_the_object_s_pods_is_dialled() -> None:
    p, connections = pass_with_engine_on("127.0.0.1", pod_ip="127.0.0.1")
    assert connections >= 1
    assert p.problems == []
    (engine,) = p.engines
    assert engine.url is not None and engine.url.startswith("http://127.0.0.1:")
