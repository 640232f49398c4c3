"""The operator installed in the cluster as users install it: `helm install` of helm/rayvllm-operator with
the locally built operator image, in a namespace that enforces the restricted Pod Security profile, on
the real node. The demo and the e2e tier share it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hack.localcluster.kubecli import CHART, Helm, Kubectl
from hack.localcluster.procs import log
from hack.localcluster.tools import Tools
from hack.localcluster.workloads import REAL_NODE_SELECTOR, REAL_NODE_TOLERATION

RELEASE = "rayvllm"
NAMESPACE = "rayvllm-system"


@dataclass(frozen=True)
class OperatorRelease:
    kubeconfig: Path
    tools: Tools
    home: Path
    namespace: str = NAMESPACE
    release: str = RELEASE

    def helm(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        return (
            Helm.for_cluster(self.kubeconfig, self.home, self.tools)
            .run(*args, timeout=timeout, check=check)
            .stdout
        )

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        return Kubectl(self.tools.kubectl, self.kubeconfig).run(*args, check=check, stdin=stdin).stdout

    def install(self, image: str, settings: Mapping[str, Any]) -> None:
        """Install (or upgrade to) the chart with `image` (`repository:tag`, already in the node's
        containerd) and the chart's `settings` values, and wait until the operator pod is Ready."""
        repository, _, tag = image.rpartition(":")
        values = {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "settings": dict(settings),
            "nodeSelector": REAL_NODE_SELECTOR,
            "tolerations": [REAL_NODE_TOLERATION],
            # Two cores shared with Ray and vLLM: the operator asks for little.
            "resources": {
                "requests": {"cpu": "50m", "memory": "128Mi"},
                "limits": {"cpu": "1", "memory": "512Mi"},
            },
        }
        self.home.mkdir(parents=True, exist_ok=True)
        values_file = self.home / "values.json"
        values_file.write_text(json.dumps(values))
        namespace = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": self.namespace,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
        }
        self.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(namespace))
        log("operator", f"helm upgrade --install {self.release} (image {image}) into {self.namespace}")
        self.helm(
            "upgrade",
            "--install",
            self.release,
            str(CHART),
            "--namespace",
            self.namespace,
            "--values",
            str(values_file),
            "--wait",
            "--timeout=180s",
        )
        log("operator", "operator pod Ready")

    def pod(self) -> dict[str, Any] | None:
        pods = json.loads(
            self.kubectl(
                "get",
                "pods",
                "-n",
                self.namespace,
                "-l",
                f"app.kubernetes.io/instance={self.release}",
                "-o",
                "json",
            )
        )["items"]
        running = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return running[0] if running else None

    def logs(self, previous: bool = False) -> str:
        """The log of every operator pod of the release: of its running containers, or (`previous`) of the
        containers the kubelet restarted (none: empty)."""
        return self.kubectl(
            "logs",
            "-n",
            self.namespace,
            "-l",
            f"app.kubernetes.io/instance={self.release}",
            "--tail=-1",
            *(["--previous"] if previous else []),
            check=False,
        )

    def uninstall(self) -> None:
        self.helm("uninstall", self.release, "--namespace", self.namespace, "--wait", check=False)
