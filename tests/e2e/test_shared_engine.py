"""`make test`'s e2e tier on real pods: ONE VLLMCluster, served once and taken through ordered phases, with
three model loads in all (its first engine, the rolling upgrade's new one, the restart after a hang).

The operator runs as users run it: installed once by its Helm chart, from the image built from our
Dockerfile, with the chart's defaults for judging engines (tests/e2e/conftest.py SHARED_SETTINGS). The object
(tests' own tiny model on a PersistentVolume, an HF token and an API key from a Secret, RollingReplicas with
maxSurge 1, one restart allowed) serves its own model name; a real Prometheus scrapes the operator and the
engine from the start. Phases, in file order; each first waits for the object to be back at rest (Ready,
one engine serving alone in the Service, one live Ray job, nothing terminating) and fails naming what the
previous phase left otherwise:

- P0 apply to Ready, split into stages; the engine on a worker pod; no operator write at rest; `kubectl
  wait`, `logs`, `exec` through the real kubelet; the Ray head seen to enforce its token before the first
  submission (RayAuthVerified).
- P1 the endpoint with the official `openai` client: a completion, a streamed chat, the API key enforced; and
  on every route vLLM registers, /invocations and /tokenize among them: only /health and /metrics answer
  without the key.
- P2 every Grafana dashboard query returns series and every alert rule evaluates, none active.
- P3 the Ray dashboard frozen 30 s: the engine keeps serving, nothing restarts, the status says so.
- P4 the operator SIGKILLed at least 10 times while 8 pod-less objects settle beside the serving one.
- P5 a new generation that cannot start (a model that does not exist): exactly maxRestarts + 1
  submissions, the rollout stalls, the old engine serves every request, the budget alert fires.
- P6 fixed forward: a new edit rolls onto a surge pod (load 2) with no failed request; the alert resolves.
- P7 the engine core hung: the canary finds it, it is restarted (load 3), RayvllmEnginesNotReady fires and
  resolves.
- P8 deleted under more kills: nothing left; the run's secret scan gets every place to search.

The scenarios behind these, each on an object of its own and with more faults, are `make chaos` and
`make day2` (README, Tests)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
import pytest

from hack.localcluster.helm_release import OperatorRelease
from hack.localcluster.workloads import MODEL_CLAIM
from rayvllm.builders.raycluster import ENGINE_METRICS_PATH
from rayvllm.models.spec import RestartPolicySpec
from tests.conftest import NamespaceDeletions
from tests.e2e.chaos import (
    Background,
    ChaosRow,
    OperatorStorm,
    RolloutWatch,
    Watch,
    live_jobs_per_replica,
    record,
    submission_parts,
)
from tests.e2e.conftest import RAY_VERSION, SHARED_SETTINGS, installed_operator
from tests.e2e.leaks import SecretScan
from tests.e2e.pod_faults import Served, freeze_dashboard, hang_engine
from tests.e2e.realnode import RealNodeWorld, apply_volumes, pods_of
from tests.e2e.serving import (
    Load,
    client,
    conditions,
    endpoint,
    engines,
    jobs_of,
    manifest,
    pod_ip,
    ready_in_stages,
    report,
    serving_ips,
    vllm,
    with_credentials,
    worker_pods,
)
from tests.e2e.storm import delete_under_storm, podless, wait_settled, yardstick
from tests.support.kube import Kube, apiserver_writes, operator_writes, write_delta
from tests.support.operator import OperatorProcess
from tests.support.prometheus import (
    Prometheus,
    PromQLError,
    dashboard_targets,
    dashboard_variables,
    rules_with_short_for,
    scrape_config,
    substituted,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

NAME = "e2e-shared"  # also its served model name and its namespace's
HF_TOKEN = "hf_e2eSharedTokenNeverLogged0123456789"
API_KEY = "sk-e2e-shared-key-never-logged-0123456789"
ROLLING = {"type": "RollingReplicas", "maxSurge": 1, "maxUnavailable": 0}
# One restart: P5's failing generation spends it at once (two submissions), P7's hang uses it.
RESTART_POLICY = {"maxRestarts": 1, "backoffSeconds": 2, "maxBackoffSeconds": 4}
ALERT_FOR = "4s"  # every rule's `for:`, shortened; expressions stay as shipped
RATE_INTERVAL = "1m"  # Grafana's $__rate_interval: several samples at the 5 s scrape interval
# Back at rest after a phase: the endpoint's kube-proxy rules, a terminating pod's end (about 7 s measured).
AT_REST_TIMEOUT = 120.0
CROWD = 8  # P4's pod-less objects
MIN_KILLS = 10  # P4's operator processes SIGKILLed, at least
SERVE_SECONDS = 20.0  # P4's storm lasts at least this long


@dataclass(frozen=True)
class Shared:
    served: Served
    world: RealNodeWorld
    release: OperatorRelease
    prometheus: Prometheus
    rules: dict[str, Any]
    marks: dict[str, float]

    @property
    def namespace(self) -> str:
        return self.served.namespace


@pytest.fixture(scope="module")
def release(
    kube: Kube,
    crds: Path,
    operator: OperatorProcess,
    real_node: RealNodeWorld,
    namespace_deletions: NamespaceDeletions,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorRelease]:
    """The chart, installed once for every phase (the integration tier's host operator paused meanwhile)."""
    home = tmp_path_factory.mktemp("helm")
    with installed_operator(
        kube, operator, real_node, home, SHARED_SETTINGS, namespace_deletions
    ) as installed:
        yield installed


@pytest.fixture(scope="module")
def shared(
    kube: Kube,
    release: OperatorRelease,
    real_node: RealNodeWorld,
    secret_scan: SecretScan,
    prometheus_binary: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Shared]:
    """The serving object, in a namespace of its own, with Prometheus scraping it from before its first
    engine; applied and waited for Ready (P0's stages timed). Its namespace goes at the end, loudly."""
    namespace = NAME
    assert kube.get_json("namespace", namespace) is None, f"namespace {namespace} is left from an earlier run"
    kube.kubectl("create", "namespace", namespace)
    rules, shortened = rules_with_short_for(ALERT_FOR)
    assert shortened >= 3
    prometheus = Prometheus(prometheus_binary, tmp_path_factory.mktemp("prometheus"))
    prometheus.start(scrape_config(kube.kubeconfig, release.namespace, release.release, [namespace]), rules)
    try:
        apply_volumes(kube, real_node, namespace)
        body = manifest(NAME, real_node, upgradeStrategy=ROLLING, restartPolicy=RESTART_POLICY)
        secret_scan.secret(HF_TOKEN, "the shared object's HF token")
        secret_scan.secret(API_KEY, "the shared object's API key")
        with_credentials(kube, namespace, body, HF_TOKEN, API_KEY)
        start = time.monotonic()
        kube.apply(body, namespace)
        _, marks = ready_in_stages(kube, namespace, NAME, start)
        policy = RestartPolicySpec.model_validate(RESTART_POLICY)
        served = Served(namespace, NAME, 1, policy, API_KEY, SHARED_SETTINGS)
        yield Shared(served, real_node, release, prometheus, rules, marks)
    finally:
        prometheus.stop()
        # Anything a failed phase left: the object first (its finalizer needs the operator, still installed).
        kube.kubectl("delete", "vllm", "--all", "-n", namespace, "--wait=true", "--timeout=300s", check=False)
        kube.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=180s")


def at_rest(kube: Kube, shared: Shared) -> list[str]:
    """What keeps the object from being at rest: Ready with one ready engine of index 0 that no outgoing
    engine stands beside, exactly one live Ray job, the Service on exactly that engine's pod, no pod of the
    namespace terminating. Empty: at rest."""
    ns, name = shared.namespace, shared.served.name
    obj = vllm(kube, ns, name)
    problems = []
    if conditions(obj).get("Ready", {}).get("status") != "True" or obj["status"].get("readyReplicas") != 1:
        problems.append(f"not Ready 1/1: {obj['status'].get('phase')} {conditions(obj).get('Ready')}")
    by_index = engines(obj)
    if list(by_index) != [0] or not by_index[0].get("ready"):
        problems.append(f"engines {json.dumps(list(by_index.values()))[:600]}")
    live = live_jobs_per_replica(jobs_of(kube, ns, name))
    if live != {0: 1}:
        problems.append(f"live Ray jobs per replica {live}")
    pod = (by_index.get(0) or {}).get("podName")
    ips = serving_ips(kube, ns, name)
    if not pod or ips != {pod_ip(kube, ns, pod)}:
        problems.append(f"the Service routes to {ips}, the engine is on {pod}")
    terminating = [
        p["metadata"]["name"] for p in pods_of(kube, ns, name) if p["metadata"].get("deletionTimestamp")
    ]
    if terminating:
        problems.append(f"pods terminating: {terminating}")
    return problems


@pytest.fixture
def rested(kube: Kube, shared: Shared) -> Shared:
    """The shared object back at rest, or a failure naming what the previous phase left."""
    seen: list[str] = []

    def settled() -> bool:
        seen[:] = at_rest(kube, shared)
        return not seen

    try:
        wait_for(settled, timeout=AT_REST_TIMEOUT, interval=1, what="the shared object at rest")
    except AssertionError:
        pytest.fail(f"the shared object is not at rest after the previous phase: {seen}", pytrace=False)
    return shared


def alert_states(prometheus: Prometheus, alertname: str, namespace: str, name: str) -> set[str]:
    return {
        a["state"]
        for a in prometheus.alerts()
        if a["labels"].get("alertname") == alertname
        and a["labels"].get("namespace") == namespace
        and a["labels"].get("name") == name
    }


@dataclass
class AlertWatch(Background):
    """Looks every 2 s at the states of one alert of the object (the states ever seen)."""

    prometheus: Prometheus
    alertname: str
    namespace: str
    name: str
    interval: ClassVar[float] = 2.0
    seen: set[str] = field(default_factory=set)

    def look(self) -> None:
        self.seen |= alert_states(self.prometheus, self.alertname, self.namespace, self.name)


def wait_alert(shared: Shared, alertname: str, *, firing: bool, timeout: float = 120) -> None:
    def reached() -> bool:
        states = alert_states(shared.prometheus, alertname, shared.namespace, shared.served.name)
        return "firing" in states if firing else not states

    wait_for(
        reached,
        timeout=timeout,
        interval=1,
        what=f"{alertname} {'firing' if firing else 'resolved'}",
    )


# --- P0 ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_p0_served_on_a_worker_pod_and_quiet_at_rest(
    kube: Kube, rested: Shared, capsys: pytest.CaptureFixture[str]
) -> None:
    ns, name = rested.namespace, rested.served.name
    report(capsys, "apply to Ready on real pods (stages)", rested.marks)
    assert set(rested.marks) == {"podsRunning", "rayReady", "jobRunning", "firstHealth200", "engineReady"}

    # A Ready VLLMCluster at rest costs the API server no writes, while the loop keeps probing it.
    before = apiserver_writes(kube)
    time.sleep(10)  # five resync periods
    assert operator_writes(write_delta(apiserver_writes(kube), before)) == {}

    obj = vllm(kube, ns, name)
    engine = engines(obj)[0]
    workers = worker_pods(kube, ns, name)
    # The engine's API server runs on a worker pod (the engine slot), never on the head.
    assert engine["podName"] in workers, (engine, list(workers))
    assert engine["url"] == f"http://{workers[engine['podName']]['status']['podIP']}:8000/v1"
    assert obj["status"]["endpoint"]["url"] == f"http://{name}.{ns}.svc:8000/v1"
    kube.kubectl("wait", "--for=condition=Ready", f"vllm/{name}", "-n", ns, "--timeout=10s")

    # Fail closed on Ray auth, on a real Ray head started by KubeRay: before submitting the engine the operator
    # saw the dashboard refuse a request without KubeRay's token (Ray 2.60 answers 401) and answer it with the
    # token, and it never found auth off (that would have posted RayAuthNotEnforced). No extra load: two
    # GETs of /api/version per head, already made.
    events = kube.events(ns, name)
    verified = [e for e in events if e.get("reason") == "RayAuthVerified"]
    assert verified and all(e["type"] == "Normal" for e in verified), events
    assert f"(Ray {RAY_VERSION}) refuses a request without the token (HTTP 401)" in verified[0]["message"]
    assert not [e for e in events if e.get("reason") == "RayAuthNotEnforced"], events
    assert all(c.get("reason") != "RayAuthNotEnforced" for c in obj["status"]["conditions"])
    submitted = [e for e in events if e.get("reason") == "EngineSubmitted"]
    assert submitted and min(e["firstTimestamp"] for e in verified) <= min(
        e["firstTimestamp"] for e in submitted
    )

    # kubectl logs and exec go through the API server to the real kubelet; the pods run the pinned Ray.
    head = next(
        p["metadata"]["name"] for p in pods_of(kube, ns, name) if p["metadata"]["name"] not in workers
    )
    head_log = kube.kubectl("logs", "-n", ns, head, "-c", "ray-head").stdout
    assert "Ray runtime started" in head_log, head_log[-2000:]
    version = kube.kubectl(
        "exec", "-n", ns, engine["podName"], "-c", "ray-worker", "--", "ray", "--version"
    ).stdout
    assert f"version {RAY_VERSION}" in version, version


# --- P1 ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_p1_openai_clients_through_the_endpoint_service(kube: Kube, rested: Shared) -> None:
    served = rested.served
    base_url = endpoint(kube, served.namespace, served.name)
    api = client(base_url, api_key=served.api_key)
    completion = api.completions.create(model=served.name, prompt="The quick brown fox", max_tokens=8)
    assert completion.choices[0].text
    stream = api.chat.completions.create(
        model=served.name, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8, stream=True
    )
    chunks = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(chunks) > 1 and "".join(chunks), chunks
    # The API key from the Secret guards the endpoint.
    with pytest.raises(openai.AuthenticationError):
        client(base_url, api_key="sk-wrong").completions.create(model=served.name, prompt="Hi", max_tokens=2)


# Every route the pinned vLLM registers for a generating model (tests/e2e/test_engine_routes.py finds them on
# its real app; {response_id} filled in), but /health and /metrics: none may answer without the key.
GUARDED_ROUTES = [
    ("POST", "/invocations"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("POST", "/generative_scoring"),
    ("POST", "/scale_elastic_ep"),
    ("POST", "/is_scaling_elastic_ep"),
    ("GET", "/ping"),
    ("POST", "/ping"),
    ("GET", "/load"),
    ("GET", "/version"),
    ("GET", "/kv_event_sources"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/openapi.json"),
    ("POST", "/inference/v1/generate"),
    ("POST", "/inference/v1/abort_requests"),
    ("GET", "/v1/models"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/completions/render"),
    ("POST", "/v1/completions/derender"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/chat/completions/batch"),
    ("POST", "/v1/chat/completions/render"),
    ("POST", "/v1/chat/completions/derender"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("POST", "/v1/messages/render"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/responses/render"),
    ("GET", "/v1/responses/x"),
    ("POST", "/v1/responses/x/cancel"),
    ("POST", "/v1/systemone"),
]


def generating_bodies(model: str) -> dict[str, dict[str, Any]]:
    """The routes that generate or tokenize, each with a request it answers 200 cheaply (one token at most)."""
    completion = {"model": model, "prompt": "Hi", "max_tokens": 1}
    return {
        "/v1/completions": completion,
        "/v1/chat/completions": {
            "model": model,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 1,
        },
        "/invocations": completion,
        "/tokenize": {"model": model, "prompt": "Hi"},
        "/detokenize": {"model": model, "tokens": [1, 2]},
    }


@pytest.mark.timeout(120)
def test_p1_no_route_answers_without_the_key(kube: Kube, rested: Shared) -> None:
    """vLLM's own key check leaves /invocations (full completions), /tokenize and more open; the operator's gate
    (rayvllm.engine.gate) closes every route but the probes' /health and Prometheus' /metrics. Refused requests
    never reach vLLM, so this costs no model time."""
    served = rested.served
    root = endpoint(kube, served.namespace, served.name).removesuffix("/v1")
    keyed = {"Authorization": f"Bearer {served.api_key}"}
    with httpx.Client(base_url=root, timeout=30) as http:
        for method, path in GUARDED_ROUTES:
            for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
                answer = http.request(method, path, headers=headers, json={} if method == "POST" else None)
                assert answer.status_code == 401, (
                    method,
                    path,
                    headers,
                    answer.status_code,
                    answer.text[:200],
                )
                assert answer.headers.get("www-authenticate") == "Bearer", (
                    method,
                    path,
                    "not the gate's refusal",
                )
        for path in ("/health", "/metrics"):
            assert http.get(path).status_code == 200, path
        for path, body in generating_bodies(served.name).items():
            answer = http.post(path, headers=keyed, json=body)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        for path in ("/v1/models", "/version", "/ping"):
            assert http.get(path, headers=keyed).status_code == 200, path


# --- P2 ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(400)
def test_p2_every_dashboard_query_and_alert_rule_on_a_real_prometheus(
    kube: Kube, rested: Shared, capsys: pytest.CaptureFixture[str]
) -> None:
    ns, name, prometheus = rested.namespace, rested.served.name, rested.prometheus
    obj = vllm(kube, ns, name)
    # The engine's pod carries the scrape annotations, for the engine's port.
    annotations = worker_pods(kube, ns, name)[engines(obj)[0]["podName"]]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(obj["spec"]["engine"].get("port", 8000))
    assert annotations["prometheus.io/path"] == ENGINE_METRICS_PATH
    started = time.monotonic()

    # 1. Both jobs find their pod through the API server and scrape it.
    def both_up() -> dict[str, int] | None:
        up: dict[str, int] = {}
        for target in prometheus.targets():
            if target["health"] == "up":
                up[target["scrapePool"]] = up.get(target["scrapePool"], 0) + 1
        return up if up.get("rayvllm-operator") == 1 and up.get("rayvllm-engines") == 1 else None

    try:
        wait_for(both_up, timeout=120, interval=1, what="the operator and the engine scraped (up)")
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n{prometheus.describe()}") from None

    # 2. Requests through the endpoint Service, while every dashboard query runs.
    tokens = f'vllm:generation_tokens_total{{namespace="{ns}", name="{name}"}}'
    failures: list[str] = []
    answered: dict[str, int] = {}
    with Load(endpoint(kube, ns, name), name, rate=1.0, limit=300, api_key=rested.served.api_key) as load:
        wait_for(
            lambda: bool(prometheus.query(f"rate({tokens}[{RATE_INTERVAL}]) > 0")) and load.sent >= 5,
            timeout=120,
            interval=1,
            what="Prometheus sees tokens generated",
        )
        for title, expr in dashboard_targets():
            query = substituted(expr, ns, name)
            try:
                result = prometheus.query(query)
            except PromQLError as error:
                failures.append(f"{title}: {query}: {error}")
                continue
            if not result:
                failures.append(f"{title}: {query}: no series")
            answered[query] = len(result)
        for variable, selector in dashboard_variables():
            if not prometheus.series(substituted(selector, ns, name)):
                failures.append(f"variable {variable}: {selector}: no series")
    assert load.sent >= 5 and load.failures == [], (load.sent, load.failures[:5])
    assert failures == [], "\n".join(failures) + f"\n{prometheus.describe()}"
    assert len(answered) == len(dashboard_targets())
    # The latency panels have data, not just series: requests were observed.
    ttft = prometheus.query(
        substituted(
            "histogram_quantile(0.5, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket"
            '{namespace=~"$namespace", name=~"$vllmcluster"}[$__rate_interval])))',
            ns,
            name,
        )
    )
    assert ttft and not math.isnan(float(ttft[0]["value"][1])), ttft

    # 3. Every rule of the chart's file evaluates; none is active for a serving VLLMCluster.
    def evaluated() -> list[dict[str, Any]] | None:
        found = prometheus.rules()
        return found if found and all(r["health"] == "ok" for r in found) else None

    loaded = wait_for(evaluated, timeout=60, interval=1, what="every alert rule evaluated without error")
    assert {r["name"] for r in loaded} == {r["alert"] for g in rested.rules["groups"] for r in g["rules"]}, (
        loaded
    )
    active = [a["labels"] for a in prometheus.alerts() if a["labels"].get("namespace") == ns]
    assert active == [], active
    report(
        capsys,
        "real Prometheus: scraped, every dashboard query, every rule",
        {"took": time.monotonic() - started},
    )


# --- P3 ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_p3_ray_dashboard_frozen_the_engine_keeps_serving(
    kube: Kube, rested: Shared, capsys: pytest.CaptureFixture[str]
) -> None:
    freeze_dashboard(kube, rested.namespace, rested.served, capsys)


# --- P4 ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_p4_operator_storm_beside_a_serving_engine(
    kube: Kube, rested: Shared, secret_scan: SecretScan, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator SIGKILLed every 1-4 s (at least MIN_KILLS processes) while CROWD pod-less objects are
    created and the shared engine serves at 2 requests a second: no request fails, the Service never goes
    dark, no engine is submitted again or restarted, and every pod-less object settles as the yardstick
    (created before the storm and settled by an operator left alone)."""
    ns, served, release = rested.namespace, rested.served, rested.release
    engine = engines(vllm(kube, ns, served.name))[0]
    shape = yardstick(kube, ns, rested.world)
    crowd = [f"crowd-{i}" for i in range(CROWD)]
    row = ChaosRow("operator restart storm beside the shared engine")
    with Watch(kube, ns, served.name) as watch:
        watch.serving.set()
        with Load(
            endpoint(kube, ns, served.name), served.name, rate=2.0, limit=2000, api_key=served.api_key
        ) as load:
            # A kill every 1-4 s: the operator pod restarts in seconds, so most kills land on a running one.
            with OperatorStorm(release, limit=4 * MIN_KILLS, low=1.0, high=4.0, seed=1) as storm:
                kube.apply(
                    {"apiVersion": "v1", "kind": "List", "items": [podless(n, rested.world) for n in crowd]},
                    ns,
                )
                until = time.monotonic() + SERVE_SECONDS
                wait_for(
                    lambda: time.monotonic() >= until and storm.processes_killed >= MIN_KILLS,
                    timeout=SERVE_SECONDS + 180,
                    interval=1,
                    what=f"{MIN_KILLS} operator processes SIGKILLed",
                )
            ended = time.monotonic()
            wait_settled(kube, ns, release, crowd, shape)
            row.heal_seconds = time.monotonic() - ended
    secret_scan.keep("P4: logs of the killed operators", "".join(storm.logs))
    after = engines(vllm(kube, ns, served.name))[0]
    row.faults, row.requests_sent, row.requests_failed = storm.kills, load.sent, len(load.failures)
    row.duplicate_submissions = watch.most_duplicates
    row.notes = (
        f"{storm.processes_killed} operator processes SIGKILLed ({len(storm.errors)} failed kills); {CROWD} "
        f"pod-less objects; heal = storm end to all settled; Service dark in {watch.dark_samples}/"
        f"{watch.samples} samples"
    )
    record(row, capsys)

    assert storm.processes_killed >= MIN_KILLS, storm.errors[:3]
    assert load.sent >= SERVE_SECONDS and load.failures == [], (load.sent, load.failures[:5])
    watch.assert_observed_throughout(SERVE_SECONDS)
    assert watch.dark_samples == 0, f"the Service lost its endpoints in {watch.dark_samples}/{watch.samples}"
    assert watch.most_duplicates == 0, watch.worst
    # The engine was neither submitted again nor restarted: Ray knows one job of the object, the same.
    assert watch.submissions == {engine["submissionId"]}, sorted(watch.submissions)
    assert (after["submissionId"], after["restarts"]) == (engine["submissionId"], engine["restarts"]), after

    # The pod-less objects go (their finalizers released); the shared one stays.
    kube.kubectl("delete", "vllm", "yardstick", *crowd, "-n", ns, "--wait=true", "--timeout=180s")
    names = {o["metadata"]["name"] for o in kube.get_json("vllmclusters", "-n", ns)["items"]}
    assert names == {served.name}, names


# --- P5, P6 ------------------------------------------------------------------------------------------------


def stalled(kube: Kube, shared: Shared) -> dict[str, Any] | None:
    obj = vllm(kube, shared.namespace, shared.served.name)
    return obj if engines(obj).get(0, {}).get("budgetExhausted") else None


@pytest.mark.timeout(600)
def test_p5_failing_new_generation_stalls_while_the_old_engine_serves(
    kube: Kube, rested: Shared, capsys: pytest.CaptureFixture[str]
) -> None:
    ns, served = rested.namespace, rested.served
    old = engines(vllm(kube, ns, served.name))[0]
    with Load(
        endpoint(kube, ns, served.name), served.name, rate=2.0, limit=10_000, api_key=served.api_key
    ) as load:
        changed = time.monotonic()
        # A model that does not exist on the same claim: the pods keep their volumes (another claim would
        # change the pod template and so go the Recreate way).
        patch = {"spec": {"model": {"source": f"pvc://{MODEL_CLAIM}/no-such-model"}}}
        kube.kubectl("patch", "vllm", served.name, "-n", ns, "--type=merge", "-p", json.dumps(patch))
        generation = vllm(kube, ns, served.name)["metadata"]["generation"]
        obj = wait_for(
            lambda: stalled(kube, rested), timeout=600, interval=1, what="the new engine giving up"
        )
        stalled_in = time.monotonic() - changed
        jobs = jobs_of(kube, ns, served.name)
        time.sleep(10)  # five resyncs: the quantity measured is "no further submission"
        assert jobs_of(kube, ns, served.name) == jobs, "a stalled rollout kept submitting"
    report(capsys, "failing new generation to stalled", {"stalled": stalled_in})

    # Exactly maxRestarts + 1 submissions of the new generation, each failing on the missing model.
    new_jobs = sorted(sid for sid in jobs if (parts := submission_parts(sid)) and parts[1] == generation)
    assert len(new_jobs) == served.policy.max_restarts + 1, jobs
    engine = engines(obj)[0]
    assert engine["budgetExhausted"] is True and engine["restarts"] == served.policy.max_restarts, engine
    assert "no-such-model" in engine["lastFailure"], engine["lastFailure"]
    # The old engine serves on, in the Service, its job running; clients saw nothing.
    assert load.sent >= 20 and load.failures == [], (load.sent, load.failures[:5])
    standing = engines(obj)[1000]
    assert (standing["submissionId"], standing["ready"]) == (old["submissionId"], True), standing
    assert jobs[old["submissionId"]] == "RUNNING", jobs
    assert serving_ips(kube, ns, served.name) == {pod_ip(kube, ns, standing["podName"])}
    assert obj["status"]["readyReplicas"] == 1 and obj["status"]["updatedReplicas"] == 0, obj["status"]
    progressing = conditions(obj)["Progressing"]
    assert (progressing["status"], progressing["reason"]) == ("False", "RolloutStalled"), progressing
    warnings = {e["reason"] for e in kube.events(ns, served.name) if e["type"] == "Warning"}
    assert {"RolloutStalled", "EngineFailed", "EngineRestarting"} <= warnings, warnings
    wait_alert(rested, "RayvllmRestartBudgetExhausted", firing=True)


@pytest.mark.timeout(900)
def test_p6_fixed_forward_by_a_rolling_upgrade_that_fails_no_request(
    kube: Kube, shared: Shared, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/upgrades.md: an edit made while a rollout stalls continues it. The model restored and maxModelLen
    halved: the new engine takes the failed one's place on the surge pod while the old one serves, then the
    old one drains and its pod goes."""
    ns, served = shared.namespace, shared.served
    obj = wait_for(lambda: stalled(kube, shared), timeout=30, interval=1, what="P5's stalled rollout")
    old_pod = engines(obj)[1000]["podName"]
    with (
        RolloutWatch(kube, ns, served.name) as watch,
        Load(
            endpoint(kube, ns, served.name), served.name, rate=2.0, limit=10_000, api_key=served.api_key
        ) as load,
    ):
        changed = time.monotonic()
        spec = obj["spec"]
        source = manifest(NAME, shared.world)["spec"]["model"]["source"]
        patch = {
            "spec": {
                "model": {"source": source},
                "engine": {"maxModelLen": spec["engine"]["maxModelLen"] // 2},
            }
        }
        kube.kubectl("patch", "vllm", served.name, "-n", ns, "--type=merge", "-p", json.dumps(patch))
        generation = vllm(kube, ns, served.name)["metadata"]["generation"]

        def rolled() -> dict[str, Any] | None:
            current = vllm(kube, ns, served.name)
            by_index = engines(current)
            new = by_index.get(0, {})
            done = (
                list(by_index) == [0]
                and f"-g{generation}-a0-" in (new.get("submissionId") or "")
                and new.get("ready") is True
                and old_pod not in worker_pods(kube, ns, served.name)
            )
            return current if done else None

        obj = wait_for(rolled, timeout=900, interval=1, what="the new engine alone, the old pod gone")
        seconds = time.monotonic() - changed
        time.sleep(5)  # requests keep succeeding on the new engine alone
    report(capsys, "fixed forward: rolling upgrade, maxSurge 1", {"rolled": seconds})
    with capsys.disabled():
        print(f"[e2e measurement] requests during the rollout: sent={load.sent}, failed={len(load.failures)}")

    assert load.sent >= 20 and load.failures == [], f"{len(load.failures)}/{load.sent}: {load.failures[:5]}"
    watch.assert_observed_throughout(seconds)
    assert watch.most_pods <= 2 and watch.fewest_serving, watch  # one surge pod at most, never dark
    progressing = conditions(obj)["Progressing"]
    assert progressing["reason"] == "RolloutComplete", progressing
    assert obj["status"]["updatedReplicas"] == 1 and obj["status"]["readyReplicas"] == 1, obj["status"]
    running = sorted(sid for sid, state in jobs_of(kube, ns, served.name).items() if state == "RUNNING")
    assert running == [engines(obj)[0]["submissionId"]], running
    wait_alert(shared, "RayvllmRestartBudgetExhausted", firing=False)


# --- P7 ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(900)
def test_p7_hung_engine_found_by_the_canary_and_restarted(
    kube: Kube, rested: Shared, capsys: pytest.CaptureFixture[str]
) -> None:
    ns, name = rested.namespace, rested.served.name
    with AlertWatch(rested.prometheus, "RayvllmEnginesNotReady", ns, name) as alerts:
        hang_engine(kube, ns, rested.served, capsys)
    alerts.assert_observed(5)
    assert "firing" in alerts.seen, alerts
    wait_alert(rested, "RayvllmEnginesNotReady", firing=False, timeout=180)


# --- P8 ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(900)
def test_p8_deleted_under_operator_kills_leaves_nothing(
    kube: Kube, rested: Shared, secret_scan: SecretScan, capsys: pytest.CaptureFixture[str]
) -> None:
    ns, name = rested.namespace, rested.served.name
    secret_scan.keep_cluster("shared object", kube, ns, name)
    deleted = delete_under_storm(kube, ns, rested.release, [name], kills=5, seed=2)
    secret_scan.keep("P8: logs of the killed operators", deleted.logs)
    record(
        ChaosRow(
            "shared object deleted under operator kills",
            faults=deleted.kills,
            heal_seconds=deleted.seconds,
            notes="heal = delete to nothing left (finalizer released, pods and vLLM processes gone)",
        ),
        capsys,
    )
    assert deleted.kills >= 1 and deleted.left == {}, deleted
