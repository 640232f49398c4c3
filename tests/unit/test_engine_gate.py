"""The engine's API key gate (rayvllm.engine.gate) as an ASGI middleware in front of a real ASGI app, through
httpx's ASGITransport: every path but /health and /metrics needs the key, whatever the route. And the
entrypoint that loads it: run for real by `sh -c`, against a stand-in for vLLM's server module that loads
`--middleware` the way vLLM does (vllm.entrypoints.serve.middleware.register). Every route the pinned vLLM
registers is checked on the real app in tests/e2e/test_engine_routes.py, and on the serving engine in
tests/e2e/test_shared_engine.py (P1)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from rayvllm.engine.args import GATE_MIDDLEWARE, GATE_SOURCE, GATE_SOURCE_ENV
from rayvllm.engine.gate import KEY_ENV, OPEN_PATHS, ApiKeyGate, Message, Receive, Scope, Send
from rayvllm.engine.job import EngineJobOptions, EngineRef, build_engine_job
from rayvllm.models import parse_cluster

from .inputs import SAMPLES, load_yaml

KEY = "sk-unit-gate-0123456789"
# Paths of the pinned vLLM (0.32) that its own --api-key check leaves open (tests/e2e/test_engine_routes.py
# finds them all on the real app), a few it guards, and near misses of the open paths.
GUARDED = [
    "/invocations",
    "/tokenize",
    "/detokenize",
    "/generative_scoring",
    "/scale_elastic_ep",
    "/is_scaling_elastic_ep",
    "/pooling",
    "/classify",
    "/score",
    "/rerank",
    "/ping",
    "/load",
    "/version",
    "/kv_event_sources",
    "/docs",
    "/openapi.json",
    "/collective_rpc",
    "/sleep",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/models",
    "/inference/v1/generate",
    "/",
    "/health/",
    "/healthz",
    "/HEALTH",
    "/metricsx",
    "/metrics/x",
]


class Backend:
    """The app behind the gate: answers 200 with the path it saw, and records every scope it got."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.reached.append(f"{scope['type']} {scope.get('path', '')}")
        if scope["type"] != "http":
            return
        body = json.dumps({"path": scope["path"]}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def call_all(
    paths: list[str],
    headers: list[tuple[str, str]] | None = None,
    *,
    method: str = "POST",
    root_path: str = "",
) -> tuple[dict[str, httpx.Response], Backend]:
    """Each path asked once through one gate, in one event loop."""
    backend = Backend()
    transport = httpx.ASGITransport(app=ApiKeyGate(backend, key=KEY), root_path=root_path)

    async def send() -> dict[str, httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
            return {
                path: await client.request(method, path, headers=headers, json={"prompt": "hi"})
                for path in paths
            }

    return asyncio.run(send()), backend


def call(path: str, headers: list[tuple[str, str]] | None = None, **options: str) -> httpx.Response:
    return call_all([path], headers, **options)[0][path]


def bearer(key: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {key}")]


@pytest.mark.parametrize(
    "headers",
    [
        [],
        bearer("sk-wrong"),
        bearer(KEY + "x"),
        bearer(KEY[:-1]),
        bearer(""),
        [("Authorization", KEY)],
        [("Authorization", f"Basic {KEY}")],
        [("Authorization", f"Bearer  {KEY}")],
        [("X-Api-Key", KEY)],
        bearer(KEY) + bearer(KEY),
        bearer(KEY) + bearer("sk-wrong"),
    ],
    ids=[
        "no-key",
        "wrong-key",
        "key-plus-a-char",
        "key-minus-a-char",
        "empty",
        "no-scheme",
        "basic",
        "two-spaces",
        "x-api-key",
        "twice",
        "right-then-wrong",
    ],
)
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_every_other_path_is_refused_without_the_key(headers: list[tuple[str, str]], method: str) -> None:
    responses, backend = call_all(GUARDED, headers, method=method)
    for path, response in responses.items():
        assert response.status_code == 401, (path, response.text)
        assert response.json() == {"error": "Unauthorized"}, path
        assert response.headers["www-authenticate"] == "Bearer", path
    assert backend.reached == [], "a refused request must never reach vLLM"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_key_lets_every_path_through(scheme: str) -> None:
    responses, backend = call_all(GUARDED, [("Authorization", f"{scheme} {KEY}")])
    assert {path: r.status_code for path, r in responses.items()} == dict.fromkeys(GUARDED, 200)
    assert backend.reached == [f"http {path}" for path in GUARDED]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_health_and_metrics_answer_without_the_key(method: str) -> None:
    responses, backend = call_all(sorted(OPEN_PATHS), method=method)
    assert {path: r.status_code for path, r in responses.items()} == dict.fromkeys(OPEN_PATHS, 200)
    assert backend.reached == [f"http {path}" for path in sorted(OPEN_PATHS)]


def test_the_open_paths_are_exactly_what_the_operator_and_prometheus_read() -> None:
    assert {"/health", "/metrics"} == OPEN_PATHS


def test_a_root_path_is_judged_as_the_router_routes() -> None:
    # vLLM's --root-path: the router strips it, so must the gate (Starlette's get_route_path).
    assert call("/api/health", root_path="/api").status_code == 200
    assert call("/api/invocations", root_path="/api").status_code == 401
    assert call("/api/invocations", bearer(KEY), root_path="/api").status_code == 200
    # Not under the root path: judged as it is.
    assert call("/apix/health", root_path="/api").status_code == 401


def test_a_cors_preflight_needs_the_key_too() -> None:
    headers = [("Origin", "http://x"), ("Access-Control-Request-Method", "POST")]
    assert call("/v1/completions", headers, method="OPTIONS").status_code == 401


def drive(gate: ApiKeyGate, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(gate(scope, receive, send))
    return sent


def websocket(headers: list[tuple[bytes, bytes]]) -> Scope:
    return {"type": "websocket", "path": "/v1/realtime", "root_path": "", "headers": headers}


def test_a_websocket_without_the_key_is_closed_before_its_handshake() -> None:
    backend = Backend()
    sent = drive(ApiKeyGate(backend, key=KEY), websocket([]))
    assert [m["type"] for m in sent] == ["websocket.close"] and sent[0]["code"] == 1008
    assert backend.reached == []
    drive(ApiKeyGate(backend, key=KEY), websocket([(b"authorization", f"Bearer {KEY}".encode())]))
    assert backend.reached == ["websocket /v1/realtime"]


def test_lifespan_passes_through() -> None:
    backend = Backend()
    drive(ApiKeyGate(backend, key=KEY), {"type": "lifespan"})
    assert backend.reached == ["lifespan "]


def test_the_key_comes_from_vllms_own_variable_and_must_be_there(monkeypatch: pytest.MonkeyPatch) -> None:
    # vLLM's --middleware builds the gate as `ApiKeyGate(app)`: the key comes from VLLM_API_KEY.
    monkeypatch.setenv(KEY_ENV, KEY)
    backend = Backend()
    gate = ApiKeyGate(backend)
    assert drive(gate, {"type": "http", "path": "/invocations", "headers": []})[0]["status"] == 401
    scope = {
        "type": "http",
        "path": "/invocations",
        "headers": [(b"authorization", f"Bearer {KEY}".encode())],
    }
    assert drive(gate, scope)[0]["status"] == 200
    monkeypatch.setenv(KEY_ENV, "")
    with pytest.raises(RuntimeError, match=KEY_ENV):
        ApiKeyGate(backend)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(RuntimeError, match=KEY_ENV):
        ApiKeyGate(backend)


# --- the entrypoint that loads it --------------------------------------------------------------------------

# Stands in for vllm.entrypoints.openai.api_server: loads each --middleware as vLLM's
# init_entrypoints_middleware does (rsplit, importlib.import_module, getattr; a class is built with the app
# alone) and reports what one refused and one keyed request got through it.
FAKE_SERVER = r"""
import asyncio, importlib, json, os, sys

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})

def status(gate, headers):
    sent = []
    async def receive():
        return {"type": "http.request", "body": b""}
    async def send(message):
        sent.append(message)
    asyncio.run(gate({"type": "http", "path": "/invocations", "headers": headers}, receive, send))
    return sent[0]["status"]

args = sys.argv[1:]
paths = [args[i + 1] for i, arg in enumerate(args) if arg == "--middleware"]
module_path, name = paths[0].rsplit(".", 1)
gate = getattr(importlib.import_module(module_path), name)(app)
print(json.dumps({
    "name": __name__,
    "argv": args,
    "middleware": paths,
    "source_left_in_env": any(k.startswith("RAYVLLM") for k in os.environ),
    "without_key": status(gate, []),
    "with_key": status(gate, [(b"authorization", ("Bearer " + os.environ["VLLM_API_KEY"]).encode())]),
}))
"""


def keyed_job(tmp_path: Path) -> tuple[str, dict[str, str]]:
    body = load_yaml(SAMPLES / "tiny-cpu.yaml")
    body["spec"]["engine"]["apiKeySecretRef"] = {"name": "api", "key": "key"}
    body["spec"]["engine"]["extraArgs"] = ["--enforce-eager", "--chat-template", "{{ 'x' }} $(id)"]
    ref = EngineRef(namespace="ns", name="gated", replica=0, generation=1, attempt=0)
    request = build_engine_job(parse_cluster(body).spec, ref, EngineJobOptions(python=sys.executable))
    server = tmp_path / "vllm" / "entrypoints" / "openai"
    server.mkdir(parents=True)
    for package in (tmp_path / "vllm", tmp_path / "vllm" / "entrypoints", server):
        (package / "__init__.py").write_text("")
    (server / "api_server.py").write_text(FAKE_SERVER)
    assert request.runtime_env is not None
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path), **request.runtime_env["env_vars"]}
    return request.entrypoint, env


def test_the_entrypoint_loads_the_gate_where_vllm_imports_its_middleware(tmp_path: Path) -> None:
    entrypoint, env = keyed_job(tmp_path)
    done = subprocess.run(
        ["sh", "-c", entrypoint],
        env={**env, KEY_ENV: KEY},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout)
    assert seen["name"] == "__main__"
    assert seen["middleware"] == [GATE_MIDDLEWARE]
    assert seen["argv"][-3:] == ["--enforce-eager", "--chat-template", "{{ 'x' }} $(id)"]
    assert seen["argv"][seen["argv"].index("--served-model-name") + 1] == "tiny-llama"
    assert not seen["source_left_in_env"]
    assert (seen["without_key"], seen["with_key"]) == (401, 200)


def test_the_entrypoint_stops_before_vllm_without_a_key(tmp_path: Path) -> None:
    entrypoint, env = keyed_job(tmp_path)
    done = subprocess.run(
        ["sh", "-c", entrypoint], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert KEY_ENV in done.stderr and done.stdout == ""


def test_the_shipped_source_is_the_module() -> None:
    assert (Path(__file__).parents[2] / "operator/rayvllm/engine/gate.py").read_text() == GATE_SOURCE
    assert GATE_SOURCE_ENV.startswith("RAYVLLM")
