"""What the watches saw of a VLLMCluster's children, as small values. Pure: handlers/ feeds kopf's indexes
through these functions, so the operator keeps only what it decides on (not whole pod bodies with their
managedFields) and reconcile reads the world without listing it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rayvllm.builders.labels import CLUSTER_LABEL, SERVING, SERVING_LABEL, SPEC_HASH_ANNOTATION

RAY_NODE_TYPE_LABEL = "ray.io/node-type"
# Kept of a child (RayCluster, Service): enough to compare with what the operator would apply and to read
# KubeRay's status. managedFields, the bulk of a stored object, is dropped.
_KEPT_METADATA = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "labels",
    "annotations",
    "ownerReferences",
    "deletionTimestamp",
)


@dataclass(frozen=True)
class PodView:
    """One Ray pod of a VLLMCluster, as the decisions need it."""

    name: str
    node_type: str
    ip: str | None
    ready: bool
    deleting: bool
    spec_hash: str | None
    serving: bool
    unschedulable: str | None = None
    """The scheduler's message when it cannot place the pod, else None."""
    restarts: int = 0
    """Container restarts so far: a head's Ray that restarted in the same pod is a new Ray cluster."""


def parent_of(labels: Mapping[str, str] | None) -> str | None:
    """The VLLMCluster a child or Ray pod belongs to (children and pod templates carry CLUSTER_LABEL)."""
    return (labels or {}).get(CLUSTER_LABEL)


def pod_view(body: Mapping[str, Any]) -> PodView:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    labels = meta.get("labels") or {}
    conditions = status.get("conditions") or []
    deleting = bool(meta.get("deletionTimestamp"))
    ready = (
        status.get("phase") == "Running"
        and not deleting
        and any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    )
    unschedulable = next(
        (
            str(c.get("message") or "")
            for c in conditions
            if c.get("type") == "PodScheduled"
            and c.get("status") == "False"
            and c.get("reason") == "Unschedulable"
        ),
        None,
    )
    return PodView(
        name=str(meta.get("name")),
        node_type=str(labels.get(RAY_NODE_TYPE_LABEL, "")),
        ip=status.get("podIP") or None,
        ready=ready,
        deleting=deleting,
        spec_hash=(meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION),
        serving=labels.get(SERVING_LABEL) == SERVING,
        unschedulable=unschedulable,
        restarts=sum(int(c.get("restartCount") or 0) for c in status.get("containerStatuses") or []),
    )


@dataclass(frozen=True)
class PodCounts:
    """Readiness read from the RayCluster's pods directly; fresher than KubeRay's status counters."""

    head_ready: bool
    ready_workers: int
    # Pods still made from an older RayCluster spec (KubeRay's Recreate is replacing them): not counted above.
    outdated: int = 0


def count_pods(pods: Sequence[PodView], spec_hash: str) -> PodCounts:
    """Readiness of the pods made from the current spec; the others are being replaced."""
    current = [p for p in pods if p.spec_hash == spec_hash]
    return PodCounts(
        head_ready=any(p.node_type == "head" and p.ready for p in current),
        ready_workers=sum(p.node_type == "worker" and p.ready for p in current),
        outdated=sum(p.spec_hash != spec_hash for p in pods if not p.deleting),
    )


def head_identity(pods: Sequence[PodView]) -> tuple[tuple[str, int], ...]:
    """Which Ray head runs: its pod and how often its containers restarted. KubeRay names a new head pod
    anew, so a head that was replaced or restarted has another identity."""
    return tuple(sorted((p.name, p.restarts) for p in pods if p.node_type == "head" and not p.deleting))


def live_workers(pods: Sequence[PodView]) -> list[str]:
    return [p.name for p in pods if p.node_type == "worker" and not p.deleting]


def unplaced_workers(pods: Sequence[PodView]) -> frozenset[str]:
    """Worker pods the scheduler cannot place (no capacity): the first to go when workers are removed."""
    return frozenset(
        p.name for p in pods if p.node_type == "worker" and not p.deleting and p.unschedulable is not None
    )


def trimmed(body: Mapping[str, Any]) -> dict[str, Any]:
    """A child as kept in the operator's cache: metadata we compare, spec and status."""
    meta = body.get("metadata") or {}
    kept: dict[str, Any] = {"metadata": {key: meta[key] for key in _KEPT_METADATA if key in meta}}
    for key in ("apiVersion", "kind", "spec", "status"):
        if key in body:
            kept[key] = body[key]
    return kept


def resource_version(obj: Mapping[str, Any] | None) -> int:
    """resourceVersion as a number, for telling the newer of two copies of one object apart (etcd's
    revision; -1 when absent or not numeric, so any real copy wins)."""
    version = str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")
    return int(version) if version.isdigit() else -1


def newer(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if a is None or b is None:
        return a if b is None else b
    return a if resource_version(a) >= resource_version(b) else b
