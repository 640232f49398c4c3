"""`kubectl get` arguments as API requests, and the API's answers as `kubectl get -o json` prints them: what
Kube.get_json needs to poll over one persistent client instead of a kubectl process per poll.

    parse_get(("pods", "-n", ns, "-l", "app=x"))  # GET /api/v1/namespaces/<ns>/pods?labelSelector=app%3Dx

Kinds come from a fixed table, not from discovery. The tests read a few known kinds; a table costs no
discovery requests (dozens per new client) and no on-disk discovery cache (the client's DynamicClient keeps
one per host:port under /tmp, which loopback clusters reusing ports would share and read stale); it is
immutable, so watcher threads share it without a lock; and a kind missing from it fails at once, by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from rayvllm import API_GROUP, API_VERSION, KIND, PLURAL
from rayvllm.crdgen import SHORT_NAMES
from rayvllm.k8s.resources import RAY_GROUP, RAY_VERSION, RAYCLUSTERS


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    group: str = ""  # the core group
    version: str = "v1"
    namespaced: bool = True
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def names(self) -> tuple[str, ...]:
        """What kubectl accepts for it: plural, singular (the kind in lower case) and short names, each
        also qualified by the group (`deployments.apps`)."""
        bare = tuple(dict.fromkeys((self.plural, self.kind.lower(), *self.short_names)))
        return bare + tuple(f"{name}.{self.group}" for name in bare if self.group)

    def path(self, namespace: str | None, name: str | None) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        scope = f"/namespaces/{quote(namespace, safe='')}" if self.namespaced and namespace else ""
        item = f"/{quote(name, safe='')}" if name else ""
        return f"{root}{scope}/{self.plural}{item}"


RESOURCES = (
    Resource("pods", "Pod", short_names=("po",)),
    Resource("services", "Service", short_names=("svc",)),
    Resource("secrets", "Secret"),
    Resource("configmaps", "ConfigMap", short_names=("cm",)),
    Resource("serviceaccounts", "ServiceAccount", short_names=("sa",)),
    # kubectl's `events` are the core group's (not events.k8s.io's): involvedObject.* field selectors.
    Resource("events", "Event", short_names=("ev",)),
    Resource("namespaces", "Namespace", namespaced=False, short_names=("ns",)),
    Resource("nodes", "Node", namespaced=False, short_names=("no",)),
    Resource("deployments", "Deployment", "apps", short_names=("deploy",)),
    Resource("endpointslices", "EndpointSlice", "discovery.k8s.io"),
    Resource("roles", "Role", "rbac.authorization.k8s.io"),
    Resource("rolebindings", "RoleBinding", "rbac.authorization.k8s.io"),
    Resource("clusterroles", "ClusterRole", "rbac.authorization.k8s.io", namespaced=False),
    Resource("clusterrolebindings", "ClusterRoleBinding", "rbac.authorization.k8s.io", namespaced=False),
    Resource(
        "customresourcedefinitions",
        "CustomResourceDefinition",
        "apiextensions.k8s.io",
        namespaced=False,
        short_names=("crd", "crds"),
    ),
    Resource(RAYCLUSTERS, "RayCluster", RAY_GROUP, RAY_VERSION),
    Resource(PLURAL, KIND, API_GROUP, API_VERSION, short_names=tuple(SHORT_NAMES)),
)
BY_NAME: Mapping[str, Resource] = {name: r for r in RESOURCES for name in r.names}

# kubectl's flags that get_json translates, by the request field each sets.
VALUE_FLAGS = {
    "-n": "namespace",
    "--namespace": "namespace",
    "-l": "label_selector",
    "--selector": "label_selector",
    "--field-selector": "field_selector",
}
SWITCHES = {
    "-A": "all_namespaces",
    "--all-namespaces": "all_namespaces",
    "--show-managed-fields": "managed_fields",
}


@dataclass(frozen=True)
class GetRequest:
    resources: tuple[Resource, ...]
    name: str | None = None
    namespace: str | None = None  # None: the kubeconfig context's
    all_namespaces: bool = False
    label_selector: str | None = None
    field_selector: str | None = None
    managed_fields: bool = False  # kubectl leaves metadata.managedFields out unless asked

    def paths(self, default_namespace: str) -> list[str]:
        namespace = None if self.all_namespaces else self.namespace or default_namespace
        return [r.path(namespace, self.name) for r in self.resources]

    def query(self) -> list[tuple[str, str]]:
        selectors = (("labelSelector", self.label_selector), ("fieldSelector", self.field_selector))
        return [(key, value) for key, value in selectors if value is not None]

    def printed(self, answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """What kubectl prints for the API's `answers` (one per path): the object, or one List of every
        listed item, each item with its apiVersion and kind (the API leaves those out of built-in lists)."""
        if self.name is not None:
            (found,) = answers
            return self._shown(found)
        items = [
            self._shown({"apiVersion": r.api_version, "kind": r.kind, **item})
            for r, listed in zip(self.resources, answers, strict=True)
            for item in listed.get("items") or []
        ]
        return {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}

    def _shown(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if self.managed_fields or "managedFields" not in obj.get("metadata", {}):
            return dict(obj)
        metadata = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
        return {**obj, "metadata": metadata}


def parse_get(args: Sequence[str]) -> GetRequest:
    """The request of `kubectl get ARGS`: TYPE[,TYPE...] [NAME] or TYPE/NAME, with the flags of VALUE_FLAGS
    and SWITCHES. Anything else is a ValueError naming it."""

    def refuse(why: str) -> ValueError:
        return ValueError(f"get_json{tuple(args)!r}: {why}")

    positional: list[str] = []
    fields: dict[str, Any] = {}
    remaining = iter(args)
    for arg in remaining:
        if not arg.startswith("-"):
            positional.append(arg)
            continue
        flag, has_value, value = arg.partition("=")
        if flag in SWITCHES and value in ("", "true", "false"):
            fields[SWITCHES[flag]] = value != "false"
        elif flag in VALUE_FLAGS:
            given = value if has_value else next(remaining, None)
            if not given:
                raise refuse(f"{flag} needs a value")
            fields[VALUE_FLAGS[flag]] = given
        else:
            known = ", ".join([*VALUE_FLAGS, *SWITCHES])
            raise refuse(f"unknown flag {arg!r} (translated: {known})")
    if len(positional) == 1 and "/" in positional[0]:
        positional = positional[0].split("/", 1)
    if not positional or len(positional) > 2:
        raise refuse("expected TYPE[,TYPE...] [NAME] or TYPE/NAME")
    types = positional[0].split(",")
    unknown = [t for t in types if t.lower() not in BY_NAME]
    if unknown:
        raise refuse(
            f"no kind named {unknown} in tests/support/kube_get.py's RESOURCES; known: {sorted(BY_NAME)}"
        )
    name = positional[1] if len(positional) == 2 else None
    request = GetRequest(tuple(BY_NAME[t.lower()] for t in types), name, **fields)
    if request.name is not None and (len(types) > 1 or request.all_namespaces or request.label_selector):
        raise refuse("a NAME goes with one TYPE, no selector and no --all-namespaces")
    return request
