"""Is an engine serving? Asks vLLM's OpenAI server itself: GET /health, then GET /v1/models.

A RUNNING Ray job only means the process started; loading a model takes minutes. vLLM answers
/health 200 once the engine is up and 503 once the engine core has died; before the server binds its
port, connections are refused. /health is never behind the API key; /v1/* is.
"""

from __future__ import annotations

import httpx

# Re-exported (the `as` form): callers of the probe take its result types from here too.
from rayvllm.engine.probe import EngineProbe as EngineProbe
from rayvllm.engine.probe import EngineState as EngineState


async def _get(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> httpx.Response | EngineProbe:
    try:
        return await client.get(url, headers=headers)
    except httpx.TimeoutException as e:
        return EngineProbe(EngineState.UNRESPONSIVE, f"GET {url}: timed out ({type(e).__name__})")
    except httpx.TransportError as e:
        return EngineProbe(EngineState.STARTING, f"GET {url}: {type(e).__name__}: {e}")


async def probe_engine(
    base_url: str,
    served_model_name: str,
    *,
    api_key: str | None = None,
    http_timeout: float = 5.0,
    client: httpx.AsyncClient | None = None,
) -> EngineProbe:
    """One probe of the engine at `base_url` (e.g. http://10.0.0.7:8000). Never raises for the
    engine's answers or silence: every outcome is an EngineState. `http_timeout` applies to each
    request when no `client` is given (a given client brings its own)."""
    owned = client is None
    http = client or httpx.AsyncClient(timeout=http_timeout)
    base = base_url.rstrip("/")
    try:
        health = await _get(http, f"{base}/health", {})
        if isinstance(health, EngineProbe):
            return health
        if health.status_code != 200:
            return EngineProbe(EngineState.UNHEALTHY, f"GET {base}/health: HTTP {health.status_code}")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        models = await _get(http, f"{base}/v1/models", headers)
        if isinstance(models, EngineProbe):
            return models
        if models.status_code in (401, 403):
            return EngineProbe(EngineState.UNAUTHORIZED, f"GET {base}/v1/models: HTTP {models.status_code}")
        if models.status_code != 200:
            return EngineProbe(EngineState.UNHEALTHY, f"GET {base}/v1/models: HTTP {models.status_code}")
        served = _model_ids(models)
        if served_model_name not in served:
            return EngineProbe(
                EngineState.MODEL_NOT_SERVED,
                f"{base}/v1/models lists {list(served)}, not {served_model_name!r}",
                served,
            )
        return EngineProbe(EngineState.READY, f"{base} serves {served_model_name!r}", served)
    finally:
        if owned:
            await http.aclose()


def _model_ids(response: httpx.Response) -> tuple[str, ...]:
    try:
        data = response.json().get("data", [])
    except (ValueError, AttributeError):
        return ()
    if not isinstance(data, list):
        return ()
    return tuple(str(item["id"]) for item in data if isinstance(item, dict) and "id" in item)


class EngineProber:
    """Probes engines over one shared HTTP client (the operator's connection pool), each call bounded by
    `timeout` seconds."""

    def __init__(self, client: httpx.AsyncClient | None = None, timeout: float = 5.0) -> None:
        self._client = client
        self._timeout = timeout

    async def probe(self, base_url: str, served_model_name: str, api_key: str | None = None) -> EngineProbe:
        return await probe_engine(
            base_url, served_model_name, api_key=api_key, http_timeout=self._timeout, client=self._client
        )
