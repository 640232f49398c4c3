"""The Ray cluster's resources as status shows them: totals and use of GPUs, CPUs, memory and engine slots,
from what the dashboard reports (rayvllm.models.rayapi.ClusterResources). Pure. Quantities are rounded so a
status written "only on change" does not change with noise: Ray's logical resources move in whole units
except memory, which is shown in GiB to one decimal."""

from __future__ import annotations

from rayvllm.models.rayapi import GPU_RESOURCE, ClusterResources
from rayvllm.models.status import RayResourcesStatus, ResourceUsage
from rayvllm.placement import ENGINE_SLOT_RESOURCE

CPU_RESOURCE = "CPU"
MEMORY_RESOURCE = "memory"  # bytes
GIB = 1024**3


def _usage(resources: ClusterResources, name: str, scale: float = 1.0, digits: int = 3) -> ResourceUsage:
    total = resources.total(name)
    available = resources.available(name)
    used = None if available is None else max(total - available, 0.0)
    return ResourceUsage(
        total=round(total / scale, digits), used=None if used is None else round(used / scale, digits)
    )


def _number(value: float) -> str:
    return f"{value:g}"


def summarize(resources: ClusterResources) -> RayResourcesStatus:
    gpus = _usage(resources, GPU_RESOURCE)
    used = "?" if gpus.used is None else _number(gpus.used)
    return RayResourcesStatus(
        alive_nodes=len(resources.alive_nodes),
        gpus=gpus,
        cpus=_usage(resources, CPU_RESOURCE),
        memory_gib=_usage(resources, MEMORY_RESOURCE, scale=GIB, digits=1),
        engine_slots=_usage(resources, ENGINE_SLOT_RESOURCE),
        gpu_usage=f"{used}/{_number(gpus.total)}",
    )
