"""The engine supervisor: one Ray job per engine replica, watched and restarted by the operator (Ray runs a
job once; nothing else restarts it). Called from reconcile; no kopf. Ray I/O goes through ray/, the
engine's own HTTP through engine.health, Kubernetes through k8s/.

Each engine's state lives in status.engines[] (written by reconcile), so a restarted operator adopts the
jobs it submitted: submission ids are deterministic per (namespace, name, replica, generation, attempt).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from rayvllm import API_GROUP
from rayvllm.engine.health import EngineProbe, probe_engine
from rayvllm.engine.job import EngineJobOptions, EngineRef, build_engine_job
from rayvllm.errors import RayError
from rayvllm.events import Event
from rayvllm.models.spec import ENGINE_SLOT_RESOURCE, VLLMClusterSpec
from rayvllm.models.status import EngineStatus
from rayvllm.ray import JobInfo, RayDashboardClient
from rayvllm.settings import Settings

LOG_LINES_KEPT = 20
LAST_FAILURE_LIMIT = 4000
# Token shapes that must never travel from engine logs into status or Events.
_REDACTIONS = (
    (re.compile(r"\bhf_[A-Za-z0-9]{6,}"), "<redacted>"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1<redacted>"),
    (
        re.compile(r"(?i)((?:api[_-]?key|token|password|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',]+"),
        r"\1<redacted>",
    ),
)


@dataclass(frozen=True)
class EngineContext:
    """What the supervisor needs to know about the VLLMCluster and the world around its engines."""

    namespace: str
    name: str
    generation: int
    spec: VLLMClusterSpec
    settings: Settings
    now: datetime
    api_key: str | None = None
    pod_by_ip: Mapping[str, str] = field(default_factory=dict)
    """Ray pods by IP: on KubeRay a Ray node's IP is its pod's IP, which finds the pod hosting an engine."""


@dataclass
class SupervisionResult:
    engines: list[EngineStatus]
    events: list[Event] = field(default_factory=list)
    submissions: int = 0
    """Jobs this pass created (adoptions of existing ids do not count)."""


def engine_config_hash(spec: VLLMClusterSpec) -> str:
    """Fingerprint of what an engine runs. A change means a new engine (upgradeStrategy Recreate);
    replicas, suspend and restart policy are not part of it, so scaling never restarts running engines."""
    relevant = {
        "model": spec.model.to_wire(),
        "engine": spec.engine.to_wire(),
        "image": spec.ray.image,
        "modelCache": spec.model_cache.to_wire() if spec.model_cache else None,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def log_tail(logs: str | None, lines: int = LOG_LINES_KEPT) -> str:
    if not logs:
        return ""
    kept = [line for line in logs.splitlines() if line.strip()][-lines:]
    return redact("\n".join(kept))


def failure_text(reason: str, logs: str | None) -> str:
    tail = log_tail(logs)
    text = f"{reason}\n--- last log lines ---\n{tail}" if tail else reason
    return text if len(text) <= LAST_FAILURE_LIMIT else "..." + text[-(LAST_FAILURE_LIMIT - 3) :]


class Supervisor:
    def __init__(self, ray: RayDashboardClient, ctx: EngineContext) -> None:
        self.ray = ray
        self.ctx = ctx
        self.config_hash = engine_config_hash(ctx.spec)
        self.options = EngineJobOptions(
            host=ctx.settings.engine_bind_host,
            python=ctx.settings.engine_python,
            extra_env=ctx.settings.engine_job_env,
        )
        self.result = SupervisionResult(engines=[])

    # ---- the pass ----------------------------------------------------------------------------------

    async def run(self, previous: Sequence[EngineStatus], may_submit: bool) -> SupervisionResult:
        """Observe and act on every engine once. `may_submit` is False while the RayCluster is not ready:
        running engines are still watched, but nothing new is launched."""
        spec = self.ctx.spec
        by_index = {e.index: e for e in previous}
        draining: list[EngineStatus] = []
        for extra in sorted(i for i in by_index if i >= spec.replicas or spec.suspend):
            engine = by_index[extra]
            if spec.suspend or self._drained(engine):
                await self._retire(engine, "scaled down" if not spec.suspend else "suspended")
            else:
                draining.append(self._drain(engine))
        if spec.suspend:
            return self.result
        free_slots = await self._free_slots() if may_submit else 0
        for index in range(spec.replicas):
            engine = await self._current(by_index.get(index), index)
            if engine.submission_id is None:
                if (
                    not engine.budget_exhausted
                    and may_submit
                    and free_slots > 0
                    and self._backoff_over(engine)
                ):
                    engine = await self._submit(engine)
                    free_slots -= 1
            else:
                engine = await self._watch(engine)
            self.result.engines.append(engine)
        self.result.engines.extend(draining)
        return self.result

    async def stop_all(self, previous: Sequence[EngineStatus]) -> int:
        """Stop every job of this VLLMCluster, those in status and any other carrying its metadata (one
        submitted just before a crash). Returns how many are still running: the caller waits for 0, so
        nothing is left running in Ray when the object goes."""
        ids = {e.submission_id for e in previous if e.submission_id}
        for job in await self.ray.list():
            meta = job.metadata or {}
            mine = (
                meta.get(f"{API_GROUP}/namespace") == self.ctx.namespace
                and meta.get(f"{API_GROUP}/name") == self.ctx.name
            )
            if mine:
                ids.add(job.submission_id)
        running = 0
        for sid in sorted(ids):
            current = await self.ray.get(sid)
            if current is not None and not current.terminal:
                await self.ray.stop(sid)
                # Ray 2.60 cannot stop a PENDING job until its supervisor actor is placed: waiting
                # for it could hold the finalizer for RAY_JOB_START_TIMEOUT_SECONDS, so only RUNNING
                # jobs are waited for.
                running += current.status == "RUNNING"
        return running

    # ---- steps -------------------------------------------------------------------------------------

    async def _current(self, engine: EngineStatus | None, index: int) -> EngineStatus:
        """The engine's record, replaced by a fresh one when the engine settings changed (Recreate)."""
        if engine is not None and engine.config_hash == self.config_hash:
            return engine
        if engine is not None:
            await self._retire(engine, "engine settings changed (upgradeStrategy Recreate)")
            self._event(
                "Normal", "EngineRecreating", f"engine {index}: settings changed, starting a new engine"
            )
        return EngineStatus(index=index, generation=self.ctx.generation, config_hash=self.config_hash)

    def _ref(self, engine: EngineStatus) -> EngineRef:
        return EngineRef(
            self.ctx.namespace, self.ctx.name, engine.index, engine.generation or 0, engine.attempt
        )

    async def _submit(self, engine: EngineStatus) -> EngineStatus:
        request = build_engine_job(self.ctx.spec, self._ref(engine), self.options)
        submitted = await self.ray.submit(request)
        if submitted.created:
            self.result.submissions += 1
            self._event(
                "Normal",
                "EngineSubmitted",
                f"engine {engine.index}: submitted Ray job {submitted.submission_id} (attempt {engine.attempt})",
            )
        return engine.model_copy(
            update={
                "submission_id": submitted.submission_id,
                "job_status": "PENDING",
                "started_at": self.ctx.now,
                "restart_after": None,
                "unhealthy_since": None,
                "ready": False,
            }
        )

    async def _watch(self, engine: EngineStatus) -> EngineStatus:
        assert engine.submission_id is not None
        job = await self.ray.get(engine.submission_id)
        if job is None:
            return await self._fail(
                engine, None, "the Ray job is gone (Ray head restarted without GCS fault tolerance?)"
            )
        engine = engine.model_copy(update={"job_status": job.status})
        if job.terminal:
            detail = f": {job.message}" if job.message else ""
            return await self._fail(engine, job, f"Ray job {job.status}{detail}")
        startup_over = self._startup_timed_out(engine)
        if job.status == "PENDING":
            if startup_over:
                return await self._fail(
                    engine,
                    job,
                    f"Ray job still PENDING after startupTimeoutSeconds: {job.message or 'no resources?'}",
                )
            return engine
        url = self._engine_url(job)
        if url is None:
            return engine
        probe = await probe_engine(
            url,
            self.ctx.spec.model.served_name(self.ctx.name),
            api_key=self.ctx.api_key,
            http_timeout=self.ctx.settings.http_timeout_seconds,
        )
        pod = self.ctx.pod_by_ip.get(job.driver_node_ip or "")
        engine = engine.model_copy(update={"url": f"{url}/v1", "pod_name": pod})
        return await self._judge(engine, job, probe, startup_over)

    async def _judge(
        self, engine: EngineStatus, job: JobInfo, probe: EngineProbe, startup_over: bool
    ) -> EngineStatus:
        if probe.ready:
            if not engine.ready:
                self._event("Normal", "EngineReady", f"engine {engine.index}: ready at {engine.url}")
            return engine.model_copy(update={"ready": True, "unhealthy_since": None})
        if engine.ready or engine.unhealthy_since is not None:
            since = engine.unhealthy_since or self.ctx.now
            if self.ctx.now - since >= timedelta(seconds=self.ctx.settings.unhealthy_grace_seconds):
                return await self._fail(
                    engine,
                    job,
                    f"engine unhealthy for over {self.ctx.settings.unhealthy_grace_seconds:.0f}s: {probe.detail}",
                )
            return engine.model_copy(update={"ready": False, "unhealthy_since": since})
        if startup_over:
            return await self._fail(
                engine,
                job,
                f"not ready within startupTimeoutSeconds ({self.ctx.spec.engine.startup_timeout_seconds}s): {probe.detail}",
            )
        return engine

    async def _fail(self, engine: EngineStatus, job: JobInfo | None, reason: str) -> EngineStatus:
        """Record why, stop what is left of the job, then either schedule the next attempt after backoff
        or, with the restart budget spent, leave the engine down."""
        sid = engine.submission_id
        logs = await self._logs(sid) if sid else None
        if sid and (job is None or not job.terminal):
            await self.ray.stop(sid)
        failure = failure_text(f"attempt {engine.attempt}: {reason}", logs)
        policy = self.ctx.spec.restart_policy
        base = {"ready": False, "last_failure": failure, "unhealthy_since": None, "url": None}
        if engine.restarts >= policy.max_restarts:
            self._event(
                "Warning",
                "EngineFailed",
                f"engine {engine.index}: {reason}; restartPolicy.maxRestarts ({policy.max_restarts}) spent, giving up",
            )
            return engine.model_copy(update={**base, "budget_exhausted": True})
        delay = policy.backoff_before_restart(engine.restarts)
        self._event(
            "Warning",
            "EngineRestarting",
            f"engine {engine.index}: {reason}; restart {engine.restarts + 1}/{policy.max_restarts} in {delay}s",
        )
        return engine.model_copy(
            update={
                **base,
                "restarts": engine.restarts + 1,
                "attempt": engine.attempt + 1,
                "submission_id": None,
                "restart_after": self.ctx.now + timedelta(seconds=delay),
            }
        )

    async def _retire(self, engine: EngineStatus, why: str) -> None:
        if engine.submission_id:
            await self.ray.stop(engine.submission_id)
            self._event(
                "Normal",
                "EngineStopped",
                f"engine {engine.index}: stopped Ray job {engine.submission_id} ({why})",
            )

    def _drain(self, engine: EngineStatus) -> EngineStatus:
        """A scaled-down engine that served: out of the Service (not ready) until it has drained."""
        if engine.draining_since is None:
            self._event(
                "Normal",
                "EngineDraining",
                f"engine {engine.index}: scaled down; out of the Service, stopping in "
                f"{self.ctx.settings.drain_seconds:g}s",
            )
        return engine.model_copy(
            update={"ready": False, "draining_since": engine.draining_since or self.ctx.now}
        )

    def _drained(self, engine: EngineStatus) -> bool:
        """Nothing to drain (it never served, or its job is over), or it has been out of the Service long
        enough."""
        if engine.draining_since is None:
            return not engine.ready or engine.pod_name is None
        return self.ctx.now - engine.draining_since >= timedelta(seconds=self.ctx.settings.drain_seconds)

    # ---- helpers -----------------------------------------------------------------------------------

    async def _free_slots(self) -> int:
        """How many engines may be submitted now: free API-server slots on GPU workers and, for the ray
        executor, enough GPUs in the cluster for every engine the spec asks for."""
        resources = await self.ray.cluster_resources()
        slots = resources.available(ENGINE_SLOT_RESOURCE)
        if slots is None:
            slots = resources.total(ENGINE_SLOT_RESOURCE)
        if self.ctx.spec.engine.executor_backend == "ray" and resources.gpus_total < self.ctx.spec.total_gpus:
            return 0
        return int(slots)

    def _backoff_over(self, engine: EngineStatus) -> bool:
        return engine.restart_after is None or self.ctx.now >= engine.restart_after

    def _startup_timed_out(self, engine: EngineStatus) -> bool:
        if engine.started_at is None or engine.ready or engine.unhealthy_since is not None:
            return False
        return self.ctx.now - engine.started_at > timedelta(
            seconds=self.ctx.spec.engine.startup_timeout_seconds
        )

    def _engine_url(self, job: JobInfo) -> str | None:
        host = self.ctx.settings.engine_host_override or job.driver_node_ip
        return f"http://{host}:{self.ctx.spec.engine.port}" if host else None

    async def _logs(self, sid: str) -> str | None:
        try:
            return await self.ray.logs(sid)
        except RayError:
            return None

    def _event(self, kind: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.result.events.append(Event(kind, reason, message))
