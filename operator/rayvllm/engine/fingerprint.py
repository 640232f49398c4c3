"""The fingerprint of what an engine runs. Pure."""

from __future__ import annotations

import hashlib
import json

from rayvllm.models.spec import VLLMClusterSpec


def engine_config_hash(spec: VLLMClusterSpec) -> str:
    """A change means a new engine (upgradeStrategy Recreate); replicas, suspend and restart policy are not
    part of it, so scaling never restarts running engines."""
    relevant = {
        "model": spec.model.to_wire(),
        "engine": spec.engine.to_wire(),
        "image": spec.ray.image,
        "modelCache": spec.model_cache.to_wire() if spec.model_cache else None,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
