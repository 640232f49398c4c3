"""Summaries of latency samples. Percentiles are nearest-rank (the value of the ceil(p/100 * n)-th
smallest sample): with 100 samples p99 is the 99th, a real observation, never an interpolation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(samples: Sequence[float], p: float) -> float:
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(samples: Sequence[float], expected: int | None = None) -> dict[str, Any]:
    """p50/p99/max in milliseconds, and how many samples there were (of how many expected)."""
    result: dict[str, Any] = {"n": len(samples)}
    if expected is not None:
        result["expected"] = expected
    if samples:
        result.update(
            p50_ms=round(percentile(samples, 50) * 1000, 1),
            p99_ms=round(percentile(samples, 99) * 1000, 1),
            max_ms=round(max(samples) * 1000, 1),
        )
    return result
