"""Test access to the real control plane: the built kubectl and the official Python client."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config

from hack.localcluster.procs import run


@dataclass(frozen=True)
class Kube:
    kubeconfig: Path
    kubectl_path: Path

    def api(self) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = run(
            [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args],
            stdin=stdin,
            timeout=240,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def get_json(self, *args: str) -> Any:
        """`kubectl get ... -o json`; None when the object does not exist."""
        result = self.kubectl("get", *args, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(f"kubectl get {' '.join(args)} failed: {result.stderr}")
        return json.loads(result.stdout)

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The Events about the object `name` in `namespace`."""
        found = self.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")
        return list(found["items"]) if found else []

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None) -> None:
        body = manifest if isinstance(manifest, str) else json.dumps(manifest)
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", "--server-side", "--force-conflicts", *ns, "-f", "-", stdin=body)
