"""The engine supervisor: one Ray job per engine replica, watched and restarted by the operator (Ray runs a
job once; nothing else restarts it). Called from reconcile; no kopf. This module only executes: it
observes (Ray jobs, engine probes), asks rayvllm.engine.decide what to do, and does it. Ray I/O goes
through ray/, the engine's own HTTP through a prober (engine.health).

Each engine's state lives in status.engines[] (written by reconcile), so a restarted operator adopts the
jobs it submitted: submission ids are deterministic per (namespace, name, replica, generation, attempt).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeVar, assert_never

from rayvllm import API_GROUP
from rayvllm.bounded import Bounds
from rayvllm.engine.actions import Action, Drain, GiveUp, MarkReady, Restart, Retire, Submit, Unhealthy, Wait
from rayvllm.engine.context import EngineContext
from rayvllm.engine.decide import (
    Observed,
    decide,
    engine_base_url,
    foreign_address,
    free_engine_slots,
    job_end_overdue,
    judge_without_ray,
    leaving_records,
    logs_due,
    observed_submission,
    plan_replicas,
    probe_address,
    replica_records,
    requeue_after,
    still_stopping,
    waits_for_job_end,
    watched,
)
from rayvllm.engine.health import EngineProber, probe_engine
from rayvllm.engine.job import EngineJobOptions, build_engine_job, ray_stop_wait_seconds
from rayvllm.engine.probe import EngineProbe, LoadSample
from rayvllm.engine.rollout import begin_replacements
from rayvllm.errors import RayError, RayRequestRejectedError
from rayvllm.events import Event
from rayvllm.models.rayapi import ClusterResources
from rayvllm.models.status import EngineStatus
from rayvllm.ray import JobInfo, RayDashboardClient

__all__ = ["EngineContext", "EngineProbing", "Slots", "SupervisionResult", "Supervisor"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class EngineProbing(Protocol):
    """Probes one engine's API server (engine.health.probe_engine behind it); never raises for what the
    engine answers or does not."""

    async def probe(
        self, base_url: str, served_model_name: str, api_key: str | None = None
    ) -> EngineProbe: ...

    async def load(self, base_url: str) -> LoadSample | None:
        """The engine's load (engine.health.read_load); None: it did not say."""
        ...


class _ProbePerCall:
    """The prober when the caller gives none: a client of its own per probe."""

    def __init__(self, bounds: Bounds) -> None:
        self._bounds = bounds

    async def probe(self, base_url: str, served_model_name: str, api_key: str | None = None) -> EngineProbe:
        return await probe_engine(base_url, served_model_name, api_key=api_key, bounds=self._bounds)

    async def load(self, base_url: str) -> LoadSample | None:
        return await EngineProber(bounds=self._bounds).load(base_url)


class Slots:
    """One VLLMCluster's share of the operator's Ray and engine calls: a place among its own (`own`, of
    settings.probe_concurrency_per_cluster) first, then one among everyone's (`shared`, of
    settings.probe_concurrency). An object whose head or engines answer a byte at a time holds at most its
    own share of the shared places, however many calls it has waiting, so the other objects' calls go on.
    Used as `async with slots:`, by any number of calls at once."""

    def __init__(self, shared: asyncio.Semaphore, own: asyncio.Semaphore) -> None:
        self._shared = shared
        self._own = own

    async def __aenter__(self) -> None:
        await self._own.acquire()
        try:
            await self._shared.acquire()
        except BaseException:
            self._own.release()
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._shared.release()
        self._own.release()


Limiter = AbstractAsyncContextManager[Any]


@dataclass(frozen=True)
class SupervisionResult:
    engines: list[EngineStatus]
    events: list[Event] = field(default_factory=list)
    submissions: int = 0
    """Jobs this pass created (adoptions of existing ids do not count)."""
    resources: ClusterResources | None = None
    """The Ray cluster's resources as this pass read them (None: not read: nothing may be submitted)."""
    requeue_after: float | None = None
    """Look again this soon (seconds): an engine is starting, unhealthy, draining or backing off. None: every
    engine is steady (or waits for the cluster), the normal resync will do."""
    loads: dict[int, LoadSample | None] = field(default_factory=dict)
    """With spec.autoscaling: requests running + waiting of each engine this pass found ready, by index
    (None: its /metrics did not say). Empty without autoscaling: /metrics is then not read."""
    foreign_addresses: dict[int, str] = field(default_factory=dict)
    """Engines, by index, that Ray reports on a host that is none of the object's pods (decide.foreign_address):
    not probed, to be reported."""


@dataclass
class _Tally:
    events: list[Event] = field(default_factory=list)
    submissions: int = 0


class Supervisor:
    def __init__(
        self,
        ray: RayDashboardClient,
        ctx: EngineContext,
        limiter: Limiter | None = None,
        prober: EngineProbing | None = None,
    ) -> None:
        """`limiter` bounds the Ray and engine calls in flight: the object's Slots (its share of the calls
        across every VLLMCluster); without one, this pass gets a bound of its own."""
        self._ray = ray
        self._ctx = ctx
        self._limiter = limiter or asyncio.Semaphore(ctx.settings.probe_concurrency_per_cluster)
        self._prober = prober or _ProbePerCall(Bounds.of(ctx.settings))
        self._options = EngineJobOptions(
            host=ctx.settings.engine_bind_host,
            python=ctx.settings.engine_python,
            extra_env=ctx.settings.engine_job_env,
        )

    # ---- the pass ----------------------------------------------------------------------------------

    async def run(self, previous: Sequence[EngineStatus], may_submit: bool) -> SupervisionResult:
        """Observe and act on every engine once. `may_submit` is False while the RayCluster is not ready (or
        its GCS not healthy): running engines are still watched, but nothing new is launched."""
        ctx, tally = self._ctx, _Tally()
        replacements = begin_replacements(previous, ctx)
        previous, tally.events = replacements.records, list(replacements.events)
        replicas = {record.index: record for record in previous if record.outgoing is None}
        draining: list[EngineStatus] = []
        for record in leaving_records(previous, ctx.spec):
            # Leaving engines are judged on their record alone: Ray is only read when one is retired.
            action = decide(
                record,
                None,
                None,
                ctx,
                may_submit=False,
                slot_free=False,
                successor=replicas.get(record.replica) if record.outgoing is not None else None,
            )
            kept = await self._carry_out(action, tally)
            draining += [kept] if kept is not None else []
        if ctx.spec.suspend:
            return SupervisionResult(engines=[], events=tally.events)  # every engine was retired
        records = replica_records(previous, ctx)
        free_slots, resources = 0, None
        if may_submit:
            resources = await self._limited(self._ray.cluster_resources)
            free_slots = free_engine_slots(resources, ctx.spec)
        observed = await self._observe_all([record for record in records if watched(record, ctx)])
        foreign = {
            index: host for index, seen in observed.items() if (host := foreign_address(seen.job, ctx))
        }
        engines: list[EngineStatus] = []
        for action in plan_replicas(records, observed, ctx, may_submit=may_submit, free_slots=free_slots):
            kept = await self._carry_out(action, tally)
            engines += [kept] if kept is not None else []
        engines += draining
        return SupervisionResult(
            engines=engines,
            events=tally.events,
            submissions=tally.submissions,
            resources=resources,
            requeue_after=requeue_after(engines, ctx),
            loads=await self._loads(engines),
            foreign_addresses=foreign,
        )

    async def probe_without_ray(self, previous: Sequence[EngineStatus]) -> list[EngineStatus]:
        """The pass when the Ray dashboard does not answer: engines that have served are asked themselves
        (concurrently, under the limiter), and serve on while they answer; nothing else changes."""
        served = self._ctx.spec.model.served_name(self._ctx.ref.name)

        async def ask(record: EngineStatus) -> EngineProbe | None:
            url = engine_base_url(record, self._ctx)
            return None if url is None else await self._probe(record, url, served)

        probes = await asyncio.gather(*(ask(record) for record in previous))
        return [judge_without_ray(r, probe, self._ctx.now) for r, probe in zip(previous, probes, strict=True)]

    async def stop_all(self, previous: Sequence[EngineStatus]) -> int:
        """Stop every job of this VLLMCluster, those in status and any other carrying its metadata (one
        submitted just before a crash). Returns how many are still running: the caller waits for 0, so
        nothing is left running in Ray when the object goes."""
        ids = {e.submission_id for e in previous if e.submission_id}
        for job in await self._limited(self._ray.list):
            meta = job.metadata or {}
            mine = (
                meta.get(f"{API_GROUP}/namespace") == self._ctx.ref.namespace
                and meta.get(f"{API_GROUP}/name") == self._ctx.ref.name
            )
            if mine:
                ids.add(job.submission_id)
        running = 0
        for sid in sorted(ids):
            current = await self._get(sid)
            if current is not None and not current.terminal:
                await self._stop(sid)
                # Ray 2.60 cannot stop a PENDING job until its supervisor actor is placed: waiting
                # for it could hold the finalizer for RAY_JOB_START_TIMEOUT_SECONDS, so only RUNNING
                # jobs are waited for.
                running += current.status == "RUNNING"
        return running

    # ---- observing ---------------------------------------------------------------------------------

    async def _observe_all(self, records: Sequence[EngineStatus]) -> dict[int, Observed]:
        """Every engine's job and probe at once: a slow or silent engine costs its own calls' time, not
        everyone's. The first error, if any, fails the pass (as a sequential pass would have)."""
        outcomes = await asyncio.gather(
            *(self._observe(record) for record in records), return_exceptions=True
        )
        observed: dict[int, Observed] = {}
        for record, outcome in zip(records, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                raise outcome
            observed[record.index] = outcome
        return observed

    async def _observe(self, record: EngineStatus) -> Observed:
        sid = observed_submission(record)
        assert sid is not None, "only a watched engine is observed"
        job = await self._get(sid)
        if record.submission_id is None:
            return Observed(job)  # a failed attempt's stopped job: only whether it has ended
        url = probe_address(job, self._ctx)
        probe = None
        if url is not None:
            served = self._ctx.spec.model.served_name(self._ctx.ref.name)
            probe = await self._probe(record, url, served)
        # After the probe: not for an engine found ready now. At most every LOG_LINE_REFRESH while it loads:
        # a bounded tail, but still a call to the dashboard and one to the node's agent.
        logs = await self._logs(sid) if logs_due(record, job, probe, self._ctx) else None
        return Observed(job, probe, logs)

    async def _probe(self, record: EngineStatus, url: str, served: str) -> EngineProbe:
        """One probe under the limiter. Why a serving engine's probe failed is logged: it may take the engine's
        pod out of the Service, and status keeps only the resulting health."""
        probe = await self._limited(lambda: self._prober.probe(url, served, self._ctx.api_key))
        if record.ready and not probe.ready:
            log.info("%s: engine %d's probe failed: %s", self._ctx.ref, record.index, probe.detail)
        return probe

    async def _loads(self, engines: Sequence[EngineStatus]) -> dict[int, LoadSample | None]:
        """The autoscaler's signal, read from the engines that serve after this pass (concurrently, under the
        limiter); nothing without spec.autoscaling."""
        if self._ctx.spec.autoscaling is None:
            return {}
        urls = {e.index: engine_base_url(e, self._ctx) for e in engines if e.ready}

        async def read(url: str | None) -> LoadSample | None:
            return None if url is None else await self._limited(lambda: self._prober.load(url))

        loads = await asyncio.gather(*(read(url) for url in urls.values()))
        return dict(zip(urls, loads, strict=True))

    # ---- acting ------------------------------------------------------------------------------------

    async def _carry_out(self, action: Action, tally: _Tally) -> EngineStatus | None:
        """Does what `action` says; returns the record status keeps (None: the engine is gone)."""
        log.debug("%s: %s", self._ctx.ref, action)
        match action:
            case Wait() | Unhealthy():
                return action.record
            case MarkReady() | Drain():
                tally.events += action.events
                return action.record
            case Submit():
                request = build_engine_job(self._ctx.spec, action.engine, self._options)
                submitted = await self._limited(lambda: self._ray.submit(request))
                if submitted.created:
                    tally.submissions += 1
                    tally.events.append(action.event)
                return action.pending
            case Restart() | GiveUp():
                logs = await self._logs(action.submission_id)
                if action.stop_job:
                    await self._stop(action.submission_id)
                tally.events += action.events
                return action.after(logs)
            case Retire():
                if action.record.submission_id:
                    await self._stop(action.record.submission_id)
                    if await self._still_ending(action):
                        return still_stopping(action.record, self._ctx)
                tally.events += action.events
                return await self._carry_out(action.replacement, tally) if action.replacement else None
            case _:
                assert_never(action)

    async def _get(self, sid: str) -> JobInfo | None:
        return await self._limited(lambda: self._ray.get(sid))

    async def _stop(self, sid: str) -> None:
        await self._limited(lambda: self._ray.stop(sid))

    async def _still_ending(self, action: Retire) -> bool:
        """A scaled-down engine's stopped job that Ray reports still RUNNING, and not overdue. A PENDING job
        has no supervisor actor on the pod yet: nothing there to wait for."""
        sid = action.record.submission_id
        if sid is None or not waits_for_job_end(action):
            return False
        stop_wait = ray_stop_wait_seconds(self._ctx.spec, self._options)
        if job_end_overdue(action.record, self._ctx, stop_wait):
            return False
        job = await self._get(sid)
        return job is not None and job.status == "RUNNING"

    async def _logs(self, sid: str) -> str | None:
        """Logs only explain a failure or a load: without them the failure is still recorded (and a loading
        engine's log is read again at the next pass). The state API refuses some reads with a 4xx (its
        concurrency limit answers 429): those are only a log missing, too."""
        try:
            return await self._limited(lambda: self._ray.logs(sid))
        except (RayError, RayRequestRejectedError):
            return None

    async def _limited(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self._limiter:
            return await call()
