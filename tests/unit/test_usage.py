"""The Ray cluster's resources in status: what the dashboard reported, summarised and rounded
(rayvllm.usage), and kept as last seen while it cannot be read (rayvllm.status)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from rayvllm.models.rayapi import ClusterResources, RayNode
from rayvllm.placement import ENGINE_SLOT_RESOURCE
from rayvllm.status import Observation, compute_status
from rayvllm.usage import GIB, summarize
from tests.unit.test_status import _observe, _ray_cluster

HEAD = RayNode(
    node_id="head",
    node_ip="10.0.0.2",
    is_head=True,
    state="ALIVE",
    resources_total={"CPU": 1.0, "memory": 2 * GIB},
    resources_available={"CPU": 1.0, "memory": 2 * GIB},
)
WORKER = RayNode(
    node_id="w1",
    node_ip="10.0.0.3",
    is_head=False,
    state="ALIVE",
    resources_total={"CPU": 8.0, "GPU": 4.0, "memory": 30.04 * GIB, ENGINE_SLOT_RESOURCE: 1.0},
    resources_available={"CPU": 7.0, "GPU": 0.0, "memory": 30.04 * GIB, ENGINE_SLOT_RESOURCE: 0.0},
)
GONE = dataclasses.replace(WORKER, node_id="w0", state="DEAD")


def test_totals_and_use_over_alive_nodes() -> None:
    summary = summarize(ClusterResources((HEAD, WORKER, GONE)))
    assert summary.alive_nodes == 2
    assert (summary.gpus.total, summary.gpus.used) == (4.0, 4.0)
    assert (summary.cpus.total, summary.cpus.used) == (9.0, 1.0)
    assert (summary.memory_gib.total, summary.memory_gib.used) == (32.0, 0.0)
    assert (summary.engine_slots.total, summary.engine_slots.used) == (1.0, 1.0)
    assert summary.gpu_usage == "4/4"


def test_unknown_availability_is_shown_as_unknown() -> None:
    blind = dataclasses.replace(WORKER, resources_available=None)
    summary = summarize(ClusterResources((HEAD, blind)))
    assert summary.gpus.used is None and summary.gpu_usage == "?/4"


def test_memory_noise_below_the_rounding_does_not_change_the_summary() -> None:
    a = summarize(ClusterResources((HEAD, WORKER)))
    nudged = dataclasses.replace(WORKER, resources_total={**WORKER.resources_total, "memory": 30.05 * GIB})
    assert summarize(ClusterResources((HEAD, nudged))) == a


def test_status_shows_resources_and_keeps_them_while_they_cannot_be_read() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    summary = summarize(ClusterResources((HEAD, WORKER)))
    seen = dataclasses.replace(
        _observe(ray_cluster=_ray_cluster()), ray_resources=summary, dashboard_url="http://x-head-svc:8265"
    )
    first = compute_status(seen, now)
    assert first.ray_cluster is not None and first.ray_cluster.resources == summary
    assert first.to_wire()["rayCluster"]["resources"]["gpuUsage"] == "4/4"
    unread: Observation = _observe(ray_cluster=_ray_cluster(), previous=first)
    kept = compute_status(unread, now)
    assert kept.ray_cluster is not None
    assert (kept.ray_cluster.resources, kept.ray_cluster.dashboard_url) == (summary, "http://x-head-svc:8265")
    assert compute_status(_observe(ray_cluster=None, previous=first), now).ray_cluster is None
