"""Kubernetes core shapes that the VLLMCluster spec embeds (the subset the operator copies into pods),
typed so the CRD carries a real schema instead of `x-kubernetes-preserve-unknown-fields`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictInt, StrictStr, WithJsonSchema

from rayvllm.models.base import ApiModel
from rayvllm.models.rules import Rule

DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
ENV_VAR_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# A label key or extended resource name: optional DNS prefix, then a name segment.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
# The pattern apimachinery's resource.Quantity parser accepts, as in every generated Kubernetes CRD.
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

Quantity = Annotated[
    StrictInt | Annotated[StrictStr, Field(pattern=QUANTITY)],
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes resource quantity (`2`, `500m`, `16Gi`), int-or-string on the wire like in core types."""

ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)]
ConfigKey = Annotated[str, Field(min_length=1, max_length=253, pattern=CONFIG_KEY)]
# Map keys stay unconstrained: a structural CRD schema has no propertyNames.
StringMap = dict[str, Annotated[str, Field(max_length=4096)]]


class KeyRef(ApiModel):
    """A key of a Secret or ConfigMap in the VLLMCluster's namespace."""

    name: ObjectName = Field(description="Name of the object, in the VLLMCluster's namespace.")
    key: ConfigKey = Field(description="Key within the object's data.")


class SecretKeyRef(KeyRef):
    """A key of a Secret in the VLLMCluster's namespace. The operator only ever references the Secret from
    pods (secretKeyRef); its value is never copied into specs, status, logs or Ray job requests."""


class EnvKeyRef(KeyRef):
    """A key of a Secret or ConfigMap, as in core/v1 EnvVarSource."""

    optional: bool | None = Field(
        None, description="Start the container even if the object or key is missing."
    )


class ObjectFieldRef(ApiModel):
    """A field of the pod, as in core/v1 ObjectFieldSelector."""

    field_path: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        description="Path of the field, e.g. metadata.name or status.podIP."
    )
    api_version: str | None = Field(None, max_length=64, description="Version of the schema the path is in.")


class ResourceFieldRef(ApiModel):
    """A container resource limit or request, as in core/v1 ResourceFieldSelector."""

    resource: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        description="Resource to expose, e.g. limits.memory."
    )
    container_name: str | None = Field(None, max_length=63, description="Container, for volumes only.")
    divisor: Quantity | None = Field(None, description="Output unit of the exposed resource; default 1.")


_EXACTLY_ONE_SOURCE = Rule(
    cel="[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef), has(self.resourceFieldRef)]"
    ".filter(x, x).size() == 1",
    message="valueFrom must set exactly one of secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef",
    holds=lambda src: (
        [src.secret_key_ref, src.config_map_key_ref, src.field_ref, src.resource_field_ref].count(None) == 3
    ),
)


class EnvVarSource(ApiModel):
    """Where an environment variable's value comes from, as in core/v1 EnvVarSource."""

    cel_rules = (_EXACTLY_ONE_SOURCE,)

    secret_key_ref: EnvKeyRef | None = Field(None, description="A key of a Secret in the namespace.")
    config_map_key_ref: EnvKeyRef | None = Field(None, description="A key of a ConfigMap in the namespace.")
    field_ref: ObjectFieldRef | None = Field(None, description="A field of the pod.")
    resource_field_ref: ResourceFieldRef | None = Field(None, description="A resource of the container.")


_VALUE_OR_VALUE_FROM = Rule(
    cel="!(has(self.value) && has(self.valueFrom))",
    message="env: set either value or valueFrom, not both",
    holds=lambda env: env.value is None or env.value_from is None,
)


class EnvVar(ApiModel):
    """An environment variable, as in core/v1 EnvVar."""

    cel_rules = (_VALUE_OR_VALUE_FROM,)

    name: Annotated[str, Field(min_length=1, max_length=256, pattern=ENV_VAR_NAME)] = Field(
        description="Name of the variable."
    )
    value: Annotated[str, Field(max_length=32768)] | None = Field(None, description="Literal value.")
    value_from: EnvVarSource | None = Field(None, description="Source of the value, instead of value.")


class Toleration(ApiModel):
    """A pod toleration, as in core/v1 Toleration."""

    key: str | None = Field(None, max_length=317, description="Taint key to tolerate; empty means all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(
        None, description="Exists tolerates any value; Equal (the default) only `value`."
    )
    value: str | None = Field(None, max_length=63, description="Taint value to tolerate with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty means all effects."
    )
    toleration_seconds: int | None = Field(
        None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class ResourceRequirements(ApiModel):
    """Container compute resources, as in core/v1 ResourceRequirements (without dynamic resource claims)."""

    limits: dict[str, Quantity] | None = Field(
        None, description="Maximum amounts, e.g. {cpu: 8, memory: 64Gi}."
    )
    requests: dict[str, Quantity] | None = Field(
        None, description="Amounts the scheduler reserves, e.g. {cpu: 4, memory: 32Gi}."
    )
