"""One local cluster: the network, the control plane with kwok's fake GPU nodes and, by default, one real
node (containerd, kubelet, kube-proxy) with CoreDNS, whose pods really run on this machine. Tests, the
demo and benchmarks all start it through this class; `hack/cluster.py` is its command line.

`Cluster(..., loopback=True)` is the control plane and kwok alone, every listener on 127.0.0.1: no bridge,
routes, nftables guard or real node, and its `down` touches nothing machine-wide (no KUBE-* chains, network
namespaces, cgroups or containerd mounts), so it can run beside the default cluster (benchmarks)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from hack.localcluster import dns, images, network
from hack.localcluster.controlplane import COMPONENTS as CONTROL_PLANE
from hack.localcluster.controlplane import AuditLog, ControlPlane, FakeNodePlan, Ports, Tools
from hack.localcluster.node import COMPONENTS as NODE_COMPONENTS
from hack.localcluster.node import NODE_NAME, NodePlan, RealNode, leftover_mounts
from hack.localcluster.procs import REPO, Daemons, cache_dir, log

COREDNS_RBAC = {
    "apiVersion": "v1",
    "kind": "List",
    "items": [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:coredns"}],
        },
    ],
}


@dataclass(frozen=True)
class ClusterPlan:
    fake: FakeNodePlan
    real_node: NodePlan | None


class Cluster:
    def __init__(
        self, state_dir: Path, ports: Ports, *, loopback: bool = False, audit: AuditLog | None = None
    ) -> None:
        self.dir = state_dir
        self.ports = ports
        self.loopback = loopback
        self.audit = audit
        self.daemons = Daemons(state_dir)
        self.network = network.Network(state_dir)
        self._tools: Tools | None = None

    @property
    def tools(self) -> Tools:
        if self._tools is None:
            self._tools = Tools.from_cache()
        return self._tools

    @property
    def control_plane(self) -> ControlPlane:
        host = "127.0.0.1" if self.loopback else network.NODE_IP
        return ControlPlane(self.dir, self.ports, self.daemons, self.tools, host=host, audit=self.audit)

    @property
    def node(self) -> RealNode:
        return RealNode(self.dir, self.daemons, self.tools.kubernetes_node, self.ports)

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.daemons.logs

    def kubectl(self, *args: str | Path, check: bool = True, stdin: str | None = None) -> str:
        return self.control_plane.kubectl(*args, check=check, stdin=stdin)

    def running(self, plan: ClusterPlan | None = None) -> bool:
        node_ok = (
            plan is None
            or plan.real_node is None
            or all(self.daemons.running(n) for n in (*NODE_COMPONENTS, dns.COMPONENT))
        )
        return node_ok and self.control_plane.running()

    def up(self, plan: ClusterPlan) -> None:
        if self.loopback and plan.real_node is not None:
            raise ValueError("a loopback cluster has no bridge for a real node: plan real_node=None")
        started = time.monotonic()
        if self.running(plan):
            log("cluster", f"already running (pids in {self.daemons.pids}); reusing it")
        else:
            self.down(quiet=True)
            if not self.loopback:
                self.network.up()
            cp = self.control_plane
            cp.up()
            if plan.real_node is not None:
                self._start_real_node(cp, plan.real_node)
        cp = self.control_plane
        cp.ensure_fake_nodes(plan.fake)
        self.daemons.wait("kwok nodes Ready", lambda: cp.fake_nodes_ready(plan.fake), 60, watch=("kwok",))
        self.daemons.wait("default ServiceAccount", cp.default_service_account, 60)
        log("cluster", f"up in {time.monotonic() - started:.1f}s; logs in {self.logs}")
        print(f"export KUBECONFIG={self.kubeconfig}")

    def _start_real_node(self, cp: ControlPlane, plan: NodePlan) -> None:
        node = self.node
        node.start_containerd(images.refs().pause)
        # Built once and cached by the hash of their inputs; containerd's store (under the cache) keeps them.
        images.ensure_images(node.containerd_socket)
        client = f"system:node:{NODE_NAME}"
        cp.pki.ensure_client("kubelet", client, ("system:nodes",))
        node.start_kubelet(cp.kubeconfig_for("kubelet"), cp.pki.ca)
        node.start_kube_proxy(cp.kubeconfig_for("kube-proxy"))
        cp.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(COREDNS_RBAC))
        dns.start(
            self.daemons,
            self.tools.coredns / "coredns",
            self.dir,
            cp.kubeconfig_for("coredns"),
            self.ports.coredns_health,
        )
        self.daemons.wait("the real node Ready", self._real_node_ready, 120, watch=("kubelet", "containerd"))
        node.advertise_gpus(cp.kubectl, plan)
        log("node", f"{NODE_NAME} Ready with {plan.fake_gpus} advertised nvidia.com/gpu")

    def _real_node_ready(self) -> bool:
        out = self.kubectl(
            "get",
            "node",
            NODE_NAME,
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            check=False,
        )
        return out.strip() == "True"

    def down(self, quiet: bool = False) -> None:
        if self.loopback:
            # Only our own daemons: the real node's clean-up is machine-wide (KUBE-* chains, cni-* network
            # namespaces, kubepods cgroups, containerd's shared store) and would hit a default cluster.
            self.control_plane.down()
        else:
            self.daemons.stop(dns.COMPONENT)
            self.node.down()
            self.control_plane.down()
            self.network.down()
        if not quiet:
            log("cluster", "stopped")

    def leftovers(self) -> list[str]:
        """Everything of this cluster still on the machine after `down`: must be empty."""
        found: list[str] = []
        if not self.loopback:
            found += network.leftovers()
            found += [f"mount {m}" for m in leftover_mounts(self.dir, cache_dir() / "containerd")]
        marker = str(self.dir)
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if marker in cmdline and proc.name != str(os.getpid()):
                    found.append(f"process {proc.name}: {cmdline[:120]}")
        if not self.loopback:
            found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob("*/kubepods")]
        return found

    def status(self) -> dict[str, bool]:
        names = (*CONTROL_PLANE, *NODE_COMPONENTS, dns.COMPONENT)
        return {name: self.daemons.running(name) for name in names}


def default_cluster() -> Cluster:
    state = Path(os.environ.get("RAYVLLM_CLUSTER_DIR", REPO / ".cluster"))
    return Cluster(state, Ports(int(os.environ.get("RAYVLLM_CLUSTER_PORT_BASE", "26400"))))


def default_plan() -> ClusterPlan:
    env = os.environ.get
    fake = FakeNodePlan(
        int(env("RAYVLLM_GPU_NODES", "2")),
        int(env("RAYVLLM_GPUS_PER_NODE", "8")),
        int(env("RAYVLLM_CPU_NODES", "1")),
    )
    real = None if env("RAYVLLM_REAL_NODE", "1") == "0" else NodePlan(int(env("RAYVLLM_REAL_NODE_GPUS", "4")))
    return ClusterPlan(fake, real)
