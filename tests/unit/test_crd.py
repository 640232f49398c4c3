"""The CRD in crds/ is fresh, structural, bounded for CEL, and agrees with the pydantic models: the same
objects are refused by both, and both apply the same defaults."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import celpy
import pytest
import yaml
from pydantic import ValidationError

from rayvllm import API_GROUP, API_VERSION, KIND, PLURAL
from rayvllm.crdgen import crd, main, openapi_schema, render
from rayvllm.models import API_VERSION_STRING, VLLMCluster
from rayvllm.models.spec import OWNED_ENGINE_FLAGS

from .crdtools import Schema, admission_errors, apply_defaults, cel_errors, schema_errors
from .inputs import CRD_FILE, load_yaml, samples


def test_crd_file_is_generated_from_models() -> None:
    assert CRD_FILE.read_text() == render(), (
        "crds/ is stale: run `cd operator && python -m rayvllm.crdgen --output ../crds/vllmclusters.rayvllm.io.yaml`"
    )


def test_check_mode_reports_staleness(tmp_path: Any) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text("old\n")
    assert main(["--check", str(stale)]) == 1
    assert main(["--check", str(CRD_FILE)]) == 0


def test_names_and_version() -> None:
    doc = yaml.safe_load(CRD_FILE.read_text())
    assert doc["metadata"]["name"] == f"{PLURAL}.{API_GROUP}"
    names = doc["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (KIND, PLURAL, ["vllm"])
    (version,) = doc["spec"]["versions"]
    assert version["name"] == API_VERSION and version["served"] and version["storage"]
    assert f"{API_GROUP}/{API_VERSION}" == API_VERSION_STRING


def test_subresources_and_printer_columns() -> None:
    (version,) = crd()["spec"]["versions"]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns == [
        "Model",
        "TP",
        "PP",
        "Replicas",
        "Ready",
        "Updated",
        "Phase",
        "Endpoint",
        "GPUs",
        "Age",
    ]


def _nodes(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}[*]")
    if "items" in schema:
        yield from _nodes(schema["items"], f"{path}[]")


def test_schema_is_structural() -> None:
    for path, node in _nodes(openapi_schema()):
        assert "$ref" not in node and "nullable" not in node and "title" not in node, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") and "type" not in node, path
        else:
            assert "type" in node, path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert path == ".status.kopf", f"{path}: keep unknown fields only where unavoidable"


def test_every_field_is_described() -> None:
    for path, node in _nodes(openapi_schema()):
        for name, child in node.get("properties", {}).items():
            assert child.get("description") or f"{path}.{name}" == ".metadata", f"{path}.{name}"


def test_cel_rules_compile_and_lists_are_bounded() -> None:
    environment = celpy.Environment()
    for path, node in _nodes(openapi_schema()):
        for rule in node.get("x-kubernetes-validations", []):
            environment.compile(rule["rule"])
            assert rule["message"], path
            # The API server estimates CEL cost from maxItems/maxLength; unbounded lists blow the budget.
            if node.get("type") == "array":
                assert "maxItems" in node, path
                if node["items"]["type"] == "string":
                    assert "maxLength" in node["items"], path
            if node.get("type") == "string":
                assert "maxLength" in node, path


def test_defaults_satisfy_their_own_rules() -> None:
    """The API server checks each `default` against its node, CEL rules included, as written: nested
    defaults are not applied first (a rule reading a field absent from `default: {}` fails)."""
    for path, node in _nodes(openapi_schema()):
        if "default" in node:
            assert list(schema_errors(node, node["default"], path)) == []
            assert list(cel_errors(node, node["default"], path)) == []


@pytest.mark.parametrize("path", samples(), ids=lambda path: path.stem)
def test_samples_pass_both(path: Any) -> None:
    body = load_yaml(path)
    VLLMCluster.model_validate(body)
    assert admission_errors(body) == []


def _without_empty(value: Any) -> Any:
    """Pydantic fills lists and maps with empty defaults that the CRD leaves absent."""
    if isinstance(value, dict):
        pruned = {key: _without_empty(item) for key, item in value.items()}
        return {key: item for key, item in pruned.items() if item not in ({}, [])}
    if isinstance(value, list):
        return [_without_empty(item) for item in value]
    return value


@pytest.mark.parametrize("path", samples(), ids=lambda path: path.stem)
def test_crd_defaults_equal_model_defaults(path: Any) -> None:
    body = load_yaml(path)
    defaulted = apply_defaults(openapi_schema(), body)["spec"]
    assert _without_empty(defaulted) == _without_empty(VLLMCluster.model_validate(body).spec.to_wire())


def _cluster(spec_overrides: dict[str, Any], name: str = "agree") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"source": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
        "ray": {"image": "vllm/vllm-openai:v0.33.0"},
    }
    for dotted, value in spec_overrides.items():
        *parents, leaf = dotted.split(".")
        node = spec
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return {"apiVersion": API_VERSION_STRING, "kind": KIND, "metadata": {"name": name}, "spec": spec}


def _models_accept(body: dict[str, Any]) -> bool:
    try:
        VLLMCluster.model_validate(body)
    except ValidationError:
        return False
    return True


def _variants() -> Iterator[dict[str, Any]]:
    for tp, pp, per_worker, backend in itertools.product(
        (1, 2, 3, 4, 8), (1, 2, 3), (1, 2, 4, 6, 8), ("ray", "mp")
    ):
        yield _cluster(
            {
                "engine.tensorParallelSize": tp,
                "engine.pipelineParallelSize": pp,
                "engine.executorBackend": backend,
                "ray.worker.gpusPerWorker": per_worker,
            }
        )
    args = ["--max-num-seqs", "256", "--model-impl", "--hostname", "--portx", "--enable-prefix-caching"]
    for flag in [*OWNED_ENGINE_FLAGS, *args]:
        yield _cluster({"engine.extraArgs": [flag]})
        yield _cluster({"engine.extraArgs": [f"{flag}=1"]})
        yield _cluster({"engine.extraArgs": [flag.replace("-", "_").replace("_", "-", 2)]})
    for source in (
        "hf://org/name",
        "hf://org/name/extra",
        "hf://-org/name",
        "pvc://claim",
        "pvc://claim/",
        "pvc://claim/a/b.safetensors",
        "pvc://Claim/a",
        "pvc://claim/../a",
        "s3://bucket",
        "s3://bucket/key",
        "s3://b/key",
        "/abs/path",
        "/",
        "relative",
        "/a/./b",
        "/a/../b",
        "/with space",
        "gs://bucket/key",
    ):
        yield _cluster({"model.source": source})
    for name in ("ok", "a" * 53, "a" * 54, "9lives", "with.dot", "a-", "x-1"):
        yield _cluster({}, name=name)
    for port in (1023, 1024, 6379, 8000, 8265, 65535, 65536):
        yield _cluster({"engine.port": port})
    for utilization in (0, 0.01, 1, 1.01):
        yield _cluster({"engine.gpuMemoryUtilization": utilization})
    for backoff, cap in ((1, 1), (30, 29), (30, 600)):
        yield _cluster({"restartPolicy.backoffSeconds": backoff, "restartPolicy.maxBackoffSeconds": cap})
    for env in (
        [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
        [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}],
        [{"name": "A", "valueFrom": {}}],
        [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        [
            {
                "name": "A",
                "valueFrom": {"fieldRef": {"fieldPath": "x"}, "secretKeyRef": {"name": "s", "key": "k"}},
            }
        ],
        [{"name": "HF_HOME", "value": "/x"}],
    ):
        yield _cluster({"engine.env": env})
        yield _cluster({"engine.env": env, "modelCache.claimName": "cache"})
    for resources in (
        {"limits": {"nvidia.com/gpu": 1}},
        {"requests": {"amd.com/gpu": 1}},
        {"limits": {"cpu": "500m"}},
    ):
        yield _cluster({"ray.worker.resources": resources})
        yield _cluster({"ray.worker.resources": resources, "ray.worker.gpuResourceName": "amd.com/gpu"})
    for mount in (
        "/mnt/rayvllm/cache",
        "/dev/shm",
        "/dev/shm/x",
        "/mnt/rayvllm/models",
        "/mnt/rayvllm/models-x",
    ):
        yield _cluster({"modelCache.claimName": "cache", "modelCache.mountPath": mount})
    for params in ({"num-cpus": "0"}, {"labels": "a=b"}, {"redis-password": "x"}):
        yield _cluster({"ray.head.rayStartParams": params})
    for quantity in ("8Gi", 1024, "1.5Gi", "lots", "1e3", True):
        yield _cluster({"ray.worker.shmSize": quantity})


@pytest.mark.parametrize("body", list(_variants()))
def test_crd_and_models_agree(body: dict[str, Any]) -> None:
    crd_errors = admission_errors(body)
    assert _models_accept(body) == (not crd_errors), crd_errors
