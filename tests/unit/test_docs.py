"""The documentation agrees with the code: docs/api-reference.md is what hack/gen-api-docs.py generates from
the CRD now."""

from __future__ import annotations

import importlib.util
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
