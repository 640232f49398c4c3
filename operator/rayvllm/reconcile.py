"""One pass over a VLLMCluster, as named steps run in order (after KubeRay's reconcileFuncs):

    validate -> secrets -> RayCluster -> Service -> engines -> serving labels -> autoscale -> status

The world comes from the watches (handlers pass what kopf's indexes hold as `Children`); a step writes only
when what it would write differs from what it observed, so a pass over a settled object sends the API server
nothing. No kopf here: handlers call `reconcile` / `finalize` and post the returned events. All Kubernetes
I/O goes through k8s/, all Ray I/O through ray/, engine probes through engine.health.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar, cast

from rayvllm.autoscale import (
    Sampled,
    ScaleDecision,
    Signals,
    Windows,
    averaged_loads,
    bring_within_bounds,
    decide_scale,
    signals_of,
)
from rayvllm.builders import RAY_AUTH_TOKEN_KEY, build_ray_cluster, build_service, ray_auth_secret_name
from rayvllm.builders.labels import SERVING, SERVING_LABEL
from rayvllm.builders.raycluster import pod_spec_hash, scrape_annotations
from rayvllm.drift import needs_apply
from rayvllm.engine.decide import answered_late
from rayvllm.engine.health import EngineProber
from rayvllm.engine.probe import LoadSample
from rayvllm.errors import (
    InvalidSpecError,
    KubernetesRejectedError,
    RayAuthError,
    RayError,
    RayvllmError,
    TransientError,
)
from rayvllm.events import Event
from rayvllm.identity import ClusterRef
from rayvllm.k8s.resources import Kubernetes
from rayvllm.models.resource import parse_cluster, parse_previous_status
from rayvllm.models.spec import VLLMClusterSpec
from rayvllm.models.status import ConditionType, EngineStatus, Phase, RayResourcesStatus, VLLMClusterStatus
from rayvllm.observed import (
    PodCounts,
    PodView,
    count_pods,
    head_identity,
    live_workers,
    newer,
    resource_version,
    unplaced_workers,
)
from rayvllm.plans import (
    BACKOFF_LIMIT,
    Missing,
    after_look,
    backoff_resyncs,
    deletion_overdue,
    left_behind,
    look_due,
    next_look_in,
    secret_problems,
    secret_uses,
    secret_values,
    serving_changes,
)
from rayvllm.ray import Dashboards, RayDashboardClient
from rayvllm.ray_auth import AuthObservation, AuthState, auth_mode_of, decide_ray_auth
from rayvllm.reasons import EventReason, Reason
from rayvllm.settings import Settings
from rayvllm.status import (
    Observation,
    Problem,
    compute_status,
    differs_only_in_messages,
    unschedulable_problems,
)
from rayvllm.supervisor import EngineContext, Slots, Supervisor
from rayvllm.usage import summarize
from rayvllm.workers import plan_workers

T = TypeVar("T")
log = logging.getLogger(__name__)
# How long our own write may be missing from the watch before the watch is believed again.
WATCH_LAG_SECONDS = 10.0


@dataclass(frozen=True)
class Children:
    """A VLLMCluster's children as its watches last saw them."""

    ray_cluster: Mapping[str, Any] | None = None
    service: Mapping[str, Any] | None = None
    pods: tuple[PodView, ...] = ()


@dataclass
class Memory:
    """What the passes over one VLLMCluster keep between them, in the operator's memory only."""

    written: dict[str, tuple[Mapping[str, Any], datetime]] = field(default_factory=dict)
    """Children as our last apply returned them, and when: newer than the watch until its event arrives."""
    ray_token: str | None = None
    ray_token_of: str | None = None
    """uid of the RayCluster the cached dashboard token belongs to (KubeRay makes one per cluster)."""
    ray_auth_verified_for: Hashable | None = None
    """The RayCluster (uid) and Ray head (pod, restarts) whose dashboard was last seen to enforce token auth:
    a new head is checked again before anything is submitted to it (see _ray_auth_enforced)."""
    dashboard_failures: int = 0
    """Passes in a row that found a ready RayCluster's dashboard unreachable: the next look backs off."""
    missing_secrets: dict[str, Missing] = field(default_factory=dict)
    """Secrets the last look did not find, by name (looked for again with backoff)."""
    derived: dict[str, tuple[Hashable, Any]] = field(default_factory=dict)
    """Results of pure computations by their inputs: a settled object's pass recomputes nothing."""
    status_written_at: datetime | None = None
    """When this operator last wrote the object's status."""
    load_samples: dict[int, Sampled] = field(default_factory=dict)
    """Each ready engine's last load read, and when: the autoscaler averages over the time since."""
    own_slots: asyncio.Semaphore | None = None
    """This object's share of the operator's Ray and engine calls (settings.probe_concurrency_per_cluster),
    made at its first pass: see supervisor.Slots."""
    scale_windows: Windows = field(default_factory=Windows)
    """The autoscaler's open window. In memory only: after an operator restart a window starts again, which
    only delays a step (never adds one), and keeping it in status would cost a write at every threshold
    crossing of a load that hovers around the target."""

    def derive(self, name: str, key: Hashable, compute: Callable[[], T]) -> T:
        """`compute()`, or its last result if `key` (everything it depends on) is unchanged."""
        cached = self.derived.get(name)
        if cached is not None and cached[0] == key:
            return cast(T, cached[1])
        value = compute()
        self.derived[name] = (key, value)
        return value


@dataclass(frozen=True)
class Clients:
    """The operator's connections, made once at start-up."""

    kube: Kubernetes
    dashboards: Dashboards
    prober: EngineProber
    limiter: asyncio.Semaphore
    """Every object's Ray and engine calls in flight (settings.probe_concurrency); each object takes its places
    through its own Slots (see _slots)."""


@dataclass
class Outcome:
    status: dict[str, Any] | None
    """The whole new status if it changed (and was written), else None."""
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    """Look again this soon (an engine is starting, restarting or draining); None: at the next resync."""
    writes: int = 0


@dataclass
class Pass:
    """The state of one pass, filled in by the steps."""

    ref: ClusterRef
    body: Mapping[str, Any]
    settings: Settings
    now: datetime
    children: Children
    memory: Memory
    previous: VLLMClusterStatus | None
    spec: VLLMClusterSpec | None = None
    problems: list[Problem] = field(default_factory=list)
    secrets: dict[str, Mapping[str, str] | None] = field(default_factory=dict)
    ray_cluster: Mapping[str, Any] | None = None
    pods: PodCounts | None = None
    engines: list[EngineStatus] = field(default_factory=list)
    dashboard_url: str | None = None
    ray_resources: RayResourcesStatus | None = None
    """Read this pass (None: not read; status keeps what it last showed)."""
    loads: dict[int, LoadSample | None] | None = None
    """The ready engines' load, as supervision read it (None: the engines were not observed)."""
    outcome: Outcome = field(default_factory=lambda: Outcome(status=None))
    done: bool = False
    """Set by a step after which only the status step runs (an invalid spec)."""


Step = Callable[[Pass, Clients], Awaitable[None]]


async def validate(p: Pass, _: Clients) -> None:
    """Admission rejects nearly everything; this catches what slipped past (an older CRD, a CEL gap). The
    spec changes only with metadata.generation, so it is parsed once per generation."""

    def parse() -> VLLMClusterSpec | InvalidSpecError:
        try:
            return parse_cluster(p.body).spec
        except InvalidSpecError as invalid:
            return invalid

    parsed = p.memory.derive("spec", (p.ref.uid, p.ref.generation), parse)
    if isinstance(parsed, InvalidSpecError):
        p.problems.append(Problem(Reason.INVALID_SPEC, str(parsed), fatal=True))
        p.done = True
    else:
        p.spec = parsed


async def bound_replicas(p: Pass, io: Clients) -> None:
    """With spec.autoscaling, a spec.replicas outside its bounds is brought back before anything is sized
    from it: a `kubectl scale --replicas=50` must not ask KubeRay for 50 worker pods for one pass. The rest
    of this pass runs with the bounded value (the write wakes the next pass with it anyway)."""
    spec = p.spec
    assert spec is not None
    if spec.autoscaling is None or spec.suspend:
        return
    decision = bring_within_bounds(spec.autoscaling, spec.replicas)
    if decision is None or decision.replicas is None:
        return
    if not await _write_replicas(p, io, spec.replicas, decision):
        # Nothing of this pass is done yet: run it again shortly, from what they wrote.
        raise TransientError("spec.replicas changed under the autoscaler", retry_after=1.0)
    p.spec = spec.model_copy(update={"replicas": decision.replicas})
    p.memory.scale_windows = decision.windows


async def _write_replicas(p: Pass, io: Clients, expected: int, decision: ScaleDecision) -> bool:
    """Writes the decision's spec.replicas (only if it is still `expected`) and posts its Event; False when
    refused (someone changed spec.replicas since this pass read it): the decision is dropped, and the next
    pass decides again from what they wrote."""
    assert decision.replicas is not None and decision.event is not None
    refused = await io.kube.set_replicas(p.ref.namespace, p.ref.name, expected, decision.replicas)
    if refused is not None:
        log.info("%s: autoscaling did not write spec.replicas: %s", p.ref, refused)
        return False
    p.outcome.writes += 1
    p.outcome.events.append(decision.event)
    return True


async def read_secrets(p: Pass, io: Clients) -> None:
    """One GET of each Secret the spec references (no list or watch: least-privilege RBAC). A missing one
    is looked for again with backoff (passes run about once a resync while nothing else happens), so it is
    found within BACKOFF_LIMIT resyncs of being created, sooner when the spec or a child changes."""
    assert p.spec is not None
    uses = secret_uses(p.spec)
    names = sorted({use.ref.name for use in uses})
    missing = p.memory.missing_secrets
    for gone in set(missing) - set(names):
        del missing[gone]
    resync, jitter = p.settings.resync_seconds, p.settings.resync_jitter
    for name in names:
        before = missing.pop(name, None)
        if before is not None and not look_due(before, p.now, resync, jitter):
            missing[name] = before
            p.secrets[name] = None
            continue
        p.secrets[name] = await io.kube.read_secret(p.ref.namespace, name)
        after = after_look(before, found=p.secrets[name] is not None, now=p.now)
        if after is not None:
            missing[name] = after
    p.problems += secret_problems(p.ref.namespace, uses, p.secrets)


async def apply_ray_cluster(p: Pass, io: Clients) -> None:
    assert p.spec is not None
    observed = _observed_child(p, "RayCluster", p.children.ray_cluster)
    if observed is not None and observed.get("metadata", {}).get("deletionTimestamp"):
        observed = None  # being deleted (e.g. by hand): GC finishes it, the watch tells us, we recreate
    if p.problems and observed is None:
        # Children that cannot work are not created. Nothing exists to supervise, so the next pass is due
        # when a missing Secret is next looked for (a spec edit or a child's event wakes it sooner); the
        # other problems are rechecked then too.
        wait = next_look_in(p.memory.missing_secrets.values(), p.now, p.settings.resync_seconds)
        if wait is not None and wait > p.settings.resync_seconds:
            p.outcome.requeue_after = wait
        return
    spec, pods = p.spec, p.children.pods
    workers = plan_workers(spec, p.engines, live_workers(pods), unplaced_workers(pods))
    desired_key = (p.ref.uid, p.ref.generation, workers)
    built, spec_hash = p.memory.derive(
        "RayCluster",
        desired_key,
        lambda: _with_hash(build_ray_cluster(spec, p.ref.name, p.ref.namespace, p.ref.uid, workers)),
    )
    if _needs_apply(p, "RayCluster", desired_key, built, observed):
        applied = await _apply_or_refused(
            p, "RayCluster", desired_key, lambda: io.kube.apply_raycluster(built)
        )
        if applied is None:
            return
        observed = applied
        p.memory.written["RayCluster"] = (observed, p.now)
        p.outcome.writes += 1
    p.ray_cluster = observed
    p.pods = count_pods(pods, spec_hash)
    p.problems += unschedulable_problems(pods)


async def apply_service(p: Pass, io: Clients) -> None:
    assert p.spec is not None
    if p.ray_cluster is None:
        return
    spec = p.spec
    observed = _observed_child(p, "Service", p.children.service)
    desired_key = (p.ref.uid, p.ref.generation)
    built = p.memory.derive(
        "Service", desired_key, lambda: build_service(spec, p.ref.name, p.ref.namespace, p.ref.uid)
    )
    if _needs_apply(p, "Service", desired_key, built, observed):
        applied = await _apply_or_refused(p, "Service", desired_key, lambda: io.kube.apply_service(built))
        if applied is None:
            return
        p.memory.written["Service"] = (applied, p.now)
        p.outcome.writes += 1


async def _apply_or_refused(
    p: Pass, kind: str, desired_key: Hashable, send: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any] | None:
    """The applied child, or None when the API server refused it as invalid: a spec admission let through
    makes a child that cannot be stored. That is said in status (a fatal problem, so the phase is Failed)
    instead of only in the log, and the same child is not sent again until the spec changes."""
    refused = p.memory.derived.get(f"{kind}-refused")
    if refused is not None and refused[0] == desired_key:
        p.problems.append(refused[1])
        p.done = True
        return None
    try:
        return await send()
    except KubernetesRejectedError as error:
        if error.status not in (400, 422):
            raise
        problem = Problem(
            Reason.CHILD_REJECTED, f"the API server refused the {kind} this spec makes: {error}", fatal=True
        )
        p.memory.derived[f"{kind}-refused"] = (desired_key, problem)
        p.problems.append(problem)
        p.done = True
        return None


def _with_hash(built: dict[str, Any]) -> tuple[dict[str, Any], str]:
    return built, pod_spec_hash(built["spec"])


def _needs_apply(
    p: Pass, kind: str, desired_key: Hashable, built: Mapping[str, Any], observed: Mapping[str, Any] | None
) -> bool:
    """needs_apply, compared again only when the desired object or the observed copy changed."""
    key = (desired_key, None if observed is None else resource_version(observed))
    return p.memory.derive(f"{kind}-drift", key, lambda: needs_apply(built, observed))


def _observed_child(p: Pass, kind: str, indexed: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The child as the watch has it, unless our own write is newer and its event is still on the way. Once
    the watch has caught up (or the write is old), the watch alone speaks: a child missing from it then
    was deleted."""
    written, at = p.memory.written.get(kind, (None, p.now))
    if written is None:
        return indexed
    caught_up = indexed is not None and resource_version(indexed) >= resource_version(written)
    if caught_up or (p.now - at).total_seconds() > WATCH_LAG_SECONDS:
        del p.memory.written[kind]
        return indexed
    return newer(indexed, written)


async def supervise_engines(p: Pass, io: Clients) -> None:
    """One supervision pass. An unreachable dashboard is only a problem once the RayCluster is ready
    (before, it is just still starting); engines then keep their record but cannot count as ready."""
    spec = p.spec
    assert spec is not None
    if p.ray_cluster is None:
        return
    cluster_ready = p.pods is not None and p.pods.head_ready and p.pods.ready_workers >= spec.desired_workers
    if not cluster_ready and not p.engines:
        # Nothing runs yet and nothing may start: no need to ask Ray, nor to look again each resync, as the
        # pods' watch wakes the loop when one becomes ready or is placed (an unschedulable worker waits for
        # a node). The look after BACKOFF_LIMIT resyncs is a safety net for a lost watch event.
        p.outcome.requeue_after = p.settings.resync_seconds * BACKOFF_LIMIT
        return
    api_key_ref = spec.engine.api_key_secret_ref
    ctx = EngineContext(
        ref=p.ref,
        spec=spec,
        settings=p.settings,
        now=p.now,
        api_key=(p.secrets.get(api_key_ref.name) or {}).get(api_key_ref.key) if api_key_ref else None,
        pod_by_ip={pod.ip: pod.name for pod in p.children.pods if pod.ip},
        secrets=secret_values(secret_uses(spec), p.secrets),
        pods_replaced=p.pods is not None and p.pods.outdated > 0,
        worker_unschedulable=bool(unplaced_workers(p.children.pods)),
    )
    ray = await _dashboard(p, io)
    p.dashboard_url = ray.base_url
    slots = _slots(p, io)
    try:
        async with slots:
            healthy = await ray.gcs_healthy()
        if not spec.suspend and not await _ray_auth_enforced(p, ray, slots):
            # Fail closed: the dashboard is not asked for anything else (nothing submitted, stopped or
            # restarted) until it refuses strangers; engines that serve are asked themselves, as when it is
            # unreachable. A suspended object submits nothing anyway and only stops its engines.
            p.memory.dashboard_failures = 0
            unsupervised = Supervisor(ray, ctx, limiter=slots, prober=io.prober)
            p.engines = await unsupervised.probe_without_ray(p.engines)
            if any(answered_late(e) for e in p.engines):
                p.outcome.requeue_after = p.settings.starting_probe_seconds
            return
        result = await Supervisor(ray, ctx, limiter=slots, prober=io.prober).run(
            p.engines, may_submit=cluster_ready and healthy and not spec.suspend
        )
    except RayAuthError:
        p.memory.ray_token_of = None  # KubeRay may have made a new token: read it again next pass
        raise
    except RayError as unreachable:
        if spec.suspend:
            p.engines = []  # the Ray cluster is going away with its jobs
            return
        # Engines that have served are asked themselves: a dashboard fault alone takes none out of the
        # Service (nor restarts one).
        p.engines = await Supervisor(ray, ctx, limiter=slots, prober=io.prober).probe_without_ray(p.engines)
        if any(answered_late(e) for e in p.engines):
            p.outcome.requeue_after = p.settings.starting_probe_seconds
        if cluster_ready:
            p.problems.append(
                Problem(Reason.RAY_DASHBOARD_UNREACHABLE, f"Ray dashboard {ray.base_url}: {unreachable}")
            )
            # Asking a dashboard that does not answer every resync helps nobody: back off, up to
            # BACKOFF_LIMIT resyncs (a change of its pods still wakes the loop at once), unless engines
            # serve: their own probes keep the normal cadence.
            p.memory.dashboard_failures += 1
            backoff = backoff_resyncs(p.memory.dashboard_failures)
            serving = any(e.ready for e in p.engines)
            wait = p.settings.resync_seconds * (1 if serving else backoff)
            p.outcome.requeue_after = min(wait, p.outcome.requeue_after or wait)
        return
    finally:
        await ray.aclose()
    p.memory.dashboard_failures = 0
    if result.foreign_addresses:
        where = ", ".join(
            f"engine {index} at {host}" for index, host in sorted(result.foreign_addresses.items())
        )
        p.problems.append(
            Problem(
                Reason.ENGINE_ADDRESS_NOT_OWN_POD,
                f"Ray dashboard {ray.base_url} reports {where}, none of this VLLMCluster's pods: not probed",
            )
        )
    p.ray_resources = None if result.resources is None else summarize(result.resources)
    p.engines = result.engines
    p.loads = result.loads
    p.outcome.events += result.events
    p.outcome.requeue_after = result.requeue_after


async def _ray_auth_enforced(p: Pass, ray: RayDashboardClient, slots: Slots) -> bool:
    """True once this Ray head's dashboard was seen to refuse a request without the token and to answer it
    with the token (rayvllm.ray_auth decides): asked once per head, so again after the head pod is replaced
    or restarts (a new Ray cluster, maybe from a new image), and on every pass until it holds. False while
    the head is not ready (it cannot be asked yet; nothing is reported), and when it does not hold: then a
    fatal RayAuthNotEnforced problem, first, so that the Warning Event posted for it names what to upgrade.
    A token the dashboard refuses raises RayAuthError (the caller reads the token again)."""
    head = ((p.ray_cluster or {}).get("metadata") or {}).get("uid"), head_identity(p.children.pods)
    if p.memory.ray_auth_verified_for == head:
        return True
    p.memory.ray_auth_verified_for = None
    if p.pods is None or not p.pods.head_ready:
        return False
    async with slots:
        anonymous = await ray.version(with_token=False)
    authenticated = None
    if anonymous.refused and p.memory.ray_token:
        async with slots:
            authenticated = await ray.version(with_token=True)
    verdict = decide_ray_auth(
        AuthObservation(
            ray_cluster=p.ref.name,
            token_secret=f"{p.ref.namespace}/{ray_auth_secret_name(p.ref.name)}",
            auth_mode=auth_mode_of(p.ray_cluster),
            has_token=bool(p.memory.ray_token),
            anonymous=anonymous,
            authenticated=authenticated,
        )
    )
    if verdict.state is AuthState.TOKEN_REFUSED:
        raise RayAuthError(verdict.message)
    if not verdict.enforced:
        log.warning("%s: %s", p.ref, verdict.message)
        p.problems.insert(0, Problem(Reason.RAY_AUTH_NOT_ENFORCED, verdict.message, fatal=True))
        return False
    session = authenticated.session_name if authenticated else None
    log.info("%s: %s (Ray session %s)", p.ref, verdict.message, session)
    p.memory.ray_auth_verified_for = head
    p.outcome.events.append(Event("Normal", EventReason.RAY_AUTH_VERIFIED, verdict.message))
    return True


async def apply_serving_labels(p: Pass, io: Clients) -> None:
    assert p.spec is not None
    manager = f"{p.settings.field_manager}-serving"
    p.outcome.writes += await label_serving_pods(
        io.kube, p.ref.namespace, p.children.pods, p.engines, manager, scrape_annotations(p.spec)
    )


async def label_serving_pods(
    kube: Kubernetes,
    namespace: str,
    pods: Sequence[PodView],
    engines: Sequence[EngineStatus],
    manager: str,
    annotations: dict[str, str],
) -> int:
    """The Service routes to pods labelled serving: exactly those hosting a ready engine's API server. The
    same write gives them `annotations` (Prometheus' scrape annotations) and takes both away again, so
    they cost no write of their own. Returns how many pods were written."""
    changes = serving_changes(pods, engines)
    for pod, wanted in sorted(changes.items()):
        labels, kept = ({SERVING_LABEL: SERVING}, annotations) if wanted else ({}, {})
        await kube.apply_pod_metadata(namespace, pod, labels, kept, manager)
        # Why a pod left the Service is otherwise lost once the engine is back (a missed probe, a canary).
        there = [f"engine {e.index} health {e.health}" for e in engines if e.pod_name == pod]
        move = "joins" if wanted else "leaves"
        log.info("pod %s/%s %s the Service (%s)", namespace, pod, move, ", ".join(there) or "no engine")
    return len(changes)


async def autoscale(p: Pass, io: Clients) -> None:
    """With spec.autoscaling, the operator owns spec.replicas: autoscale.decide_scale says when to move it one
    step, and only then is it written (a patch that holds only if spec.replicas is still what was decided
    on). The RayCluster's workers and the engines follow in the next pass, as for any change of replicas
    (the write bumps metadata.generation, which wakes the loop)."""
    spec = p.spec
    assert spec is not None
    if spec.autoscaling is None or spec.suspend:
        p.memory.scale_windows = Windows()
        p.memory.load_samples = {}
        return
    if p.loads is None:
        signals = Signals((), settling="the engines were not observed this pass")
    else:
        loads, p.memory.load_samples = averaged_loads(p.loads, p.memory.load_samples, p.now)
        signals = signals_of(p.engines, loads, spec.replicas)
    decision = decide_scale(spec.autoscaling, spec.replicas, signals, p.memory.scale_windows, p.now)
    p.memory.scale_windows = decision.windows
    wait = decision.look_again_after
    if wait is not None and wait < p.settings.resync_seconds:
        # A window ending before the next resync is looked at when it ends, not up to a resync later.
        p.outcome.requeue_after = min(wait, p.outcome.requeue_after or wait)
    if decision.replicas is None:
        log.debug("%s: autoscaling holds: %s", p.ref, decision.detail)
        return
    await _write_replicas(p, io, spec.replicas, decision)


async def write_status(p: Pass, io: Clients) -> None:
    """The status is computed whole and written only when it differs from the stored one. When nothing it
    depends on changed since the last pass (the stored status included), it stands as it is."""
    inputs = (
        resource_version(p.body),
        p.ref.generation,
        None if p.ray_cluster is None else resource_version(p.ray_cluster),
        p.pods,
        tuple(p.problems),
        tuple(e.model_dump_json() for e in p.engines),
        p.dashboard_url,
        None if p.ray_resources is None else p.ray_resources.model_dump_json(),
    )
    last = p.memory.derived.get("status")
    if last is not None and last[0] == inputs:
        return
    observation = Observation(
        ref=p.ref,
        spec=p.spec,
        ray_cluster=p.ray_cluster,
        pods=p.pods,
        engines=p.engines,
        problems=p.problems,
        previous=p.previous,
        dashboard_url=p.dashboard_url,
        ray_resources=p.ray_resources,
    )
    status = compute_status(observation, p.now)
    new = status.to_wire()
    old = {k: v for k, v in (p.body.get("status") or {}).items() if k != "kopf"}
    p.outcome.events[:0] = transition_events(p.previous, status)
    if new != old:
        written_at = p.memory.status_written_at
        since = None if written_at is None else (p.now - written_at).total_seconds()
        if differs_only_in_messages(new, old) and since is not None and since < p.settings.resync_seconds:
            # The same verdict in new words (a child rewriting its error text on each retry): at most one
            # such write per resync, or a flapping child costs a status write per flap. Looked at again
            # by the end of the resync; the next pass writes whatever the words are then.
            wait = p.settings.resync_seconds - since
            p.outcome.requeue_after = min(wait, p.outcome.requeue_after or wait)
            return
        await io.kube.replace_status(p.ref.namespace, p.ref.name, new)
        p.memory.status_written_at = p.now
        p.outcome.status = new
        p.outcome.writes += 1
    p.memory.derived["status"] = (inputs, None)  # only once it is stored: a failed write is tried again


STEPS: tuple[Step, ...] = (
    validate,
    bound_replicas,
    read_secrets,
    apply_ray_cluster,
    apply_service,
    supervise_engines,
    apply_serving_labels,
    autoscale,
    write_status,
)


async def reconcile(
    io: Clients,
    settings: Settings,
    body: Mapping[str, Any],
    children: Children,
    memory: Memory,
    now: datetime,
) -> Outcome:
    previous = memory.derive(
        "previous-status", resource_version(body), lambda: parse_previous_status(body.get("status"))
    )
    p = Pass(
        ref=ClusterRef.of(body),
        body=body,
        settings=settings,
        now=now,
        children=children,
        memory=memory,
        previous=previous,
        engines=list(previous.engines) if previous else [],
    )
    for step in STEPS:
        if not p.done or step is write_status:
            await step(p, io)
    return p.outcome


def _slots(p: Pass, io: Clients) -> Slots:
    if p.memory.own_slots is None:
        p.memory.own_slots = asyncio.Semaphore(p.settings.probe_concurrency_per_cluster)
    return Slots(io.limiter, p.memory.own_slots)


def dashboard_url(settings: Settings, namespace: str, name: str) -> str:
    return settings.dashboard_url_template.format(cluster=name, namespace=namespace)


async def _dashboard(p: Pass, io: Clients) -> RayDashboardClient:
    """The RayCluster's dashboard client: the address as mapped by settings, and the token KubeRay generated
    for it (read once per RayCluster; None until KubeRay has written the Secret, and then nothing is
    submitted: _ray_auth_enforced)."""
    uid = ((p.ray_cluster or {}).get("metadata") or {}).get("uid")
    if p.memory.ray_token is None or p.memory.ray_token_of != uid:
        data = await io.kube.read_secret(p.ref.namespace, ray_auth_secret_name(p.ref.name))
        p.memory.ray_token = (data or {}).get(RAY_AUTH_TOKEN_KEY) or None
        # Not there yet (or empty): read again at the next pass.
        p.memory.ray_token_of = uid if p.memory.ray_token is not None else None
    return io.dashboards.client(dashboard_url(p.settings, p.ref.namespace, p.ref.name), p.memory.ray_token)


def transition_events(previous: VLLMClusterStatus | None, current: VLLMClusterStatus) -> list[Event]:
    """One Event per change worth telling a human: a new phase, and each new reason of a failing
    condition. Unchanged state posts nothing, so a resync loop never spams."""
    events: list[Event] = []
    old_phase = previous.phase if previous else None
    if current.phase is not None and current.phase != old_phase:
        bad = current.phase in (Phase.DEGRADED, Phase.FAILED)
        events.append(Event("Warning" if bad else "Normal", current.phase, current.message or ""))
    events += _rollout_events(previous, current)
    degraded = current.condition(ConditionType.DEGRADED)
    if degraded is not None and degraded.status == "True":
        before = previous.condition(ConditionType.DEGRADED) if previous else None
        if before is None or before.status != "True" or before.reason != degraded.reason:
            events.append(Event("Warning", Reason(degraded.reason), degraded.message))
    return events


# Progressing reasons of a rolling upgrade worth an Event when the condition turns to them (each step's own
# Event is posted by the step: EngineReplacing, EngineDraining, EngineStopped).
_ROLLOUT_EVENTS: dict[str, Literal["Normal", "Warning"]] = {
    Reason.ROLLOUT_STALLED: "Warning",
    Reason.ROLLOUT_RECREATE: "Normal",
}
_ROLLING = {
    Reason.ROLLING_SURGE,
    Reason.ROLLING_DRAIN_OLD,
    Reason.ROLLOUT_WAITING,
    Reason.ROLLOUT_STALLED,
    Reason.ROLLOUT_RECREATE,
}


def _rollout_events(previous: VLLMClusterStatus | None, current: VLLMClusterStatus) -> list[Event]:
    """A rollout that stalls (why, in the message), falls back to Recreate, or completes."""
    now = current.condition(ConditionType.PROGRESSING)
    before = previous.condition(ConditionType.PROGRESSING) if previous else None
    if now is None or (before is not None and before.reason == now.reason):
        return []
    if now.reason in _ROLLOUT_EVENTS:
        return [Event(_ROLLOUT_EVENTS[now.reason], Reason(now.reason), now.message)]
    if now.reason == Reason.ROLLOUT_COMPLETE and before is not None and before.reason in _ROLLING:
        return [Event("Normal", Reason.ROLLOUT_COMPLETE, now.message)]
    return []


async def finalize(
    io: Clients, settings: Settings, body: Mapping[str, Any], children: Children, now: datetime
) -> Outcome:
    """Clean-up that garbage collection cannot do, before the finalizer goes: stop every engine's Ray job
    (a job is not a Kubernetes object; with GCS fault tolerance or an external Ray it outlives the pods).
    Owned children (RayCluster, Service) then follow their owner through the garbage collector.

    Deletion always ends, as KubeRay's own clean-up does (it gives up after 300 s): an error that will not
    go away by waiting (the dashboard or the API server refusing the operator, 401/403) releases the
    finalizer at once, and anything else (jobs that stay RUNNING, an API server that does not answer) once
    settings.deletion_deadline_seconds have passed since the deletion; each with a Warning Event saying
    what may be left behind. Raises TransientError to be called again before that."""
    ref = ClusterRef.of(body)
    previous = parse_previous_status(body.get("status"))
    engines = list(previous.engines) if previous else []
    events = [Event("Normal", EventReason.DELETING, f"VLLMCluster {ref} is being deleted")]
    if children.ray_cluster is None and not engines:
        return Outcome(status=None, events=events)
    try:
        spec = parse_cluster(body).spec
    except InvalidSpecError:
        return Outcome(status=None, events=events)  # never launched anything
    ctx = EngineContext(ref=ref, spec=spec, settings=settings, now=now)
    memory = Memory()
    p = Pass(
        ref, body, settings, now, children, memory, previous, spec=spec, ray_cluster=children.ray_cluster
    )
    deadline = settings.deletion_deadline_seconds
    overdue = deletion_overdue(body.get("metadata", {}).get("deletionTimestamp"), now, deadline)
    ids = [e.submission_id for e in engines if e.submission_id]

    def released(why: str) -> Outcome:
        message = f"finalizer released {why}: {left_behind(str(ref), ids)}"
        return Outcome(
            status=None, events=[*events, Event("Warning", EventReason.ENGINES_NOT_STOPPED, message)]
        )

    ray: RayDashboardClient | None = None
    try:
        ray = await _dashboard(p, io)
        running = await Supervisor(ray, ctx, limiter=_slots(p, io), prober=io.prober).stop_all(engines)
    except RayError as unreachable:
        # The Ray cluster is gone or going (its pods are being deleted): its jobs go with it.
        events.append(
            Event(
                "Normal",
                EventReason.ENGINES_NOT_STOPPED,
                f"Ray dashboard unreachable, jobs end with the cluster: {unreachable}",
            )
        )
        return Outcome(status=None, events=events)
    except TransientError as failed:
        if not overdue:
            raise
        return released(f"after {deadline:g}s of deletion (RAYVLLM_DELETION_DEADLINE_SECONDS): {failed}")
    except RayvllmError as refused:
        # Refused (401/403, a request the dashboard rejects): asking again will not help.
        return released(f"on an error that retrying cannot fix: {refused}")
    finally:
        if ray is not None:
            await ray.aclose()
    if running:
        if overdue:
            return released(
                f"with {running} engine job(s) still RUNNING after {deadline:g}s of deletion "
                "(RAYVLLM_DELETION_DEADLINE_SECONDS)"
            )
        # Ray stops a job with SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S: look again shortly.
        raise TransientError(f"waiting for {running} engine job(s) to stop", retry_after=2.0)
    events.append(Event("Normal", EventReason.ENGINES_STOPPED, "every engine job is stopped"))
    return Outcome(status=None, events=events)
