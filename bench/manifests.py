"""The benchmark's objects: N VLLMClusters made from a sample manifest of the checkout under test (one
engine, TP=1 x PP=1, one GPU worker: two pods per object), healthy or Degraded, and the floor's copies of
the RayClusters the operator made."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

SAMPLE = Path("manifests") / "samples" / "minimal-gpu.yaml"
MISSING_SECRET = "bench-missing-hf-token"
# No node carries this label: the worker pod stays Pending (Unschedulable).
NOWHERE = {"rayvllm.io/bench-nowhere": "true"}
Manifest = dict[str, Any]


class Variant(Enum):
    HEALTHY = "healthy"
    MISSING_SECRET = "missing-secret"
    UNSCHEDULABLE = "unschedulable"


def name(i: int) -> str:
    return f"bench-{i:04d}"


def load_sample(checkout: Path) -> Manifest:
    doc = yaml.safe_load((checkout / SAMPLE).read_text())
    assert isinstance(doc, dict) and doc.get("kind") == "VLLMCluster", (
        f"{checkout / SAMPLE}: not a VLLMCluster"
    )
    return doc


def vllmcluster(sample: Manifest, index: int, variant: Variant) -> Manifest:
    obj = copy.deepcopy(sample)
    obj["metadata"] = {"name": name(index), "labels": {"rayvllm.io/bench": variant.value}}
    spec = obj.setdefault("spec", {})
    engine = spec.setdefault("engine", {})
    engine.update(tensorParallelSize=1, pipelineParallelSize=1)
    spec["replicas"] = 1
    ray = spec.setdefault("ray", {})
    # Small explicit requests: kwok's nodes are fake, but the scheduler still fits requests to capacity.
    ray.setdefault("head", {})["resources"] = {"requests": {"cpu": "1", "memory": "2Gi"}}
    worker = ray.setdefault("worker", {})
    worker["gpusPerWorker"] = 1
    worker["resources"] = {"requests": {"cpu": "2", "memory": "8Gi"}}
    if variant is Variant.MISSING_SECRET:
        spec["model"]["hfTokenSecretRef"] = {"name": MISSING_SECRET, "key": "token"}
    elif variant is Variant.UNSCHEDULABLE:
        worker["nodeSelector"] = dict(NOWHERE)
    return obj


def degraded_variant(index: int) -> Variant:
    """Half of a Degraded set misses its Secret, the other half has a worker no node fits."""
    return Variant.MISSING_SECRET if index % 2 == 0 else Variant.UNSCHEDULABLE


def edited_worker_memory(step: int) -> dict[str, Any]:
    """A merge patch of spec.ray.worker.resources: a new RayCluster worker template, so a new generation."""
    return {"spec": {"ray": {"worker": {"resources": {"requests": {"cpu": "2", "memory": f"{9 + step}Gi"}}}}}}


def floor_copy(made: Manifest, index: int) -> Manifest:
    """A RayCluster the operator made, as a plain user would create it: same spec, no owner."""
    meta = made["metadata"]
    return {
        "apiVersion": made["apiVersion"],
        "kind": made["kind"],
        "metadata": {
            "name": name(index),
            "labels": dict(meta.get("labels") or {}),
            "annotations": {
                k: v
                for k, v in (meta.get("annotations") or {}).items()
                if k != "kubectl.kubernetes.io/last-applied-configuration"
            },
        },
        "spec": copy.deepcopy(made["spec"]),
    }


def write_list(path: Path, items: Sequence[Manifest]) -> Path:
    """All objects in one file, for one `kubectl create -f`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)}))
    return path
