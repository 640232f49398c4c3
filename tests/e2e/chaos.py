"""The chaos suite's pieces: faults injected on a schedule in a thread of their own, the watchers that check
invariants while they run, and the table every scenario adds its row to. Every fault loop is bounded in
count and time and stops by itself.
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
from typing import Any, ClassVar, Self

import httpx
import pytest

from hack.localcluster.helm_release import OperatorRelease
from rayvllm.builders.labels import SERVING, SERVING_LABEL
from tests.e2e.realnode import pods_of
from tests.e2e.serving import jobs_of, serving_ips, worker_pods
from tests.support.kube import Kube

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


@dataclass(kw_only=True)
class Background:
    """A loop in a daemon thread from the start of a `with` block to its end, or to `stop()`: `look()` every
    `pause()` seconds until `done()`. A look that raises is recorded in `errors`, never the thread's silent
    death; `looks` counts those that did not, so a test asserts that it observed something
    (`assert_observed`) before it trusts what was not seen."""

    interval: ClassVar[float] = 1.0
    looks: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

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
        while not self.done() and not self._stop.wait(self.pause()):
            try:
                self.look()
                self.looks += 1
            # Recorded, never the thread's silent end (a CommandError is a SystemExit): a watcher that stops
            # seeing must not pass as one that saw nothing.
            except (Exception, SystemExit) as failure:
                self.errors.append(f"{type(failure).__name__}: {str(failure)[:300]}")

    def look(self) -> None:
        raise NotImplementedError

    def pause(self) -> float:
        return self.interval

    def done(self) -> bool:
        return False

    def assert_observed(self, at_least: int) -> None:
        """At least `at_least` looks succeeded: what the watcher did not see counts for something."""
        assert self.looks >= at_least, (
            f"{type(self).__name__} looked {self.looks} times, fewer than {at_least}; errors: {self.errors[:3]}"
        )

    def assert_observed_throughout(self, seconds: float) -> None:
        """It looked all along a block of `seconds`: once every LOOK_SLACK seconds at least (a look waits on
        what it asks: an API server or a Ray dashboard that times out)."""
        self.assert_observed(max(1, int(seconds / LOOK_SLACK)))


# The longest a watcher's look may take, for the count of looks it owes: Ray's dashboard, timing out.
LOOK_SLACK = 15.0


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


def ray_pod_processes(kube: Kube, namespace: str, name: str, pattern: str) -> dict[int, str]:
    """pid -> command line of the processes, in the containers of RayCluster `name`'s pods, whose command
    line has `pattern` (in any case): one object's processes, never another test's on the same machine."""
    found: dict[int, str] = {}
    for pod in pods_of(kube, namespace, name):
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if running := str(status.get("containerID") or "").rpartition("://")[2]:
                found |= {
                    pid: cmd
                    for pid, cmd in container_processes(running).items()
                    if pattern.lower() in cmd.lower()
                }
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
    before it dies, for the secret scan and the record. A failed kill (an API error) lands in `errors` and
    the storm goes on."""

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
    _pace: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._pace = random.Random(self.seed)

    def pause(self) -> float:
        return self._pace.uniform(self.low, self.high)

    def done(self) -> bool:
        return self.processes_killed >= self.limit

    def look(self) -> None:
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
    """Looks, every `interval` seconds until stopped, at the Ray jobs of one VLLMCluster (the most duplicates
    seen at once; Ray not answering, as while its head restarts, is counted in `ray_silent`) and, once
    `serving` is set, at whether its Service has lost every endpoint (`samples`, `dark_samples`)."""

    kube: Kube
    namespace: str
    name: str
    interval: ClassVar[float] = 2.0
    serving: threading.Event = field(default_factory=threading.Event)
    most_duplicates: int = 0
    worst: dict[str, str] = field(default_factory=dict)  # the jobs when most_duplicates was seen
    submissions: set[str] = field(default_factory=set)
    ray_silent: int = 0
    dark_samples: int = 0
    samples: int = 0

    def look(self) -> None:
        try:
            jobs = jobs_of(self.kube, self.namespace, self.name)
        except Exception:  # no Ray cluster yet, or its dashboard between restarts: nothing to count
            jobs = {}
            self.ray_silent += 1
        self.submissions |= set(jobs)
        if (seen := duplicates(jobs)) > self.most_duplicates:
            self.most_duplicates, self.worst = seen, dict(jobs)
        if self.serving.is_set():
            dark = not serving_ips(self.kube, self.namespace, self.name)
            self.samples += 1
            self.dark_samples += dark


@dataclass
class RolloutWatch(Background):
    """Looks every second at the worker pods (terminating ones included: they still hold their share of the
    node; the most seen at once) and at the endpoint Service's ready endpoints (the fewest)."""

    kube: Kube
    namespace: str
    name: str
    most_pods: int = 0
    fewest_serving: int | None = None

    def look(self) -> None:
        self.most_pods = max(self.most_pods, len(worker_pods(self.kube, self.namespace, self.name)))
        serving = len(serving_ips(self.kube, self.namespace, self.name))
        self.fewest_serving = serving if self.fewest_serving is None else min(self.fewest_serving, serving)


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
    samples: list[RouteSample] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def __enter__(self) -> Self:
        self.started = time.monotonic()
        return super().__enter__()

    def look(self) -> None:
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
