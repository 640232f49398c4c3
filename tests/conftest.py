"""Fixtures shared by the integration and e2e tiers: the real local control plane, a fresh namespace
per test. Unit tests use none of these and need nothing built or running. And the session's hooks: the
tiers run in order (unit, integration, e2e), and the run's log says what was left out, what was running
when the run was stopped, and what the tests measured."""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from hack.localcluster import network
from hack.localcluster.cluster import Cluster, ClusterPlan, default_cluster
from hack.localcluster.controlplane import FakeNodePlan, Tools
from hack.localcluster.node import NodePlan
from tests.support import measurements, session
from tests.support.kube import Kube
from tests.support.operator import OperatorProcess, free_port
from tests.support.wait import wait_for

# Hypothesis (the fuzz tier, tests/support/fuzz.py, and its unit tests) caches Unicode tables under
# ./.hypothesis unless told otherwise; none of it belongs in the repository. Set before any test module
# builds a strategy.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "rayvllm-hypothesis")


def _pinned_binary(what: str, path: Callable[[Tools], Path]) -> Path:
    """A binary hack/build-tools.sh builds (at `path` among the tools); a missing one fails the test, naming
    the fix."""
    try:
        tools = Tools.from_cache()
    except SystemExit as missing:  # raised for the command-line scripts; a test must fail, not exit
        pytest.fail(str(missing), pytrace=False)
    binary = path(tools)
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no {what} binary at {binary}: run `make tools` (hack/build-tools.sh)", pytrace=False)
    return binary


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    """The pinned Prometheus."""
    return _pinned_binary("Prometheus", lambda tools: tools.prometheus / "prometheus")


@pytest.fixture(scope="session")
def toxiproxy_binary() -> Path:
    """The pinned Toxiproxy server."""
    return _pinned_binary("Toxiproxy", lambda tools: tools.toxiproxy / "toxiproxy-server")


def _reachable(kube: Kube) -> bool:
    return kube.kubectl("get", "--raw", "/readyz", check=False).returncode == 0


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    """The control plane under test. Reuses the cluster a set KUBECONFIG points at; otherwise starts
    the local one (hack/cluster.py) and stops it at the end. Missing binaries fail, never skip."""
    tools = Tools.from_cache()
    preset = os.environ.get("KUBECONFIG")
    if preset:
        reused = Kube(Path(preset), tools.kubectl)
        if not _reachable(reused):
            pytest.fail(f"KUBECONFIG={preset} is set but its API server does not answer /readyz")
        yield reused
        assert_nothing_left_the_machine()
        return
    cluster: Cluster = default_cluster()
    plan = ClusterPlan(FakeNodePlan(gpu_nodes=2, gpus_per_node=8, cpu_nodes=1), NodePlan(fake_gpus=4))
    started_here = not cluster.running(plan)
    cluster.up(plan)
    try:
        yield Kube(cluster.kubeconfig, tools.kubectl)
        assert_nothing_left_the_machine()
    finally:
        if started_here:
            cluster.down()
            left = cluster.leftovers()
            assert not left, f"`down` left these behind: {left}"


def assert_nothing_left_the_machine() -> None:
    """Every packet of the cluster's pod and Service ranges stayed on this machine: the network guard's
    counters of such packets on the external interface are still 0."""
    counters = network.guard_counters()
    leaked = {k: v for k, v in counters.items() if k.startswith("leaked")}
    assert not any(leaked.values()), f"cluster packets reached the external interface: {counters}"
    # Not a failure: pods' attempts to reach outside addresses, refused at the bridge (kernel log:
    # "rayvllm-egress:"), e.g. Ray's dashboard probing the cloud metadata address even with usage stats off.
    print(f"\n[network guard] {counters}")


NAMESPACE_DELETE_TIMEOUT = 120.0


@dataclass
class NamespaceDeletions:
    """The namespaces tests deleted. A test on the real node waits for its namespace to go (its pods hold
    the node's CPU); one on kwok's nodes only starts the deletion, which takes the namespace controller
    5-15 s, and the next test goes on meanwhile. What must see no deletion in flight waits for them all
    (`settle`): a test counting the operator's writes, the e2e tier's start, the session's end. A namespace
    that will not go fails the wait with what is left in it, and the session at its end: never silent."""

    kube: Kube
    pending: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)

    def start(self, name: str) -> None:
        self.kube.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false")
        self.pending.append(name)

    def settle(self) -> None:
        """Every deletion started so far done; fails naming the namespaces left and their contents."""
        pending, self.pending = self.pending, []
        deadline = time.monotonic() + NAMESPACE_DELETE_TIMEOUT
        left = pending
        while left and time.monotonic() < deadline:
            time.sleep(1)
            left = [name for name in left if self.kube.get_json("namespace", name) is not None]
        if left:
            self.leaked += left
            pytest.fail(
                f"namespaces not deleted within {NAMESPACE_DELETE_TIMEOUT:.0f}s: "
                + "\n".join(f"{name}: {namespace_contents(self.kube, name)}" for name in left),
                pytrace=False,
            )


@pytest.fixture(scope="session")
def namespace_deletions(kube: Kube) -> Iterator[NamespaceDeletions]:
    deletions = NamespaceDeletions(kube)
    yield deletions
    try:
        deletions.settle()
    finally:
        assert not deletions.leaked, f"namespaces this session could not delete: {deletions.leaked}"


@pytest.fixture
def settled_namespaces(namespace_deletions: NamespaceDeletions) -> None:
    """No namespace deletion of an earlier test in flight (its finalizer removals and deletes are writes)."""
    namespace_deletions.settle()


@pytest.fixture
def namespace(
    kube: Kube, request: pytest.FixtureRequest, namespace_deletions: NamespaceDeletions
) -> Iterator[str]:
    """A fresh namespace named after the test, deleted afterwards (NamespaceDeletions: waited for on the real
    node only); a namespace that will not go fails, with what is left in it."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    # Random, not derived from the test id: a rerun must not collide with a namespace still terminating.
    name = f"t-{slug}-{secrets.token_hex(3)}"
    kube.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        namespace_deletions.start(name)
        if request.node.get_closest_marker("e2e"):
            namespace_deletions.settle()


def namespace_contents(kube: Kube, name: str) -> str:
    """What keeps a namespace from going: its status (its conditions name the kinds and finalizers left)
    and every object of every listable namespaced kind, pods with their nodes; not Events, nor the
    deprecated Endpoints (EndpointSlices list the same)."""
    status = kube.kubectl("get", "namespace", name, "-o", "jsonpath={.status}", check=False)
    listed = kube.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name", check=False)
    kinds = [kind for kind in listed.stdout.split() if kind.split(".")[0] not in ("events", "endpoints")]
    objects = kube.kubectl(
        "get", ",".join(kinds) or "all", "-n", name, "--ignore-not-found", "-o", "wide", check=False
    )
    return (
        f"namespace status: {status.stdout.strip() or status.stderr.strip()}\n"
        f"left in it:\n{objects.stdout.strip() or '(nothing listed)'}\n{objects.stderr.strip()}"
    )


REPO = Path(__file__).resolve().parent.parent
# Port 1 on loopback: connection refused at once, so "no Ray here" is quick and truthful.
INTEGRATION_OPERATOR_ENV = {
    "RAYVLLM_RESYNC_SECONDS": "2",
    "RAYVLLM_DASHBOARD_URL_TEMPLATE": "http://127.0.0.1:1",
    # The operator runs on the host here: its metrics server (when a test sets the port) on loopback only.
    "RAYVLLM_METRICS_HOST": "127.0.0.1",
}


@pytest.fixture(scope="session")
def crds(kube: Kube) -> Path:
    """Our CRDs installed (server-side apply, so re-running is harmless) and Established."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    # Right after the apply the CRD may have no conditions yet, which `kubectl wait` takes for an error.
    wait_for(
        lambda: (
            kube.kubectl(
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                "crd/vllmclusters.rayvllm.io",
                check=False,
            ).returncode
            == 0
        ),
        timeout=90,
        interval=1,
        what="the VLLMCluster CRD Established",
    )
    return REPO / "crds"


@pytest.fixture(scope="session")
def operator(kube: Kube, crds: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator (`kopf run -m rayvllm.handlers`) watching all namespaces, with a short resync so
    tests observe supervision quickly. The integration tier has no Ray: the dashboard address maps to a
    loopback port where nothing listens (never to the simulated cluster's fake Service addresses)."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    metrics_port = free_port()
    process = OperatorProcess(
        kube.kubeconfig, log, env={**INTEGRATION_OPERATOR_ENV, "RAYVLLM_METRICS_PORT": str(metrics_port)}
    )
    process.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    process.start()
    try:
        yield process
    finally:
        process.stop()


# ---- the session's order and its log ---------------------------------------------------------------

RUNNING = session.RunningTest()
DESELECTED: list[pytest.Item] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    session.in_tier_order(items)


def pytest_deselected(items: list[pytest.Item]) -> None:
    DESELECTED.extend(items)


def pytest_runtest_logstart(nodeid: str) -> None:
    RUNNING.started(nodeid)


def pytest_runtest_logfinish(nodeid: str) -> None:
    RUNNING.finished(nodeid)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """Outside pytest-timeout's own wrapper, which sets the session timeout's stop reason after a test."""
    try:
        return (yield)
    finally:
        reason = item.session.shouldfail
        if isinstance(reason, str) and reason.startswith("session-timeout") and " during " not in reason:
            item.session.shouldfail = session.session_timeout_reason(reason, item)


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    # pytest's own stops (errors during collection) are Interrupted too; only a signal names the test.
    if not isinstance(excinfo.value, pytest.Session.Interrupted):
        RUNNING.interrupted_during = RUNNING.describe()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """What the marker expression left out; the fuzz counts, when the fuzz test ran; the measurements; the
    chaos table: one row per chaos scenario that ran this session (e2e on real pods, and the control-plane
    faults on a cluster of their own); then what the session's secret scan searched; and, when the run was
    interrupted (Ctrl-C, or hack/run-tests.sh's deadline), the test it stopped."""
    from tests.e2e.chaos import TABLE, format_table
    from tests.e2e.leaks import SCAN
    from tests.support.fuzz import SUMMARY as FUZZ_SUMMARY

    terminalreporter.write_line(session.deselected_summary(DESELECTED, config.option.markexpr))
    if FUZZ_SUMMARY:
        terminalreporter.write_sep("=", "fuzz")
        for line in FUZZ_SUMMARY:
            terminalreporter.write_line(line)

    if TABLE:
        terminalreporter.write_sep("=", "chaos")
        terminalreporter.write_line(format_table(TABLE))
    if SCAN.secrets:
        terminalreporter.write_line(SCAN.summary())
    if measurements.LINES:
        terminalreporter.write_sep("=", "measurements")
        for line in measurements.LINES:
            terminalreporter.write_line(line)
    if RUNNING.interrupted_during is not None:
        terminalreporter.write_line(f"[interrupted] while running: {RUNNING.interrupted_during}")
