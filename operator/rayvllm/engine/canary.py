"""The engine canary's judgement, as pure functions: is an engine that answers /health and /v1/models
actually generating?

vLLM's API server keeps answering /health and /v1/models while its engine core is frozen or its Ray
workers are gone (the server checks only that the engine core process has not *errored*), so the
supervisor asks, every `interval` seconds, for one token (`max_tokens: 1`) within a timeout. A canary that
times out is not yet a verdict: a busy engine has a queue in front of it. The engine's own progress
counters (vLLM's `vllm:generation_tokens_total` and `vllm:prompt_tokens_total` on /metrics), read before
and after, tell a busy engine (the counters moved) from a hung one (they did not). Heavy load never gets
an engine restarted by the canary.

The HTTP is in engine.health; the time is the caller's (seconds on any monotonic clock).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from rayvllm.engine.probe import EngineProbe, EngineState


class CanaryOutcome(StrEnum):
    ANSWERED = "answered"  # a completion came back
    TIMED_OUT = "timed out"  # no answer within the timeout
    FAILED = "failed"  # an HTTP error or a refused connection: the engine cannot generate


@dataclass(frozen=True)
class CanaryAnswer:
    """What one canary request got, and the engine's progress counter (tokens processed so far) read just
    before and just after it (None: /metrics did not say)."""

    outcome: CanaryOutcome
    detail: str
    tokens_before: float | None = None
    tokens_after: float | None = None

    @property
    def progressed(self) -> bool:
        """The engine processed tokens while the canary waited: it is busy, not hung."""
        return (
            self.tokens_before is not None
            and self.tokens_after is not None
            and self.tokens_after > self.tokens_before
        )


@dataclass(frozen=True)
class CanaryRecord:
    """The last canary of one engine: when (monotonic seconds) and whether it passed."""

    at: float
    passed: bool


def canary_due(last: CanaryRecord | None, now: float, interval: float) -> bool:
    """A canary is due `interval` seconds after the last one, and at every probe while the last one failed
    (so a hung engine stays unhealthy until it generates again). An engine's first healthy probe only
    starts the clock (`first_record`): a canary does not delay Ready. `interval` 0 turns the canary off."""
    if interval <= 0 or last is None:
        return False
    return not last.passed or now - last.at >= interval


def first_record(now: float) -> CanaryRecord:
    return CanaryRecord(at=now, passed=True)


def judge_canary(answer: CanaryAnswer) -> EngineProbe | None:
    """None: the engine generates (or is busy generating for others). Otherwise the probe state that makes
    the supervisor treat it as unhealthy (restarted once the unhealthy grace is over)."""
    if answer.outcome is CanaryOutcome.ANSWERED or answer.progressed:
        return None
    if answer.outcome is CanaryOutcome.FAILED:
        return EngineProbe(EngineState.NOT_GENERATING, f"canary completion failed: {answer.detail}")
    counters = (
        "its token counters did not move"
        if answer.tokens_before is not None and answer.tokens_after is not None
        else "its /metrics gave no token counters"
    )
    return EngineProbe(EngineState.HUNG, f"canary completion {answer.detail} and {counters}")
