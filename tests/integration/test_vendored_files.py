"""The files vendored into the repository for the unit tier are exactly what `make tools` gets from the pinned
versions, so a copy can never go stale silently (a KubeRay bump without a new copy fails here). Needs the
built tools, no cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from hack.localcluster.controlplane import Tools
from hack.localcluster.procs import read_versions

pytestmark = pytest.mark.integration

VENDOR = Path(__file__).resolve().parents[1] / "unit" / "vendor"


def built_tools() -> Tools:
    try:
        return Tools.from_cache()
    except SystemExit as missing:  # raised for the command-line scripts; a test must fail, not exit
        pytest.fail(str(missing), pytrace=False)


def test_vendored_kuberay_raycluster_crd_is_the_pinned_versions() -> None:
    version = read_versions()["KUBERAY_VERSION"]
    built = built_tools().kuberay / "crds" / "ray.io_rayclusters.yaml"
    vendored = VENDOR / "ray.io_rayclusters.yaml"
    fix = f"run: cp {built} {vendored}, and name v{version} in {VENDOR / 'README.md'}"
    assert vendored.read_bytes() == built.read_bytes(), f"the vendored KubeRay CRD is not v{version}'s: {fix}"
    assert f"KubeRay v{version}'s RayCluster CRD" in (VENDOR / "README.md").read_text(), fix
