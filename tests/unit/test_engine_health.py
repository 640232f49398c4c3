"""How probe answers map to engine states. The answers are vLLM's documented ones, played by an httpx
MockTransport (a dropped connection: by a real server on 127.0.0.1); the real engine is probed by the e2e
tier (tests/e2e/test_shared_engine.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from rayvllm.bounded import Bounds
from rayvllm.engine.health import probe_engine
from rayvllm.engine.probe import EngineProbe, EngineState

Handler = Callable[[httpx.Request], httpx.Response]


def probe(handler: Handler, api_key: str | None = None) -> EngineProbe:
    async def run() -> EngineProbe:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await probe_engine("http://engine:8000/", "tiny", api_key=api_key, client=client)

    return asyncio.run(run())


def vllm(health: int = 200, models: list[str] | None = None, key: str | None = None) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(health)
        if request.url.path == "/v1/models":
            if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
                return httpx.Response(401, json={"error": "Unauthorized"})
            return httpx.Response(200, json={"object": "list", "data": [{"id": m} for m in models or []]})
        return httpx.Response(404)

    return handle


def test_ready_when_healthy_and_serving_the_name() -> None:
    result = probe(vllm(models=["tiny"]))
    assert result.ready and result.served_models == ("tiny",)


def test_api_key_is_sent_to_v1_only() -> None:
    seen: dict[str, str | None] = {}

    def handle(request: httpx.Request) -> httpx.Response:
        seen[request.url.path] = request.headers.get("Authorization")
        return vllm(models=["tiny"], key="k")(request)

    assert probe(handle, api_key="k").ready
    assert seen == {"/health": None, "/v1/models": "Bearer k"}
    assert probe(vllm(models=["tiny"], key="k"), api_key="wrong").state is EngineState.UNAUTHORIZED


@pytest.mark.parametrize(
    ("handler", "state"),
    [
        (vllm(health=503), EngineState.UNHEALTHY),
        (vllm(health=404), EngineState.UNHEALTHY),
        (vllm(models=["other"]), EngineState.MODEL_NOT_SERVED),
    ],
)
def test_unhealthy_answers(handler: Handler, state: EngineState) -> None:
    assert probe(handler).state is state


def test_connection_refused_means_starting() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    result = probe(refuse)
    assert result.state is EngineState.STARTING
    assert "Connection refused" in result.detail


def test_timeout_means_unresponsive() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    assert probe(hang).state is EngineState.UNRESPONSIVE


def test_real_refused_port_without_a_client() -> None:
    # A port nothing listens on (bound, never listening): the owned client path, a real refusal.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = asyncio.run(probe_engine(f"http://127.0.0.1:{port}", "tiny", bounds=Bounds(timeout=2)))
    assert result.state is EngineState.STARTING


class DroppingServer:
    """A real HTTP server on 127.0.0.1 that closes its first `drops` connections as a request arrives on
    them, without answering (what vLLM's server does to a kept-alive connection it is closing), then answers
    as vLLM does."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        request = await reader.readuntil(b"\r\n\r\n")
        if self.connections <= self.drops:
            writer.close()
            return
        path = request.split(b" ")[1]
        body = b'{"object": "list", "data": [{"id": "tiny"}]}' if path == b"/v1/models" else b""
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    def probe(self) -> EngineProbe:
        async def run() -> EngineProbe:
            server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            async with server, httpx.AsyncClient(timeout=5) as client:
                return await probe_engine(f"http://127.0.0.1:{port}", "tiny", client=client)

        return asyncio.run(run())


def test_a_connection_dropped_without_an_answer_is_asked_again_once() -> None:
    server = DroppingServer(drops=1)
    assert server.probe().ready
    assert server.connections == 3  # /health dropped, /health again, /v1/models


def test_an_engine_that_drops_every_connection_is_not_ready() -> None:
    server = DroppingServer(drops=10)
    result = server.probe()
    assert result.state is EngineState.STARTING and "RemoteProtocolError" in result.detail
    assert server.connections == 2  # asked again once, not more
