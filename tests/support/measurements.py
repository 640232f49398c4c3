"""Numbers the tests measure but judge only loosely (latencies, repair times, each asserted against a bound
well above what it takes): printed where they are taken, so a failure shows them beside it, and listed
again at the end of the run (tests/conftest.py's terminal summary), so a slowing trend shows in the CI log
long before it becomes a failure."""

from __future__ import annotations

LINES: list[str] = []


def report(line: str) -> None:
    print(line)
    LINES.append(line)
