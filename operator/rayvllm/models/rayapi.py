"""What the Ray dashboard's REST API takes and returns, as typed values (Ray 2.60): shared by the pure job
builder and decisions, and by the client in ray/ that sends and parses them.

Wire shapes follow Ray's own `ray.dashboard.modules.job.common` (JobSubmitRequest, JobDetails) and the
state API's node records; unknown fields are ignored so a newer Ray does not break the operator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from rayvllm.models.status import JobStatus

TERMINAL_JOB_STATUSES: frozenset[JobStatus] = frozenset({"STOPPED", "SUCCEEDED", "FAILED"})

# The resource name Ray gives GPUs, whatever Kubernetes calls them (nvidia.com/gpu, amd.com/gpu).
GPU_RESOURCE = "GPU"


class JobSubmitRequest(BaseModel):
    """Body of POST /api/jobs/. Ray rejects unknown keys and non-string metadata values; None fields
    are left out of the body (Ray's defaults apply)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entrypoint: str = Field(min_length=1)
    submission_id: str = Field(min_length=1)
    runtime_env: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    entrypoint_num_cpus: float | None = Field(None, ge=0)
    entrypoint_num_gpus: float | None = Field(None, ge=0)
    entrypoint_memory: int | None = Field(None, ge=0)
    entrypoint_resources: dict[str, float] | None = None
    entrypoint_label_selector: dict[str, str] | None = None

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def _ms_to_datetime(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


class JobInfo(BaseModel):
    """One submission job, from GET /api/jobs/{id} or the list. The job's runtime_env is deliberately not
    kept: it is the request echoed back, and nothing the supervisor decides depends on it. Ray 2.60 does
    not echo the entrypoint_* resources at all."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    submission_id: str
    status: JobStatus
    entrypoint: str = ""
    message: str | None = None
    # Ray's JobErrorType, e.g. JOB_ENTRYPOINT_COMMAND_ERROR, JOB_SUPERVISOR_ACTOR_DIED.
    error_type: str | None = None
    # Milliseconds since the epoch, as Ray reports them.
    start_time: int | None = None
    end_time: int | None = None
    # Ray answers null for a job submitted without metadata.
    metadata: Annotated[dict[str, str], BeforeValidator(lambda value: value or {})] = Field(
        default_factory=dict
    )
    # http://<node ip>:<agent port> of the node running the entrypoint; set once it is RUNNING.
    driver_agent_http_address: str | None = None
    driver_node_id: str | None = None
    driver_exit_code: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    @property
    def started_at(self) -> datetime | None:
        return _ms_to_datetime(self.start_time)

    @property
    def ended_at(self) -> datetime | None:
        return _ms_to_datetime(self.end_time)

    @property
    def driver_node_ip(self) -> str | None:
        """IP of the node (on KubeRay: the pod) that runs the entrypoint, i.e. where the engine's API
        server listens."""
        if not self.driver_agent_http_address:
            return None
        return urlsplit(self.driver_agent_http_address).hostname


@dataclass(frozen=True)
class RayNode:
    """A Ray node (on KubeRay: a pod). `resources_available` is None when the dashboard could not say."""

    node_id: str
    node_ip: str
    is_head: bool
    state: str
    resources_total: Mapping[str, float]
    resources_available: Mapping[str, float] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.state == "ALIVE"


@dataclass(frozen=True)
class ClusterResources:
    """The cluster as Ray's scheduler sees it: logical resources, not pods."""

    nodes: tuple[RayNode, ...]

    @property
    def alive_nodes(self) -> tuple[RayNode, ...]:
        return tuple(node for node in self.nodes if node.alive)

    def total(self, resource: str) -> float:
        return sum(node.resources_total.get(resource, 0.0) for node in self.alive_nodes)

    def available(self, resource: str) -> float | None:
        """None when availability is unknown for some alive node (the autoscaler report was missing)."""
        amounts = [node.resources_available for node in self.alive_nodes]
        if any(amount is None for amount in amounts):
            return None
        return sum(amount.get(resource, 0.0) for amount in amounts if amount is not None)

    @property
    def gpus_total(self) -> float:
        return self.total(GPU_RESOURCE)

    @property
    def gpus_available(self) -> float | None:
        return self.available(GPU_RESOURCE)

    def node(self, node_id: str) -> RayNode | None:
        return next((node for node in self.nodes if node.node_id == node_id), None)


# What Ray's token-auth middleware answers a request it refuses: 401 without a token, 403 with a wrong one
# (ray/_private/authentication/http_token_authentication.py, Ray 2.60).
AUTH_REFUSALS: frozenset[int] = frozenset({401, 403})


@dataclass(frozen=True)
class VersionAnswer:
    """What a dashboard answered GET /api/version: `status` is 2xx or one of AUTH_REFUSALS (a refusal
    carries nothing else). `session_name` names the Ray cluster's current session: a new one at every
    start of the head's Ray."""

    status: int
    ray_version: str | None = None
    session_name: str | None = None

    @property
    def refused(self) -> bool:
        return self.status in AUTH_REFUSALS

    @property
    def answered(self) -> bool:
        return 200 <= self.status < 300
