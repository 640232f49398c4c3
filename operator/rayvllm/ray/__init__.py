"""The only code that talks to a Ray cluster: its dashboard's REST API over httpx (no `ray` import)."""

from rayvllm.errors import RayRequestRejectedError
from rayvllm.models.rayapi import (
    GPU_RESOURCE,
    TERMINAL_JOB_STATUSES,
    ClusterResources,
    JobInfo,
    JobSubmitRequest,
    RayNode,
)
from rayvllm.ray.client import Dashboards, RayDashboardClient, Submission
from rayvllm.ray.http import AUTH_HEADER, RetryPolicy, shared_client

__all__ = [
    "AUTH_HEADER",
    "GPU_RESOURCE",
    "TERMINAL_JOB_STATUSES",
    "ClusterResources",
    "Dashboards",
    "JobInfo",
    "JobSubmitRequest",
    "RayDashboardClient",
    "RayNode",
    "RayRequestRejectedError",
    "RetryPolicy",
    "Submission",
    "shared_client",
]
