"""What every measuring step of one run at one N shares: the cluster, the API endpoint, the audit log,
the sampler, the operator, the options, and the run's deadline."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench.audit import AuditLog
from bench.manifests import Manifest
from bench.operator import Operator
from bench.procstat import Sampler
from bench.testbed import Testbed
from bench.watch import Endpoint


@dataclass
class Context:
    testbed: Testbed
    endpoint: Endpoint
    audit: AuditLog
    sampler: Sampler
    operator: Operator
    operator_user: str
    sample: Manifest
    n: int
    steady_seconds: float
    settle_seconds: float
    edits: int
    recreations: int
    deadline: float  # time.monotonic() by which the whole run must end
    workdir: Path

    def timeout(self, seconds: float) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the run's --max-minutes budget is spent")
        return min(seconds, remaining)

    @property
    def settle_timeout(self) -> float:
        return 300 + 1.2 * self.n

    def sleep(self, seconds: float) -> None:
        """Sleep, but fail at once if the operator died meanwhile (its numbers would be meaningless)."""
        end = time.monotonic() + self.timeout(seconds)
        while time.monotonic() < end:
            self.check_operator()
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))

    def check_operator(self) -> None:
        if not self.operator.alive():
            raise RuntimeError(f"the operator exited:\n{self.operator.log_tail()}")

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 300) -> str:
        return self.testbed.kubectl(*args, stdin=stdin, timeout=self.timeout(timeout))
