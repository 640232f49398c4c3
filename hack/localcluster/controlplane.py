"""The control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (fake GPU nodes),
the KubeRay CRDs and operator. The API server listens on the cluster bridge's address, so the real node's
pods (the in-cluster operator) reach it through the `kubernetes` Service as in production; everything
else listens on 127.0.0.1. A control plane without a real node (benchmarks) may put the API server on
127.0.0.1 too (`host`), and may have it write an audit log (`audit`, off by default)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hack.localcluster.kubecli import Kubectl
from hack.localcluster.network import FAKE_NODE_IP, FAKE_POD_CIDR, NODE_IP, SERVICE_CIDR
from hack.localcluster.pki import Pki
from hack.localcluster.procs import Daemons, log, wait_for
from hack.localcluster.tools import Tools as Tools  # re-exported: its importers predate tools.py

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kuberay")


@dataclass(frozen=True)
class Ports:
    """Every listener of the cluster, derived from one base so parallel control planes can coexist."""

    base: int

    @property
    def etcd_client(self) -> int:
        return self.base

    @property
    def etcd_peer(self) -> int:
        return self.base + 1

    @property
    def apiserver(self) -> int:
        return self.base + 2

    @property
    def controller_manager(self) -> int:
        return self.base + 3

    @property
    def scheduler(self) -> int:
        return self.base + 4

    @property
    def kwok(self) -> int:
        return self.base + 5

    @property
    def etcd_metrics(self) -> int:
        return self.base + 6

    @property
    def kubelet(self) -> int:
        return self.base + 10

    @property
    def kubelet_healthz(self) -> int:
        return self.base + 11

    @property
    def kube_proxy_healthz(self) -> int:
        return self.base + 12

    @property
    def kube_proxy_metrics(self) -> int:
        return self.base + 13

    @property
    def coredns_health(self) -> int:
        return self.base + 14

    def in_use(self) -> list[int]:
        """Ports of this range that something already listens on (another cluster, or our own leftovers)."""
        busy = []
        for port in range(self.base, self.base + 15):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    busy.append(port)
        return busy


@dataclass(frozen=True)
class AuditLog:
    """An API-server audit log: JSON lines by the log backend, filtered by the policy file `policy`.
    Blocking mode: each event is written before its request is answered, so a reader that has seen a
    response finds its event in the file (batch mode buffers and may drop under load)."""

    policy: Path
    path: Path


@dataclass(frozen=True)
class FakeNodePlan:
    gpu_nodes: int
    gpus_per_node: int
    cpu_nodes: int
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = "64"
    memory: str = "512Gi"


class ControlPlane:
    def __init__(
        self,
        state_dir: Path,
        ports: Ports,
        daemons: Daemons,
        tools: Tools,
        *,
        host: str = NODE_IP,
        audit: AuditLog | None = None,
    ) -> None:
        self.dir = state_dir
        self.ports = ports
        self.daemons = daemons
        self.tools = tools
        # Where the API server listens: the bridge address (default), or 127.0.0.1 when there is no bridge.
        self.host = host
        self.audit = audit
        self.pki = Pki(state_dir / "pki")
        self.kubeconfig = state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.ports.apiserver}"

    def kubeconfig_for(self, client: str) -> Path:
        path = self.dir / f"{client}.kubeconfig"
        path.write_text(self.pki.kubeconfig(client, self.server))
        return path

    def running(self) -> bool:
        return all(self.daemons.running(name) for name in COMPONENTS) and self.apiserver_ready()

    def up(self) -> None:
        # Every start gets a fresh store: no objects, nodes or kwok node leases left from a previous run (a
        # lease held by a dead kwok blocks the new one for its whole duration).
        shutil.rmtree(self.dir / "etcd", ignore_errors=True)
        self.pki.ensure([NODE_IP, "127.0.0.1", "10.96.0.1"])
        self.kubeconfig.write_text(self.pki.kubeconfig("admin", self.server))
        self._start_etcd()
        self._start_apiserver()
        self.daemons.wait("kube-apiserver /readyz", self.apiserver_ready, 60, watch=COMPONENTS)
        self._start_controller_manager()
        self._start_scheduler()
        self._start_kwok()
        self._install_kuberay_crds()
        self._start_kuberay()

    def down(self) -> None:
        for name in reversed(COMPONENTS):
            self.daemons.stop(name)

    def kill(self, name: str) -> int:
        """SIGKILL one daemon (a crash, not a shutdown: no clean-up of its own); its pid file stays, so
        `down` still finds it. Returns the pid killed."""
        pid = self.daemons.pid(name)
        if pid is None or not self.daemons.running(name):
            raise RuntimeError(f"{name} is not running")
        os.kill(pid, signal.SIGKILL)
        self.daemons.wait(f"{name} (pid {pid}) gone", lambda: not self.daemons.running(name), 10)
        return pid

    def start(self, name: str) -> None:
        """Start one stopped or killed daemon again, with the same flags and state (etcd keeps its data
        directory: only `up` starts from an empty store)."""
        starters = {
            "etcd": self._start_etcd,
            "kube-apiserver": self._start_apiserver,
            "kube-controller-manager": self._start_controller_manager,
            "kube-scheduler": self._start_scheduler,
            "kwok": self._start_kwok,
            "kuberay": self._start_kuberay,
        }
        if self.daemons.running(name):
            raise RuntimeError(f"{name} is already running")
        starters[name]()

    def _start_etcd(self) -> None:
        p = self.ports
        self.daemons.spawn(
            "etcd",
            [
                self.tools.etcd / "etcd",
                "--name=default",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{p.etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{p.etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{p.etcd_peer}",
                f"--listen-metrics-urls=http://127.0.0.1:{p.etcd_metrics}",
                # A throwaway test store: fsync only costs time here.
                "--unsafe-no-fsync",
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        pki = self.pki
        self.daemons.spawn(
            "kube-apiserver",
            [
                self.tools.kubernetes / "kube-apiserver",
                f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
                # The bridge address: reachable from this machine and from the real node's pods alike,
                # never from outside. The `kubernetes` Service's endpoints point here. Without a bridge
                # (host 127.0.0.1) the advertised address stays the node address: the API server rejects a
                # loopback one, and without real pods nothing dials the `kubernetes` Service.
                f"--bind-address={self.host}",
                f"--advertise-address={NODE_IP}",
                f"--secure-port={self.ports.apiserver}",
                f"--tls-cert-file={pki.cert('apiserver')}",
                f"--tls-private-key-file={pki.key('apiserver')}",
                f"--client-ca-file={pki.ca}",
                f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
                f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
                "--kubelet-preferred-address-types=InternalIP",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.dir / 'sa.pub'}",
                f"--service-account-signing-key-file={pki.dir / 'sa.key'}",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
                *self._audit_flags(),
            ],
        )

    def _audit_flags(self) -> list[str]:
        if self.audit is None:
            return []
        self.audit.path.parent.mkdir(parents=True, exist_ok=True)
        return [
            f"--audit-policy-file={self.audit.policy}",
            f"--audit-log-path={self.audit.path}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
            # The log backend rotates at 100 MB by default; one file keeps a reader's offsets valid.
            "--audit-log-maxsize=100000",
        ]

    def _start_controller_manager(self) -> None:
        pki = self.pki
        cfg = self.kubeconfig_for("controller-manager")
        self.daemons.spawn(
            "kube-controller-manager",
            [
                self.tools.kubernetes / "kube-controller-manager",
                f"--kubeconfig={cfg}",
                f"--authentication-kubeconfig={cfg}",
                f"--authorization-kubeconfig={cfg}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports.controller_manager}",
                f"--service-account-private-key-file={pki.dir / 'sa.key'}",
                f"--root-ca-file={pki.ca}",
                f"--cluster-signing-cert-file={pki.ca}",
                f"--cluster-signing-key-file={pki.dir / 'ca.key'}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--controllers=*,-nodeipam",
                "--v=1",
            ],
        )

    def _start_scheduler(self) -> None:
        cfg = self.kubeconfig_for("scheduler")
        self.daemons.spawn(
            "kube-scheduler",
            [
                self.tools.kubernetes / "kube-scheduler",
                f"--kubeconfig={cfg}",
                f"--authentication-kubeconfig={cfg}",
                f"--authorization-kubeconfig={cfg}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports.scheduler}",
                "--leader-elect=false",
                "--v=1",
            ],
        )

    def _start_kwok(self) -> None:
        stages = self.tools.kwok / "stages"
        config = self.dir / "kwok-stages.yaml"
        # Nodes: initialise as Ready and keep a lease heartbeat. Pods: become Ready fast, and are really
        # deleted when terminating (there is no kubelet to do it). Only annotated nodes are kwok's: the
        # real node is the kubelet's.
        files = [
            stages / "node" / "fast" / "node-initialize.yaml",
            stages / "node" / "heartbeat-with-lease" / "node-heartbeat-with-lease.yaml",
            stages / "pod" / "fast" / "pod-ready.yaml",
            stages / "pod" / "fast" / "pod-complete.yaml",
            stages / "pod" / "fast" / "pod-delete.yaml",
        ]
        config.write_text("\n---\n".join(f.read_text() for f in files))
        self.daemons.spawn(
            "kwok",
            [
                self.tools.kwok / "kwok",
                f"--kubeconfig={self.kubeconfig}",
                f"--config={config}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{self.ports.kwok}",
                f"--cidr={FAKE_POD_CIDR}",
                f"--node-ip={FAKE_NODE_IP}",
            ],
        )

    def _install_kuberay_crds(self) -> None:
        self.install_crds(sorted((self.tools.kuberay / "crds").glob("ray.io_*.yaml")))

    def install_crds(self, files: list[Path]) -> None:
        """Apply CRD files and wait until every CRD in them is Established."""
        # Too large for client-side apply's last-applied annotation: server-side apply.
        args: list[str | Path] = ["apply", "--server-side", "--force-conflicts"]
        for crd in files:
            args += ["-f", crd]
        self.kubectl(*args)
        names = [
            f"crd/{doc['metadata']['name']}"
            for crd in files
            for doc in yaml.safe_load_all(crd.read_text())
            if doc and doc.get("kind") == "CustomResourceDefinition"
        ]
        # Right after the apply a CRD may have no conditions yet, which `kubectl wait` treats as an error
        # rather than as "not yet": retry it until the apiserver has written them.
        wait_for(
            # kubectl() answers "" when kubectl failed.
            lambda: self.kubectl("wait", "--for=condition=Established", "--timeout=30s", *names, check=False),
            timeout=90,
            interval=1,
            what=f"{', '.join(names)} Established",
        )

    def _start_kuberay(self) -> None:
        self.daemons.spawn(
            "kuberay",
            [
                self.tools.kuberay / "ray-operator",
                f"--kubeconfig={self.kubeconfig}",
                "--enable-leader-election=false",
                "--metrics-addr=0",
                "--health-probe-bind-address=0",
            ],
            env={"KUBECONFIG": str(self.kubeconfig)},
        )

    # ---- kwok's fake nodes -----------------------------------------------------------------------

    def ensure_fake_nodes(self, plan: FakeNodePlan) -> None:
        nodes = [_fake_node(f"gpu-node-{i}", plan, gpus=plan.gpus_per_node) for i in range(plan.gpu_nodes)]
        nodes += [_fake_node(f"cpu-node-{i}", plan, gpus=0) for i in range(plan.cpu_nodes)]
        wanted = {n["metadata"]["name"] for n in nodes}
        listed = self.kubectl("get", "nodes", "--selector=type=kwok", "-o", "name").split()
        existing = {n.removeprefix("node/") for n in listed}
        for extra in sorted(existing - wanted):
            self.kubectl("delete", "node", extra, "--wait=false")
        for node in nodes:
            if node["metadata"]["name"] not in existing:
                # `create` (not apply): the API accepts status on Node create, which is how fake nodes get
                # their GPU capacity without a kubelet.
                self.kubectl("create", "-f", "-", stdin=json.dumps(node))
        log(
            "cluster",
            f"kwok nodes: {plan.gpu_nodes} with {plan.gpus_per_node} {plan.gpu_resource}, {plan.cpu_nodes} CPU-only",
        )

    def fake_nodes_ready(self, plan: FakeNodePlan) -> bool:
        out = self.kubectl(
            "get",
            "nodes",
            "--selector=type=kwok",
            "-o",
            'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
        )
        statuses = out.split()
        return len(statuses) == plan.gpu_nodes + plan.cpu_nodes and all(s == "True" for s in statuses)

    def default_service_account(self) -> bool:
        return bool(self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False))

    # ---- helpers ---------------------------------------------------------------------------------

    def kubectl(self, *args: str | Path, check: bool = True, stdin: str | None = None) -> str:
        """kubectl's output; empty when it failed (`check=False`)."""
        result = Kubectl(self.tools.kubectl, self.kubeconfig).run(*args, check=check, stdin=stdin)
        return result.stdout if result.returncode == 0 else ""

    def apiserver_ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        try:
            context.load_cert_chain(str(self.pki.cert("admin")), str(self.pki.key("admin")))
            with urllib.request.urlopen(f"{self.server}/readyz", context=context, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError, ssl.SSLError):
            return False


def _fake_node(name: str, plan: FakeNodePlan, gpus: int) -> dict[str, Any]:
    capacity = {"cpu": plan.cpu, "memory": plan.memory, "pods": "110"}
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
    }
    if gpus:
        capacity[plan.gpu_resource] = str(gpus)
        labels["nvidia.com/gpu.present"] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {KWOK_NODE_ANNOTATION: "fake"}},
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }
