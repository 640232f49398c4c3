"""Is an engine serving? Asks vLLM's OpenAI server itself: GET /health, then GET /v1/models.

A RUNNING Ray job only means the process started; loading a model takes minutes. vLLM answers
/health 200 once the engine is up and 503 once the engine core has died; before the server binds its
port, connections are refused. /health is never behind the API key; /v1/* is. Every call is bounded
(rayvllm.bounded): an engine runs the tenant's image, and may answer slowly or without end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

import httpx
from prometheus_client.parser import text_string_to_metric_families

from rayvllm.bounded import Answer, Bounds, exchange, fetch, within
from rayvllm.engine.canary import (
    CanaryAnswer,
    CanaryOutcome,
    CanaryRecord,
    canary_due,
    first_record,
    judge_canary,
)

# Re-exported (the `as` form): callers of the probe take its result types from here too.
from rayvllm.engine.probe import EngineProbe as EngineProbe
from rayvllm.engine.probe import EngineState as EngineState
from rayvllm.engine.probe import LoadSample
from rayvllm.errors import AnswerTooLargeError

log = logging.getLogger(__name__)

# A kept-alive connection the engine closed as a request went out on it ("server disconnected without
# sending a response"): vLLM's server drops idle connections after VLLM_HTTP_TIMEOUT_KEEP_ALIVE (5 s). The
# request did not reach the engine, so it goes once more, on a new connection; a refused one is not retried.
_DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


async def _get(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], bounds: Bounds
) -> Answer | EngineProbe:
    try:
        # One deadline for both tries: the call, not each request, is bounded.
        async with within(bounds.deadline, f"GET {url}"):
            try:
                return await exchange(client, "GET", url, bounds, headers=headers)
            except _DROPPED as dropped:
                log.info(
                    "GET %s: %s: %s; asking again on a new connection", url, type(dropped).__name__, dropped
                )
                return await exchange(client, "GET", url, bounds, headers=headers)
    except httpx.TimeoutException as e:
        return EngineProbe(EngineState.UNRESPONSIVE, f"GET {url}: timed out ({type(e).__name__})")
    except httpx.TransportError as e:
        return EngineProbe(EngineState.STARTING, f"GET {url}: {type(e).__name__}: {e}")
    except AnswerTooLargeError as e:
        # No vLLM answers /health or /v1/models with megabytes: whatever does is not a healthy engine.
        return EngineProbe(EngineState.UNHEALTHY, str(e))


async def probe_engine(
    base_url: str,
    served_model_name: str,
    *,
    api_key: str | None = None,
    bounds: Bounds | None = None,
    client: httpx.AsyncClient | None = None,
) -> EngineProbe:
    """One probe of the engine at `base_url` (e.g. http://10.0.0.7:8000). Never raises for the
    engine's answers or silence: every outcome is an EngineState. Each request keeps to `bounds`."""
    bounds = bounds or Bounds()
    owned = client is None
    http = client or httpx.AsyncClient(timeout=bounds.timeout)
    base = base_url.rstrip("/")
    try:
        health = await _get(http, f"{base}/health", {}, bounds)
        if isinstance(health, EngineProbe):
            return health
        if health.status_code != 200:
            return EngineProbe(EngineState.UNHEALTHY, f"GET {base}/health: HTTP {health.status_code}")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        models = await _get(http, f"{base}/v1/models", headers, bounds)
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


def _model_ids(response: Answer) -> tuple[str, ...]:
    try:
        data = response.json().get("data", [])
    except (ValueError, AttributeError):
        return ()
    if not isinstance(data, list):
        return ()
    return tuple(str(item["id"]) for item in data if isinstance(item, dict) and "id" in item)


# vLLM's progress counters: tokens prefilled and generated since the engine started.
PROGRESS_COUNTERS = frozenset({"vllm:generation_tokens_total", "vllm:prompt_tokens_total"})
# vLLM's load gauges, the autoscaler's signal: requests being generated and requests queued.
LOAD_GAUGES = frozenset({"vllm:num_requests_running", "vllm:num_requests_waiting"})
LATENCY_SUM = "vllm:e2e_request_latency_seconds_sum"


def metric_sums(metrics_text: str, names: frozenset[str]) -> dict[str, float]:
    """The sum of each named metric's samples (over their labels) in a /metrics answer; a name the answer
    lacks is absent. Samples are matched by name, so an answer without TYPE lines counts too; an answer that
    does not parse counts as having none."""
    sums: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(metrics_text):
            for sample in family.samples:
                if sample.name in names:
                    sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    except ValueError:
        return {}
    return sums


def progress_tokens(metrics_text: str) -> float | None:
    """The sum of vLLM's token counters in a /metrics answer (None: it has none)."""
    sums = metric_sums(metrics_text, PROGRESS_COUNTERS)
    return sum(sums.values()) if sums else None


def requests_in_flight(metrics_text: str) -> LoadSample | None:
    """Requests running + waiting in a /metrics answer, and the summed latency of the finished ones (None
    unless it has the gauges and the latency histogram)."""
    sums = metric_sums(metrics_text, LOAD_GAUGES | {LATENCY_SUM})
    if sums.keys() != LOAD_GAUGES | {LATENCY_SUM}:
        return None
    return LoadSample(sum(sums[name] for name in LOAD_GAUGES), sums[LATENCY_SUM])


async def _read_metrics(client: httpx.AsyncClient, base_url: str, bounds: Bounds) -> str | None:
    """vLLM's /metrics (not behind the API key), or None when it does not answer 200 within `bounds`."""
    try:
        response = await fetch(client, "GET", f"{base_url.rstrip('/')}/metrics", bounds)
    except (httpx.HTTPError, AnswerTooLargeError):
        return None
    return response.text if response.status_code == 200 else None


async def read_progress(client: httpx.AsyncClient, base_url: str, bounds: Bounds) -> float | None:
    text = await _read_metrics(client, base_url, bounds)
    return None if text is None else progress_tokens(text)


async def read_load(client: httpx.AsyncClient, base_url: str, bounds: Bounds) -> LoadSample | None:
    text = await _read_metrics(client, base_url, bounds)
    return None if text is None else requests_in_flight(text)


async def canary_completion(
    client: httpx.AsyncClient,
    base_url: str,
    served_model_name: str,
    api_key: str | None,
    canary_timeout: float,
    bounds: Bounds | None = None,
) -> CanaryAnswer:
    """One completion of one token (`max_tokens: 1`), bounded by `canary_timeout` (each of its calls, answer
    included), with the engine's token counters read before and after it."""
    bounds = replace(bounds or Bounds(), timeout=canary_timeout, deadline=canary_timeout)
    base = base_url.rstrip("/")
    before = await read_progress(client, base, bounds)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": served_model_name, "prompt": "Hi", "max_tokens": 1, "temperature": 0}
    try:
        response = await fetch(client, "POST", f"{base}/v1/completions", bounds, json=body, headers=headers)
    except httpx.TimeoutException:
        after = await read_progress(client, base, bounds)
        return CanaryAnswer(CanaryOutcome.TIMED_OUT, f"timed out after {canary_timeout:.0f}s", before, after)
    except (httpx.TransportError, AnswerTooLargeError) as e:
        return CanaryAnswer(CanaryOutcome.FAILED, f"{type(e).__name__}: {e}", before, None)
    if response.status_code != 200:
        detail = f"HTTP {response.status_code}: {response.text.strip()[-300:]}"
        return CanaryAnswer(CanaryOutcome.FAILED, detail, before, await read_progress(client, base, bounds))
    return CanaryAnswer(CanaryOutcome.ANSWERED, "answered", before, None)


class EngineProber:
    """Probes engines over one shared HTTP client (the operator's connection pool), each call within
    `bounds`, and runs each healthy engine's canary completion every `canary_interval` seconds
    (0: never) within `canary_timeout` (engine.canary). Canary records live here, in the operator's memory:
    after an operator restart the clock starts again at each engine's first healthy probe."""

    # Records older than this many intervals belong to engines nobody probes any more.
    FORGET_AFTER_INTERVALS = 10

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        bounds: Bounds | None = None,
        *,
        canary_interval: float = 0.0,
        canary_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._bounds = bounds or Bounds()
        self._canary_interval = canary_interval
        self._canary_timeout = canary_timeout
        self._clock = clock
        self._canaries: dict[tuple[str, str], CanaryRecord] = {}
        self._forgotten_at = clock()

    async def probe(self, base_url: str, served_model_name: str, api_key: str | None = None) -> EngineProbe:
        probe = await probe_engine(
            base_url, served_model_name, api_key=api_key, bounds=self._bounds, client=self._client
        )
        if not probe.ready or self._canary_interval <= 0:
            return probe
        return await self._with_canary(probe, base_url, served_model_name, api_key)

    async def load(self, base_url: str) -> LoadSample | None:
        """The engine's load, from its /metrics (None: it did not say)."""
        if self._client is None:
            async with httpx.AsyncClient(timeout=self._bounds.timeout) as client:
                return await read_load(client, base_url, self._bounds)
        return await read_load(self._client, base_url, self._bounds)

    async def _with_canary(
        self, probe: EngineProbe, base_url: str, served_model_name: str, api_key: str | None
    ) -> EngineProbe:
        key, now = (base_url, served_model_name), self._clock()
        self._forget_old(now)
        last = self._canaries.get(key)
        if last is None:
            self._canaries[key] = first_record(now)
            return probe
        if not canary_due(last, now, self._canary_interval):
            return probe
        if self._client is None:
            async with httpx.AsyncClient(timeout=self._bounds.timeout) as client:
                answer = await canary_completion(
                    client, base_url, served_model_name, api_key, self._canary_timeout, self._bounds
                )
        else:
            answer = await canary_completion(
                self._client, base_url, served_model_name, api_key, self._canary_timeout, self._bounds
            )
        verdict = judge_canary(answer)
        self._canaries[key] = CanaryRecord(at=self._clock(), passed=verdict is None)
        return probe if verdict is None else verdict

    def _forget_old(self, now: float) -> None:
        horizon = self._canary_interval * self.FORGET_AFTER_INTERVALS
        if now - self._forgotten_at < horizon:
            return
        self._forgotten_at = now
        self._canaries = {k: r for k, r in self._canaries.items() if now - r.at < horizon}
