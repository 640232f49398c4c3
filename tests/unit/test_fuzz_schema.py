"""tests/support/fuzz.py, the integration tier's spec fuzzer: the CRD schema as JSON Schema, the mutation
helpers and the refusal judge, without a cluster."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis_jsonschema import from_schema

from tests.support.fuzz import (
    COMBOS,
    Case,
    api_path,
    crd_schema,
    draw_cases,
    minimal,
    rejection_problem,
    set_path,
    slots,
    spec_json_schema,
    to_json_schema,
    valid_objects,
)


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_no_kubernetes_extension_is_left() -> None:
    schema = to_json_schema(crd_schema())
    keys = {key for node in _walk(schema) for key in node}
    assert not [k for k in keys if k.startswith("x-kubernetes-")]
    assert "description" not in keys and "default" not in keys
    # The CRD does have them: the stripping did something.
    assert any(k.startswith("x-kubernetes-") for node in _walk(crd_schema()) for k in node)


def test_boolean_exclusive_minimum_becomes_draft7() -> None:
    utilization = spec_json_schema()["properties"]["engine"]["properties"]["gpuMemoryUtilization"]
    assert utilization == {"type": "number", "maximum": 1, "exclusiveMinimum": 0}
    assert to_json_schema({"type": "integer", "minimum": 3, "exclusiveMinimum": False}) == {
        "type": "integer",
        "minimum": 3,
    }
    assert to_json_schema({"type": "integer", "maximum": 3, "exclusiveMaximum": True}) == {
        "type": "integer",
        "exclusiveMaximum": 3,
    }


def test_unknown_formats_go_known_stay() -> None:
    assert to_json_schema({"type": "string", "format": "date-time"}) == {
        "type": "string",
        "format": "date-time",
    }
    assert to_json_schema({"type": "integer", "format": "int64"}) == {"type": "integer"}
    assert to_json_schema({"type": "string", "format": "quantity"}) == {"type": "string"}


def test_objects_closed_maps_and_preserved_objects_open() -> None:
    spec = spec_json_schema()
    assert spec["additionalProperties"] is False
    head = spec["properties"]["ray"]["properties"]["head"]["properties"]
    assert head["nodeSelector"]["additionalProperties"] == {"type": "string", "maxLength": 4096}
    kopf = to_json_schema(crd_schema())["properties"]["status"]["properties"]["kopf"]
    assert kopf == {"type": "object"}
    assert to_json_schema(
        {"type": "object", "properties": {}, "x-kubernetes-preserve-unknown-fields": True}
    ) == {
        "type": "object",
        "properties": {},
    }


def test_int_or_string_keeps_its_any_of() -> None:
    shm = spec_json_schema()["properties"]["ray"]["properties"]["worker"]["properties"]["shmSize"]
    assert shm["anyOf"] == [{"type": "integer"}, {"type": "string"}] and "pattern" in shm


def test_regex_cel_rules_become_patterns() -> None:
    source = spec_json_schema()["properties"]["model"]["properties"]["source"]
    assert source["pattern"].startswith("^(hf://")
    assert source["allOf"] == [{"not": {"pattern": r"(^|/)\.\.(/|$)"}}]
    # Other CEL rules are not JSON Schema: dropped, nothing added.
    port = spec_json_schema()["properties"]["engine"]["properties"]["port"]
    assert port == {"type": "integer", "minimum": 1024, "maximum": 65535}


def test_the_result_is_draft7_and_admits_every_valid_object() -> None:
    schema = spec_json_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    for body in valid_objects():
        jsonschema.Draft7Validator(schema).validate(body["spec"])


@settings(max_examples=15, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(from_schema(spec_json_schema()))
def test_hypothesis_jsonschema_draws_from_it(spec: Any) -> None:
    jsonschema.Draft7Validator(spec_json_schema()).validate(spec)


def test_minimal_fillers_are_valid_everywhere() -> None:
    """Creating the way to any slot with minimal() values keeps a valid object schema-valid (a mutation
    then changes exactly one thing; cross-field CEL rules may still judge the filler, e.g. an empty
    valueFrom)."""
    body = valid_objects()[0]
    validator = jsonschema.Draft7Validator(spec_json_schema())
    invalid = []
    for slot in slots():
        if slot.node.get("type") == "object" and not slot.node.get("properties"):
            continue  # a map: its key is FUZZ_KEY
        spec = set_path(body["spec"], slot.path, minimal(slot.node, str(slot.path[-1])))
        invalid += [(slot.name, error.message) for error in validator.iter_errors(spec)]
    assert invalid == []


def test_api_path() -> None:
    assert api_path(("spec", "engine", "env", 0, "name")) == "spec.engine.env[0].name"


def test_combos_touch_real_paths() -> None:
    names = {slot.path for slot in slots()}
    for combo in COMBOS:
        for path, _ in combo.changes:
            assert path in names, (combo.label, path)


def _status(message: str, *fields: str) -> dict[str, Any]:
    return {"message": message, "details": {"causes": [{"field": f} for f in fields]}, "code": 422}


def test_a_mutation_refusal_must_name_the_touched_field_or_one_above() -> None:
    case = Case("mutation", "x", {"engine": {"env": [{"name": "HF_TOKEN"}]}}, ("spec.engine.env[0].name",))
    assert (
        rejection_problem(
            case, case.spec, _status("spec.engine.env: must not set HF_TOKEN", "spec.engine.env")
        )
        is None
    )
    problem = rejection_problem(case, case.spec, _status("spec.replicas: bad", "spec.replicas"))
    assert problem and "spec.engine.env[0].name" in problem
    # "spec" alone names nothing.
    assert rejection_problem(case, case.spec, _status("spec: Invalid value", "spec"))


def test_a_schema_sample_refusal_must_name_a_field_of_the_object() -> None:
    case = Case("schema", "x", {"model": {"source": "x"}, "ray": {"image": "i"}})
    assert rejection_problem(case, case.spec, _status("spec.model.source: bad", "spec.model.source")) is None
    # A missing required field is named through its parent.
    case = Case("schema", "x", {"model": {"source": "x"}})
    assert rejection_problem(case, case.spec, _status("spec.ray: Required value", "spec.ray")) is None
    # Strict decoding has no causes, only the message.
    assert (
        rejection_problem(case, case.spec, {"message": 'strict decoding error: unknown field "spec.model.x"'})
        is None
    )
    assert rejection_problem(case, case.spec, _status("something is wrong"))
    assert rejection_problem(case, case.spec, _status("spec.engine.port: bad", "spec.engine.port"))


@pytest.mark.parametrize("n", [8])
def test_draws_are_deterministic(n: int) -> None:
    first, second = draw_cases(n, n), draw_cases(n, n)
    assert [c.to_json() for c in first] == [c.to_json() for c in second]
    assert len([c for c in first if c.origin == "schema"]) == n
    assert len([c for c in first if c.origin == "mutation"]) == n
