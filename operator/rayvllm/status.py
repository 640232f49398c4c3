"""Pure status computation: what the operator observed -> the whole VLLMCluster status.

No I/O and no clock: the caller passes `now`. Conditions keep their lastTransitionTime while their status
does not change, so recomputing an unchanged world yields an identical status (and no patch).

Ready is True only when every requested engine answers; until engines exist it is False with reason
EngineNotLaunched (or a more specific blocker), never True early.

Each engine's stage is read from its record (models.status.engine_stage) and stamped with when it began
(stageSince, kept while the stage is, like lastTransitionTime); the message names the engines that are not
ready yet and since when. Nothing here ticks with the clock: a settled status is the same at every pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from rayvllm.builders.labels import selector_string, serving_selector
from rayvllm.builders.service import service_url
from rayvllm.engine.fingerprint import engine_config_hash
from rayvllm.engine.rollout import RolloutStep, rollout_step, standing_in
from rayvllm.identity import ClusterRef
from rayvllm.models.spec import VLLMClusterSpec
from rayvllm.models.status import (
    Condition,
    ConditionStatus,
    ConditionType,
    EndpointStatus,
    EngineStage,
    EngineStatus,
    Phase,
    RayClusterStatus,
    RayResourcesStatus,
    VLLMClusterStatus,
    engine_stage,
)
from rayvllm.observed import PodCounts, PodView
from rayvllm.reasons import Reason

__all__ = [
    "Observation",
    "PodCounts",
    "Problem",
    "Reason",
    "compute_status",
    "differs_only_in_messages",
    "staged",
    "unschedulable_problems",
]

# KubeRay v1.6.1 RayCluster condition types (ray-operator/apis/ray/v1/raycluster_types.go).
KUBERAY_HEAD_POD_READY = "HeadPodReady"
KUBERAY_REPLICA_FAILURE = "ReplicaFailure"


@dataclass(frozen=True)
class Problem:
    """Something only the cluster can judge, found while observing (a missing Secret, no node that fits a
    worker), or a spec that slipped past admission. `fatal` problems will not go away without a spec
    change and turn the phase to Failed."""

    reason: Reason
    message: str
    fatal: bool = False


@dataclass(frozen=True)
class Observation:
    """Everything compute_status needs. `spec` is None when the spec is invalid (then a fatal InvalidSpec
    problem says why); `ray_cluster` is the RayCluster object as observed (or None); `engines` come from
    the engine supervisor (empty until it has launched any)."""

    ref: ClusterRef
    spec: VLLMClusterSpec | None
    ray_cluster: Mapping[str, Any] | None
    pods: PodCounts | None = None
    engines: Sequence[EngineStatus] = ()
    problems: Sequence[Problem] = ()
    previous: VLLMClusterStatus | None = None
    dashboard_url: str | None = None
    ray_resources: RayResourcesStatus | None = None
    """Read this pass; None: not read (the cluster is not ready or its dashboard did not answer), and the
    status keeps what it showed last."""


# Condition.message and status.message are bounded by the schema; a message joined from many parts (one per
# unschedulable pod, say) must still fit, or the status could not be written at all.
MESSAGE_LIMIT = 32768
TRUNCATED = " ... (truncated)"


def bounded(message: str, limit: int = MESSAGE_LIMIT) -> str:
    return message if len(message) <= limit else message[: limit - len(TRUNCATED)] + TRUNCATED


# The message names at most this many engines that are not ready (the lowest indices), then how many more:
# a few lines whatever spec.replicas is.
ENGINES_NAMED = 3
_STAGE_WORDS = {
    EngineStage.SUBMITTED: "submitted",
    EngineStage.WAITING_FOR_RESOURCES: "waiting for resources",
    EngineStage.LOADING: "loading",
    EngineStage.READY: "ready",
    EngineStage.UNHEALTHY: "unhealthy",
    EngineStage.RESTARTING: "restarting",
    EngineStage.DRAINING: "draining",
    EngineStage.FAILED: "failed",
}


def staged(engine: EngineStatus, before: EngineStatus | None, now: datetime) -> EngineStatus:
    """The engine with its stage, and when that began: kept while the stage is the same, as its record or
    the stored status (`before`, the same index) has it, like a condition's lastTransitionTime; `now` when
    the stage changed, or neither says (a new engine, or a status written before stages)."""
    stage = engine_stage(engine)
    for known in (engine, before):
        if known is not None and known.stage == stage and known.stage_since is not None:
            return engine.model_copy(update={"stage": stage, "stage_since": known.stage_since})
    return engine.model_copy(update={"stage": stage, "stage_since": now})


def _clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S UTC")


def _progress(engine: EngineStatus) -> str:
    """e.g. `engine 1 loading since 12:03:10 UTC`; a restarting engine says when its backoff ends."""
    if engine.stage == EngineStage.RESTARTING and engine.restart_after is not None:
        return f"engine {engine.index} restarting at {_clock(engine.restart_after)}"
    words = _STAGE_WORDS[engine.stage or engine_stage(engine)]
    since = f" since {_clock(engine.stage_since)}" if engine.stage_since is not None else ""
    return f"engine {engine.index} {words}{since}"


def _engines_progress(engines: Sequence[EngineStatus]) -> str:
    waiting = [e for e in engines if not e.ready]
    named = [_progress(e) for e in waiting[:ENGINES_NAMED]]
    if len(waiting) > ENGINES_NAMED:
        named.append(f"{len(waiting) - ENGINES_NAMED} more not ready")
    return "; ".join(named)


@dataclass(frozen=True)
class _Verdict:
    status: ConditionStatus
    reason: Reason
    message: str

    @property
    def true(self) -> bool:
        return self.status == "True"


def _true(reason: Reason, message: str) -> _Verdict:
    return _Verdict("True", reason, message)


def _false(reason: Reason, message: str) -> _Verdict:
    return _Verdict("False", reason, message)


def _kuberay_condition(ray_cluster: Mapping[str, Any], condition_type: str) -> Mapping[str, Any] | None:
    conditions = (ray_cluster.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == condition_type), None)


def _ready_workers(observed: Observation) -> int:
    if observed.pods is not None:
        return observed.pods.ready_workers
    if observed.ray_cluster is None:
        return 0
    return int((observed.ray_cluster.get("status") or {}).get("readyWorkerReplicas") or 0)


def _ray_cluster_verdict(observed: Observation, spec: VLLMClusterSpec) -> _Verdict:
    cluster = observed.ray_cluster
    if cluster is None:
        return _false(Reason.RAY_CLUSTER_NOT_FOUND, f"RayCluster {observed.ref.name} does not exist yet")
    if spec.suspend:
        return _false(Reason.SUSPENDED, "spec.suspend is true: the Ray pods are removed")
    status = cluster.get("status") or {}
    if observed.pods is not None:
        if observed.pods.outdated:
            return _false(
                Reason.RAY_CLUSTER_UPDATING,
                f"{observed.pods.outdated} Ray pod(s) of an older spec are being replaced",
            )
    else:
        # Without the pods, KubeRay's counters are all there is; they are only as fresh as its
        # observedGeneration (which KubeRay does not update for a change that leaves its status unchanged).
        generation = (cluster.get("metadata") or {}).get("generation")
        seen = status.get("observedGeneration")
        if generation is not None and seen is not None and seen < generation:
            return _false(
                Reason.RAY_CLUSTER_UPDATING, "KubeRay has not yet processed the latest RayCluster spec"
            )
    failure = _kuberay_condition(cluster, KUBERAY_REPLICA_FAILURE)
    if failure is not None and failure.get("status") == "True":
        return _false(
            Reason.RAY_CLUSTER_REPLICA_FAILURE, str(failure.get("message") or "pod creation failed")
        )
    if observed.pods is not None:
        head_ready = observed.pods.head_ready
    else:
        head = _kuberay_condition(cluster, KUBERAY_HEAD_POD_READY)
        head_ready = head is not None and head.get("status") == "True"
    if not head_ready:
        return _false(Reason.HEAD_POD_NOT_READY, "the Ray head pod is not ready")
    desired, ready = spec.desired_workers, _ready_workers(observed)
    if ready < desired:
        return _false(Reason.WORKERS_NOT_READY, f"{ready}/{desired} GPU worker pods ready")
    return _true(Reason.RAY_CLUSTER_READY, f"head and {desired} GPU worker pods ready")


def _requested_engines(observed: Observation, spec: VLLMClusterSpec) -> list[EngineStatus]:
    """Engines the spec asks for now; entries past `replicas` are being stopped and do not count."""
    return sorted((e for e in observed.engines if e.index < spec.replicas), key=lambda e: e.index)


def _describe_failure(engine: EngineStatus) -> str:
    return (
        f"engine {engine.index}: {engine.last_failure}" if engine.last_failure else f"engine {engine.index}"
    )


def _serving_view(engines: list[EngineStatus], all_engines: Sequence[EngineStatus]) -> list[EngineStatus]:
    """The requested engines as clients see them: during a rolling upgrade, a replica whose new engine is
    not ready yet is served by its outgoing engine (rayvllm.engine.rollout), which stands in for it."""
    stand_ins = standing_in(all_engines)
    return [
        stand_ins[e.index].model_copy(update={"index": e.index, "outgoing": None})
        if e.index in stand_ins
        else e
        for e in engines
    ]


def _engines_verdict(spec: VLLMClusterSpec, engines: list[EngineStatus]) -> _Verdict:
    replicas = spec.replicas
    if spec.suspend:
        return _false(Reason.SUSPENDED, "spec.suspend is true: no engine runs")
    if replicas == 0:
        return _true(Reason.SCALED_TO_ZERO, "spec.replicas is 0: no engine is requested")
    exhausted = [e for e in engines if e.budget_exhausted]
    if exhausted:
        return _false(
            Reason.RESTART_BUDGET_EXHAUSTED,
            f"restartPolicy.maxRestarts ({spec.restart_policy.max_restarts}) spent by "
            + "; ".join(_describe_failure(e) for e in exhausted),
        )
    if not engines:
        return _false(Reason.ENGINE_NOT_LAUNCHED, "no engine has been launched yet")
    ready = sum(e.ready for e in engines)
    if ready == replicas:
        return _true(Reason.ALL_ENGINES_READY, f"{ready}/{replicas} engines ready")
    progress = _engines_progress(engines)
    return _false(
        Reason.ENGINES_NOT_READY, f"{ready}/{replicas} engines ready" + (f"; {progress}" if progress else "")
    )


def _degraded_verdict(
    observed: Observation, spec: VLLMClusterSpec, engines: list[EngineStatus], ray_cluster: _Verdict
) -> _Verdict:
    if observed.problems:
        first = observed.problems[0]
        return _true(first.reason, "; ".join(p.message for p in observed.problems))
    exhausted = [e for e in engines if e.budget_exhausted]
    if exhausted:
        return _true(Reason.RESTART_BUDGET_EXHAUSTED, "; ".join(_describe_failure(e) for e in exhausted))
    if ray_cluster.reason == Reason.RAY_CLUSTER_REPLICA_FAILURE:
        return _true(ray_cluster.reason, ray_cluster.message)
    restarting = [e for e in engines if not e.ready and e.restarts > 0]
    if restarting and not spec.suspend:
        return _true(
            Reason.ENGINE_RESTARTING,
            "restarting after failure: " + "; ".join(_describe_failure(e) for e in restarting),
        )
    return _false(Reason.AS_EXPECTED, "nothing is failing")


def _phase_and_ready(
    observed: Observation,
    spec: VLLMClusterSpec,
    ray_cluster: _Verdict,
    engines: _Verdict,
    degraded: _Verdict,
    serving: Sequence[EngineStatus],
) -> tuple[Phase, _Verdict]:
    """The phase, and the Ready verdict that explains it (its reason names the blocker). `serving`: the
    requested engines as clients see them (`_serving_view`)."""
    if spec.suspend:
        return Phase.SUSPENDED, _false(Reason.SUSPENDED, engines.message)
    fatal = [p for p in observed.problems if p.fatal]
    if fatal:
        return Phase.FAILED, _false(fatal[0].reason, "; ".join(p.message for p in fatal))
    if engines.reason == Reason.RESTART_BUDGET_EXHAUSTED:
        return Phase.FAILED, _false(engines.reason, engines.message)
    if engines.true and ray_cluster.true and not degraded.true:
        return Phase.READY, _true(engines.reason, engines.message)
    if any(e.ready for e in serving):
        # Some engines serve: a broken part is Degraded; a rollout still in progress is Launching.
        if degraded.true or not ray_cluster.true:
            blocker = degraded if degraded.true else ray_cluster
            return Phase.DEGRADED, _false(blocker.reason, blocker.message)
        return Phase.LAUNCHING, _false(engines.reason, engines.message)
    if observed.ray_cluster is None:
        blocker = degraded if degraded.true else ray_cluster
        return Phase.PENDING, _false(blocker.reason, blocker.message)
    if not ray_cluster.true:
        if degraded.true:
            # Blocked before anything ran is Pending; losing what ran before is Degraded.
            phase = Phase.DEGRADED if _requested_engines(observed, spec) else Phase.PENDING
            return phase, _false(degraded.reason, degraded.message)
        return Phase.PROVISIONING, _false(ray_cluster.reason, ray_cluster.message)
    if degraded.true:
        return Phase.DEGRADED, _false(degraded.reason, degraded.message)
    return Phase.LAUNCHING, _false(engines.reason, engines.message)


def _progressing_verdict(
    phase: Phase, ready: _Verdict, spec: VLLMClusterSpec, rollout: RolloutStep | None
) -> _Verdict:
    if rollout is not None and phase != Phase.FAILED:
        return _Verdict("True" if rollout.progressing else "False", rollout.reason, rollout.message)
    match phase:
        case Phase.READY if spec.rolling:
            return _false(Reason.ROLLOUT_COMPLETE, "every engine serves the current engine settings")
        case Phase.READY:
            return _false(Reason.RECONCILE_COMPLETE, "the spec is fully rolled out")
        case Phase.SUSPENDED | Phase.FAILED:
            return _false(ready.reason, ready.message)
        case Phase.DEGRADED:
            return _true(Reason.RECOVERING, ready.message)
        case _:
            return _true(Reason(phase.value), ready.message)


def _condition(
    condition_type: ConditionType, verdict: _Verdict, observed: Observation, now: datetime
) -> Condition:
    previous = observed.previous.condition(condition_type) if observed.previous else None
    since = previous.last_transition_time if previous and previous.status == verdict.status else now
    return Condition(
        type=condition_type,
        status=verdict.status,
        reason=verdict.reason,
        message=bounded(verdict.message),
        last_transition_time=since,
        observed_generation=observed.ref.generation,
    )


def _fatal_status(observed: Observation, fatal: Sequence[Problem], now: datetime) -> VLLMClusterStatus:
    """A spec that cannot run at all (it slipped past admission): Failed, and nothing else to judge."""
    blocker = _false(fatal[0].reason, "; ".join(p.message for p in fatal))
    verdicts = {
        ConditionType.READY: blocker,
        ConditionType.PROGRESSING: blocker,
        ConditionType.DEGRADED: _true(blocker.reason, blocker.message),
    }
    return VLLMClusterStatus(
        observed_generation=observed.ref.generation,
        phase=Phase.FAILED,
        message=bounded(blocker.message),
        conditions=[_condition(kind, verdict, observed, now) for kind, verdict in verdicts.items()],
        engines=sorted(observed.engines, key=lambda e: e.index),
    )


def _previous_ray(observed: Observation, field: str) -> Any:
    previous = observed.previous.ray_cluster if observed.previous else None
    return getattr(previous, field) if previous is not None else None


def compute_status(observed: Observation, now: datetime) -> VLLMClusterStatus:
    """The whole status for what was observed at `now` (timezone-aware; kept to whole seconds like
    metav1.Time)."""
    if now.tzinfo is None or now.utcoffset() != timedelta(0):
        raise ValueError("now must be a UTC-aware datetime")
    now = now.replace(microsecond=0)
    before = {e.index: e for e in observed.previous.engines} if observed.previous else {}
    observed = replace(
        observed,
        engines=[
            staged(e, before.get(e.index), now) for e in sorted(observed.engines, key=lambda e: e.index)
        ],
    )
    spec, name = observed.spec, observed.ref.name
    if spec is None:
        fatal = [p for p in observed.problems if p.fatal] or [
            Problem(Reason.INVALID_SPEC, "the spec cannot be read", fatal=True)
        ]
        return _fatal_status(observed, fatal, now)

    requested = _requested_engines(observed, spec)
    engines = _serving_view(requested, observed.engines)
    ray_cluster = _ray_cluster_verdict(observed, spec)
    engines_verdict = _engines_verdict(spec, engines)
    # What fails is judged on the engines themselves, not on their stand-ins.
    degraded = _degraded_verdict(observed, spec, requested, ray_cluster)
    phase, ready = _phase_and_ready(observed, spec, ray_cluster, engines_verdict, degraded, engines)
    config_hash = engine_config_hash(spec)
    pods_replaced = observed.pods is not None and observed.pods.outdated > 0
    rollout = rollout_step(spec, config_hash, observed.engines, pods_replaced=pods_replaced)
    progressing = _progressing_verdict(phase, ready, spec, rollout)

    verdicts = {
        ConditionType.READY: ready,
        ConditionType.RAY_CLUSTER_READY: ray_cluster,
        ConditionType.ENGINES_READY: engines_verdict,
        ConditionType.PROGRESSING: progressing,
        ConditionType.DEGRADED: degraded,
    }
    return VLLMClusterStatus(
        observed_generation=observed.ref.generation,
        phase=phase,
        message=bounded(ready.message),
        conditions=[_condition(kind, verdict, observed, now) for kind, verdict in verdicts.items()],
        replicas=spec.replicas,
        ready_replicas=sum(e.ready for e in engines),
        updated_replicas=sum(e.ready and e.config_hash == config_hash for e in requested),
        selector=selector_string(serving_selector(name)),
        ray_cluster=(
            RayClusterStatus(
                name=name,
                desired_workers=spec.desired_workers,
                ready_workers=_ready_workers(observed),
                dashboard_url=observed.dashboard_url or _previous_ray(observed, "dashboard_url"),
                resources=observed.ray_resources or _previous_ray(observed, "resources"),
            )
            if observed.ray_cluster is not None
            else None
        ),
        engines=sorted(observed.engines, key=lambda e: e.index),
        endpoint=EndpointStatus(service=name, url=service_url(spec, name, observed.ref.namespace)),
    )


def unschedulable_problems(pods: Sequence[PodView]) -> list[Problem]:
    """Pods the scheduler cannot place: only the cluster can say that no node fits a worker."""
    return [
        Problem(
            Reason.WORKER_UNSCHEDULABLE,
            f"pod {pod.name} ({pod.node_type or 'ray'}) cannot be scheduled: {pod.unschedulable}".strip(),
        )
        for pod in pods
        if pod.unschedulable is not None
    ]


def _without_messages(status: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in status.items() if k != "message"}
    out["conditions"] = [
        {k: v for k, v in c.items() if k != "message"} for c in status.get("conditions") or []
    ]
    return out


def differs_only_in_messages(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Two wire statuses that say the same thing (phase, every condition's status and reason, counts,
    engines) in other words: only `message` texts differ. A child that rewrites its error text on every
    retry (KubeRay's ReplicaFailure names a new pod each time) changes nothing else."""
    return new != old and _without_messages(new) == _without_messages(old)
