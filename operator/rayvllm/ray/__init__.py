"""The only code that talks to a Ray cluster: its dashboard's REST API over httpx (no `ray` import)."""

from rayvllm.ray.client import RayDashboardClient, Submission
from rayvllm.ray.http import AUTH_HEADER, RayRequestRejectedError, RetryPolicy
from rayvllm.ray.types import (
    GPU_RESOURCE,
    TERMINAL_JOB_STATUSES,
    ClusterResources,
    JobInfo,
    JobSubmitRequest,
    RayNode,
)

__all__ = [
    "AUTH_HEADER",
    "GPU_RESOURCE",
    "TERMINAL_JOB_STATUSES",
    "ClusterResources",
    "JobInfo",
    "JobSubmitRequest",
    "RayDashboardClient",
    "RayNode",
    "RayRequestRejectedError",
    "RetryPolicy",
    "Submission",
]
