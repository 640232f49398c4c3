"""The Grafana dashboard and the alert rules the chart ships, without Prometheus: the JSON is a dashboard
whose every panel queries something, every metric a query names is one the operator defines
(rayvllm.metrics) or one of vLLM's listed in docs/metrics.md, no query hides a missing series behind a
fallback, and every alert is documented. tests/e2e/test_observability.py runs the same queries and rules
against a real Prometheus."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.support.prometheus import DASHBOARD, RULES, dashboard_targets, dashboard_variables

from .test_docs import DOCS, backticked, defined_metrics, table_rows

# PromQL words that are not metric names when they stand alone (functions are recognised by their "(").
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
}
FALLBACKS = re.compile(r"\bor\s+vector\s*\(|\babsent(_over_time)?\s*\(|\bor\s+on\s*\(\s*\)\s*vector")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found += [panel] if panel["type"] != "row" else []
        found += panel.get("panels") or []  # a collapsed row keeps its panels inside
    return found


def dashboard_queries() -> list[str]:
    return [expr for _, expr in dashboard_targets()]


def variable_selectors() -> list[str]:
    return [selector for _, selector in dashboard_variables()]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what stays of it once strings, label matchers, range
    and grouping clauses are gone, except functions (a name followed by "(") and operators' keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group() in PROMQL_KEYWORDS:
            continue
        names.add(match.group())
    return names


def test_metric_names_finds_selectors_and_skips_the_rest() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (namespace, le) (rate(vllm:ttft_bucket{name=~"$x", a="b"}[5m])))'
        " / on (pod) group_left rayvllm_engines_ready and bool up == 1"
    )
    assert metric_names(expr) == {"vllm:ttft_bucket", "rayvllm_engines_ready", "up"}


def exposed_names(kind: str, name: str) -> set[str]:
    """The sample names a metric family is queried by."""
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


def vllm_metrics() -> dict[str, str]:
    """vLLM's metrics the dashboard relies on, as docs/metrics.md lists them: name -> type."""
    text = (DOCS / "metrics.md").read_text()
    listed = {}
    for name, kind, *_ in table_rows(text, "## The engines' own metrics"):
        (metric,) = backticked(name)
        listed[metric] = kind
    return listed


def known_metric_names() -> set[str]:
    known: set[str] = set()
    for name, (kind, _) in defined_metrics().items():
        known |= exposed_names(kind, name)
    for name, kind in vllm_metrics().items():
        known |= exposed_names(kind, name)
    return known


def test_the_dashboard_is_a_grafana_dashboard_with_a_query_in_every_panel() -> None:
    board = dashboard()
    assert board["uid"] == "rayvllm" and board["title"]
    found = panels(board)
    assert len(found) >= 10
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in found:
        assert panel["title"] and panel.get("targets"), f"panel {panel.get('title')!r} queries nothing"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"panel {panel['title']!r}: an empty query"
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    names = {variable["name"] for variable in board["templating"]["list"]}
    assert {"datasource", "namespace", "vllmcluster"} <= names


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    used = set().union(*(metric_names(expr) for expr in dashboard_queries()))
    for wanted in (
        "rayvllm_engines_ready",
        "rayvllm_engines_desired",
        "rayvllm_engine_restarts",
        "rayvllm_vllmcluster_phase",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:generation_tokens_total",
        "rayvllm_reconcile_errors_total",
        "rayvllm_reconcile_duration_seconds_bucket",
    ):
        assert wanted in used, f"the dashboard does not show {wanted}"


@pytest.mark.parametrize(
    "source",
    ["dashboard panels", "dashboard variables", "alert rules"],
)
def test_every_metric_queried_is_defined_by_the_operator_or_a_listed_vllm_metric(source: str) -> None:
    exprs = {
        "dashboard panels": dashboard_queries(),
        "dashboard variables": variable_selectors(),
        "alert rules": [rule["expr"] for rule in alert_rules()],
    }[source]
    assert exprs
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert used
    assert sorted(used - known_metric_names()) == [], f"{source} query metrics nothing defines"


def test_the_listed_vllm_metrics_are_all_used() -> None:
    used = set().union(*(metric_names(expr) for expr in dashboard_queries()))
    unused = [name for name, kind in vllm_metrics().items() if not exposed_names(kind, name) & used]
    assert unused == [], "docs/metrics.md lists vLLM metrics the dashboard does not use"


def test_no_query_has_a_fallback_that_hides_missing_series() -> None:
    exprs = dashboard_queries() + [rule["expr"] for rule in alert_rules()]
    assert [expr for expr in exprs if FALLBACKS.search(expr)] == []
    assert FALLBACKS.search("sum(x) or vector(0)") and FALLBACKS.search("absent(up)")


def test_every_alert_is_named_labelled_and_documented() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)) and all(name.startswith("Rayvllm") for name in names)
    assert set(names) == {
        "RayvllmEnginesNotReady",
        "RayvllmRestartBudgetExhausted",
        "RayvllmReconcileErrors",
        "RayvllmRayDashboardUnreachable",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    text = (DOCS / "metrics.md").read_text()
    documented = {backticked(cells[0])[0]: cells[1] for cells in table_rows(text, "## Alerts")}
    assert sorted(documented) == sorted(names), "docs/metrics.md's alert table differs from the rules"
    severities = {rule["alert"]: rule["labels"]["severity"] for rule in rules}
    assert documented == severities
