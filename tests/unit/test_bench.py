"""The benchmark measures the operator as the image runs it."""

from __future__ import annotations

import re
from pathlib import Path

from bench.operator import FIXED_ENV, IMAGE_ENV

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def _final_stage_env() -> dict[str, str]:
    final = DOCKERFILE.read_text().split("\nFROM ")[-1]
    env: dict[str, str] = {}
    for instruction in re.findall(r"^ENV ((?:.*\\\n)*.*)$", final, flags=re.MULTILINE):
        for pair in instruction.replace("\\\n", " ").split():
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def test_bench_runs_the_operator_with_the_image_s_malloc_settings() -> None:
    image = _final_stage_env()
    image_malloc = {k: v for k, v in image.items() if k.startswith("MALLOC_")}
    assert image_malloc, "the image sets no MALLOC_* variable: update bench.operator.IMAGE_ENV too"
    assert dict(IMAGE_ENV) == image_malloc
    assert {k: FIXED_ENV[k] for k in IMAGE_ENV} == dict(IMAGE_ENV)
