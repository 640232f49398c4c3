"""Kubernetes Events the operator posts about a VLLMCluster, as plain values (handlers post them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Event:
    """`reason` is stable CamelCase: alerts and tests may match on it."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
