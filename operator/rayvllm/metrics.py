"""Prometheus metrics of the operator, derived from the status it writes (so they agree with
`kubectl get vllm`), served on RAYVLLM_METRICS_PORT when set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from rayvllm.models.status import Phase

_LABELS = ("namespace", "name")

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
    [*_LABELS, "replica"],
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
    for engine in status.get("engines") or []:
        ENGINE_RESTARTS.labels(namespace, name, str(engine.get("index"))).set(
            int(engine.get("restarts") or 0)
        )


def forget(namespace: str, name: str) -> None:
    """Drop every series of a deleted VLLMCluster."""
    for metric in (PHASE, ENGINES_DESIRED, ENGINES_READY, ENGINE_RESTARTS, RECONCILE_ERRORS):
        for labels in list(metric._metrics):  # the client has no public "labels of" query
            if labels[:2] == (namespace, name):
                metric.remove(*labels)
