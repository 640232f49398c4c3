"""The real node: containerd (CRI, runc, the CNI bridge), kubelet and kube-proxy, from Debian's containerd,
runc and CNI plugins and the Kubernetes build. Its pods run for real on this machine's cores.

containerd's root (the image content store and snapshots) lives under the cache, so imported images
survive a cluster restart; everything else (state, sockets, kubelet's root, pod logs, CNI state) lives
under the cluster's state directory and is unmounted and removed by `down`.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hack.localcluster.controlplane import Ports
from hack.localcluster.network import BRIDGE, NODE_IP, POD_CIDR
from hack.localcluster.procs import CommandError, Daemons, alive, cache_dir, log, run

NODE_NAME = "real-node-0"
# Only objects that tolerate this run on the real node: integration and benchmark objects stay on kwok's
# nodes, and the kubelet never tries to pull an image.
TAINT_KEY = "rayvllm.io/real-node"
NODE_LABEL = "rayvllm.io/real-node"
CNI_BIN = Path("/usr/lib/cni")
GPU_RESOURCE = "nvidia.com/gpu"
COMPONENTS = ("containerd", "kubelet", "kube-proxy")


@dataclass(frozen=True)
class NodePlan:
    fake_gpus: int = 4


class RealNode:
    def __init__(self, state_dir: Path, daemons: Daemons, kubernetes_bin: Path, ports: Ports) -> None:
        self.dir = state_dir / "node"
        self.daemons = daemons
        self.bin = kubernetes_bin
        self.ports = ports
        self.containerd_root = cache_dir() / "containerd" / "root"

    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet"

    def ctr(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        argv = ["ctr", f"--address={self.containerd_socket}", "--namespace=k8s.io", *args]
        return run(argv, check=check, timeout=timeout).stdout

    # ---- containerd ------------------------------------------------------------------------------

    def start_containerd(self, pause_image: str) -> None:
        state = self.dir / "containerd"
        state.mkdir(parents=True, exist_ok=True)
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        cni_conf = self.dir / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-rayvllm.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        config = state / "config.toml"
        config.write_text(
            f"""version = 2
root = "{self.containerd_root}"
state = "{state / "state"}"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{state / "containerd.sock.ttrpc"}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  # This VM lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below its own.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
"""
        )
        self.daemons.spawn("containerd", ["containerd", f"--config={config}"], component="node")
        self.daemons.wait("containerd", self._containerd_ready, 60, watch=["containerd"], component="node")
        # A crashed earlier run may have left containers in the (cached) store: start from none.
        self.remove_all_containers()

    def _cni_config(self) -> dict[str, object]:
        return {
            "cniVersion": "1.0.0",
            "name": "rayvllm",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    # Pods never leave this machine: no masquerade to the outside.
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.dir / "cni" / "ipam"),
                        "ranges": [[{"subnet": POD_CIDR, "rangeStart": "10.88.1.1", "gateway": NODE_IP}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                }
            ],
        }

    def _containerd_ready(self) -> bool:
        if not self.containerd_socket.exists():
            return False
        return run(["ctr", f"--address={self.containerd_socket}", "version"], check=False).returncode == 0

    def has_image(self, ref: str) -> bool:
        return bool(self.ctr("images", "ls", "-q", f"name=={ref}", check=False).strip())

    def remove_all_containers(self) -> None:
        ids = self.ctr("containers", "ls", "-q", check=False).split()
        for cid in ids:
            self.ctr("tasks", "kill", "--signal=SIGKILL", cid, check=False)
        for cid in ids:
            self.ctr("tasks", "delete", "--force", cid, check=False)
            self.ctr("containers", "delete", cid, check=False)
        if ids:
            log("node", f"removed {len(ids)} containers left in containerd's store")

    # ---- kubelet and kube-proxy ------------------------------------------------------------------

    def start_kubelet(self, kubeconfig: Path, ca: Path) -> None:
        p = self.ports
        self.kubelet_root.mkdir(parents=True, exist_ok=True)
        resolv = self.dir / "resolv.conf"
        # Pods with dnsPolicy Default get this: no nameserver beyond this machine.
        resolv.write_text(f"nameserver {NODE_IP}\n")
        config = self.dir / "kubelet.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "address": NODE_IP,
                    "port": p.kubelet,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": p.kubelet_healthz,
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(ca)},
                    },
                    "authorization": {"mode": "Webhook"},
                    "cgroupDriver": "cgroupfs",
                    "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
                    "failSwapOn": False,
                    "enforceNodeAllocatable": [],
                    "evictionHard": {},
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "clusterDNS": [NODE_IP],
                    "clusterDomain": "cluster.local",
                    "resolvConf": str(resolv),
                    "podLogsDir": str(self.dir / "pod-logs"),
                    "volumePluginDir": str(self.dir / "volume-plugins"),
                    "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
                    "serializeImagePulls": False,
                    "maxPods": 30,
                    # containerd 1.6's shim sometimes misses the exit of a killed Ray container; kubelet then
                    # stops the sandbox once a CRI call timed out, which frees the pod (default: 2 min).
                    "runtimeRequestTimeout": "45s",
                    "localStorageCapacityIsolation": False,
                    # No iptables chains of the kubelet on this machine (kube-proxy owns the rules it needs).
                    "makeIPTablesUtilChains": False,
                }
            )
        )
        self.daemons.spawn(
            "kubelet",
            [
                self.bin / "kubelet",
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.dir / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                f"--node-labels={NODE_LABEL}=true",
                "--v=1",
            ],
            component="node",
        )
        self.daemons.wait("kubelet /healthz", self._kubelet_healthy, 90, watch=["kubelet"], component="node")

    def _kubelet_healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.ports.kubelet_healthz}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def start_kube_proxy(self, kubeconfig: Path) -> None:
        p = self.ports
        config = self.dir / "kube-proxy.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(kubeconfig)},
                    "mode": "iptables",
                    "clusterCIDR": POD_CIDR,
                    "hostnameOverride": NODE_NAME,
                    "bindAddress": NODE_IP,
                    "healthzBindAddress": f"127.0.0.1:{p.kube_proxy_healthz}",
                    "metricsBindAddress": f"127.0.0.1:{p.kube_proxy_metrics}",
                    # NodePorts answer on the bridge address only, never the external interface.
                    "nodePortAddresses": [f"{NODE_IP}/32"],
                    # Leave the machine's conntrack sysctls alone.
                    "conntrack": {"maxPerCore": 0, "min": 0},
                    "iptables": {"localhostNodePorts": False},
                }
            )
        )
        self.daemons.spawn(
            "kube-proxy", [self.bin / "kube-proxy", f"--config={config}", "--v=1"], component="node"
        )

    def advertise_gpus(self, kubectl: Callable[..., str], plan: NodePlan) -> None:
        """The real node has no GPU; an extended resource on its status lets GPU-requesting worker pods of
        the e2e tier schedule onto it (they run vLLM's CPU build)."""
        patch = json.dumps({"status": {"capacity": {GPU_RESOURCE: str(plan.fake_gpus)}}})
        kubectl("patch", "node", NODE_NAME, "--subresource=status", "--type=merge", "-p", patch)

    # ---- down ------------------------------------------------------------------------------------

    def down(self) -> None:
        if self.daemons.running("kubelet"):
            self.daemons.stop("kubelet", component="node")
        if self.daemons.running("containerd"):
            # Pod processes live under containerd's shims, which outlive containerd by design.
            self.remove_all_containers()
        self.daemons.stop("containerd", component="node")
        self._kill_orphan_shims()
        if self.daemons.pid("kube-proxy") is not None:
            self.daemons.stop("kube-proxy", component="node")
            run([self.bin / "kube-proxy", "--cleanup", "--v=0"], check=False)
        remove_kube_chains()
        for netns in run(["ip", "netns", "list"], check=False).stdout.splitlines():
            if netns.startswith("cni-"):
                run(["ip", "netns", "delete", netns.split()[0]], check=False)
        unmount_under(self.dir)
        unmount_under(self.containerd_root)
        _remove_cgroups("kubepods")
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_orphan_shims(self) -> None:
        marker = str(self.containerd_socket)
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "containerd-shim" in cmdline and marker in cmdline:
                pid = int(proc.name)
                log("node", f"killing orphaned shim {pid}")
                run(["kill", "-9", str(pid)], check=False)
                deadline = time.monotonic() + 5
                while alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)


def remove_kube_chains() -> None:
    """`kube-proxy --cleanup` leaves KUBE-FIREWALL (and kubelet its canaries) behind: remove every jump to
    a KUBE-* chain, then the chains, in both families and every table they use."""
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            listing = run([tool, "-t", table, "-S"], check=False).stdout.splitlines()
            for rule in listing:
                if rule.startswith("-A ") and " -j KUBE-" in rule:
                    run([tool, "-t", table, "-D", *shlex.split(rule)[1:]], check=False)
            for rule in listing:
                if rule.startswith("-N KUBE-"):
                    chain = rule.split()[1]
                    run([tool, "-t", table, "-F", chain], check=False)
                    run([tool, "-t", table, "-X", chain], check=False)


def mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix.rstrip("/") or point.startswith(prefix):
            points.append(point)
    return points


def unmount_under(root: Path) -> None:
    """Undo every mount kubelet and containerd left under `root` (deepest first; lazily where busy)."""
    if not root.exists():
        return
    for _ in range(3):
        points = sorted(set(mounts_under(root)), key=lambda p: p.count("/"), reverse=True)
        if not points:
            return
        for point in points:
            if run(["umount", point], check=False).returncode != 0:
                run(["umount", "-l", point], check=False)
    left = mounts_under(root)
    if left:
        raise CommandError(f"mounts left under {root}: {left}")


def _remove_cgroups(name: str) -> None:
    """kubelet's cgroupfs driver makes <controller>/kubepods/... on every hierarchy: remove them, leaves first."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / name
        if not top.is_dir():
            continue
        # Children before parents; a cgroup directory goes once it holds no processes and no children.
        for path in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            try:
                path.rmdir()
            except OSError as error:
                log("node", f"could not remove cgroup {path}: {error}")
        try:
            top.rmdir()
        except OSError as error:
            log("node", f"could not remove cgroup {top}: {error}")


def leftover_mounts(*roots: Path) -> list[str]:
    return [point for root in roots if root.exists() for point in mounts_under(root)]
