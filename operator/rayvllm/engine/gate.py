"""The API key on every route of an engine: an ASGI middleware vLLM's server loads with `--middleware`.

Not run by the operator: engine.args ships this file's SOURCE to the engine (through the Ray job's
runtime_env, see engine.args.GATE_BOOTSTRAP), where `run` starts vLLM's server with the gate loaded. So it
imports the standard library only (the Ray image has no rayvllm) and must stay valid on the image's Python
(3.11 and later).

Why: vLLM's own --api-key / VLLM_API_KEY check guards only paths under /v1, /v2, /inference and /cohere
(vllm.entrypoints.serve.middleware.authenticate.GUARDED_PREFIX); /invocations (SageMaker: full
completions), /tokenize, /detokenize, /generative_scoring, /scale_elastic_ep, /pooling, /classify, /score,
/rerank and the dev-mode routes answer anyone. The gate refuses every path without the key except OPEN_PATHS,
whatever vLLM registers, so a route a new vLLM adds is closed by default. vLLM's own check stays behind it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import runpy
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The variable vLLM itself reads the key from; the RayCluster builder sets it on the worker pods from
# spec.engine.apiKeySecretRef, so the key is never in the job record.
KEY_ENV = "VLLM_API_KEY"
# Open without the key: what the operator's probes and Prometheus read (engine.health: /health, then
# /v1/models WITH the key; /metrics for the canary and the autoscaler; the pods' prometheus.io/path). Exact
# paths: /health/ or /metricsX are refused.
OPEN_PATHS = frozenset({"/health", "/metrics"})
# Close code 1008 (policy violation) before the handshake is accepted: the server answers HTTP 403.
_WEBSOCKET_REFUSED = 1008
_REFUSED_BODY = b'{"error": "Unauthorized"}'


def route_path(scope: Scope) -> str:
    """The path the router matches, as Starlette's get_route_path computes it (vLLM's --root-path strips a
    prefix): the gate must judge the same path the router routes."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


class ApiKeyGate:
    """Refuses every HTTP request and WebSocket without `Authorization: Bearer <key>` (401, WebSocket
    closed before the handshake) unless its path is in OPEN_PATHS. CORS preflights are refused too: a
    browser client needs a proxy in front (docs/security.md)."""

    def __init__(self, app: ASGIApp, key: str | None = None) -> None:
        key = os.environ.get(KEY_ENV, "") if key is None else key
        if not key:
            # Fail closed: a gate without a key would let nothing through, or everything.
            raise RuntimeError(f"{KEY_ENV} is empty: the API key gate has no key to ask for")
        self.app = app
        # Compared as digests: equal lengths, so the comparison takes the same time for every wrong key.
        self._digest = hashlib.sha256(key.encode()).digest()

    def authorized(self, scope: Scope) -> bool:
        values = [value for name, value in scope.get("headers", ()) if name.lower() == b"authorization"]
        # Two Authorization headers are ambiguous (vLLM's own check reads the first): neither counts.
        if len(values) != 1:
            return False
        scheme, _, token = bytes(values[0]).partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(
            hashlib.sha256(token).digest(), self._digest
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] not in ("http", "websocket")
            or route_path(scope) in OPEN_PATHS
            or self.authorized(scope)
        ):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": _WEBSOCKET_REFUSED, "reason": "Unauthorized"})
        else:
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_REFUSED_BODY)).encode()),
                        (b"www-authenticate", b"Bearer"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _REFUSED_BODY})


def run(server_module: str) -> None:
    """Runs `server_module` as `python -m` would (its arguments are sys.argv[1:]), once the key is known to
    be there: an engine whose gate would refuse to start must not first load its model for minutes."""
    if not os.environ.get(KEY_ENV):
        raise SystemExit(f"rayvllm: {KEY_ENV} is empty, but the engine is to require an API key")
    runpy.run_module(server_module, run_name="__main__", alter_sys=True)
