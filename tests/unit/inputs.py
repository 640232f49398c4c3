"""Loading the manifests the unit tests share with docs and the integration tier."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "manifests" / "samples"
BAD_INPUTS = REPO / "tests" / "bad_inputs"
CRD_FILE = REPO / "crds" / "vllmclusters.rayvllm.io.yaml"


@dataclass(frozen=True)
class BadInput:
    path: Path
    tier: str  # "expect" (refused at admission) or "expect-status" (reported in status)
    expect: str
    body: dict[str, Any]

    @property
    def admission(self) -> bool:
        return self.tier == "expect"


def load_yaml(path: Path) -> dict[str, Any]:
    body = yaml.safe_load(path.read_text())
    assert isinstance(body, dict), f"{path} must hold one object"
    return body


def samples() -> list[Path]:
    return sorted(SAMPLES.glob("*.yaml"))


def bad_inputs() -> list[BadInput]:
    cases = []
    for path in sorted(BAD_INPUTS.glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        tier, sep, expect = first.removeprefix("# ").partition(": ")
        assert sep and tier in ("expect", "expect-status") and expect, f"{path}: bad first line {first!r}"
        cases.append(BadInput(path, tier, expect, load_yaml(path)))
    return cases
