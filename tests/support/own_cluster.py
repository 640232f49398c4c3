"""A loopback control plane of a test's own (etcd, kube-apiserver, kwok's fake nodes, KubeRay, our CRDs;
every listener on 127.0.0.1, no bridge, no real node) in its own state directory and port range, beside the
session's cluster: for tests that break the control plane itself, so no other test shares a cluster that
was made to fail. The operator runs on this machine against it, with no Ray to reach.

    with OwnCluster(Path("/tmp/rayvllm-x"), port_base=28400) as own:
        own.kube.kubectl(...); own.control_plane.kill("etcd"); own.control_plane.start("etcd")
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from types import TracebackType

from hack.localcluster.cluster import Cluster, ClusterPlan
from hack.localcluster.controlplane import ControlPlane, FakeNodePlan, Ports, Tools
from tests.support.kube import Kube

REPO = Path(__file__).resolve().parents[2]


class OwnCluster:
    def __init__(self, state_dir: Path, port_base: int, fake_nodes: FakeNodePlan) -> None:
        # Its own subdirectory: `leftovers` looks for processes naming it, and the test's logs sit beside it.
        self.cluster = Cluster(state_dir / "cluster", Ports(port_base), loopback=True)
        self.plan = ClusterPlan(fake=fake_nodes, real_node=None)
        self.kube = Kube(self.cluster.kubeconfig, Tools.from_cache().kubectl)

    @property
    def control_plane(self) -> ControlPlane:
        return self.cluster.control_plane

    def __enter__(self) -> OwnCluster:
        # Our own leftovers of an interrupted run, by pid file; anything else on the range is someone else's.
        self.cluster.down(quiet=True)
        busy = self.cluster.ports.in_use()
        if busy:
            raise RuntimeError(f"ports {busy} are in use: another cluster holds this range")
        try:
            # `up` prints `export KUBECONFIG=...` for the shell: not the test report's business.
            with contextlib.redirect_stdout(sys.stderr):
                self.cluster.up(self.plan)
            self.control_plane.install_crds(sorted((REPO / "crds").glob("*.yaml")))
        except BaseException:
            self.cluster.down()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.cluster.down()
        left = self.cluster.leftovers()
        assert not left, f"the own cluster's `down` left these behind: {left}"
