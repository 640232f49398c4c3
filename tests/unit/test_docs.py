"""The documentation agrees with the code: docs/api-reference.md is what hack/gen-api-docs.py generates from
the CRD now; docs/metrics.md, docs/troubleshooting.md and docs/operator-settings.md list exactly the metrics,
reasons and settings the code has; every VLLMCluster example passes admission; every relative link of the
README and docs/ resolves inside the repository."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
CRD_FILE = REPO / "crds" / "vllmclusters.rayvllm.io.yaml"


def load_script(path: Path) -> ModuleType:
    """A script of hack/ as a module; registered first, as dataclasses look their module up."""
    name = path.stem.replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen_api_docs() -> ModuleType:
    return load_script(REPO / "hack" / "gen-api-docs.py")


def one_line(text: str) -> str:
    return " ".join(text.split())


# ---- the API reference -------------------------------------------------------------------------------


def test_api_reference_is_what_the_generator_makes_of_the_crd(gen_api_docs: ModuleType) -> None:
    committed = (DOCS / "api-reference.md").read_text()
    difference = gen_api_docs.stale(committed, gen_api_docs.render_reference(CRD_FILE))
    assert difference is None, f"run: .venv/bin/python hack/gen-api-docs.py\n{difference}"


def test_check_mode_passes_now_and_reports_a_stale_page(
    gen_api_docs: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gen_api_docs.main(["--check"]) == 0
    wanted = gen_api_docs.render_reference(CRD_FILE)
    edited = wanted.replace("| `replicas` |", "| `replica` |", 1)
    assert edited != wanted
    assert "replica" in (gen_api_docs.stale(edited, wanted) or "")


def schema_nodes(schema: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield schema
    for child in (schema.get("properties") or {}).values():
        yield from schema_nodes(child)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            yield from schema_nodes(schema[key])


def test_api_reference_carries_every_description_and_cel_rule_of_the_crd() -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    page = one_line((DOCS / "api-reference.md").read_text()).replace("\\|", "|")
    missing = []
    for node in schema_nodes(root):
        texts = [node["description"]] if "description" in node else []
        for rule in node.get("x-kubernetes-validations") or ():
            texts += [rule["message"], rule["rule"]]
        missing += [text for text in texts if one_line(text) not in page]
    assert not missing, "not in docs/api-reference.md: " + "; ".join(missing)


def test_the_generator_refuses_a_schema_keyword_it_does_not_know(gen_api_docs: ModuleType) -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["replicas"]["multipleOf"] = 2
    with pytest.raises(gen_api_docs.SchemaError, match=r"spec\.replicas: .*multipleOf"):
        gen_api_docs.render(crd)


# ---- metrics -----------------------------------------------------------------------------------------


def defined_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric rayvllm.metrics defines, as exposed: name -> (type, label names). A counter's samples
    carry the _total suffix the client strips from the family name."""
    from prometheus_client.metrics import MetricWrapperBase

    from rayvllm import metrics

    found = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            (family,) = value.describe()
            name = f"{family.name}_total" if family.type == "counter" else family.name
            # The client has no public accessor for a metric's label names.
            found[name] = (family.type, tuple(value._labelnames))
    return found


def table_rows(text: str, heading: str) -> Iterator[list[str]]:
    """The cells of each body row of the first table under `heading`."""
    section = f"\n{text}".split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    for row in rows[2:]:
        yield [cell.strip() for cell in row.strip("|").split(" | ")]


def backticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    text = (DOCS / "metrics.md").read_text()
    documented = {}
    for name, kind, labels, *_ in table_rows(text, "## The operator's metrics"):
        (metric,) = backticked(name)
        documented[metric] = (kind, tuple(backticked(labels)))
    return documented


def test_metrics_doc_lists_exactly_the_metrics_the_code_defines() -> None:
    defined, documented = defined_metrics(), documented_metrics()
    assert defined, "rayvllm.metrics defines no metric: the test no longer finds them"
    assert sorted(defined.keys() - documented.keys()) == [], "undocumented in docs/metrics.md"
    assert sorted(documented.keys() - defined.keys()) == [], "documented in docs/metrics.md, not defined"
    wrong = {name: (documented[name], defined[name]) for name in defined if documented[name] != defined[name]}
    assert wrong == {}, "docs/metrics.md type or labels differ from the code (documented, defined)"


# ---- troubleshooting ---------------------------------------------------------------------------------


def section_of(text: str, heading: str) -> str:
    """The text under a `## ` heading, up to the next one."""
    assert f"\n{heading}\n" in text, f"no heading {heading!r}"
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def documented_names(text: str) -> set[str]:
    """Names a page documents: `### `X`` headings and the backticked first cells of table rows."""
    names = set(re.findall(r"^###+ `([^`]+)`\s*$", text, flags=re.MULTILINE))
    for line in text.splitlines():
        if line.startswith("|"):
            first = re.fullmatch(r"`([^`]+)`", line.strip("|").split(" | ")[0].strip())
            if first:
                names.add(first.group(1))
    return names


TROUBLESHOOTING = DOCS / "troubleshooting.md"


def test_troubleshooting_documents_every_condition_reason_and_no_other() -> None:
    from rayvllm.reasons import Reason

    documented = documented_names(section_of(TROUBLESHOOTING.read_text(), "## Condition reasons"))
    code = {r.value for r in Reason}
    assert sorted(code - documented) == [], "Reason members not documented in docs/troubleshooting.md"
    assert sorted(documented - code) == [], "documented in docs/troubleshooting.md, not a Reason"


def test_troubleshooting_documents_every_event_reason_and_no_other() -> None:
    from rayvllm.models.status import Phase
    from rayvllm.reasons import EventReason

    documented = documented_names(section_of(TROUBLESHOOTING.read_text(), "## Event reasons"))
    code = {r.value for r in EventReason}
    assert sorted(code - documented) == [], "EventReason members not documented in docs/troubleshooting.md"
    # Phase changes post the phase's name; kopf posts the operator's log lines as `Logging`.
    posted = code | {p.value for p in Phase} | {"Logging"}
    assert sorted(documented - posted) == [], "documented in docs/troubleshooting.md, never posted"


def test_troubleshooting_tables_match_the_phases_conditions_and_engine_states() -> None:
    from rayvllm.engine.probe import EngineState
    from rayvllm.models.status import ConditionType, Phase

    text = TROUBLESHOOTING.read_text()
    assert documented_names(section_of(text, "## Phases")) == {p.value for p in Phase}
    assert documented_names(section_of(text, "## Conditions")) == {c.value for c in ConditionType}
    assert documented_names(section_of(text, "## Engine health")) == {s.value for s in EngineState}


# ---- operator settings -------------------------------------------------------------------------------


def default_text(value: Any) -> str:
    """A setting's default as docs/operator-settings.md spells it."""
    if value is None:
        return "unset"
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def test_operator_settings_doc_lists_every_setting_with_its_default() -> None:
    from rayvllm.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    defined = {
        f"{prefix}{name}".upper(): default_text(info.get_default(call_default_factory=True))
        for name, info in Settings.model_fields.items()
    }
    text = (DOCS / "operator-settings.md").read_text()
    documented = {}
    for variable, default, *_ in table_rows(text, "# Operator settings"):
        (name,) = backticked(variable)
        defaults = backticked(default)
        documented[name] = defaults[0] if defaults else default
    assert sorted(defined.keys() - documented.keys()) == [], "settings missing in docs/operator-settings.md"
    assert sorted(documented.keys() - defined.keys()) == [], "documented settings the code does not have"
    assert documented == defined, "defaults in docs/operator-settings.md differ from rayvllm.settings"


# ---- examples ----------------------------------------------------------------------------------------


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def vllmcluster_examples() -> list[tuple[str, dict[str, Any]]]:
    examples = []
    for path in markdown_files():
        for block in fenced_blocks(path.read_text(), "yaml"):
            for body in yaml.safe_load_all(block):
                if isinstance(body, dict) and body.get("kind") == "VLLMCluster":
                    examples.append((f"{path.name}:{body['metadata']['name']}", body))
    return examples


def test_the_docs_have_vllmcluster_examples() -> None:
    assert any(name.startswith("gpu-cluster.md:") for name, _ in vllmcluster_examples())


@pytest.mark.parametrize(("name", "body"), vllmcluster_examples(), ids=lambda value: str(value)[:40])
def test_every_vllmcluster_example_passes_admission_and_the_models(name: str, body: dict[str, Any]) -> None:
    from rayvllm.models.resource import parse_cluster

    from .crdtools import admission_errors

    assert admission_errors(body) == [], name
    parse_cluster(body)


# ---- links -------------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", flags=re.MULTILINE)
FENCED = re.compile(r"^[ \t]*```.*?^[ \t]*```[ \t]*$", flags=re.MULTILINE | re.DOTALL)


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code, where links are links."""
    text = FENCED.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def links(path: Path) -> list[str]:
    text = prose(path.read_text())
    return LINK.findall(text) + REFERENCE.findall(text)


def github_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file (a repeated one gets -1, -2, ...)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    text = FENCED.sub("", path.read_text())
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def link_problem(source: Path, target: str) -> str | None:
    if re.match(r"https?://", target):
        return None
    if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
        return "not a relative link or an http(s) link"
    location, _, fragment = target.partition("#")
    resolved = (source.parent / location).resolve() if location else source.resolve()
    if not resolved.is_relative_to(REPO):
        return "points outside the repository"
    if not resolved.exists():
        return "no such file or directory in the repository"
    if fragment and resolved.suffix == ".md" and fragment not in github_anchors(resolved):
        return f"no heading #{fragment} in {resolved.relative_to(REPO)}"
    return None


def test_every_link_of_the_readme_and_docs_resolves_inside_the_repository() -> None:
    problems = [
        f"{path.relative_to(REPO)}: ({target}): {problem}"
        for path in markdown_files()
        for target in links(path)
        if (problem := link_problem(path, target)) is not None
    ]
    assert problems == []


def test_the_link_check_catches_links_out_of_the_repository() -> None:
    readme = REPO / "README.md"
    assert link_problem(readme, "../shared/DESIGN.md") == "points outside the repository"
    assert link_problem(readme, "docs/missing.md") is not None
    assert link_problem(readme, "docs/troubleshooting.md#no-such-heading") is not None
    assert link_problem(readme, "file:///etc/passwd") is not None
    assert link_problem(readme, "docs/troubleshooting.md#condition-reasons") is None
    assert link_problem(readme, "https://github.com/ray-project/kuberay") is None


def test_the_readme_is_the_front_door_to_the_docs() -> None:
    text = (REPO / "README.md").read_text()
    targets = set(links(REPO / "README.md"))
    for page in ("architecture", "api-reference", "gpu-cluster", "troubleshooting", "metrics"):
        assert f"docs/{page}.md" in targets, f"README.md does not link to docs/{page}.md"
    assert "make demo" in text and "make test" in text
    assert "## Benchmark" in text and "## Tests" in text
