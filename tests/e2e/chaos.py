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
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import pytest

from hack.localcluster.helm_release import OperatorRelease
from rayvllm.builders.labels import SERVING, SERVING_LABEL
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


def record(row: ChaosRow, capsys: pytest.CaptureFixture[str]) -> None:
    """Adds a scenario's row to the table, and shows it at once."""
    TABLE.append(row)
    with capsys.disabled():
        print(f"\n[chaos] {row}")


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


def live_jobs_per_replica(jobs: dict[str, str]) -> dict[int, int]:
    """Non-terminal Ray jobs of each engine replica, whatever their generation: once healed, each replica
    must have exactly one."""
    counted = Counter(
        parts[0]
        for sid, status in jobs.items()
        if status in NON_TERMINAL and (parts := submission_parts(sid))
    )
    return dict(counted)


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


class Background:
    """A loop (`_run`, which waits on `_stop` between its steps) in a daemon thread from the start of a `with`
    block to its end, or to `stop()`."""

    _stop: threading.Event
    _thread: threading.Thread | None

    def __enter__(self) -> Self:
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
        raise NotImplementedError


def kill_container(container_id: str) -> int:
    """SIGKILL every process of a container from this machine (no exec into it: its pid 1 ignores signals
    sent from inside its own pid namespace); the kubelet then restarts it in the same pod. How many were
    killed."""
    killed = 0
    for pid in container_pids(container_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def container_id(pod: dict[str, Any], container: str) -> str:
    """The runtime's id of `container` in `pod` (its status' containerID without the `containerd://`)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status["name"] == container:
            return str(status.get("containerID") or "").rpartition("://")[2]
    return ""


def container_processes(container_id: str) -> dict[int, str]:
    """pid -> command line of each process of a container (what is left of those that exited meanwhile: none)."""
    found = {}
    for pid in container_pids(container_id):
        with contextlib.suppress(OSError):
            found[pid] = (
                (Path("/proc") / str(pid) / "cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
    return found


def memory_cgroup(container_id: str) -> Path:
    """The memory cgroup of a container on this machine: cgroup v1's memory hierarchy, or the unified one."""
    for root in (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")):
        found = [p for p in root.glob(f"kubepods*/**/*{container_id}*") if p.is_dir()]
        if found:
            return found[0]
    raise AssertionError(f"no memory cgroup of container {container_id} under /sys/fs/cgroup")


def oom_kills(cgroup: Path) -> int:
    """How many processes the kernel's OOM killer has killed in a memory cgroup (its `oom_kill` counter: in
    memory.oom_control on cgroup v1, memory.events on v2)."""
    for name in ("memory.oom_control", "memory.events"):
        if (cgroup / name).exists():
            for line in (cgroup / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    raise AssertionError(f"the kernel keeps no oom_kill counter in {cgroup}")


# What the raylet logs (raylet.out, INFO) when its memory monitor finds the node above its threshold and when
# it kills workers for it.
RAY_MEMORY_MONITOR_LINES = re.compile(r"memory usage above threshold|Killing \d+ worker\(s\)")


def ray_memory_monitor_lines(container_id: str) -> int:
    """How many lines of a Ray container's raylet logs say its memory monitor found the node out of memory,
    read through the root of one of the container's processes on this machine; 0 when no log is found.
    (Its session directory by name: `session_latest` is an absolute symlink, which would resolve on this
    machine's root.)"""
    for pid in container_pids(container_id):
        ray_dir = Path("/proc") / str(pid) / "root" / "tmp" / "ray"
        with contextlib.suppress(OSError):
            return sum(
                len(RAY_MEMORY_MONITOR_LINES.findall(log.read_text(errors="replace")))
                for log in ray_dir.glob("session_2*/logs/raylet.out*")
            )
    return 0


def kernel_oom_victims(container_id: str) -> list[str]:
    """The processes (name and pid) the kernel's OOM killer chose in a container, from the kernel log
    (`dmesg`); empty when the log cannot be read."""
    log = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    chosen = re.finditer(rf"task_memcg=[^,]*{re.escape(container_id)},task=([^,]+),pid=(\d+)", log)
    return [f"{found[1]} (pid {found[2]})" for found in chosen]


def restart_count(pod: dict[str, Any], container: str) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount", 0)) for s in statuses if s["name"] == container)


@dataclass
class OperatorStorm(Background):
    """SIGKILLs the in-cluster operator at random intervals in [low, high] seconds: its container's processes
    from this machine, then its pod (force, no grace), so a new pod starts at once (a container killed in
    place would meet the kubelet's crash-loop backoff, which grows to minutes). Each instance's log is kept
    before it dies, for the secret scan and the record."""

    release: OperatorRelease
    limit: int
    """Operator processes to SIGKILL; the storm then stops by itself."""
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

    def _run(self) -> None:
        pace = random.Random(self.seed)
        while self.processes_killed < self.limit and not self._stop.wait(pace.uniform(self.low, self.high)):
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
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if running := (status.get("containerID") or "").rpartition("://")[2]:
                self.processes_killed += kill_container(running)
        self.release.kubectl(
            "delete", "pod", "-n", self.release.namespace, name, "--force", "--grace-period=0", "--wait=false",
            check=False,
        )  # fmt: skip
        self.kills += 1


@dataclass
class Watch(Background):
    """Samples, every `interval` seconds until stopped, the Ray jobs of one VLLMCluster (the most duplicates
    seen at once) and, once `serving` is set, whether its Service has lost every endpoint."""

    kube: Kube
    namespace: str
    name: str
    interval: float = 2.0
    serving: threading.Event = field(default_factory=threading.Event)
    most_duplicates: int = 0
    worst: dict[str, str] = field(default_factory=dict)  # the jobs when most_duplicates was seen
    submissions: set[str] = field(default_factory=set)
    dark_samples: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        try:
            jobs = jobs_of(self.kube, self.namespace, self.name)
        except Exception:  # no Ray cluster yet, or its dashboard between restarts: nothing to count
            jobs = {}
        self.submissions |= set(jobs)
        if (seen := duplicates(jobs)) > self.most_duplicates:
            self.most_duplicates, self.worst = seen, dict(jobs)
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


@dataclass(frozen=True)
class RouteSample:
    """One look, after a fault, at whether requests are sent to a pod and whether an engine is there."""

    after: float  # seconds since the fault
    pod_ready: bool  # the pod's Ready condition: what the Service would go by without the label
    labelled: bool  # the pod carries the serving label
    in_service: bool  # its IP is among the endpoint Service's ready endpoints
    engine_answers: bool  # its engine answered GET /health, asked after the two above were read


def misrouted(samples: list[RouteSample], slack: float) -> list[RouteSample]:
    """The looks, from `slack` seconds after the fault on (the time the operator has to notice it), in which
    the serving label or the Service pointed at the pod while no engine answered there. The engine is asked
    last, so an engine that came back between the reads counts as answering, never the reverse."""
    return [s for s in samples if s.after >= slack and (s.labelled or s.in_service) and not s.engine_answers]


@dataclass
class RouteWatch(Background):
    """Samples, every `interval` seconds from `__enter__` (the fault) until stopped, where the endpoint
    Service of VLLMCluster `name` sends requests with respect to one pod at `ip`, and whether its engine
    answers there."""

    kube: Kube
    namespace: str
    name: str
    pod: str
    ip: str
    port: int = 8000
    interval: float = 1.0
    samples: list[RouteSample] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        self.started = time.monotonic()
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        found = self.kube.get_json("pod", self.pod, "-n", self.namespace) or {}
        labelled = ((found.get("metadata") or {}).get("labels") or {}).get(SERVING_LABEL) == SERVING
        conditions = (found.get("status") or {}).get("conditions") or []
        pod_ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        in_service = self.ip in serving_ips(self.kube, self.namespace, self.name)
        try:
            answers = httpx.get(f"http://{self.ip}:{self.port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            answers = False
        self.samples.append(
            RouteSample(time.monotonic() - self.started, pod_ready, labelled, in_service, answers)
        )
