"""vLLM engines as Ray jobs: the job request for each replica (pure) and the health probe."""

from rayvllm.engine.args import VLLM_SERVER_MODULE, server_entrypoint, vllm_server_args
from rayvllm.engine.health import probe_engine
from rayvllm.engine.job import (
    CPU_TEST_ENV,
    STOP_WAIT_ENV,
    EngineJobOptions,
    EngineRef,
    build_engine_job,
    submission_id,
)
from rayvllm.engine.probe import EngineProbe, EngineState

__all__ = [
    "CPU_TEST_ENV",
    "STOP_WAIT_ENV",
    "VLLM_SERVER_MODULE",
    "EngineJobOptions",
    "EngineProbe",
    "EngineRef",
    "EngineState",
    "build_engine_job",
    "probe_engine",
    "server_entrypoint",
    "submission_id",
    "vllm_server_args",
]
