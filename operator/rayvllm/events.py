"""Kubernetes Events the operator posts about a VLLMCluster, as plain values (handlers post them)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


@dataclass(frozen=True)
class Event:
    """`reason` is stable CamelCase, one of the project's vocabularies (reasons.EventReason and Reason, or
    models.status.Phase for a phase change): alerts and tests may match on it."""

    type: Literal["Normal", "Warning"]
    reason: StrEnum
    message: str
