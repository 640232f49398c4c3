"""The VLLMCluster object as a whole, and the entry points that turn an API body into models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from rayvllm import API_GROUP, API_VERSION
from rayvllm.errors import InvalidSpecError
from rayvllm.models.base import ApiModel
from rayvllm.models.rules import Rule, cel_matches, cel_regex
from rayvllm.models.spec import VLLMClusterSpec
from rayvllm.models.status import VLLMClusterStatus

API_VERSION_STRING = f"{API_GROUP}/{API_VERSION}"

# KubeRay refuses RayCluster names over 53 characters (so `<name>-serve-svc` fits 63) and names that are
# not DNS-1035 labels; the RayCluster and the Service take the VLLMCluster's name unchanged.
MAX_NAME_LENGTH = 53
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

NAME_RULES = (
    Rule(
        cel=f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
        message=(
            f"metadata.name must be at most {MAX_NAME_LENGTH} characters, because the RayCluster and Service "
            "take this name and KubeRay refuses longer ones: choose a shorter name"
        ),
        holds=lambda cluster: cluster.metadata.name is None or len(cluster.metadata.name) <= MAX_NAME_LENGTH,
    ),
    Rule(
        cel=f"self.metadata.name.matches({cel_regex(DNS1035_LABEL)})",
        message=(
            "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a "
            "letter), "
            "because the Service takes this name: rename the object, e.g. llama-70b"
        ),
        holds=lambda cluster: (
            cluster.metadata.name is None or cel_matches(DNS1035_LABEL, cluster.metadata.name)
        ),
    ),
)


class ObjectMeta(BaseModel):
    """The metadata fields the operator reads; the API server owns the rest."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="allow", frozen=True
    )

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class VLLMCluster(ApiModel):
    """A VLLMCluster runs `spec.replicas` vLLM engines on a KubeRay RayCluster behind one Service."""

    cel_rules = NAME_RULES

    api_version: Literal["rayvllm.io/v1alpha1"] = Field(description="APIVersion of this object.")
    kind: Literal["VLLMCluster"] = Field(description="Kind of this object.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: VLLMClusterSpec = Field(description="Desired state.")
    status: VLLMClusterStatus | None = Field(None, description="Observed state, written by the operator.")


def _location(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "<root>"


def _problems(error: ValidationError, under: tuple[str, ...]) -> list[tuple[str, str]]:
    return [
        (_location((*under, *problem["loc"])), problem["msg"].removeprefix("Value error, "))
        for problem in error.errors(include_url=False)
    ]


def _invalid(error: ValidationError, under: tuple[str, ...] = ()) -> InvalidSpecError:
    (first_path, first_message), *others = _problems(error, under)
    return InvalidSpecError(first_path, "; ".join([first_message, *(f"{p}: {m}" for p, m in others)]))


def parse_cluster(body: Mapping[str, Any]) -> VLLMCluster:
    """Validate a VLLMCluster body (apiVersion, kind, metadata, spec). The status is left out on purpose:
    a status written by an older operator must never make the user's spec look invalid.

    Raises InvalidSpecError naming the first offending field.
    """
    try:
        return VLLMCluster.model_validate({key: value for key, value in body.items() if key != "status"})
    except ValidationError as error:
        raise _invalid(error) from error


def parse_spec(spec: Mapping[str, Any]) -> VLLMClusterSpec:
    """Validate just a spec; raises InvalidSpecError with field paths under `spec.`."""
    try:
        return VLLMClusterSpec.model_validate(spec)
    except ValidationError as error:
        raise _invalid(error, ("spec",)) from error


def parse_previous_status(status: Mapping[str, Any] | None) -> VLLMClusterStatus | None:
    """The status as last written, or None when absent or unreadable (then conditions restart their
    lastTransitionTime; nothing else depends on it)."""
    if not status:
        return None
    try:
        return VLLMClusterStatus.model_validate(status)
    except ValidationError:
        return None
