"""kopf handlers of VLLMCluster: thin. One loop per object (a kopf daemon) runs every reconcile pass, so
passes of one object never overlap; it is woken early when the spec or a child changes, and otherwise
looks again after a jittered resync (sooner while an engine starts). Handlers post the events a pass
returns and map the project's errors onto kopf's retry semantics."""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
from collections.abc import Mapping
from typing import Any

import kopf

from rayvllm import API_GROUP, API_VERSION, PLURAL, metrics
from rayvllm.errors import RayvllmError, TransientError
from rayvllm.handlers import wakeup
from rayvllm.handlers.children import Key, children_of
from rayvllm.reconcile import Clients, Memory, Outcome, finalize, reconcile
from rayvllm.settings import Settings

RESOURCE = (API_GROUP, API_VERSION, PLURAL)
Logger = logging.Logger | logging.LoggerAdapter[Any]
# Events of one change (our apply, KubeRay's answer, the pods) arrive in a burst: one pass takes them all.
COALESCE_SECONDS = 0.05


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key(body: kopf.Body) -> Key:
    return (body.metadata["namespace"], body.metadata["name"])


def _lock(memo: Any) -> asyncio.Lock:
    """The loop and the delete handler never work on one object at once (kopf gives every object its own
    memo)."""
    lock: asyncio.Lock = memo.setdefault("reconcile_lock", asyncio.Lock())
    return lock


def _memory(memo: Any) -> Memory:
    memory: Memory = memo.setdefault("memory", Memory())
    return memory


def _post(body: kopf.Body, outcome: Outcome) -> None:
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])


def _resync_delay(settings: Settings) -> float:
    """A resync period, spread so that objects created together do not stay in step."""
    spread = settings.resync_jitter
    return settings.resync_seconds * random.uniform(1 - spread, 1 + spread)


async def _pass(body: kopf.Body, memo: Any, indexes: Mapping[str, Any], logger: Logger) -> float:
    """One reconcile pass; returns how long to wait before the next one."""
    settings: Settings = memo.settings
    clients: Clients = memo.clients
    namespace, name = _key(body)
    async with _lock(memo):
        if body.metadata.get("deletionTimestamp"):
            return settings.resync_seconds  # the delete handler owns the object now
        memo.seen_generation = body.metadata.get("generation")
        try:
            with metrics.RECONCILE_DURATION.time():
                outcome = await reconcile(
                    clients, settings, body, children_of(_key(body), indexes), _memory(memo), _now()
                )
        except TransientError as exc:
            metrics.RECONCILE_ERRORS.labels(namespace, name).inc()
            logger.warning("reconcile: will retry in %.0fs: %s", exc.retry_after, exc)
            return min(exc.retry_after, settings.resync_seconds)
        except RayvllmError as exc:
            # Permanent (e.g. the namespace is terminating, or a credential is refused): the next
            # period tries again; the status already says what the world looks like.
            metrics.RECONCILE_ERRORS.labels(namespace, name).inc()
            logger.warning("reconcile: will retry: %s", exc)
            return _resync_delay(settings)
        if outcome.status is not None or not memo.get("recorded"):
            metrics.record(namespace, name, outcome.status or body.get("status") or {})
            memo.recorded = True
        _post(body, outcome)
    if outcome.status is not None:
        summary = str(outcome.status.get("message", "")).splitlines()[0:1]
        logger.info("status: phase=%s %s", outcome.status.get("phase"), summary[0] if summary else "")
    if outcome.requeue_after is None:
        return _resync_delay(settings)
    if outcome.requeue_after >= settings.resync_seconds:
        return outcome.requeue_after * _resync_delay(settings) / settings.resync_seconds
    return outcome.requeue_after


@kopf.on.event(*RESOURCE)
async def spec_changed(body: kopf.Body, memo: Any, **_: Any) -> None:
    """A new generation (or the object's deletion) wakes its loop; status writes do not. A coroutine, so
    kopf calls it on the loop that owns the asyncio.Event (see handlers/children.py)."""
    if body.metadata.get("generation") != memo.get("seen_generation") or body.metadata.get(
        "deletionTimestamp"
    ):
        wakeup.wake(memo, _key(body))


@kopf.daemon(*RESOURCE, cancellation_timeout=30)
async def supervise(
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    memo: Any,
    logger: Logger,
    **indexes: Any,
) -> None:
    """The object's loop, for as long as it exists. It never exits on an error: a failure is logged (and
    shown in status) and retried."""
    key = _key(body)
    woken = wakeup.register(memo, key)
    try:
        while not stopped:
            woken.clear()
            try:
                delay = await _pass(body, memo, indexes, logger)
            except Exception:
                logger.exception("reconcile failed; will retry")
                delay = _resync_delay(memo.settings)
            await wakeup.sleep(stopped, woken, delay)
            if woken.is_set():
                await asyncio.sleep(COALESCE_SECONDS)
    finally:
        wakeup.unregister(memo, key)


@kopf.on.delete(*RESOURCE)
async def delete(
    body: kopf.Body,
    memo: Any,
    logger: Logger,
    **indexes: Any,
) -> None:
    """Runs before the finalizer is released, also for objects deleted while the operator was down.
    Owned children (RayCluster, Service) are then garbage-collected by Kubernetes."""
    try:
        async with _lock(memo):
            outcome = await finalize(
                memo.clients, memo.settings, body, children_of(_key(body), indexes), _now()
            )
    except TransientError as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.retry_after) from exc
    _post(body, outcome)
    metrics.forget(*_key(body))
    logger.info("finalized %s/%s", *_key(body))
