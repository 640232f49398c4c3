"""Every answer the operator reads from a Ray dashboard or an engine is bounded: in time (a total deadline,
not only a timeout per read), in size (a cap; of a log, only its end), and in share (one VLLMCluster's
slow calls hold only its own part of the shared pool). Proven against a real HTTP server on 127.0.0.1
that plays a hostile tenant's head: it trickles bytes, claims gigabytes, or compresses."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any

import httpx
import pytest
from aiohttp import web

from rayvllm.bounded import Bounds, DeadlineExceeded, fetch
from rayvllm.engine.health import EngineProber, probe_engine
from rayvllm.engine.probe import EngineState
from rayvllm.errors import AnswerTooLargeError, RayError
from rayvllm.ray import RayDashboardClient, RetryPolicy
from rayvllm.ray.client import LOG_TAIL_LINES
from rayvllm.supervisor import Slots
from tests.unit.local_http import served

KIB, MIB, GIB = 1024, 1024 * 1024, 1024 * 1024 * 1024
BOUNDS = Bounds(timeout=1.0, deadline=1.5, body_bytes=1 * MIB, tail_bytes=8 * KIB)
FAST_RETRY = RetryPolicy(attempts=3, backoff_seconds=0.05)


def job(sid: str, node: str | None = "node-1") -> dict[str, Any]:
    return {"submission_id": sid, "status": "FAILED", "entrypoint": "python -m vllm", "driver_node_id": node}


async def trickle(request: web.Request) -> web.StreamResponse:
    """One byte every 0.2 s, for ever: each read finishes well within any per-read timeout."""
    response = web.StreamResponse()
    await response.prepare(request)
    while True:
        await response.write(b" ")
        await asyncio.sleep(0.2)


async def endless(request: web.Request, claimed: int = 2 * GIB) -> web.StreamResponse:
    """Claims `claimed` bytes and sends log lines until the reader goes away."""
    response = web.StreamResponse(headers={"Content-Length": str(claimed)})
    await response.prepare(request)
    line = b"INFO still printing the same progress line, again and again\n" * 1000
    sent = 0
    while sent < claimed:
        await response.write(line)
        sent += len(line)
    return response


class FakeHead:
    """A Ray dashboard and a vLLM engine in one aiohttp app; `hits` counts requests by path."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.log_params: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_get("/api/jobs/", self.jobs)
        self.app.router.add_get("/api/jobs/{sid}", self.job)
        self.app.router.add_get("/api/jobs/{sid}/logs", self.whole_log)
        self.app.router.add_get("/api/v0/logs/file", self.log_tail)
        self.app.router.add_get("/health", self.health)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_get("/metrics", self.metrics)

    def hit(self, request: web.Request) -> None:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1

    async def jobs(self, request: web.Request) -> web.StreamResponse:
        self.hit(request)
        # 10 MiB of job records, chunked (no Content-Length): only counting bytes stops it.
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"[")
        record = json.dumps(job("x" * 1000)).encode() + b","
        for _ in range(10 * MIB // len(record)):
            await response.write(record)
        await response.write(b"{}]")
        return response

    async def job(self, request: web.Request) -> web.StreamResponse:
        self.hit(request)
        sid = request.match_info["sid"]
        if sid == "slow":
            return await trickle(request)
        if sid == "huge":
            return web.Response(body=b"{}", headers={"Content-Length": str(2 * GIB)})
        if sid == "gzip":
            body = gzip.compress(json.dumps(job(sid)).encode())
            return web.Response(
                body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
            )
        if sid == "missing":
            return web.Response(status=404, text="Job missing does not exist")
        return web.json_response(job(sid, node=None if sid == "pending" else "node-1"))

    async def whole_log(self, request: web.Request) -> web.Response:
        self.hit(request)
        return web.Response(status=500, text="the operator must not read a whole log")

    async def log_tail(self, request: web.Request) -> web.StreamResponse:
        self.hit(request)
        self.log_params.append(dict(request.query))
        if request.query.get("submission_id") == "short":
            return web.Response(text="INFO starting\nERROR out of memory\n")
        # A head that ignores `lines` and streams a 2 GiB log.
        return await endless(request)

    async def health(self, request: web.Request) -> web.StreamResponse:
        self.hit(request)
        if request.host.startswith("localhost"):
            return await trickle(request)
        return web.Response(text="")

    async def models(self, request: web.Request) -> web.Response:
        self.hit(request)
        return web.json_response({"data": [{"id": "tiny"}]})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        self.hit(request)
        return await endless(request, claimed=64 * MIB)


def serving(head: FakeHead) -> AbstractAsyncContextManager[str]:
    return served(head.app)


def run(scenario: Callable[[FakeHead, str], Awaitable[None]]) -> FakeHead:
    head = FakeHead()

    async def main() -> None:
        async with serving(head) as url:
            await scenario(head, url)

    asyncio.run(main())
    return head


def dashboard(url: str, client: httpx.AsyncClient | None = None) -> RayDashboardClient:
    return RayDashboardClient(url, bounds=BOUNDS, retry=FAST_RETRY, client=client)


# ---- deadlines -------------------------------------------------------------------------------------------


def test_a_dashboard_that_trickles_bytes_is_cut_at_the_call_s_deadline() -> None:
    async def scenario(_: FakeHead, url: str) -> None:
        async with dashboard(url) as ray:
            started = time.monotonic()
            with pytest.raises(RayError, match=r"no whole answer within 1.5s.*RAYVLLM_HTTP_DEADLINE_SECONDS"):
                await ray.get("slow")
            # Each byte came within the 1 s read timeout: only the deadline ended the call, retries included.
            assert time.monotonic() - started < 2.5

    run(scenario)


def test_an_engine_that_trickles_is_unresponsive_within_the_deadline() -> None:
    async def scenario(_: FakeHead, url: str) -> None:
        started = time.monotonic()
        probe = await probe_engine(url.replace("127.0.0.1", "localhost"), "tiny", bounds=BOUNDS)
        assert probe.state is EngineState.UNRESPONSIVE, probe
        assert "DeadlineExceeded" in probe.detail
        assert time.monotonic() - started < 2.5
        # The same server, answering at once, serves.
        assert (await probe_engine(url, "tiny", bounds=BOUNDS)).state is EngineState.READY

    run(scenario)


# ---- sizes ---------------------------------------------------------------------------------------------


def test_json_over_the_cap_is_an_error_not_a_read() -> None:
    async def scenario(head: FakeHead, url: str) -> None:
        async with dashboard(url) as ray:
            with pytest.raises(
                RayError, match=r"over the cap of 1048576 bytes.*RAYVLLM_HTTP_BODY_LIMIT_BYTES"
            ):
                await ray.list()
            with pytest.raises(RayError, match=f"answer of {2 * GIB} bytes, over the cap"):
                await ray.get("huge")
        # Not asked again: the same answer would come.
        assert head.hits["/api/jobs/"] == 1
        assert head.hits["/api/jobs/huge"] == 1

    run(scenario)


def test_a_compressed_answer_is_refused_and_a_plain_one_asked_for() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("accept-encoding", ""))
        return httpx.Response(200, content=b"x")

    async def scenario(_: FakeHead, url: str) -> None:
        async with dashboard(url) as ray:
            with pytest.raises(RayError, match="gzip-encoded answer could inflate past any cap"):
                await ray.get("gzip")
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await fetch(client, "GET", "http://engine/metrics", BOUNDS)
        assert seen == ["identity"]

    run(scenario)


def test_metrics_over_the_cap_say_nothing() -> None:
    async def scenario(_: FakeHead, url: str) -> None:
        async with httpx.AsyncClient() as client:
            assert await EngineProber(client, BOUNDS).load(url) is None
            with pytest.raises(AnswerTooLargeError):
                await fetch(client, "GET", f"{url}/metrics", BOUNDS)

    run(scenario)


# ---- log tails -------------------------------------------------------------------------------------------


def test_a_log_tail_costs_the_same_for_a_2_gib_log() -> None:
    async def scenario(head: FakeHead, url: str) -> None:
        async with dashboard(url) as ray:
            started = time.monotonic()
            tail = await ray.logs("big")
            elapsed = time.monotonic() - started
        assert tail is not None
        # At most the tail's bytes are kept, in whole lines; reading stopped at the cap (1 MiB of 2 GiB).
        assert 0 < len(tail.encode()) <= BOUNDS.tail_bytes
        assert tail.startswith("INFO still printing") and tail.endswith("again and again\n")
        assert elapsed < 1.5
        # The whole-log route of the Jobs API was never asked; the state API was, for the last lines only.
        assert "/api/jobs/big/logs" not in head.hits
        (params,) = head.log_params
        assert params == {
            "submission_id": "big",
            "node_id": "node-1",
            "lines": str(LOG_TAIL_LINES),
            "timeout": "1",
        }

    run(scenario)


def test_a_short_log_is_read_whole_and_an_unknown_or_driverless_job_has_none() -> None:
    async def scenario(head: FakeHead, url: str) -> None:
        async with dashboard(url) as ray:
            assert await ray.logs("short") == "INFO starting\nERROR out of memory\n"
            assert await ray.logs("missing") is None
            assert await ray.logs("pending") == ""
        assert len(head.log_params) == 1

    run(scenario)


# ---- fair shares ---------------------------------------------------------------------------------------


def test_one_object_s_slow_head_holds_only_its_own_share_of_the_pool() -> None:
    """Object A has 12 calls to a head that trickles; object B's calls still go through at once, over the
    same connection pool, because A holds at most its share (2) of the shared places (4)."""

    async def scenario(_: FakeHead, url: str) -> None:
        shared = asyncio.Semaphore(4)
        a, b = Slots(shared, asyncio.Semaphore(2)), Slots(shared, asyncio.Semaphore(2))
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=4)) as pool:
            # A's calls would outlast the test: only B's may end.
            slow = RayDashboardClient(url, bounds=replace(BOUNDS, deadline=60), retry=FAST_RETRY, client=pool)
            fine = dashboard(url, pool)

            async def call(slots: Slots, ray: RayDashboardClient, sid: str) -> Any:
                async with slots:
                    return await ray.get(sid)

            stuck = [asyncio.create_task(call(a, slow, "slow")) for _ in range(12)]
            await asyncio.sleep(0.3)
            # Without a share of its own per object, A would hold every shared place and B would wait here.
            answers = await asyncio.wait_for(
                asyncio.gather(*(call(b, fine, f"fine-{i}") for i in range(6))), 2.0
            )
            assert [job.submission_id for job in answers] == [f"fine-{i}" for i in range(6)]
            assert not any(task.done() for task in stuck)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)

    run(scenario)


def test_slots_give_back_the_own_place_when_waiting_for_a_shared_one_is_cancelled() -> None:
    async def scenario() -> None:
        shared, own = asyncio.Semaphore(0), asyncio.Semaphore(1)
        waiting = asyncio.create_task(Slots(shared, own).__aenter__())
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not own.locked()

    asyncio.run(scenario())


def test_deadline_exceeded_is_an_httpx_timeout() -> None:
    # Callers map httpx timeouts already (the engine probe: Unresponsive; the dashboard: "timed out").
    assert issubclass(DeadlineExceeded, httpx.TimeoutException)
