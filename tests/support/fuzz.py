"""Fuzzed VLLMCluster specs, drawn from the CRD's own schema and from single mutations of valid objects, and
the checks that judge what the API server said about them. Pure: nothing here talks to a cluster.

    spec_json_schema()     # crds/...: openAPIV3Schema.properties.spec, as JSON Schema hypothesis-jsonschema takes
    draw_cases(...)        # deterministic Cases: schema samples, mutations of valid objects, then regressions
    rejection_problem(case, status)   # None when a refusal names the offending field, else why not

A Case is a spec plus `fields`: the paths a mutation touched (a refusal must name one of them, or a field
above it); schema samples touch no known path, so their refusal must name some field of the object.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis_jsonschema import from_schema

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "vllmclusters.rayvllm.io.yaml"
# Valid objects to mutate: the documented samples and the unit tier's valid cases.
VALID_OBJECTS = (
    *sorted((REPO / "manifests" / "samples").glob("*.yaml")),
    *sorted((REPO / "tests" / "unit" / "cases").glob("*.yaml")),
)
REGRESSIONS = REPO / "tests" / "bad_inputs" / "fuzz-regressions.json"
# The counts of this session's fuzz run, for the session's terminal summary (pytest captures what a passing
# test prints).
SUMMARY: list[str] = []
# Hypothesis caches Unicode tables (and, unless told otherwise, examples) under ./.hypothesis; nothing of
# it belongs in the repository, and the draws below use no example database at all.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "rayvllm-hypothesis")

Schema = dict[str, Any]
Path_ = tuple[str | int, ...]

# String formats hypothesis-jsonschema 0.23 can generate (its STRING_FORMATS). OpenAPI's own formats (int32,
# int64, byte, ...) and Kubernetes' (quantity, ...) are not JSON Schema's: dropped, the API server checks them.
KNOWN_FORMATS = frozenset(
    {
        "date-time",
        "full-date",
        "full-time",
        "date",
        "time",
        "email",
        "idn-email",
        "hostname",
        "idn-hostname",
        "ipv4",
        "ipv6",
        "uri",
        "uri-reference",
        "iri",
        "iri-reference",
        "uri-template",
        "json-pointer",
        "relative-json-pointer",
        "regex",
        "color",
    }
)
# Keywords that only document or default: they constrain nothing a generator must honour.
_DOCUMENTATION = frozenset({"description", "default", "example", "title"})
# The one shape of CEL rule that JSON Schema can say: a string matching one regex and not another
# (`self.matches(r'A')`, optionally `&& !self.matches(r'B')`), e.g. spec.model.source's rule. Without it
# nearly every schema sample would be refused for its source, and nothing behind that field would be tried.
_CEL_MATCHES = re.compile(r"^self\.matches\(r'([^']*)'\)(?:\s*&&\s*!self\.matches\(r'([^']*)'\))?$")


def crd_schema(path: Path = CRD_FILE) -> Schema:
    """The openAPIV3Schema of the (single) version of the CRD in `path`."""
    crd = yaml.safe_load(path.read_text())
    (version,) = crd["spec"]["versions"]
    schema: Schema = version["schema"]["openAPIV3Schema"]
    return schema


def to_json_schema(node: Any) -> Any:
    """A Kubernetes structural schema as a JSON Schema (draft 7) that hypothesis-jsonschema generates from.

    - every `x-kubernetes-*` extension goes: CEL rules (`x-kubernetes-validations`) are not JSON Schema
      (except the regex shape above, which becomes `pattern` / `not: {pattern}`); int-or-string is already
      spelled as its `anyOf`; list types and map keys constrain merges, not values;
    - `exclusiveMinimum: true` (OpenAPI 3.0's boolean form) becomes draft 7's number, the minimum itself;
    - a `format` hypothesis-jsonschema does not know is dropped (KNOWN_FORMATS);
    - an object with `properties` and no `additionalProperties` is closed (`additionalProperties: false`):
      the API server refuses unknown fields under strict field validation (kubectl's default), where
      JSON Schema would allow them; `x-kubernetes-preserve-unknown-fields` keeps an object open;
    - descriptions and defaults go (defaults are the API server's to apply).
    """
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: Schema = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in _DOCUMENTATION:
            continue
        if key == "format" and value not in KNOWN_FORMATS:
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: to_json_schema(child) for name, child in value.items()}
        elif key in ("required", "enum"):
            out[key] = list(value)
        else:
            out[key] = to_json_schema(value)
    if out.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    elif out.get("exclusiveMinimum") is False:
        del out["exclusiveMinimum"]
    if out.get("exclusiveMaximum") is True:
        out["exclusiveMaximum"] = out.pop("maximum")
    elif out.get("exclusiveMaximum") is False:
        del out["exclusiveMaximum"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("type") == "string":
        _add_cel_patterns(out, node.get("x-kubernetes-validations") or [])
    return out


def _add_cel_patterns(out: Schema, rules: Sequence[Mapping[str, Any]]) -> None:
    for rule in rules:
        match = _CEL_MATCHES.match(" ".join(str(rule.get("rule", "")).split()))
        if not match:
            continue
        wanted, unwanted = match.groups()
        if "pattern" in out:
            out.setdefault("allOf", []).append({"pattern": wanted})
        else:
            out["pattern"] = wanted
        if unwanted:
            out.setdefault("allOf", []).append({"not": {"pattern": unwanted}})


@cache
def spec_json_schema() -> Schema:
    """`spec` of VLLMCluster as JSON Schema. Only the spec is drawn: the test writes metadata itself (names
    must be unique and are judged by the root's CEL rules), and the status subresource drops a status
    sent on create."""
    schema: Schema = to_json_schema(crd_schema()["properties"]["spec"])
    return schema


# ---- cases -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One spec to submit. `origin` says where it came from (schema, mutation, regression); `fields` are the
    API paths (spec.engine.port, spec.engine.env[0].name) the mutation touched."""

    origin: str
    label: str
    spec: Any
    fields: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "label": self.label, "fields": list(self.fields), "spec": self.spec}


def api_path(path: Path_) -> str:
    """('spec', 'engine', 'env', 0, 'name') -> 'spec.engine.env[0].name', as the API server words it."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def valid_objects() -> list[dict[str, Any]]:
    objects = []
    for path in VALID_OBJECTS:
        body = yaml.safe_load(path.read_text())
        assert isinstance(body, dict) and isinstance(body.get("spec"), dict), path
        objects.append(body)
    return objects


@dataclass(frozen=True)
class Slot:
    """A place in a spec a mutation can write: its path (lists at index 0, maps at key FUZZ_KEY) and the
    JSON Schema node there."""

    path: Path_
    node: Schema

    @property
    def name(self) -> str:
        return api_path(("spec", *self.path))


FUZZ_KEY = "fuzz-key"


def slots(schema: Schema | None = None) -> list[Slot]:
    """Every property, list item and map value under spec, depth first."""
    found: list[Slot] = []

    def walk(node: Schema, path: Path_) -> None:
        for name, child in (node.get("properties") or {}).items():
            found.append(Slot((*path, name), child))
            walk(child, (*path, name))
        if isinstance(node.get("items"), dict):
            found.append(Slot((*path, 0), node["items"]))
            walk(node["items"], (*path, 0))
        if isinstance(node.get("additionalProperties"), dict):
            found.append(Slot((*path, FUZZ_KEY), node["additionalProperties"]))
            walk(node["additionalProperties"], (*path, FUZZ_KEY))

    walk(schema or spec_json_schema(), ())
    return found


# Values that are valid for the required fields of objects a mutation must create on its way to a slot.
_FILLERS: dict[str, Any] = {
    "name": "fuzz-object",
    "key": "fuzz-key",
    "claimName": "fuzz-claim",
    "redisAddress": "redis.fuzz.svc:6379",
    "fieldPath": "metadata.name",
    "resource": "limits.memory",
    "source": "hf://fuzz/model",
    "image": "fuzz/image:1",
    "mountPath": "/fuzz-cache",
    "rayVersion": "2.60.0",
}


def minimal(node: Schema, name: str | None = None) -> Any:
    """A small valid value for `node`: objects with just their required fields (from _FILLERS)."""
    if name in _FILLERS and node.get("type") in ("string", None):
        return _FILLERS[name]
    kind = node.get("type")
    if kind == "object" or "properties" in node:
        props = node.get("properties") or {}
        return {req: minimal(props[req], req) for req in node.get("required", [])}
    if kind == "array":
        return []
    if kind == "string":
        return node["enum"][0] if "enum" in node else "x" * max(1, node.get("minLength", 1))
    if kind == "integer":
        return int(node.get("minimum", 1))
    if kind == "number":
        return 0.5
    if kind == "boolean":
        return False
    if "anyOf" in node:  # int-or-string
        return 1
    raise AssertionError(f"no minimal value for {node}")


def set_path(spec: dict[str, Any], path: Path_, value: Any, schema: Schema | None = None) -> dict[str, Any]:
    """A copy of `spec` with `value` at `path`, creating what is missing on the way with minimal() values
    (a list gets an item at index 0 if it has none; a map gets FUZZ_KEY)."""
    out = copy.deepcopy(spec)
    node = schema or spec_json_schema()
    here: Any = out
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(part, int):
            child = node["items"]
            if not here:
                here.append(minimal(child))
            if last:
                here[part] = value
                return out
            here, node = here[part], child
            continue
        if last:  # may be a field the schema does not have (an unknown-field mutation)
            here[part] = value
            return out
        child = (node.get("properties") or {}).get(part) or node.get("additionalProperties")
        assert isinstance(child, dict), f"{api_path(path)}: no schema at {part!r}"
        if part not in here or not isinstance(here[part], dict | list):
            here[part] = minimal(child, part)
        here, node = here[part], child
    return out


def drop_path(spec: dict[str, Any], path: Path_) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    here: Any = out
    for part in path[:-1]:
        here = here[part]
    del here[path[-1]]
    return out


def get_path(obj: Any, path: Path_) -> Any:
    for part in path:
        obj = obj[part]
    return obj


def has_path(obj: Any, path: Path_) -> bool:
    try:
        get_path(obj, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


# Whitespace that Go's RE2 (the API server's `pattern` and CEL `matches`) does not count as \s, while
# Python's re and Rust's regex (pydantic-core) do: a pattern like ^\S+$ must mean the same to both.
UNICODE_SPACES = ("\u00a0", "\u2003", "\u0085", "\u000b", "\u2028", "\u3000")


def edge_values(node: Schema) -> list[Any]:
    """Boundary, out-of-range and wrong-type values for a schema node."""
    kind = node.get("type")
    wrong_types: list[Any] = [None, True, [], {}, "1", 1, 1.5]
    values: list[Any] = []
    if kind == "integer":
        low, high = node.get("minimum"), node.get("maximum")
        for bound in (low, high):
            if bound is not None:
                values += [bound, bound - 1, bound + 1, float(bound)]
        values += [0, -1, 2**31, 2**53, 2**63 - 1, 2**63, 10**30, 1.0, 1.5, "1"]
    elif kind == "number":
        values += [0, 1, 1.0, 0.5, 1e-300, 5e-324, 1.0000001, -0.1, 1e308, 2, "0.5"]
    elif kind == "boolean":
        values += [True, False, "true", 0]
    elif kind == "string":
        low, high = node.get("minLength", 0), node.get("maxLength")
        values += ["", " ", "x" * max(low, 1), "X", "-", ".", "a b", "a\nb", "é", "ä.b", "a/b", "a=b"]
        values += [f"a{space}b" for space in UNICODE_SPACES]
        if high is not None:
            values += ["x" * high, "x" * (high + 1), "/" + "x" * (high - 1), "a" * min(high, 300) + "\n"]
        values += list(node.get("enum", []))
        if "enum" in node:
            values += [str(node["enum"][0]).lower(), str(node["enum"][0]).upper(), node["enum"][0] + " "]
    elif kind == "array":
        items = node.get("items") or {}
        item = minimal(items)
        values += [[], "a", {}]
        if node.get("maxItems") is not None and items.get("type") == "string":
            values += [[item] * node["maxItems"], [item] * (node["maxItems"] + 1)]
    elif kind == "object" or "properties" in node:
        values += [{}, "a", [], {"fuzzUnknownField": 1}]
        if isinstance(node.get("additionalProperties"), dict):
            values += [{"": "1"}, {"k" * 400: "1"}, {"a b": "1"}, {"é": "1"}]
    elif "anyOf" in node:  # int-or-string quantity
        values += [0, -1, 2**63 - 1, 2**63, 1.5, "", "1Gi", "-1Gi", "0.5", ".5", "+1", "1e3", "1e1000"]
        values += ["1ki", "1.5Gi", "1Ei", "9" * 60, "1 Gi", "1Gi\n", True]
    unique: dict[str, Any] = {}
    for value in (*values, *wrong_types):
        unique.setdefault(json.dumps(value), value)
    return list(unique.values())


@dataclass(frozen=True)
class Combo:
    """A cross-field change that a CEL rule judges; `fields` are those the rule's message must name."""

    label: str
    changes: tuple[tuple[Path_, Any], ...]
    fields: tuple[str, ...]


def _combos() -> list[Combo]:
    gpw, tp, pp = (
        ("ray", "worker", "gpusPerWorker"),
        ("engine", "tensorParallelSize"),
        ("engine", "pipelineParallelSize"),
    )
    backend, replicas = ("engine", "executorBackend"), ("replicas",)
    combos = [
        Combo(
            "replicas>1 shares a worker",
            ((replicas, 2), (gpw, 8), (tp, 1), (pp, 1)),
            ("spec.replicas", "spec.ray.worker.gpusPerWorker"),
        ),
        Combo("replicas>1 one worker each", ((replicas, 2), (gpw, 4), (tp, 4), (pp, 1)), ("spec.replicas",)),
        Combo(
            "tp does not pack",
            ((gpw, 4), (tp, 3), (pp, 1), (replicas, 1)),
            ("spec.ray.worker.gpusPerWorker", "spec.engine.tensorParallelSize"),
        ),
        Combo(
            "tp x pp packs over workers",
            ((gpw, 4), (tp, 4), (pp, 2), (replicas, 1)),
            ("spec.engine.tensorParallelSize",),
        ),
        Combo(
            "mp over workers", ((backend, "mp"), (tp, 2), (pp, 1), (gpw, 1)), ("spec.engine.executorBackend",)
        ),
        Combo(
            "mp in one worker",
            ((backend, "mp"), (tp, 2), (pp, 2), (gpw, 4)),
            ("spec.engine.executorBackend",),
        ),
        Combo(
            "backoff above cap",
            ((("restartPolicy", "backoffSeconds"), 100), (("restartPolicy", "maxBackoffSeconds"), 10)),
            ("spec.restartPolicy.maxBackoffSeconds",),
        ),
        Combo(
            "backoff equals cap",
            ((("restartPolicy", "backoffSeconds"), 600), (("restartPolicy", "maxBackoffSeconds"), 600)),
            ("spec.restartPolicy.maxBackoffSeconds",),
        ),
        Combo(
            "HF_HOME with a cache",
            (
                (("modelCache",), {"claimName": "cache"}),
                (("engine", "env"), [{"name": "HF_HOME", "value": "/x"}]),
            ),
            ("spec.engine.env",),
        ),
        Combo(
            "HF_HOME without a cache",
            ((("engine", "env"), [{"name": "HF_HOME", "value": "/x"}]),),
            ("spec.engine.env",),
        ),
        Combo(
            "env duplicate",
            ((("engine", "env"), [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),),
            ("spec.engine.env",),
        ),
        Combo(
            "env value and valueFrom",
            (
                (
                    ("engine", "env"),
                    [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                ),
            ),
            ("spec.engine.env[0]",),
        ),
        Combo(
            "valueFrom two sources",
            (
                (
                    ("engine", "env"),
                    [
                        {
                            "name": "A",
                            "valueFrom": {
                                "fieldRef": {"fieldPath": "x"},
                                "secretKeyRef": {"name": "s", "key": "k"},
                            },
                        }
                    ],
                ),
            ),
            ("spec.engine.env[0].valueFrom",),
        ),
        Combo(
            "valueFrom no source",
            ((("engine", "env"), [{"name": "A", "valueFrom": {}}]),),
            ("spec.engine.env[0].valueFrom",),
        ),
        Combo(
            "worker requests its GPUs",
            ((("ray", "worker", "resources"), {"limits": {"nvidia.com/gpu": 1}}),),
            ("spec.ray.worker.resources",),
        ),
        Combo(
            "worker requests another GPU kind",
            (
                (("ray", "worker", "resources"), {"requests": {"amd.com/gpu": 1}}),
                (("ray", "worker", "gpuResourceName"), "amd.com/gpu"),
            ),
            ("spec.ray.worker.resources",),
        ),
        Combo(
            "worker requests GPUs it does not use",
            (
                (("ray", "worker", "resources"), {"requests": {"nvidia.com/gpu": 1}}),
                (("ray", "worker", "gpuResourceName"), "amd.com/gpu"),
            ),
            ("spec.ray.worker.resources",),
        ),
        Combo("suspended with nothing", ((("suspend",), True), (replicas, 0)), ("spec.suspend",)),
        Combo(
            "gcs without password",
            ((("ray", "gcsFaultTolerance"), {"redisAddress": "rediss://r:6380"}),),
            ("spec.ray.gcsFaultTolerance",),
        ),
    ]
    for port in (6379, 8080, 8265, 10001, 52365, 8000, 1024, 65535):
        combos.append(Combo(f"port {port}", ((("engine", "port"), port),), ("spec.engine.port",)))
    for key in ("labels", "redis-password", "redis-username", "num-cpus", "block", "redis_password"):
        combos.append(
            Combo(
                f"head rayStartParams {key}",
                ((("ray", "head", "rayStartParams"), {key: "1"}),),
                ("spec.ray.head.rayStartParams",),
            )
        )
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY", "hf_token", "RAY_USAGE_STATS_ENABLED"):
        combos.append(
            Combo(f"env {name}", ((("engine", "env"), [{"name": name, "value": "1"}]),), ("spec.engine.env",))
        )
    for path in (
        "/dev/shm",
        "/dev/shm/",
        "/dev/shm/x",
        "/mnt/rayvllm/models",
        "/mnt/rayvllm/models/x",
        "/mnt/rayvllm/modelsx",
        "/dev/shmx",
        "/",
    ):
        combos.append(
            Combo(
                f"cache at {path}",
                ((("modelCache",), {"claimName": "c", "mountPath": path}),),
                ("spec.modelCache.mountPath", "spec.modelCache"),
            )
        )
    for version in (
        "2.60.0",
        "2.52.0",
        "2.51.9",
        "1.0.0",
        "0.0.0",
        "3.0.0",
        "02.60.0",
        "2.060.0",
        "18446744073709551616.0.0",
        "10.0.0",
    ):
        combos.append(
            Combo(f"rayVersion {version}", ((("ray", "rayVersion"), version),), ("spec.ray.rayVersion",))
        )
    return combos


COMBOS = _combos()

# Flags the operator owns, as users might spell them in extraArgs; and arguments it does not own.
_EXTRA_ARGS = (
    "--model", "--model=x", "--served-model-name", "--served_model_name=x", "-tp", "-tp=2", "-pp", "-dp",
    "--tensor-parallel-size", "--tensor_parallel_size=2", "--pipeline-parallel-size", "--data-parallel-size",
    "--distributed-executor-backend", "--host", "--port", "--port=1", "--api-key", "--max-model-len",
    "--dtype", "--gpu-memory-utilization", "--quantization", "-q", "--revision", "--revision=main",
    "--models", "--port2", "--hostname", "-tpx", "--enable-prefix-caching", "--max-num-seqs", "256", "", " --port",
)  # fmt: skip

_MODEL_SOURCES = (
    "hf://Qwen/Qwen2.5-0.5B-Instruct", "hf://a/b", "hf://a", "hf://a/b/c", "hf://-a/b", "hf://a/b/", "hf:/a/b",
    "pvc://claim", "pvc://claim/", "pvc://claim/a/b", "pvc://Claim/a", "pvc://claim/../a", "pvc://claim/a/..",
    "pvc://a.b/c", "pvc://-a/b", "s3://bucket/key", "s3://bucket", "s3://bucket/", "s3://Bucket/key", "s3://b/key",
    "/models/x", "/", "/a/../b", "/a/..", "/..", "/a/.../b", "/a/..b", "relative/path", "http://x/y", "hf://a/b\n",
    "/a b", "/é", "//a", "/a//b", "pvc://" + "a" * 300 + "/x", "s3://a.b-c/k",
)  # fmt: skip


def draw_mutation(
    draw: Callable[..., Any], bases: Sequence[dict[str, Any]], all_slots: Sequence[Slot]
) -> Case:
    """One valid object changed in one place (or one CEL combination)."""
    base = draw(st.sampled_from(bases))
    spec = base["spec"]
    name = base["metadata"]["name"]
    kind = draw(
        st.sampled_from(("edge", "edge", "edge", "drop", "combo", "combo", "extra-args", "source", "unknown"))
    )
    if kind == "edge":
        slot = draw(st.sampled_from(all_slots))
        value = draw(st.sampled_from(edge_values(slot.node)))
        return Case(
            "mutation",
            f"{name}: {slot.name} = {_short(value)}",
            set_path(spec, slot.path, value),
            (slot.name,),
        )
    if kind == "drop":
        present = [s for s in all_slots if has_path(spec, s.path)]
        slot = draw(st.sampled_from(present))
        return Case("mutation", f"{name}: drop {slot.name}", drop_path(spec, slot.path), (slot.name,))
    if kind == "combo":
        combo = draw(st.sampled_from(COMBOS))
        mutated = spec
        for path, value in combo.changes:
            mutated = set_path(mutated, path, value)
        return Case("mutation", f"{name}: {combo.label}", mutated, combo.fields)
    if kind == "extra-args":
        args = draw(st.lists(st.sampled_from(_EXTRA_ARGS), min_size=1, max_size=3))
        return Case(
            "mutation",
            f"{name}: extraArgs {args}",
            set_path(spec, ("engine", "extraArgs"), args),
            ("spec.engine.extraArgs",),
        )
    if kind == "source":
        source = draw(st.sampled_from(_MODEL_SOURCES))
        return Case(
            "mutation",
            f"{name}: source {source!r}",
            set_path(spec, ("model", "source"), source),
            ("spec.model.source",),
        )
    parents = [s for s in all_slots if s.node.get("type") == "object" and "properties" in s.node]
    slot = draw(st.sampled_from(parents))
    unknown = (*slot.path, "fuzzUnknownField")
    return Case(
        "mutation",
        f"{name}: unknown field under {slot.name}",
        set_path(spec, unknown, 1),
        (api_path(("spec", *unknown)), slot.name),
    )


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def regressions(path: Path = REGRESSIONS) -> list[Case]:
    """Specs that once found a bug: always submitted first."""
    if not path.exists():
        return []
    entries = json.loads(path.read_text())
    return [
        Case("regression", f"{entry['id']}: {entry['found']}", entry["spec"], tuple(entry.get("fields", ())))
        for entry in entries
    ]


def draw_cases(n_schema: int, n_mutations: int) -> list[Case]:
    """The regressions, then `n_schema` specs from the CRD's schema, then `n_mutations` mutations of valid
    objects. Deterministic: hypothesis runs derandomized (a fixed seed derived from the test function),
    without its example database, so CI and every developer draw the same cases."""
    schema_specs: list[Any] = []
    mutations: list[Case] = []
    bases = valid_objects()
    all_slots = slots()
    collect_settings = settings(
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        # Generating is all these runs do: big nested objects are the point, and slow to draw.
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
        print_blob=False,
    )

    @settings(collect_settings, max_examples=n_schema)
    @given(from_schema(spec_json_schema()))
    def collect_schema(spec: Any) -> None:
        schema_specs.append(spec)

    @settings(collect_settings, max_examples=n_mutations)
    @given(st.data())
    def collect_mutation(data: st.DataObject) -> None:
        mutations.append(draw_mutation(data.draw, bases, all_slots))

    if n_schema:
        collect_schema()
    if n_mutations:
        collect_mutation()
    return [
        *regressions(),
        *(Case("schema", f"schema sample {i}", spec) for i, spec in enumerate(schema_specs)),
        *mutations,
    ]


# ---- judging a refusal -----------------------------------------------------------------------------

_PATH_IN_TEXT = re.compile(r"\b(spec(?:\.[A-Za-z0-9_-]+|\[[^\]]*\])*)")


def fields_named(status: Mapping[str, Any]) -> list[str]:
    """The field paths an API server refusal (a Status) names: its causes' fields, then any spec.* path in
    its message (strict decoding's `unknown field "spec.x"` has no causes)."""
    named = [str(c.get("field")) for c in (status.get("details") or {}).get("causes") or [] if c.get("field")]
    named += _PATH_IN_TEXT.findall(str(status.get("message", "")))
    return list(dict.fromkeys(named))


def _ancestors(name: str) -> Iterator[str]:
    """spec.engine.env[0].name -> spec.engine.env[0].name, spec.engine.env[0], spec.engine.env (not spec)."""
    while name and name != "spec":
        yield name
        cut = max(name.rfind("."), name.rfind("["))
        name = name[:cut] if cut > 0 else ""


def _top_level(name: str) -> str | None:
    match = re.match(r"^spec\.([A-Za-z0-9_-]+)", name)
    return match.group(1) if match else None


def rejection_problem(case: Case, spec_sent: Any, status: Mapping[str, Any]) -> str | None:
    """None when the refusal names the offending field: for a mutation, the message names a touched path
    or a field above it (below spec); otherwise some field of spec that the object has (or that spec
    requires). Else a sentence saying what is missing."""
    message = str(status.get("message", ""))
    named = fields_named(status)
    if case.fields:
        wanted = [a for f in case.fields for a in _ancestors(f)]
        if any(w in message for w in wanted):
            return None
        return f"the refusal names none of {list(case.fields)} (nor a field above them): {message[:600]}"
    spec_schema = spec_json_schema()
    sent = spec_sent if isinstance(spec_sent, dict) else {}
    for name in named:
        top = _top_level(name)
        if name in message and top is not None and (top in sent or top in spec_schema.get("required", [])):
            return None
        if name == "spec" and "spec" in message and not isinstance(spec_sent, dict):
            return None
    return f"the refusal names no field of the object (named: {named}): {message[:600]}"
