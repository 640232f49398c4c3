"""The pinned binaries hack/build-tools.sh builds into the cache, one directory per tool and version."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hack.localcluster.procs import cache_dir, read_versions


@dataclass(frozen=True)
class Tools:
    kubernetes: Path
    kubernetes_node: Path
    etcd: Path
    kuberay: Path
    kwok: Path
    helm: Path
    coredns: Path
    prometheus: Path
    toxiproxy: Path

    @classmethod
    def from_cache(cls) -> Tools:
        cache = cache_dir() / "tools"
        v = read_versions()
        tools = cls(
            kubernetes=cache / f"kubernetes-v{v['K8S_VERSION']}",
            kubernetes_node=cache / f"kubernetes-node-v{v['K8S_VERSION']}",
            etcd=cache / f"etcd-v{v['ETCD_VERSION']}",
            kuberay=cache / f"kuberay-v{v['KUBERAY_VERSION']}",
            kwok=cache / f"kwok-v{v['KWOK_VERSION']}",
            helm=cache / f"helm-v{v['HELM_VERSION']}",
            coredns=cache / f"coredns-v{v['COREDNS_VERSION']}",
            prometheus=cache / f"prometheus-v{v['PROMETHEUS_VERSION']}",
            toxiproxy=cache / f"toxiproxy-v{v['TOXIPROXY_VERSION']}",
        )
        missing = [str(p) for p in vars(tools).values() if not (p / ".complete").exists()]
        if missing:
            raise SystemExit(f"missing tools {missing}: run `make tools` (hack/build-tools.sh) first")
        return tools

    @property
    def kubectl(self) -> Path:
        return self.kubernetes / "kubectl"
