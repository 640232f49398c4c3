"""The local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok with
fake GPU nodes, and the KubeRay operator, all on 127.0.0.1. One launcher for tests, demo and benchmarks.

    python hack/cluster.py up [--gpu-nodes 2 --gpus-per-node 8 --cpu-nodes 1]
    python hack/cluster.py down
    python hack/cluster.py status

Binaries come from hack/build-tools.sh's cache. State (certificates, etcd data, logs, pid files,
kubeconfig) lives in $RAYVLLM_CLUSTER_DIR (default: <repo>/.cluster). `up` prints
`export KUBECONFIG=<path>` as its last line.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parent.parent
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# Components in start order; `down` stops them in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kuberay")


def log(message: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def read_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key] = value
    return versions


@dataclass(frozen=True)
class Tools:
    kubernetes: Path
    etcd: Path
    kuberay: Path
    kwok: Path
    helm: Path

    @classmethod
    def from_cache(cls) -> Tools:
        cache = Path(os.environ.get("RAYVLLM_CACHE", Path.home() / ".cache" / "rayvllm")) / "tools"
        v = read_versions()
        tools = cls(
            kubernetes=cache / f"kubernetes-v{v['K8S_VERSION']}",
            etcd=cache / f"etcd-v{v['ETCD_VERSION']}",
            kuberay=cache / f"kuberay-v{v['KUBERAY_VERSION']}",
            kwok=cache / f"kwok-v{v['KWOK_VERSION']}",
            helm=cache / f"helm-v{v['HELM_VERSION']}",
        )
        missing = [str(p) for p in vars(tools).values() if not (p / ".complete").exists()]
        if missing:
            raise SystemExit(f"missing tools {missing}: run `make tools` (hack/build-tools.sh) first")
        return tools

    @property
    def kubectl(self) -> Path:
        return self.kubernetes / "kubectl"


@dataclass(frozen=True)
class Ports:
    """Every listener of the control plane, derived from one base so parallel clusters can coexist."""

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


@dataclass(frozen=True)
class NodePlan:
    gpu_nodes: int
    gpus_per_node: int
    cpu_nodes: int
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = "64"
    memory: str = "512Gi"


class Cluster:
    def __init__(self, state_dir: Path, ports: Ports, tools: Tools | None = None) -> None:
        self.dir = state_dir
        self.ports = ports
        self._tools = tools
        self.pki = state_dir / "pki"
        self.logs = state_dir / "logs"
        self.pids = state_dir / "pids"
        self.kubeconfig = state_dir / "kubeconfig"

    @property
    def tools(self) -> Tools:
        if self._tools is None:
            self._tools = Tools.from_cache()
        return self._tools

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    # ---- lifecycle -------------------------------------------------------------------------------

    def up(self, nodes: NodePlan) -> None:
        started = time.monotonic()
        if self.running():
            log(f"already running (pids in {self.pids}); reusing it")
        else:
            self.down(quiet=True)
            # Every start gets a fresh store: no objects, nodes or kwok node leases left from a previous
            # run (a lease held by a dead kwok blocks the new one for its whole duration).
            shutil.rmtree(self.dir / "etcd", ignore_errors=True)
            for d in (self.pki, self.logs, self.pids):
                d.mkdir(parents=True, exist_ok=True)
            self._write_pki()
            self._start_etcd()
            self._start_apiserver()
            self._wait("kube-apiserver /readyz", self._apiserver_ready, timeout=60)
            self._start_controller_manager()
            self._start_scheduler()
            self._start_kwok()
            self._install_kuberay_crds()
            self._start_kuberay()
        self._ensure_nodes(nodes)
        self._wait("nodes Ready", lambda: self._nodes_ready(nodes), timeout=60)
        self._wait("default ServiceAccount", self._default_service_account, timeout=60)
        log(f"control plane up in {time.monotonic() - started:.1f}s; logs in {self.logs}")
        print(f"export KUBECONFIG={self.kubeconfig}")

    def down(self, quiet: bool = False) -> None:
        for name in reversed(COMPONENTS):
            pid_file = self.pids / f"{name}.pid"
            if not pid_file.exists():
                continue
            pid = int(pid_file.read_text())
            if _alive(pid):
                if not quiet:
                    log(f"stopping {name} (pid {pid})")
                _terminate_group(pid)
            pid_file.unlink()
        if not quiet:
            log("stopped")

    def running(self) -> bool:
        return all(self._pid_alive(name) for name in COMPONENTS) and self._apiserver_ready()

    def status(self) -> dict[str, bool]:
        return {name: self._pid_alive(name) for name in COMPONENTS}

    # ---- certificates ----------------------------------------------------------------------------

    def _write_pki(self) -> None:
        if (self.pki / "ca.crt").exists():
            return
        ca_key = _new_key()
        ca_cert = _certificate(
            "rayvllm-local-ca", [], ca_key, ca_key, None, is_ca=True, server=False, client=False
        )
        _write_key(self.pki / "ca.key", ca_key)
        _write_cert(self.pki / "ca.crt", ca_cert)
        sans: list[x509.GeneralName] = [
            x509.DNSName(n)
            for n in (
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            )
        ]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "10.96.0.1")]
        key = _new_key()
        _write_key(self.pki / "apiserver.key", key)
        _write_cert(
            self.pki / "apiserver.crt",
            _certificate(
                "kube-apiserver", sans, key, ca_key, ca_cert, is_ca=False, server=True, client=False
            ),
        )
        # Each component authenticates as the user the default RBAC bootstrap policy expects.
        for name, user, groups in (
            ("admin", "kubernetes-admin", ["system:masters"]),
            ("controller-manager", "system:kube-controller-manager", []),
            ("scheduler", "system:kube-scheduler", []),
            ("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"]),
        ):
            key = _new_key()
            cert = _certificate(
                user, [], key, ca_key, ca_cert, is_ca=False, server=False, client=True, org=groups
            )
            _write_key(self.pki / f"{name}.key", key)
            _write_cert(self.pki / f"{name}.crt", cert)
            self._write_kubeconfig(self.dir / f"{name}.kubeconfig", name)
        sa_key = _new_key()
        _write_key(self.pki / "sa.key", sa_key)
        (self.pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.kubeconfig.write_text((self.dir / "admin.kubeconfig").read_text())

    def _write_kubeconfig(self, path: Path, cert_name: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "rayvllm-local",
                    "cluster": {"server": self.server, "certificate-authority": str(self.pki / "ca.crt")},
                }
            ],
            "users": [
                {
                    "name": cert_name,
                    "user": {
                        "client-certificate": str(self.pki / f"{cert_name}.crt"),
                        "client-key": str(self.pki / f"{cert_name}.key"),
                    },
                }
            ],
            "contexts": [
                {"name": "rayvllm-local", "context": {"cluster": "rayvllm-local", "user": cert_name}}
            ],
            "current-context": "rayvllm-local",
        }
        path.write_text(json.dumps(config, indent=2))

    # ---- components ------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: Sequence[str | Path], env: dict[str, str] | None = None) -> None:
        log_file = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: `down` kills it whole, and Ctrl-C here does not
            env={**os.environ, **(env or {})},
            cwd=self.dir,
        )
        (self.pids / f"{name}.pid").write_text(str(proc.pid))
        log(f"started {name} (pid {proc.pid})")

    def _start_etcd(self) -> None:
        p = self.ports
        self._spawn(
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
        self._spawn(
            "kube-apiserver",
            [
                self.tools.kubernetes / "kube-apiserver",
                f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports.apiserver}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--authorization-mode=Node,RBAC",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                # No kubelets exist to serve the Endpoints of `kubernetes`; no reconciler needed.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _start_controller_manager(self) -> None:
        pki = self.pki
        cfg = self.dir / "controller-manager.kubeconfig"
        self._spawn(
            "kube-controller-manager",
            [
                self.tools.kubernetes / "kube-controller-manager",
                f"--kubeconfig={cfg}",
                f"--authentication-kubeconfig={cfg}",
                f"--authorization-kubeconfig={cfg}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports.controller_manager}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--controllers=*,-nodeipam",
                "--v=1",
            ],
        )

    def _start_scheduler(self) -> None:
        cfg = self.dir / "scheduler.kubeconfig"
        self._spawn(
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
        # Nodes: initialise as Ready and keep a lease heartbeat. Pods: become Ready fast, and are
        # really deleted when terminating (there is no kubelet to do it).
        files = [
            stages / "node" / "fast" / "node-initialize.yaml",
            stages / "node" / "heartbeat-with-lease" / "node-heartbeat-with-lease.yaml",
            stages / "pod" / "fast" / "pod-ready.yaml",
            stages / "pod" / "fast" / "pod-complete.yaml",
            stages / "pod" / "fast" / "pod-delete.yaml",
        ]
        config.write_text("\n---\n".join(f.read_text() for f in files))
        self._spawn(
            "kwok",
            [
                self.tools.kwok / "kwok",
                f"--kubeconfig={self.kubeconfig}",
                f"--config={config}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{self.ports.kwok}",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.250.0.1",
            ],
        )

    def _install_kuberay_crds(self) -> None:
        crds = sorted((self.tools.kuberay / "crds").glob("ray.io_*.yaml"))
        # Too large for client-side apply's last-applied annotation: server-side apply.
        args: list[str | Path] = ["apply", "--server-side", "--force-conflicts"]
        for crd in crds:
            args += ["-f", crd]
        self.kubectl(*args)
        names = [f"crd/{crd.name.removeprefix('ray.io_').removesuffix('.yaml')}.ray.io" for crd in crds]
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)

    def _start_kuberay(self) -> None:
        self._spawn(
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

    # ---- nodes -----------------------------------------------------------------------------------

    def _ensure_nodes(self, plan: NodePlan) -> None:
        nodes = [self._node(f"gpu-node-{i}", plan, gpus=plan.gpus_per_node) for i in range(plan.gpu_nodes)]
        nodes += [self._node(f"cpu-node-{i}", plan, gpus=0) for i in range(plan.cpu_nodes)]
        wanted = {n["metadata"]["name"] for n in nodes}
        existing = set(
            self.kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}", capture=True).split()
        )
        for extra in sorted(existing - wanted):
            self.kubectl("delete", "node", extra, "--wait=false")
        for node in nodes:
            if node["metadata"]["name"] not in existing:
                # `create` (not apply): the API accepts status on Node create, which is how fake nodes
                # get their GPU capacity without a kubelet.
                self.kubectl("create", "-f", "-", stdin=json.dumps(node))
        log(
            f"nodes: {plan.gpu_nodes} with {plan.gpus_per_node} {plan.gpu_resource}, {plan.cpu_nodes} CPU-only"
        )

    @staticmethod
    def _node(name: str, plan: NodePlan, gpus: int) -> dict[str, object]:
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

    def _nodes_ready(self, plan: NodePlan) -> bool:
        out = self.kubectl(
            "get",
            "nodes",
            "-o",
            'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
            capture=True,
        )
        statuses = out.split()
        return len(statuses) == plan.gpu_nodes + plan.cpu_nodes and all(s == "True" for s in statuses)

    def _default_service_account(self) -> bool:
        return (
            self.kubectl("get", "serviceaccount", "default", "-n", "default", capture=True, check=False) != ""
        )

    # ---- helpers ---------------------------------------------------------------------------------

    def kubectl(
        self, *args: str | Path, capture: bool = False, check: bool = True, stdin: str | None = None
    ) -> str:
        result = subprocess.run(
            [str(self.tools.kubectl), f"--kubeconfig={self.kubeconfig}", *map(str, args)],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(map(str, args))} failed: {result.stderr.strip()}")
        if not capture and result.stdout.strip():
            log(result.stdout.strip())
        return result.stdout if result.returncode == 0 else ""

    def _apiserver_ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        try:
            context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
            with urllib.request.urlopen(f"{self.server}/readyz", context=context, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError, ssl.SSLError):
            return False

    def _pid_alive(self, name: str) -> bool:
        pid_file = self.pids / f"{name}.pid"
        return pid_file.exists() and _alive(int(pid_file.read_text()))

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.1
        while not ready():
            dead = [
                name
                for name in COMPONENTS
                if (self.pids / f"{name}.pid").exists() and not self._pid_alive(name)
            ]
            if dead:
                tails = "\n".join(f"--- {n}.log ---\n{_tail(self.logs / f'{n}.log')}" for n in dead)
                raise SystemExit(f"{', '.join(dead)} exited while waiting for {what}:\n{tails}")
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out after {timeout}s waiting for {what}; logs in {self.logs}")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        log(f"{what}: ok")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _terminate_group(pid: int, grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.05)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _certificate(
    common_name: str,
    sans: list[x509.GeneralName],
    key: rsa.RSAPrivateKey,
    issuer_key: rsa.RSAPrivateKey,
    issuer: x509.Certificate | None,
    *,
    is_ca: bool,
    server: bool,
    client: bool,
    org: Sequence[str] = (),
) -> x509.Certificate:
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in org]
    )
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def default_cluster() -> Cluster:
    state = Path(os.environ.get("RAYVLLM_CLUSTER_DIR", REPO / ".cluster"))
    return Cluster(state, Ports(int(os.environ.get("RAYVLLM_CLUSTER_PORT_BASE", "26400"))))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (or reuse) the control plane")
    up.add_argument("--gpu-nodes", type=int, default=int(os.environ.get("RAYVLLM_GPU_NODES", "2")))
    up.add_argument("--gpus-per-node", type=int, default=int(os.environ.get("RAYVLLM_GPUS_PER_NODE", "8")))
    up.add_argument("--cpu-nodes", type=int, default=int(os.environ.get("RAYVLLM_CPU_NODES", "1")))
    sub.add_parser("down", help="stop every process and free every port")
    sub.add_parser("status", help="print which components run")
    args = parser.parse_args(argv)
    cluster = default_cluster()
    if args.command == "up":
        cluster.up(NodePlan(args.gpu_nodes, args.gpus_per_node, args.cpu_nodes))
    elif args.command == "down":
        cluster.down()
    else:
        print(json.dumps(cluster.status(), indent=2))


if __name__ == "__main__":
    main()
