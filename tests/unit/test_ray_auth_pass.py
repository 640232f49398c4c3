"""Fail closed: a supervision pass submits an engine only to a Ray head whose dashboard refused a request
without KubeRay's token and answered it with the token, checks each head once (again when the head pod
is replaced or restarts), and otherwise submits nothing, says RayAuthNotEnforced in status and a Warning
Event naming what to upgrade, and checks again at the next pass.

The dashboard is a real HTTP server on 127.0.0.1 read through the operator's own client; it plays Ray 2.60's
dashboard: its token middleware (ray/_private/authentication/http_token_authentication.py: 401 without a
token, 403 with a wrong one, in the Authorization or X-Ray-Authorization header) guards every route but the
public ones (ray/dashboard/http_server_head.py), or, as an old Ray or a Ray started without RAY_AUTH_MODE,
none. The API server is a stand-in for the token Secret's read and the status write only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from aiohttp import web

from rayvllm.bounded import Bounds
from rayvllm.engine.health import EngineProber
from rayvllm.errors import RayAuthError
from rayvllm.identity import ClusterRef
from rayvllm.models import Phase, parse_spec
from rayvllm.models.status import ConditionType, VLLMClusterStatus
from rayvllm.observed import PodCounts, pod_view
from rayvllm.placement import ENGINE_SLOT_RESOURCE
from rayvllm.ray import Dashboards
from rayvllm.reasons import EventReason, Reason
from rayvllm.reconcile import Children, Clients, Memory, Outcome, Pass, supervise_engines, write_status
from rayvllm.settings import Settings
from tests.unit.local_http import served

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
TOKEN = "kuberay-generated-token"
SPEC = parse_spec(
    {"model": {"source": "hf://org/model"}, "engine": {"executorBackend": "mp"}, "ray": {"image": "img"}}
)
BODY: dict[str, Any] = {"metadata": {"namespace": "team", "name": "llama", "uid": "uid-1", "generation": 1}}
# Ray 2.60's public routes (dashboard/http_server_head.py); everything else needs the token.
PUBLIC = {
    "/",
    "/favicon.ico",
    "/api/authentication_mode",
    "/api/authenticate",
    "/api/healthz",
    "/api/gcs_healthz",
}


@dataclass
class RayHead:
    """A Ray head's dashboard. `token`: the one its middleware wants (None: auth off, as Ray before 2.52
    or a head started without RAY_AUTH_MODE=token). Records every request and every submission."""

    token: str | None
    ray_version: str = "2.60.0"
    session: str = "session_2030-01-01_12-00-00_000000_1"
    requests: list[tuple[str, str, bool]] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        @web.middleware
        async def token_auth(request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
            sent = request.headers.get("Authorization") or request.headers.get("X-Ray-Authorization")
            self.requests.append((request.method, request.path, sent is not None))
            if self.token is None or request.path in PUBLIC:
                return await handler(request)
            if not sent:
                return web.Response(status=401, text="Unauthorized: Missing authentication token")
            if sent != f"Bearer {self.token}":
                return web.Response(status=403, text="Forbidden: Invalid authentication token")
            return await handler(request)

        app = web.Application(middlewares=[token_auth])
        app.router.add_get("/api/gcs_healthz", self.gcs_healthz)
        app.router.add_get("/api/version", self.version)
        app.router.add_get("/api/v0/nodes", self.nodes)
        app.router.add_get("/api/cluster_status", self.cluster_status)
        app.router.add_get("/api/jobs/{sid}", self.job)
        app.router.add_post("/api/jobs/", self.submit)
        return app

    async def gcs_healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="success")

    async def cluster_status(self, _: web.Request) -> web.Response:
        return web.json_response({"result": True, "data": {}})  # no autoscaler report: totals only

    async def version(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "version": "3",
                "ray_version": self.ray_version,
                "ray_commit": "abc",
                "session_name": self.session,
            }
        )

    async def nodes(self, _: web.Request) -> web.Response:
        worker = {
            "node_id": "n1",
            "node_ip": "10.88.0.7",
            "is_head_node": False,
            "state": "ALIVE",
            "resources_total": {"CPU": 4.0, ENGINE_SLOT_RESOURCE: 1.0},
        }
        return web.json_response({"result": True, "data": {"result": {"result": [worker], "total": 1}}})

    async def job(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        if sid not in self.submitted:
            return web.Response(status=404, text=f"Job {sid} does not exist")
        return web.json_response({"submission_id": sid, "status": "PENDING"})

    async def submit(self, request: web.Request) -> web.Response:
        sid = json.loads(await request.read())["submission_id"]
        self.submitted.append(sid)
        return web.json_response({"submission_id": sid})

    def asked_version(self) -> list[bool]:
        """Whether each GET /api/version carried a token."""
        return [sent for method, path, sent in self.requests if path == "/api/version"]


@dataclass
class Kube:
    """The API server as these steps use it: the token Secret's read and the status write."""

    token: str | None = TOKEN
    statuses: list[dict[str, Any]] = field(default_factory=list)

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        assert (namespace, name) == ("team", "llama")
        return None if self.token is None else {"auth_token": self.token}

    async def replace_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.statuses.append(status)


def ray_pods(head: str = "llama-head-x7k2p", head_restarts: int = 0) -> Children:
    def pod(name: str, node_type: str, restarts: int = 0) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "labels": {"ray.io/node-type": node_type}},
            "status": {
                "phase": "Running",
                "podIP": "10.88.0.7" if node_type == "worker" else "10.88.0.6",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "ray", "restartCount": restarts}],
            },
        }

    return Children(pods=(pod_view(pod(head, "head", head_restarts)), pod_view(pod("llama-gpu-0", "worker"))))


def stored_ray_cluster(auth: bool = True) -> dict[str, Any]:
    """The RayCluster as the API server stored it: an older KubeRay's CRD prunes spec.authOptions."""
    spec: dict[str, Any] = {"rayVersion": "2.60.0"}
    if auth:
        spec["authOptions"] = {"mode": "token"}
    return {"metadata": {"name": "llama", "uid": "rc-uid", "resourceVersion": "7"}, "spec": spec}


@dataclass
class World:
    head: RayHead
    kube: Kube
    memory: Memory = field(default_factory=Memory)
    outcomes: list[Outcome] = field(default_factory=list)
    passes: list[Pass] = field(default_factory=list)

    def last_status(self) -> VLLMClusterStatus:
        return VLLMClusterStatus.model_validate(self.kube.statuses[-1])


def serving(head: RayHead) -> AbstractAsyncContextManager[str]:
    return served(head.app())


def run_passes(world: World, *children: Children, auth_options: bool = True) -> World:
    """One supervision pass and status write per `children` (the Ray pods as the watch has them then), each
    over a ready RayCluster, with the world's memory kept between them as the operator keeps it."""

    async def scenario() -> None:
        async with serving(world.head) as url, httpx.AsyncClient() as http:
            bounds = Bounds(timeout=2, deadline=5)
            settings = Settings(dashboard_url_template=url, resync_seconds=2)
            io = cast(
                Clients,
                SimpleNamespace(
                    kube=world.kube,
                    dashboards=Dashboards(http, bounds),
                    prober=EngineProber(http, bounds),
                    limiter=asyncio.Semaphore(4),
                ),
            )
            for seen in children:
                stored = world.kube.statuses[-1] if world.kube.statuses else None
                body = {**BODY, "status": stored} if stored else BODY
                previous = VLLMClusterStatus.model_validate(stored) if stored else None
                p = Pass(ClusterRef.of(body), body, settings, T0, seen, world.memory, previous, spec=SPEC)
                p.engines = list(previous.engines) if previous else []
                p.ray_cluster = stored_ray_cluster(auth_options)
                p.pods = PodCounts(head_ready=True, ready_workers=SPEC.desired_workers)
                await supervise_engines(p, io)
                await write_status(p, io)
                world.passes.append(p)
                world.outcomes.append(p.outcome)

    asyncio.run(scenario())
    return world


def event_reasons(world: World) -> list[tuple[str, str]]:
    return [(e.type, str(e.reason)) for outcome in world.outcomes for e in outcome.events]


# ---- enforced: checked once per head, then engines are submitted ---------------------------------------------


def test_a_head_that_enforces_the_token_is_checked_once_and_gets_its_engine() -> None:
    world = run_passes(World(RayHead(token=TOKEN), Kube()), ray_pods(), ray_pods())
    assert world.head.asked_version() == [False, True]  # refused without, answered with; not asked again
    assert len(world.head.submitted) == 1
    assert ("Normal", EventReason.RAY_AUTH_VERIFIED) in event_reasons(world)
    (verified,) = [e for o in world.outcomes for e in o.events if e.reason is EventReason.RAY_AUTH_VERIFIED]
    assert "RayCluster llama (Ray 2.60.0) refuses a request without the token (HTTP 401)" in verified.message
    assert world.passes[0].problems == []


@pytest.mark.parametrize(
    "next_head",
    [ray_pods(head="llama-head-9qv4m"), ray_pods(head_restarts=1)],
    ids=["a new head pod", "the head's Ray restarted in its pod"],
)
def test_a_replaced_or_restarted_head_is_checked_again(next_head: Children) -> None:
    world = run_passes(World(RayHead(token=TOKEN), Kube()), ray_pods(), next_head)
    assert world.head.asked_version() == [False, True, False, True]
    verified = [r for r in event_reasons(world) if r[1] == EventReason.RAY_AUTH_VERIFIED]
    assert len(verified) == 2


def test_only_the_auth_check_goes_without_the_token() -> None:
    world = run_passes(World(RayHead(token=TOKEN), Kube()), ray_pods())
    without = [(method, path) for method, path, sent in world.head.requests if not sent]
    assert without == [("GET", "/api/version")]
    assert ("POST", "/api/jobs/", True) in world.head.requests


# ---- not enforced: nothing submitted, RayAuthNotEnforced, a Warning Event, checked again -----------------------


@dataclass(frozen=True)
class Open:
    head: RayHead
    kube: Kube
    auth_options: bool
    words: tuple[str, ...]


OPEN = {
    "Ray without auth (old Ray)": Open(
        RayHead(token=None, ray_version="2.49.0"),
        Kube(),
        True,
        ("answers without a token", "Ray 2.49.0, which ignores RAY_AUTH_MODE"),
    ),
    "authOptions pruned by an old KubeRay": Open(
        RayHead(token=None), Kube(token=None), False, ("no spec.authOptions.mode token", "upgrade KubeRay")
    ),
    "Ray ignoring the auth mode although asked": Open(
        RayHead(token=None), Kube(), True, ("Ray 2.60.0 runs with token auth off",)
    ),
    "token Secret missing": Open(
        RayHead(token=TOKEN), Kube(token=None), True, ("token Secret team/llama (key auth_token)",)
    ),
    "token Secret empty": Open(
        RayHead(token=TOKEN), Kube(token=""), True, ("token Secret team/llama (key auth_token)",)
    ),
}


@pytest.mark.parametrize("case", OPEN.values(), ids=OPEN.keys())
def test_a_head_that_does_not_enforce_the_token_gets_nothing(case: Open) -> None:
    world = run_passes(World(case.head, case.kube), ray_pods(), ray_pods(), auth_options=case.auth_options)
    assert world.head.submitted == []
    # Nothing but the health check and the auth check was asked of the dashboard, at each pass.
    assert {path for _, path, _ in world.head.requests} == {"/api/gcs_healthz", "/api/version"}
    assert len(world.head.asked_version()) >= 2

    status = world.last_status()
    assert status.phase == Phase.FAILED
    ready = status.condition(ConditionType.READY)
    degraded = status.condition(ConditionType.DEGRADED)
    assert ready is not None and ready.status == "False" and ready.reason == Reason.RAY_AUTH_NOT_ENFORCED
    assert degraded is not None and degraded.status == "True"
    assert degraded.reason == Reason.RAY_AUTH_NOT_ENFORCED
    for word in (*case.words, "nothing is submitted", "KubeRay 1.6.0 or later", "Ray 2.52.0 or later"):
        assert word in degraded.message

    # One Warning Event with the reason, naming the upgrades, at the first pass only: not one per resync.
    warnings = [e for o in world.outcomes for e in o.events if e.reason is Reason.RAY_AUTH_NOT_ENFORCED]
    assert len(warnings) == 1 and warnings[0].type == "Warning"
    assert "KubeRay 1.6.0 or later" in warnings[0].message and "Ray 2.52.0 or later" in warnings[0].message
    assert ("Warning", Phase.FAILED.value) in event_reasons(world)
    assert not [r for r in event_reasons(world) if r[1] == EventReason.RAY_AUTH_VERIFIED]


def test_once_the_head_enforces_the_token_the_next_pass_submits() -> None:
    world = World(RayHead(token=None), Kube())
    run_passes(world, ray_pods())
    assert world.head.submitted == []
    world.head.token = TOKEN  # KubeRay upgraded, the head restarted with RAY_AUTH_MODE=token
    run_passes(world, ray_pods(head="llama-head-9qv4m"))
    assert len(world.head.submitted) == 1
    status = world.last_status()
    assert status.phase != Phase.FAILED
    assert all(c.reason != Reason.RAY_AUTH_NOT_ENFORCED for c in status.conditions)


def test_a_refused_token_submits_nothing_and_is_read_again() -> None:
    world = World(RayHead(token="a-newer-token"), Kube())
    with pytest.raises(RayAuthError, match="refused the token of Secret team/llama"):
        run_passes(world, ray_pods())
    assert world.head.submitted == []
    assert world.memory.ray_token_of is None and world.memory.ray_auth_verified_for is None
