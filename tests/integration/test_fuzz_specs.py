"""Fuzzed input (issue 10): hundreds of VLLMCluster specs drawn from the CRD's own schema and from single
mutations of valid objects (tests/support/fuzz.py), each created on the real API server with the operator
running. Every case is either

- refused at admission (HTTP 422/400) with a message naming the offending field, or
- accepted, and then the operator's models accept the stored object too, its status says what is wrong (a
  condition with a reason) or that it progresses, within 30 s of its creation (the latencies are printed:
  the speed of the first status is `make bench`'s to judge), and the operator neither crashes (process alive, no traceback in its log) nor loops hot on it (status writes per object,
  and the API server's count of the operator's writes, bounded over a window).

Accepted objects live in batches: created together, judged, deleted, and gone (finalizer released) before
the next batch. A ResourceQuota bounds the pods KubeRay may make for them: random worker counts go up to
10^9, and KubeRay would try to create them all. Specs that once found a bug are kept in
tests/bad_inputs/fuzz-regressions.json and always run first.

`make test` draws about half the cases `make chaos` draws (the full draw is marked chaos); both are
deterministic (derandomized), so a failure found by either reproduces.
"""

from __future__ import annotations

import json
import math
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from rayvllm import API_GROUP, API_VERSION, KIND, PLURAL
from rayvllm.errors import InvalidSpecError
from rayvllm.models import parse_cluster
from rayvllm.settings import Settings
from tests.conftest import INTEGRATION_OPERATOR_ENV
from tests.support.fuzz import SUMMARY as FUZZ_SUMMARY
from tests.support.fuzz import Case, draw_cases, rejection_problem
from tests.support.kube import Kube, apiserver_writes, json_object, operator_writes, write_delta
from tests.support.measurements import report
from tests.support.operator import OperatorProcess

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Draw:
    """How many specs to draw from the CRD's schema and as mutations of valid objects (the regressions
    always run on top)."""

    schema: int
    mutations: int


DRAWS = [
    pytest.param(Draw(schema=120, mutations=130), id="make-test"),
    pytest.param(Draw(schema=245, mutations=260), id="full", marks=pytest.mark.chaos),
]
# Accepted objects alive at once.
BATCH = 20
# Pods KubeRay may create in the namespace; the rest of what the specs ask for fails with a quota error
# (reported by KubeRay as ReplicaFailure, by the operator as Degraded).
QUOTA_PODS = 40
CREATE_THREADS = 2

RESYNC = float(INTEGRATION_OPERATOR_ENV["RAYVLLM_RESYNC_SECONDS"])
ONE_RESYNC = RESYNC * (1 + Settings.model_fields["resync_jitter"].default)
# An accepted object's status must be there and say the right thing this soon after its creation. Typically
# within one resync; the bound is loose on purpose (2 cores, a batch of 20 at once), the latencies printed.
STATUS_WITHIN = 30.0
# The hot-loop window. An object's world may change in it (KubeRay creating its 133 worker pods one by one,
# retrying against the quota with a new pod name in its message each time), and each change is an event
# of a child that wakes the object's loop. So the bounds count from those events: a status write needs a
# child event in the window or in the resync before it (a text-only change waits for the resync after the
# last write, reconcile.write_status, so it can land in the window after an event just before it), except
# for one; a pass needs a child event or a resync. A loop that writes on every pass, or wakes itself,
# exceeds them.
WINDOW = 2 * RESYNC
RESYNC_PASSES = math.ceil(WINDOW / (RESYNC * (1 - Settings.model_fields["resync_jitter"].default))) + 1
PHASES = {"Pending", "Provisioning", "Launching", "Ready", "Degraded", "Failed", "Suspended"}
TRACEBACK = "Traceback (most recent call last)"
# The operator's log lines begin with their local time: [2026-12-06 01:32:07,050].
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


@dataclass
class Seen:
    """What the watch saw of one VLLMCluster."""

    first_status_at: float | None = None
    body: dict[str, Any] | None = None
    gone: bool = False


class Watcher:
    """The namespace's VLLMClusters as a watch sees them, on a thread: when each first had a status for
    its generation, its last body, and whether it is gone."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.seen: dict[str, Seen] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=15)

    def _run(self) -> None:
        with self.kube.api() as api:
            custom = client.CustomObjectsApi(api)
            while not self.stopped.is_set():
                try:
                    listed = json_object(
                        custom.list_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, PLURAL)
                    )
                    self._relisted(listed["items"])
                    stream = watch.Watch().stream(
                        custom.list_namespaced_custom_object,
                        API_GROUP,
                        API_VERSION,
                        self.namespace,
                        PLURAL,
                        resource_version=listed["metadata"]["resourceVersion"],
                        timeout_seconds=5,
                    )
                    for event in stream:
                        self._saw(event["type"], event["object"])
                        if self.stopped.is_set():
                            break
                except (ApiException, OSError, ValueError):
                    time.sleep(0.2)

    def _relisted(self, items: list[dict[str, Any]]) -> None:
        """A fresh list: what it lacks was deleted while no watch was open."""
        present = {item["metadata"]["name"] for item in items}
        with self.lock:
            for name, seen in self.seen.items():
                if name not in present:
                    seen.gone = True
        for item in items:
            self._saw("MODIFIED", item)

    def _saw(self, kind: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        with self.lock:
            seen = self.seen.setdefault(name, Seen())
            if kind == "DELETED":
                seen.gone = True
                return
            seen.body = body
            status = body.get("status") or {}
            if (
                seen.first_status_at is None
                and status.get("observedGeneration") == body["metadata"].get("generation")
                and status.get("conditions")
            ):
                seen.first_status_at = time.monotonic()

    def get(self, name: str) -> Seen:
        with self.lock:
            return self.seen.get(name, Seen())

    def forget(self, name: str) -> None:
        with self.lock:
            self.seen.pop(name, None)


@dataclass
class Live:
    case: Case
    name: str
    created_at: float


@dataclass
class Tally:
    tried: int = 0
    rejected: int = 0
    accepted: int = 0
    reported: int = 0
    crashes: int = 0
    model_lenient: int = 0
    failures: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    window_writes: list[float] = field(default_factory=list)
    window_passes: list[float] = field(default_factory=list)

    def fail(self, case: Case, name: str, problem: str) -> None:
        self.failures.append(f"{name} [{case.label}]: {problem}\n    spec: {json.dumps(case.spec)[:1500]}")


def body_of(case: Case, name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": case.spec,
    }


def submit(
    kube: Kube, namespace: str, cases: Sequence[tuple[str, Case]]
) -> list[tuple[str, Case, dict[str, Any] | None, dict[str, Any] | None]]:
    """Create each case (strict field validation, as kubectl): (name, case, stored, refusal Status)."""
    apis: queue.Queue[client.ApiClient] = queue.Queue()
    for _ in range(CREATE_THREADS):
        apis.put(kube.api())

    def one(item: tuple[str, Case]) -> tuple[str, Case, dict[str, Any] | None, dict[str, Any] | None]:
        name, case = item
        api = apis.get()
        try:
            stored = json_object(
                client.CustomObjectsApi(api).create_namespaced_custom_object(
                    API_GROUP, API_VERSION, namespace, PLURAL, body_of(case, name), field_validation="Strict"
                )
            )
            return name, case, stored, None
        except ApiException as refused:
            try:
                status = json.loads(refused.body or "{}")
            except ValueError:
                status = {"message": str(refused.body)}
            status.setdefault("code", refused.status)
            return name, case, None, status
        finally:
            apis.put(api)

    try:
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            return list(pool.map(one, cases))
    finally:
        while not apis.empty():
            apis.get().close()


def delete_all(kube: Kube, namespace: str, names: Sequence[str]) -> None:
    def one(name: str) -> None:
        with kube.api() as api:
            try:
                client.CustomObjectsApi(api).delete_namespaced_custom_object(
                    API_GROUP, API_VERSION, namespace, PLURAL, name
                )
            except ApiException as error:
                if error.status != 404:
                    raise

    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(one, names))


GCS_FT_FINALIZER = "ray.io/gcs-ft-redis-cleanup-finalizer"


def release_redis_cleanup(kube: Kube, namespace: str) -> None:
    """KubeRay keeps a deleted RayCluster with GCS fault tolerance until a Job has cleaned its Redis; the
    fuzzed specs name Redis servers that do not exist, and that Job (5-minute deadline) would hold the
    namespace. The test's own clean-up: release those RayClusters (their owner is long gone)."""
    for rc in (kube.get_json("rayclusters", "-n", namespace) or {}).get("items", []):
        if GCS_FT_FINALIZER in (rc["metadata"].get("finalizers") or []):
            kube.kubectl(
                "patch", "raycluster", rc["metadata"]["name"], "-n", namespace, "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False,
            )  # fmt: skip


def tracebacks(log: str) -> list[str]:
    """The object (namespace/name) each traceback in `log` is about, from the kopf line before it."""
    lines = log.splitlines()
    about = []
    for i, line in enumerate(lines):
        if TRACEBACK in line:
            before = " ".join(lines[max(0, i - 3) : i + 1])
            tags = re.findall(r"\[([a-z0-9-]+/[a-z0-9-]+)\]", before)
            about.append(tags[-1] if tags else "?")
    return about


def child_event_lines(log: str, since: datetime) -> list[str]:
    """The lines of the operator's `log` that record a child's event, logged at `since` or later (the log's
    local time)."""
    stamped = (
        (re.match(r"^\[([0-9-]+ [0-9:,]+)\]", line), line)
        for line in log.splitlines()
        if "Handler 'child_changed'" in line
    )
    return [line for m, line in stamped if m and datetime.strptime(m.group(1), LOG_TIME) >= since]


def child_events_of(lines: Sequence[str], namespace: str, name: str) -> int:
    """Events of the object's children (its RayCluster, Service, Ray pods) among `lines`."""
    pattern = re.compile(rf"\[{namespace}/{name}(?:-[a-z0-9-]+)?\] Handler 'child_changed'")
    return sum(bool(pattern.search(line)) for line in lines)


def status_problem(body: dict[str, Any]) -> str | None:
    """None when the status says what is wrong or that it progresses: a known phase, every condition
    with a reason, and a Degraded=True or Failed object names its reason."""
    status = body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if status.get("phase") not in PHASES:
        return f"phase {status.get('phase')!r}"
    if not conditions or any(not c.get("reason") for c in conditions.values()):
        return f"a condition without a reason: {list(conditions.values())}"
    degraded = conditions.get("Degraded", {})
    if status["phase"] in ("Degraded", "Failed") and (
        degraded.get("status") != "True" or degraded.get("reason") == "AsExpected"
    ):
        return f"phase {status['phase']} without a Degraded reason: {degraded}"
    return None


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


@pytest.mark.parametrize("draw", DRAWS)
def test_fuzzed_specs(
    settled_namespaces: None, kube: Kube, namespace: str, operator: OperatorProcess, draw: Draw
) -> None:
    started = time.monotonic()
    cases = draw_cases(draw.schema, draw.mutations)
    drawn = time.monotonic() - started
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "fuzz-pods"},
            "spec": {"hard": {"pods": str(QUOTA_PODS)}},
        },
        namespace,
    )
    tally = Tally()
    log_offset = len(operator.log_text())
    named = [(f"fz-{i:04d}", case) for i, case in enumerate(cases)]
    by_name = dict(named)
    live: list[Live] = []

    with Watcher(kube, namespace) as watcher:
        for chunk in chunks(named, BATCH):
            for name, case, stored, refusal in submit(kube, namespace, chunk):
                tally.tried += 1
                if refusal is not None:
                    judge_refusal(tally, case, name, refusal)
                    continue
                assert stored is not None
                tally.accepted += 1
                live.append(Live(case, name, time.monotonic()))
                try:
                    parse_cluster(stored)
                except InvalidSpecError as invalid:
                    tally.fail(
                        case, name, f"admission accepted it, the operator's models refuse it: {invalid}"
                    )
            if len(live) >= BATCH:
                judge_batch(kube, namespace, operator, watcher, tally, live)
                live = []
        if live:
            judge_batch(kube, namespace, operator, watcher, tally, live)

    release_redis_cleanup(kube, namespace)
    for tag in tracebacks(operator.log_text()[log_offset:]):
        name = tag.split("/")[-1]
        tally.crashes += 1
        traced = by_name.get(name)
        if traced is not None:
            tally.fail(traced, name, "a traceback in the operator's log")
        else:
            tally.failures.append(f"a traceback in the operator's log about {tag}")
    elapsed = time.monotonic() - started
    FUZZ_SUMMARY[:] = [
        f"[fuzz] tried={tally.tried} rejected={tally.rejected} accepted={tally.accepted} "
        f"accepted-and-reported={tally.reported} crashes={tally.crashes} failures={len(tally.failures)} "
        f"model-more-lenient={tally.model_lenient} drawn-in={drawn:.1f}s wall={elapsed:.1f}s "
        f"status-latency-p50={percentile(tally.latencies, 0.5):.2f}s "
        f"p95={percentile(tally.latencies, 0.95):.2f}s max={max(tally.latencies, default=0):.2f}s "
        f"(bound {STATUS_WITHIN:.0f}s) "
        f"window-writes-per-object-max={max(tally.window_writes, default=0):.2f} "
        f"window-passes-per-object-max={max(tally.window_passes, default=0):.2f}",
        f"[fuzz] reasons: {dict(tally.reasons.most_common())}",
    ]
    report(
        f"[fuzz] first status after creation over {len(tally.latencies)} accepted objects: "
        f"p50 {percentile(tally.latencies, 0.5):.2f}s, p95 {percentile(tally.latencies, 0.95):.2f}s, "
        f"max {max(tally.latencies, default=0):.2f}s (one resync {ONE_RESYNC:.1f}s; bound {STATUS_WITHIN:.0f}s)"
    )
    # Hypothesis may stop a draw a little short of its examples; never by much.
    assert tally.tried >= (draw.schema + draw.mutations) * 99 // 100
    assert tally.accepted * 3 >= tally.tried, f"only {tally.accepted}/{tally.tried} admitted"
    assert not tally.failures, f"{len(tally.failures)} failing case(s):\n" + "\n".join(tally.failures[:40])


def judge_refusal(tally: Tally, case: Case, name: str, refusal: dict[str, Any]) -> None:
    tally.rejected += 1
    code = refusal.get("code")
    if code not in (400, 422):
        tally.fail(case, name, f"refused with HTTP {code}, not 400/422: {str(refusal.get('message'))[:400]}")
        return
    problem = rejection_problem(case, case.spec, refusal)
    if problem:
        tally.fail(case, name, problem)
    # Not a failure: the models may be more lenient than admission (admission is the gate).
    try:
        parse_cluster(body_of(case, name))
        tally.model_lenient += 1
    except InvalidSpecError:
        pass


def judge_batch(
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
    watcher: Watcher,
    tally: Tally,
    live: list[Live],
) -> None:
    """Statuses within STATUS_WITHIN; then a window of no hot loop; then delete them all and wait until they
    are gone."""
    release_redis_cleanup(kube, namespace)  # of the batch before: its pods would hold the quota
    deadline = max(obj.created_at for obj in live) + STATUS_WITHIN
    while time.monotonic() < deadline and any(watcher.get(o.name).first_status_at is None for o in live):
        time.sleep(0.1)
    on_time = []
    for obj in live:
        seen = watcher.get(obj.name)
        if seen.first_status_at is None or seen.body is None:
            tally.fail(obj.case, obj.name, f"no status within {time.monotonic() - obj.created_at:.0f}s")
            continue
        latency = seen.first_status_at - obj.created_at
        tally.latencies.append(latency)
        if latency > STATUS_WITHIN:
            tally.fail(
                obj.case, obj.name, f"its first status came after {latency:.1f}s (> {STATUS_WITHIN:.0f}s)"
            )
            continue
        on_time.append(obj)

    # The window: nothing of ours writes meanwhile.
    log_before = operator.log_text()
    # Child events of the resync before the window count too: their deferred status writes may land in it.
    lead_in_from = datetime.now() - timedelta(seconds=ONE_RESYNC)
    writes_before, passes_before = apiserver_writes(kube), operator.reconcile_passes()
    time.sleep(WINDOW)
    writes = operator_writes(write_delta(apiserver_writes(kube), writes_before))
    passes = operator.reconcile_passes() - passes_before
    log_window = operator.log_text()[len(log_before) :]
    recent = child_event_lines(operator.log_text(), lead_in_from)
    child_events = {o.name: child_events_of(recent, namespace, o.name) for o in live}
    all_events = sum(child_events.values())
    per_object_writes = sum(writes.values()) / len(live)
    tally.window_writes.append(per_object_writes)
    tally.window_passes.append(passes / len(live))
    if sum(writes.values()) > all_events + 2 * len(live) or passes > all_events + RESYNC_PASSES * len(live):
        tally.failures.append(
            f"hot loop over a batch of {len(live)}: {writes} operator writes, {passes} passes in {WINDOW}s, "
            f"for {all_events} child events"
        )
    if not operator.alive():
        tally.crashes += 1
        tally.failures.append(
            f"the operator died with a batch of {[o.name for o in live]}:\n{operator.log_tail()}"
        )
        operator.stop()
        operator.start()

    rayclusters = {
        rc["metadata"]["name"]: rc
        for rc in (kube.get_json("rayclusters", "-n", namespace) or {}).get("items", [])
    }
    kuberay_refused = {
        e["involvedObject"]["name"]: e.get("message", "")
        for e in (kube.get_json("events", "-n", namespace) or {}).get("items", [])
        if e.get("involvedObject", {}).get("kind") == "RayCluster"
        and str(e.get("reason")).startswith("Invalid")
    }
    for obj in on_time:
        body = watcher.get(obj.name).body or {}
        status_writes = log_window.count(f"[{namespace}/{obj.name}] status:")
        problem = status_problem(body)
        if status_writes > child_events[obj.name] + 1:
            written = [
                line for line in log_window.splitlines() if f"[{namespace}/{obj.name}] status:" in line
            ]
            problem = (
                f"{status_writes} status writes in {WINDOW}s for {child_events[obj.name]} child events (the "
                f"resync before included): "
                f"{written}"
            )
        phase = (body.get("status") or {}).get("phase")
        child = rayclusters.get(obj.name)
        if problem is None and phase != "Failed" and child is not None and obj.name in kuberay_refused:
            # KubeRay refused the RayCluster (a Warning Event on it; no status, no pods, ever): the object
            # would wait forever while its status says it progresses.
            problem = f"{phase}, but KubeRay refused its RayCluster: {kuberay_refused[obj.name]}"
        if problem:
            tally.fail(obj.case, obj.name, f"{problem}; status: {json.dumps(body.get('status'))[:800]}")
            continue
        tally.reported += 1
        for c in (body.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Degraded" and c.get("status") == "True":
                tally.reasons[c["reason"]] += 1
        tally.reasons[f"phase:{phase}"] += 1

    delete_all(kube, namespace, [o.name for o in live])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(watcher.get(o.name).gone for o in live):
        time.sleep(0.1)
    for obj in live:
        if not watcher.get(obj.name).gone:
            tally.fail(obj.case, obj.name, "still there 60s after its deletion (finalizer not released)")
        watcher.forget(obj.name)
