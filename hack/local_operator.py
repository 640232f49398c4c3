"""The operator settings for running it outside the cluster network against a local Ray on 127.0.0.1
(the demo and the e2e tier): the documented address mapping, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

from rayvllm.engine.job import CPU_TEST_ENV


def local_operator_env(dashboard_url: str, ray_python: Path, resync_seconds: float = 2) -> dict[str, str]:
    return {
        "RAYVLLM_RESYNC_SECONDS": str(resync_seconds),
        # The simulated pods' addresses are fake: reach the local Ray dashboard and engines on loopback.
        "RAYVLLM_DASHBOARD_URL_TEMPLATE": dashboard_url,
        "RAYVLLM_ENGINE_HOST_OVERRIDE": "127.0.0.1",
        "RAYVLLM_ENGINE_BIND_HOST": "127.0.0.1",
        "RAYVLLM_ENGINE_PYTHON": str(ray_python),
        # vLLM's CPU build serving a generated model: small KV cache, no hub, no usage reporting.
        "RAYVLLM_ENGINE_JOB_ENV": json.dumps(dict(CPU_TEST_ENV)),
    }
