"""The chaos suite's invariant arithmetic: what counts as a duplicate submission, how objects are compared."""

from __future__ import annotations

import pytest

from rayvllm.engine.job import EngineRef, submission_id
from tests.e2e.chaos import ChaosRow, duplicates, format_table, secret_hits, status_shape, submission_parts


def sid(replica: int, generation: int, attempt: int, name: str = "storm") -> str:
    return submission_id(EngineRef("ns", name, replica, generation, attempt))


@pytest.mark.parametrize("name", ["storm", "a-name-long-enough-to-be-truncated-in-the-id", "r1-g2-a3"])
def test_submission_parts_reads_the_operator_s_own_ids(name: str) -> None:
    assert submission_parts(sid(3, 12, 4, name)) == (3, 12, 4)


def test_submission_parts_ignores_foreign_jobs() -> None:
    assert submission_parts("raysubmit_abc123") is None


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        ({}, 0),
        ({sid(0, 1, 0): "RUNNING"}, 0),
        # A restart: the old attempt ended before the new one runs.
        ({sid(0, 1, 0): "FAILED", sid(0, 1, 1): "RUNNING"}, 0),
        # A Recreate: the old generation stopped.
        ({sid(0, 1, 0): "STOPPED", sid(0, 2, 0): "PENDING"}, 0),
        # Two replicas each with their own job.
        ({sid(0, 1, 0): "RUNNING", sid(1, 1, 0): "RUNNING"}, 0),
        ({sid(0, 1, 0): "RUNNING", sid(0, 1, 1): "PENDING"}, 1),
        ({sid(0, 1, 0): "RUNNING", sid(0, 1, 1): "RUNNING", sid(0, 1, 2): "PENDING"}, 2),
        ({sid(0, 1, 0): "RUNNING", "raysubmit_x": "RUNNING"}, 0),
    ],
)
def test_duplicates_counts_live_jobs_beyond_one_per_replica_and_generation(
    jobs: dict[str, str], expected: int
) -> None:
    assert duplicates(jobs) == expected


def test_status_shape_compares_phase_and_reasons_not_messages() -> None:
    def obj(message: str, reason: str = "Unschedulable") -> dict[str, object]:
        return {
            "status": {
                "phase": "Degraded",
                "conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": message}],
            }
        }

    assert status_shape(obj("pod a")) == status_shape(obj("pod b"))
    assert status_shape(obj("pod a")) != status_shape(obj("pod a", reason="RayClusterNotReady"))
    assert status_shape({})["phase"] is None


def test_table_and_secret_scan() -> None:
    table = format_table([ChaosRow("storm", faults=12, requests_sent=80, heal_seconds=3.25)])
    assert "| storm | 12 | 80 / 0 | 0 | 0 | 3.2 |" in table
    assert secret_hits(["a tok tok", "tok"], ["tok", "absent"]) == 3
