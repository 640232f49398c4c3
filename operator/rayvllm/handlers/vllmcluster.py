"""kopf handlers of VLLMCluster: thin. They serialise work per object, call rayvllm.reconcile, write the
status it computed, post its events, and map the project's errors onto kopf's retry semantics."""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import kopf

from rayvllm import API_GROUP, API_VERSION, PLURAL, metrics
from rayvllm.errors import PermanentError, RayvllmError, TransientError
from rayvllm.k8s.resources import Kubernetes
from rayvllm.reconcile import Outcome, finalize, reconcile

RESOURCE = (API_GROUP, API_VERSION, PLURAL)
Logger = logging.Logger | logging.LoggerAdapter[Any]


def _lock(memo: Any) -> asyncio.Lock:
    """One reconcile at a time per object: change handlers and the resync daemon share it (kopf gives
    every object its own memo)."""
    lock: asyncio.Lock = memo.setdefault("reconcile_lock", asyncio.Lock())
    return lock


def _post(body: kopf.Body, outcome: Outcome) -> None:
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])


async def _reconcile_once(body: kopf.Body, memo: Any, logger: Logger) -> None:
    if body.metadata.get("deletionTimestamp"):
        return  # the delete handler owns the object now
    kube: Kubernetes = memo.kubernetes
    async with _lock(memo):
        namespace, name = body.metadata["namespace"], body.metadata["name"]
        try:
            outcome = await reconcile(kube, memo.settings, body, datetime.datetime.now(datetime.UTC))
        except Exception:
            metrics.RECONCILE_ERRORS.labels(namespace, name).inc()
            raise
        if outcome.status is not None:
            await kube.replace_status(namespace, name, outcome.status)
        metrics.record(namespace, name, outcome.status or body.get("status") or {})
        _post(body, outcome)
    if outcome.status is not None:
        summary = str(outcome.status.get("message", "")).splitlines()[0:1]
        logger.info("status: phase=%s %s", outcome.status.get("phase"), summary[0] if summary else "")


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def apply_spec(body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
    try:
        await _reconcile_once(body, memo, logger)
    except TransientError as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.retry_after) from exc
    except PermanentError as exc:
        raise kopf.PermanentError(str(exc)) from exc


@kopf.daemon(*RESOURCE, cancellation_timeout=30, initial_delay=1)
async def resync(stopped: kopf.DaemonStopped, body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
    """Drift check and supervision: reconciles every `resync_seconds` for as long as the object exists.
    It never exits on an error: a failure is logged (and shown in status) and retried next period."""
    while not stopped:
        try:
            await _reconcile_once(body, memo, logger)
        except RayvllmError as exc:
            # Transient (API or Ray hiccup) or permanent (e.g. the namespace is terminating): either
            # way the next period tries again; the status already says what the world looks like.
            logger.warning("resync: will retry: %s", exc)
        except Exception:
            logger.exception("resync failed; will retry")
        await stopped.wait(memo.settings.resync_seconds)


@kopf.on.delete(*RESOURCE)
async def delete(body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
    """Runs before the finalizer is released, also for objects deleted while the operator was down.
    Owned children (RayCluster, Service) are then garbage-collected by Kubernetes."""
    kube: Kubernetes = memo.kubernetes
    try:
        async with _lock(memo):
            outcome = await finalize(kube, memo.settings, body)
    except TransientError as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.retry_after) from exc
    _post(body, outcome)
    metrics.forget(body.metadata["namespace"], body.metadata["name"])
    logger.info("finalized %s/%s", body.metadata["namespace"], body.metadata["name"])
