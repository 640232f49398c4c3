"""One HTTP exchange with a Ray dashboard: auth header, timeout, bounded retries with backoff, and
every failure turned into the project's error types. Knows nothing about jobs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from rayvllm.errors import PermanentError, RayAuthError, RayError

log = logging.getLogger(__name__)

# What KubeRay sends to a dashboard with token auth; Ray also accepts `Authorization`, but proxies in
# front of the dashboard may consume that one.
AUTH_HEADER = "X-Ray-Authorization"

# Statuses worth the same request again: the dashboard or its head-node agent is busy or starting
# ("No available agent to submit job" is a 500).
RETRY_STATUSES = frozenset({500, 502, 503, 504})


class RayRequestRejectedError(PermanentError):
    """The dashboard refused a request as invalid (4xx other than 401/403/404): the same request
    will fail again."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


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


class DashboardHTTP:
    """An httpx.AsyncClient bound to one dashboard. Close it (or use `async with`)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {AUTH_HEADER: f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
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
                response = await self._client.request(method, path, json=json, params=params)
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
