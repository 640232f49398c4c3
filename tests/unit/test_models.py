"""The pydantic models: samples, computed values, validation messages and the parsing entry points."""

from __future__ import annotations

from typing import Any

import pytest

from rayvllm.errors import InvalidSpecError
from rayvllm.models import (
    ModelSource,
    ModelSourceKind,
    VLLMClusterSpec,
    parse_cluster,
    parse_previous_status,
    parse_spec,
)
from rayvllm.models.spec import OWNED_ENGINE_FLAGS, RestartPolicySpec

from .crdtools import admission_errors
from .inputs import SAMPLES, load_yaml, samples


def _spec(**engine: Any) -> dict[str, Any]:
    return {"model": {"source": "hf://org/model"}, "engine": engine, "ray": {"image": "img"}}


def test_required_samples_exist() -> None:
    assert {path.stem for path in samples()} >= {"tiny-cpu", "minimal-gpu", "tp4-pp2", "with-hf-token"}


@pytest.mark.parametrize(
    ("sample", "gpus_per_engine", "workers", "slots_per_job"),
    [("tiny-cpu", 1, 1, 1), ("minimal-gpu", 1, 1, 1), ("tp4-pp2", 8, 4, 1), ("with-hf-token", 1, 1, 1)],
)
def test_samples_and_their_computed_shape(
    sample: str, gpus_per_engine: int, workers: int, slots_per_job: int
) -> None:
    spec = parse_cluster(load_yaml(SAMPLES / f"{sample}.yaml")).spec
    assert spec.gpus_per_engine == gpus_per_engine
    assert spec.desired_workers == workers
    assert spec.engine_slots_per_job == slots_per_job


def test_defaults() -> None:
    spec = parse_spec({"model": {"source": "hf://org/model"}, "ray": {"image": "img"}})
    assert (spec.replicas, spec.engine.port, spec.engine.executor_backend) == (1, 8000, "ray")
    assert (spec.engine.tensor_parallel_size, spec.engine.pipeline_parallel_size) == (1, 1)
    assert spec.engine.startup_timeout_seconds == 1800
    assert (spec.ray.ray_version, spec.ray.worker.gpus_per_worker) == ("2.60.0", 1)
    assert spec.ray.worker.gpu_resource_name == "nvidia.com/gpu"
    assert (spec.restart_policy.max_restarts, spec.restart_policy.backoff_seconds) == (5, 30)
    assert spec.upgrade_strategy.type == "Recreate"
    assert spec.suspend is False
    assert spec.model.served_name("my-cluster") == "my-cluster"


@pytest.mark.parametrize(
    ("replicas", "tp", "pp", "per_worker", "workers"),
    [(1, 1, 1, 1, 1), (3, 2, 1, 2, 3), (2, 4, 2, 4, 4), (0, 8, 1, 8, 0), (5, 1, 1, 1, 5), (3, 16, 1, 8, 6)],
)
def test_worker_count(replicas: int, tp: int, pp: int, per_worker: int, workers: int) -> None:
    spec = VLLMClusterSpec.model_validate(
        {
            "model": {"source": "hf://org/model"},
            "engine": {"tensorParallelSize": tp, "pipelineParallelSize": pp},
            "replicas": replicas,
            "ray": {"image": "img", "worker": {"gpusPerWorker": per_worker}},
        }
    )
    assert spec.desired_workers == workers


def test_each_engine_api_server_gets_a_worker_pod_of_its_own() -> None:
    spec = parse_spec(
        _spec(executorBackend="mp", tensorParallelSize=2)
        | {"ray": {"image": "i", "worker": {"gpusPerWorker": 4}}}
    )
    assert (spec.engine_slots_per_worker, spec.engine_slots_per_job) == (1, 1)
    with pytest.raises(InvalidSpecError, match=r"spec\.replicas > 1 needs one worker pod per engine"):
        parse_spec(
            _spec(tensorParallelSize=2)
            | {"replicas": 2, "ray": {"image": "i", "worker": {"gpusPerWorker": 4}}}
        )


@pytest.mark.parametrize(
    ("source", "parsed", "argument"),
    [
        (
            "hf://Qwen/Qwen2.5-0.5B",
            ModelSource(ModelSourceKind.HUGGING_FACE, "Qwen/Qwen2.5-0.5B"),
            "Qwen/Qwen2.5-0.5B",
        ),
        (
            "pvc://store/llama/8b",
            ModelSource(ModelSourceKind.PVC, "store", "llama/8b"),
            "/mnt/rayvllm/models/store/llama/8b",
        ),
        ("pvc://store", ModelSource(ModelSourceKind.PVC, "store"), "/mnt/rayvllm/models/store"),
        (
            "s3://bucket/models/x",
            ModelSource(ModelSourceKind.S3, "bucket", "models/x"),
            "s3://bucket/models/x",
        ),
        (
            "/models/tiny-llama/",
            ModelSource(ModelSourceKind.LOCAL, "/models/tiny-llama"),
            "/models/tiny-llama",
        ),
    ],
)
def test_model_sources(source: str, parsed: ModelSource, argument: str) -> None:
    assert ModelSource.parse(source) == parsed
    assert parsed.engine_model_argument == argument
    assert parsed.volume_claim == ("store" if parsed.kind is ModelSourceKind.PVC else None)


def test_restart_backoff_doubles_up_to_the_cap() -> None:
    policy = RestartPolicySpec(backoff_seconds=30, max_backoff_seconds=200)
    assert [policy.backoff_before_restart(n) for n in range(5)] == [30, 60, 120, 200, 200]
    assert policy.backoff_before_restart(10_000) == 200


@pytest.mark.parametrize("flag", OWNED_ENGINE_FLAGS)
def test_every_owned_flag_is_refused_in_all_spellings(flag: str) -> None:
    dashes = "--" if flag.startswith("--") else "-"
    underscored = dashes + flag[len(dashes) :].replace("-", "_")
    for arg in (flag, f"{flag}=1", underscored, f"{underscored}=x"):
        with pytest.raises(InvalidSpecError, match="extraArgs must not set flags the operator owns"):
            parse_spec(_spec(extraArgs=[arg]))


@pytest.mark.parametrize(
    "arg", ["--model-impl", "--hostname=x", "--max-num-seqs", "256", "--enable-lora", "-O3"]
)
def test_other_flags_pass_through(arg: str) -> None:
    assert parse_spec(_spec(extraArgs=[arg])).engine.extra_args == [arg]


def test_errors_name_the_field_path_like_the_api_server() -> None:
    with pytest.raises(InvalidSpecError) as refused:
        parse_spec(_spec(env=[{"name": "A", "value": "1"}, {"name": "1bad", "value": "2"}]))
    assert refused.value.field == "spec.engine.env[1].name"
    assert str(refused.value).startswith("spec.engine.env[1].name: String should match pattern")


def test_every_problem_is_reported() -> None:
    with pytest.raises(InvalidSpecError) as refused:
        parse_spec(_spec(tensorParallelSize=0, port=80))
    assert "spec.engine.tensorParallelSize" in str(refused.value)
    assert "spec.engine.port" in str(refused.value)


def test_whole_object_checks_name_and_kind() -> None:
    body = load_yaml(SAMPLES / "minimal-gpu.yaml")
    assert parse_cluster(body).metadata.name == "qwen-small"
    with pytest.raises(InvalidSpecError, match="kind"):
        parse_cluster(body | {"kind": "RayCluster"})
    with pytest.raises(InvalidSpecError, match=r"metadata\.name must be at most 53 characters"):
        parse_cluster(body | {"metadata": {"name": "x" * 54}})


def test_status_is_ignored_when_parsing_the_object() -> None:
    body = load_yaml(SAMPLES / "minimal-gpu.yaml") | {"status": {"phase": "Bogus"}}
    assert parse_cluster(body).status is None


def test_previous_status_is_read_leniently() -> None:
    assert parse_previous_status(None) is None
    assert parse_previous_status({"phase": "Bogus"}) is None
    status = parse_previous_status(
        {
            "phase": "Ready",
            "kopf": {"progress": {}},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "AllEnginesReady",
                    "message": "",
                    "lastTransitionTime": "2026-01-02T03:04:05Z",
                }
            ],
        }
    )
    assert status is not None and status.conditions[0].last_transition_time.year == 2026


def test_models_are_immutable() -> None:
    spec = parse_spec(_spec())
    with pytest.raises(ValueError, match="frozen"):
        spec.replicas = 3  # type: ignore[misc]


@pytest.mark.parametrize("space", ["\u00a0", "\u2003", "\u0085", "\u000b", "\u2028", "\u3000"])
def test_no_space_patterns_mean_what_the_api_server_means(space: str) -> None:
    """RE2's \\s is [\\t\\n\\f\\r ] only: the API server admits these characters where a pattern says "no
    whitespace", so the models must too (found by tests/integration/test_fuzz_specs.py)."""
    spec = {"model": {"source": "hf://a/b", "servedModelName": f"a{space}b"}, "ray": {"image": "i"}}
    spec["modelCache"] = {"claimName": "c", "mountPath": f"/a{space}b"}
    parsed = parse_spec(spec)
    assert parsed.model.served_model_name == f"a{space}b"
    with pytest.raises(InvalidSpecError, match="servedModelName"):
        parse_spec({**spec, "model": {"source": "hf://a/b", "servedModelName": "a b"}})


@pytest.mark.parametrize(
    ("version", "ok"),
    [("2.60.0", True), ("2.52.0", True), ("2.052.0", True), ("3.0.0", True), ("10.0.0", True),
     ("2.51.9", False), ("1.99.0", False), ("0.0.0", False), ("02.60.0", False), ("18446744073709551616.0.0", False)],
)  # fmt: skip
def test_ray_version_is_one_kuberay_takes_with_token_auth(version: str, ok: bool) -> None:
    spec = {"model": {"source": "hf://a/b"}, "ray": {"image": "i", "rayVersion": version}}
    if ok:
        assert parse_spec(spec).ray.ray_version == version
    else:
        with pytest.raises(InvalidSpecError, match=r"spec\.ray\.rayVersion"):
            parse_spec(spec)


RAY_AUTH_REFUSAL = (
    "spec.engine.env must not set RAY_AUTH_* (RAY_AUTH_MODE, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH)"
)


@pytest.mark.parametrize(
    ("name", "refused"),
    [("RAY_AUTH_MODE", True), ("RAY_AUTH_TOKEN", True), ("RAY_AUTH_TOKEN_PATH", True),
     ("RAY_AUTH_ANYTHING_LATER", True), ("RAY_ENABLE_K8S_TOKEN_AUTH", True),
     ("RAY_AUTHOR", False), ("MY_RAY_AUTH_MODE", False), ("RAY_ADDRESS", False), ("RAY_USAGE_STATS_ENABLED", False)],
)  # fmt: skip
def test_env_that_would_change_ray_auth_is_refused_by_models_and_crd_alike(name: str, refused: bool) -> None:
    """KubeRay sets Ray's token auth on every Ray container; spec.engine.env reaches the workers and the
    engine's job, where these names would turn it off or replace the token (literal or from a Secret)."""
    for var in (
        {"name": name, "value": "disabled"},
        {"name": name, "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ):
        spec = _spec(env=[var])
        body = {
            "apiVersion": "rayvllm.io/v1alpha1",
            "kind": "VLLMCluster",
            "metadata": {"name": "x"},
            "spec": spec,
        }
        crd = [error for error in admission_errors(body) if "RAY_AUTH_" in error]
        if not refused:
            assert parse_spec(spec).engine.env[0].name == name and crd == []
            continue
        with pytest.raises(InvalidSpecError) as models:
            parse_spec(spec)
        assert str(models.value).startswith(f"spec.engine.env: {RAY_AUTH_REFUSAL}")
        assert "remove them" in str(models.value)
        assert len(crd) == 1 and RAY_AUTH_REFUSAL in crd[0]
