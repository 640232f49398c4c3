"""The operator under test, run as users run it (`kopf run -m rayvllm.handlers --all-namespaces`) from a
given operator source root, under the chart's ServiceAccount, with Ray unreachable so only the control loop
is measured."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from hack.localcluster.procs import cache_dir, log, run
from tests.support.operator import OperatorProcess

# Port 1 on loopback refuses at once: "no Ray here", quickly and truthfully (as the integration tier does).
UNREACHABLE_RAY = "http://127.0.0.1:1"


# What the operator image sets in its environment (the Dockerfile's ENV; tests/unit/test_bench.py checks the
# two agree), so the process measured allocates memory as the deployed one does.
IMAGE_ENV: Mapping[str, str] = MappingProxyType({"MALLOC_MMAP_THRESHOLD_": "131072"})

FIXED_ENV: Mapping[str, str] = MappingProxyType(
    {
        **IMAGE_ENV,
        "RAYVLLM_DASHBOARD_URL_TEMPLATE": UNREACHABLE_RAY,
        # Were an engine ever probed, loopback, never a kwok pod's fake address (this cluster has no
        # `unreachable` routes for those ranges: such a packet would leave through the default route).
        "RAYVLLM_ENGINE_HOST_OVERRIDE": "127.0.0.1",
        # Harmless unless RAYVLLM_METRICS_PORT is set in the environment: then it listens on loopback only.
        "RAYVLLM_METRICS_HOST": "127.0.0.1",
    }
)


def runtime_venv(project: Path) -> Path:
    """A venv holding only what the operator image installs: `project`'s runtime dependencies, pinned by its
    lock. The dev venv also holds the synchronous `kubernetes` client (for the tests), which kopf imports
    whenever it is installed: 8 MiB of RSS the deployed operator does not have. Built once per pyproject and
    lock (by their hash) under the cache."""
    pyproject, lock = project / "pyproject.toml", project / "requirements.lock"
    digest = hashlib.sha256(pyproject.read_bytes() + lock.read_bytes()).hexdigest()[:16]
    venv = cache_dir() / "venvs" / f"operator-runtime-{digest}"
    if (venv / "bin" / "kopf").exists():
        return venv
    log("bench", f"building the operator's runtime venv {venv.name} (only the image's dependencies)")
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    building = venv.with_name(venv.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    uv = ["python3", "-m", "uv"]
    # Relocatable: built under one name, renamed when complete, so a half-built venv is never used.
    run([*uv, "venv", "-q", "--relocatable", "--python", sys.executable, building])
    python = building / "bin" / "python"
    run([*uv, "pip", "install", "-q", "--python", python, "--constraint", lock, *dependencies], timeout=1200)
    building.rename(venv)
    return venv


class Operator:
    def __init__(self, operator_root: Path, kubeconfig: Path, log_path: Path) -> None:
        self.root = operator_root.resolve()
        self.venv = runtime_venv(self.root.parent)
        # Only this root is on the path: the runtime venv holds no rayvllm, so this root's operator (an older
        # commit's, say) is what gets imported.
        self.env = {"PYTHONPATH": str(self.root), **FIXED_ENV}
        self.process = OperatorProcess(kubeconfig, log_path, env=self.env, kopf=self.venv / "bin" / "kopf")

    def check_import(self) -> str:
        """Import the handlers as kopf will, and prove they come from `root` (and that the tree imports at
        all: a half-edited checkout fails here, before any cluster time is spent on it)."""
        probe = "import rayvllm, rayvllm.handlers; print(rayvllm.__file__)"
        result = run([self.venv / "bin" / "python", "-c", probe], env=self.env, check=False, timeout=120)
        if result.returncode != 0:
            raise SystemExit(f"the operator at {self.root} does not import:\n{result.stderr[-3000:]}")
        loaded = Path(result.stdout.strip().splitlines()[-1]).resolve()
        if not loaded.is_relative_to(self.root):
            raise SystemExit(f"rayvllm imported from {loaded}, not from {self.root}")
        return str(loaded)

    def start(self) -> None:
        self.process.start(("--all-namespaces",))

    @property
    def pid(self) -> int | None:
        proc = self.process.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def alive(self) -> bool:
        return self.process.alive()

    def stop(self) -> None:
        self.process.stop()

    def log_tail(self) -> str:
        return self.process.log_tail()


def environment_overrides() -> dict[str, str]:
    """RAYVLLM_* settings from the caller's environment that reach the operator (recorded in the results)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.startswith("RAYVLLM_") and not k.startswith("RAYVLLM_CLUSTER")
    }
