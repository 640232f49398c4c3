"""Waking one VLLMCluster's loop early: a child changed, or its spec did. Each loop registers an
asyncio.Event under its (namespace, name) in the operator-wide memo (kopf shallow-copies that memo into
every object's, so the registry is shared)."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

Key = tuple[str, str]


def _registry(memo: Any) -> dict[Key, asyncio.Event]:
    registry: dict[Key, asyncio.Event] = memo.wakeups
    return registry


def register(memo: Any, key: Key) -> asyncio.Event:
    return _registry(memo).setdefault(key, asyncio.Event())


def unregister(memo: Any, key: Key) -> None:
    _registry(memo).pop(key, None)


def wake(memo: Any, key: Key) -> None:
    event = _registry(memo).get(key)
    if event is not None:
        event.set()


async def sleep(stopped: kopf.DaemonStopped, woken: asyncio.Event, seconds: float) -> None:
    """Until `seconds` passed, the loop was woken, or the daemon is asked to stop."""

    async def until_stopped() -> None:
        await stopped.wait()

    waiters = {asyncio.ensure_future(woken.wait()), asyncio.ensure_future(until_stopped())}
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
