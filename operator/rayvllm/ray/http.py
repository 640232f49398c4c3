"""One HTTP exchange with a Ray dashboard: auth header, timeout, bounded retries with backoff, and
every failure turned into the project's error types. Knows nothing about jobs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from rayvllm.errors import RayAuthError, RayError, RayRequestRejectedError

log = logging.getLogger(__name__)

# What KubeRay sends to a dashboard with token auth; Ray also accepts `Authorization`, but proxies in
# front of the dashboard may consume that one.
AUTH_HEADER = "X-Ray-Authorization"

# Statuses worth the same request again: the dashboard or its head-node agent is busy or starting
# ("No available agent to submit job" is a 500).
RETRY_STATUSES = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 4.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return float(min(self.backoff_seconds * 2 ** (attempt - 1), self.max_backoff_seconds))


def _snippet(response: httpx.Response, limit: int = 500) -> str:
    """The end of the body: Ray answers errors with a Python traceback whose last line says why."""
    text = response.text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


KEEPALIVE_EXPIRY_SECONDS = 3.0


def shared_client(timeout: float, max_connections: int) -> httpx.AsyncClient:
    """One client for every dashboard and engine the operator talks to: building a client (its TLS
    context above all) costs milliseconds of CPU, which a pass per object per resync cannot afford. Idle
    connections are dropped before vLLM's server drops them (after VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s): a
    request sent on one the server is closing fails without reaching it."""
    return httpx.AsyncClient(
        timeout=timeout,
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
        ),
    )


class DashboardHTTP:
    """Requests to one dashboard, over a client of its own (closed by `aclose`) or a shared one (left
    open: its owner closes it)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._headers = {AUTH_HEADER: f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._timeout = timeout
        self._owned = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        allow: frozenset[int] = frozenset(),
        final: Callable[[httpx.Response], bool] | None = None,
        retry: bool = True,
    ) -> httpx.Response:
        """The response if it is 2xx or its status is in `allow`; otherwise raises.

        A 5xx for which `final(response)` is true is returned instead of retried (the caller knows what
        it means, e.g. a duplicate submission id). Raises RayAuthError on 401/403, RayRequestRejectedError on
        other 4xx, RayError once retries on transport errors and RETRY_STATUSES are spent."""
        what = f"{method} {self.base_url}{path}"
        attempts = self.retry.attempts if retry else 1
        last = ""
        for attempt in range(1, attempts + 1):
            try:
                response = await self._client.request(
                    method,
                    self.base_url + path,
                    json=json,
                    params=params,
                    headers=self._headers,
                    timeout=self._timeout,
                )
            except httpx.TimeoutException as e:
                last = f"timed out ({type(e).__name__})"
            except httpx.TransportError as e:
                last = f"unreachable ({type(e).__name__}: {e})"
            else:
                status = response.status_code
                if 200 <= status < 300 or status in allow:
                    return response
                if status in (401, 403):
                    raise RayAuthError(
                        f"{what}: HTTP {status} {_snippet(response)} "
                        "(token auth: check the X-Ray-Authorization token)"
                    )
                if status in RETRY_STATUSES:
                    if final is not None and final(response):
                        return response
                    last = f"HTTP {status}: {_snippet(response)}"
                else:
                    raise RayRequestRejectedError(f"{what}: HTTP {status}: {_snippet(response)}", status)
            if attempt < attempts:
                delay = self.retry.delay(attempt)
                log.debug(
                    "%s failed (attempt %d/%d): %s; retrying in %.1fs", what, attempt, attempts, last, delay
                )
                await asyncio.sleep(delay)
        raise RayError(f"{what}: {last}")

    async def get_json(self, path: str, *, params: dict[str, str] | None = None) -> Any:
        response = await self.request("GET", path, params=params)
        return decode_json(response)


def decode_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as e:
        raise RayError(
            f"{response.request.method} {response.request.url}: HTTP {response.status_code} "
            f"answer is not JSON: {_snippet(response, 200)}"
        ) from e
