"""The import-linter contracts cover the whole package: every module sits in a layer, so a new module
cannot slip past the layering by not being named."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "rayvllm"


def modules() -> list[str]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(found)


def layered() -> list[str]:
    config = configparser.ConfigParser()
    config.read(REPO / ".importlinter")
    lines = config["importlinter:contract:layers"]["layers"].strip().splitlines()
    return [name for line in lines for name in re.split(r"\s*[|:]\s*", line.strip()) if name]


def imports_nothing(module: str) -> bool:
    """A namespace-only package: its __init__ holds a docstring and no import."""
    init = PACKAGE.parent.joinpath(*module.split("."), "__init__.py")
    tree = ast.parse(init.read_text())
    return not any(isinstance(node, ast.Import | ast.ImportFrom) for node in ast.walk(tree))


def test_every_module_is_in_a_layer() -> None:
    layers = layered()
    unplaced = [
        module
        for module in modules()
        if not any(module == layer or module.startswith(layer + ".") for layer in layers)
        # The root holds the API's names only; a bare package imports nothing to be layered.
        and not (module == "rayvllm" or imports_nothing(module))
    ]
    assert unplaced == [], f"place these modules in .importlinter's layers: {unplaced}"


def test_the_root_package_only_names_the_api() -> None:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    assert not any(isinstance(node, ast.Import | ast.ImportFrom) for node in ast.walk(tree))
