"""The Ray job request that runs one engine replica. Pure: same inputs, same request, same id."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from rayvllm import API_GROUP
from rayvllm.engine.args import (
    GATE_SOURCE,
    GATE_SOURCE_ENV,
    requires_api_key,
    server_entrypoint,
    shutdown_timeout_seconds,
    vllm_server_args,
)
from rayvllm.models.rayapi import JobSubmitRequest
from rayvllm.models.spec import VLLMClusterSpec
from rayvllm.placement import ENGINE_SLOT_RESOURCE

# Ray's JobSupervisor reads it from its own environment, which runtime_env.env_vars sets. Past it
# Ray SIGKILLs the entrypoint's process group, which can leave GPU memory held by orphaned workers.
STOP_WAIT_ENV = "RAY_JOB_STOP_WAIT_TIME_S"

METADATA_PREFIX = f"{API_GROUP}/"
SUBMISSION_ID_PREFIX = "rayvllm"
# Keeps ids readable in `ray job list` and log file names; the hash keeps them unique.
_NAME_CHARS_IN_ID = 24


@dataclass(frozen=True)
class EngineRef:
    """Which engine, and which try of it: the identity of one Ray job."""

    namespace: str
    name: str
    replica: int
    generation: int
    attempt: int

    def metadata(self) -> dict[str, str]:
        """Ray job metadata (string values only): lets anyone listing the cluster's jobs tell whose
        engine each is, and lets the operator recognise its jobs after a restart."""
        return {
            f"{METADATA_PREFIX}namespace": self.namespace,
            f"{METADATA_PREFIX}name": self.name,
            f"{METADATA_PREFIX}replica": str(self.replica),
            f"{METADATA_PREFIX}generation": str(self.generation),
            f"{METADATA_PREFIX}attempt": str(self.attempt),
        }


def submission_id(ref: EngineRef) -> str:
    """`rayvllm-<name>-r<replica>-g<generation>-a<attempt>-<hash8>`: deterministic, so a restarted
    operator finds the job it submitted instead of submitting again. Only [a-z0-9-] (names are DNS-1035
    labels), at most 24 + 38 characters; the hash of the full identity keeps truncated names apart."""
    identity = f"{ref.namespace}/{ref.name}/{ref.replica}/{ref.generation}/{ref.attempt}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
    name = ref.name[:_NAME_CHARS_IN_ID].rstrip("-")
    return f"{SUBMISSION_ID_PREFIX}-{name}-r{ref.replica}-g{ref.generation}-a{ref.attempt}-{digest}"


@dataclass(frozen=True)
class EngineJobOptions:
    """Operator-level choices that are not part of the spec."""

    # Where vLLM listens inside the pod that hosts it; the e2e tier uses 127.0.0.1.
    host: str = "0.0.0.0"
    # The image's Python with Ray and vLLM.
    python: str = "python"
    # Bookkeeping for the API server process; placement comes from ENGINE_SLOT_RESOURCE.
    entrypoint_num_cpus: float = 1.0
    # Time Ray grants the engine between SIGTERM and SIGKILL on top of vLLM's own --shutdown-timeout:
    # tearing down the executor and its Ray workers takes seconds, more with many GPUs.
    stop_grace_seconds: int = 30
    # Environment every engine gets from the operator's configuration (settings.engine_job_env).
    extra_env: Mapping[str, str] = field(default_factory=dict)


def runtime_env_vars(spec: VLLMClusterSpec, options: EngineJobOptions) -> dict[str, str]:
    """Operator-wide env, then the spec's literal env (which wins), then the stop wait and, with an API
    key, the gate's source (ours).

    Variables with valueFrom (Secrets, ConfigMaps, pod fields) cannot be expressed in a Ray job: the
    RayCluster builder sets them on the worker pods, whose environment the entrypoint inherits. The HF
    token and API key travel that way too and so never appear in the job record."""
    env = dict(options.extra_env)
    env.update({var.name: var.value for var in spec.engine.env if var.value is not None})
    env[STOP_WAIT_ENV] = str(ray_stop_wait_seconds(spec, options))
    if requires_api_key(spec):
        env[GATE_SOURCE_ENV] = GATE_SOURCE
    return env


def ray_stop_wait_seconds(spec: VLLMClusterSpec, options: EngineJobOptions) -> int:
    """How long Ray lets a stopped engine's entrypoint end after SIGTERM before it SIGKILLs it (the job's
    RAY_JOB_STOP_WAIT_TIME_S): vLLM's own --shutdown-timeout plus the executor's teardown."""
    return options.stop_grace_seconds + shutdown_timeout_seconds(spec.engine.extra_args)


def build_engine_job(
    spec: VLLMClusterSpec, ref: EngineRef, options: EngineJobOptions | None = None
) -> JobSubmitRequest:
    """The Ray job that runs engine `ref.replica` of the VLLMCluster `ref.namespace/ref.name`.

    The entrypoint lands on a GPU worker through entrypoint_resources (ENGINE_SLOT_RESOURCE), never
    entrypoint_num_gpus: a GPU taken by the entrypoint is one vLLM's placement group cannot have.
    Raises InvalidSpecError for a spec vLLM must not see (owned flags in extraArgs)."""
    options = options or EngineJobOptions()
    args = vllm_server_args(spec, spec.model.served_name(ref.name), host=options.host)
    return JobSubmitRequest(
        entrypoint=server_entrypoint(args, python=options.python, gated=requires_api_key(spec)),
        submission_id=submission_id(ref),
        runtime_env={"env_vars": runtime_env_vars(spec, options)},
        metadata=ref.metadata(),
        entrypoint_num_cpus=options.entrypoint_num_cpus,
        entrypoint_resources={ENGINE_SLOT_RESOURCE: float(spec.engine_slots_per_job)},
    )
