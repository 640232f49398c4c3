"""tests/support/session.py: the tiers' order whatever the paths given, and the line that says what a marker
expression left out and where it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from tests.support.session import TESTS_DIR, deselected_summary, in_tier_order, tier_rank


@dataclass
class FakeItem:
    """What the bookkeeping reads of a pytest.Item: its path and its markers."""

    path: Path
    markers: set[str] = field(default_factory=set)

    def get_closest_marker(self, name: str) -> str | None:
        return name if name in self.markers else None


def items(*fakes: FakeItem) -> list[pytest.Item]:
    return [cast(pytest.Item, fake) for fake in fakes]


def test_tiers_rank_unit_integration_e2e_then_anything_else() -> None:
    ranks = [tier_rank(TESTS_DIR / tier / "test_x.py") for tier in ("unit", "integration", "e2e", "support")]
    assert ranks == [0, 1, 2, 3]
    assert tier_rank(Path("/elsewhere/test_x.py")) == 3


def test_items_sort_by_tier_and_keep_their_order_within_one() -> None:
    e2e_a, e2e_b = FakeItem(TESTS_DIR / "e2e" / "test_a.py"), FakeItem(TESTS_DIR / "e2e" / "test_b.py")
    integration, unit = (
        FakeItem(TESTS_DIR / "integration" / "test_c.py"),
        FakeItem(TESTS_DIR / "unit" / "t.py"),
    )
    collected = items(e2e_b, e2e_a, integration, unit)
    in_tier_order(collected)
    assert collected == items(unit, integration, e2e_b, e2e_a)


def test_the_deselected_line_names_the_make_target_of_each_test_left_out() -> None:
    path = TESTS_DIR / "e2e" / "test_x.py"
    left_out = items(
        FakeItem(path, {"day2"}), FakeItem(path, {"chaos"}), FakeItem(path, {"chaos"}), FakeItem(path)
    )
    assert deselected_summary(left_out, "chaos") == (
        "[deselected] 4 tests left out by -m 'chaos': "
        "2 run by `make chaos`, 1 run by `make day2`, 1 run by `make test`"
    )
    assert deselected_summary([], "not day2") == "[deselected] none by -m 'not day2'"
