"""The test session's own bookkeeping for the run's log (tests/conftest.py's hooks call it): the tiers in
their order, the tests a marker expression left out and which make target runs them, and the test running
now, for a deadline or an interrupt to name."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]
# Cheapest and least dependent first: unit needs nothing running; integration is fast and sensitive to
# what e2e leaves behind on the shared cluster.
TIERS = ("unit", "integration", "e2e")
# The make target that runs a test `make test` leaves out, by its marker (the first that matches wins).
TARGET_BY_MARKER = (("day2", "make day2"), ("chaos", "make chaos"))
# Where the test running now is written, when set (hack/run-tests.sh reads it when its deadline passes).
RUNNING_TEST_FILE_ENV = "RAYVLLM_RUNNING_TEST_FILE"


def tier_rank(path: Path) -> int:
    """The position of a test file's tier in TIERS; anything else after them."""
    try:
        first = path.resolve().relative_to(TESTS_DIR).parts[0]
    except ValueError:
        return len(TIERS)
    return TIERS.index(first) if first in TIERS else len(TIERS)


def in_tier_order(items: list[pytest.Item]) -> None:
    """Sort `items` by tier whatever the order of the paths given; stable, so files, modules and their
    fixtures stay grouped as collected."""
    items.sort(key=lambda item: tier_rank(item.path))


def target_of(item: pytest.Item) -> str:
    for marker, target in TARGET_BY_MARKER:
        if item.get_closest_marker(marker) is not None:
            return target
    return "make test"


def deselected_summary(items: Sequence[pytest.Item], markexpr: str) -> str:
    """One line: how many tests the marker expression left out, and which make target runs them."""
    if not items:
        return f"[deselected] none by -m '{markexpr}'" if markexpr else "[deselected] none"
    by_target = Counter(target_of(item) for item in items)
    where = ", ".join(f"{count} run by `{target}`" for target, count in sorted(by_target.items()))
    tests = "test" if len(items) == 1 else "tests"
    return f"[deselected] {len(items)} {tests} left out by -m '{markexpr}': {where}"


class RunningTest:
    """The test between its start and its end (None between tests), also written to the file named by
    RAYVLLM_RUNNING_TEST_FILE, which outlives a pytest that had to be killed."""

    def __init__(self) -> None:
        self.nodeid: str | None = None
        self.last_finished: str | None = None
        self.interrupted_during: str | None = None
        named = os.environ.get(RUNNING_TEST_FILE_ENV)
        self.file = Path(named) if named else None

    def started(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self._write(nodeid)

    def finished(self, nodeid: str) -> None:
        self.nodeid, self.last_finished = None, nodeid
        self._write(f"(between tests; the last one to finish: {nodeid})")

    def describe(self) -> str:
        if self.nodeid is not None:
            return self.nodeid
        return f"no test (between tests; the last one to finish: {self.last_finished or 'none'})"

    def _write(self, text: str) -> None:
        if self.file is not None:
            self.file.write_text(text + "\n")


def session_timeout_reason(reason: str, item: pytest.Item) -> str:
    """pytest-timeout's session timeout stops the run after the test it expired in, with a reason that names
    no test: say which, and how many did not run."""
    items = item.session.items
    left = len(items) - items.index(item) - 1 if item in items else 0
    return f"{reason} during {item.nodeid}; the {left} tests after it did not run"
