"""Chaos: the network between the in-cluster operator and a VLLMCluster's Ray dashboard fails while the
engine itself stays healthy and serves a steady load through the endpoint Service (the official `openai`
client at 2 requests a second, retries off, every failure counted).

A Toxiproxy on this machine stands between them: it listens on the cluster bridge's address, where the
operator pod reaches it, and forwards to the head Service's ClusterIP (this machine reaches ClusterIPs
through kube-proxy). The operator's chart is installed with a dashboard URL template pointing at the proxy.
Each fault is held for FAULT_SECONDS, then healed:

- latency below the operator's HTTP timeout (RAYVLLM_HTTP_TIMEOUT_SECONDS): nothing to report;
- latency above it; requests swallowed (a `timeout` toxic on the way in: nothing answers); connections reset
  (`reset_peer`); answers cut after LIMIT_BYTES bytes (`limit_data`: the JSON ends mid-way); the proxy
  disabled (connection refused): the status says `RayDashboardUnreachable` until the proxy heals.

Throughout: no request fails; the engine keeps its serving label and its place in the Service (it answers
its own /health: a dashboard fault alone takes nothing out of service); nothing is restarted or submitted
(the engine's Ray submission id stays, Ray knows no other job of the object); the operator pod never
restarts and logs no unexpected exception. After each heal the condition clears; the chaos table's heal
time is the longest from a heal to the condition cleared.

The URL template applies to every VLLMCluster, so this module runs one at a time, with an operator release
of its own (the same namespace as `in_cluster_operator`'s, which pytest has uninstalled when the module
before ended).

`make chaos` holds each fault FAULT_SECONDS on a VLLMCluster of its own. (`make test` freezes the dashboard
itself instead, phase P3 of its shared serving object: tests/e2e/test_shared_engine.py.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hack.localcluster.helm_release import OperatorRelease
from hack.localcluster.network import NODE_IP
from tests.conftest import NamespaceDeletions
from tests.e2e.chaos import (
    ChaosRow,
    RouteWatch,
    Watch,
    live_jobs_per_replica,
    record,
    restart_count,
)
from tests.e2e.conftest import E2E_SETTINGS, installed_operator
from tests.e2e.pod_faults import (
    unreachable_reported,
)
from tests.e2e.realnode import DASHBOARD_PORT, RealNodeWorld, dashboard_host, pods_of
from tests.e2e.serving import (
    Load,
    conditions,
    endpoint,
    engines,
    jobs_of,
    manifest,
    pod_ip,
    serving_ips,
    vllm,
    wait_ready,
)
from tests.support.kube import Kube
from tests.support.operator import OperatorProcess
from tests.support.toxiproxy import Toxic, Toxiproxy
from tests.support.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

NAME = "dashfault"
PROXY = "ray-dashboard"
# The chart's default, set explicitly: the latencies below are chosen around it.
HTTP_TIMEOUT_SECONDS = 5
# Long enough for a pass whose calls time out (3 attempts of HTTP_TIMEOUT_SECONDS with backoff, after a
# resync) to be reported a few times over.
FAULT_SECONDS = 30.0
# From a heal to the condition cleared: a pass still waiting out its calls (3 attempts of HTTP_TIMEOUT_SECONDS
# with backoff) reports the fault once more, the next one (a resync later) clears it. Generous.
HEAL_TIMEOUT = 90.0
# Meant to let an answer's status line and headers through (aiohttp, Ray's dashboard server, sends about
# 160 bytes of them) and cut its JSON; cut earlier, it is an answer cut short all the same.
LIMIT_BYTES = 300
# The proxy's upstream until the head Service exists: loopback port 1, where nothing listens.
NO_UPSTREAM_YET = "127.0.0.1:1"
OPERATOR_CONTAINER = "operator"  # the chart's container name
# What the operator's loop logs for an exception it did not expect (rayvllm.handlers.vllmcluster.supervise).
UNEXPECTED_EXCEPTION = "reconcile failed; will retry"
HF_TOKEN = "hf_chaosPodsTokenNeverLogged0123456789"
API_KEY = "sk-chaos-pods-key-never-logged-0123456789"
LOAD_RATE = 2.0
LOAD_LIMIT = 1800  # at 2 a second, longer than the scenario: the load never stops on its own before the end


@dataclass(frozen=True)
class DashboardFault:
    """One way the network to the dashboard fails: toxics on the proxy, or the proxy disabled. `reported`:
    whether the operator must say RayDashboardUnreachable while it lasts."""

    label: str
    toxics: tuple[Toxic, ...] = ()
    disabled: bool = False
    reported: bool = True


def latency(name: str, seconds: float) -> Toxic:
    return Toxic(name, "latency", {"latency": int(seconds * 1000), "jitter": 0})


FAULTS = (
    DashboardFault(
        f"latency {HTTP_TIMEOUT_SECONDS * 0.4:.0f}s (timeout {HTTP_TIMEOUT_SECONDS}s)",
        (latency("slow", HTTP_TIMEOUT_SECONDS * 0.4),),
        reported=False,
    ),
    DashboardFault(
        f"latency {HTTP_TIMEOUT_SECONDS * 1.6:.0f}s", (latency("slower", HTTP_TIMEOUT_SECONDS * 1.6),)
    ),
    # On the way in: the dashboard never sees the request, so it neither answers nor closes (a `timeout`
    # toxic on the answers would close the connection as soon as the dashboard closed its side).
    DashboardFault("requests swallowed", (Toxic("swallowed", "timeout", {"timeout": 0}, "upstream"),)),
    DashboardFault("connections reset", (Toxic("reset", "reset_peer", {"timeout": 0}),)),
    DashboardFault(
        f"answers cut after {LIMIT_BYTES} bytes", (Toxic("cut", "limit_data", {"bytes": LIMIT_BYTES}),)
    ),
    DashboardFault("proxy disabled (connection refused)", disabled=True),
)


@dataclass(frozen=True)
class DashboardProxy:
    """The proxy between the operator and the dashboard: `listen` is where the operator dials."""

    server: Toxiproxy
    listen: str

    def point_at(self, upstream: str) -> None:
        self.server.update(PROXY, upstream=upstream)

    def inject(self, fault: DashboardFault) -> None:
        if fault.disabled:
            self.server.update(PROXY, enabled=False)
        for toxic in fault.toxics:
            self.server.add_toxic(PROXY, toxic)

    def heal(self, fault: DashboardFault) -> None:
        for toxic in fault.toxics:
            self.server.remove_toxic(PROXY, toxic.name)
        if fault.disabled:
            self.server.update(PROXY, enabled=True)
        state = self.server.proxy(PROXY)
        assert state.enabled and not state.toxics, state


@pytest.fixture(scope="module")
def dashboard_proxy(
    toxiproxy_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DashboardProxy]:
    """Toxiproxy's server (its API on 127.0.0.1) with one proxy on the cluster bridge's address, a free port;
    its upstream is set once the head Service exists. Stopped (by its pid) when the module ends."""
    server = Toxiproxy(toxiproxy_binary, tmp_path_factory.mktemp("toxiproxy"))
    server.start()
    try:
        proxy = server.create(PROXY, f"{NODE_IP}:0", NO_UPSTREAM_YET)
        yield DashboardProxy(server, proxy.listen)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def proxied_operator(
    kube: Kube,
    crds: Path,
    operator: OperatorProcess,
    real_node: RealNodeWorld,
    dashboard_proxy: DashboardProxy,
    namespace_deletions: NamespaceDeletions,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorRelease]:
    """The in-cluster operator of `in_cluster_operator`, reaching every Ray dashboard through the proxy."""
    settings = {
        **E2E_SETTINGS,
        "httpTimeoutSeconds": HTTP_TIMEOUT_SECONDS,
        "dashboardUrlTemplate": f"http://{dashboard_proxy.listen}",
    }
    home = tmp_path_factory.mktemp("helm")
    with installed_operator(kube, operator, real_node, home, settings, namespace_deletions) as release:
        yield release


def ready_replicas(obj: dict[str, Any]) -> int:
    return int((obj.get("status") or {}).get("readyReplicas") or 0)


def operator_pod(release: OperatorRelease) -> tuple[str, int]:
    """The operator pod's name and its container's restarts."""
    pod = release.pod()
    assert pod is not None, "no operator pod"
    return str(pod["metadata"]["name"]), restart_count(pod, OPERATOR_CONTAINER)


@dataclass(frozen=True)
class FaultOutcome:
    fault: DashboardFault
    reported_after: float | None  # from the fault to RayDashboardUnreachable first seen; None: never seen
    ready_replicas_seen: frozenset[int]  # status.readyReplicas in every look while the fault lasted
    cleared_after: float  # from the heal to Ready again without RayDashboardUnreachable

    def summary(self) -> str:
        seen = "never" if self.reported_after is None else f"after {self.reported_after:.0f}s"
        return f"{self.fault.label}: reported {seen}, cleared {self.cleared_after:.0f}s after heal"


def hold_and_heal(
    kube: Kube, namespace: str, name: str, proxy: DashboardProxy, fault: DashboardFault
) -> FaultOutcome:
    """The fault for FAULT_SECONDS, the status looked at every second; then healed, and waited for the status
    to be Ready without RayDashboardUnreachable."""
    reported_after: float | None = None
    ready_seen: set[int] = set()
    proxy.inject(fault)
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < FAULT_SECONDS:
            current = vllm(kube, namespace, name)
            if reported_after is None and unreachable_reported(current):
                reported_after = elapsed
            ready_seen.add(ready_replicas(current))
            time.sleep(1)
    finally:
        proxy.heal(fault)
    healed = time.monotonic()

    def cleared() -> bool:
        current = vllm(kube, namespace, name)
        ready = conditions(current).get("Ready", {}).get("status") == "True"
        return ready and not unreachable_reported(current) and ready_replicas(current) == 1

    wait_for(cleared, timeout=HEAL_TIMEOUT, interval=0.5, what=f"Ready again after healing: {fault.label}")
    return FaultOutcome(fault, reported_after, frozenset(ready_seen), time.monotonic() - healed)


def point_at_head(kube: Kube, namespace: str, name: str, proxy: DashboardProxy) -> None:
    """The proxy's upstream: VLLMCluster `name`'s head Service, once KubeRay made it (the operator asks Ray
    nothing before the head pod is ready, well after that)."""
    head = wait_for(
        lambda: dashboard_host(kube, namespace, name), timeout=120, interval=1, what="the head Service"
    )
    proxy.point_at(f"{head}:{DASHBOARD_PORT}")


def dashboard_faults(
    kube: Kube,
    namespace: str,
    name: str,
    proxy: DashboardProxy,
    operator: OperatorRelease,
    capsys: pytest.CaptureFixture[str],
    api_key: str = "unused",
) -> None:
    """Every fault of FAULTS in turn, on VLLMCluster `name` serving one engine (its served model name its
    own) through `operator`, whose dashboard URL is the proxy's; adds the chaos table's row and asserts that
    nobody noticed but the status."""
    obj = vllm(kube, namespace, name)
    before = engines(obj)[0]
    jobs_before = jobs_of(kube, namespace, name)
    assert jobs_before.get(before["submissionId"]) == "RUNNING", jobs_before
    worker = before["podName"]
    operator_before = operator_pod(operator)
    unexpected_before = operator.logs().count(UNEXPECTED_EXCEPTION)
    row = ChaosRow("Ray dashboard faults")
    outcomes: list[FaultOutcome] = []

    with Watch(kube, namespace, name) as watch:
        watch.serving.set()
        load = Load(endpoint(kube, namespace, name), name, rate=LOAD_RATE, limit=LOAD_LIMIT, api_key=api_key)
        with load:
            load_started = time.monotonic()
            with RouteWatch(kube, namespace, name, worker, pod_ip(kube, namespace, worker)) as routes:
                for fault in FAULTS:
                    row.faults += 1
                    outcomes.append(hold_and_heal(kube, namespace, name, proxy, fault))
            load_seconds = time.monotonic() - load_started

    after = engines(vllm(kube, namespace, name))[0]
    jobs = jobs_of(kube, namespace, name)
    operator_after = operator_pod(operator)
    unexpected = operator.logs().count(UNEXPECTED_EXCEPTION) - unexpected_before
    samples = routes.samples
    unlabelled = [s for s in samples if not s.labelled]
    outside = [s for s in samples if not s.in_service]
    row.requests_sent, row.requests_failed = load.sent, len(load.failures)
    row.duplicate_submissions = watch.most_duplicates
    row.orphans = sum(max(0, n - 1) for n in live_jobs_per_replica(jobs).values())
    row.heal_seconds = max(o.cleared_after for o in outcomes if o.fault.reported)
    row.notes = "; ".join(o.summary() for o in outcomes) + (
        f"; serving label off in {len(unlabelled)}/{len(samples)} route samples, out of the Service in "
        f"{len(outside)}; Service dark in {watch.dark_samples}/{watch.samples} samples; engine /health "
        f"silent in {sum(not s.engine_answers for s in samples)} samples; operator pod {operator_before} -> "
        f"{operator_after}; unexpected exceptions logged {unexpected}; first failures {load.failures[:2]}"
    )
    record(row, capsys)

    for outcome in outcomes:
        if outcome.fault.reported:
            assert outcome.reported_after is not None, f"never reported: {outcome.fault.label}"
        else:
            assert outcome.reported_after is None, f"reported, yet within the timeout: {outcome.summary()}"
        assert outcome.ready_replicas_seen == {1}, (outcome.fault.label, outcome.ready_replicas_seen)
    # Nobody noticed: every request answered, the engine never left the Service.
    assert load.failures == [], load.failures[:5]
    assert load.sent >= LOAD_RATE * load_seconds * 0.5, (load.sent, load_seconds)
    assert samples and unlabelled == [] and outside == [], (unlabelled[:3], outside[:3])
    assert watch.samples > 0 and watch.dark_samples == 0, (watch.dark_samples, watch.samples)
    # Nothing restarted or submitted: the same submission, and Ray knows the same jobs of the object as before.
    assert (after["submissionId"], after["restarts"]) == (before["submissionId"], before["restarts"]), after
    assert jobs == jobs_before, jobs
    assert watch.submissions <= set(jobs_before), watch.submissions
    assert row.duplicate_submissions == 0 and row.orphans == 0
    # The operator rode it out: the same pod, never restarted, no exception it did not expect.
    assert operator_after == operator_before
    assert unexpected == 0, f"{unexpected} x {UNEXPECTED_EXCEPTION!r} in the operator's log"


@pytest.mark.timeout(1800)
def test_dashboard_faults_leave_a_healthy_engine_serving(
    kube: Kube,
    namespace: str,
    volumes: None,
    dashboard_proxy: DashboardProxy,
    proxied_operator: OperatorRelease,
    real_node: RealNodeWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = manifest(NAME, real_node)
    kube.apply(body, namespace)
    point_at_head(kube, namespace, NAME, dashboard_proxy)
    wait_ready(kube, namespace, NAME)
    wait_for(
        lambda: len(serving_ips(kube, namespace, NAME)) == 1, timeout=60, what="the Service on the engine"
    )
    dashboard_faults(kube, namespace, NAME, dashboard_proxy, proxied_operator, capsys)

    # Deleted while the operator and the (healed) proxy still run: its finalizer stops the job through it.
    kube.kubectl("delete", "vllm", NAME, "-n", namespace, "--timeout=180s")
    wait_for(lambda: not pods_of(kube, namespace, NAME), timeout=420, interval=1, what="the Ray pods to go")
