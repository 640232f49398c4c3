"""Validation rules written once and enforced twice: as CEL `x-kubernetes-validations` in the CRD (so the
API server rejects bad objects at admission) and as pydantic validators (so the operator rejects whatever
reached it another way, e.g. an object stored before the CRD tightened).

A `Rule` carries the CEL text that the API server evaluates and a Python predicate with the same meaning;
tests/unit evaluate both on every sample and bad input to prove they agree. Messages name the field and
the fix because they are what a user reads from `kubectl apply`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

CEL_VALIDATIONS_KEY = "x-kubernetes-validations"


def cel_matches(pattern: str, value: str) -> bool:
    """What CEL's `value.matches(pattern)` answers: an unanchored RE2 search.

    Python's `$` also matches before a final newline, RE2's does not; `\\Z` is Python's end of text.
    Patterns used here stay within the syntax both engines share and never contain a literal `$`.
    """
    python_pattern = pattern.replace("$", r"\Z")
    return re.search(python_pattern, value) is not None


def cel_regex(pattern: str) -> str:
    """A CEL raw string literal, so regex backslashes reach RE2 unchanged."""
    if "'" in pattern:
        raise ValueError(f"regex {pattern!r} cannot be a single-quoted CEL raw string")
    return f"r'{pattern}'"


def cel_string_list(values: tuple[str, ...]) -> str:
    """A CEL list literal of strings (the values are plain identifiers-like names, no quoting needed)."""
    return "[" + ", ".join(f"'{value}'" for value in values) + "]"


@dataclass(frozen=True)
class Rule:
    """One admission rule: `cel` is evaluated by the API server with `self` bound to the schema node the
    rule is attached to; `holds` is the same predicate over the validated Python value.

    Used as `Annotated[...]` metadata on a field, or listed in a model's `cel_rules` for cross-field rules.
    """

    cel: str
    message: str
    holds: Callable[[Any], bool] = field(compare=False)
    # JSONPath (relative to the node) that the API server reports as the failing field.
    field_path: str | None = None

    def check(self, value: Any) -> None:
        if not self.holds(value):
            raise ValueError(self.message)

    def to_schema(self) -> dict[str, str]:
        rule = {"rule": self.cel, "message": self.message}
        if self.field_path is not None:
            rule["fieldPath"] = self.field_path
        return rule

    def _validate(self, value: Any) -> Any:
        self.check(value)
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._validate, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault(CEL_VALIDATIONS_KEY, []).append(self.to_schema())
        return json_schema


def add_cel_rules(json_schema: dict[str, Any], rules: tuple[Rule, ...]) -> None:
    if rules:
        json_schema.setdefault(CEL_VALIDATIONS_KEY, []).extend(rule.to_schema() for rule in rules)
