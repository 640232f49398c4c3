"""The VLLMCluster status: what the operator observed. Written whole by rayvllm.status.compute_status."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from rayvllm.models.base import ApiModel


class StatusModel(ApiModel):
    # Status is read back from the API server as JSON: timestamps arrive as strings.
    model_config = ConfigDict(strict=False)


class Phase(StrEnum):
    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    LAUNCHING = "Launching"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class ConditionType(StrEnum):
    READY = "Ready"
    RAY_CLUSTER_READY = "RayClusterReady"
    ENGINES_READY = "EnginesReady"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


ConditionStatus = Literal["True", "False", "Unknown"]

CAMEL_CASE_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(StatusModel):
    """A metav1.Condition."""

    type: str = Field(max_length=316, description="Condition type: Ready, RayClusterReady, EnginesReady, ...")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1, max_length=1024, pattern=CAMEL_CASE_REASON, description="CamelCase cause of the status."
    )
    message: str = Field("", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the condition was computed from."
    )


JobStatus = Literal["PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"]
# EngineStatus.lastLogLine's bound: a line is trimmed to LOG_LINE_LIMIT characters before it is stored.
LOG_LINE_LIMIT = 200


class EngineStage(StrEnum):
    """What an engine is doing now, derived from its record by `engine_stage` (never kept as state of its
    own, so it cannot disagree with the fields it is read from)."""

    SUBMITTED = "Submitted"
    WAITING_FOR_RESOURCES = "WaitingForResources"
    LOADING = "Loading"
    READY = "Ready"
    UNHEALTHY = "Unhealthy"
    RESTARTING = "Restarting"
    DRAINING = "Draining"
    FAILED = "Failed"


# spec.replicas is at most 1000, so replica indexes are 0..999 and an outgoing engine (RollingReplicas: an
# engine of older settings being replaced by the new engine of replica i) is kept at OUTGOING_INDEX_OFFSET + i,
# where no replica index can reach it, whatever spec.replicas becomes meanwhile.
OUTGOING_INDEX_OFFSET = 1000


class Outgoing(StrEnum):
    """How an outgoing engine gives way to its replacement (upgradeStrategy RollingReplicas)."""

    SURGE = "Surge"
    """It serves until its replacement, on an extra worker pod, is ready; then it drains."""
    IN_PLACE = "InPlace"
    """It drains first; its replacement starts on the engine slot it frees."""


class EngineStatus(StatusModel):
    """One engine replica: a Ray job running vLLM's OpenAI server. Written by the engine supervisor."""

    index: int = Field(
        ge=0,
        description=(
            "Replica index, 0..replicas-1; 1000+i for an engine of older settings being replaced by replica "
            "i's new engine (see outgoing)."
        ),
    )
    outgoing: Outgoing | None = Field(
        None,
        description=(
            "upgradeStrategy RollingReplicas: this engine runs older engine settings and is being replaced by "
            "the engine at index-1000. Surge: it serves until its replacement (on an extra worker pod) is "
            "ready, then drains; InPlace: it drains first and its replacement takes its engine slot."
        ),
    )
    submission_id: str | None = Field(
        None, max_length=256, description="Ray job submission id of the current attempt."
    )
    job_status: JobStatus | None = Field(None, description="Ray job status of the current attempt.")
    stopping_submission_id: str | None = Field(
        None,
        max_length=256,
        description=(
            "Between attempts: the failed attempt's Ray job, stopped but not yet ended in Ray (Ray notices a "
            "lost node or container only after its health checks fail). The next attempt is submitted once "
            "Ray reports this job ended or no longer knows it, so a replica never has two live jobs; after "
            "two minutes past the backoff it is submitted anyway."
        ),
    )
    attempt: int = Field(0, ge=0, description="Attempt number, counted from 0; part of the submission id.")
    restarts: int = Field(
        0, ge=0, description="Restarts after failures, counted against restartPolicy.maxRestarts."
    )
    ready: bool = Field(False, description="The engine answers /health and lists the served model.")
    health: str | None = Field(
        None,
        max_length=32,
        description=(
            "What the engine's last health probe found: Ready, Starting, Unhealthy, Unresponsive, "
            "ModelNotServed, Unauthorized, or (from the canary completion) Hung or NotGenerating. Unset "
            "from each submission until that attempt's first probe."
        ),
    )
    url: str | None = Field(None, max_length=1024, description="Where the engine's API server listens.")
    pod_name: str | None = Field(None, max_length=253, description="Pod that hosts the engine's API server.")
    started_at: datetime | None = Field(None, description="When the current attempt was submitted.")
    last_failure: str | None = Field(None, max_length=4096, description="Why the last attempt failed.")
    budget_exhausted: bool = Field(
        False, description="maxRestarts is spent: the engine stays down until the spec changes."
    )
    generation: int | None = Field(
        None,
        ge=0,
        description="metadata.generation whose engine settings this engine runs; part of the submission id.",
    )
    config_hash: str | None = Field(
        None,
        max_length=64,
        description="Fingerprint of the engine settings it runs; a change recreates the engine.",
    )
    restart_after: datetime | None = Field(
        None, description="Backoff: the next attempt is not submitted before this time."
    )
    unhealthy_since: datetime | None = Field(
        None, description="When a running engine stopped answering its health check."
    )
    draining_since: datetime | None = Field(
        None,
        description=(
            "Scale-down: when the engine was taken out of the Service; its job is stopped and its pod "
            "removed once in-flight requests had time to finish."
        ),
    )
    stage: EngineStage | None = Field(
        None,
        description=(
            "What the engine is doing now, read from the fields above: WaitingForResources (not submitted "
            "yet because the Ray cluster is not ready or has no free engine slot, or its Ray job is PENDING), "
            "Submitted (Ray has not reported the new job yet), Loading (job RUNNING, not answering its "
            "probe yet), Ready, Unhealthy (it served during this attempt and fails its probe now), "
            "Restarting (waiting out the backoff until restartAfter), Draining (scaled down), Failed "
            "(restartPolicy.maxRestarts spent)."
        ),
    )
    stage_since: datetime | None = Field(
        None,
        description=(
            "When the operator first saw the engine in its stage (like a condition's lastTransitionTime: "
            "unchanged while the stage is)."
        ),
    )
    load_seconds: int | None = Field(
        None,
        ge=0,
        description=(
            "Seconds from this attempt's submission (startedAt) to its first ready probe: waiting for "
            "resources, downloading and loading the model. Unset until then; kept while the attempt lasts."
        ),
    )
    last_log_line: str | None = Field(
        None,
        max_length=256,
        description=(
            "While loading: the last meaningful line of the engine's Ray job log (blank lines, indented "
            "continuations and bare progress bars skipped), Secret values and token shapes redacted, cut to "
            "200 characters. "
            "Read at most every 30 s; cleared once the engine is ready or the attempt ends."
        ),
    )
    last_log_read_at: datetime | None = Field(None, description="When lastLogLine was read from Ray.")

    @property
    def replica(self) -> int:
        """The replica this engine serves as: its index, or for an outgoing engine the replica its
        replacement took."""
        return self.index - OUTGOING_INDEX_OFFSET if self.outgoing is not None else self.index

    @property
    def label(self) -> str:
        """How Events and messages name it."""
        if self.outgoing is not None:
            return f"engine {self.replica} (older settings, being replaced)"
        return f"engine {self.index}"


def engine_stage(engine: EngineStatus) -> EngineStage:
    """The engine's stage from what its record holds, first match wins. `loadSeconds` set means the attempt
    served before: not ready now is then Unhealthy, never Loading again (also while the Ray dashboard is
    unreachable and the engine is not answering, when no unhealthySince is kept)."""
    if engine.budget_exhausted:
        return EngineStage.FAILED
    if engine.draining_since is not None:
        return EngineStage.DRAINING
    if engine.submission_id is None:
        # Only a failed attempt leaves restartAfter; a new engine waits for the cluster or a free slot.
        return (
            EngineStage.RESTARTING if engine.restart_after is not None else EngineStage.WAITING_FOR_RESOURCES
        )
    if engine.ready:
        return EngineStage.READY
    match engine.job_status:
        case None:
            return EngineStage.SUBMITTED
        case "PENDING":
            return EngineStage.WAITING_FOR_RESOURCES
        case "RUNNING":
            served = engine.unhealthy_since is not None or engine.load_seconds is not None
            return EngineStage.UNHEALTHY if served else EngineStage.LOADING
        case _:
            # A job that ended is restarted by the supervisor in the pass that sees it; this record is not
            # kept past that pass.
            return EngineStage.RESTARTING


class ResourceUsage(StatusModel):
    """One Ray resource over the cluster's alive nodes."""

    total: float = Field(ge=0, description="Total over the alive Ray nodes.")
    used: float | None = Field(
        None, ge=0, description="In use (total - available); unset when Ray did not report availability."
    )


class RayResourcesStatus(StatusModel):
    """The Ray cluster's logical resources as Ray's scheduler sees them (the dashboard's node list and
    autoscaler report: what `ray.cluster_resources()` and `ray.available_resources()` return)."""

    alive_nodes: int = Field(ge=0, description="Ray nodes alive (head included).")
    gpus: ResourceUsage = Field(description="GPU.")
    cpus: ResourceUsage = Field(description="CPU.")
    memory_gib: ResourceUsage = Field(
        description="Ray's logical memory resource, in GiB rounded to 0.1 (so status does not churn)."
    )
    engine_slots: ResourceUsage = Field(
        description="rayvllm_engine_slots: one per GPU worker pod; an engine's API server takes one."
    )
    gpu_usage: str = Field(
        max_length=64, description="GPUs used/total, e.g. 4/8 (`kubectl get vllm -o wide` shows it)."
    )


class RayClusterStatus(StatusModel):
    """The child RayCluster."""

    name: str = Field(description="Name of the RayCluster.")
    desired_workers: int = Field(0, ge=0, description="GPU worker pods the engines need.")
    ready_workers: int = Field(0, ge=0, description="GPU worker pods ready.")
    dashboard_url: str | None = Field(
        None, max_length=1024, description="The Ray dashboard (Jobs API) as the operator reaches it."
    )
    resources: RayResourcesStatus | None = Field(
        None,
        description=(
            "The Ray cluster's resources, refreshed at each resync while the cluster is ready and its "
            "dashboard answers; kept as last seen otherwise."
        ),
    )


class EndpointStatus(StatusModel):
    """Where clients reach the engines."""

    service: str = Field(description="Name of the Service that routes to ready engines.")
    url: str = Field(description="OpenAI-compatible base URL, e.g. http://NAME.NAMESPACE.svc:8000/v1.")


class VLLMClusterStatus(StatusModel):
    """Observed state of a VLLMCluster."""

    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation this status describes."
    )
    phase: Phase | None = Field(
        None, description="Pending, Provisioning, Launching, Ready, Degraded, Failed, Suspended."
    )
    message: str | None = Field(None, max_length=32768, description="Human-readable summary of the phase.")
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Ready, RayClusterReady, EnginesReady, Progressing, Degraded.",
    )
    replicas: int = Field(0, ge=0, description="Engines requested (spec.replicas); the /scale status.")
    ready_replicas: int = Field(
        0,
        ge=0,
        description=(
            "Engines serving, an outgoing engine (upgradeStrategy RollingReplicas) counted while it serves in "
            "place of its replacement."
        ),
    )
    updated_replicas: int = Field(
        0,
        ge=0,
        description="Engines serving with the current engine settings (their configHash is the spec's).",
    )
    selector: str | None = Field(
        None, description="Label selector of the pods that serve, for the /scale subresource."
    )
    ray_cluster: RayClusterStatus | None = Field(None, description="The child RayCluster.")
    engines: Annotated[list[EngineStatus], Field(max_length=1000)] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["index"]},
        description="One entry per engine replica.",
    )
    endpoint: EndpointStatus | None = Field(None, description="The Service clients use.")
    kopf: dict[str, Any] | None = Field(None, description="kopf's own bookkeeping; not part of the API.")

    def condition(self, condition_type: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == condition_type), None)
