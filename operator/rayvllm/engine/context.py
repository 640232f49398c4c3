"""What supervising the engines of one VLLMCluster needs to know about it and the world around them, for
one pass. Plain values: the decisions (engine.decide) read it, the executor (supervisor) acts within it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from rayvllm.engine.fingerprint import engine_config_hash
from rayvllm.identity import ClusterRef
from rayvllm.models.spec import VLLMClusterSpec
from rayvllm.settings import Settings


@dataclass(frozen=True)
class EngineContext:
    ref: ClusterRef
    spec: VLLMClusterSpec
    settings: Settings
    now: datetime
    api_key: str | None = field(default=None, repr=False)
    """Never logged or stored: the executor probes /v1/models with it the way clients call it."""
    pod_by_ip: Mapping[str, str] = field(default_factory=dict)
    """Ray pods by IP: on KubeRay a Ray node's IP is its pod's IP, which finds the pod hosting an engine."""
    secrets: frozenset[str] = field(default_factory=frozenset, repr=False)
    """The values of the Secret keys the spec references (HF token, API key, ...), as read this pass: never
    logged; whatever goes from an engine's log into status or Events is redacted of them."""

    pods_replaced: bool = False
    """Ray pods of an older template remain: KubeRay is replacing every pod (upgradeStrategy Recreate of the
    RayCluster), so no engine of older settings can keep serving through a rolling upgrade."""
    worker_unschedulable: bool = False
    """A GPU worker pod cannot be scheduled: a surge pod would not be placed either."""

    @cached_property
    def config_hash(self) -> str:
        """Computed once per pass, not once per replica."""
        return engine_config_hash(self.spec)
