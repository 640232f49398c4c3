"""Faults that leave an engine's API answering while something behind it is gone, on real pods under a
steady load through the endpoint Service (tests/e2e/pod_faults.py has the scenarios): the Ray dashboard
frozen (the engine keeps serving, nothing restarts, the status says RayDashboardUnreachable), then the
engine core frozen (only the canary finds it; it is restarted within canary interval + timeout + grace).

The VLLMCluster carries an HF token and an API key from a Secret (the probes and the canary present the
key); at the end no value of either appears in its status, its Events, the operator's log, its Ray job
records (entrypoint, metadata, runtime_env) or its RayCluster.

`make chaos` runs this with the fast-noticing settings of its scenarios (E2E_SETTINGS); `make test` has both
faults as phases P3 and P7 of its shared serving object, under the chart's defaults
(tests/e2e/test_shared_engine.py).
"""

from __future__ import annotations

import pytest

from hack.localcluster.helm_release import OperatorRelease
from tests.e2e.leaks import SecretScan
from tests.e2e.pod_faults import freeze_dashboard, hang_engine, serve
from tests.e2e.realnode import RealNodeWorld, pods_of
from tests.support.kube import Kube
from tests.support.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

HF_TOKEN = "hf_e2eFaultsTokenNeverLogged0123456789"
API_KEY = "sk-e2e-faults-key-never-logged-0123456789"


@pytest.mark.timeout(1200)
def test_dashboard_freeze_keeps_serving_and_a_hung_engine_is_restarted(
    kube: Kube,
    namespace: str,
    volumes: None,
    in_cluster_operator: OperatorRelease,
    real_node: RealNodeWorld,
    secret_scan: SecretScan,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret_scan.secret(HF_TOKEN, "engine faults' HF token")
    secret_scan.secret(API_KEY, "engine faults' API key")
    served, _ = serve(kube, namespace, real_node, "faults", credentials=(HF_TOKEN, API_KEY))
    freeze_dashboard(kube, namespace, served, capsys)
    hang_engine(kube, namespace, served, capsys)

    # Secrets never leak: the run's secret scan searches status, Events, Ray's job records, the RayCluster
    # and the operator's log (kept when its module ends) for the token and the key.
    secret_scan.keep_cluster("engine faults", kube, namespace, served.name)

    kube.kubectl("delete", "vllm", served.name, "-n", namespace, "--timeout=180s")
    wait_for(
        lambda: not pods_of(kube, namespace, served.name), timeout=420, interval=1, what="the Ray pods to go"
    )
    assert kube.get_json("raycluster", served.name, "-n", namespace) is None
