"""rayvllm.metrics turns a written status into series: per object and per engine replica index, never
more; a deleted object's series go."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY

from rayvllm import metrics


def sample(metric: str, /, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, labels)


def status(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "phase": "Degraded",
        "replicas": 2,
        "readyReplicas": 1,
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "EnginesNotReady"},
            {"type": "Degraded", "status": "True", "reason": "RayDashboardUnreachable"},
        ],
        "engines": [
            {"index": 0, "restarts": 1, "ready": True, "loadSeconds": 95},
            {"index": 1, "restarts": 5, "budgetExhausted": True},
        ],
    }
    return {**base, **changes}


def test_record_sets_the_per_object_and_per_engine_series() -> None:
    key = {"namespace": "team", "name": "rec"}
    metrics.record("team", "rec", status())
    assert sample("rayvllm_engines_desired", **key) == 2
    assert sample("rayvllm_engines_ready", **key) == 1
    assert sample("rayvllm_vllmcluster_phase", **key, phase="Degraded") == 1
    assert sample("rayvllm_vllmcluster_phase", **key, phase="Ready") == 0
    assert sample("rayvllm_ray_dashboard_unreachable", **key) == 1
    assert sample("rayvllm_reconcile_errors_total", **key) == 0  # created, not missing
    assert sample("rayvllm_engine_restarts", **key, replica="1") == 5
    assert sample("rayvllm_engine_restart_budget_exhausted", **key, replica="0") == 0
    assert sample("rayvllm_engine_restart_budget_exhausted", **key, replica="1") == 1
    assert sample("rayvllm_engine_load_seconds", **key, replica="0") == 95
    assert sample("rayvllm_engine_load_seconds", **key, replica="1") is None

    # Engine 0 restarts: its old load time goes until the new attempt is ready; the dashboard answers again.
    healed = status(
        conditions=[{"type": "Ready", "status": "False", "reason": "EnginesNotReady"}],
        engines=[{"index": 0, "restarts": 2}, {"index": 1, "restarts": 5, "budgetExhausted": True}],
    )
    metrics.record("team", "rec", healed)
    assert sample("rayvllm_engine_load_seconds", **key, replica="0") is None
    assert sample("rayvllm_engine_restarts", **key, replica="0") == 2
    assert sample("rayvllm_ray_dashboard_unreachable", **key) == 0


def test_forget_drops_every_series_of_the_object_and_only_those() -> None:
    metrics.record("team", "gone", status())
    metrics.record("team", "kept", status())
    metrics.forget("team", "gone")
    families = {"team/gone": 0, "team/kept": 0}
    for family in REGISTRY.collect():
        if not family.name.startswith("rayvllm_"):
            continue
        for s in family.samples:
            key = f"{s.labels.get('namespace')}/{s.labels.get('name')}"
            if key in families:
                families[key] += 1
    assert families["team/gone"] == 0
    assert families["team/kept"] > 10
