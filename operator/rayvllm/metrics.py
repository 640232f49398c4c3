"""Prometheus metrics of the operator, derived from the status it writes (so they agree with
`kubectl get vllm`), served on RAYVLLM_METRICS_PORT when set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from rayvllm.models.status import Phase
from rayvllm.reasons import Reason

# Bounded cardinality: one series per object (and per engine replica index), never per pod, attempt or
# submission id.
_LABELS = ("namespace", "name")
_ENGINE_LABELS = (*_LABELS, "replica")

PHASE = Gauge(
    "rayvllm_vllmcluster_phase",
    "1 for the VLLMCluster's current phase, 0 for the others.",
    [*_LABELS, "phase"],
)
ENGINES_DESIRED = Gauge("rayvllm_engines_desired", "Engine replicas the spec asks for.", _LABELS)
ENGINES_READY = Gauge("rayvllm_engines_ready", "Engine replicas serving.", _LABELS)
ENGINE_RESTARTS = Gauge(
    "rayvllm_engine_restarts",
    "Restarts of each engine replica since its settings last changed.",
    _ENGINE_LABELS,
)
ENGINE_RESTART_BUDGET_EXHAUSTED = Gauge(
    "rayvllm_engine_restart_budget_exhausted",
    "1 while an engine replica has spent restartPolicy.maxRestarts and stays down, else 0.",
    _ENGINE_LABELS,
)
ENGINE_LOAD_SECONDS = Gauge(
    "rayvllm_engine_load_seconds",
    "Seconds the engine replica's current attempt took from submission to its first ready probe.",
    _ENGINE_LABELS,
)
RAY_DASHBOARD_UNREACHABLE = Gauge(
    "rayvllm_ray_dashboard_unreachable",
    "1 while the status reports the Ray dashboard of the VLLMCluster unreachable, else 0.",
    _LABELS,
)
RECONCILE_ERRORS = Counter(
    "rayvllm_reconcile_errors_total", "Reconcile passes that ended in an error.", _LABELS
)
# Not per object: at a thousand objects per-object histograms would be most of the operator's memory.
RECONCILE_DURATION = Histogram(
    "rayvllm_reconcile_duration_seconds",
    "Wall time of one reconcile pass over one VLLMCluster, Ray and engine calls included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def serve(port: int, host: str) -> None:
    """A background thread: never blocks kopf's event loop."""
    start_http_server(port, addr=host)


def record(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    phase = status.get("phase")
    for candidate in Phase:
        PHASE.labels(namespace, name, candidate.value).set(1 if candidate.value == phase else 0)
    ENGINES_DESIRED.labels(namespace, name).set(int(status.get("replicas") or 0))
    ENGINES_READY.labels(namespace, name).set(int(status.get("readyReplicas") or 0))
    # A counter's series exists from its first increment; created at 0 here, a rate over it is 0, not
    # missing, for an object that never failed.
    RECONCILE_ERRORS.labels(namespace, name)
    reasons = {condition.get("reason") for condition in status.get("conditions") or []}
    RAY_DASHBOARD_UNREACHABLE.labels(namespace, name).set(
        1 if Reason.RAY_DASHBOARD_UNREACHABLE.value in reasons else 0
    )
    for engine in status.get("engines") or []:
        replica = str(engine.get("index"))
        ENGINE_RESTARTS.labels(namespace, name, replica).set(int(engine.get("restarts") or 0))
        ENGINE_RESTART_BUDGET_EXHAUSTED.labels(namespace, name, replica).set(
            1 if engine.get("budgetExhausted") else 0
        )
        load_seconds = engine.get("loadSeconds")
        if load_seconds is None:
            # A new attempt has not loaded yet: no stale time of the previous one.
            _remove(ENGINE_LOAD_SECONDS, (namespace, name, replica))
        else:
            ENGINE_LOAD_SECONDS.labels(namespace, name, replica).set(int(load_seconds))


def _remove(metric: Gauge, labels: tuple[str, ...]) -> None:
    if labels in metric._metrics:  # the client has no public "has labels" query
        metric.remove(*labels)


def forget(namespace: str, name: str) -> None:
    """Drop every series of a deleted VLLMCluster."""
    per_object = (
        PHASE,
        ENGINES_DESIRED,
        ENGINES_READY,
        ENGINE_RESTARTS,
        ENGINE_RESTART_BUDGET_EXHAUSTED,
        ENGINE_LOAD_SECONDS,
        RAY_DASHBOARD_UNREACHABLE,
        RECONCILE_ERRORS,
    )
    for metric in per_object:
        for labels in list(metric._metrics):  # the client has no public "labels of" query
            if labels[:2] == (namespace, name):
                metric.remove(*labels)
