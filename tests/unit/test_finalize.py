"""Deletion always ends: the finalizer is released once every engine job is stopped, at once when the
dashboard or the API server refuses the operator (retrying cannot help), and at the latest
settings.deletion_deadline_seconds after the deletion, each time with an Event saying what may be left.
The refusing dashboard is a real HTTP server on 127.0.0.1 answering 403, read through the operator's own
client; the API server is a stand-in for the Secret read only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from aiohttp import web

from rayvllm import API_GROUP, API_VERSION, KIND
from rayvllm.bounded import Bounds
from rayvllm.errors import KubernetesError, KubernetesRejectedError, TransientError
from rayvllm.models.rayapi import JobInfo
from rayvllm.models.status import EngineStatus, VLLMClusterStatus
from rayvllm.plans import deletion_overdue
from rayvllm.ray import Dashboards
from rayvllm.reasons import EventReason
from rayvllm.reconcile import Children, Clients, Outcome, finalize
from rayvllm.settings import Settings
from tests.unit.local_http import served

DELETED_AT = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
SETTINGS = Settings(deletion_deadline_seconds=300)
SID = "rayvllm-llama-r0-g1-a0-0123abcd"
BODY: dict[str, Any] = {
    "apiVersion": f"{API_GROUP}/{API_VERSION}",
    "kind": KIND,
    "metadata": {
        "namespace": "team",
        "name": "llama",
        "uid": "uid-1",
        "generation": 1,
        "deletionTimestamp": "2030-01-01T12:00:00Z",
    },
    "spec": {"model": {"source": "hf://org/model"}, "ray": {"image": "img"}},
    "status": VLLMClusterStatus(engines=[EngineStatus(index=0, submission_id=SID, generation=1)]).to_wire(),
}
CHILDREN = Children(ray_cluster={"metadata": {"name": "llama", "uid": "rc-uid"}})


class Kube:
    """The API server as finalize uses it: one Secret read (the dashboard's token)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        if self.error is not None:
            raise self.error
        return {"auth_token": "token"}


class Dashboard:
    """A dashboard whose engine job is in `status` (RUNNING for ever, or stopped at the first ask)."""

    base_url = "http://10.88.0.1:8265"

    def __init__(self, status: str) -> None:
        self.status = status
        self.stops: list[str] = []

    async def list(self) -> list[JobInfo]:
        return [JobInfo(submission_id=SID, status=self.status, metadata={f"{API_GROUP}/name": "llama"})]

    async def get(self, submission_id: str) -> JobInfo:
        return JobInfo(submission_id=submission_id, status=self.status)

    async def stop(self, submission_id: str) -> bool:
        self.stops.append(submission_id)
        return True

    async def aclose(self) -> None:
        pass


def clients(kube: Kube, dashboards: Any) -> Clients:
    return cast(
        Clients, SimpleNamespace(kube=kube, dashboards=dashboards, prober=None, limiter=asyncio.Semaphore(4))
    )


def fake(dashboard: Dashboard) -> Any:
    return SimpleNamespace(client=lambda url, token: dashboard)


def at(seconds: float) -> datetime:
    return DELETED_AT + timedelta(seconds=seconds)


def warning(outcome: Outcome) -> str:
    (event,) = [e for e in outcome.events if e.type == "Warning"]
    assert event.reason is EventReason.ENGINES_NOT_STOPPED
    return event.message


def test_every_job_stopped_releases_with_engines_stopped() -> None:
    ray = Dashboard("STOPPED")
    outcome = asyncio.run(finalize(clients(Kube(), fake(ray)), SETTINGS, BODY, CHILDREN, at(1)))
    assert [e.reason for e in outcome.events] == [EventReason.DELETING, EventReason.ENGINES_STOPPED]


def test_jobs_that_stay_running_hold_the_finalizer_until_the_deadline_then_release_it() -> None:
    ray = Dashboard("RUNNING")
    for seconds in (1, 150, 299.9):
        with pytest.raises(TransientError, match="waiting for 1 engine job"):
            asyncio.run(finalize(clients(Kube(), fake(ray)), SETTINGS, BODY, CHILDREN, at(seconds)))
    outcome = asyncio.run(finalize(clients(Kube(), fake(ray)), SETTINGS, BODY, CHILDREN, at(300)))
    message = warning(outcome)
    assert (
        "1 engine job(s) still RUNNING after 300s of deletion (RAYVLLM_DELETION_DEADLINE_SECONDS)" in message
    )
    assert f"Ray job(s) {SID} of team/llama may still run until its Ray pods are gone" in message
    # It was asked to stop every time: a job that ends meanwhile is not left behind.
    assert ray.stops == [SID] * 4


@asynccontextmanager
async def refusing_dashboard() -> AsyncIterator[str]:
    """A Ray dashboard that answers 403 to everything, for ever (a token KubeRay has since replaced)."""
    calls: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.Response(status=403, text="Unauthorized: invalid token")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    async with served(app) as url:
        yield url
    assert calls, "the dashboard was asked"


def test_a_dashboard_that_refuses_for_ever_releases_the_finalizer_at_once() -> None:
    async def scenario() -> Outcome:
        async with refusing_dashboard() as url, httpx.AsyncClient() as http:
            settings = SETTINGS.model_copy(update={"dashboard_url_template": url})
            io = clients(Kube(), Dashboards(http, Bounds(timeout=2, deadline=5)))
            return await finalize(io, settings, BODY, CHILDREN, at(1))

    message = warning(asyncio.run(scenario()))
    assert "finalizer released on an error that retrying cannot fix" in message
    assert "HTTP 403" in message and SID in message


@pytest.mark.parametrize(
    ("error", "released_at_once"),
    [
        (KubernetesRejectedError("get Secret team/llama-auth: HTTP 403 forbidden", 403), True),
        (KubernetesError("get Secret team/llama-auth: HTTP 503"), False),
    ],
)
def test_the_api_server_failing_the_token_read(error: Exception, released_at_once: bool) -> None:
    def run(seconds: float) -> Outcome:
        io = clients(Kube(error), fake(Dashboard("RUNNING")))
        return asyncio.run(finalize(io, SETTINGS, BODY, CHILDREN, at(seconds)))

    if released_at_once:
        assert "retrying cannot fix" in warning(run(1))
        return
    with pytest.raises(TransientError):
        run(1)
    assert "after 300s of deletion (RAYVLLM_DELETION_DEADLINE_SECONDS): get Secret" in warning(run(301))


def test_a_zero_deadline_releases_at_the_first_failure() -> None:
    io = clients(Kube(), fake(Dashboard("RUNNING")))
    settings = SETTINGS.model_copy(update={"deletion_deadline_seconds": 0})
    assert "still RUNNING after 0s" in warning(asyncio.run(finalize(io, settings, BODY, CHILDREN, at(0))))


def test_deletion_overdue() -> None:
    stamp = "2030-01-01T12:00:00Z"
    assert not deletion_overdue(stamp, at(299.999), 300)
    assert deletion_overdue(stamp, at(300), 300)
    assert not deletion_overdue(None, at(10_000), 300)
    assert not deletion_overdue("not a time", at(10_000), 300)
