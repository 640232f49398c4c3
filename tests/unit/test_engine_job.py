"""The engine job builder: the exact Ray job request per sample, owned flags refused, ids deterministic
and valid. vLLM's own parser checks the same arguments in tests/e2e/test_vllm_args.py."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import yaml

from hack.localcluster.workloads import CPU_ENGINE_ENV
from rayvllm.engine.args import GATE_SOURCE, GATE_SOURCE_ENV, shutdown_timeout_seconds, vllm_server_args
from rayvllm.engine.job import STOP_WAIT_ENV, EngineJobOptions, EngineRef, build_engine_job, submission_id
from rayvllm.errors import InvalidSpecError
from rayvllm.models import VLLMClusterSpec, parse_cluster
from rayvllm.models.spec import OWNED_ENGINE_FLAGS
from rayvllm.placement import ENGINE_SLOT_RESOURCE

from .inputs import SAMPLES, load_yaml

REF = EngineRef(namespace="team-a", name="llama-70b", replica=1, generation=3, attempt=0)

# The sample names an API key: vLLM starts behind the gate (EXPECTED_TINY_CPU_WITH_API_KEY says how).
EXPECTED_TP4_PP2 = """
entrypoint: >-
  exec python -c 'import os, sys, types; gate = sys.modules["rayvllm_engine_gate"] =
  types.ModuleType("rayvllm_engine_gate"); exec(compile(os.environ.pop("RAYVLLM_ENGINE_GATE"),
  "rayvllm_engine_gate.py", "exec"), gate.__dict__); gate.run("vllm.entrypoints.openai.api_server")'
  --model meta-llama/Llama-3.1-70B-Instruct --served-model-name llama-70b
  --host 0.0.0.0 --port 8000 --tensor-parallel-size 4 --pipeline-parallel-size 2
  --distributed-executor-backend ray --max-model-len 8192 --gpu-memory-utilization 0.9
  --middleware rayvllm_engine_gate.ApiKeyGate --enable-prefix-caching --max-num-seqs 256
submission_id: rayvllm-llama-70b-r1-g3-a0-379c8126
runtime_env:
  env_vars:
    RAY_JOB_STOP_WAIT_TIME_S: '30'
    RAYVLLM_ENGINE_GATE: <GATE_SOURCE>
metadata:
  rayvllm.io/namespace: team-a
  rayvllm.io/name: llama-70b
  rayvllm.io/replica: '1'
  rayvllm.io/generation: '3'
  rayvllm.io/attempt: '0'
entrypoint_num_cpus: 1.0
entrypoint_resources:
  rayvllm_engine_slots: 1.0
"""

EXPECTED_TINY_CPU_LOCAL = """
entrypoint: >-
  exec /venv/bin/python -m vllm.entrypoints.openai.api_server
  --model /models/tiny-llama --served-model-name tiny-llama --host 127.0.0.1 --port 8000
  --tensor-parallel-size 1 --pipeline-parallel-size 1 --distributed-executor-backend mp
  --max-model-len 256 --dtype float32 --enforce-eager
submission_id: rayvllm-tiny-cpu-r0-g1-a2-241b7446
runtime_env:
  env_vars:
    VLLM_CPU_KVCACHE_SPACE: '1'
    VLLM_CPU_OMP_THREADS_BIND: nobind
    HF_HUB_OFFLINE: '1'
    VLLM_NO_USAGE_STATS: '1'
    DO_NOT_TRACK: '1'
    RAY_JOB_STOP_WAIT_TIME_S: '30'
metadata:
  rayvllm.io/namespace: default
  rayvllm.io/name: tiny-cpu
  rayvllm.io/replica: '0'
  rayvllm.io/generation: '1'
  rayvllm.io/attempt: '2'
entrypoint_num_cpus: 0.5
entrypoint_resources:
  rayvllm_engine_slots: 1.0
"""


# With an API key: vLLM started through the gate's bootstrap, which loads the gate from the job's environment
# (its source, GATE_SOURCE, stands in for the placeholder below) and names it with --middleware.
EXPECTED_TINY_CPU_WITH_API_KEY = """
entrypoint: >-
  exec python -c 'import os, sys, types; gate = sys.modules["rayvllm_engine_gate"] =
  types.ModuleType("rayvllm_engine_gate"); exec(compile(os.environ.pop("RAYVLLM_ENGINE_GATE"),
  "rayvllm_engine_gate.py", "exec"), gate.__dict__); gate.run("vllm.entrypoints.openai.api_server")'
  --model /models/tiny-llama --served-model-name tiny-llama --host 0.0.0.0 --port 8000
  --tensor-parallel-size 1 --pipeline-parallel-size 1 --distributed-executor-backend mp
  --max-model-len 256 --dtype float32 --middleware rayvllm_engine_gate.ApiKeyGate --enforce-eager
submission_id: rayvllm-llama-70b-r1-g3-a0-379c8126
runtime_env:
  env_vars:
    RAY_JOB_STOP_WAIT_TIME_S: '30'
    RAYVLLM_ENGINE_GATE: <GATE_SOURCE>
metadata:
  rayvllm.io/namespace: team-a
  rayvllm.io/name: llama-70b
  rayvllm.io/replica: '1'
  rayvllm.io/generation: '3'
  rayvllm.io/attempt: '0'
entrypoint_num_cpus: 1.0
entrypoint_resources:
  rayvllm_engine_slots: 1.0
"""


def sample_spec(name: str) -> VLLMClusterSpec:
    return parse_cluster(load_yaml(SAMPLES / f"{name}.yaml")).spec


def spec_with(base: str = "tiny-cpu", **engine: Any) -> VLLMClusterSpec:
    body = load_yaml(SAMPLES / f"{base}.yaml")
    body["spec"]["engine"].update(engine)
    return parse_cluster(body).spec


def expected(golden: str) -> dict[str, Any]:
    wire: dict[str, Any] = yaml.safe_load(golden)
    env = wire["runtime_env"]["env_vars"]
    if env.get(GATE_SOURCE_ENV) == "<GATE_SOURCE>":
        env[GATE_SOURCE_ENV] = GATE_SOURCE
    return wire


def test_tp4_pp2_ray_job_request() -> None:
    request = build_engine_job(sample_spec("tp4-pp2"), REF)
    assert request.to_wire() == expected(EXPECTED_TP4_PP2)


def test_tiny_cpu_job_request_with_local_options() -> None:
    ref = EngineRef(namespace="default", name="tiny-cpu", replica=0, generation=1, attempt=2)
    options = EngineJobOptions(
        host="127.0.0.1", python="/venv/bin/python", entrypoint_num_cpus=0.5, extra_env=CPU_ENGINE_ENV
    )
    request = build_engine_job(sample_spec("tiny-cpu"), ref, options)
    assert request.to_wire() == expected(EXPECTED_TINY_CPU_LOCAL)


def test_with_an_api_key_vllm_starts_behind_the_gate() -> None:
    request = build_engine_job(spec_with(apiKeySecretRef={"name": "api", "key": "key"}), REF)
    assert request.to_wire() == expected(EXPECTED_TINY_CPU_WITH_API_KEY)


def test_without_an_api_key_there_is_no_gate() -> None:
    # Nothing to ask for: every route is open, as vLLM leaves it, and the gate would refuse to start.
    request = build_engine_job(sample_spec("tiny-cpu"), REF)
    assert shlex.split(request.entrypoint)[1:4] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--middleware" not in request.entrypoint
    assert request.runtime_env is not None and GATE_SOURCE_ENV not in request.runtime_env["env_vars"]


def test_the_gate_source_is_ours_whatever_the_spec_env_says() -> None:
    spec = spec_with(
        apiKeySecretRef={"name": "api", "key": "key"}, env=[{"name": GATE_SOURCE_ENV, "value": "x"}]
    )
    request = build_engine_job(spec, REF, EngineJobOptions(extra_env={GATE_SOURCE_ENV: "y"}))
    assert request.runtime_env is not None and request.runtime_env["env_vars"][GATE_SOURCE_ENV] == GATE_SOURCE


def test_never_asks_ray_for_a_gpu() -> None:
    # The slot count per job is the model's decision (VLLMClusterSpec.engine_slots_per_job).
    for sample in sorted(SAMPLES.glob("*.yaml")):
        spec = parse_cluster(load_yaml(sample)).spec
        wire = build_engine_job(spec, REF).to_wire()
        assert "entrypoint_num_gpus" not in wire, sample.name
        assert wire["entrypoint_resources"] == {ENGINE_SLOT_RESOURCE: float(spec.engine_slots_per_job)}


@pytest.mark.parametrize("flag", OWNED_ENGINE_FLAGS)
def test_owned_flags_in_extra_args_are_refused(flag: str) -> None:
    # The model refuses them at parse time; the builder refuses them again for a spec that skipped
    # validation (model_construct), because vLLM would let a second --port silently win.
    good = sample_spec("tiny-cpu")
    engine = good.engine.model_copy(update={"extra_args": ["--enforce-eager", flag, "1"]})
    bad = good.model_copy(update={"engine": engine})
    with pytest.raises(InvalidSpecError, match=re.escape(flag)) as error:
        build_engine_job(bad, REF)
    assert error.value.field == "spec.engine.extraArgs"


@pytest.mark.parametrize("arg", ["--port=9000", "--max_model_len=4", "--api-key", "-tp=2"])
def test_owned_flag_spellings_are_refused_by_the_model_too(arg: str) -> None:
    with pytest.raises(InvalidSpecError, match="extraArgs"):
        spec_with(extraArgs=[arg])


def test_extra_args_are_quoted_for_the_shell() -> None:
    hostile = ["--chat-template", "{{ x }} $(rm -rf /) `id`; echo 'hi'", "--enforce-eager"]
    spec = spec_with(extraArgs=hostile)
    entrypoint = build_engine_job(spec, REF).entrypoint
    # What `sh -c` will see as argv is exactly what we built, nothing expanded.
    assert shlex.split(entrypoint)[0:4] == ["exec", "python", "-m", "vllm.entrypoints.openai.api_server"]
    assert shlex.split(entrypoint)[4:] == vllm_server_args(spec, "tiny-llama", host="0.0.0.0")
    assert shlex.split(entrypoint)[-3:] == hostile


def test_no_secret_reaches_the_job_request() -> None:
    body = load_yaml(SAMPLES / "tiny-cpu.yaml")
    body["spec"]["model"]["hfTokenSecretRef"] = {"name": "hf", "key": "token"}
    body["spec"]["engine"]["apiKeySecretRef"] = {"name": "api", "key": "key"}
    body["spec"]["engine"]["env"] = [
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        {"name": "PLAIN", "value": "yes"},
    ]
    request = build_engine_job(parse_cluster(body).spec, REF)
    assert request.runtime_env == {
        "env_vars": {"PLAIN": "yes", STOP_WAIT_ENV: "30", GATE_SOURCE_ENV: GATE_SOURCE}
    }
    # The gate's source names the variable it reads the key from, and nothing else of the spec.
    wire = request.to_wire()
    del wire["runtime_env"]["env_vars"][GATE_SOURCE_ENV]
    for needle in ("api-key", "API_KEY", "HF_TOKEN", "FROM_SECRET", "secretKeyRef"):
        assert needle not in yaml.safe_dump(wire)
    for needle in ("HF_TOKEN", "FROM_SECRET", "secretKeyRef"):
        assert needle not in GATE_SOURCE


def test_spec_env_overrides_operator_env_but_not_the_stop_wait() -> None:
    spec = spec_with(env=[{"name": "HF_HUB_OFFLINE", "value": "0"}, {"name": STOP_WAIT_ENV, "value": "1"}])
    request = build_engine_job(spec, REF, EngineJobOptions(extra_env=CPU_ENGINE_ENV))
    assert request.runtime_env is not None
    env = request.runtime_env["env_vars"]
    assert env["HF_HUB_OFFLINE"] == "0"
    assert env[STOP_WAIT_ENV] == "30"


@pytest.mark.parametrize(
    ("extra_args", "stop_wait"),
    [
        ([], "30"),
        (["--shutdown-timeout", "90"], "120"),
        (["--shutdown-timeout=15"], "45"),
        (["--shutdown_timeout", "5"], "35"),
        (["--shutdown-timeout", "soon"], "30"),
    ],
)
def test_stop_wait_outlasts_vllms_own_shutdown(extra_args: list[str], stop_wait: str) -> None:
    request = build_engine_job(spec_with(extraArgs=extra_args), REF)
    assert request.runtime_env == {"env_vars": {STOP_WAIT_ENV: stop_wait}}


def test_shutdown_timeout_parsing_ignores_other_flags() -> None:
    assert shutdown_timeout_seconds(["--shutdown-timeouts", "9", "--shutdown-timeout"]) == 0


def test_optional_knobs_and_revision() -> None:
    body = load_yaml(SAMPLES / "tp4-pp2.yaml")
    body["spec"]["model"]["revision"] = "v1.2"
    body["spec"]["engine"].update(dtype="bfloat16", quantization="fp8", gpuMemoryUtilization=0.85)
    del body["spec"]["engine"]["maxModelLen"]
    args = vllm_server_args(parse_cluster(body).spec, "x", host="0.0.0.0")
    assert args[args.index("--revision") + 1] == "v1.2"
    assert args[args.index("--dtype") + 1] == "bfloat16"
    assert args[args.index("--quantization") + 1] == "fp8"
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.85"
    assert "--max-model-len" not in args


def test_served_model_name_defaults_to_the_object_name() -> None:
    body = load_yaml(SAMPLES / "tiny-cpu.yaml")
    del body["spec"]["model"]["servedModelName"]
    args = vllm_server_args(parse_cluster(body).spec, "tiny-cpu", host="0.0.0.0")
    assert args[args.index("--served-model-name") + 1] == "tiny-cpu"
    request = build_engine_job(parse_cluster(body).spec, REF)
    assert "--served-model-name llama-70b" in request.entrypoint  # REF.name


# --- submission ids -------------------------------------------------------------------------------

RAY_SAFE_ID = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def test_submission_id_is_deterministic_and_build_is_pure() -> None:
    spec = sample_spec("tp4-pp2")
    assert submission_id(REF) == submission_id(EngineRef("team-a", "llama-70b", 1, 3, 0))
    assert build_engine_job(spec, REF) == build_engine_job(sample_spec("tp4-pp2"), REF)


def test_submission_id_changes_with_every_part_of_the_identity() -> None:
    variants = [
        REF,
        EngineRef("team-b", "llama-70b", 1, 3, 0),
        EngineRef("team-a", "llama-70c", 1, 3, 0),
        EngineRef("team-a", "llama-70b", 2, 3, 0),
        EngineRef("team-a", "llama-70b", 1, 4, 0),
        EngineRef("team-a", "llama-70b", 1, 3, 1),
        # Ambiguous if the parts were merely concatenated:
        EngineRef("team-a", "llama-70b", 11, 3, 0),
        EngineRef("team-a", "llama-70b", 1, 13, 0),
    ]
    assert len({submission_id(ref) for ref in variants}) == len(variants)


def test_submission_id_is_short_and_safe_even_for_the_longest_names() -> None:
    long_a = "a" * 52 + "b"
    long_b = "a" * 52 + "c"
    id_a = submission_id(EngineRef("ns", long_a, 999, 123456, 1000))
    id_b = submission_id(EngineRef("ns", long_b, 999, 123456, 1000))
    assert id_a != id_b, "names equal after truncation must still differ"
    for value in (id_a, id_b, submission_id(REF), submission_id(EngineRef("ns", "a-" * 12 + "x", 0, 1, 0))):
        assert RAY_SAFE_ID.match(value), value
        assert len(value) <= 63, value
    assert submission_id(REF).startswith("rayvllm-llama-70b-r1-g3-a0-")
