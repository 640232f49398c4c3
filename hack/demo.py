"""The one-command demo: rayvllm end to end on this machine.

    make demo            # or: .venv/bin/python hack/demo.py [--down]
    make demo-down       # stops everything the demo started

Builds or reuses the tools (control plane binaries, the Ray + vLLM venv), starts the local control plane
and KubeRay, a local Ray cluster on 127.0.0.1 and the operator, generates a tiny model, applies
manifests/samples/tiny-cpu.yaml pointed at it, shows progress while it waits, and prints a completion
served through the engine URL in the VLLMCluster's status. With --down it stops everything at the end.

The operator runs outside the simulated cluster, so its documented address settings point it at the local
Ray dashboard and at engines on 127.0.0.1 (the simulated pods' addresses are fake).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hack.cluster import NodePlan, Tools, default_cluster  # noqa: E402
from hack.local_operator import local_operator_env  # noqa: E402

STATE = REPO / ".cluster" / "demo"
GCS_PORT, DASHBOARD_PORT = 26379, 28265
NAMESPACE, NAME = "demo", "tiny-cpu"


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(*argv: str | Path, capture: bool = False) -> str:
    result = subprocess.run(
        [str(a) for a in argv], check=True, text=True, stdout=subprocess.PIPE if capture else None
    )
    return result.stdout or ""


def ray_venv() -> Path:
    log("Ray + vLLM environment (built once, cached under ~/.cache/rayvllm/venvs)")
    return Path(run("bash", REPO / "hack" / "ray-env.sh", capture=True).strip().splitlines()[-1])


def local_ray(venv: Path, command: str) -> str:
    return run(
        venv / "bin" / "python",
        REPO / "hack" / "local_ray.py",
        command,
        f"--venv={venv}",
        f"--gcs-port={GCS_PORT}",
        f"--dashboard-port={DASHBOARD_PORT}",
        capture=True,
    ).strip()


def start_operator(kubeconfig: Path, env: dict[str, str]) -> int:
    pid_file = STATE / "operator.pid"
    if pid_file.exists():
        stop_pid(int(pid_file.read_text()))
    log_file = (STATE / "operator.log").open("ab")
    proc = subprocess.Popen(
        [
            str(REPO / ".venv" / "bin" / "kopf"),
            "run",
            "-m",
            "rayvllm.handlers",
            "--standalone",
            "--all-namespaces",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "KUBECONFIG": str(kubeconfig), **env},
        start_new_session=True,
    )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def stop_pid(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)


def kubectl(tools: Tools, kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        [str(tools.kubectl), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        check=True,
        text=True,
        capture_output=True,
    ).stdout


def progress_line(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    engines = status.get("engines") or []
    engine = engines[0] if engines else {}
    parts = [
        f"phase={status.get('phase', '-')}",
        f"rayCluster={conditions.get('RayClusterReady', {}).get('status', '-')}",
        f"job={engine.get('jobStatus', '-')}",
        f"ready={status.get('readyReplicas', 0)}/{status.get('replicas', '-')}",
    ]
    message = status.get("message")
    return "  ".join(parts) + (f"  ({message})" if message else "")


def down() -> None:
    pid_file = STATE / "operator.pid"
    if pid_file.exists():
        log("stopping the operator")
        stop_pid(int(pid_file.read_text()))
        pid_file.unlink()
    venv_file = STATE / "ray-venv"
    if venv_file.exists():
        log("stopping the local Ray cluster")
        local_ray(Path(venv_file.read_text()), "stop")
    log("stopping the control plane")
    default_cluster().down()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--down", action="store_true", help="stop everything when done")
    parser.add_argument("--stop", action="store_true", help="only stop what an earlier demo left running")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for Ready")
    args = parser.parse_args()
    STATE.mkdir(parents=True, exist_ok=True)
    if args.stop:
        down()
        return 0

    started = time.monotonic()
    marks: dict[str, float] = {}
    run("bash", REPO / "hack" / "build-tools.sh")
    cluster = default_cluster()
    cluster.up(NodePlan(gpu_nodes=2, gpus_per_node=8, cpu_nodes=1))
    marks["control plane"] = time.monotonic() - started
    tools = Tools.from_cache()
    kubeconfig = cluster.kubeconfig
    kubectl(tools, kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl(tools, kubeconfig, "wait", "--for=condition=Established", "crd/vllmclusters.rayvllm.io")

    venv = ray_venv()
    (STATE / "ray-venv").write_text(str(venv))
    model = STATE / "tiny-llama"
    log(f"generating the tiny model in {model}")
    run(venv / "bin" / "python", REPO / "hack" / "tiny_model.py", model)
    log("starting a local Ray cluster (a head and one worker carrying the engine slot)")
    dashboard = local_ray(venv, "start").splitlines()[-1]
    marks["tools, model and Ray"] = time.monotonic() - started

    env = local_operator_env(dashboard, venv / "bin" / "python")
    pid = start_operator(kubeconfig, env)
    log(f"operator started (pid {pid}, log {STATE / 'operator.log'})")

    body = yaml.safe_load((REPO / "manifests" / "samples" / "tiny-cpu.yaml").read_text())
    body["spec"]["model"]["source"] = str(model)
    kubectl(
        tools,
        kubeconfig,
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
    )
    kubectl(tools, kubeconfig, "apply", "--server-side", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(body))
    applied = time.monotonic()
    log(f"applied manifests/samples/tiny-cpu.yaml as {NAMESPACE}/{NAME}; waiting for Ready")

    last = ""
    obj: dict[str, Any] = {}
    deadline = applied + args.timeout
    while time.monotonic() < deadline:
        obj = json.loads(kubectl(tools, kubeconfig, "get", "vllm", NAME, "-n", NAMESPACE, "-o", "json"))
        line = progress_line(obj)
        if line != last:
            log(f"  +{time.monotonic() - applied:5.1f}s  {line}")
            last = line
        if obj.get("status", {}).get("phase") == "Ready":
            break
        time.sleep(1)
    else:
        log(f"not Ready after {args.timeout:.0f}s; operator log: {STATE / 'operator.log'}")
        return 1
    marks["apply to Ready"] = time.monotonic() - applied

    engine_url = obj["status"]["engines"][0]["url"]
    served = body["spec"]["model"]["servedModelName"]
    response = httpx.post(
        f"{engine_url}/completions",
        json={"model": served, "prompt": "The quick brown fox", "max_tokens": 12},
        timeout=60,
    )
    response.raise_for_status()
    print(kubectl(tools, kubeconfig, "get", "vllm", "-n", NAMESPACE), end="")
    log(
        f"completion from {engine_url} (endpoint for in-cluster clients: {obj['status']['endpoint']['url']}):"
    )
    print(json.dumps(response.json()["choices"][0], indent=2))
    log("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in marks.items()))
    if args.down:
        down()
    else:
        log(f"still running. export KUBECONFIG={kubeconfig}; stop everything with: make demo-down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
