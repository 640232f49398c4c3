"""The one-command demo: rayvllm end to end on this machine, on real pods.

    make demo            # or: .venv/bin/python hack/demo.py [--down]
    make demo-down       # stops everything the demo started

Starts the local cluster (control plane, kwok's fake GPU nodes and one real node running containerd,
kubelet, kube-proxy and CoreDNS), builds or reuses the images (Ray + vLLM CPU build, the operator from the
Dockerfile), installs the operator with its Helm chart into the cluster, generates a tiny model onto a
PersistentVolume, applies manifests/samples/tiny-cpu.yaml adapted to the real node, shows progress while
KubeRay starts Ray and vLLM loads the model, then prints a completion fetched through the endpoint Service
and how to call it with curl. With --down it stops everything at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hack.localcluster.cluster import default_cluster, default_plan  # noqa: E402
from hack.localcluster.helm_release import OperatorRelease  # noqa: E402
from hack.localcluster.images import refs  # noqa: E402
from hack.localcluster.procs import log as _log  # noqa: E402
from hack.localcluster.procs import run  # noqa: E402
from hack.localcluster.workloads import (  # noqa: E402
    CPU_ENGINE_ENV,
    generate_tiny_model,
    on_real_node,
    volumes,
)

NAMESPACE, NAME = "demo", "tiny-cpu"
SAMPLE = REPO / "manifests" / "samples" / "tiny-cpu.yaml"


def log(message: str) -> None:
    _log("demo", message)


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


def release() -> OperatorRelease:
    cluster = default_cluster()
    return OperatorRelease(cluster.kubeconfig, cluster.tools, cluster.dir / "demo" / "helm")


def down() -> None:
    cluster = default_cluster()
    if cluster.control_plane.apiserver_ready():
        log("uninstalling the operator")
        release().uninstall()
    log("stopping the cluster")
    cluster.down()
    left = cluster.leftovers()
    if left:
        raise SystemExit("left behind: " + ", ".join(left))


def ray_python() -> Path:
    venv = run(["bash", REPO / "hack" / "ray-env.sh"], timeout=3600).stdout.strip().splitlines()[-1]
    return Path(venv) / "bin" / "python"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--down", action="store_true", help="stop everything when done")
    parser.add_argument("--stop", action="store_true", help="only stop what an earlier demo left running")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for Ready")
    args = parser.parse_args()
    if args.stop:
        down()
        return 0

    started = time.monotonic()
    marks: dict[str, float] = {}
    cluster = default_cluster()
    cluster.up(default_plan())  # builds or reuses the images too; their progress is printed
    marks["cluster and images"] = time.monotonic() - started
    kubectl = cluster.kubectl

    images = refs()
    operator = release()
    operator.install(images.operator, {"resyncSeconds": 5, "engineJobEnv": dict(CPU_ENGINE_ENV)})
    marks["operator installed"] = time.monotonic() - started

    kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
    )
    model_root = cluster.dir / "volumes" / "models"
    generate_tiny_model(ray_python(), model_root)
    uid = json.loads(kubectl("get", "namespace", NAMESPACE, "-o", "json"))["metadata"]["uid"]
    for obj in volumes(NAMESPACE, uid, model_root, cluster.dir / "volumes" / "cache" / NAMESPACE):
        kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(obj))
    body = on_real_node(yaml.safe_load(SAMPLE.read_text()), images.ray)
    kubectl("apply", "--server-side", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(body))
    applied = time.monotonic()
    log(
        f"applied manifests/samples/tiny-cpu.yaml (on the real node) as {NAMESPACE}/{NAME}; waiting for Ready"
    )

    last = ""
    obj: dict[str, Any] = {}
    while time.monotonic() < applied + args.timeout:
        obj = json.loads(kubectl("get", "vllm", NAME, "-n", NAMESPACE, "-o", "json"))
        line = progress_line(obj)
        if line != last:
            log(f"  +{time.monotonic() - applied:5.1f}s  {line}")
            last = line
        if (obj.get("status") or {}).get("phase") == "Ready":
            break
        time.sleep(1)
    else:
        log(
            f"not Ready after {args.timeout:.0f}s; operator logs: kubectl logs -n {operator.namespace} deploy/..."
        )
        print(operator.logs()[-4000:])
        return 1
    marks["apply to Ready"] = time.monotonic() - applied

    service = json.loads(kubectl("get", "service", NAME, "-n", NAMESPACE, "-o", "json"))
    url = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}/v1"
    served = body["spec"]["model"]["servedModelName"]
    request = {"model": served, "prompt": "The quick brown fox", "max_tokens": 12}
    response = httpx.post(f"{url}/completions", json=request, timeout=60)
    response.raise_for_status()
    print(kubectl("get", "vllm", "-n", NAMESPACE), end="")
    log(f"completion through the endpoint Service {url} (in-cluster: {obj['status']['endpoint']['url']}):")
    print(json.dumps(response.json()["choices"][0], indent=2))
    log("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in marks.items()))
    print(
        f"\nCall it yourself:\n  curl -s {url}/completions -H 'Content-Type: application/json' "
        f"-d '{json.dumps(request)}'\n"
    )
    if args.down:
        down()
    else:
        log(f"still running. export KUBECONFIG={cluster.kubeconfig}; stop everything with: make demo-down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
