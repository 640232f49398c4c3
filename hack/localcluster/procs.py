"""Processes and commands of the local cluster, shared by hack/, the tests and the demo: log lines, pid-file
daemons in their own process groups, commands that fail loudly, polling waits, the pinned versions and the
cache directory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def log(component: str, message: str) -> None:
    print(f"[{component} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Everything built once and reused by version or input hash: tools, venvs, images, containerd's store."""
    return Path(os.environ.get("RAYVLLM_CACHE", Path.home() / ".cache" / "rayvllm"))


def read_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key] = value.strip('"')
    return versions


class CommandError(SystemExit):
    """A command of the local cluster failed; the message carries its output."""


class WaitTimeoutError(AssertionError):
    """Something waited for never happened; the message says what, and what was seen last."""


class TransientError(Exception):
    """Not yet, try again: a probe met a passing fault, not an answer (the API server overloaded, restarting
    or briefly unreachable: HTTP 5xx or 429, a refused or reset connection, a timeout). wait_for polls on;
    anywhere else it fails like any error."""


def run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 600,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output; a non-zero exit raises with stderr attached."""
    args = [str(a) for a in argv]
    result = subprocess.run(
        args,
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **env} if env else None,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
    if check and result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip())[-4000:]
        raise CommandError(f"{' '.join(args)} failed ({result.returncode}): {output}")
    return result


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def terminate_group(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group `pid` leads, SIGKILL it after `grace` seconds, and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    while alive(pid):
        time.sleep(0.05)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Daemons:
    """Long-running processes of one cluster: each in its own process group (stopping it stops all it
    started), its output in logs/<name>.log, its pid in pids/<name>.pid so a later `down` finds it."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.logs = state_dir / "logs"
        self.pids = state_dir / "pids"

    def spawn(
        self,
        name: str,
        argv: Sequence[str | Path],
        env: Mapping[str, str] | None = None,
        component: str = "cluster",
    ) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log_file:
            proc = subprocess.Popen(
                [str(a) for a in argv],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: `stop` kills it whole, and Ctrl-C here does not
                env={**os.environ, **(env or {})},
                cwd=self.dir,
            )
        (self.pids / f"{name}.pid").write_text(str(proc.pid))
        log(component, f"started {name} (pid {proc.pid})")
        return proc.pid

    def pid(self, name: str) -> int | None:
        pid_file = self.pids / f"{name}.pid"
        return int(pid_file.read_text()) if pid_file.exists() else None

    def running(self, name: str) -> bool:
        pid = self.pid(name)
        return pid is not None and alive(pid)

    def stop(self, name: str, component: str = "cluster", grace: float = 10.0) -> None:
        pid = self.pid(name)
        if pid is None:
            return
        if alive(pid):
            log(component, f"stopping {name} (pid {pid})")
            terminate_group(pid, grace)
        (self.pids / f"{name}.pid").unlink(missing_ok=True)  # another `down` may have been first

    def dead(self, names: Sequence[str]) -> list[str]:
        """Those of `names` that were started and have exited."""
        return [n for n in names if self.pid(n) is not None and not self.running(n)]

    def wait(
        self,
        what: str,
        ready: Callable[[], bool],
        timeout: float,
        watch: Sequence[str] = (),
        component: str = "cluster",
    ) -> None:
        """Poll `ready` until it holds; fail at once, with their log tails, if a watched daemon exits."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while not ready():
            dead = self.dead(watch)
            if dead:
                tails = "\n".join(f"--- {n}.log ---\n{tail(self.logs / f'{n}.log')}" for n in dead)
                raise CommandError(f"{', '.join(dead)} exited while waiting for {what}:\n{tails}")
            if time.monotonic() > deadline:
                raise CommandError(f"timed out after {timeout:.0f}s waiting for {what}; logs in {self.logs}")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        log(component, f"{what}: ok")


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    max_interval: float = 2.0,
) -> T:
    """Call `probe` until it returns a truthy value and return that value; a TransientError it raises counts
    as "not yet". Fail after `timeout` s, naming what never happened, the last value seen and the last
    transient error."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    transient: TransientError | None = None
    while True:
        try:
            last = probe()
        except TransientError as error:
            transient = error
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}"
            if transient is not None:
                message += f"; last transient error: {transient}"
            raise WaitTimeoutError(message) from transient
        time.sleep(interval)
        interval = min(interval * 1.5, max_interval)
