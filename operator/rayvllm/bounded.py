"""One bounded HTTP exchange, for every call to a Ray dashboard or an engine. Both are run by the tenant
(its image, its Ray), so neither may cost the operator more than a known amount: httpx's timeout bounds
each read, not the call, and it reads a whole answer into memory, however large. Here a call has a total
deadline and an answer is read up to a cap (or, for a log, only its end is kept)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from rayvllm.errors import AnswerTooLargeError
from rayvllm.settings import Settings

# A compressed answer is inflated by httpx's decoder before a byte of it could be counted (a small gzip
# bomb becomes gigabytes). Asked for plainly, Ray's dashboard (aiohttp) and vLLM (uvicorn, and the
# Prometheus client behind /metrics) answer plainly; one that compresses anyway is not read.
PLAIN = {"Accept-Encoding": "identity"}


@dataclass(frozen=True)
class Bounds:
    """What one call may cost: `timeout` per read, connect or write; `deadline` for the whole call; at most
    `body_bytes` of an answer read; of a log, the last `tail_bytes` kept."""

    timeout: float = 5.0
    deadline: float = 20.0
    body_bytes: int = 4 * 1024 * 1024
    tail_bytes: int = 64 * 1024

    @classmethod
    def of(cls, settings: Settings) -> Bounds:
        return cls(
            timeout=settings.http_timeout_seconds,
            deadline=settings.http_deadline_seconds,
            body_bytes=settings.http_body_limit_bytes,
            tail_bytes=settings.log_tail_bytes,
        )


class DeadlineExceeded(httpx.TimeoutException):
    """The call as a whole outlasted its deadline. An httpx timeout, so callers treat it as the timeout it is."""


@dataclass(frozen=True)
class Answer:
    """An HTTP answer read within its bounds. Of a tail read: `truncated`, its start was dropped; not `ended`,
    reading stopped at the cap before the answer's end."""

    method: str
    url: str
    status_code: int
    content: bytes
    truncated: bool = False
    ended: bool = True

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """Raises ValueError when the body is not JSON."""
        return json.loads(self.content)


@asynccontextmanager
async def within(seconds: float, what: str) -> AsyncIterator[None]:
    """Everything inside ends within `seconds`, or raises DeadlineExceeded naming `what`."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as e:
        raise DeadlineExceeded(f"{what}: no whole answer within {seconds:g}s") from e


async def fetch(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    bounds: Bounds,
    *,
    deadline: float | None = None,
    **kwargs: Any,
) -> Answer:
    """`exchange` within `deadline` (default bounds.deadline): raises DeadlineExceeded after it."""
    async with within(bounds.deadline if deadline is None else deadline, f"{method} {url}"):
        return await exchange(client, method, url, bounds, **kwargs)


async def exchange(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    bounds: Bounds,
    *,
    headers: Mapping[str, str] | None = None,
    tail: bool = False,
    **kwargs: Any,
) -> Answer:
    """One request, its answer read up to bounds.body_bytes: a longer one raises AnswerTooLargeError. With
    `tail`, only the answer's last bounds.tail_bytes are kept, and reading stops after bounds.body_bytes.
    Raises httpx's errors as they come. No deadline of its own: the caller's `within` holds it (a call of
    several attempts has one deadline for all of them)."""
    what, cap = f"{method} {url}", bounds.body_bytes
    kwargs.setdefault("timeout", bounds.timeout)
    async with client.stream(method, url, headers={**PLAIN, **(headers or {})}, **kwargs) as response:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise AnswerTooLargeError(f"{what}: a {encoding}-encoded answer could inflate past any cap", cap)
        declared = response.headers.get("content-length", "")
        if not tail and declared.isdigit() and int(declared) > cap:
            raise AnswerTooLargeError(f"{what}: answer of {declared} bytes, over the cap of {cap}", cap)
        kept, read, truncated, ended = bytearray(), 0, False, True
        # Decoded bytes are the raw ones here (an encoded answer was refused above); unlike aiter_raw, this
        # also serves an answer already in memory (httpx.MockTransport's).
        async for chunk in response.aiter_bytes():
            read += len(chunk)
            kept += chunk
            if not tail:
                if read > cap:
                    raise AnswerTooLargeError(f"{what}: answer over the cap of {cap} bytes", cap)
                continue
            if len(kept) > bounds.tail_bytes:
                del kept[: len(kept) - bounds.tail_bytes]
                truncated = True
            if read >= cap:
                ended = False
                break
        return Answer(method, url, response.status_code, bytes(kept), truncated, ended)
