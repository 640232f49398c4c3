"""The operator as it is installed: the Helm chart rendered, its ServiceAccount and RBAC granted on the
control plane, a kubeconfig that authenticates as that ServiceAccount alone, and the image's command line
parsed from the Dockerfile. Tests that must run "as the installed operator" use these, so what they prove
holds for the chart users install, not for an admin client.

    kubeconfig = operator_kubeconfig(kube, namespace, tmp_path)           # cluster-wide mode
    kubeconfig = operator_kubeconfig(kube, namespace, tmp_path, watch_namespaces=[namespace])
    OperatorProcess(kubeconfig, log).start(("--namespace=" + namespace,))  # the operator under that identity
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from hack.localcluster.kubecli import Helm
from tests.support.kube import Kube
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
RBAC_KINDS = frozenset({"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"})
CLUSTER_SCOPED = frozenset({"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"})
Manifest = dict[str, Any]


# ---- the ServiceAccount identity -------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorIdentity:
    kubeconfig: Path
    service_account: str
    namespace: str
    objects: tuple[Manifest, ...]

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def kube(self, kubectl_path: Path) -> Kube:
        return Kube(self.kubeconfig, kubectl_path)


def grant_operator_identity(
    admin: Kube,
    namespace: str,
    workdir: Path,
    *,
    watch_namespaces: Sequence[str] | None = None,
    release: str = "rayvllm",
    token_seconds: int = 3600,
) -> OperatorIdentity:
    """Apply the chart's ServiceAccount and RBAC (rendered for a release in `namespace`: cluster-wide, or
    only `watch_namespaces`), then write `workdir/<release>-<namespace>.kubeconfig` authenticating with a
    TokenRequest token of that ServiceAccount and nothing else.

    Cleanup is automatic: every object outside `namespace` (ClusterRole, ClusterRoleBinding, Roles in the
    watched namespaces) is owned by the Namespace object `namespace`, so the garbage collector removes
    them when that namespace is deleted (e.g. by the `namespace` fixture)."""
    values: dict[str, Any] = {"watch": {"mode": "cluster"}}
    if watch_namespaces is not None:
        values["watch"] = {"mode": "namespaces", "namespaces": list(watch_namespaces)}
    helm = Helm.for_cluster(None, workdir / "helm-home")
    objects = [doc for doc in helm.template(release, namespace, values) if doc["kind"] in RBAC_KINDS]
    service_accounts = [o for o in objects if o["kind"] == "ServiceAccount"]
    assert len(service_accounts) == 1, f"the chart must render exactly one ServiceAccount: {service_accounts}"
    service_account = service_accounts[0]["metadata"]["name"]

    owner = admin.get_json("namespace", namespace)
    assert owner, f"namespace {namespace} must exist"
    owner_ref = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "name": namespace,
        "uid": owner["metadata"]["uid"],
    }
    for obj in objects:
        if obj["kind"] in CLUSTER_SCOPED or obj["metadata"].get("namespace", namespace) != namespace:
            obj["metadata"]["ownerReferences"] = [owner_ref]
    admin.apply({"apiVersion": "v1", "kind": "List", "items": objects})

    token = request_token(admin, namespace, service_account, token_seconds)
    path = workdir / f"{release}-{namespace}.kubeconfig"
    write_token_kubeconfig(admin, token, path)
    identity = OperatorIdentity(path, service_account, namespace, tuple(objects))

    # RBAC reaches the authorizer through an informer: wait until the grant is effective.
    probe_namespace = watch_namespaces[0] if watch_namespaces else namespace
    as_operator = identity.kube(admin.kubectl_path)
    wait_for(
        lambda: can_i(as_operator, "watch", "vllmclusters.rayvllm.io", namespace=probe_namespace),
        timeout=30,
        what=f"{identity.username} to be allowed to watch vllmclusters in {probe_namespace}",
    )
    return identity


def operator_kubeconfig(
    admin: Kube, namespace: str, workdir: Path, *, watch_namespaces: Sequence[str] | None = None
) -> Path:
    """The kubeconfig of the chart's ServiceAccount in `namespace`, granted as the chart grants it
    (cluster-wide, or only `watch_namespaces`). See grant_operator_identity."""
    return grant_operator_identity(admin, namespace, workdir, watch_namespaces=watch_namespaces).kubeconfig


def request_token(admin: Kube, namespace: str, service_account: str, seconds: int) -> str:
    """A bound token of the ServiceAccount from the TokenRequest API (audience: the API server)."""
    with admin.api() as api:
        answer = client.CoreV1Api(api).create_namespaced_service_account_token(
            service_account,
            namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
            ),
        )
    token = answer.status.token if answer.status is not None else None
    assert isinstance(token, str) and token, "TokenRequest returned no token"
    return token


def write_token_kubeconfig(admin: Kube, token: str, path: Path) -> Path:
    """A kubeconfig for the admin's cluster (server, CA) whose only credential is `token`."""
    config = json.loads(admin.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cluster = config["clusters"][0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [
                    {"name": "operator", "context": {"cluster": cluster["name"], "user": "operator"}}
                ],
                "current-context": "operator",
            },
            indent=2,
        )
    )
    path.chmod(0o600)
    return path


def can_i(
    kube: Kube,
    verb: str,
    resource: str,
    *,
    namespace: str | None = None,
    subresource: str | None = None,
    all_namespaces: bool = False,
) -> bool:
    """`kubectl auth can-i` as `kube`'s user: True for yes, False for no, AssertionError otherwise."""
    args = ["auth", "can-i", verb, resource]
    if subresource:
        args.append(f"--subresource={subresource}")
    if all_namespaces:
        args.append("--all-namespaces")
    elif namespace:
        args += ["-n", namespace]
    result = kube.kubectl(*args, check=False)
    answer = result.stdout.strip()
    if answer not in ("yes", "no"):
        raise AssertionError(
            f"kubectl {' '.join(args)} answered {answer!r} ({result.returncode}): {result.stderr}"
        )
    return answer == "yes"


# ---- the image's command line ----------------------------------------------------------------------


def dockerfile_instruction(name: str, dockerfile: Path = DOCKERFILE) -> list[str]:
    """The exec-form (JSON array) argument of the last `name` instruction of the final stage, e.g.
    ENTRYPOINT or CMD. Continuation lines are joined; the shell form is refused (signals would not reach
    the operator through a shell)."""
    logical: list[str] = []
    for line in re.sub(r"\\\n", " ", dockerfile.read_text()).splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            logical.append(stripped)
    final_stage = logical[max(i for i, line in enumerate(logical) if line.upper().startswith("FROM ")) :]
    found = [line for line in final_stage if line.split(None, 1)[0].upper() == name.upper()]
    assert found, f"{dockerfile} has no {name} in its final stage"
    argument = found[-1].split(None, 1)[1]
    parsed = json.loads(argument)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), (
        f"{name} must use the exec form (a JSON array of strings): {argument}"
    )
    return list(parsed)
