"""A real Prometheus (hack/build-tools.sh builds it from its Go module). It listens on 127.0.0.1. In the
e2e tier (scrape_config) it discovers pods through the cluster's API server with the test's kubeconfig, and scrapes the
operator and the serving engines the way the chart's PodMonitors select them (pod labels, named container
port), using the scrape annotations the chart and the RayCluster builder put on those pods for port and path.
It loads the chart's alert rules. Its HTTP API answers the tests' PromQL."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from hack.localcluster.kubecli import CHART
from rayvllm.builders.labels import (
    CLUSTER_LABEL,
    INSTANCE_LABEL,
    MANAGED_BY_LABEL,
    MANAGER,
    SERVING,
    SERVING_LABEL,
)
from rayvllm.builders.raycluster import ENGINE_PORT_NAME
from tests.support.local_server import LocalServer

DASHBOARD = CHART / "dashboards" / "rayvllm.json"
RULES = CHART / "rules" / "rayvllm.rules.yaml"
OPERATOR_APP_NAME = "rayvllm-operator"  # the chart's name: the operator pod's app.kubernetes.io/name
# Not shorter: an engine sharing two cores with a model load may take seconds to answer /metrics.
SCRAPE_SECONDS = 5


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, PromQL as written, with Grafana's variables) of every query of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"]:
        for inner in [panel, *(panel.get("panels") or [])]:  # a collapsed row keeps its panels inside
            found += [(inner["title"], target["expr"]) for target in inner.get("targets", [])]
    return found


def dashboard_variables() -> list[tuple[str, str]]:
    """(name, series selector) of each label_values(selector, label) variable of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    found = []
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert match, f"variable {variable['name']}: not a label_values(selector, label) query: {query}"
            found.append((variable["name"], match.group(1)))
    return found


def substituted(expr: str, namespace: str, name: str, rate_interval: str = "1m") -> str:
    """A dashboard query as Grafana sends it with one VLLMCluster selected (Kubernetes names need no regex
    escaping)."""
    out = (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$namespace", namespace)
        .replace("$vllmcluster", name)
    )
    assert "$" not in out, f"a Grafana variable the tests do not know: {out}"
    return out


def meta_label(label: str) -> str:
    """The discovery meta label of a pod label or annotation key, as Prometheus sanitises it."""
    return "".join(c if c.isalnum() else "_" for c in label)


def keep(label: str, regex: str) -> dict[str, Any]:
    return {"source_labels": [label], "regex": regex, "action": "keep"}


# What a Prometheus that discovers pods by annotation does: scrape only annotated pods, at the annotated
# port and path.
BY_ANNOTATION: list[dict[str, Any]] = [
    keep("__meta_kubernetes_pod_annotation_prometheus_io_scrape", "true"),
    {
        "source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
        "regex": r"([^:]+)(?::\d+)?;(\d+)",
        "replacement": "$1:$2",
        "target_label": "__address__",
    },
    {
        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
        "regex": "(.+)",
        "target_label": "__metrics_path__",
    },
]


def scrape_config(
    kubeconfig: Path, operator_namespace: str, release: str, engine_namespaces: list[str]
) -> dict[str, Any]:
    """Two jobs, the chart's two PodMonitors (templates/podmonitors.yaml) spelled as plain Prometheus
    configuration: the operator pod with honor_labels (its series carry the VLLMClusters' namespace and
    name), and the serving engines' pods with the VLLMCluster's name copied from the pod label."""

    def pods(namespaces: list[str]) -> list[dict[str, Any]]:
        return [{"role": "pod", "kubeconfig_file": str(kubeconfig), "namespaces": {"names": namespaces}}]

    return {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [
            {
                "job_name": "rayvllm-operator",
                "honor_labels": True,
                "kubernetes_sd_configs": pods([operator_namespace]),
                "relabel_configs": [
                    keep(
                        f"__meta_kubernetes_pod_label_{meta_label('app.kubernetes.io/name')}",
                        OPERATOR_APP_NAME,
                    ),
                    keep(f"__meta_kubernetes_pod_label_{meta_label(INSTANCE_LABEL)}", release),
                    keep("__meta_kubernetes_pod_container_port_name", "metrics"),
                    *BY_ANNOTATION,
                ],
            },
            {
                "job_name": "rayvllm-engines",
                "kubernetes_sd_configs": pods(engine_namespaces),
                "relabel_configs": [
                    keep(f"__meta_kubernetes_pod_label_{meta_label(MANAGED_BY_LABEL)}", MANAGER),
                    keep(f"__meta_kubernetes_pod_label_{meta_label(SERVING_LABEL)}", SERVING),
                    keep("__meta_kubernetes_pod_container_port_name", ENGINE_PORT_NAME),
                    *BY_ANNOTATION,
                    # The labels a PodMonitor target gets, and the chart's relabelling to `name`.
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                    {
                        "source_labels": [f"__meta_kubernetes_pod_label_{meta_label(CLUSTER_LABEL)}"],
                        "target_label": "name",
                    },
                ],
            },
        ],
    }


def rules_with_short_for(for_: str) -> tuple[dict[str, Any], int]:
    """The chart's rule file with every `for:` shortened to `for_` (a test cannot wait 30 minutes); the
    expressions, labels and annotations stay exactly as shipped. Returns the rules and how many changed."""
    rules = yaml.safe_load(RULES.read_text())
    changed = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_
                changed += 1
    return rules, changed


class PromQLError(AssertionError):
    pass


@dataclass
class Prometheus(LocalServer):
    def start(self, config: Mapping[str, Any], rules: Mapping[str, Any]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "prometheus.yml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
        (self.home / "rules.yaml").write_text(yaml.safe_dump(dict(rules), sort_keys=False))
        args = [
            f"--config.file={self.home / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.home / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.launch(args, "/-/ready", timeout=60, interval=0.5)

    def api(self, path: str, **params: str) -> Any:
        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = answer.json()
        if body.get("status") != "success":
            raise PromQLError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; a parse or evaluation error raises PromQLError."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return list(data["result"])

    def series(self, selector: str) -> list[dict[str, str]]:
        start = str(time.time() - 600)
        return list(self.api("series", **{"match[]": selector, "start": start}))

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def describe(self) -> str:
        """The targets and the log tail, for a failure message."""
        try:
            targets = json.dumps(
                [
                    {k: t.get(k) for k in ("scrapePool", "scrapeUrl", "health", "lastError")}
                    for t in self.targets()
                ]
            )
        except (httpx.HTTPError, PromQLError) as failure:
            targets = f"(targets unavailable: {failure})"
        return f"targets: {targets}\nlog:\n{self.log.read_text()[-3000:]}"
