"""The Helm chart on the real control plane: lint, schema, install / upgrade / uninstall, repeated installs,
and the least-privilege RBAC checked as the chart's own ServiceAccount (a TokenRequest token, nothing
else)."""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.localcluster.kubecli import CHART, Helm
from tests.support.kube import Kube
from tests.support.operator_identity import can_i, grant_operator_identity
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

Manifest = dict[str, Any]

# (verb, resource, subresource): every permission the operator needs in a namespace it watches.
NAMESPACED_NEEDS = [
    *[(v, "vllmclusters.rayvllm.io", None) for v in ("get", "list", "watch", "patch", "update")],
    *[(v, "vllmclusters.rayvllm.io", "status") for v in ("get", "patch", "update")],
    ("update", "vllmclusters.rayvllm.io", "finalizers"),
    *[
        (v, "rayclusters.ray.io", None)
        for v in ("get", "list", "watch", "create", "patch", "update", "delete")
    ],
    *[(v, "services", None) for v in ("get", "list", "watch", "create", "patch", "update")],
    *[(v, "pods", None) for v in ("get", "list", "watch", "patch")],
    ("get", "secrets", None),
    ("create", "events", None),
    ("patch", "events", None),
]
CLUSTER_NEEDS = [
    *[(v, "customresourcedefinitions.apiextensions.k8s.io") for v in ("get", "list", "watch")],
    *[(v, "namespaces") for v in ("get", "list", "watch")],
]
# Things the operator must not be able to do anywhere.
NAMESPACED_DENIED = [
    ("list", "secrets", None),
    ("watch", "secrets", None),
    ("delete", "secrets", None),
    ("create", "secrets", None),
    ("create", "vllmclusters.rayvllm.io", None),
    ("delete", "vllmclusters.rayvllm.io", None),
    ("create", "pods", None),
    ("delete", "pods", None),
    ("create", "pods", "exec"),
    ("delete", "services", None),
    ("get", "configmaps", None),
    ("create", "serviceaccounts", "token"),
    ("create", "rolebindings.rbac.authorization.k8s.io", None),
    ("create", "deployments.apps", None),
    ("*", "*", None),
]
CLUSTER_DENIED = [
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("get", "nodes"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "namespaces"),
    ("create", "namespaces"),
]


@pytest.fixture
def helm(kube: Kube, tmp_path: Path) -> Helm:
    return Helm.for_cluster(kube.kubeconfig, tmp_path / "helm-home")


@pytest.fixture
def extra_namespaces(kube: Kube, namespace: str) -> Iterator[list[str]]:
    """Two more fresh namespaces (watched / not watched), deleted afterwards."""
    names = [f"{namespace[:50]}-{suffix}" for suffix in ("a", "b")]
    for name in names:
        kube.kubectl("create", "namespace", name)
    try:
        yield names
    finally:
        kube.kubectl("delete", "namespace", *names, "--wait=false", check=False)


def release_name() -> str:
    return f"rv-{secrets.token_hex(3)}"


def operator_pods(kube: Kube, namespace: str, release: str) -> list[Manifest]:
    found = kube.get_json("pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")
    return list(found["items"]) if found else []


def running_pod(kube: Kube, namespace: str, release: str, args_contain: str) -> Manifest | None:
    """The release's operator pod once scheduled on a (kwok) node, Running and Ready with the given arg."""
    for pod in operator_pods(kube, namespace, release):
        status = pod.get("status", {})
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
        args = pod["spec"]["containers"][0]["args"]
        if (
            status.get("phase") == "Running"
            and ready
            and pod["spec"].get("nodeName")
            and args_contain in args
            and not pod["metadata"].get("deletionTimestamp")
        ):
            return pod
    return None


def release_objects(kube: Kube, namespaces: list[str], release: str) -> list[str]:
    """Every object labelled with the release, namespaced (in `namespaces`) and cluster-scoped."""
    selector = f"app.kubernetes.io/instance={release}"
    found: list[str] = []
    for ns in namespaces:
        listed = kube.get_json(
            "deployments,serviceaccounts,roles,rolebindings,pods", "-n", ns, "-l", selector
        )
        found += [f"{o['kind']}/{ns}/{o['metadata']['name']}" for o in (listed or {}).get("items", [])]
    listed = kube.get_json("clusterroles,clusterrolebindings", "-l", selector)
    found += [f"{o['kind']}/{o['metadata']['name']}" for o in (listed or {}).get("items", [])]
    return found


# ---- (a) lint, (b) schema ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [[], ["--set", "watch.mode=namespaces", "--set", "watch.namespaces={team-a,team-b}"]],
    ids=["cluster-mode", "namespaced-mode"],
)
def test_helm_lint_is_clean(helm: Helm, values: list[str]) -> None:
    result = helm.run("lint", "--strict", str(CHART), *values)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout, result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set", "bogus=1"], "additional properties 'bogus' not allowed"),
        (["--set", "watch.bogus=1"], "additional properties 'bogus' not allowed"),
        (["--set", "settings.resyncSeconds=soon"], "got string, want number"),
        (["--set-string", "liveness.port=8080"], "got string, want integer"),
        (["--set", "replicaCount=2"], "value must be 1"),
        (["--set", "watch.mode=some"], "value must be one of 'cluster', 'namespaces'"),
        (["--set", "watch.mode=namespaces"], "minItems: got 0, want 1"),
        (["--set", "logFormat=xml"], "value must be one of 'json', 'plain', 'full'"),
    ],
    ids=[
        "unknown-key",
        "unknown-nested-key",
        "number-as-string",
        "port-as-string",
        "two-replicas",
        "bad-mode",
        "namespaces-mode-without-namespaces",
        "bad-log-format",
    ],
)
def test_values_schema_rejects(helm: Helm, flags: list[str], message: str) -> None:
    result = helm.run("template", "rv", str(CHART), *flags, check=False)
    assert result.returncode != 0, f"helm accepted {flags}:\n{result.stdout[:500]}"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


# ---- (c) install, upgrade, uninstall ---------------------------------------------------------------


def test_install_upgrade_uninstall(
    kube: Kube, helm: Helm, namespace: str, extra_namespaces: list[str], tmp_path: Path
) -> None:
    release, watched = release_name(), extra_namespaces[0]
    cluster_name = f"{release}-operator-{namespace}"

    started = time.monotonic()
    helm.run("install", release, str(CHART), "--namespace", namespace, "--wait", "--timeout=120s")
    pod = wait_for(
        lambda: running_pod(kube, namespace, release, "--all-namespaces"),
        timeout=60,
        what="the operator pod Running and Ready on a node",
    )
    installed_in = time.monotonic() - started
    assert pod["spec"]["nodeName"].startswith(("gpu-node-", "cpu-node-")), pod["spec"]["nodeName"]
    assert pod["spec"]["serviceAccountName"] == f"{release}-operator"
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    deployment = kube.get_json("deployment", f"{release}-operator", "-n", namespace)
    assert deployment["status"]["availableReplicas"] == 1
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "512Mi"
    role = kube.get_json("clusterrole", cluster_name)
    assert any("vllmclusters" in rule["resources"] for rule in role["rules"]), role["rules"]
    assert kube.get_json("clusterrolebinding", cluster_name)["subjects"][0]["namespace"] == namespace
    assert kube.get_json("crd", "vllmclusters.rayvllm.io"), "the chart's crds/ must be installed"
    status = helm.run("status", release, "--namespace", namespace).stdout
    assert "STATUS: deployed" in status and "REVISION: 1" in status, status

    # Upgrade: new resources, and from cluster-wide to one watched namespace.
    old_uid = pod["metadata"]["uid"]
    upgrade_values = tmp_path / "upgrade.yaml"
    upgrade_values.write_text(
        "resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {cpu: '1', memory: 1Gi}}\n"
        f"watch: {{mode: namespaces, namespaces: [{watched}]}}\n"
    )
    started = time.monotonic()
    helm.run(
        "upgrade",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--values",
        str(upgrade_values),
        "--wait",
        "--timeout=120s",
    )
    pod = wait_for(
        lambda: running_pod(kube, namespace, release, f"--namespace={watched}"),
        timeout=60,
        what="the upgraded operator pod (namespaced mode) Running and Ready",
    )
    upgraded_in = time.monotonic() - started
    assert pod["metadata"]["uid"] != old_uid
    assert "--all-namespaces" not in pod["spec"]["containers"][0]["args"]
    deployment = kube.get_json("deployment", f"{release}-operator", "-n", namespace)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    assert deployment["metadata"]["generation"] == 2
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    # Recreate: the old pod is gone, never two operators at once.
    wait_for(
        lambda: [p for p in operator_pods(kube, namespace, release) if p["metadata"]["uid"] == old_uid] == [],
        timeout=60,
        what="the pre-upgrade operator pod to be gone",
    )
    role = kube.get_json("clusterrole", cluster_name)
    assert all("vllmclusters" not in rule["resources"] for rule in role["rules"]), role["rules"]
    assert kube.get_json("role", cluster_name, "-n", watched), "a Role in the watched namespace"
    assert kube.get_json("rolebinding", cluster_name, "-n", watched)
    assert "REVISION: 2" in helm.run("status", release, "--namespace", namespace).stdout

    # Uninstall: everything of the release goes, the CRD stays (Helm never deletes crds/).
    started = time.monotonic()
    helm.run("uninstall", release, "--namespace", namespace, "--wait", "--timeout=120s")
    leftovers = wait_for(
        lambda: release_objects(kube, [namespace, watched], release) == [],
        timeout=90,
        what="every object of the release to be deleted",
    )
    uninstalled_in = time.monotonic() - started
    assert leftovers
    assert kube.get_json("crd", "vllmclusters.rayvllm.io"), "uninstall must keep the CRD"
    assert helm.run("status", release, "--namespace", namespace, check=False).returncode != 0
    print(f"helm install {installed_in:.1f}s, upgrade {upgraded_in:.1f}s, uninstall {uninstalled_in:.1f}s")


def test_same_release_name_installs_side_by_side(
    kube: Kube, helm: Helm, namespace: str, extra_namespaces: list[str]
) -> None:
    """Cluster-scoped names carry the release namespace: one release name, two namespaces, no conflict."""
    release = release_name()
    spaces = [namespace, extra_namespaces[1]]
    try:
        for ns in spaces:
            helm.run("install", release, str(CHART), "--namespace", ns, "--wait", "--timeout=120s")
        for ns in spaces:
            wait_for(
                functools.partial(running_pod, kube, ns, release, "--all-namespaces"),
                timeout=60,
                what=f"the operator pod in {ns}",
            )
            binding = kube.get_json("clusterrolebinding", f"{release}-operator-{ns}")
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": f"{release}-operator", "namespace": ns}
            ]
    finally:
        for ns in spaces:
            helm.run("uninstall", release, "--namespace", ns, "--wait", "--timeout=120s", check=False)
    wait_for(
        lambda: release_objects(kube, spaces, release) == [],
        timeout=90,
        what="both releases to be removed",
    )


def test_monitoring_objects_follow_the_apis_the_cluster_has(kube: Kube, helm: Helm, namespace: str) -> None:
    """Against the real API server, which has no Prometheus Operator: with every monitoring value on, the
    chart leaves out the PodMonitors and the PrometheusRule (the API server would refuse them) and keeps the
    dashboard ConfigMap (`--validate` renders with the API server's own list of APIs)."""
    assert kube.get_json("crd", "podmonitors.monitoring.coreos.com") is None
    flags = [
        "--set",
        "monitoring.podMonitors.enabled=true",
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.dashboard.enabled=true",
    ]
    rendered = helm.run("template", "rv", str(CHART), "--namespace", namespace, "--validate", *flags)
    kinds = sorted({doc["kind"] for doc in yaml.safe_load_all(rendered.stdout) if doc})
    assert "ConfigMap" in kinds and "Deployment" in kinds, kinds
    assert "PodMonitor" not in kinds and "PrometheusRule" not in kinds, kinds
    # Rendered offline as if the API existed, the PodMonitors are what this API server refuses.
    offline = helm.run(
        "template",
        "rv",
        str(CHART),
        "--namespace",
        namespace,
        "--api-versions",
        "monitoring.coreos.com/v1",
        "--show-only",
        "templates/podmonitors.yaml",
        *flags,
    )
    refused = kube.kubectl("apply", "--dry-run=server", "-f", "-", stdin=offline.stdout, check=False)
    assert refused.returncode != 0 and "PodMonitor" in refused.stderr, refused.stderr


# ---- (e) RBAC as the chart's ServiceAccount --------------------------------------------------------


def test_cluster_mode_identity_has_exactly_the_needed_permissions(
    kube: Kube, namespace: str, extra_namespaces: list[str], tmp_path: Path
) -> None:
    identity = grant_operator_identity(kube, namespace, tmp_path)
    as_operator = identity.kube(kube.kubectl_path)
    whoami = as_operator.kubectl("auth", "whoami", "-o", "json").stdout
    assert f'"username": "{identity.username}"' in whoami, whoami

    elsewhere = extra_namespaces[0]
    for verb, resource, sub in NAMESPACED_NEEDS:
        for ns in (namespace, elsewhere):
            assert can_i(as_operator, verb, resource, namespace=ns, subresource=sub), (
                verb,
                resource,
                sub,
                ns,
            )
    for verb in ("list", "watch"):
        for resource in ("vllmclusters.rayvllm.io", "rayclusters.ray.io", "pods", "services"):
            assert can_i(as_operator, verb, resource, all_namespaces=True), (verb, resource)
    for verb, resource in CLUSTER_NEEDS:
        assert can_i(as_operator, verb, resource), (verb, resource)

    for verb, resource, sub in NAMESPACED_DENIED:
        assert not can_i(as_operator, verb, resource, namespace=elsewhere, subresource=sub), (
            verb,
            resource,
            sub,
        )
    for verb, resource in CLUSTER_DENIED:
        assert not can_i(as_operator, verb, resource), (verb, resource)

    # Not only the review API: a real request is refused too.
    refused = as_operator.kubectl("get", "secrets", "-n", elsewhere, check=False)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr, refused.stderr
    assert as_operator.kubectl("get", "pods", "-n", elsewhere).returncode == 0


def test_namespaced_mode_identity_is_confined_to_watched_namespaces(
    kube: Kube, namespace: str, extra_namespaces: list[str], tmp_path: Path
) -> None:
    watched, unwatched = extra_namespaces
    identity = grant_operator_identity(kube, namespace, tmp_path, watch_namespaces=[watched])
    as_operator = identity.kube(kube.kubectl_path)

    for verb, resource, sub in NAMESPACED_NEEDS:
        assert can_i(as_operator, verb, resource, namespace=watched, subresource=sub), (verb, resource, sub)
        # Neither an unwatched namespace nor the operator's own namespace is reachable.
        for ns in (unwatched, namespace):
            assert not can_i(as_operator, verb, resource, namespace=ns, subresource=sub), (verb, resource, ns)
    assert not can_i(as_operator, "list", "vllmclusters.rayvllm.io", all_namespaces=True)
    for verb, resource in CLUSTER_NEEDS:
        assert can_i(as_operator, verb, resource), (verb, resource)
    for verb, resource, sub in NAMESPACED_DENIED:
        assert not can_i(as_operator, verb, resource, namespace=watched, subresource=sub), (
            verb,
            resource,
            sub,
        )
    for verb, resource in CLUSTER_DENIED:
        assert not can_i(as_operator, verb, resource), (verb, resource)

    assert as_operator.kubectl("get", "vllmclusters.rayvllm.io", "-n", watched).returncode == 0
    refused = as_operator.kubectl("get", "vllmclusters.rayvllm.io", "-n", unwatched, check=False)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr, refused.stderr
