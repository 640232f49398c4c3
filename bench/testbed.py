"""The benchmark's cluster: a loopback control plane (every listener on 127.0.0.1, no bridge, no real node)
in its own state directory and port range, so it runs beside a test cluster on the default ones; kwok's
nodes sized for N objects; the API server's audit log on; the CRDs and the operator's ServiceAccount and
RBAC taken from the checkout under test."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import audit
from bench.watch import Endpoint
from hack.localcluster.cluster import Cluster, ClusterPlan
from hack.localcluster.controlplane import AuditLog, FakeNodePlan, Ports, Tools
from hack.localcluster.kubecli import Helm, Kubectl
from hack.localcluster.procs import REPO, log, run, wait_for

OPERATOR_NAMESPACE = "rayvllm-bench"
RELEASE = "rayvllm"
# What of the chart the operator's identity consists of (as tests/support/operator_identity.py takes it).
RBAC_KINDS = frozenset({"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"})
GPUS_PER_NODE = 32
PODS_PER_NODE = 110  # what hack/localcluster gives every kwok node


def node_plan(objects: int) -> FakeNodePlan:
    """GPU nodes for one worker GPU per object plus a spare node; CPU nodes for the heads (one pod each).
    Even if every head landed on a GPU node, pod slots (110 a node) would still suffice; CPU and memory are
    set out of reach so only GPUs and pod slots decide placement."""
    gpu_nodes = math.ceil(objects / GPUS_PER_NODE) + 1
    cpu_nodes = math.ceil(objects / (PODS_PER_NODE - 10)) + 1
    return FakeNodePlan(gpu_nodes, GPUS_PER_NODE, cpu_nodes, cpu="4000", memory="64Ti")


@dataclass(frozen=True)
class Checkout:
    """The source tree under test: its operator root, and the CRDs, chart and samples next to it (an older
    commit is measured with its own API and RBAC). Missing ones come from this checkout."""

    operator_root: Path

    def _path(self, relative: str) -> Path:
        own = self.operator_root.parent / relative
        return own if own.exists() else REPO / relative

    @property
    def root(self) -> Path:
        return self.operator_root.parent

    @property
    def crds(self) -> Path:
        return self._path("crds")

    @property
    def chart(self) -> Path:
        return self._path("helm/rayvllm-operator")

    def describe(self) -> dict[str, Any]:
        head = run(["git", "-C", self.root, "rev-parse", "HEAD"], check=False).stdout.strip()
        dirty = run(["git", "-C", self.root, "status", "--porcelain", "--", "operator"], check=False).stdout
        return {
            "operator_root": str(self.operator_root),
            "commit": head or None,
            "operator_tree_modified": bool(dirty.strip()),
            "crds": str(self.crds),
            "chart": str(self.chart),
        }


@dataclass(frozen=True)
class Identity:
    kubeconfig: Path
    username: str


class Testbed:
    def __init__(self, state_dir: Path, port_base: int) -> None:
        self.dir = state_dir
        self.ports = Ports(port_base)
        self.audit_log = AuditLog(
            policy=state_dir / "audit" / "policy.json", path=state_dir / "audit" / "audit.log"
        )
        self.cluster = Cluster(state_dir / "cluster", self.ports, loopback=True, audit=self.audit_log)
        self.tools = Tools.from_cache()

    def up(self, objects: int, checkout: Checkout) -> None:
        # Our own leftovers of an interrupted run (by pid file): a reused API server would keep writing to
        # the audit file removed below.
        self.cluster.down(quiet=True)
        busy = self.ports.in_use()
        if busy:
            raise SystemExit(f"ports {busy} are in use: pick another --port-base")
        # A fresh log per cluster: counts of one run never include another's.
        shutil.rmtree(self.audit_log.path.parent, ignore_errors=True)
        audit.write_policy(
            self.audit_log.policy,
            groups=[f"system:serviceaccounts:{OPERATOR_NAMESPACE}"],
            users=[audit.ADMIN_USER],
        )
        plan = node_plan(objects)
        log("bench", f"cluster in {self.dir} (ports {self.ports.base}+): {plan}")
        # `up` ends by printing `export KUBECONFIG=...` on stdout, which is the results table's here.
        with contextlib.redirect_stdout(sys.stderr):
            self.cluster.up(ClusterPlan(fake=plan, real_node=None))
        self.cluster.control_plane.install_crds(sorted(checkout.crds.glob("*.yaml")))

    def down(self) -> None:
        self.cluster.down()
        left = self.cluster.leftovers()
        if left:
            log("bench", f"left behind after down: {left}")
        log("bench", f"cluster torn down ({self.dir})")

    def endpoint(self) -> Endpoint:
        pki = self.cluster.control_plane.pki
        return Endpoint("127.0.0.1", self.ports.apiserver, pki.ca, pki.cert("admin"), pki.key("admin"))

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 300, check: bool = True) -> str:
        admin = Kubectl(self.tools.kubectl, self.cluster.kubeconfig)
        return admin.run(*args, stdin=stdin, timeout=timeout, check=check).stdout

    def grant_operator(self, checkout: Checkout) -> Identity:
        """The chart's ServiceAccount and RBAC (cluster-wide mode), rendered from the checkout's own chart,
        and a kubeconfig holding only a token of that ServiceAccount (valid for the whole run)."""
        self.kubectl("create", "namespace", OPERATOR_NAMESPACE)
        rendered = [d for d in self._helm_template(checkout.chart) if d["kind"] in RBAC_KINDS]
        listed = {"apiVersion": "v1", "kind": "List", "items": rendered}
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(listed))
        (account,) = [d["metadata"]["name"] for d in rendered if d["kind"] == "ServiceAccount"]
        token = self.kubectl("create", "token", account, "-n", OPERATOR_NAMESPACE, "--duration=12h").strip()
        path = self.dir / "operator.kubeconfig"
        path.write_text(json.dumps(self._token_kubeconfig(token)))
        path.chmod(0o600)

        as_operator = Kubectl(self.tools.kubectl, path)

        def allowed() -> bool:
            answer = as_operator.run(
                "auth", "can-i", "watch", "vllmclusters.rayvllm.io", "--all-namespaces", check=False
            )
            return answer.stdout.strip() == "yes"

        # RBAC reaches the authorizer through an informer: wait until the grant is effective.
        wait_for(allowed, timeout=30, what="the operator's RBAC to take effect")
        return Identity(path, f"system:serviceaccount:{OPERATOR_NAMESPACE}:{account}")

    def _helm_template(self, chart: Path) -> list[dict[str, Any]]:
        helm = Helm.for_cluster(None, self.dir / "helm-home", self.tools)
        return helm.template(RELEASE, OPERATOR_NAMESPACE, {"watch": {"mode": "cluster"}}, chart=chart)

    def _token_kubeconfig(self, token: str) -> dict[str, Any]:
        cp = self.cluster.control_plane
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "bench", "cluster": {"server": cp.server, "certificate-authority": str(cp.pki.ca)}}
            ],
            "users": [{"name": "operator", "user": {"token": token}}],
            "contexts": [{"name": "operator", "context": {"cluster": "bench", "user": "operator"}}],
            "current-context": "operator",
        }

    def daemon_pids(self) -> dict[str, int]:
        pids = {}
        for name in ("kube-apiserver", "etcd", "kuberay", "kwok"):
            pid = self.cluster.daemons.pid(name)
            if pid is not None and self.cluster.daemons.running(name):
                pids[name] = pid
        return pids
