"""The Helm chart as the pinned helm renders it (`helm template`, no cluster): manifests/install.yaml is what
the chart renders now, the rendered Deployment and RBAC are least-privilege, values reach the Deployment,
the monitoring objects are opt-in. These need the pinned helm binary (hack/build-tools.sh), so they run in
the integration tier, after `make tools`; a missing one fails, never skips."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from hack.localcluster.kubecli import CHART, Helm

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
Manifest = dict[str, Any]

# The operator's permissions, exactly (README.md of the chart says why each is needed).
NAMESPACED_RULES: list[Manifest] = [
    {
        "apiGroups": ["rayvllm.io"],
        "resources": ["vllmclusters"],
        "verbs": ["get", "list", "watch", "patch", "update"],
    },
    {"apiGroups": ["rayvllm.io"], "resources": ["vllmclusters/status"], "verbs": ["get", "patch", "update"]},
    {"apiGroups": ["rayvllm.io"], "resources": ["vllmclusters/finalizers"], "verbs": ["update"]},
    {
        "apiGroups": ["ray.io"],
        "resources": ["rayclusters"],
        "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"],
    },
    {
        "apiGroups": [""],
        "resources": ["services"],
        "verbs": ["get", "list", "watch", "create", "patch", "update"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]
CLUSTER_RULES: list[Manifest] = [
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
]


def load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm.for_cluster(None, tmp_path_factory.mktemp("helm-home"))


def by_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def only(docs: list[Manifest], kind: str) -> Manifest:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


# ---- generated files are fresh ---------------------------------------------------------------------


def test_install_yaml_is_what_the_chart_renders_now() -> None:
    render = load_script(REPO / "hack" / "render-manifests.py")
    helm = render.Tools.from_cache().helm / "helm"
    rendered = render.render_install(helm)
    committed = (REPO / "manifests" / "install.yaml").read_text()
    assert committed == rendered, (
        "manifests/install.yaml is stale: run .venv/bin/python hack/render-manifests.py"
    )
    docs = [d for d in yaml.safe_load_all(committed) if d]
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "rayvllm-system", "labels": {"app.kubernetes.io/part-of": "rayvllm"}},
    }
    assert {d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")} == {
        p.name.removesuffix(".yaml") for p in (REPO / "crds").glob("*.yaml")
    }
    assert all(d["metadata"].get("namespace", "rayvllm-system") == "rayvllm-system" for d in docs)


def test_render_check_mode_agrees() -> None:
    render = load_script(REPO / "hack" / "render-manifests.py")
    assert render.stale_crds() == []
    assert render.main(["--check"]) == 0


# ---- the chart -------------------------------------------------------------------------------------


def test_default_deployment_is_hardened(helm: Helm) -> None:
    docs = helm.template("rayvllm", "rayvllm-system")
    deployment = only(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == only(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == "rayvllm/operator:0.1.0"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True and isinstance(sc["runAsUser"], int)
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert set(container["resources"]) == {"requests", "limits"}
    assert container["command"] == ["kopf"]
    assert container["args"] == [
        "run",
        "-m",
        "rayvllm.handlers",
        "--standalone",
        "--log-format=json",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--all-namespaces",
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"healthz": 8080, "metrics": 9090}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {
        "RAYVLLM_RESYNC_SECONDS": "15",
        "RAYVLLM_DASHBOARD_URL_TEMPLATE": "http://{cluster}-head-svc.{namespace}.svc:8265",
        "RAYVLLM_HTTP_TIMEOUT_SECONDS": "5",
        "RAYVLLM_UNHEALTHY_GRACE_SECONDS": "30",
        "RAYVLLM_CANARY_INTERVAL_SECONDS": "60",
        "RAYVLLM_CANARY_TIMEOUT_SECONDS": "10",
        "RAYVLLM_DELETION_DEADLINE_SECONDS": "300",
        "RAYVLLM_METRICS_PORT": "9090",
        "RAYVLLM_METRICS_HOST": "0.0.0.0",
    }


def test_values_reach_the_deployment(helm: Helm) -> None:
    docs = helm.template(
        "team",
        "ops",
        {
            "watch": {"mode": "namespaces", "namespaces": ["a", "b"]},
            "settings": {
                "resyncSeconds": 2.5,
                "engineHostOverride": "127.0.0.1",
                "httpTimeoutSeconds": 9,
                "unhealthyGraceSeconds": 4,
                "canaryIntervalSeconds": 0,
                "canaryTimeoutSeconds": 3,
                "deletionDeadlineSeconds": 45,
                "engineJobEnv": {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
            },
            "logFormat": "plain",
            "liveness": {"port": 18080},
            "image": {"repository": "example/op", "tag": "dev", "pullPolicy": "Always"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
        },
    )
    container = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][3:] == [
        "--standalone",
        "--log-format=plain",
        "--liveness=http://0.0.0.0:18080/healthz",
        "--namespace=a",
        "--namespace=b",
    ]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RAYVLLM_RESYNC_SECONDS"] == "2.5"
    assert env["RAYVLLM_ENGINE_HOST_OVERRIDE"] == "127.0.0.1"
    assert env["RAYVLLM_HTTP_TIMEOUT_SECONDS"] == "9"
    assert env["RAYVLLM_UNHEALTHY_GRACE_SECONDS"] == "4"
    assert env["RAYVLLM_CANARY_INTERVAL_SECONDS"] == "0"
    assert env["RAYVLLM_CANARY_TIMEOUT_SECONDS"] == "3"
    assert env["RAYVLLM_DELETION_DEADLINE_SECONDS"] == "45"
    assert json.loads(env["RAYVLLM_ENGINE_JOB_ENV"]) == {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    assert container["image"] == "example/op:dev" and container["imagePullPolicy"] == "Always"
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["nodeSelector"] == {
        "kubernetes.io/os": "linux"
    }


def test_cluster_mode_rbac_is_exactly_the_needed_rules(helm: Helm) -> None:
    docs = helm.template("rayvllm", "rayvllm-system")
    assert by_kind(docs, "Role") == [] and by_kind(docs, "RoleBinding") == []
    role = only(docs, "ClusterRole")
    assert role["rules"] == CLUSTER_RULES + NAMESPACED_RULES
    binding = only(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rayvllm-operator", "namespace": "rayvllm-system"}
    ]
    # Cluster-scoped names carry the release and its namespace: installs never collide.
    assert role["metadata"]["name"] == "rayvllm-operator-rayvllm-system"


def test_namespaced_mode_rbac_is_a_role_per_watched_namespace(helm: Helm) -> None:
    docs = helm.template("rv", "ops", {"watch": {"mode": "namespaces", "namespaces": ["a", "b"]}})
    assert only(docs, "ClusterRole")["rules"] == CLUSTER_RULES
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["a", "b"]
    assert all(r["rules"] == NAMESPACED_RULES for r in roles)
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["a", "b"]
    for b in bindings:
        assert b["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "rv-operator-ops",
        }
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "rv-operator", "namespace": "ops"}]


def test_no_rbac_rule_uses_a_wildcard(helm: Helm) -> None:
    for values in ({}, {"watch": {"mode": "namespaces", "namespaces": ["a"]}}):
        for doc in helm.template("rv", "ops", values):
            for rule in doc.get("rules", []):
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], (doc["kind"], rule)
                assert "resourceNames" not in rule and "nonResourceURLs" not in rule


def test_existing_service_account_and_no_rbac(helm: Helm) -> None:
    docs = helm.template(
        "rv", "ops", {"serviceAccount": {"create": False, "name": "mine"}, "rbac": {"create": False}}
    )
    assert sorted(d["kind"] for d in docs) == ["Deployment"]
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


# ---- monitoring (opt-in) ---------------------------------------------------------------------------

MONITORING_ON = {
    "monitoring": {
        "podMonitors": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}, "interval": "15s"},
        "prometheusRule": {"enabled": True, "labels": {"role": "alerts"}},
        "dashboard": {"enabled": True, "labels": {"grafana_dashboard": "1"}, "namespace": "grafana"},
    }
}
PROMETHEUS_OPERATOR_API = ("--api-versions", "monitoring.coreos.com/v1")


def test_the_operator_pod_carries_scrape_annotations_that_pod_annotations_override(helm: Helm) -> None:
    pod = only(helm.template("rayvllm", "rayvllm-system"), "Deployment")["spec"]["template"]
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9090",
        "prometheus.io/path": "/metrics",
    }
    values = {"podAnnotations": {"prometheus.io/scrape": "false", "team": "ml"}, "metrics": {"port": 9191}}
    pod = only(helm.template("rayvllm", "rayvllm-system", values), "Deployment")["spec"]["template"]
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "false",
        "prometheus.io/port": "9191",
        "prometheus.io/path": "/metrics",
        "team": "ml",
    }
    values = {"metrics": {"port": 9090, "scrapeAnnotations": False}}
    pod = only(helm.template("rayvllm", "rayvllm-system", values), "Deployment")["spec"]["template"]
    assert "annotations" not in pod["metadata"]


def test_monitoring_objects_are_off_by_default(helm: Helm) -> None:
    docs = helm.template("rayvllm", "rayvllm-system", None, *PROMETHEUS_OPERATOR_API)
    assert sorted({d["kind"] for d in docs}) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "ServiceAccount",
    ]


def test_monitors_and_rules_need_the_prometheus_operator_api(helm: Helm) -> None:
    """Without monitoring.coreos.com/v1 in the cluster only the dashboard ConfigMap renders: a PodMonitor
    there would fail the install."""
    docs = helm.template("rayvllm", "rayvllm-system", MONITORING_ON)
    assert by_kind(docs, "PodMonitor") == [] and by_kind(docs, "PrometheusRule") == []
    assert len(by_kind(docs, "ConfigMap")) == 1


def test_pod_monitors_select_the_operator_and_the_serving_engines(helm: Helm) -> None:
    docs = helm.template("rayvllm", "rayvllm-system", MONITORING_ON, *PROMETHEUS_OPERATOR_API)
    monitors = {d["metadata"]["name"]: d for d in by_kind(docs, "PodMonitor")}
    assert sorted(monitors) == ["rayvllm-operator", "rayvllm-operator-engines"]
    operator, engines = monitors["rayvllm-operator"], monitors["rayvllm-operator-engines"]
    for monitor in (operator, engines):
        assert monitor["metadata"]["namespace"] == "rayvllm-system"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = operator["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert operator["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "honorLabels": True}
    ]
    from rayvllm.builders.labels import MANAGED_BY_LABEL, MANAGER, SERVING, SERVING_LABEL
    from rayvllm.builders.raycluster import ENGINE_METRICS_PATH, ENGINE_PORT_NAME

    assert engines["spec"]["selector"] == {"matchLabels": {MANAGED_BY_LABEL: MANAGER, SERVING_LABEL: SERVING}}
    assert engines["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = engines["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == (
        ENGINE_PORT_NAME,
        ENGINE_METRICS_PATH,
        "15s",
    )
    assert endpoint["relabelings"] == [
        {"sourceLabels": ["__meta_kubernetes_pod_label_rayvllm_io_cluster"], "targetLabel": "name"}
    ]
    namespaced = {**MONITORING_ON, "watch": {"mode": "namespaces", "namespaces": ["a", "b"]}}
    docs = helm.template("rayvllm", "rayvllm-system", namespaced, *PROMETHEUS_OPERATOR_API)
    engines = next(d for d in by_kind(docs, "PodMonitor") if d["metadata"]["name"].endswith("-engines"))
    assert engines["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}


def test_the_prometheus_rule_and_the_dashboard_configmap_carry_the_chart_files(helm: Helm) -> None:
    docs = helm.template("rayvllm", "rayvllm-system", MONITORING_ON, *PROMETHEUS_OPERATOR_API)
    rule = only(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["role"] == "alerts"
    assert rule["spec"] == yaml.safe_load((CHART / "rules" / "rayvllm.rules.yaml").read_text())
    configmap = only(docs, "ConfigMap")
    assert configmap["metadata"]["namespace"] == "grafana"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = (CHART / "dashboards" / "rayvllm.json").read_text()
    assert json.loads(configmap["data"]["rayvllm.json"]) == json.loads(dashboard)
