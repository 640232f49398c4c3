"""A small model of what the API server does with a VLLMCluster on create: apply the CRD's defaults, check
the OpenAPI schema (the keywords our CRD uses), then evaluate every `x-kubernetes-validations` rule with a
CEL interpreter. It lets unit tests compare the CRD's verdict with pydantic's on the same input; the
integration tier checks the real API server."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from rayvllm.crdgen import openapi_schema
from rayvllm.models.rules import cel_matches

Schema = dict[str, Any]


@cache
def root_schema() -> Schema:
    return openapi_schema()


def apply_defaults(schema: Schema, value: Any) -> Any:
    """Structural defaulting: a missing property with a default gets it, then defaulting recurses (so a
    defaulted `{}` receives its own fields' defaults)."""
    if isinstance(value, dict):
        value = dict(value)
        for name, child in schema.get("properties", {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            value = {key: apply_defaults(additional, item) for key, item in value.items()}
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], item) for item in value]
    return value


def _type_ok(expected: str, value: Any) -> bool:
    match expected:
        case "object":
            return isinstance(value, dict)
        case "array":
            return isinstance(value, list)
        case "string":
            return isinstance(value, str)
        case "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        case "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "boolean":
            return isinstance(value, bool)
    raise AssertionError(f"schema type {expected} not modelled")


def schema_errors(schema: Schema, value: Any, path: str) -> Iterator[str]:
    """OpenAPI violations, worded like the API server's (`<path>: ...`)."""
    if schema.get("x-kubernetes-int-or-string"):
        if not (_type_ok("integer", value) or isinstance(value, str)):
            yield f"{path}: must be an integer or a string"
        elif isinstance(value, str) and "pattern" in schema and not cel_matches(schema["pattern"], value):
            yield f"{path}: should match '{schema['pattern']}'"
        return
    if "type" not in schema:
        return  # x-kubernetes-preserve-unknown-fields without a type: anything goes
    if not _type_ok(schema["type"], value):
        yield f"{path}: must be of type {schema['type']}"
        return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{path}: Unsupported value: {value!r}"
    if "minimum" in schema:
        if schema.get("exclusiveMinimum") and value <= schema["minimum"]:
            yield f"{path}: should be greater than {schema['minimum']}"
        elif value < schema["minimum"]:
            yield f"{path}: should be greater than or equal to {schema['minimum']}"
    if "maximum" in schema and value > schema["maximum"]:
        yield f"{path}: should be less than or equal to {schema['maximum']}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            yield f"{path}: should be at least {schema['minLength']} chars long"
        if len(value) > schema.get("maxLength", len(value)):
            yield f"{path}: may not be more than {schema['maxLength']} bytes"
        if "pattern" in schema and not cel_matches(schema["pattern"], value):
            yield f"{path}: should match '{schema['pattern']}'"
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            yield f"{path}: must have at most {schema['maxItems']} items"
        for index, item in enumerate(value):
            yield from schema_errors(schema["items"], item, f"{path}[{index}]")
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        for name in schema.get("required", []):
            if name not in value:
                yield f"{path}.{name}: Required value"
        for name, item in value.items():
            child_path = f"{path}.{name}" if path else name
            if name in properties:
                yield from schema_errors(properties[name], item, child_path)
            elif isinstance(additional, dict):
                yield from schema_errors(additional, item, child_path)
            elif properties:
                yield f'unknown field "{child_path}"'


_environment = celpy.Environment()


@cache
def _program(rule: str) -> Any:
    return _environment.program(_environment.compile(rule))


def cel_errors(schema: Schema, value: Any, path: str) -> Iterator[str]:
    """Messages of the rules that fail (or cannot be evaluated, which the API server also rejects)."""
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            result = _program(rule["rule"]).evaluate({"self": json_to_cel(value)})
        except CELEvalError as error:
            yield f"{path or '<root>'}: rule {rule['rule']!r} failed to evaluate: {error}"
            continue
        if isinstance(result, CELEvalError):
            yield f"{path or '<root>'}: rule {rule['rule']!r} failed to evaluate: {result}"
        elif not result:
            yield f"{path or '<root>'}: {rule['message']}"
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        for name, item in value.items():
            child_path = f"{path}.{name}" if path else name
            if name in properties:
                yield from cel_errors(properties[name], item, child_path)
            elif isinstance(additional, dict):
                yield from cel_errors(additional, item, child_path)
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from cel_errors(schema["items"], item, f"{path}[{index}]")


def admission_errors(body: dict[str, Any]) -> list[str]:
    """What the CRD says about `body` on create: schema violations first, CEL rules only on a
    schema-valid object (the API server skips CEL for nodes whose types are wrong)."""
    schema = root_schema()
    defaulted = apply_defaults(schema, body)
    errors = list(schema_errors(schema, defaulted, ""))
    if errors:
        return errors
    return list(cel_errors(schema, defaulted, ""))
