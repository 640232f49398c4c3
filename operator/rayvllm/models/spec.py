"""The VLLMCluster spec: what a user asks for. Every derived number (GPUs per engine, worker pods, Ray
slots, backoff) is computed here and nowhere else, so builders, status and the engine supervisor agree."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from rayvllm.engine_env import OWNED_ENV_NAMES, RAY_AUTH_ENV_NAMES, RAY_AUTH_ENV_PREFIX, sets_ray_auth
from rayvllm.models.base import ApiModel
from rayvllm.models.kube import (
    QUALIFIED_NAME,
    EnvVar,
    ObjectName,
    Quantity,
    ResourceRequirements,
    SecretKeyRef,
    StringMap,
    Toleration,
)
from rayvllm.models.rules import Rule, cel_matches, cel_regex, cel_string_list

# "No whitespace", spelled out: RE2 (the API server's `pattern`) takes \\s as these five ASCII characters,
# Python's re and Rust's regex (pydantic-core) as every Unicode space, so `\\S` would admit "a\\u00a0b" at the
# API server and refuse it in the operator. An explicit class means the same to all three.
NO_SPACE = r"[^\t\n\f\r ]"

# Where the RayCluster builder mounts a `pvc://CLAIM/PATH` model source (read-only) in worker pods;
# the engine's --model then points below it. Both sides read it from here.
MODEL_PVC_MOUNT_ROOT = "/mnt/rayvllm/models"
DEFAULT_MODEL_CACHE_MOUNT_PATH = "/mnt/rayvllm/cache"
SHM_MOUNT_PATH = "/dev/shm"

# --- model source -----------------------------------------------------------------------------------

_SEGMENT = r"[A-Za-z0-9._@+=,~-]+"
_HF_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_CLAIM = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_BUCKET = r"[a-z0-9][a-z0-9.-]*[a-z0-9]"
MODEL_SOURCE_PATTERN = (
    rf"^(hf://{_HF_NAME}/{_HF_NAME}"
    rf"|pvc://{_CLAIM}(/{_SEGMENT})*/?"
    rf"|s3://{_BUCKET}(/{_SEGMENT})+/?"
    rf"|(/{_SEGMENT})+/?)$"
)
_PARENT_SEGMENT = r"(^|/)\.\.(/|$)"

_MODEL_SOURCE_RULE = Rule(
    cel=f"self.matches({cel_regex(MODEL_SOURCE_PATTERN)}) && !self.matches({cel_regex(_PARENT_SEGMENT)})",
    message=(
        "spec.model.source must be hf://ORG/NAME, pvc://CLAIM/PATH, s3://BUCKET/KEY or an absolute path "
        "/PATH (letters, digits and ._@+=,~- in path segments, no '..'), e.g. hf://Qwen/Qwen2.5-0.5B-Instruct"
    ),
    holds=lambda source: (
        cel_matches(MODEL_SOURCE_PATTERN, source) and not cel_matches(_PARENT_SEGMENT, source)
    ),
)


class ModelSourceKind(StrEnum):
    HUGGING_FACE = "hf"
    PVC = "pvc"
    S3 = "s3"
    LOCAL = "local"


@dataclass(frozen=True)
class ModelSource:
    """A parsed `spec.model.source`. `location` is the repo id (hf), claim (pvc), bucket (s3) or path (local);
    `path` is the path inside the claim or bucket ("" for the root of a claim)."""

    kind: ModelSourceKind
    location: str
    path: str = ""

    @classmethod
    def parse(cls, source: str) -> ModelSource:
        scheme, sep, rest = source.partition("://")
        if not sep:
            return cls(ModelSourceKind.LOCAL, source.rstrip("/") or "/")
        if scheme == "hf":
            return cls(ModelSourceKind.HUGGING_FACE, rest)
        location, _, path = rest.partition("/")
        return cls(ModelSourceKind(scheme), location, path.strip("/"))

    @property
    def volume_claim(self) -> str | None:
        """The PVC that worker pods must mount for this source, if any."""
        return self.location if self.kind is ModelSourceKind.PVC else None

    @property
    def engine_model_argument(self) -> str:
        """What vLLM's --model receives: a repo id, a local directory, or the s3:// URI itself."""
        match self.kind:
            case ModelSourceKind.HUGGING_FACE:
                return self.location
            case ModelSourceKind.PVC:
                return "/".join(part for part in (MODEL_PVC_MOUNT_ROOT, self.location, self.path) if part)
            case ModelSourceKind.S3:
                return f"s3://{self.location}/{self.path}"
            case ModelSourceKind.LOCAL:
                return self.location


class ModelSpec(ApiModel):
    """Which model the engines serve and how to fetch it."""

    source: Annotated[str, Field(min_length=1, max_length=1024), _MODEL_SOURCE_RULE] = Field(
        description=(
            "Where the weights come from: hf://ORG/NAME (Hugging Face Hub), pvc://CLAIM/PATH (a "
            "PersistentVolumeClaim in the namespace, mounted read-only), s3://BUCKET/KEY, or an absolute "
            "path present in the image or on the node."
        )
    )
    revision: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="Model revision (branch, tag or commit) for Hugging Face sources.",
    )
    served_model_name: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        pattern=rf"^{NO_SPACE}+$",
        description="Name clients use in the OpenAI API's `model` field. Default: metadata.name.",
    )
    hf_token_secret_ref: SecretKeyRef | None = Field(
        None,
        description=(
            "Secret key holding a Hugging Face token, exposed to Ray pods as HF_TOKEN. The value is never "
            "copied into status or logs."
        ),
    )

    @property
    def parsed_source(self) -> ModelSource:
        return ModelSource.parse(self.source)

    def served_name(self, cluster_name: str) -> str:
        """The OpenAI model name; the default is applied here, not in the schema, because it depends on
        metadata.name."""
        return self.served_model_name or cluster_name


class ModelCacheSpec(ApiModel):
    """A PersistentVolumeClaim shared by the workers as the Hugging Face cache (HF_HOME), so restarts and
    new workers do not download the weights again."""

    claim_name: ObjectName = Field(
        description="PersistentVolumeClaim in the namespace; ReadWriteMany if several workers."
    )
    mount_path: Annotated[
        str,
        Field(min_length=2, max_length=512, pattern=rf"^/{NO_SPACE}*$"),
        Rule(
            cel=f"!(self == '{SHM_MOUNT_PATH}' || self.startsWith('{SHM_MOUNT_PATH}/') || "
            f"self == '{MODEL_PVC_MOUNT_ROOT}' || self.startsWith('{MODEL_PVC_MOUNT_ROOT}/'))",
            message=(
                f"spec.modelCache.mountPath must not be {SHM_MOUNT_PATH} or under {MODEL_PVC_MOUNT_ROOT} "
                f"(the operator mounts those): choose another path, e.g. {DEFAULT_MODEL_CACHE_MOUNT_PATH}"
            ),
            holds=lambda path: (
                not any(
                    path == root or path.startswith(root + "/")
                    for root in (SHM_MOUNT_PATH, MODEL_PVC_MOUNT_ROOT)
                )
            ),
        ),
    ] = Field(
        DEFAULT_MODEL_CACHE_MOUNT_PATH, description="Where workers mount the claim; HF_HOME points here."
    )


# --- engine -------------------------------------------------------------------------------------------

# Flags the operator derives from typed fields; a second value in extraArgs would silently win or clash.
OWNED_ENGINE_FLAGS: tuple[str, ...] = (
    "--model",
    "--served-model-name",
    "--tensor-parallel-size",
    "-tp",
    "--pipeline-parallel-size",
    "-pp",
    "--data-parallel-size",
    "-dp",
    "--distributed-executor-backend",
    "--host",
    "--port",
    "--api-key",
    "--max-model-len",
    "--dtype",
    "--gpu-memory-utilization",
    "--quantization",
    "-q",
    "--revision",
)


def _flag_pattern(flag: str) -> str:
    # vLLM's FlexibleArgumentParser treats `--a_b` like `--a-b`, so both spellings are owned.
    dashes = "--" if flag.startswith("--") else "-"
    return dashes + flag[len(dashes) :].replace("-", "[-_]")


OWNED_ENGINE_FLAG_PATTERN = "^(" + "|".join(_flag_pattern(flag) for flag in OWNED_ENGINE_FLAGS) + ")(=|$)"

_EXTRA_ARGS_RULE = Rule(
    cel=f"self.all(arg, !arg.matches({cel_regex(OWNED_ENGINE_FLAG_PATTERN)}))",
    message=(
        "spec.engine.extraArgs must not set flags the operator owns ("
        + ", ".join(OWNED_ENGINE_FLAGS)
        + "): use spec.model.*, spec.engine.tensorParallelSize, pipelineParallelSize, executorBackend, "
        "maxModelLen, dtype, gpuMemoryUtilization, quantization, port and apiKeySecretRef instead"
    ),
    holds=lambda args: not any(cel_matches(OWNED_ENGINE_FLAG_PATTERN, arg) for arg in args),
)

# The engine's environment the operator owns: rayvllm.engine_env.
_ENV_RULES = (
    Rule(
        cel=(
            f"self.all(e, !e.name.startsWith('{RAY_AUTH_ENV_PREFIX}') "
            f"&& !(e.name in {cel_string_list(RAY_AUTH_ENV_NAMES)}))"
        ),
        message=(
            f"spec.engine.env must not set {RAY_AUTH_ENV_PREFIX}* (RAY_AUTH_MODE, RAY_AUTH_TOKEN, "
            f"RAY_AUTH_TOKEN_PATH) or {', '.join(RAY_AUTH_ENV_NAMES)}: they would turn off or replace the Ray "
            "cluster's token auth, which the operator has KubeRay set up; remove them"
        ),
        holds=lambda env: not any(sets_ray_auth(var.name) for var in env),
    ),
    Rule(
        cel=f"self.all(e, !(e.name in {cel_string_list(OWNED_ENV_NAMES)}))",
        message=(
            "spec.engine.env must not set "
            + ", ".join(OWNED_ENV_NAMES)
            + ": use spec.model.hfTokenSecretRef and spec.engine.apiKeySecretRef instead"
        ),
        holds=lambda env: not any(var.name in OWNED_ENV_NAMES for var in env),
    ),
    Rule(
        # Pods' env is a map keyed by name under server-side apply: duplicates fail every apply.
        cel="self.all(e, self.exists_one(f, f.name == e.name))",
        message="spec.engine.env has a duplicate name: give each variable one entry",
        holds=lambda env: len({var.name for var in env}) == len(env),
    ),
)

# Ports Ray itself binds in the pod that hosts an engine's API server (KubeRay defaults).
RAY_RESERVED_PORTS: tuple[int, ...] = (6379, 8080, 8265, 10001, 52365)

_PORT_RULE = Rule(
    cel=f"!(self in {list(RAY_RESERVED_PORTS)})",
    message=(
        "spec.engine.port must not be one of Ray's ports ("
        + ", ".join(map(str, RAY_RESERVED_PORTS))
        + "): choose another, e.g. 8000"
    ),
    holds=lambda port: port not in RAY_RESERVED_PORTS,
)


class EngineSpec(ApiModel):
    """How each vLLM engine runs. GPUs per engine = tensorParallelSize x pipelineParallelSize."""

    tensor_parallel_size: int = Field(1, ge=1, le=1024, description="vLLM --tensor-parallel-size.")
    pipeline_parallel_size: int = Field(1, ge=1, le=1024, description="vLLM --pipeline-parallel-size.")
    executor_backend: Literal["ray", "mp"] = Field(
        "ray",
        description=(
            "vLLM --distributed-executor-backend. ray places an engine's GPU workers across Ray worker "
            "pods; mp runs the whole engine inside the one pod that hosts its API server."
        ),
    )
    max_model_len: int | None = Field(None, ge=1, description="vLLM --max-model-len (context length).")
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None = Field(
        None, description="vLLM --dtype."
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="vLLM --gpu-memory-utilization, in (0, 1]."
    )
    quantization: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[a-z0-9_-]+$", description="vLLM --quantization method."
    )
    extra_args: Annotated[
        list[Annotated[str, Field(max_length=1024)]], Field(max_length=64), _EXTRA_ARGS_RULE
    ] = Field(
        default_factory=list,
        description=(
            "More vLLM server arguments, passed as given. Flags the operator owns are refused: "
            + ", ".join(OWNED_ENGINE_FLAGS)
            + "."
        ),
    )
    env: Annotated[list[EnvVar], Field(max_length=64), *_ENV_RULES] = Field(
        default_factory=list, description="Environment variables for the Ray worker containers that run vLLM."
    )
    port: Annotated[int, Field(ge=1024, le=65535), _PORT_RULE] = Field(
        8000, description="Port of each engine's OpenAI-compatible server, and of the Service."
    )
    startup_timeout_seconds: int = Field(
        1800,
        ge=1,
        le=86400,
        description="How long an engine may take to become healthy before the attempt counts as failed.",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding the API key clients must send; passed to vLLM as VLLM_API_KEY."
    )

    @property
    def gpus_per_engine(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


# --- ray ----------------------------------------------------------------------------------------------

# KubeRay refuses these in rayStartParams (labels) or when GCS fault tolerance is configured (redis-*).
KUBERAY_FORBIDDEN_START_PARAMS: tuple[str, ...] = ("labels", "redis-password", "redis-username")

_HEAD_START_PARAMS_RULE = Rule(
    cel=f"!{cel_string_list(KUBERAY_FORBIDDEN_START_PARAMS)}.exists(k, k in self)",
    message=(
        "spec.ray.head.rayStartParams must not set "
        + ", ".join(KUBERAY_FORBIDDEN_START_PARAMS)
        + ": KubeRay refuses them; use spec.ray.gcsFaultTolerance for Redis"
    ),
    holds=lambda params: not any(key in params for key in KUBERAY_FORBIDDEN_START_PARAMS),
)

# The head schedules no Ray work: GPU workers host the engines, and a busy head risks the whole cluster.
DEFAULT_HEAD_START_PARAMS: dict[str, str] = {"num-cpus": "0"}


class HeadSpec(ApiModel):
    """The Ray head pod. It has no GPUs and runs no engine; it hosts the GCS and the dashboard."""

    resources: ResourceRequirements | None = Field(
        None, description="Compute resources of the head container."
    )
    node_selector: StringMap = Field(default_factory=dict, description="Node labels the head pod must match.")
    tolerations: Annotated[list[Toleration], Field(max_length=64)] = Field(
        default_factory=list, description="Taints the head pod tolerates."
    )
    ray_start_params: Annotated[StringMap, _HEAD_START_PARAMS_RULE] = Field(
        default_factory=dict,
        description="Extra `ray start` parameters for the head, merged over the operator's {num-cpus: '0'}.",
    )


DEFAULT_GPU_RESOURCE_NAME = "nvidia.com/gpu"

_WORKER_GPU_RULE = Rule(
    cel="!has(self.resources) || "
    "((!has(self.resources.limits) || !(self.gpuResourceName in self.resources.limits)) && "
    "(!has(self.resources.requests) || !(self.gpuResourceName in self.resources.requests)))",
    message=(
        "spec.ray.worker.resources must not request the GPU resource named by "
        "spec.ray.worker.gpuResourceName: "
        "set spec.ray.worker.gpusPerWorker instead"
    ),
    holds=lambda worker: (
        worker.resources is None
        or all(
            worker.gpu_resource_name not in (amounts or {})
            for amounts in (worker.resources.limits, worker.resources.requests)
        )
    ),
    field_path=".resources",
)


class WorkerSpec(ApiModel):
    """The Ray GPU worker pods, all alike; their count derives from replicas and parallelism."""

    cel_rules = (_WORKER_GPU_RULE,)

    gpus_per_worker: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "GPUs per worker pod. Default 1: such pods fit any GPU node. Set it to the GPUs of a node "
            "(e.g. 8) to keep tensor-parallel groups on NVLink inside one pod."
        ),
    )
    gpu_resource_name: str = Field(
        DEFAULT_GPU_RESOURCE_NAME,
        min_length=1,
        max_length=253,
        pattern=QUALIFIED_NAME,
        description="Extended resource that requests GPUs, e.g. nvidia.com/gpu or amd.com/gpu.",
    )
    resources: ResourceRequirements | None = Field(
        None, description="CPU and memory of the worker container; GPUs come from gpusPerWorker."
    )
    node_selector: StringMap = Field(default_factory=dict, description="Node labels worker pods must match.")
    tolerations: Annotated[list[Toleration], Field(max_length=64)] = Field(
        default_factory=list, description="Taints worker pods tolerate (GPU nodes are often tainted)."
    )
    shm_size: Quantity = Field(
        "8Gi",
        description=(
            "Size of the memory-backed /dev/shm (NCCL needs far more than the 64Mi default). It counts "
            "against the pod's memory."
        ),
    )


class GcsFaultToleranceSpec(ApiModel):
    """Keep Ray's GCS state in Redis so a head restart does not lose the cluster (KubeRay GCS FT)."""

    redis_address: str = Field(
        min_length=1,
        max_length=512,
        pattern=r"^(rediss?://)?[A-Za-z0-9.-]+:[0-9]{1,5}$",
        description="Redis host:port, e.g. redis.ray.svc:6379.",
    )
    redis_password_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding the Redis password."
    )


# KubeRay parses rayVersion with Kubernetes' version.ParseGeneric (no leading zero in the major version,
# each part a uint64) and, with token authentication on (the operator always turns it on), refuses a
# RayCluster older than 2.52.0: silently for the VLLMCluster (an Event on the RayCluster, no status, no pods).
MIN_RAY_VERSION = "2.52.0"
RAY_VERSION_PATTERN = r"^(0|[1-9][0-9]{0,8})\.[0-9]{1,9}\.[0-9]{1,9}$"
_AT_LEAST_MIN_RAY_VERSION = r"^(([1-9][0-9]+|[3-9])\.|2\.0*(5[2-9]|[6-9][0-9]|[1-9][0-9]{2,})\.)"


def _ray_version_at_least_min(version: str) -> bool:
    major, minor, _ = (int(part) for part in version.split("."))
    return (major, minor) >= (2, 52)


_RAY_VERSION_RULE = Rule(
    cel=f"self.matches({cel_regex(_AT_LEAST_MIN_RAY_VERSION)})",
    message=(
        f"spec.ray.rayVersion must be {MIN_RAY_VERSION} or later: KubeRay's token authentication, which "
        "the operator turns on for the Ray dashboard, needs it (e.g. 2.60.0)"
    ),
    holds=_ray_version_at_least_min,
)


class RaySpec(ApiModel):
    """The KubeRay RayCluster the engines run on."""

    image: str = Field(
        min_length=1, max_length=1024, description="Image with Ray and vLLM, for head and workers."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Image pull policy of head and workers."
    )
    ray_version: Annotated[str, Field(max_length=32, pattern=RAY_VERSION_PATTERN), _RAY_VERSION_RULE] = Field(
        "2.60.0", description="Ray version in the image (KubeRay rayVersion), 2.52.0 or later."
    )
    head: HeadSpec = Field(
        default_factory=HeadSpec, json_schema_extra={"default": {}}, description="The head pod."
    )
    worker: WorkerSpec = Field(
        default_factory=WorkerSpec, json_schema_extra={"default": {}}, description="The GPU worker pods."
    )
    gcs_fault_tolerance: GcsFaultToleranceSpec | None = Field(
        None, description="GCS fault tolerance through Redis; off when absent."
    )


# --- lifecycle ----------------------------------------------------------------------------------------


class RestartPolicySpec(ApiModel):
    """How failed engines are restarted: exponential backoff, capped, within a budget."""

    cel_rules = (
        Rule(
            # The API server also checks this rule against the `default: {}` of restartPolicy, before
            # nested defaults exist: absent fields must not fail it.
            cel="!has(self.maxBackoffSeconds) || !has(self.backoffSeconds) "
            "|| self.maxBackoffSeconds >= self.backoffSeconds",
            message="spec.restartPolicy.maxBackoffSeconds must be >= spec.restartPolicy.backoffSeconds",
            holds=lambda policy: policy.max_backoff_seconds >= policy.backoff_seconds,
            field_path=".maxBackoffSeconds",
        ),
    )

    max_restarts: int = Field(
        5, ge=0, le=1000, description="Restarts per engine before it is given up on (phase Failed)."
    )
    backoff_seconds: int = Field(
        30, ge=1, le=86400, description="Delay before the first restart; doubles each time."
    )
    max_backoff_seconds: int = Field(600, ge=1, le=86400, description="Cap of the restart delay.")

    def backoff_before_restart(self, restarts_so_far: int) -> int:
        """Seconds to wait before restart number `restarts_so_far + 1`."""
        return min(self.backoff_seconds << min(restarts_so_far, 32), self.max_backoff_seconds)


class UpgradeStrategySpec(ApiModel):
    """How spec changes reach running engines (docs/upgrades.md)."""

    cel_rules = (
        Rule(
            # Checked after defaulting; an object stored before these fields existed has them absent.
            cel="!has(self.type) || self.type != 'RollingReplicas' "
            "|| (has(self.maxSurge) ? self.maxSurge : 1) + (has(self.maxUnavailable) ? self.maxUnavailable : 0)"
            " >= 1",
            message=(
                "spec.upgradeStrategy.maxSurge + spec.upgradeStrategy.maxUnavailable must be >= 1 for type "
                "RollingReplicas: with both 0 no engine could ever be replaced"
            ),
            holds=lambda strategy: (
                strategy.type != "RollingReplicas" or strategy.max_surge + strategy.max_unavailable >= 1
            ),
            field_path=".maxSurge",
        ),
    )

    type: Literal["Recreate", "RollingReplicas"] = Field(
        "Recreate",
        description=(
            "Recreate: stop all engines, update the Ray cluster, start them again. RollingReplicas: replace "
            "engines one at a time on a change of engine settings (model, engine), within maxSurge and "
            "maxUnavailable; a change that replaces the Ray pods (spec.ray.image) still goes through Recreate."
        ),
    )
    max_surge: int = Field(
        1,
        ge=0,
        le=1000,
        description=(
            "RollingReplicas: new engines started beyond spec.replicas at once, each on an extra GPU worker "
            "pod, while the old engine it replaces keeps serving."
        ),
    )
    max_unavailable: int = Field(
        0,
        ge=0,
        le=1000,
        description=(
            "RollingReplicas: how many engines below spec.replicas may be out of service at once because the "
            "operator stopped an old engine before its replacement was ready (used when maxSurge is 0, or "
            "when the surge worker pod cannot be scheduled)."
        ),
    )


class AutoscalingSpec(ApiModel):
    """The operator sets spec.replicas from vLLM's own load: requests running plus waiting, averaged over the
    ready engines, against targetRequestsPerReplica (docs/autoscaling.md)."""

    cel_rules = (
        Rule(
            # Checked after defaulting, but an absent minReplicas must not fail it either.
            cel="!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
            message="spec.autoscaling.minReplicas must be <= spec.autoscaling.maxReplicas",
            holds=lambda autoscaling: autoscaling.min_replicas <= autoscaling.max_replicas,
            field_path=".minReplicas",
        ),
    )

    min_replicas: int = Field(
        1,
        ge=1,
        le=1000,
        description=(
            "Fewest engines. At least 1: the load signal comes from serving engines, so none could tell "
            "when to start again."
        ),
    )
    max_replicas: int = Field(ge=1, le=1000, description="Most engines (and their GPU worker pods).")
    target_requests_per_replica: float = Field(
        gt=0,
        le=100000,
        description=(
            "Requests in flight per engine to aim at: vllm:num_requests_running + vllm:num_requests_waiting "
            "from each ready engine's /metrics, averaged over the ready engines."
        ),
    )
    scale_up_stabilization_seconds: int = Field(
        30,
        ge=0,
        le=86400,
        description="The average must stay above the target this long before one engine is added.",
    )
    scale_down_delay_seconds: int = Field(
        300,
        ge=0,
        le=86400,
        description=(
            "One engine fewer must have stayed below the target (the load over one engine fewer) this long "
            "before one engine is removed."
        ),
    )


# --- the spec -----------------------------------------------------------------------------------------

_GPUS_PER_ENGINE_CEL = "(self.engine.tensorParallelSize * self.engine.pipelineParallelSize)"
_GPUS_PER_WORKER_CEL = "self.ray.worker.gpusPerWorker"


def _packs_into_workers(spec: VLLMClusterSpec) -> bool:
    per_engine, per_worker = spec.engine.gpus_per_engine, spec.ray.worker.gpus_per_worker
    return per_worker % per_engine == 0 if per_engine <= per_worker else per_engine % per_worker == 0


_SPEC_RULES = (
    Rule(
        cel=f"self.replicas <= 1 || {_GPUS_PER_ENGINE_CEL} >= {_GPUS_PER_WORKER_CEL}",
        message=(
            "spec.replicas > 1 needs one worker pod per engine, because each engine's API server listens on "
            "spec.engine.port in its own pod: make spec.ray.worker.gpusPerWorker <= "
            "spec.engine.tensorParallelSize x spec.engine.pipelineParallelSize (e.g. gpusPerWorker 1)"
        ),
        holds=lambda spec: spec.replicas <= 1 or spec.gpus_per_engine >= spec.ray.worker.gpus_per_worker,
        field_path=".ray.worker.gpusPerWorker",
    ),
    Rule(
        cel=f"!has(self.autoscaling) || self.autoscaling.maxReplicas <= 1 "
        f"|| {_GPUS_PER_ENGINE_CEL} >= {_GPUS_PER_WORKER_CEL}",
        message=(
            "spec.autoscaling.maxReplicas > 1 needs one worker pod per engine, because each engine's API "
            "server listens on spec.engine.port in its own pod: make spec.ray.worker.gpusPerWorker <= "
            "spec.engine.tensorParallelSize x spec.engine.pipelineParallelSize (e.g. gpusPerWorker 1)"
        ),
        holds=lambda spec: (
            spec.autoscaling is None
            or spec.autoscaling.max_replicas <= 1
            or spec.gpus_per_engine >= spec.ray.worker.gpus_per_worker
        ),
        field_path=".ray.worker.gpusPerWorker",
    ),
    Rule(
        cel=f"{_GPUS_PER_ENGINE_CEL} <= {_GPUS_PER_WORKER_CEL}"
        f" ? {_GPUS_PER_WORKER_CEL} % {_GPUS_PER_ENGINE_CEL} == 0"
        f" : {_GPUS_PER_ENGINE_CEL} % {_GPUS_PER_WORKER_CEL} == 0",
        message=(
            "spec.engine.tensorParallelSize x spec.engine.pipelineParallelSize (GPUs per engine) must "
            "pack into whole workers of spec.ray.worker.gpusPerWorker GPUs: make gpusPerWorker a multiple "
            "of it, or it a "
            "multiple of gpusPerWorker"
        ),
        holds=_packs_into_workers,
        field_path=".ray.worker.gpusPerWorker",
    ),
    Rule(
        cel=f"self.engine.executorBackend != 'mp' || {_GPUS_PER_ENGINE_CEL} <= {_GPUS_PER_WORKER_CEL}",
        message=(
            "spec.engine.executorBackend mp runs an engine inside one worker pod, so "
            "spec.engine.tensorParallelSize x spec.engine.pipelineParallelSize must be <= "
            "spec.ray.worker.gpusPerWorker: raise gpusPerWorker or "
            "use executorBackend ray"
        ),
        holds=lambda spec: (
            spec.engine.executor_backend != "mp"
            or spec.engine.gpus_per_engine <= spec.ray.worker.gpus_per_worker
        ),
        field_path=".engine.executorBackend",
    ),
    Rule(
        cel="!has(self.modelCache) || !has(self.engine.env) "
        "|| !self.engine.env.exists(e, e.name == 'HF_HOME')",
        message=(
            "spec.engine.env must not set HF_HOME when spec.modelCache is set: "
            "the cache's mountPath is HF_HOME"
        ),
        holds=lambda spec: spec.model_cache is None or all(var.name != "HF_HOME" for var in spec.engine.env),
        field_path=".engine.env",
    ),
)


class VLLMClusterSpec(ApiModel):
    """Desired state of a VLLMCluster: `replicas` independent vLLM engines serving one model on one Ray
    cluster."""

    cel_rules = _SPEC_RULES

    model: ModelSpec = Field(description="The model to serve.")
    model_cache: ModelCacheSpec | None = Field(
        None, description="Persistent Hugging Face cache for the workers."
    )
    engine: EngineSpec = Field(
        default_factory=EngineSpec, json_schema_extra={"default": {}}, description="The vLLM engine settings."
    )
    replicas: int = Field(
        1,
        ge=0,
        le=1000,
        description="Independent engines (data-parallel copies) behind the Service; /scale target.",
    )
    autoscaling: AutoscalingSpec | None = Field(
        None,
        description=(
            "Scale on vLLM's own load signals. While set, the operator owns spec.replicas: `kubectl scale` "
            "only sets where the next decision starts from (a value outside [minReplicas, maxReplicas] is "
            "brought back at once). Unset: spec.replicas is the user's (or their HorizontalPodAutoscaler's, "
            "through /scale)."
        ),
    )
    ray: RaySpec = Field(description="The Ray cluster the engines run on.")
    restart_policy: RestartPolicySpec = Field(
        default_factory=RestartPolicySpec,
        json_schema_extra={"default": {}},
        description="Engine restart policy.",
    )
    upgrade_strategy: UpgradeStrategySpec = Field(
        default_factory=UpgradeStrategySpec,
        json_schema_extra={"default": {}},
        description="How spec changes are rolled out.",
    )
    suspend: bool = Field(
        False, description="Stop the engines and delete the Ray pods (freeing GPUs) while keeping the object."
    )

    @property
    def gpus_per_engine(self) -> int:
        return self.engine.gpus_per_engine

    @property
    def total_gpus(self) -> int:
        return self.replicas * self.gpus_per_engine

    @property
    def desired_workers(self) -> int:
        """GPU worker pods: ceil(replicas x TP x PP / gpusPerWorker). Kept while suspended (KubeRay's suspend
        removes the pods), so resuming restores the same shape."""
        return math.ceil(self.total_gpus / self.ray.worker.gpus_per_worker)

    @property
    def workers_per_engine(self) -> int:
        """Worker pods one more engine needs: its GPUs, and at least one pod for its API server's slot."""
        return math.ceil(self.gpus_per_engine / self.ray.worker.gpus_per_worker)

    @property
    def rolling(self) -> bool:
        return self.upgrade_strategy.type == "RollingReplicas"

    @property
    def engine_slots_per_worker(self) -> int:
        """Engine API servers one worker pod can host: one, because every API server listens on
        spec.engine.port and the Service targets that one port on each serving pod."""
        return 1

    @property
    def engine_slots_per_job(self) -> int:
        """Units of ENGINE_SLOT_RESOURCE each engine's job requests: the one slot of the pod that will host
        its API server (its GPUs come from vLLM's placement group, or for mp from that pod)."""
        return 1
