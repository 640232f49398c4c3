"""The install paths' files agree with each other and with the house rules, without a cluster or a built
tool: the chart's crds/ is a byte copy of crds/, values.yaml is documented, the Dockerfile is the agreed
shape. What needs the pinned helm (the rendered manifests, RBAC, monitoring objects) is in
tests/integration/test_chart_render.py."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from hack.localcluster.kubecli import CHART
from tests.support.operator_identity import DOCKERFILE, dockerfile_instruction

REPO = Path(__file__).resolve().parents[2]


# ---- generated files are fresh ---------------------------------------------------------------------


def test_chart_crds_are_a_byte_copy_of_crds() -> None:
    source = {p.name: p.read_bytes() for p in sorted((REPO / "crds").glob("*.yaml"))}
    copy = {p.name: p.read_bytes() for p in sorted((CHART / "crds").glob("*.yaml"))}
    assert sorted(copy) == sorted(source), "run: .venv/bin/python hack/render-manifests.py"
    stale = [name for name in source if source[name] != copy[name]]
    assert not stale, (
        f"helm/rayvllm-operator/crds/ differs from crds/ for {stale}: run hack/render-manifests.py"
    )


# ---- the chart -------------------------------------------------------------------------------------


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "rayvllm-operator"
    assert chart["appVersion"] == "0.1.0"
    assert "dependencies" not in chart, "KubeRay is documented, never vendored"


def test_every_value_is_documented() -> None:
    """Each top-level key of values.yaml has a comment above it, or each of its children has one."""
    lines = (CHART / "values.yaml").read_text().splitlines()

    def commented(index: int) -> bool:
        return index > 0 and lines[index - 1].strip().startswith("#")

    undocumented = []
    for i, line in enumerate(lines):
        top = re.match(r"^([A-Za-z]\w*):", line)
        if not top or commented(i):
            continue
        children = []
        for j in range(i + 1, len(lines)):
            if lines[j] and not lines[j].startswith(" "):
                break
            if re.match(r"^  [A-Za-z]\w*:", lines[j]):
                children.append(j)
        if not children or not all(commented(j) for j in children):
            undocumented.append(top.group(1))
    assert not undocumented, f"values.yaml keys without a comment: {undocumented}"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    assert set(values) <= set(schema["properties"]), "every value must be declared in values.schema.json"
    assert schema["additionalProperties"] is False


# ---- the image -------------------------------------------------------------------------------------


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE | re.IGNORECASE)
    assert len(stages) == 2, stages
    # Both stages on one base, a build argument whose default is a pinned official Python image (the
    # local cluster passes its own Debian 12 base).
    (default,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", default), f"base image not pinned: {default}"
    assert [image for image, _ in stages] == ["${BASE_IMAGE}", "${BASE_IMAGE}"], stages
    assert stages[0][1] == "builder"
    assert "/opt/venv/bin/pip wheel --no-cache-dir --no-deps" in text
    assert "requirements.lock" in text
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    assert re.search(r"^USER 10001(:10001)?$", text, flags=re.MULTILINE)
    assert dockerfile_instruction("ENTRYPOINT") == [
        "kopf",
        "run",
        "-m",
        "rayvllm.handlers",
        "--standalone",
        "--log-format=json",
        "--liveness=http://0.0.0.0:8080/healthz",
    ]
    assert dockerfile_instruction("CMD") == ["--all-namespaces"]


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"tests", ".cluster", ".venv", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache"} <= ignored
    assert "**/__pycache__" in ignored
    # What the build reads must not be ignored.
    assert not {"operator", "pyproject.toml", "requirements.lock", "README.md"} & ignored
