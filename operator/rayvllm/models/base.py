"""The base of every API model: camelCase on the wire, snake_case in Python, unknown fields and loose
types refused."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel

from rayvllm.models.rules import Rule, add_cel_rules


def _json_schema_extra(json_schema: dict[str, Any], model: type[BaseModel]) -> None:
    rules: tuple[Rule, ...] = getattr(model, "cel_rules", ())
    add_cel_rules(json_schema, rules)


class ApiModel(BaseModel):
    """Cross-field rules go in `cel_rules`: they land in the CRD and are checked after field validation."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        # The API server refuses "2" for an integer and true for a string; so must the operator.
        strict=True,
        frozen=True,
        json_schema_extra=_json_schema_extra,
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        for rule in type(self).cel_rules:
            rule.check(self)
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as the Kubernetes API wants it: camelCase, no nulls for unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
