"""The chaos suite's invariant arithmetic: what counts as a duplicate submission, how objects are compared."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from hack.localcluster.workloads import REAL_NODE_SELECTOR, redis
from rayvllm.engine.job import EngineRef, submission_id
from tests.e2e.chaos import (
    Background,
    ChaosRow,
    RouteSample,
    container_id,
    duplicates,
    format_table,
    live_jobs_per_replica,
    misrouted,
    restart_count,
    status_shape,
    submission_parts,
)
from tests.e2e.leaks import SecretScan


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


def test_table() -> None:
    table = format_table([ChaosRow("storm", faults=12, requests_sent=80, heal_seconds=3.25)])
    assert "| storm | 12 | 80 / 0 | 0 | 0 | 3.2 |" in table


def test_secret_scan_searches_every_place_for_every_value_of_the_run() -> None:
    scan = SecretScan()
    scan.secret("hf_token", "HF token")
    scan.keep("storm: operator log", "started; ")
    scan.keep("storm: operator log", "hf_token in a log line")  # kept twice: appended, not replaced
    scan.keep("gcs: status", "clean")
    scan.secret("redis-pw", "Redis password")  # registered by a later scenario, searched everywhere
    scan.keep("gcs: events", "redis-pw")
    assert sorted(scan.leaks()) == [("gcs: events", "Redis password"), ("storm: operator log", "HF token")]
    assert scan.summary().endswith("searched in 3 places (0.0 MB): 2 hits")


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        ({}, {}),
        # A healed replica: the failed attempt and the old generation do not count.
        ({sid(0, 1, 0): "FAILED", sid(0, 1, 1): "RUNNING", sid(1, 1, 0): "PENDING"}, {0: 1, 1: 1}),
        # A live job of an older generation beside the new one is one too many, unlike in `duplicates`.
        ({sid(0, 1, 0): "RUNNING", sid(0, 2, 0): "RUNNING"}, {0: 2}),
        ({sid(0, 1, 0): "STOPPED", "raysubmit_x": "RUNNING"}, {}),
    ],
)
def test_live_jobs_per_replica_counts_non_terminal_jobs_across_generations(
    jobs: dict[str, str], expected: dict[int, int]
) -> None:
    assert live_jobs_per_replica(jobs) == expected


def look(after: float, *, labelled: bool, in_service: bool, answers: bool) -> RouteSample:
    return RouteSample(
        after, pod_ready=True, labelled=labelled, in_service=in_service, engine_answers=answers
    )


def test_misrouted_judges_only_after_the_notice_time_and_only_routes_without_an_engine() -> None:
    samples = [
        look(1, labelled=True, in_service=True, answers=False),  # before the operator could notice
        look(20, labelled=False, in_service=False, answers=False),  # out of the Service: right
        look(30, labelled=True, in_service=False, answers=False),  # labelled, pod not ready: wrong
        look(31, labelled=False, in_service=True, answers=False),  # an endpoint without an engine: wrong
        look(40, labelled=True, in_service=True, answers=True),  # back and serving: right
    ]
    assert misrouted(samples, slack=15) == [samples[2], samples[3]]
    assert misrouted(samples[:2] + samples[4:], slack=15) == []


def test_container_id_and_restart_count_read_the_pod_status() -> None:
    pod = {
        "status": {
            "containerStatuses": [
                {"name": "sidecar", "containerID": "containerd://aaa", "restartCount": 5},
                {"name": "ray-worker", "containerID": "containerd://0123abc", "restartCount": 2},
            ]
        }
    }
    assert container_id(pod, "ray-worker") == "0123abc"
    assert restart_count(pod, "ray-worker") == 2
    assert container_id({"status": {}}, "ray-worker") == ""
    assert restart_count({}, "ray-worker") == 0


def test_redis_runs_restricted_on_the_real_node_with_its_password_out_of_the_command_line() -> None:
    deployment, service = redis("localhost/rayvllm/redis:x", "redis-credentials", "password")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["nodeSelector"] == REAL_NODE_SELECTOR
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["imagePullPolicy"] == "Never"
    # The command names the variable, never a value; the value comes from the Secret.
    assert "requirepass $REDIS_PASSWORD" in container["command"][-1]
    assert container["env"] == [
        {
            "name": "REDIS_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "redis-credentials", "key": "password"}},
        }
    ]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == 6379


@dataclass
class Ticker(Background):
    ticks: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.ticks += 1


def test_background_loops_run_from_the_start_of_the_block_to_its_end() -> None:
    with Ticker() as ticker:
        deadline = time.monotonic() + 5
        while ticker.ticks < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ticker.ticks >= 3
    stopped = ticker.ticks
    time.sleep(0.05)
    assert ticker.ticks == stopped
    assert ticker._thread is not None and not ticker._thread.is_alive()
