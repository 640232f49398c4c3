"""The cluster's command-line clients, one runner each, shared by hack/, the tests and the benchmark:
kubectl (the pinned binary and one kubeconfig) and helm (the pinned binary, a kubeconfig or none for
offline rendering, and state directories of its own instead of ~/). Failures raise CommandError with the
command's output (procs.run)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hack.localcluster.procs import REPO, run
from hack.localcluster.tools import Tools

CHART = REPO / "helm" / "rayvllm-operator"
Manifest = dict[str, Any]


@dataclass(frozen=True)
class Kubectl:
    binary: Path
    kubeconfig: Path

    def run(
        self, *args: str | Path, stdin: str | None = None, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [self.binary, f"--kubeconfig={self.kubeconfig}", *args], stdin=stdin, check=check, timeout=timeout
        )


@dataclass(frozen=True)
class Helm:
    binary: Path
    kubeconfig: Path | None
    home: Path

    @classmethod
    def for_cluster(cls, kubeconfig: Path | None, home: Path, tools: Tools | None = None) -> Helm:
        """The pinned helm (from `tools`, else the cache) for the cluster of `kubeconfig`, or for none."""
        return cls((tools or Tools.from_cache()).helm / "helm", kubeconfig, home)

    def run(
        self, *args: str | Path, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        env = {f"HELM_{kind}_HOME": str(self.home / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        return run([self.binary, *args], env=env, check=check, timeout=timeout)

    def template_text(
        self,
        release: str,
        namespace: str,
        values: Mapping[str, Any] | None = None,
        *extra: str,
        chart: Path = CHART,
    ) -> str:
        """`helm template` of `chart` as helm prints it; `values` go in as a values file (exact types kept)."""
        args: list[str | Path] = ["template", release, chart, "--namespace", namespace, *extra]
        if values:
            text = json.dumps(values, sort_keys=True)
            values_file = self.home / f"values-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
            values_file.parent.mkdir(parents=True, exist_ok=True)
            values_file.write_text(text)
            args += ["--values", values_file]
        return self.run(*args).stdout

    def template(
        self,
        release: str,
        namespace: str,
        values: Mapping[str, Any] | None = None,
        *extra: str,
        chart: Path = CHART,
    ) -> list[Manifest]:
        """`helm template` of `chart`, parsed into its documents."""
        rendered = self.template_text(release, namespace, values, *extra, chart=chart)
        return [doc for doc in yaml.safe_load_all(rendered) if doc]
