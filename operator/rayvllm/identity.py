"""Which VLLMCluster a piece of work is about: the one home of its identity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ClusterRef:
    """A VLLMCluster as read from its body: where it lives, which incarnation (uid) and which spec
    (generation)."""

    namespace: str
    name: str
    uid: str = ""
    generation: int = 0

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ClusterRef:
        meta = body["metadata"]
        return cls(
            meta["namespace"], meta["name"], str(meta.get("uid") or ""), int(meta.get("generation") or 0)
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"
