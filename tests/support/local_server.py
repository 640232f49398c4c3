"""A server binary the tests run on 127.0.0.1 as this process's child (Prometheus, Toxiproxy): started with
its output in a log under `home`, waited for until an HTTP path answers 200, stopped by its pid."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.operator import free_port
from tests.support.wait import wait_for


@dataclass
class LocalServer:
    binary: Path
    home: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.home / f"{self.binary.name}.log"

    def launch(self, args: Sequence[str], ready_path: str, timeout: float, interval: float = 0.2) -> None:
        """Runs the binary with `args` and waits until GET `ready_path` answers 200; fails with the log's
        tail if it exits first."""
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(self.binary), *args], stdout=log, stderr=subprocess.STDOUT, cwd=self.home
            )

        def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, (
                f"{self.binary.name} exited ({self.process and self.process.returncode}):\n"
                + self.log.read_text()[-3000:]
            )
            try:
                return httpx.get(f"{self.url}{ready_path}", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=timeout, interval=interval, what=f"{self.binary.name} ready at {self.url}")

    def stop(self, timeout: float = 30) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # our own child, by its pid
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
