"""The VLLMCluster API on the real control plane with the real KubeRay: samples, scale, suspend, upgrade,
delete, and deletion while the operator is down."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rayvllm.builders import ray_auth_secret_name
from tests.conftest import INTEGRATION_OPERATOR_ENV
from tests.support.kube import Kube
from tests.support.operator import OperatorProcess
from tests.support.operator_identity import operator_kubeconfig
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO / "manifests" / "samples").glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def vllm(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    found = kube.get_json("vllmcluster", name, "-n", namespace)
    return dict(found) if found else None


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return {}


def ray_pods(kube: Kube, namespace: str, name: str, node_type: str | None = None) -> list[dict[str, Any]]:
    selector = f"ray.io/cluster={name}" + (f",ray.io/node-type={node_type}" if node_type else "")
    found = kube.get_json("pods", "-n", namespace, "-l", selector)
    return [p for p in (found or {}).get("items", []) if not p["metadata"].get("deletionTimestamp")]


def running_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status", {})
    return status.get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
    )


def wait_ray_cluster_ready(
    kube: Kube, namespace: str, name: str, workers: int, timeout: float = 120
) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = vllm(kube, namespace, name)
        status = (obj or {}).get("status") or {}
        rc = status.get("rayCluster") or {}
        ok = (
            condition(obj, "RayClusterReady").get("status") == "True"
            and rc.get("desiredWorkers") == workers
            and rc.get("readyWorkers") == workers
            and status.get("observedGeneration") == (obj or {}).get("metadata", {}).get("generation")
        )
        return obj if ok else None

    return wait_for(ready, timeout=timeout, what=f"{namespace}/{name} RayClusterReady with {workers} workers")


def create_secret(kube: Kube, namespace: str, name: str, key: str) -> None:
    kube.kubectl(
        "create", "secret", "generic", name, "-n", namespace, f"--from-literal={key}=not-a-real-token"
    )


def create_bound_pvc(kube: Kube, namespace: str, claim: str) -> None:
    """A PVC bound to a static PV: no provisioner runs in this cluster, so the PV is made by hand and
    the real PV controller binds them."""
    pv = f"{namespace}-{claim}"[:63]
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteMany"],
                "hostPath": {"path": f"/tmp/{pv}"},
                "storageClassName": "",
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
    )
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "10Gi"}},
                "storageClassName": "",
                "volumeName": pv,
            },
        },
        namespace,
    )


def prepare_dependencies(kube: Kube, namespace: str, manifest: dict[str, Any]) -> None:
    spec = manifest["spec"]
    for ref in (spec["model"].get("hfTokenSecretRef"), spec.get("engine", {}).get("apiKeySecretRef")):
        if ref:
            create_secret(kube, namespace, ref["name"], ref["key"])
    if spec.get("modelCache"):
        create_bound_pvc(kube, namespace, spec["modelCache"]["claimName"])
    source = spec["model"]["source"]
    if source.startswith("pvc://"):
        create_bound_pvc(kube, namespace, source.removeprefix("pvc://").split("/")[0])


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.stem for s in SAMPLES])
def test_sample_reaches_ray_cluster_ready(
    kube: Kube, namespace: str, operator: OperatorProcess, sample: Path
) -> None:
    manifest = load(sample)
    name = manifest["metadata"]["name"]
    prepare_dependencies(kube, namespace, manifest)
    kube.kubectl("apply", "-n", namespace, "-f", str(sample))

    spec = manifest["spec"]
    tp = spec.get("engine", {}).get("tensorParallelSize", 1)
    pp = spec.get("engine", {}).get("pipelineParallelSize", 1)
    per_worker = spec["ray"].get("worker", {}).get("gpusPerWorker", 1)
    replicas = spec.get("replicas", 1)
    workers = -(-replicas * tp * pp // per_worker)
    obj = wait_ray_cluster_ready(kube, namespace, name, workers)

    # KubeRay accepted our RayCluster and made pods: head on any node without GPUs, workers on GPU nodes.
    rc = kube.get_json("raycluster", name, "-n", namespace)
    assert rc["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    # Token auth on the dashboard: KubeRay generated the token Secret the operator presents.
    assert rc["spec"]["authOptions"] == {"mode": "token"}
    token_secret = kube.get_json("secret", ray_auth_secret_name(name), "-n", namespace)
    assert token_secret is not None and "auth_token" in token_secret["data"]
    head = ray_pods(kube, namespace, name, "head")
    assert len(head) == 1 and running_ready(head[0])
    for container in head[0]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in (container.get("resources", {}).get("limits") or {})
    workers_found = ray_pods(kube, namespace, name, "worker")
    assert len(workers_found) == workers
    assert all(running_ready(p) and p["spec"]["nodeName"].startswith("gpu-node-") for p in workers_found)
    assert all(
        p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == str(per_worker)
        for p in workers_found
    )

    # The integration tier has no Ray: once the pods are ready the operator cannot reach the dashboard,
    # launches nothing, and says so. Ready must not be True.
    def dashboard_unreachable() -> dict[str, Any] | None:
        found = vllm(kube, namespace, name)
        return found if condition(found, "Degraded").get("reason") == "RayDashboardUnreachable" else None

    obj = wait_for(dashboard_unreachable, timeout=60, what="Degraded=RayDashboardUnreachable")
    ready = condition(obj, "Ready")
    assert ready["status"] == "False"
    assert ready["reason"] == "RayDashboardUnreachable", ready
    assert obj["status"]["phase"] == "Degraded"
    assert obj["status"]["engines"] == [] and obj["status"]["readyReplicas"] == 0
    assert (
        obj["status"]["endpoint"]["url"]
        == f"http://{name}.{namespace}.svc:{spec.get('engine', {}).get('port', 8000)}/v1"
    )
    svc = kube.get_json("service", name, "-n", namespace)
    assert svc["spec"]["selector"] == {"rayvllm.io/cluster": name, "rayvllm.io/serving": "true"}

    # The operator's metrics agree with the status.
    assert operator.metrics_url is not None
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(httpx.get(operator.metrics_url, timeout=10).text)
        for sample in family.samples
    }
    ours = (("name", name), ("namespace", namespace))
    assert samples[("rayvllm_vllmcluster_phase", tuple(sorted((*ours, ("phase", "Degraded")))))] == 1
    assert samples[("rayvllm_vllmcluster_phase", tuple(sorted((*ours, ("phase", "Ready")))))] == 0
    assert samples[("rayvllm_engines_desired", ours)] == replicas
    assert samples[("rayvllm_engines_ready", ours)] == 0

    # `kubectl get vllm` shows the printer columns.
    table = kube.kubectl("get", "vllm", name, "-n", namespace).stdout
    header = table.splitlines()[0].split()
    for column in ("MODEL", "TP", "PP", "REPLICAS", "READY", "PHASE", "ENDPOINT", "AGE"):
        assert column in header, table
    assert "Degraded" in table
    # `kubectl wait --for=condition=Ready` understands our conditions (it times out: no engine yet).
    waited = kube.kubectl(
        "wait", "--for=condition=RayClusterReady", f"vllm/{name}", "-n", namespace, "--timeout=10s"
    )
    assert "condition met" in waited.stdout


def test_scale_suspend_resume_recreate_delete(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    exercise_lifecycle(kube, namespace)


@pytest.mark.parametrize("mode", ["cluster", "namespaced"])
def test_lifecycle_under_the_charts_least_privilege_identity(
    kube: Kube, namespace: str, operator: OperatorProcess, tmp_path: Path, mode: str
) -> None:
    """RBAC proven by use: the operator runs with a token of the chart's ServiceAccount, granted exactly
    the chart's rules, and the whole lifecycle works. Any missing permission fails a step here."""
    kubeconfig = operator_kubeconfig(
        kube, namespace, tmp_path, watch_namespaces=[namespace] if mode == "namespaced" else None
    )
    confined = OperatorProcess(kubeconfig, tmp_path / "operator.log", env=INTEGRATION_OPERATOR_ENV)
    operator.stop()  # the session operator watches every namespace: two would fight over the object
    try:
        confined.start(extra_args=(f"--namespace={namespace}",))
        try:
            exercise_lifecycle(kube, namespace)
            assert confined.alive()
            log = confined.log_text()
            assert "Forbidden" not in log and " 403 " not in log, confined.log_tail()
        finally:
            confined.stop()
    finally:
        operator.start()


def exercise_lifecycle(kube: Kube, namespace: str) -> None:
    """Create, scale 1 -> 3 -> 1, suspend, resume, change the image, delete; asserting each outcome."""
    manifest = load(REPO / "manifests" / "samples" / "minimal-gpu.yaml")
    name = manifest["metadata"]["name"]
    kube.apply(manifest, namespace)
    wait_ray_cluster_ready(kube, namespace, name, workers=1)

    # Scale through the /scale subresource, up then down.
    for replicas in (3, 1):
        kube.kubectl("scale", f"vllm/{name}", "-n", namespace, f"--replicas={replicas}")
        obj = wait_ray_cluster_ready(kube, namespace, name, workers=replicas)
        assert obj["status"]["replicas"] == replicas
        group = kube.get_json("raycluster", name, "-n", namespace)["spec"]["workerGroupSpecs"][0]
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == replicas

        def worker_pods_are(count: int = replicas) -> bool:
            return len(ray_pods(kube, namespace, name, "worker")) == count

        wait_for(worker_pods_are, timeout=60, what=f"{replicas} worker pods")
    scale = json.loads(
        kube.kubectl(
            "get", "--raw", f"/apis/rayvllm.io/v1alpha1/namespaces/{namespace}/vllmclusters/{name}/scale"
        ).stdout
    )
    assert (
        scale["spec"]["replicas"] == 1
        and scale["status"]["selector"] == f"rayvllm.io/cluster={name},rayvllm.io/serving=true"
    )

    # Suspend frees every pod and shows phase Suspended; resuming brings them back.
    kube.kubectl("patch", "vllm", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for(
        lambda: (vllm(kube, namespace, name) or {}).get("status", {}).get("phase") == "Suspended",
        timeout=60,
        what="phase Suspended",
    )
    wait_for(
        lambda: ray_pods(kube, namespace, name) == [], timeout=90, what="all Ray pods removed while suspended"
    )
    kube.kubectl("patch", "vllm", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_ray_cluster_ready(kube, namespace, name, workers=1)

    # An image change recreates the pods (upgradeStrategy Recreate).
    before = {p["metadata"]["name"] for p in ray_pods(kube, namespace, name)}
    kube.kubectl(
        "patch",
        "vllm",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"ray":{"image":"vllm/vllm-openai:v0.33.1"}}}',
    )

    def recreated() -> bool:
        current = ray_pods(kube, namespace, name)
        return (
            len(current) == 2
            and not before & {p["metadata"]["name"] for p in current}
            and all(p["spec"]["containers"][0]["image"] == "vllm/vllm-openai:v0.33.1" for p in current)
            and all(running_ready(p) for p in current)
        )

    wait_for(recreated, timeout=120, what="head and worker recreated with the new image")
    wait_ray_cluster_ready(kube, namespace, name, workers=1)

    # Delete: every child goes and the finalizer is released.
    kube.kubectl("delete", "vllm", name, "-n", namespace, "--timeout=60s")
    wait_for(
        lambda: kube.get_json("raycluster", name, "-n", namespace) is None, timeout=60, what="RayCluster gone"
    )
    wait_for(lambda: kube.get_json("service", name, "-n", namespace) is None, timeout=60, what="Service gone")
    wait_for(lambda: ray_pods(kube, namespace, name) == [], timeout=90, what="Ray pods gone")
    reasons = {e["reason"] for e in kube.events(namespace, name)}
    assert {"Provisioning", "RayDashboardUnreachable", "Suspended"} <= reasons, reasons


def test_deleted_while_operator_down_is_cleaned_up_on_restart(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    manifest = load(REPO / "manifests" / "samples" / "minimal-gpu.yaml")
    name = manifest["metadata"]["name"]
    kube.apply(manifest, namespace)
    wait_ray_cluster_ready(kube, namespace, name, workers=1)
    operator.stop()
    try:
        kube.kubectl("delete", "vllm", name, "-n", namespace, "--wait=false")
        obj = vllm(kube, namespace, name)
        # Held by our finalizer while nobody can clean up.
        assert obj is not None and obj["metadata"].get("deletionTimestamp")
        assert "rayvllm.io/finalizer" in obj["metadata"]["finalizers"]
    finally:
        operator.start()
    wait_for(
        lambda: vllm(kube, namespace, name) is None, timeout=60, what="the finalizer released after restart"
    )
    wait_for(
        lambda: kube.get_json("raycluster", name, "-n", namespace) is None, timeout=60, what="RayCluster gone"
    )
    wait_for(lambda: ray_pods(kube, namespace, name) == [], timeout=90, what="Ray pods gone")
