"""The async Kubernetes client, its construction, and conversion of its errors."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from rayvllm.errors import KubernetesError, KubernetesNotFoundError, KubernetesRejectedError

T = TypeVar("T")

# The client's type stubs omit `_content_type`, which its code accepts: passed as **kwargs so the
# rest stays type-checked.
#
# A server-side apply body is YAML to the API server (go-yaml reads it). JSON is YAML, but not as the client
# writes it: json.dumps spells a character beyond the BMP (an emoji in an image name) as a \uD83D\uDE00-style
# surrogate pair, which YAML refuses ("invalid Unicode character escape code"), and the apply fails forever. So the
# operator serializes apply bodies itself (apply_body) and hands the client bytes, which it sends as they
# are only under a content type it does not recognise: hence the charset parameter (the API server strips
# it).
AS_APPLY: dict[str, Any] = {"_content_type": "application/apply-patch+yaml; charset=utf-8"}
AS_JSON_PATCH: dict[str, Any] = {"_content_type": "application/json-patch+json"}

# 4xx answers that will not change by retrying the same request.
_PERMANENT = frozenset({400, 401, 403, 405, 413, 415, 422})


@asynccontextmanager
async def connect(max_connections: int, kubeconfig: str | None = None) -> AsyncIterator[client.ApiClient]:
    """An ApiClient configured in-cluster when possible, else from `kubeconfig` (default: the client's own
    choice, KUBECONFIG as it was when the library was imported, or ~/.kube/config), keeping at most
    `max_connections` connections (the library's default is 100, each with a 256 KiB TLS read buffer, all
    opened in a burst of 1000 new objects)."""
    configuration = client.Configuration()
    configuration.connection_pool_maxsize = max_connections
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        yield api


async def call(what: str, request: Awaitable[T]) -> T:
    """Await one API request, converting library errors into the project's error types."""
    try:
        return await request
    except ApiException as exc:
        message = f"{what}: HTTP {exc.status} {exc.reason}: {_message(exc)}"
        if exc.status == 404:
            raise KubernetesNotFoundError(message) from exc
        if exc.status in _PERMANENT:
            raise KubernetesRejectedError(message, exc.status) from exc
        raise KubernetesError(message, retry_after=5.0 if exc.status == 409 else 10.0) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise KubernetesError(f"{what}: {type(exc).__name__}: {exc}") from exc


async def call_or_none(what: str, request: Awaitable[T]) -> T | None:
    """Like `call`, but a 404 answers None."""
    try:
        return await call(what, request)
    except KubernetesNotFoundError:
        return None


# What a YAML reader refuses raw in a stream (DEL, C1 controls, U+FFFE, U+FFFF, lone surrogates) or reads
# as a line break inside a quoted scalar and folds (NEL, U+2028, U+2029), and a BOM: escaped as \\uXXXX,
# which JSON and YAML read alike for these (all in the BMP, none a surrogate pair).
_NOT_RAW_IN_YAML = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")


def apply_body(manifest: Any) -> bytes:
    """`manifest` as an apply-patch+yaml body: JSON with raw UTF-8 (no surrogate escapes) except for the
    characters YAML will not take raw, which stay escaped."""
    text = json.dumps(manifest, ensure_ascii=False, separators=(",", ":"))
    return _NOT_RAW_IN_YAML.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode()


def to_dict(api: client.ApiClient, obj: Any) -> dict[str, Any]:
    """A typed client model as the plain JSON-shaped dict the rest of the operator works with."""
    result = api.sanitize_for_serialization(obj)
    assert isinstance(result, dict)
    return result


def _message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return str(exc.body)[:500]
    return str(body.get("message", exc.body))[:500]
