"""The chaos suite's pieces: faults injected on a schedule in a thread of their own, the watchers that check
invariants while they run, and the table every scenario adds its row to.

How big a run is comes from RAYVLLM_CHAOS: `reduced` (the default, part of `make test`) or `full`
(`make chaos`). Every fault loop is bounded in count and time and stops by itself.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hack.localcluster.helm_release import OperatorRelease
from tests.e2e.serving import jobs_of, serving_ips
from tests.support.kube import Kube

FULL = os.environ.get("RAYVLLM_CHAOS", "reduced") == "full"
NON_TERMINAL = {"PENDING", "RUNNING"}
# rayvllm-<name>-r<replica>-g<generation>-a<attempt>-<hash8> (rayvllm.engine.job.submission_id)
SUBMISSION = re.compile(r"-r(\d+)-g(\d+)-a(\d+)-[0-9a-f]{8}$")


@dataclass
class ChaosRow:
    """One line of the chaos table."""

    scenario: str
    faults: int = 0
    requests_sent: int = 0
    requests_failed: int = 0
    duplicate_submissions: int = 0
    orphans: int = 0
    heal_seconds: float = 0.0
    notes: str = ""


# This session's rows; tests/e2e/conftest.py prints them as one table at the end of the run.
TABLE: list[ChaosRow] = []


def format_table(rows: list[ChaosRow]) -> str:
    head = (
        "| scenario | faults | requests sent / failed | duplicate submissions | orphans | heal (s) | notes |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---|"]
    lines += [
        f"| {r.scenario} | {r.faults} | {r.requests_sent} / {r.requests_failed} | {r.duplicate_submissions} "
        f"| {r.orphans} | {r.heal_seconds:.1f} | {r.notes} |"
        for r in rows
    ]
    return "\n".join(lines)


def submission_parts(submission_id: str) -> tuple[int, int, int] | None:
    """(replica, generation, attempt) of one of our Ray submission ids."""
    found = SUBMISSION.search(submission_id)
    return (int(found[1]), int(found[2]), int(found[3])) if found else None


def duplicates(jobs: dict[str, str]) -> int:
    """Ray jobs beyond one that are not terminal for the same engine replica and generation: each is a
    duplicate submission (two engines where one should run)."""
    live = Counter(
        parts[:2]
        for sid, status in jobs.items()
        if status in NON_TERMINAL and (parts := submission_parts(sid))
    )
    return sum(count - 1 for count in live.values() if count > 1)


def container_pids(container_id: str) -> list[int]:
    """The host pids of a container's processes: those whose cgroup path names the container's id (both the
    systemd and the cgroupfs layouts of containerd do)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if container_id in (proc / "cgroup").read_text():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@dataclass
class OperatorStorm:
    """SIGKILLs the in-cluster operator at random intervals in [low, high] seconds: its container's processes
    from this machine, then its pod (force, no grace), so a new pod starts at once (a container killed in
    place would meet the kubelet's crash-loop backoff, which grows to minutes). Each instance's log is kept
    before it dies, for the secret scan and the record."""

    release: OperatorRelease
    limit: int
    low: float = 2.0
    high: float = 8.0
    seed: int = 0
    kills: int = 0
    """Operator pods killed (a pod still starting has no process yet: it is deleted all the same)."""
    processes_killed: int = 0
    logs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> OperatorStorm:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        pace = random.Random(self.seed)
        while self.kills < self.limit and not self._stop.wait(pace.uniform(self.low, self.high)):
            try:
                self.kill_once()
            except Exception as failure:  # a failed kill is reported, never a silent stop of the storm
                self.errors.append(f"{type(failure).__name__}: {failure}")

    def kill_once(self) -> None:
        pod = self.release.pod()
        if pod is None:
            return  # the next one is not created yet: nothing to kill this time
        name = pod["metadata"]["name"]
        self.logs.append(self.release.kubectl("logs", "-n", self.release.namespace, name, check=False))
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        for status in statuses:
            container_id = (status.get("containerID") or "").rpartition("://")[2]
            for pid in container_pids(container_id) if container_id else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    self.processes_killed += 1
        self.release.kubectl(
            "delete", "pod", "-n", self.release.namespace, name, "--force", "--grace-period=0", "--wait=false",
            check=False,
        )  # fmt: skip
        self.kills += 1


@dataclass
class Watch:
    """Samples, every `interval` seconds until stopped, the Ray jobs of one VLLMCluster (the most duplicates
    seen at once) and, once `serving` is set, whether its Service has lost every endpoint."""

    kube: Kube
    namespace: str
    name: str
    interval: float = 2.0
    serving: threading.Event = field(default_factory=threading.Event)
    most_duplicates: int = 0
    submissions: set[str] = field(default_factory=set)
    dark_samples: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Watch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        try:
            jobs = jobs_of(self.kube, self.namespace, self.name)
        except Exception:  # no Ray cluster yet, or its dashboard between restarts: nothing to count
            jobs = {}
        self.submissions |= set(jobs)
        self.most_duplicates = max(self.most_duplicates, duplicates(jobs))
        if self.serving.is_set():
            self.samples += 1
            self.dark_samples += not serving_ips(self.kube, self.namespace, self.name)


def status_shape(obj: dict[str, Any]) -> dict[str, Any]:
    """What two VLLMClusters of the same spec must agree on once settled: the phase and each condition's
    status and reason (messages name the object)."""
    status = obj.get("status") or {}
    return {
        "phase": status.get("phase"),
        **{c["type"]: (c.get("status"), c.get("reason")) for c in status.get("conditions") or []},
    }


def secret_hits(texts: list[str], secrets: list[str]) -> int:
    return sum(text.count(secret) for text in texts for secret in secrets)
