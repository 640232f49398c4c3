"""Polling waits for tests: no fixed sleeps, a clear message naming what never happened."""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(AssertionError):
    pass


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    max_interval: float = 2.0,
) -> T:
    """Call `probe` until it returns a truthy value and return that value; fail after `timeout` s.

    The last value probed goes into the failure message, so a timeout says what the world looked like.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)
        interval = min(interval * 1.5, max_interval)
