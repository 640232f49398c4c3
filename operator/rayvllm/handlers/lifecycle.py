"""Operator start-up and clean-up: settings, kopf's storage choices, shared clients."""

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import Any

import kopf

from rayvllm import API_GROUP, metrics
from rayvllm.bounded import Bounds
from rayvllm.engine.health import EngineProber
from rayvllm.k8s.api import connect
from rayvllm.k8s.resources import Kubernetes
from rayvllm.ray import Dashboards, shared_client
from rayvllm.reconcile import Clients
from rayvllm.settings import load_settings

# How long kopf waits before each retry of a failed API request (a refused connection, a 5xx, a 429), then
# gives up (a watch starts over with a fresh sequence; a handler fails and kopf retries it). kopf's default,
# (1, 1, 2, 3, 5, 8, 13, 21), reaches 13 s pauses after 20 s of an API server outage, so a watch could stay
# blind that long after the server is back: an edit made right after a 20 s restart reached its RayCluster
# 7.7-11.4 s late. Pauses capped at 1 s bound that to about a second; ~2 minutes in all (more than the
# default's 54 s), so a longer outage does not exhaust them sooner. A refused connection costs the server
# nothing; the cost is one log line per attempt and watch stream while the API is down.
API_ERROR_BACKOFFS: tuple[float, ...] = (0.25, 0.5, *([1.0] * 118))


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf's own settings for this operator: where it keeps its records, how it watches and retries."""
    # Our CRD has a structural status schema: kopf's default progress records under status.kopf would
    # be pruned, so kopf keeps them in annotations under our own group.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.posting.level = logging.INFO
    # A stuck watch must not leave the operator blind: reconnect periodically.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = API_ERROR_BACKOFFS


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    memo.settings = load_settings()
    memo.wakeups = {}
    # One line per Ray/engine HTTP request at INFO would drown the operator's own messages.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    configure_kopf(settings)
    if memo.settings.metrics_port is not None:
        metrics.serve(memo.settings.metrics_port, memo.settings.metrics_host)
    memo.exit_stack = AsyncExitStack()
    s = memo.settings
    api = await memo.exit_stack.enter_async_context(connect(s.kube_connections))
    http = await memo.exit_stack.enter_async_context(
        shared_client(s.http_timeout_seconds, s.probe_concurrency)
    )
    memo.clients = Clients(
        kube=Kubernetes(api, s.field_manager),
        dashboards=Dashboards(http, Bounds.of(s)),
        prober=EngineProber(
            http,
            Bounds.of(s),
            canary_interval=s.canary_interval_seconds,
            canary_timeout=s.canary_timeout_seconds,
        ),
        limiter=asyncio.Semaphore(s.probe_concurrency),
    )
    logger.info("rayvllm operator configured: %s", memo.settings.model_dump())


@kopf.on.cleanup()
async def close_clients(memo: Any, **_: Any) -> None:
    if getattr(memo, "exit_stack", None) is not None:
        await memo.exit_stack.aclose()
