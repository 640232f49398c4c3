"""The dashboard's queries and the alert rules in the pinned Prometheus (built by `make tools`, hence this
tier), without a cluster: Prometheus (on 127.0.0.1) scrapes this process's own rayvllm.metrics server
after a status was recorded; every dashboard query parses, every query over the operator's metrics
returns series, every rule evaluates, and RayvllmEnginesNotReady fires once fewer engines are ready than
desired. The vLLM queries get their series
in the e2e test (tests/e2e/test_observability.py), which scrapes real engines."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import start_http_server

from rayvllm import metrics
from tests.support.operator import free_port
from tests.support.prometheus import (
    Prometheus,
    PromQLError,
    dashboard_targets,
    dashboard_variables,
    rules_with_short_for,
    substituted,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

NAMESPACE, NAME = "unit-prom", "observed"


def status(ready: int) -> dict[str, Any]:
    return {
        "phase": "Ready" if ready == 2 else "Degraded",
        "replicas": 2,
        "readyReplicas": ready,
        "conditions": [],
        "engines": [{"index": 0, "restarts": 0, "loadSeconds": 42}, {"index": 1, "restarts": 1}],
    }


@pytest.fixture(scope="module")
def prometheus(prometheus_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    metrics.record(NAMESPACE, NAME, status(ready=2))
    rules, _ = rules_with_short_for("2s")
    prometheus = Prometheus(prometheus_binary, tmp_path_factory.mktemp("prometheus"))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [
            {
                "job_name": "operator",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
            }
        ],
    }
    prometheus.start(config, rules)
    try:
        # Two reconcile passes a few scrapes apart: the rate of the duration histogram has something to show.
        for _ in range(2):
            with metrics.RECONCILE_DURATION.time():
                time.sleep(0.01)
            wait_for(
                lambda: prometheus.query(f'rayvllm_engines_ready{{namespace="{NAMESPACE}"}}'),
                timeout=30,
                what="the operator's metrics scraped",
            )
            time.sleep(2.5)
        yield prometheus
    finally:
        prometheus.stop()
        server.shutdown()
        thread.join(timeout=10)
        metrics.forget(NAMESPACE, NAME)


@pytest.mark.parametrize(("title", "expr"), dashboard_targets(), ids=lambda value: str(value)[:60])
def test_dashboard_query_parses_and_operator_queries_return_series(
    prometheus: Prometheus, title: str, expr: str
) -> None:
    query = substituted(expr, NAMESPACE, NAME, rate_interval="30s")
    try:
        result = prometheus.query(query)
    except PromQLError as error:
        pytest.fail(f"{title}: {error}")
    if "vllm:" not in query:
        assert result, f"{title}: {query} returned no series"


def test_dashboard_variables_find_the_object(prometheus: Prometheus) -> None:
    for variable, selector in dashboard_variables():
        assert prometheus.series(substituted(selector, NAMESPACE, NAME)), variable


def test_a_broken_query_is_reported(prometheus: Prometheus) -> None:
    with pytest.raises(PromQLError, match="parse error"):
        prometheus.query("sum(rate(rayvllm_engines_ready[1m])")


def test_rules_evaluate_and_engines_not_ready_fires(prometheus: Prometheus) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        found = prometheus.rules()
        return found if len(found) == 4 and all(r["health"] == "ok" for r in found) else None

    wait_for(evaluated, timeout=30, what="every rule evaluated without error")

    def firing() -> set[str]:
        return {
            a["labels"]["alertname"]
            for a in prometheus.alerts()
            if a["state"] == "firing" and a["labels"].get("namespace") == NAMESPACE
        }

    assert firing() == set()
    metrics.record(NAMESPACE, NAME, status(ready=1))
    wait_for(lambda: "RayvllmEnginesNotReady" in firing(), timeout=30, what="RayvllmEnginesNotReady firing")
    assert firing() == {"RayvllmEnginesNotReady"}
    metrics.record(NAMESPACE, NAME, status(ready=2))
    wait_for(lambda: not firing(), timeout=30, what="RayvllmEnginesNotReady resolved")
