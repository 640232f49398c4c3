"""The watches of a VLLMCluster's children: kopf indexes that hold what reconcile reads (so no pass lists
anything), and event handlers that wake the owner's loop when a child changes, so a deleted Service or an
edited RayCluster is repaired at once rather than at the next resync.

Every handler here is a coroutine: kopf runs a plain function in a thread pool, which would cost each watch
event two thread hops and would set the loop's asyncio.Event from a foreign thread (not thread-safe, so a
wake-up could wait for the loop's next unrelated event)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from rayvllm.builders.labels import CLUSTER_LABEL, MANAGED_BY_LABEL, MANAGER
from rayvllm.handlers.wakeup import wake
from rayvllm.observed import PodView, parent_of, pod_view, trimmed
from rayvllm.reconcile import Children

RAY_CLUSTERS = ("ray.io", "v1", "rayclusters")
OURS: dict[str, Any] = {MANAGED_BY_LABEL: MANAGER, CLUSTER_LABEL: kopf.PRESENT}
INDEXES = ("ray_clusters", "services", "ray_pods")

Key = tuple[str, str]


@kopf.index(*RAY_CLUSTERS, labels=OURS)
async def ray_clusters(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, dict[str, Any]]:
    return {(str(namespace), str(parent_of(labels))): trimmed(body)}


@kopf.index("", "v1", "services", labels=OURS)
async def services(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, dict[str, Any]]:
    return {(str(namespace), str(parent_of(labels))): trimmed(body)}


@kopf.index("", "v1", "pods", labels=OURS)
async def ray_pods(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, PodView]:
    return {(str(namespace), str(parent_of(labels))): pod_view(body)}


@kopf.on.event(*RAY_CLUSTERS, labels=OURS)
@kopf.on.event("", "v1", "services", labels=OURS)
@kopf.on.event("", "v1", "pods", labels=OURS)
async def child_changed(namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    wake(memo, (str(namespace), str(parent_of(labels))))


def children_of(key: Key, kwargs: Mapping[str, Any]) -> Children:
    """The children of the VLLMCluster `key` as the indexes hold them now (kopf passes every index to
    every handler as a keyword argument named after its function)."""
    indexes: dict[str, kopf.Index[Key, Any]] = {name: kwargs[name] for name in INDEXES}

    def one(index: str) -> Any:
        store = indexes[index].get(key)
        return next(iter(store), None) if store is not None else None

    pods = indexes["ray_pods"].get(key)
    return Children(
        ray_cluster=one("ray_clusters"),
        service=one("services"),
        pods=tuple(sorted(pods or (), key=lambda pod: pod.name)),
    )
