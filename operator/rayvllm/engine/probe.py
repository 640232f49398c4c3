"""What one health probe of an engine found, as plain values. Pure: the probing itself (HTTP) is in
engine.health, so the supervisor's decisions can take a probe's result without importing an HTTP client."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EngineState(StrEnum):
    READY = "Ready"
    # Nothing listens yet: the process is starting or loading weights (or is gone: the job says which).
    STARTING = "Starting"
    # The server answers but the engine is dead (/health 5xx) or it is not vLLM (/health 4xx).
    UNHEALTHY = "Unhealthy"
    # No answer within the timeout: overloaded, or hung.
    UNRESPONSIVE = "Unresponsive"
    # Healthy, but /v1/models does not list the served model name.
    MODEL_NOT_SERVED = "ModelNotServed"
    # /v1/models refused the API key the operator holds.
    UNAUTHORIZED = "Unauthorized"
    # Healthy and listing the model, but the canary's one-token completion timed out while the engine's
    # token counters stood still: frozen (engine.canary).
    HUNG = "Hung"
    # Healthy and listing the model, but the canary's completion failed outright (dead Ray workers).
    NOT_GENERATING = "NotGenerating"


@dataclass(frozen=True)
class EngineProbe:
    state: EngineState
    detail: str
    served_models: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY


@dataclass(frozen=True)
class LoadSample:
    """What one read of an engine's /metrics says of its load (engine.health.read_load)."""

    in_flight: float
    """vllm:num_requests_running + vllm:num_requests_waiting at the moment of the read."""
    latency_seconds: float
    """vllm:e2e_request_latency_seconds_sum: the summed time in the engine (queued and running) of every
    request finished so far. Its growth over an interval, divided by the interval, is the average number of
    requests in flight over it (Little's law), which a single read of the gauges can miss."""
