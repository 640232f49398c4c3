"""The engine canary: its verdict as a table (rayvllm.engine.canary), vLLM's token counters read from a
/metrics answer, and the prober's canary cadence against vLLM's documented answers played by an httpx
MockTransport (the real engine is frozen and killed by the chaos suite, `make chaos`)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from rayvllm.engine.canary import (
    CanaryAnswer,
    CanaryOutcome,
    CanaryRecord,
    canary_due,
    judge_canary,
)
from rayvllm.engine.health import EngineProber, progress_tokens, requests_in_flight
from rayvllm.engine.probe import EngineState, LoadSample

# A trimmed /metrics answer of vLLM 0.32's OpenAI server.
METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 1.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 30.0
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{engine="0",model_name="tiny"} 1.7e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="tiny"} 12.0
"""


def test_progress_is_the_sum_of_prompt_and_generation_tokens() -> None:
    assert progress_tokens(METRICS) == 42.0
    assert progress_tokens("# nothing of vLLM here\nup 1\n") is None
    assert progress_tokens("not { prometheus") is None


def test_requests_in_flight_are_running_plus_waiting_over_every_engine_label() -> None:
    waiting = """\
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 2.0
vllm:num_requests_waiting{engine="1",model_name="tiny"} 1.0
"""
    latency = """\
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 7.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="tiny"} 7.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="tiny"} 3.5
"""
    assert requests_in_flight(METRICS + waiting + latency) == LoadSample(in_flight=4.0, latency_seconds=3.5)
    # Without both gauges and the latency there is no signal: part of it would read a loaded engine as idle.
    assert requests_in_flight(METRICS + latency) is None
    assert requests_in_flight(waiting + latency) is None
    assert requests_in_flight(METRICS + waiting) is None
    assert requests_in_flight("not { prometheus") is None


@pytest.mark.parametrize(
    ("answer", "state"),
    [
        pytest.param(CanaryAnswer(CanaryOutcome.ANSWERED, "answered", 1, None), None, id="answered"),
        pytest.param(
            CanaryAnswer(CanaryOutcome.TIMED_OUT, "timed out", 10, 25), None, id="timed out but busy: serving"
        ),
        pytest.param(
            CanaryAnswer(CanaryOutcome.TIMED_OUT, "timed out", 10, 10), EngineState.HUNG, id="counters still"
        ),
        pytest.param(
            CanaryAnswer(CanaryOutcome.TIMED_OUT, "timed out", None, None), EngineState.HUNG, id="no counters"
        ),
        pytest.param(
            CanaryAnswer(CanaryOutcome.FAILED, "HTTP 500", 10, 10),
            EngineState.NOT_GENERATING,
            id="generation fails",
        ),
        pytest.param(
            CanaryAnswer(CanaryOutcome.FAILED, "HTTP 500", 10, 11), None, id="failed for us, busy for others"
        ),
    ],
)
def test_verdict(answer: CanaryAnswer, state: EngineState | None) -> None:
    verdict = judge_canary(answer)
    assert (verdict.state if verdict else None) is state


@pytest.mark.parametrize(
    ("last", "now", "interval", "due"),
    [
        pytest.param(None, 100.0, 60.0, False, id="first healthy probe only starts the clock"),
        pytest.param(CanaryRecord(50.0, True), 100.0, 60.0, False, id="passed, within interval"),
        pytest.param(CanaryRecord(40.0, True), 100.0, 60.0, True, id="passed, interval over"),
        pytest.param(CanaryRecord(99.0, False), 100.0, 60.0, True, id="failed: every probe"),
        pytest.param(CanaryRecord(0.0, False), 100.0, 0.0, False, id="interval 0: off"),
    ],
)
def test_when_a_canary_is_due(last: CanaryRecord | None, now: float, interval: float, due: bool) -> None:
    assert canary_due(last, now, interval) is due


class Engine:
    """vLLM's server as the prober sees it: /health and /v1/models answer; completions answer, fail or
    hang (a MockTransport raises the timeout httpx would); /metrics counts tokens."""

    def __init__(self) -> None:
        self.completions = "answer"  # or "hang", "fail"
        self.tokens = 0.0
        self.busy = False  # tokens move while a completion waits
        self.canaries = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/health":
            return httpx.Response(200)
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny"}]})
        if path == "/metrics":
            return httpx.Response(200, text=f'vllm:generation_tokens_total{{engine="0"}} {self.tokens}\n')
        if path == "/v1/completions":
            self.canaries += 1
            if self.busy:
                self.tokens += 50
            if self.completions == "hang":
                raise httpx.ReadTimeout("timed out", request=request)
            if self.completions == "fail":
                return httpx.Response(500, json={"error": "EngineDeadError"})
            self.tokens += 1
            return httpx.Response(200, json={"choices": [{"text": "!"}]})
        return httpx.Response(404)


def probes(engine: Engine, times: list[float], interval: float = 60.0) -> list[EngineState]:
    """The prober's states for probes at the given (monotonic) times."""
    clock: list[float] = [times[0]]

    async def run() -> list[EngineState]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(engine)) as client:
            prober = EngineProber(client, canary_interval=interval, canary_timeout=1, clock=lambda: clock[-1])
            states = []
            for t in times:
                clock.append(t)
                states.append((await prober.probe("http://engine:8000", "tiny")).state)
            return states

    return asyncio.run(run())


def test_a_healthy_engine_gets_a_canary_per_interval_and_stays_ready() -> None:
    engine = Engine()
    assert probes(engine, [0, 15, 30, 61, 75, 122]) == [EngineState.READY] * 6
    assert engine.canaries == 2  # at 61 and 122: the first probe only started the clock


def test_a_hung_engine_is_hung_at_every_probe_until_it_generates_again() -> None:
    engine = Engine()
    engine.completions = "hang"
    states = probes(engine, [0, 61, 63, 65])
    assert states == [EngineState.READY, EngineState.HUNG, EngineState.HUNG, EngineState.HUNG]
    assert engine.canaries == 3


def test_a_busy_engine_whose_canary_times_out_is_not_hung() -> None:
    engine = Engine()
    engine.completions, engine.busy = "hang", True
    assert probes(engine, [0, 61, 122]) == [EngineState.READY] * 3


def test_an_engine_that_cannot_generate_is_reported() -> None:
    engine = Engine()
    engine.completions = "fail"
    assert probes(engine, [0, 61]) == [EngineState.READY, EngineState.NOT_GENERATING]


def test_interval_zero_sends_no_canary() -> None:
    engine = Engine()
    engine.completions = "hang"
    assert probes(engine, [0, 61, 1000], interval=0) == [EngineState.READY] * 3
    assert engine.canaries == 0
