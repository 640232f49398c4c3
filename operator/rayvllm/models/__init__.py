"""Pydantic models of the VLLMCluster API: THE contract with the CRD (crds/ is generated from them)."""

from rayvllm.models.kube import EnvVar, ResourceRequirements, SecretKeyRef, Toleration
from rayvllm.models.resource import (
    API_VERSION_STRING,
    MAX_NAME_LENGTH,
    VLLMCluster,
    parse_cluster,
    parse_previous_status,
    parse_spec,
)
from rayvllm.models.spec import (
    EngineSpec,
    ModelSource,
    ModelSourceKind,
    RaySpec,
    VLLMClusterSpec,
)
from rayvllm.models.status import (
    Condition,
    ConditionType,
    EndpointStatus,
    EngineStage,
    EngineStatus,
    Phase,
    RayClusterStatus,
    VLLMClusterStatus,
    engine_stage,
)

__all__ = [
    "API_VERSION_STRING",
    "MAX_NAME_LENGTH",
    "Condition",
    "ConditionType",
    "EndpointStatus",
    "EngineSpec",
    "EngineStage",
    "EngineStatus",
    "EnvVar",
    "ModelSource",
    "ModelSourceKind",
    "Phase",
    "RayClusterStatus",
    "RaySpec",
    "ResourceRequirements",
    "SecretKeyRef",
    "Toleration",
    "VLLMCluster",
    "VLLMClusterSpec",
    "VLLMClusterStatus",
    "engine_stage",
    "parse_cluster",
    "parse_previous_status",
    "parse_spec",
]
