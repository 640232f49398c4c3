"""Builders against expected YAML (tests/unit/expected/<case>.yaml: the RayCluster, then the Service, for
the VLLMCluster in tests/unit/cases/<case>.yaml). Regenerate with UPDATE_EXPECTED=1 and review the diff."""

from __future__ import annotations

import itertools
import math
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayvllm.builders import build_ray_cluster, build_service, ray_auth_secret_name
from rayvllm.builders.labels import CLUSTER_LABEL, SERVING_LABEL, cluster_labels
from rayvllm.builders.raycluster import HF_TOKEN_ENV, NO_DRAIN_ON_SIGTERM_ENV, ORPHAN_CLEANUP_ENV
from rayvllm.models import VLLMCluster, VLLMClusterSpec, parse_cluster
from rayvllm.placement import ENGINE_SLOT_RESOURCE

from .crdtools import schema_errors
from .inputs import load_yaml

HERE = Path(__file__).parent
CASES = sorted((HERE / "cases").glob("*.yaml"))
EXPECTED = HERE / "expected"
# KubeRay's RayCluster CRD, vendored (tests/unit/vendor/README.md) so this tier needs no `make tools`.
KUBERAY_RAYCLUSTER_CRD = HERE / "vendor" / "ray.io_rayclusters.yaml"
NAMESPACE = "team-a"
UID = "3f0c2a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b"

REQUIRED_CASES = {
    "minimal-gpu",
    "tp4-pp2",
    "replicas-3",
    "hf-token",
    "node-selectors-tolerations",
    "gcs-fault-tolerance",
    "suspended",
}


def _cluster(case: Path) -> VLLMCluster:
    return parse_cluster(load_yaml(case))


def _children(cluster: VLLMCluster) -> tuple[dict[str, Any], dict[str, Any]]:
    name = cluster.metadata.name
    assert name is not None
    return (
        build_ray_cluster(cluster.spec, name, NAMESPACE, UID),
        build_service(cluster.spec, name, NAMESPACE, UID),
    )


def test_required_cases_exist() -> None:
    assert {case.stem for case in CASES} >= REQUIRED_CASES


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.stem)
def test_children_match_expected_yaml(case: Path) -> None:
    rendered = yaml.safe_dump_all(_children(_cluster(case)), sort_keys=False)
    expected = EXPECTED / case.name
    if os.environ.get("UPDATE_EXPECTED") == "1":
        expected.write_text(rendered)
    assert expected.exists(), f"{expected} missing: run with UPDATE_EXPECTED=1 and review it"
    assert rendered == expected.read_text()


@cache
def _kuberay_schema() -> dict[str, Any]:
    """KubeRay's RayCluster v1 schema, from the vendored copy of the pinned version's CRD."""
    crd = yaml.load(KUBERAY_RAYCLUSTER_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (schema,) = (v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == "v1")
    return dict(schema)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.stem)
def test_ray_cluster_fits_kuberay_schema(case: Path) -> None:
    ray_cluster, _ = _children(_cluster(case))
    assert list(schema_errors(_kuberay_schema(), ray_cluster, "")) == []


def _head_and_worker(ray_cluster: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    (worker_group,) = ray_cluster["spec"]["workerGroupSpecs"]
    return ray_cluster["spec"]["headGroupSpec"], worker_group


def _spec(tp: int, pp: int, per_worker: int, replicas: int) -> VLLMClusterSpec:
    return VLLMClusterSpec.model_validate(
        {
            "model": {"source": "hf://org/model"},
            "engine": {"tensorParallelSize": tp, "pipelineParallelSize": pp},
            "replicas": replicas,
            "ray": {"image": "img", "worker": {"gpusPerWorker": per_worker}},
        }
    )


@pytest.mark.parametrize(
    ("tp", "pp", "per_worker", "replicas"),
    [
        combo
        for combo in itertools.product((1, 2, 4, 8), (1, 2), (1, 2, 4, 8), (0, 1, 3))
        if ((combo[0] * combo[1]) % combo[2] == 0 or combo[2] % (combo[0] * combo[1]) == 0)
        # one API server per worker pod: several engines need at least a whole worker each
        and (combo[3] <= 1 or combo[0] * combo[1] >= combo[2])
    ],
)
def test_worker_group_is_sized_for_all_engines(tp: int, pp: int, per_worker: int, replicas: int) -> None:
    spec = _spec(tp, pp, per_worker, replicas)
    head, worker = _head_and_worker(build_ray_cluster(spec, "x", NAMESPACE, UID))
    expected = math.ceil(replicas * tp * pp / per_worker)
    assert worker["replicas"] == worker["minReplicas"] == worker["maxReplicas"] == expected
    (container,) = worker["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == per_worker
    assert container["resources"]["requests"]["nvidia.com/gpu"] == per_worker
    assert worker["resources"] == {"GPU": str(per_worker), ENGINE_SLOT_RESOURCE: "1"}
    assert "gpu" not in yaml.safe_dump(head).lower(), "the head must not ask for GPUs"


def test_secrets_are_referenced_never_copied() -> None:
    cluster = _cluster(HERE / "cases" / "hf-token.yaml")
    ray_cluster, _ = _children(cluster)
    head, worker = _head_and_worker(ray_cluster)
    for group in (head, worker):
        (container,) = group["template"]["spec"]["containers"]
        env = {var["name"]: var for var in container["env"]}
        assert env[HF_TOKEN_ENV] == {
            "name": HF_TOKEN_ENV,
            "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
        }
        # The only literal values are the operator's own Ray switches: no usage reports, no node drain on
        # SIGTERM; on the workers, orphaned engine processes cleaned up by process group (ORPHAN_CLEANUP_ENV).
        switches = {"RAY_USAGE_STATS_ENABLED": "0", **NO_DRAIN_ON_SIGTERM_ENV}
        if group is worker:
            switches |= ORPHAN_CLEANUP_ENV
        assert {name: var["value"] for name, var in env.items() if "value" in var} == switches


def test_children_are_owned_and_labelled() -> None:
    ray_cluster, service = _children(_cluster(HERE / "cases" / "minimal-gpu.yaml"))
    for child in (ray_cluster, service):
        assert child["metadata"]["labels"] == cluster_labels("one-gpu")
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "rayvllm.io/v1alpha1",
            "kind": "VLLMCluster",
            "name": "one-gpu",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    assert service["spec"]["selector"] == {CLUSTER_LABEL: "one-gpu", SERVING_LABEL: "true"}
    for group in _head_and_worker(ray_cluster):
        assert group["template"]["metadata"]["labels"][CLUSTER_LABEL] == "one-gpu"


def test_builders_are_deterministic() -> None:
    cluster = _cluster(HERE / "cases" / "tp4-pp2.yaml")
    assert _children(cluster) == _children(cluster)


def test_ray_auth_secret_name_follows_kuberay_check_name() -> None:
    # KubeRay v1.6.1 utils.CheckName: keep the last 50 characters, never start with a digit or '-'.
    assert ray_auth_secret_name("llama") == "llama"
    assert ray_auth_secret_name("a" * 50) == "a" * 50
    assert ray_auth_secret_name("abc-" + "x" * 49) == "r" + "x" * 49
    assert ray_auth_secret_name("abc1" + "x" * 49) == "r" + "x" * 49
    assert len(ray_auth_secret_name("a" * 53)) == 50
