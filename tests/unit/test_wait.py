"""wait_for: polls until a truthy value, treats TransientError as "not yet", and fails naming what it waited
for, the last value and the last transient error."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.wait import TransientError, WaitTimeoutError, wait_for

FAST = {"interval": 0.001, "max_interval": 0.001}


def answers(*outcomes: object) -> Callable[[], object]:
    """A probe giving `outcomes` in turn (raising those that are exceptions), then its last one forever."""
    replies: Iterator[object] = iter(outcomes)
    last: list[object] = [None]

    def probe() -> object:
        last[0] = next(replies, last[0])
        if isinstance(last[0], BaseException):
            raise last[0]
        return last[0]

    return probe


def test_returns_the_first_truthy_value_past_transient_errors() -> None:
    probe = answers(TransientError("HTTP 503"), None, TransientError("connection refused"), {"ok": 1})
    assert wait_for(probe, timeout=5, what="the object", **FAST) == {"ok": 1}


def test_only_transient_errors_time_out_naming_what_and_the_last_error() -> None:
    probe = answers(TransientError("HTTP 503: first"), TransientError("HTTP 429: last"))
    with pytest.raises(WaitTimeoutError) as failure:
        wait_for(probe, timeout=0.05, what="the RayCluster", **FAST)
    message = str(failure.value)
    assert "waiting for the RayCluster" in message
    assert "last seen: None" in message
    assert "last transient error: HTTP 429: last" in message
    assert isinstance(failure.value.__cause__, TransientError)


def test_the_last_value_and_an_earlier_transient_error_are_both_reported() -> None:
    probe = answers(TransientError("read timed out"), [])
    with pytest.raises(WaitTimeoutError, match=r"last seen: \[\]; last transient error: read timed out"):
        wait_for(probe, timeout=0.05, what="pods", **FAST)


def test_a_falsy_value_alone_times_out_without_a_transient_error() -> None:
    with pytest.raises(WaitTimeoutError) as failure:
        wait_for(answers(0), timeout=0.02, what="a count", **FAST)
    assert str(failure.value).endswith("waiting for a count; last seen: 0")
    assert failure.value.__cause__ is None


def test_any_other_error_ends_the_wait_at_once() -> None:
    calls: list[int] = []

    def probe() -> object:
        calls.append(1)
        raise AssertionError("HTTP 403: forbidden")

    with pytest.raises(AssertionError, match="HTTP 403"):
        wait_for(probe, timeout=5, what="a forbidden object", **FAST)
    assert len(calls) == 1


def test_a_transient_error_is_not_an_assertion() -> None:
    # Code that treats AssertionError as "a check failed" must not mistake "try again" for it.
    assert not issubclass(TransientError, AssertionError)
