"""The operator under test, run exactly as users run it: `kopf run -m rayvllm.handlers` in its own
process, against the real control plane."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.wait import wait_for

KOPF = Path(sys.executable).parent / "kopf"
# This checkout's operator, not whichever one the shared venv's editable install points at (a worktree's
# tests would otherwise run the main checkout's operator).
OPERATOR_ROOT = Path(__file__).resolve().parents[2] / "operator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    def __init__(
        self, kubeconfig: Path, log_path: Path, env: Mapping[str, str] | None = None, kopf: Path = KOPF
    ) -> None:
        self.kopf = kopf
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.env = dict(env or {})
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.metrics_url: str | None = None

    @property
    def liveness_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    def start(self, extra_args: tuple[str, ...] = ("--all-namespaces",)) -> None:
        assert self.proc is None, "already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(self.kopf),
                "run",
                "-m",
                "rayvllm.handlers",
                "--standalone",
                f"--liveness={self.liveness_url}",
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={
                **os.environ,
                "KUBECONFIG": str(self.kubeconfig),
                "PYTHONPATH": self._pythonpath(),
                **self.env,
            },
            start_new_session=True,
        )
        self.starts += 1
        wait_for(self._live, timeout=60, what=f"the operator's liveness endpoint (log: {self.log_path})")

    @staticmethod
    def _pythonpath() -> str:
        inherited = os.environ.get("PYTHONPATH")
        return os.pathsep.join([str(OPERATOR_ROOT), *([inherited] if inherited else [])])

    def _live(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(self.liveness_url, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def reconcile_passes(self) -> float:
        """Reconcile passes so far, over all objects, from the operator's own metrics (its
        rayvllm_reconcile_duration_seconds histogram); needs `metrics_url`."""
        assert self.metrics_url is not None, "the operator was started without RAYVLLM_METRICS_PORT"
        text = httpx.get(self.metrics_url, timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "rayvllm_reconcile_duration_seconds_count":
                    return sample.value
        raise AssertionError("the operator exports no rayvllm_reconcile_duration_seconds")
