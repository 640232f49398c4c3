"""Kube.get_json's translation of kubectl's arguments into API requests, and of the API's answers into what
`kubectl get -o json` prints; no server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.kube_get import RESOURCES, GetRequest, parse_get

NS = "ns-1"
CONTEXT_NS = "from-context"


def request_of(*args: str) -> tuple[list[str], list[tuple[str, str]]]:
    request = parse_get(args)
    return request.paths(CONTEXT_NS), request.query()


# Every argument pattern the tests, the bench and hack/ pass to get_json (and kubectl's other spellings).
@pytest.mark.parametrize(
    ("args", "paths", "query"),
    [
        (("pods", "-n", NS), [f"/api/v1/namespaces/{NS}/pods"], []),
        (
            ("pods", "-n", NS, "-l", "ray.io/cluster=c"),
            [f"/api/v1/namespaces/{NS}/pods"],
            [("labelSelector", "ray.io/cluster=c")],
        ),
        (("pod", "worker-a", "-n", NS), [f"/api/v1/namespaces/{NS}/pods/worker-a"], []),
        (("po/worker-a", "--namespace", NS), [f"/api/v1/namespaces/{NS}/pods/worker-a"], []),
        (("service", "svc", "-n", NS), [f"/api/v1/namespaces/{NS}/services/svc"], []),
        (("svc", "svc", f"--namespace={NS}"), [f"/api/v1/namespaces/{NS}/services/svc"], []),
        (("secret", "token", "-n", NS), [f"/api/v1/namespaces/{NS}/secrets/token"], []),
        (("namespace", NS), [f"/api/v1/namespaces/{NS}"], []),
        (("ns", NS, "-n", "ignored"), [f"/api/v1/namespaces/{NS}"], []),
        (
            ("events", "-n", NS, "--field-selector", "involvedObject.name=x"),
            [f"/api/v1/namespaces/{NS}/events"],
            [("fieldSelector", "involvedObject.name=x")],
        ),
        (
            ("events", "-n", NS, "--field-selector=involvedObject.kind=VLLMCluster,involvedObject.name=x"),
            [f"/api/v1/namespaces/{NS}/events"],
            [("fieldSelector", "involvedObject.kind=VLLMCluster,involvedObject.name=x")],
        ),
        (
            ("endpointslices", "-n", NS, "-l", "kubernetes.io/service-name=s"),
            [f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"],
            [("labelSelector", "kubernetes.io/service-name=s")],
        ),
        (("vllmcluster", "v", "-n", NS), [f"/apis/rayvllm.io/v1alpha1/namespaces/{NS}/vllmclusters/v"], []),
        (("vllmclusters", "-n", NS), [f"/apis/rayvllm.io/v1alpha1/namespaces/{NS}/vllmclusters"], []),
        (("vllm", "-n", NS), [f"/apis/rayvllm.io/v1alpha1/namespaces/{NS}/vllmclusters"], []),
        (("VLLMCluster", "v", "-n", NS), [f"/apis/rayvllm.io/v1alpha1/namespaces/{NS}/vllmclusters/v"], []),
        (
            ("vllmclusters.rayvllm.io", "-n", NS),
            [f"/apis/rayvllm.io/v1alpha1/namespaces/{NS}/vllmclusters"],
            [],
        ),
        (("raycluster", "r", "-n", NS), [f"/apis/ray.io/v1/namespaces/{NS}/rayclusters/r"], []),
        (("rayclusters", "-n", NS), [f"/apis/ray.io/v1/namespaces/{NS}/rayclusters"], []),
        (("deployment", "d", "-n", NS), [f"/apis/apps/v1/namespaces/{NS}/deployments/d"], []),
        (("role", "r", "-n", NS), [f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/r"], []),
        (
            ("rolebinding", "r", "-n", NS),
            [f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings/r"],
            [],
        ),
        (("clusterrole", "c"), ["/apis/rbac.authorization.k8s.io/v1/clusterroles/c"], []),
        (("clusterrolebinding", "c"), ["/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/c"], []),
        (
            ("crd", "vllmclusters.rayvllm.io"),
            ["/apis/apiextensions.k8s.io/v1/customresourcedefinitions/vllmclusters.rayvllm.io"],
            [],
        ),
        (
            ("clusterroles,clusterrolebindings", "-l", "app.kubernetes.io/instance=r"),
            [
                "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            ],
            [("labelSelector", "app.kubernetes.io/instance=r")],
        ),
        (
            ("deployments,serviceaccounts,roles,rolebindings,pods", "-n", NS, "-l", "a=b"),
            [
                f"/apis/apps/v1/namespaces/{NS}/deployments",
                f"/api/v1/namespaces/{NS}/serviceaccounts",
                f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles",
                f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings",
                f"/api/v1/namespaces/{NS}/pods",
            ],
            [("labelSelector", "a=b")],
        ),
        (("pods",), [f"/api/v1/namespaces/{CONTEXT_NS}/pods"], []),
        (("pods", "-A"), ["/api/v1/pods"], []),
        (
            ("vllm", "--all-namespaces", "-l", "x"),
            ["/apis/rayvllm.io/v1alpha1/vllmclusters"],
            [("labelSelector", "x")],
        ),
        (
            ("raycluster", "r", "-n", NS, "--show-managed-fields"),
            [f"/apis/ray.io/v1/namespaces/{NS}/rayclusters/r"],
            [],
        ),
    ],
)
def test_arguments_become_requests(
    args: tuple[str, ...], paths: list[str], query: list[tuple[str, str]]
) -> None:
    assert request_of(*args) == (paths, query)


def test_names_in_paths_are_escaped() -> None:
    assert request_of("pod", "a b", "-n", "n/s") == (["/api/v1/namespaces/n%2Fs/pods/a%20b"], [])


def test_show_managed_fields_is_a_switch() -> None:
    assert parse_get(("pod", "p", "--show-managed-fields")).managed_fields
    assert not parse_get(("pod", "p", "--show-managed-fields=false")).managed_fields
    assert not parse_get(("pod", "p")).managed_fields


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("widgets", "-n", NS), "no kind named ['widgets']"),
        (("pods,widgets",), "no kind named ['widgets']"),
        (("events.events.k8s.io",), "no kind named"),
        (("pods", "-n", NS, "-o", "yaml"), "unknown flag '-o'"),
        (("pods", "--watch"), "unknown flag '--watch'"),
        (("pods", "-n"), "-n needs a value"),
        (("pods", "--selector="), "--selector needs a value"),
        ((), "expected TYPE"),
        (("pod", "a", "b"), "expected TYPE"),
        (("pods,services", "x"), "a NAME goes with one TYPE"),
        (("pod", "x", "-A"), "a NAME goes with one TYPE"),
        (("pod", "x", "-l", "a=b"), "a NAME goes with one TYPE"),
    ],
)
def test_what_it_cannot_translate_is_refused_by_name(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match="get_json") as refused:
        parse_get(args)
    assert message in str(refused.value)


def test_every_name_of_the_table_means_one_kind() -> None:
    kinds: dict[str, set[str]] = {}
    for resource in RESOURCES:
        for name in resource.names:
            kinds.setdefault(name, set()).add(resource.kind)
    assert not {name: k for name, k in kinds.items() if len(k) > 1}


# ---- what kubectl prints ---------------------------------------------------------------------------------

MANAGED = [{"manager": "kubectl", "operation": "Apply"}]


def obj(name: str, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "managedFields": MANAGED, **extra}, "spec": {}}


def test_an_object_is_printed_without_managed_fields_unless_asked() -> None:
    answer = {"apiVersion": "v1", "kind": "Pod", **obj("p", uid="u")}
    printed = parse_get(("pod", "p")).printed([answer])
    assert printed == {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "uid": "u"}, "spec": {}}
    assert answer["metadata"]["managedFields"] == MANAGED, "the answer itself is left as it was"
    assert parse_get(("pod", "p", "--show-managed-fields")).printed([answer]) == answer


def test_lists_are_one_list_with_each_items_kind() -> None:
    roles = {"kind": "ClusterRoleList", "apiVersion": "rbac.authorization.k8s.io/v1", "items": [obj("a")]}
    bindings = {"kind": "ClusterRoleBindingList", "items": [obj("b"), obj("c")]}
    printed = parse_get(("clusterroles,clusterrolebindings",)).printed([roles, bindings])
    rbac = "rbac.authorization.k8s.io/v1"
    assert printed == {
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": [
            {"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": "a"}, "spec": {}},
            {"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": "b"}, "spec": {}},
            {"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": "c"}, "spec": {}},
        ],
    }


def test_an_empty_list_prints_no_items() -> None:
    request: GetRequest = parse_get(("vllm", "-n", NS))
    assert request.printed([{"items": None}])["items"] == []
