"""The operator-wide engineJobEnv may not carry what a VLLMCluster's engine.env may not: every engine job would
get it (Ray's token auth off, or one HF token / API key for all objects). The operator then refuses to start,
naming the variables."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from rayvllm.settings import Settings


@pytest.mark.parametrize(
    "name",
    [
        *(
            "RAY_AUTH_MODE",
            "RAY_AUTH_TOKEN",
            "RAY_AUTH_TOKEN_PATH",
            "RAY_AUTH_ANYTHING_NEW",
            "RAY_ENABLE_K8S_TOKEN_AUTH",
        ),
        *("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY"),
    ],
)
def test_engine_job_env_refuses_what_the_operator_owns(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYVLLM_ENGINE_JOB_ENV", json.dumps({"VLLM_CPU_KVCACHE_SPACE": "1", name: "x"}))
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert f"must not set {name}:" in str(refused.value)
    assert "engine_job_env" in str(refused.value)


def test_engine_job_env_keeps_other_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "RAY_DEDUP_LOGS": "0", "OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("RAYVLLM_ENGINE_JOB_ENV", json.dumps(env))
    assert Settings().engine_job_env == env
