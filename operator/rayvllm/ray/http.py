"""One HTTP exchange with a Ray dashboard: auth header, bounded retries with backoff, all of them within one
deadline and every answer read within a cap (rayvllm.bounded), and every failure turned into the
project's error types. Knows nothing about jobs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from rayvllm.bounded import Answer, Bounds, DeadlineExceeded, exchange, within
from rayvllm.errors import AnswerTooLargeError, RayAuthError, RayError, RayRequestRejectedError
from rayvllm.models.rayapi import AUTH_REFUSALS

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


def _snippet(response: Answer, limit: int = 500) -> str:
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
    open: its owner closes it), each within `bounds`."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        bounds: Bounds | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._headers = {AUTH_HEADER: f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.bounds = bounds or Bounds()
        self._owned = client is None
        self._client = client or httpx.AsyncClient(timeout=self.bounds.timeout, transport=transport)

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
        final: Callable[[Answer], bool] | None = None,
        retry: bool = True,
        tail: bool = False,
        authenticated: bool = True,
    ) -> Answer:
        """The answer if it is 2xx or its status is in `allow`; otherwise raises. Every attempt, backoff
        and body read fits in bounds.deadline; `tail` keeps only the end of the answer (a log). Not
        `authenticated`: sent without the token, to see that the dashboard refuses such a request.

        A 5xx for which `final(answer)` is true is returned instead of retried (the caller knows what
        it means, e.g. a duplicate submission id). Raises RayAuthError on 401/403, RayRequestRejectedError on
        other 4xx, RayError once retries on transport errors and RETRY_STATUSES are spent, the deadline
        passed or the answer is over the cap."""
        what = f"{method} {self.base_url}{path}"
        attempts = self.retry.attempts if retry else 1
        last = ""
        try:
            async with within(self.bounds.deadline, what):
                for attempt in range(1, attempts + 1):
                    try:
                        response = await exchange(
                            self._client,
                            method,
                            self.base_url + path,
                            self.bounds,
                            json=json,
                            params=params,
                            headers=self._headers if authenticated else {},
                            tail=tail,
                        )
                    except httpx.TimeoutException as e:
                        last = f"timed out ({type(e).__name__})"
                    except httpx.TransportError as e:
                        last = f"unreachable ({type(e).__name__}: {e})"
                    else:
                        status = response.status_code
                        if 200 <= status < 300 or status in allow:
                            return response
                        if status in AUTH_REFUSALS:
                            raise RayAuthError(
                                f"{what}: HTTP {status} {_snippet(response)} "
                                "(token auth: check the X-Ray-Authorization token)"
                            )
                        if status not in RETRY_STATUSES:
                            raise RayRequestRejectedError(
                                f"{what}: HTTP {status}: {_snippet(response)}", status
                            )
                        if final is not None and final(response):
                            return response
                        last = f"HTTP {status}: {_snippet(response)}"
                    if attempt < attempts:
                        delay = self.retry.delay(attempt)
                        log.debug(
                            "%s failed (attempt %d/%d): %s; retrying in %.1fs",
                            what,
                            attempt,
                            attempts,
                            last,
                            delay,
                        )
                        await asyncio.sleep(delay)
        except DeadlineExceeded as e:
            raise RayError(f"{e} (RAYVLLM_HTTP_DEADLINE_SECONDS){'; before: ' + last if last else ''}") from e
        except AnswerTooLargeError as e:
            raise RayError(str(e)) from e
        raise RayError(f"{what}: {last}")

    async def get_json(self, path: str, *, params: dict[str, str] | None = None) -> Any:
        response = await self.request("GET", path, params=params)
        return decode_json(response)


def decode_json(response: Answer) -> Any:
    try:
        return response.json()
    except ValueError as e:
        raise RayError(
            f"{response.method} {response.url}: HTTP {response.status_code} "
            f"answer is not JSON: {_snippet(response, 200)}"
        ) from e
