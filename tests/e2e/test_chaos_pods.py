"""Chaos, `make chaos`: the pods under a serving VLLMCluster fail, on real pods, under a
steady load through the endpoint Service, each scenario on a VLLMCluster of its own. The scenarios
themselves (fault, heal, invariants, the chaos table's row) are in tests/e2e/pod_faults.py:

- a Ray worker pod deleted (gracefully, then `--force --grace-period=0`) with two engines, so the other one
  is seen to keep answering;
- the head pod deleted without GCS fault tolerance, and with `spec.ray.gcsFaultTolerance` (a Redis in the
  cluster, built locally);
- faults that leave the worker pod in place (same pod, same IP, Ready): the worker container killed so the
  kubelet restarts it, vLLM's API server killed inside the pod, and the container run out of memory.

None of them is in `make test`, whose shared serving object (tests/e2e/test_shared_engine.py) has the faults
that need no further model load beyond its three.
"""

from __future__ import annotations

import pytest

from hack.localcluster.helm_release import OperatorRelease
from tests.e2e.conftest import InClusterRedis
from tests.e2e.leaks import SecretScan
from tests.e2e.pod_faults import (
    IN_PLACE,
    fault_in_place,
    lose_head_with_gcs_fault_tolerance,
    lose_head_without_gcs_fault_tolerance,
    lose_worker_pod,
    serve,
)
from tests.e2e.realnode import RealNodeWorld
from tests.support.kube import Kube

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]


@pytest.mark.timeout(3000)
def test_worker_pod_deleted_while_serving(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With two engines: the other one keeps answering."""
    served, _ = serve(kube, namespace, real_node, "lose-worker", replicas=2)
    lose_worker_pod(kube, namespace, served, forces=(False, True), capsys=capsys)


@pytest.mark.timeout(1500)
def test_head_pod_deleted_without_gcs_fault_tolerance(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    served, _ = serve(kube, namespace, real_node, "lose-head")
    lose_head_without_gcs_fault_tolerance(kube, namespace, served, capsys)


@pytest.mark.timeout(1500)
def test_head_pod_deleted_with_gcs_fault_tolerance(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    in_cluster_redis: InClusterRedis,
    secret_scan: SecretScan,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ft = in_cluster_redis.gcs_fault_tolerance()
    served, _ = serve(kube, namespace, real_node, "ft-head", gcsFaultTolerance=ft)
    lose_head_with_gcs_fault_tolerance(
        kube, namespace, served, in_cluster_redis.address, real_node, secret_scan, capsys
    )


@pytest.mark.parametrize("kind", list(IN_PLACE))
@pytest.mark.timeout(1500)
def test_fault_in_place_serving_label_follows_the_engine(
    kind: str,
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    served, _ = serve(kube, namespace, real_node, f"in-place-{kind}", worker=IN_PLACE[kind].worker)
    fault_in_place(kube, namespace, served, kind, capsys)
