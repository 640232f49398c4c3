"""Pure parsing of the two dashboard answers that together describe the cluster's resources.

Ray 2.60 has no single REST endpoint with exact per-node totals AND availability:
- GET /api/v0/nodes (the state API) lists every node with its IP, head flag, state, labels and
  `resources_total` under the exact resource names, but says nothing about what is in use;
- GET /api/cluster_status (the autoscaler's report) has per-node `[used, total]` pairs, but the
  dashboard passes every key through its camelCase converter (`rayvllm_engine_slots` arrives as
  `rayvllmEngineSlots`). Node ids contain no underscore and survive unchanged.
So the node list comes from the first, and usage is joined in from the second by node id and by
camelCasing the exact names, exactly as Ray's `to_camel_case` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rayvllm.errors import MalformedResponseError
from rayvllm.models.rayapi import ClusterResources, RayNode


def ray_camel_case(name: str) -> str:
    """ray.dashboard.utils.to_camel_case: split on '_', title-case every part but the first."""
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def _as_float_map(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        return {}
    return {str(key): float(amount) for key, amount in value.items() if isinstance(amount, int | float)}


def parse_state_nodes(payload: Any) -> list[Mapping[str, Any]]:
    """The node records of a GET /api/v0/nodes answer:
    {"result": true, "data": {"result": {"result": [...], "total": N}}}."""
    try:
        records = payload["data"]["result"]["result"]
    except (KeyError, TypeError) as e:
        raise MalformedResponseError(f"/api/v0/nodes answer lacks data.result.result: {e!r}") from e
    if not isinstance(records, list):
        raise MalformedResponseError("/api/v0/nodes data.result.result is not a list")
    return [record for record in records if isinstance(record, Mapping)]


def parse_usage_by_node(payload: Any) -> dict[str, dict[str, tuple[float, float]]] | None:
    """{node_id: {camelCaseResource: (used, total)}} from a GET /api/cluster_status answer, or None
    when the report is absent (no autoscaler monitor on the head, or it has not reported yet)."""
    try:
        usage = payload["data"]["clusterStatus"]["loadMetricsReport"]["usageByNode"]
    except (KeyError, TypeError):
        return None
    if not isinstance(usage, Mapping):
        return None
    result: dict[str, dict[str, tuple[float, float]]] = {}
    for node_id, resources in usage.items():
        if not isinstance(resources, Mapping):
            continue
        pairs: dict[str, tuple[float, float]] = {}
        for name, pair in resources.items():
            if isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, int | float) for x in pair):
                pairs[str(name)] = (float(pair[0]), float(pair[1]))
        result[str(node_id)] = pairs
    return result


def _available(
    totals: Mapping[str, float], usage: Mapping[str, tuple[float, float]] | None
) -> dict[str, float] | None:
    if usage is None:
        return None
    available = {}
    for name, total in totals.items():
        used, _ = usage.get(ray_camel_case(name), (0.0, total))
        # Ray reports fractional use with float noise (0.1 CPU used of 2.0 -> 1.9000000000000001).
        available[name] = round(max(total - used, 0.0), 6)
    return available


def build_cluster_resources(nodes_payload: Any, status_payload: Any | None) -> ClusterResources:
    usage = parse_usage_by_node(status_payload) if status_payload is not None else None
    nodes = []
    for record in parse_state_nodes(nodes_payload):
        node_id = str(record.get("node_id", ""))
        totals = _as_float_map(record.get("resources_total"))
        state = str(record.get("state", "UNKNOWN"))
        node_usage = usage.get(node_id) if usage is not None else None
        # A dead node has no usage entry; an alive one without one means the report is stale.
        available = _available(totals, node_usage) if state == "ALIVE" else {}
        labels = record.get("labels")
        nodes.append(
            RayNode(
                node_id=node_id,
                node_ip=str(record.get("node_ip", "")),
                is_head=bool(record.get("is_head_node", False)),
                state=state,
                resources_total=totals,
                resources_available=available,
                labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
            )
        )
    return ClusterResources(nodes=tuple(nodes))
