"""The engine supervisor's decisions, as pure functions (after KubeRay's `shouldDeletePod`: a verdict and its
reason). No I/O and no clock: what needs I/O (the Ray job, the engine's probe, the cluster's free slots)
arrives as values, `now` with the EngineContext. rayvllm.supervisor observes, asks, and carries out.

One pass over a VLLMCluster's engines:
- `leaving_records`: engines past spec.replicas, or all of them when suspended: drained, then retired;
- `replica_records`: one record per index 0..replicas-1, a new engine where there is none;
- `watched`: which of those have a job to GET (and, while it runs at a known address, to probe);
- `logs_due`: whether a loading engine's log is read this pass, for its lastLogLine;
- `plan_replicas`: `decide` for each replica in index order, so submissions never exceed the free slots;
- `requeue_after`: how soon to look again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from rayvllm.engine.actions import (
    Action,
    Drain,
    GiveUp,
    MarkReady,
    Restart,
    Retire,
    Submit,
    Unhealthy,
    Wait,
    Waiting,
    takes_slot,
)
from rayvllm.engine.context import EngineContext
from rayvllm.engine.failure import last_log_line, redact
from rayvllm.engine.job import EngineRef, submission_id
from rayvllm.engine.probe import EngineProbe, EngineState
from rayvllm.engine.rollout import gives_way, keeps_serving_until_replaced, new_engine
from rayvllm.models.rayapi import ClusterResources, JobInfo
from rayvllm.models.spec import VLLMClusterSpec
from rayvllm.models.status import EngineStatus
from rayvllm.placement import ENGINE_SLOT_RESOURCE

RETIRED_SUSPENDED = "suspended"
RETIRED_SCALED_DOWN = "scaled down"
RETIRED_RECREATED = "engine settings changed (upgradeStrategy Recreate)"
RETIRED_REPLACED = "replaced by its new engine (upgradeStrategy RollingReplicas)"
RETIRED_PODS_REPLACED = (
    "engine settings changed while the Ray pods are replaced (spec.ray.image or another pod setting): "
    "upgradeStrategy RollingReplicas goes through Recreate"
)
RETIRED_STOPPED_SERVING = "engine settings changed and it does not serve (upgradeStrategy RollingReplicas)"
JOB_GONE = "the Ray job is gone (Ray head restarted without GCS fault tolerance?)"
# Sooner than this is not worth a pass: a backoff about to end is looked at once it has.
MIN_REQUEUE_SECONDS = 0.5
# How long after its backoff a restart waits for the failed attempt's stopped job to end in Ray. Ray marks the
# job of a lost node's or container's processes ended once its health checks find the node dead (about 30 s
# with Ray's defaults); a job still reported live after this is not waited for any longer.
PREVIOUS_JOB_END_TIMEOUT = timedelta(minutes=2)
# A loading engine's log is read (the whole log: Ray has no tail over REST) at most this often, so its
# lastLogLine, and the status with it, changes at most this often while it loads.
LOG_LINE_REFRESH = timedelta(seconds=30)


@dataclass(frozen=True)
class Observed:
    """What the executor saw of a watched engine: its Ray job (None: Ray does not know it), when the job
    runs at a known address the engine's probe (None: not probed), and when `logs_due` its job's log (None:
    not read)."""

    job: JobInfo | None
    probe: EngineProbe | None = None
    logs: str | None = None


NOT_WATCHED = Observed(job=None)


# ---- which engines, and what to observe -------------------------------------------------------------


def is_leaving(record: EngineStatus, spec: VLLMClusterSpec) -> bool:
    return spec.suspend or record.index >= spec.replicas


def _by_index(previous: Sequence[EngineStatus]) -> dict[int, EngineStatus]:
    # status.engines is a list-map keyed by index; should one repeat anyway, the later entry wins.
    return {record.index: record for record in previous}


def leaving_records(previous: Sequence[EngineStatus], spec: VLLMClusterSpec) -> list[EngineStatus]:
    by_index = _by_index(previous)
    return [by_index[i] for i in sorted(by_index) if is_leaving(by_index[i], spec)]


def replica_records(previous: Sequence[EngineStatus], ctx: EngineContext) -> list[EngineStatus]:
    """Empty when suspended: every engine is leaving."""
    if ctx.spec.suspend:
        return []
    by_index = _by_index(previous)
    return [by_index.get(i) or new_engine(i, ctx) for i in range(ctx.spec.replicas)]


def watched(record: EngineStatus, ctx: EngineContext) -> bool:
    """The engine stays and has a job of its current settings (or, between attempts, a failed attempt's job
    still being stopped): `decide` needs that job observed."""
    return (
        not is_leaving(record, ctx.spec)
        and (record.config_hash == ctx.config_hash or keeps_serving_until_replaced(record, ctx))
        and observed_submission(record) is not None
        # A given-up engine keeps its last submission id for the record; its job was stopped and is not
        # judged again (that would repeat GiveUp: its log read and EngineFailed posted at every pass).
        and not record.budget_exhausted
    )


def observed_submission(record: EngineStatus) -> str | None:
    """The Ray job whose state decides about the engine: its current attempt's or, between attempts, the
    failed attempt's job that was stopped (see EngineStatus.stopping_submission_id)."""
    return record.submission_id or record.stopping_submission_id


def _reported_host(job: JobInfo | None, ctx: EngineContext) -> str | None:
    if job is None or job.status != "RUNNING":
        return None
    return ctx.settings.engine_host_override or job.driver_node_ip


def own_host(host: str, ctx: EngineContext) -> bool:
    """An address the operator may dial for this object: one of its own pods' IPs, as Kubernetes reports
    them (the Ray dashboard runs the tenant's image and could name any host the operator reaches), or the
    host an administrator set in settings.engine_host_override."""
    return ctx.settings.engine_host_override is not None or host in ctx.pod_by_ip


def probe_address(job: JobInfo | None, ctx: EngineContext) -> str | None:
    """Where to probe the engine (http://host:port): only a RUNNING job has one, once Ray says which node
    runs it (or settings point elsewhere), and only on one of the object's own pods."""
    host = _reported_host(job, ctx)
    if not host or not own_host(host, ctx):
        return None
    return f"http://{host}:{ctx.spec.engine.port}"


def foreign_address(job: JobInfo | None, ctx: EngineContext) -> str | None:
    """The host Ray reports for a RUNNING engine when it is none of the object's pods: never dialled, and
    reported (Reason.ENGINE_ADDRESS_NOT_OWN_POD)."""
    host = _reported_host(job, ctx)
    return host if host and not own_host(host, ctx) else None


def logs_due(
    record: EngineStatus, job: JobInfo | None, probe: EngineProbe | None, ctx: EngineContext
) -> bool:
    """Read the job's log this pass: the engine is loading (its job RUNNING, this attempt has not been ready
    yet, and this pass's probe, if any, did not find it ready) and its lastLogLine is older than
    LOG_LINE_REFRESH. Never for a ready engine: its status must stay as it is."""
    if job is None or job.status != "RUNNING" or record.ready or (probe is not None and probe.ready):
        return False
    if record.load_seconds is not None or record.unhealthy_since is not None:
        return False  # it served in this attempt: a failure's log goes to lastFailure instead
    read_at = record.last_log_read_at
    return read_at is None or ctx.now - read_at >= LOG_LINE_REFRESH


def free_engine_slots(resources: ClusterResources, spec: VLLMClusterSpec) -> int:
    """How many engines may be submitted now: free API-server slots on GPU workers (the total when the
    cluster does not report availability) and, for the ray executor, enough GPUs in the cluster for every
    engine the spec asks for."""
    if spec.engine.executor_backend == "ray" and resources.gpus_total < spec.total_gpus:
        return 0
    slots = resources.available(ENGINE_SLOT_RESOURCE)
    return int(resources.total(ENGINE_SLOT_RESOURCE) if slots is None else slots)


# ---- the decision for one replica --------------------------------------------------------------------


def decide(
    record: EngineStatus,
    job: JobInfo | None,
    probe: EngineProbe | None,
    ctx: EngineContext,
    *,
    may_submit: bool,
    slot_free: bool,
    logs: str | None = None,
    successor: EngineStatus | None = None,
) -> Action:
    """What to do about one engine this pass.

    `job` and `probe` are read only for a `watched` engine: its `observed_submission` as Ray reports it
    (None: Ray does not know it) and its probe (None: not probed); `logs`, its job's log when `logs_due` (None: not read).
    `may_submit`: the RayCluster is ready and its GCS healthy. `slot_free`: an engine slot is free for a
    submission (see `plan_replicas`). `successor`: for an outgoing engine (RollingReplicas), the record of
    the new engine at its replica's index."""
    spec = ctx.spec
    if spec.suspend:
        return Retire(record, RETIRED_SUSPENDED)
    if record.index >= spec.replicas:
        if record.outgoing is not None and not gives_way(record, successor, ctx):
            return Wait(record, Waiting.REPLACEMENT_STARTING)
        why = RETIRED_REPLACED if record.outgoing is not None else RETIRED_SCALED_DOWN
        return Retire(record, why) if _drained(record, ctx) else _drain(record, ctx)
    if record.config_hash != ctx.config_hash:
        if keeps_serving_until_replaced(record, ctx):
            verdict = _judge_job(record, job, probe, ctx, logs)
            if not isinstance(verdict, Restart | GiveUp):
                return verdict  # it serves on until rollout.begin_replacements gives it its turn
            # It failed: nothing left to protect, so it is replaced at once (not restarted on old settings).
        fresh = new_engine(record.index, ctx)
        replacement = _submit_or_wait(fresh, ctx, may_submit=may_submit, slot_free=slot_free)
        return Retire(record, _why_recreated(record, ctx), replacement)
    if record.submission_id is None or record.budget_exhausted:
        return _submit_or_wait(record, ctx, may_submit=may_submit, slot_free=slot_free, previous=job)
    return _judge_job(record, job, probe, ctx, logs)


def _why_recreated(record: EngineStatus, ctx: EngineContext) -> str:
    if not ctx.spec.rolling:
        return RETIRED_RECREATED
    return RETIRED_PODS_REPLACED if ctx.pods_replaced else RETIRED_STOPPED_SERVING


def _submit_or_wait(
    record: EngineStatus,
    ctx: EngineContext,
    *,
    may_submit: bool,
    slot_free: bool,
    previous: JobInfo | None = None,
) -> Submit | Wait:
    """`previous`: the failed attempt's stopped job as Ray reports it (None: not known to Ray, or none)."""
    if record.budget_exhausted:
        return Wait(record, Waiting.BUDGET_SPENT)
    if not may_submit:
        return Wait(record, Waiting.NOT_SUBMITTABLE)
    if record.restart_after is not None and ctx.now < record.restart_after:
        return Wait(record, Waiting.BACKOFF)
    if _previous_still_live(record, previous, ctx):
        return Wait(record, Waiting.PREVIOUS_ENDING)
    if not slot_free:
        return Wait(record, Waiting.NO_FREE_SLOT)
    engine = EngineRef(ctx.ref.namespace, ctx.ref.name, record.index, record.generation or 0, record.attempt)
    pending = record.model_copy(
        update={
            "submission_id": submission_id(engine),
            # Unknown until Ray is asked about the job, at the next pass: the stage is Submitted till then.
            "job_status": None,
            "started_at": ctx.now,
            "restart_after": None,
            "stopping_submission_id": None,
            "unhealthy_since": None,
            "ready": False,
            "health": None,
            "load_seconds": None,
            "last_log_line": None,
            "last_log_read_at": None,
        }
    )
    return Submit(engine, pending)


def _previous_still_live(record: EngineStatus, previous: JobInfo | None, ctx: EngineContext) -> bool:
    """The failed attempt's stopped job is still live in Ray, within PREVIOUS_JOB_END_TIMEOUT of the end
    of the backoff: submitting now would give the replica two live jobs."""
    if record.stopping_submission_id is None or previous is None or previous.terminal:
        return False
    waited_from = record.restart_after or ctx.now
    return ctx.now < waited_from + PREVIOUS_JOB_END_TIMEOUT


def _judge_job(
    record: EngineStatus, job: JobInfo | None, probe: EngineProbe | None, ctx: EngineContext, logs: str | None
) -> Action:
    if job is None:
        return _fail(record, JOB_GONE, ctx, job_may_run=True)
    record = record.model_copy(update={"job_status": job.status})
    if job.terminal:
        detail = f": {job.message}" if job.message else ""
        return _fail(record, f"Ray job {job.status}{detail}", ctx, job_may_run=False)
    startup_over = _startup_timed_out(record, ctx)
    if job.status == "PENDING":
        if startup_over:
            reason = f"Ray job still PENDING after startupTimeoutSeconds: {job.message or 'no resources?'}"
            return _fail(record, reason, ctx, job_may_run=True)
        return Wait(record, Waiting.PENDING)
    if logs is not None:
        line = last_log_line(logs, ctx.secrets)
        record = record.model_copy(update={"last_log_line": line, "last_log_read_at": ctx.now})
    url = probe_address(job, ctx)
    if url is None:
        return Wait(record, Waiting.FOREIGN_ADDRESS if foreign_address(job, ctx) else Waiting.NO_ADDRESS)
    if probe is None:
        return Wait(record, Waiting.NOT_PROBED)
    serves_on = serves_through(record, probe)
    record = record.model_copy(
        update={
            "url": f"{url}/v1",
            "pod_name": ctx.pod_by_ip.get(job.driver_node_ip or ""),
            "health": probe.state.value,
        }
    )
    return _judge_probe(record, probe, startup_over, ctx, serves_on=serves_on)


def serves_through(record: EngineStatus, probe: EngineProbe) -> bool:
    """A serving engine whose probe got no answer in time, after one that did: it may only be too busy to
    answer within the timeout (a CPU shared with a restarting Ray head, a burst of requests), so it stays in
    the Service until the next probe, which comes soon (answered_late). A second late answer in a row, a
    refused connection, an error or a failed canary takes it out at once. Kubernetes' readiness probes
    likewise take a pod out only after failureThreshold misses."""
    return (
        record.ready and record.health == EngineState.READY.value and probe.state is EngineState.UNRESPONSIVE
    )


def answered_late(record: EngineStatus) -> bool:
    """Serving through a probe that timed out (serves_through): looked at again soon."""
    return record.ready and record.health == EngineState.UNRESPONSIVE.value


def _judge_probe(
    record: EngineStatus, probe: EngineProbe, startup_over: bool, ctx: EngineContext, *, serves_on: bool
) -> Action:
    if probe.ready:
        if record.ready:
            return Wait(record.model_copy(update={"unhealthy_since": None}), Waiting.SERVING)
        return MarkReady(record.model_copy(update=_ready_update(record, ctx)))
    grace = ctx.settings.unhealthy_grace_seconds
    if record.ready or record.unhealthy_since is not None:
        # Once ready, an engine is given a grace period: a busy engine may miss a probe or two.
        since = record.unhealthy_since or ctx.now
        if ctx.now - since >= timedelta(seconds=grace):
            return _fail(
                record, f"engine unhealthy for over {grace:.0f}s: {probe.detail}", ctx, job_may_run=True
            )
        update = {"ready": serves_on, "unhealthy_since": since}
        return Unhealthy(record.model_copy(update=update), probe.detail)
    if startup_over:
        timeout = ctx.spec.engine.startup_timeout_seconds
        reason = f"not ready within startupTimeoutSeconds ({timeout}s): {probe.detail}"
        return _fail(record, reason, ctx, job_may_run=True)
    return Wait(record, Waiting.STARTING)


def _ready_update(record: EngineStatus, ctx: EngineContext) -> dict[str, object]:
    """An engine ready again: a first ready of this attempt fixes its loadSeconds (a recovery after an
    unhealthy spell keeps the first); its loading log line has told its story and goes."""
    load_seconds = record.load_seconds
    if load_seconds is None and record.started_at is not None:
        load_seconds = max(0, round((ctx.now - record.started_at).total_seconds()))
    return {
        "ready": True,
        "unhealthy_since": None,
        "load_seconds": load_seconds,
        "last_log_line": None,
        "last_log_read_at": None,
    }


def _fail(record: EngineStatus, reason: str, ctx: EngineContext, *, job_may_run: bool) -> Restart | GiveUp:
    policy = ctx.spec.restart_policy
    # Ray's job message (part of the reason) may quote the job's log: it goes into Events and lastFailure.
    reason = redact(reason, ctx.secrets)
    if record.restarts >= policy.max_restarts:
        return GiveUp(
            record, reason, stop_job=job_may_run, max_restarts=policy.max_restarts, secrets=ctx.secrets
        )
    return Restart(
        record,
        reason,
        stop_job=job_may_run,
        max_restarts=policy.max_restarts,
        delay_seconds=policy.backoff_before_restart(record.restarts),
        now=ctx.now,
        secrets=ctx.secrets,
    )


def _startup_timed_out(record: EngineStatus, ctx: EngineContext) -> bool:
    """Only an engine that never became ready since this attempt started: a once-ready one has the
    unhealthy grace instead."""
    if record.started_at is None or record.ready or record.unhealthy_since is not None:
        return False
    return ctx.now - record.started_at > timedelta(seconds=ctx.spec.engine.startup_timeout_seconds)


def _drained(record: EngineStatus, ctx: EngineContext) -> bool:
    """Nothing to drain (it never served, or it has no pod), or it has been out of the Service long
    enough."""
    if record.draining_since is None:
        return not record.ready or record.pod_name is None
    return ctx.now - record.draining_since >= timedelta(seconds=ctx.settings.drain_seconds)


# A Ray job's record is kept by its supervisor actor, which runs on the engine's worker pod: a pod removed while
# its stopped job is still ending (vLLM under Ray may take the whole RAY_JOB_STOP_WAIT_TIME_S) takes the actor
# with it, and Ray records the job FAILED. So a scaled-down engine's record, and with it its pod
# (rayvllm.workers), stays until Ray reports the job ended, or until its stop is this much overdue.
JOB_END_MARGIN_SECONDS = 10.0


def waits_for_job_end(action: Retire) -> bool:
    """Only a scale-down removes the retired engine's pod: a recreated engine's replacement reuses it, an
    outgoing one is handed to engine.rollout, and a suspended cluster loses every pod anyway."""
    return action.why == RETIRED_SCALED_DOWN


def job_end_overdue(record: EngineStatus, ctx: EngineContext, ray_stop_wait_seconds: float) -> bool:
    """Its job was stopped once it had drained: past Ray's own SIGKILL deadline and a margin, its pod goes
    whatever Ray says."""
    if record.draining_since is None:
        return False
    allowed = ctx.settings.drain_seconds + ray_stop_wait_seconds + JOB_END_MARGIN_SECONDS
    return ctx.now - record.draining_since >= timedelta(seconds=allowed)


def still_stopping(record: EngineStatus, ctx: EngineContext) -> EngineStatus:
    """The record of a scaled-down engine whose stopped job has not ended: out of the Service, its pod kept,
    looked at again soon (requeue_after follows draining_since)."""
    return record.model_copy(update={"ready": False, "draining_since": record.draining_since or ctx.now})


def _drain(record: EngineStatus, ctx: EngineContext) -> Drain:
    since = record.draining_since or ctx.now
    draining = record.model_copy(update={"ready": False, "draining_since": since})
    why = "replaced by its new engine" if record.outgoing is not None else "scaled down"
    return Drain(
        draining, started=record.draining_since is None, drain_seconds=ctx.settings.drain_seconds, why=why
    )


# ---- without Ray ---------------------------------------------------------------------------------------


def engine_base_url(record: EngineStatus, ctx: EngineContext) -> str | None:
    """Where a staying engine of the current settings that has served was last seen (its probe address):
    the engines worth asking themselves while the Ray dashboard does not answer. An outgoing engine that
    still serves (RollingReplicas) is one of them: a dashboard fault must not take it out of the Service."""
    serves_on = record.outgoing is not None and record.draining_since is None
    if not (watched(record, ctx) or serves_on) or record.url is None:
        return None
    if not (record.ready or record.unhealthy_since is not None):
        return None
    # Checked again: the pod that had this IP may be gone, its IP given to another namespace's pod.
    host = urlsplit(record.url).hostname
    if host is None or not own_host(host, ctx):
        return None
    return record.url.removesuffix("/v1")


def judge_without_ray(record: EngineStatus, probe: EngineProbe | None, now: datetime) -> EngineStatus:
    """The Ray dashboard did not answer, so Ray's view of the jobs is unknown: nothing is submitted,
    restarted or stopped on its account. An engine that has served keeps serving while its own probe says
    it does (a dashboard fault alone never takes it out of the Service; one late answer neither,
    serves_through); the rest count as not ready until Ray answers again. One that stops answering starts
    its unhealthy grace now: once Ray answers, it is judged as the once-ready engine it is (ready again when
    it answers, restarted when the grace is over), never as one still loading, which would wait out
    startupTimeoutSeconds. Restarts resume with Ray."""
    if probe is None:
        return record.model_copy(update={"ready": False})
    ready = probe.ready or serves_through(record, probe)
    update: dict[str, object] = {"ready": ready, "health": probe.state.value}
    if probe.ready:
        update["unhealthy_since"] = None
    elif not ready and (record.ready or record.unhealthy_since is not None):
        update["unhealthy_since"] = record.unhealthy_since or now
    return record.model_copy(update=update)


# ---- several replicas, and the next look -------------------------------------------------------------


def plan_replicas(
    records: Sequence[EngineStatus],
    observed: Mapping[int, Observed],
    ctx: EngineContext,
    *,
    may_submit: bool,
    free_slots: int,
) -> list[Action]:
    """`decide` for each staying replica, in index order: each submission takes one of `free_slots`, so no
    more jobs are submitted than the cluster has room for (the lower indices first). `observed` must hold
    every `watched` record's index."""
    actions: list[Action] = []
    for record in records:
        seen = observed[record.index] if watched(record, ctx) else NOT_WATCHED
        action = decide(
            record,
            seen.job,
            seen.probe,
            ctx,
            may_submit=may_submit,
            slot_free=free_slots > 0,
            logs=seen.logs,
        )
        if takes_slot(action):
            free_slots -= 1
        actions.append(action)
    return actions


def requeue_after(engines: Sequence[EngineStatus], ctx: EngineContext) -> float | None:
    """How soon to look at these engines again, or None when the normal resync will do.

    Soon (settings.starting_probe_seconds) while an engine is submitted, pending, starting, unhealthy
    within its grace, or draining, so Ready (or a restart) follows the engine rather than the resync
    period; the rest of the backoff while an engine waits to be restarted. An engine that serves, has
    given up, or waits for the cluster (not ready, no free slot) changes with the world, not the clock:
    the resync looks again."""
    soonest: float | None = None
    for engine in engines:
        wait = _look_again(engine, ctx)
        if wait is not None and (soonest is None or wait < soonest):
            soonest = wait
    return soonest


def _look_again(engine: EngineStatus, ctx: EngineContext) -> float | None:
    if engine.budget_exhausted:
        return None
    if engine.draining_since is not None or (engine.submission_id is not None and not engine.ready):
        return ctx.settings.starting_probe_seconds
    if answered_late(engine):
        return ctx.settings.starting_probe_seconds
    if engine.outgoing is not None:
        return ctx.settings.starting_probe_seconds  # it gives way as soon as its replacement is ready
    if engine.submission_id is None and engine.restart_after is not None and ctx.now < engine.restart_after:
        return max((engine.restart_after - ctx.now).total_seconds(), MIN_REQUEUE_SECONDS)
    if engine.submission_id is None and engine.stopping_submission_id is not None:
        return ctx.settings.starting_probe_seconds  # the next attempt follows the old job's end
    return None
