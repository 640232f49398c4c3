"""Generate docs/api-reference.md from the VLLMCluster CRD, so the reference can never drift from the schema
the API server enforces.

    python hack/gen-api-docs.py           # write docs/api-reference.md
    python hack/gen-api-docs.py --check   # exit 1, with a diff, if docs/api-reference.md is stale (writes nothing)

The CRD (crds/vllmclusters.rayvllm.io.yaml) is itself generated from the pydantic models by
`python -m rayvllm.crdgen`. Every schema keyword the CRD uses must be known here: an unknown one stops the
generator rather than being left out of the reference silently.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CRD = REPO / "crds" / "vllmclusters.rayvllm.io.yaml"
OUTPUT = REPO / "docs" / "api-reference.md"

Schema = Mapping[str, Any]

# The keywords rendered below. A keyword outside this set fails the generator (see module docstring).
KNOWN_KEYWORDS = frozenset(
    {
        "additionalProperties",
        "anyOf",
        "default",
        "description",
        "enum",
        "exclusiveMaximum",
        "exclusiveMinimum",
        "format",
        "items",
        "maxItems",
        "maxLength",
        "maximum",
        "minItems",
        "minLength",
        "minimum",
        "pattern",
        "properties",
        "required",
        "type",
        "x-kubernetes-int-or-string",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-list-type",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-validations",
    }
)
# Kubernetes' resource.Quantity format, as the CRD spells it for quantities (memory sizes, CPU counts).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|"
    r"(\.[0-9]+))))?$"
)


class SchemaError(Exception):
    """The CRD uses something this generator does not know how to document."""


@dataclass(frozen=True)
class Rule:
    """A CEL rule (x-kubernetes-validations entry) and the field it reports on."""

    target: str
    message: str
    rule: str


@dataclass
class Section:
    """One object of the schema: a heading, its fields, and the CEL rules about them."""

    path: str
    title: str
    schema: Schema
    anchor: str
    same_as: Section | None = None
    rules: list[Rule] = field(default_factory=list)


# ---- reading the schema ------------------------------------------------------------------------------


def check_keywords(schema: Schema, path: str) -> None:
    unknown = sorted(set(schema) - KNOWN_KEYWORDS)
    if unknown:
        raise SchemaError(f"{path}: schema keyword(s) {', '.join(unknown)} unknown to hack/gen-api-docs.py")


def is_object(schema: Schema) -> bool:
    return "properties" in schema


def child_section_schema(schema: Schema) -> tuple[str, Schema] | None:
    """The path suffix and schema of the section a field gets, if its value is (or holds) an object."""
    if is_object(schema):
        return "", schema
    items = schema.get("items")
    if isinstance(items, Mapping) and is_object(items):
        return "[]", items
    values = schema.get("additionalProperties")
    if isinstance(values, Mapping) and is_object(values):
        return ".*", values
    return None


def signature(schema: Schema) -> str:
    """Two objects with the same fields (whatever their own descriptions say) are documented once."""
    return json.dumps({k: v for k, v in schema.items() if k != "description"}, sort_keys=True)


def github_slug(text: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


class Sections:
    """Every section in document order, with unique anchors and duplicates pointing at the first."""

    def __init__(self) -> None:
        self.ordered: list[Section] = []
        self._by_signature: dict[str, Section] = {}
        self._slugs: dict[str, int] = {}

    def anchor(self, heading: str) -> str:
        slug = github_slug(heading)
        count = self._slugs.get(slug, 0)
        self._slugs[slug] = count + 1
        return slug if count == 0 else f"{slug}-{count}"

    def add(self, path: str, schema: Schema, title: str) -> Section:
        section = Section(path, title, schema, self.anchor(f"`{title}`"))
        section.same_as = self._by_signature.get(signature(schema))
        self._by_signature.setdefault(signature(schema), section)
        self.ordered.append(section)
        return section


def collect(sections: Sections, path: str, schema: Schema, title: str = "") -> Section:
    """Add the section of the object `schema` at `path` and, depth first, those of the objects it holds."""
    check_keywords(schema, path)
    section = sections.add(path, schema, title or path)
    section.rules += rules_of(schema, path)
    if section.same_as is not None:
        return section
    for name, child in schema["properties"].items():
        child_path = f"{path}.{name}" if path else name
        walk_keywords(child, child_path)
        nested = child_section_schema(child)
        if nested is None:
            section.rules += rules_of(child, child_path)
            section.rules += rules_of(child.get("items") or {}, f"{child_path}[]")
            section.rules += rules_of(child.get("additionalProperties") or {}, f"{child_path}.*")
            continue
        suffix, inner = nested
        if suffix:  # the list or map itself may carry rules about all its entries
            section.rules += rules_of(child, child_path)
        collect(sections, child_path + suffix, inner)
    return section


def walk_keywords(schema: Schema, path: str) -> None:
    """Check the keywords of a field and of what it nests (list items, map values, anyOf branches)."""
    check_keywords(schema, path)
    for key, suffix in (("items", "[]"), ("additionalProperties", ".*")):
        inner = schema.get(key)
        if isinstance(inner, Mapping) and not is_object(inner):
            walk_keywords(inner, path + suffix)
    for branch in schema.get("anyOf") or ():
        check_keywords(branch, path)


def rules_of(schema: Schema, path: str) -> list[Rule]:
    rules = []
    for entry in schema.get("x-kubernetes-validations") or ():
        unknown = sorted(set(entry) - {"rule", "message", "fieldPath"})
        if unknown:
            raise SchemaError(f"{path}: x-kubernetes-validations key(s) {', '.join(unknown)} unknown")
        target = (path + str(entry.get("fieldPath") or "")).lstrip(".") or "(the whole object)"
        rules.append(Rule(target, str(entry["message"]), str(entry["rule"])))
    return rules


# ---- describing one field ----------------------------------------------------------------------------


def is_quantity(schema: Schema) -> bool:
    return bool(schema.get("x-kubernetes-int-or-string")) and schema.get("pattern") == QUANTITY_PATTERN


def type_of(schema: Schema) -> str:
    if is_quantity(schema):
        return "quantity"
    if schema.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    kind = schema.get("type")
    if kind == "array":
        return "[]" + type_of(schema.get("items") or {})
    if kind == "object":
        values = schema.get("additionalProperties")
        if isinstance(values, Mapping):
            return "map[string]" + type_of(values)
        if schema.get("x-kubernetes-preserve-unknown-fields") and not is_object(schema):
            return "object (free-form)"
        return "object"
    if not isinstance(kind, str):
        raise SchemaError(f"a field without a type: {dict(schema)}")
    return kind


def code(value: str) -> str:
    """Inline code that survives any backticks inside it."""
    fence = "``" if "`" in value else "`"
    padded = f" {value} " if fence == "``" else value
    return f"{fence}{padded}{fence}"


def literal(value: Any) -> str:
    return code(json.dumps(value, sort_keys=True))


def bounds(schema: Schema) -> list[str]:
    found = []
    if "minimum" in schema:
        found.append(f"{'>' if schema.get('exclusiveMinimum') else '>='} {schema['minimum']}")
    if "maximum" in schema:
        found.append(f"{'<' if schema.get('exclusiveMaximum') else '<='} {schema['maximum']}")
    low, high = schema.get("minLength"), schema.get("maxLength")
    if low is not None and high is not None:
        found.append(f"length {low}..{high}")
    elif low is not None:
        found.append(f"length >= {low}")
    elif high is not None:
        found.append(f"length <= {high}")
    low, high = schema.get("minItems"), schema.get("maxItems")
    if low is not None:
        found.append(f"at least {low} items")
    if high is not None:
        found.append(f"at most {high} items")
    return found


def constraints(schema: Schema) -> list[str]:
    found = []
    if "enum" in schema:
        found.append("one of " + ", ".join(code(str(v)) for v in schema["enum"]))
    found += bounds(schema)
    if "pattern" in schema and not is_quantity(schema):
        found.append("pattern " + code(str(schema["pattern"])))
    if "format" in schema:
        found.append(f"format {schema['format']}")
    if schema.get("x-kubernetes-list-type") == "map":
        keys = ", ".join(code(k) for k in schema.get("x-kubernetes-list-map-keys") or ())
        found.append(f"a list-map keyed by {keys}")
    elif "x-kubernetes-list-type" in schema:
        found.append(f"list type {schema['x-kubernetes-list-type']}")
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        found.append("unknown fields are kept")
    items = schema.get("items")
    if isinstance(items, Mapping) and not is_object(items):
        found += [f"each item: {c}" for c in constraints(items)]
    values = schema.get("additionalProperties")
    if isinstance(values, Mapping) and not is_object(values):
        found += [f"each value: {c}" for c in constraints(values)]
    if schema.get("x-kubernetes-validations"):
        found.append("CEL rules")
    return found


def cell(text: str) -> str:
    """Text fit for one table cell: one line, its pipes escaped (GitHub unescapes them in code too)."""
    return " ".join(text.split()).replace("|", "\\|")


# ---- the page ----------------------------------------------------------------------------------------


def fields_table(section: Section, links: Mapping[str, Section]) -> Iterator[str]:
    schema = section.schema
    required = set(schema.get("required") or ())
    yield "| Field | Type | Required | Default | Constraints | Description |"
    yield "|---|---|---|---|---|---|"
    for name, child in schema["properties"].items():
        child_path = f"{section.path}.{name}" if section.path else name
        target = links.get(child_path)
        label = f"[{code(name)}](#{target.anchor})" if target else code(name)
        row = [
            label,
            code(type_of(child)),
            "yes" if name in required else "",
            literal(child["default"]) if "default" in child else "",
            "; ".join(constraints(child)),
            str(child.get("description") or ""),
        ]
        yield "| " + " | ".join(cell(value) for value in row) + " |"


def rules_list(rules: Sequence[Rule]) -> Iterator[str]:
    yield "CEL rules (`x-kubernetes-validations`; the API server refuses the object with the message):"
    yield ""
    for rule in rules:
        yield f"- {code(rule.target)}: {rule.message}"
        yield ""
        yield "  ```"
        yield f"  {' '.join(rule.rule.split())}"
        yield "  ```"
        yield ""


def section_lines(section: Section, links: Mapping[str, Section]) -> Iterator[str]:
    yield f"### {code(section.title)}"
    yield ""
    description = section.schema.get("description")
    if description:
        yield " ".join(str(description).split())
        yield ""
    if section.same_as is not None:
        yield f"Same fields as [{code(section.same_as.title)}](#{section.same_as.anchor})."
        yield ""
    else:
        yield from fields_table(section, links)
        yield ""
    if section.rules:
        yield from rules_list(section.rules)


def link_targets(sections: Sequence[Section]) -> dict[str, Section]:
    """A field's name links to the section of the object it holds (its path, less [] or .*)."""
    targets: dict[str, Section] = {}
    for section in sections:
        for suffix in ("[]", ".*"):
            if section.path.endswith(suffix):
                targets[section.path.removesuffix(suffix)] = section
                break
        else:
            targets[section.path] = section
    return targets


def version_of(crd: Mapping[str, Any]) -> Mapping[str, Any]:
    versions = crd["spec"]["versions"]
    if len(versions) != 1:
        raise SchemaError(f"the CRD has {len(versions)} versions; this generator documents exactly one")
    version: Mapping[str, Any] = versions[0]
    return version


def header(crd: Mapping[str, Any]) -> Iterator[str]:
    spec, version = crd["spec"], version_of(crd)
    names = spec["names"]
    yield "# API reference: VLLMCluster"
    yield ""
    yield (
        "<!-- Generated by hack/gen-api-docs.py from crds/vllmclusters.rayvllm.io.yaml. Do not edit by hand: "
        "change the models in operator/rayvllm/models, regenerate the CRD, then run the script. -->"
    )
    yield ""
    yield (
        f"Kind {code(names['kind'])}, group {code(spec['group'])}, version {code(version['name'])}, "
        f"plural {code(names['plural'])}, short name{'s' if len(names.get('shortNames', [])) > 1 else ''} "
        + ", ".join(code(n) for n in names.get("shortNames", []))
        + f", category {', '.join(code(c) for c in names.get('categories', []))}, scope {spec['scope']}."
    )
    yield ""
    yield (
        "This page is generated from the CRD, which is generated from the operator's pydantic models "
        "(`python -m rayvllm.crdgen`): the schema below is exactly what the API server enforces. Defaults "
        "are filled in by the API server when an object is created or updated; a field marked required must "
        "be set. Types: `quantity` is a Kubernetes resource quantity, an integer or a string such as `8Gi` "
        "or `500m`; `[]T` is a list, `map[string]T` a map with string keys. CEL rules are checked at "
        "admission together with the schema, so an object that breaks one is refused with its message."
    )
    yield ""
    yield "What the status conditions' reasons mean: [troubleshooting.md](troubleshooting.md)."
    yield ""
    subresources = version.get("subresources") or {}
    if subresources:
        yield "## Subresources"
        yield ""
        if "status" in subresources:
            yield "- `status`: the operator writes `.status` through it; users write only `.spec`."
        scale = subresources.get("scale")
        if scale:
            yield (
                f"- `scale`: replicas at {code(scale['specReplicasPath'])}, observed replicas at "
                f"{code(scale['statusReplicasPath'])}, label selector at {code(scale['labelSelectorPath'])} "
                "(`kubectl scale vllm/NAME --replicas=N`, a HorizontalPodAutoscaler)."
            )
        yield ""
    columns = version.get("additionalPrinterColumns") or []
    if columns:
        yield "## `kubectl get vllm` columns"
        yield ""
        yield "| Column | Type | From |"
        yield "|---|---|---|"
        for column in columns:
            yield f"| {cell(column['name'])} | {cell(column['type'])} | {cell(code(column['jsonPath']))} |"
        yield ""


def render(crd: Mapping[str, Any]) -> str:
    """The whole reference page for a CRD (parsed YAML)."""
    root = version_of(crd)["schema"]["openAPIV3Schema"]
    sections = Sections()
    top = collect(sections, "", root, title=crd["spec"]["names"]["kind"])
    links = link_targets(sections.ordered[1:])
    lines = [*header(crd), "## The object", "", *section_lines(top, links)]
    for part in ("spec", "status"):
        lines += [f"## {part.capitalize()} fields", ""]
        for section in sections.ordered[1:]:
            if section.path == part or section.path.startswith((f"{part}.", f"{part}[")):
                lines += section_lines(section, links)
    return "\n".join(lines).rstrip() + "\n"


def render_reference(crd_path: Path = CRD) -> str:
    return render(yaml.safe_load(crd_path.read_text()))


def stale(committed: str, wanted: str) -> str | None:
    """A diff when the committed page differs from the generated one, else None."""
    if committed == wanted:
        return None
    diff = difflib.unified_diff(
        committed.splitlines(keepends=True),
        wanted.splitlines(keepends=True),
        "docs/api-reference.md (committed)",
        "docs/api-reference.md (generated now)",
        n=1,
    )
    return "".join(list(diff)[:200])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the page is stale; write nothing")
    args = parser.parse_args(argv)
    try:
        wanted = render_reference()
    except SchemaError as error:
        print(f"hack/gen-api-docs.py: {error}", file=sys.stderr)
        return 2
    if args.check:
        difference = stale(OUTPUT.read_text() if OUTPUT.exists() else "", wanted)
        if difference is not None:
            print(f"docs/api-reference.md is stale:\n{difference}", file=sys.stderr)
            print("run: .venv/bin/python hack/gen-api-docs.py", file=sys.stderr)
            return 1
        print("docs/api-reference.md is up to date")
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(wanted)
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
