"""Orchestration of one VLLMCluster: gather -> build -> apply -> compute status. No kopf here: handlers
call `reconcile` / `finalize` and post the returned events. All I/O goes through k8s/ (and ray/)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from rayvllm.builders import (
    RAY_AUTH_TOKEN_KEY,
    SERVING_LABEL,
    build_ray_cluster,
    build_service,
    ray_auth_secret_name,
)
from rayvllm.builders.labels import SERVING, SPEC_HASH_ANNOTATION
from rayvllm.builders.raycluster import pod_spec_hash
from rayvllm.errors import InvalidSpecError, RayError, TransientError
from rayvllm.events import Event
from rayvllm.identity import ClusterRef
from rayvllm.k8s.resources import Kubernetes
from rayvllm.models.resource import parse_cluster, parse_previous_status
from rayvllm.models.spec import VLLMClusterSpec
from rayvllm.models.status import Condition, ConditionType, EngineStatus, Phase, VLLMClusterStatus
from rayvllm.ray import RayDashboardClient
from rayvllm.settings import Settings
from rayvllm.status import Observation, PodCounts, Problem, Reason, compute_status
from rayvllm.supervisor import EngineContext, Supervisor
from rayvllm.workers import plan_workers

RAY_CLUSTER_LABEL = "ray.io/cluster"
RAY_NODE_TYPE_LABEL = "ray.io/node-type"


@dataclass
class Outcome:
    status: dict[str, Any] | None
    """The whole new status, or None when it did not change (nothing to write)."""
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """The VLLMCluster being reconciled, as read from its body."""

    name: str
    namespace: str
    uid: str
    generation: int
    body: Mapping[str, Any]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Target:
        meta = body["metadata"]
        return cls(meta["name"], meta["namespace"], meta["uid"], int(meta.get("generation") or 0), body)

    @property
    def previous_status(self) -> Mapping[str, Any]:
        return self.body.get("status") or {}


async def reconcile(kube: Kubernetes, settings: Settings, body: Mapping[str, Any], now: datetime) -> Outcome:
    target = Target.of(body)
    previous = parse_previous_status(target.previous_status)
    try:
        spec = parse_cluster(body).spec
    except InvalidSpecError as invalid:
        # Admission rejects nearly everything; this catches what slipped past (an older CRD, a CEL gap).
        return _invalid_spec(target, previous, invalid, now)

    problems = await _secret_problems(kube, target.namespace, spec)
    pods = await kube.list_pods(target.namespace, f"{RAY_CLUSTER_LABEL}={target.name}")
    engines: list[EngineStatus] = list(previous.engines) if previous else []
    ray_cluster: Mapping[str, Any] | None
    counts: PodCounts | None = None
    if problems and await kube.get_raycluster(target.namespace, target.name) is None:
        # Children that cannot work are not created; the problem is reported and rechecked each resync.
        ray_cluster = None
    else:
        workers = plan_workers(spec, engines, _live_workers(pods))
        built = build_ray_cluster(spec, target.name, target.namespace, target.uid, workers)
        ray_cluster = await kube.apply_raycluster(built)
        await kube.apply_service(build_service(spec, target.name, target.namespace, target.uid))
        counts = _pod_counts(pods, pod_spec_hash(built["spec"]))

    problems += _pod_problems(pods)
    events: list[Event] = []
    if ray_cluster is not None:
        cluster_ready = (
            counts is not None and counts.head_ready and counts.ready_workers >= spec.desired_workers
        )
        ctx = EngineContext(
            ref=ClusterRef(target.namespace, target.name, target.uid, target.generation),
            spec=spec,
            settings=settings,
            now=now,
            api_key=await _api_key(kube, target.namespace, spec),
            pod_by_ip={
                ip: p["metadata"]["name"] for p in pods if (ip := (p.get("status") or {}).get("podIP"))
            },
        )
        ray = await _dashboard(kube, settings, target.namespace, target.name)
        engines, events, problem = await _supervise(ray, ctx, engines, cluster_ready and not spec.suspend)
        problems += [problem] if problem else []
        await label_serving_pods(kube, target.namespace, pods, engines, settings)
    observation = Observation(
        name=target.name,
        namespace=target.namespace,
        generation=target.generation,
        spec=spec,
        ray_cluster=ray_cluster,
        pods=counts,
        engines=engines,
        problems=problems,
        previous=previous,
    )
    outcome = _outcome(target, previous, compute_status(observation, now))
    outcome.events[:0] = events
    return outcome


def dashboard_url(settings: Settings, namespace: str, name: str) -> str:
    return settings.dashboard_url_template.format(cluster=name, namespace=namespace)


async def _dashboard(kube: Kubernetes, settings: Settings, namespace: str, name: str) -> RayDashboardClient:
    """The RayCluster's dashboard client: the address as mapped by settings, and the token KubeRay generated
    for it (None until KubeRay has written the Secret)."""
    token = await kube.read_secret_value(namespace, ray_auth_secret_name(name), RAY_AUTH_TOKEN_KEY)
    return RayDashboardClient(
        dashboard_url(settings, namespace, name), token=token, timeout=settings.http_timeout_seconds
    )


async def _supervise(
    ray: RayDashboardClient, ctx: EngineContext, previous: list[EngineStatus], cluster_ready: bool
) -> tuple[list[EngineStatus], list[Event], Problem | None]:
    """One supervision pass. An unreachable dashboard is only a problem once the RayCluster is ready (before,
    it is just still starting); engines then keep their record but cannot count as ready."""
    async with ray:
        try:
            healthy = await ray.gcs_healthy()
            result = await Supervisor(ray, ctx).run(previous, may_submit=cluster_ready and healthy)
        except RayError as unreachable:
            if ctx.spec.suspend:
                return [], [], None  # the Ray cluster is going away with its jobs
            stale = [e.model_copy(update={"ready": False}) for e in previous]
            problem = (
                Problem(Reason.RAY_DASHBOARD_UNREACHABLE, f"Ray dashboard {ray.base_url}: {unreachable}")
                if cluster_ready
                else None
            )
            return stale, [], problem
    return result.engines, result.events, None


async def _api_key(kube: Kubernetes, namespace: str, spec: VLLMClusterSpec) -> str | None:
    """The engines' API key, to probe /v1/models the way clients call it. Never logged or stored."""
    ref = spec.engine.api_key_secret_ref
    return await kube.read_secret_value(namespace, ref.name, ref.key) if ref else None


async def label_serving_pods(
    kube: Kubernetes,
    namespace: str,
    pods: Sequence[Mapping[str, Any]],
    engines: Sequence[EngineStatus],
    settings: Settings,
) -> None:
    """The Service routes to pods labelled serving: exactly those hosting a ready engine's API server."""
    serving = {e.pod_name for e in engines if e.ready and e.pod_name}
    for pod in pods:
        meta = pod.get("metadata") or {}
        labelled = (meta.get("labels") or {}).get(SERVING_LABEL) == SERVING
        wanted = meta.get("name") in serving
        if wanted != labelled:
            labels = {SERVING_LABEL: SERVING} if wanted else {}
            await kube.apply_pod_labels(namespace, meta["name"], labels, f"{settings.field_manager}-serving")


async def _secret_problems(kube: Kubernetes, namespace: str, spec: VLLMClusterSpec) -> list[Problem]:
    problems = []
    for field_path, ref in _secret_refs(spec):
        keys = await kube.secret_keys(namespace, ref.name)
        if keys is None:
            problems.append(
                Problem(
                    Reason.SECRET_NOT_FOUND,
                    f"{field_path}: Secret {namespace}/{ref.name} does not exist: create it, or fix the reference",
                )
            )
        elif ref.key not in keys:
            problems.append(
                Problem(
                    Reason.SECRET_NOT_FOUND,
                    f"{field_path}: Secret {namespace}/{ref.name} has no key {ref.key!r} "
                    f"(it has: {', '.join(sorted(keys)) or 'none'})",
                )
            )
    return problems


def _secret_refs(spec: VLLMClusterSpec) -> Sequence[tuple[str, Any]]:
    refs: list[tuple[str, Any]] = []
    if spec.model.hf_token_secret_ref:
        refs.append(("spec.model.hfTokenSecretRef", spec.model.hf_token_secret_ref))
    if spec.engine.api_key_secret_ref:
        refs.append(("spec.engine.apiKeySecretRef", spec.engine.api_key_secret_ref))
    gcs = spec.ray.gcs_fault_tolerance
    if gcs is not None and gcs.redis_password_secret_ref is not None:
        refs.append(("spec.ray.gcsFaultTolerance.redisPasswordSecretRef", gcs.redis_password_secret_ref))
    return refs


def _is_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or _deleting(pod):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _deleting(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _node_type(pod: Mapping[str, Any]) -> str:
    return str(((pod.get("metadata") or {}).get("labels") or {}).get(RAY_NODE_TYPE_LABEL, ""))


def _live_workers(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    return [p["metadata"]["name"] for p in pods if _node_type(p) == "worker" and not _deleting(p)]


def _pod_counts(pods: Sequence[Mapping[str, Any]], spec_hash: str) -> PodCounts:
    """Readiness of the pods made from the current spec; the others are being replaced."""

    def current(pod: Mapping[str, Any]) -> bool:
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        return annotations.get(SPEC_HASH_ANNOTATION) == spec_hash

    live = [p for p in pods if not _deleting(p)]
    return PodCounts(
        head_ready=any(_node_type(p) == "head" and _is_ready(p) and current(p) for p in pods),
        ready_workers=sum(_node_type(p) == "worker" and _is_ready(p) and current(p) for p in pods),
        outdated=sum(not current(p) for p in live),
    )


def _pod_problems(pods: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """Pods the scheduler cannot place: only the cluster can say that no node fits a worker."""
    problems = []
    for pod in pods:
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"
            ):
                problems.append(
                    Problem(
                        Reason.WORKER_UNSCHEDULABLE,
                        f"pod {pod['metadata']['name']} ({_node_type(pod) or 'ray'}) cannot be scheduled: "
                        f"{condition.get('message', '')}".strip(),
                    )
                )
    return problems


def _invalid_spec(
    target: Target, previous: VLLMClusterStatus | None, invalid: InvalidSpecError, now: datetime
) -> Outcome:
    def condition(condition_type: ConditionType, state: Literal["True", "False"]) -> Condition:
        old = previous.condition(condition_type) if previous else None
        return Condition(
            type=condition_type,
            status=state,
            reason="InvalidSpec",
            message=str(invalid),
            last_transition_time=old.last_transition_time
            if old and old.status == state
            else now.replace(microsecond=0),
            observed_generation=target.generation,
        )

    status = VLLMClusterStatus(
        observed_generation=target.generation,
        phase=Phase.FAILED,
        message=str(invalid),
        conditions=[condition(ConditionType.READY, "False"), condition(ConditionType.DEGRADED, "True")],
    )
    return _outcome(target, previous, status)


def _outcome(target: Target, previous: VLLMClusterStatus | None, status: VLLMClusterStatus) -> Outcome:
    new = status.to_wire()
    old = {k: v for k, v in target.previous_status.items() if k != "kopf"}
    return Outcome(status=None if new == old else new, events=transition_events(previous, status))


def transition_events(previous: VLLMClusterStatus | None, current: VLLMClusterStatus) -> list[Event]:
    """One Event per change worth telling a human: a new phase, and each new reason of a failing
    condition. Unchanged state posts nothing, so a resync loop never spams."""
    events: list[Event] = []
    old_phase = previous.phase if previous else None
    if current.phase is not None and current.phase != old_phase:
        bad = current.phase in (Phase.DEGRADED, Phase.FAILED)
        events.append(Event("Warning" if bad else "Normal", current.phase.value, current.message or ""))
    degraded = current.condition(ConditionType.DEGRADED)
    if degraded is not None and degraded.status == "True":
        before = previous.condition(ConditionType.DEGRADED) if previous else None
        if before is None or before.status != "True" or before.reason != degraded.reason:
            events.append(Event("Warning", degraded.reason, degraded.message))
    return events


async def finalize(kube: Kubernetes, settings: Settings, body: Mapping[str, Any]) -> Outcome:
    """Clean-up that garbage collection cannot do, before the finalizer goes: stop every engine's Ray job
    (a job is not a Kubernetes object; with GCS fault tolerance or an external Ray it outlives the pods).
    Owned children (RayCluster, Service) then follow their owner through the garbage collector."""
    target = Target.of(body)
    previous = parse_previous_status(target.previous_status)
    engines = list(previous.engines) if previous else []
    events = [Event("Normal", "Deleting", f"VLLMCluster {target.namespace}/{target.name} is being deleted")]
    if await kube.get_raycluster(target.namespace, target.name) is None and not engines:
        return Outcome(status=None, events=events)
    try:
        spec = parse_cluster(body).spec
    except InvalidSpecError:
        return Outcome(status=None, events=events)  # never launched anything
    ref = ClusterRef(target.namespace, target.name, target.uid, target.generation)
    ctx = EngineContext(ref, spec, settings, datetime.now(UTC))
    async with await _dashboard(kube, settings, target.namespace, target.name) as ray:
        try:
            running = await Supervisor(ray, ctx).stop_all(engines)
        except RayError as unreachable:
            # The Ray cluster is gone or going (its pods are being deleted): its jobs go with it.
            events.append(
                Event(
                    "Normal",
                    "EnginesNotStopped",
                    f"Ray dashboard unreachable, jobs end with the cluster: {unreachable}",
                )
            )
            return Outcome(status=None, events=events)
    if running:
        # Ray stops a job with SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S: look again shortly.
        raise TransientError(f"waiting for {running} engine job(s) to stop", retry_after=2.0)
    events.append(Event("Normal", "EnginesStopped", "every engine job is stopped"))
    return Outcome(status=None, events=events)
