"""The operator restart storm's pieces, shared by `make test`'s storm phase on the shared serving object
(tests/e2e/test_shared_engine.py) and `make chaos`'s full storm (tests/e2e/test_chaos_operator_storm.py):
objects that never get a pod riding the storm beside a serving one, a yardstick settled by an operator left
alone, and a delete under kills that must leave nothing behind."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from hack.localcluster.helm_release import OperatorRelease
from tests.e2e.chaos import OperatorStorm, status_shape
from tests.e2e.realnode import RealNodeWorld
from tests.e2e.serving import engine_server_pids, manifest, vllm
from tests.support.kube import Kube
from tests.support.wait import wait_for

# Pods that select no node: the control plane alone handles these objects, nothing dials a fake pod address.
NOWHERE = {"rayvllm.io/chaos": "no-such-node"}
# Kinds a deleted VLLMCluster must leave nothing of in its namespace.
CHILD_KINDS = ("vllmclusters", "rayclusters", "services", "pods")


def podless(name: str, world: RealNodeWorld) -> dict[str, Any]:
    body = manifest(name, world)
    for group in ("head", "worker"):
        body["spec"]["ray"][group]["nodeSelector"] = dict(NOWHERE)
    return body


def operator_ready(release: OperatorRelease) -> bool:
    pod = release.pod()
    conditions = ((pod or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def settled_like(kube: Kube, namespace: str, names: list[str], shape: dict[str, Any]) -> list[str]:
    """The objects among `names` whose status does not yet have `shape`."""
    listed = kube.get_json("vllmclusters", "-n", namespace)["items"]
    by_name = {o["metadata"]["name"]: o for o in listed}
    return [n for n in names if n not in by_name or status_shape(by_name[n]) != shape]


def yardstick(kube: Kube, namespace: str, world: RealNodeWorld, name: str = "yardstick") -> dict[str, Any]:
    """A pod-less object settled by an operator left alone; the status shape it keeps (looked at again
    three resyncs after it first had one: the shape it keeps, not a first impression)."""
    kube.apply(podless(name, world), namespace)
    wait_for(
        lambda: status_shape(vllm(kube, namespace, name))["phase"],
        timeout=60,
        what=f"the {name} object's status",
    )
    time.sleep(6)
    return status_shape(vllm(kube, namespace, name))


def wait_settled(
    kube: Kube, namespace: str, release: OperatorRelease, names: list[str], shape: dict[str, Any]
) -> None:
    """Once a storm is over: an operator pod Ready, and every object of `names` settled as `shape`."""
    wait_for(lambda: operator_ready(release), timeout=180, what="an operator pod Ready")
    wait_for(
        lambda: not settled_like(kube, namespace, names, shape),
        timeout=180,
        interval=1,
        what=f"every pod-less object settled as {shape}",
    )


@dataclass(frozen=True)
class Deleted:
    kills: int
    seconds: float
    left: dict[str, int]
    logs: str


def leftovers(kube: Kube, namespace: str, served_names: list[str]) -> dict[str, int]:
    """What is left in `namespace` of deleted VLLMClusters: their kinds, and vLLM processes serving one of
    `served_names` anywhere on this machine (their pods are gone: no container to look into)."""
    counts = {kind: len(kube.get_json(kind, "-n", namespace)["items"]) for kind in CHILD_KINDS}
    counts["vllm processes"] = sum(len(engine_server_pids(served)) for served in served_names)
    return {k: v for k, v in counts.items() if v}


def delete_under_storm(
    kube: Kube, namespace: str, release: OperatorRelease, served_names: list[str], kills: int, seed: int
) -> Deleted:
    """Every VLLMCluster of `namespace` deleted while the operator is SIGKILLed, every 1-3 s (a delete takes
    seconds), up to `kills` processes; waits until nothing is left (their finalizers stop every engine job
    first) or fails naming what is."""
    with OperatorStorm(release, limit=kills, low=1.0, high=3.0, seed=seed) as storm:
        kube.kubectl("delete", "vllm", "--all", "-n", namespace, "--wait=false")
        deleted = time.monotonic()
        try:
            wait_for(
                lambda: not leftovers(kube, namespace, served_names),
                timeout=420,
                interval=2,
                what="nothing left after delete",
            )
        finally:
            storm.stop()
    return Deleted(
        storm.kills, time.monotonic() - deleted, leftovers(kube, namespace, served_names), "".join(storm.logs)
    )
