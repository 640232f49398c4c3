"""Memory and CPU of processes from /proc: a process with all its descendants, so an operator that forks
is measured whole. CPU is utime+stime in clock ticks (children that exited and were reaped count through
the root's cutime+cstime), reported as % of one core over a window."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    return text.rsplit(")", 1)[1].split()


def descendants(root: int) -> list[int]:
    """`root` and every live process below it (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(root: int) -> float:
    total = 0
    for pid in descendants(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # Fields 14-17 of proc(5) (utime, stime, cutime, cstime) are 11-14 here: two fields precede.
        total += int(fields[11]) + int(fields[12])
        if pid == root:
            total += int(fields[13]) + int(fields[14])
    return total / CLOCK_TICKS


def rss_bytes(root: int) -> int:
    total = 0
    for pid in descendants(root):
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def mem_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Window:
    """CPU and memory of named processes over one measurement window."""

    started: float
    cpu_start: dict[str, float]
    rss_samples: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    cpu_percent: float  # of one core, averaged over the window
    rss_mean_mib: float
    rss_max_mib: float


class Sampler(threading.Thread):
    """Samples RSS of named processes every `interval` s for the whole run (peaks), and serves windows
    (CPU deltas, RSS mean and max). `pids()` is asked each time, so processes may come and go."""

    def __init__(self, pids: Callable[[], Mapping[str, int]], interval: float = 2.0) -> None:
        super().__init__(name="sampler", daemon=True)
        self.pids = pids
        self.interval = interval
        self.peak_rss: dict[str, int] = {}
        self.min_available = mem_available_bytes()
        self._windows: list[Window] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        current = {name: rss_bytes(pid) for name, pid in self.pids().items()}
        with self._lock:
            self.min_available = min(self.min_available, mem_available_bytes())
            for name, rss in current.items():
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
                for window in self._windows:
                    window.rss_samples.setdefault(name, []).append(rss)

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=10)

    def open_window(self) -> Window:
        window = Window(time.monotonic(), {n: cpu_seconds(p) for n, p in self.pids().items()})
        with self._lock:
            self._windows.append(window)
        self.sample()
        return window

    def close_window(self, window: Window) -> dict[str, Usage]:
        self.sample()
        elapsed = time.monotonic() - window.started
        with self._lock:
            self._windows.remove(window)
        usage = {}
        for name, pid in self.pids().items():
            samples = window.rss_samples.get(name) or [0]
            cpu = cpu_seconds(pid) - window.cpu_start.get(name, 0.0)
            usage[name] = Usage(
                cpu_percent=round(100 * cpu / elapsed, 1) if elapsed > 0 else 0.0,
                rss_mean_mib=round(sum(samples) / len(samples) / 2**20, 1),
                rss_max_mib=round(max(samples) / 2**20, 1),
            )
        return usage
