"""`make day2` (`make test` has the same queries and rules as phase P2 of its shared serving object, and alerts
firing and resolving in P5-P7: tests/e2e/test_shared_engine.py). The chart's Grafana dashboard and alert rules against a real Prometheus scraping a real operator and a
real engine: the operator installed by its chart, a VLLMCluster serving on real pods, a Prometheus on
127.0.0.1 that finds both through the API server by the labels, ports and scrape annotations the chart and
the RayCluster builder put on the pods. After some requests every dashboard query parses and returns
series; every alert rule evaluates; scaling beyond what is ready makes RayvllmEnginesNotReady fire, and
scaling back resolves it."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from hack.localcluster.helm_release import OperatorRelease
from rayvllm.builders.raycluster import ENGINE_METRICS_PATH
from tests.e2e.realnode import RealNodeWorld
from tests.e2e.serving import Load, endpoint, engines, manifest, report, vllm, wait_ready, worker_pods
from tests.support.kube import Kube
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

pytestmark = [pytest.mark.e2e, pytest.mark.day2]

ALERT_FOR = "4s"  # every rule's `for:`, shortened; expressions stay as shipped
RATE_INTERVAL = "1m"  # Grafana's $__rate_interval: several samples at the 5 s scrape interval


def alert_states(prometheus: Prometheus, alertname: str, namespace: str, name: str) -> set[str]:
    return {
        a["state"]
        for a in prometheus.alerts()
        if a["labels"].get("alertname") == alertname
        and a["labels"].get("namespace") == namespace
        and a["labels"].get("name") == name
    }


@pytest.mark.timeout(1500)
def test_dashboard_queries_and_alert_rules_on_a_real_prometheus(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    prometheus_binary: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = served = "observed"
    start = time.monotonic()
    kube.apply(manifest(name, real_node), namespace)
    obj = wait_ready(kube, namespace, name)
    marks = {"ready": time.monotonic() - start}

    # The engine's pod carries the scrape annotations, for the engine's port.
    host = worker_pods(kube, namespace, name)[engines(obj)[0]["podName"]]
    annotations = host["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(obj["spec"]["engine"].get("port", 8000))
    assert annotations["prometheus.io/path"] == ENGINE_METRICS_PATH

    rules, shortened = rules_with_short_for(ALERT_FOR)
    assert shortened >= 3
    prometheus = Prometheus(prometheus_binary, tmp_path / "prometheus")
    prometheus.start(
        scrape_config(
            kube.kubeconfig, in_cluster_operator.namespace, in_cluster_operator.release, [namespace]
        ),
        rules,
    )
    try:
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
        marks["scraped"] = time.monotonic() - start

        # 2. Requests through the endpoint Service, while every dashboard query runs.
        tokens = f'vllm:generation_tokens_total{{namespace="{namespace}", name="{name}"}}'
        with Load(endpoint(kube, namespace, name), served, rate=1.0, limit=300) as load:

            def generating() -> bool:
                rate = prometheus.query(f"rate({tokens}[{RATE_INTERVAL}]) > 0")
                return bool(rate) and load.sent >= 5

            wait_for(generating, timeout=120, interval=1, what="Prometheus sees tokens generated")
            failures: list[str] = []
            answered: dict[str, int] = {}
            for title, expr in dashboard_targets():
                query = substituted(expr, namespace, name)
                try:
                    result = prometheus.query(query)
                except PromQLError as error:
                    failures.append(f"{title}: {query}: {error}")
                    continue
                if not result:
                    failures.append(f"{title}: {query}: no series")
                answered[query] = len(result)
            for variable, selector in dashboard_variables():
                if not prometheus.series(substituted(selector, namespace, name)):
                    failures.append(f"variable {variable}: {selector}: no series")
        assert load.failures == [], load.failures[:5]
        assert failures == [], "\n".join(failures) + f"\n{prometheus.describe()}"
        assert len(answered) == len(dashboard_targets())
        # The latency panels have data, not just series: requests were observed.
        ttft = prometheus.query(
            substituted(
                "histogram_quantile(0.5, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket"
                '{namespace=~"$namespace", name=~"$vllmcluster"}[$__rate_interval])))',
                namespace,
                name,
            )
        )
        assert ttft and not math.isnan(float(ttft[0]["value"][1])), ttft
        marks["queried"] = time.monotonic() - start

        # 3. Every rule of the chart's file evaluates, none fires on a healthy VLLMCluster.
        def evaluated() -> list[dict[str, Any]] | None:
            found = prometheus.rules()
            return found if found and all(r["health"] == "ok" for r in found) else None

        loaded = wait_for(evaluated, timeout=60, interval=1, what="every alert rule evaluated without error")
        assert {r["name"] for r in loaded} == {r["alert"] for g in rules["groups"] for r in g["rules"]}, (
            loaded
        )
        active = [a["labels"] for a in prometheus.alerts() if a["labels"].get("namespace") == namespace]
        assert active == [], active

        # 4. The fault: two engines asked for, one ready. RayvllmEnginesNotReady fires; scaling back resolves it.
        kube.kubectl("scale", f"vllm/{name}", "-n", namespace, "--replicas=2")
        faulted = time.monotonic()
        wait_for(
            lambda: "firing" in alert_states(prometheus, "RayvllmEnginesNotReady", namespace, name),
            timeout=120,
            interval=1,
            what="RayvllmEnginesNotReady firing",
        )
        marks["alertFiring"] = time.monotonic() - faulted
        kube.kubectl("scale", f"vllm/{name}", "-n", namespace, "--replicas=1")
        wait_for(
            lambda: not alert_states(prometheus, "RayvllmEnginesNotReady", namespace, name),
            timeout=180,
            interval=1,
            what="RayvllmEnginesNotReady resolved after scaling back",
        )
        marks["alertResolved"] = time.monotonic() - faulted
        assert (vllm(kube, namespace, name).get("status") or {}).get("readyReplicas") == 1
    finally:
        prometheus.stop()
        kube.kubectl(
            "delete", "vllmcluster", name, "-n", namespace, "--wait=true", "--timeout=180s", check=False
        )
    report(capsys, "real Prometheus: apply, scrape, every dashboard query, alert fire/resolve", marks)
