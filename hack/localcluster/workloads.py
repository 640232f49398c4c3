"""What the e2e tier and the demo run on the real node, in one place: the tiny model on a PersistentVolume
(reached as `pvc://`, as users' models are), a model-cache claim, and the overlay that turns a sample
VLLMCluster into one that lands on the real node with the locally built Ray image. The samples in
manifests/samples/ stay as users read them; only this overlay adapts them to the machine."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hack.localcluster.node import NODE_LABEL, TAINT_KEY
from hack.localcluster.procs import REPO, log, run

MODEL_CLAIM = "models"
CACHE_CLAIM = "model-cache"
TINY_MODEL_DIR = "tiny-llama"
CACHE_MOUNT = "/var/cache/rayvllm-hf"
REAL_NODE_TOLERATION = {"key": TAINT_KEY, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
REAL_NODE_SELECTOR = {NODE_LABEL: "true"}
# Two cores: a head and two workers must fit the node's allocatable CPU. KubeRay rounds a worker's CPU up
# for `ray start --num-cpus`, so 800m still gives each worker one Ray CPU for the engine's entrypoint.
# Environment for vLLM's CPU build serving the tiny model: a 1 GiB KV cache (the default takes a share of
# host memory), no Hugging Face Hub access, no usage reporting. The chart passes it to every engine
# (settings.engineJobEnv) in the e2e tier and the demo only.
CPU_ENGINE_ENV: dict[str, str] = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # vLLM's CPU build pins each engine's worker threads to the cores it picks ("auto"): on two cores every
    # engine picks core 0, and a second engine's worker, pinned beside a busy first one, starved (runnable,
    # 224 s waiting for the CPU and 0.15 s on it). Unpinned, the kernel spreads them.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
HEAD_RESOURCES = {"requests": {"cpu": "200m", "memory": "1Gi"}}
WORKER_RESOURCES = {"requests": {"cpu": "800m", "memory": "2Gi"}}


def generate_tiny_model(ray_python: Path, volume_root: Path) -> Path:
    """The tiny generated Llama under `volume_root`/tiny-llama (byte-identical on every run)."""
    out = volume_root / TINY_MODEL_DIR
    if not (out / "config.json").exists():
        log("workloads", f"generating the tiny model in {out}")
        run([ray_python, REPO / "hack" / "tiny_model.py", out], timeout=300)
    return out


def volumes(namespace: str, namespace_uid: str, model_root: Path, cache_root: Path) -> list[dict[str, Any]]:
    """Two hostPath PersistentVolumes on the real node, each pre-bound to its claim in `namespace`: the
    model (read-only, `pvc://models/tiny-llama`) and the Hugging Face cache (`modelCache`). The volumes are
    owned by the Namespace object, so they go (the garbage collector) when the namespace does."""
    owner = {"apiVersion": "v1", "kind": "Namespace", "name": namespace, "uid": namespace_uid}
    cache_root.mkdir(parents=True, exist_ok=True)
    objects: list[dict[str, Any]] = []
    for claim, path, mode in (
        (MODEL_CLAIM, model_root, "ReadOnlyMany"),
        (CACHE_CLAIM, cache_root, "ReadWriteMany"),
    ):
        pv_name = f"{namespace}-{claim}"
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv_name, "ownerReferences": [owner]},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": [mode],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "claimRef": {"namespace": namespace, "name": claim},
                    "hostPath": {"path": str(path), "type": "Directory"},
                },
            }
        )
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": namespace},
                "spec": {
                    "accessModes": [mode],
                    "storageClassName": "",
                    "volumeName": pv_name,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        )
    return objects


def on_real_node(body: dict[str, Any], ray_image: str) -> dict[str, Any]:
    """A copy of VLLMCluster manifest `body` that runs on the real node: the local Ray image (never
    pulled), the node's taint tolerated and its label selected, requests that fit two cores, the tiny
    model from its claim and the model cache on a claim."""
    out = copy.deepcopy(body)
    spec = out["spec"]
    spec["model"]["source"] = f"pvc://{MODEL_CLAIM}/{TINY_MODEL_DIR}"
    spec["modelCache"] = {"claimName": CACHE_CLAIM, "mountPath": CACHE_MOUNT}
    ray = spec["ray"]
    ray["image"] = ray_image
    ray["imagePullPolicy"] = "Never"
    for group, resources in (("head", HEAD_RESOURCES), ("worker", WORKER_RESOURCES)):
        ray[group]["resources"] = copy.deepcopy(resources)
        ray[group]["nodeSelector"] = dict(REAL_NODE_SELECTOR)
        ray[group]["tolerations"] = [dict(REAL_NODE_TOLERATION)]
    return out


REDIS_NAME = "redis"
REDIS_PORT = 6379
REDIS_USER = 10003  # the numeric user of hack/images/redis.Containerfile
# The password reaches redis-server as a config line on its standard input (`redis-server -`, a here-document):
# never in its command line, which every process on the node can read. exec: redis-server is the container's
# main process and gets the kubelet's SIGTERM.
_REDIS_START = (
    f"exec redis-server - --port {REDIS_PORT} --save '' --appendonly no --dir /data <<EOF\n"
    "requirepass $REDIS_PASSWORD\nEOF\n"
)


def redis(image: str, password_secret: str, password_key: str) -> list[dict[str, Any]]:
    """A Deployment of one in-memory Redis on the real node and its Service `redis`, for Ray's GCS fault
    tolerance: restricted Pod Security compatible, the password from a Secret. Nothing is persisted: the
    scenarios restart Ray's head, never Redis."""
    labels = {"app.kubernetes.io/name": REDIS_NAME}
    container = {
        "name": REDIS_NAME,
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", _REDIS_START],
        "env": [
            {
                "name": "REDIS_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": password_secret, "key": password_key}},
            }
        ],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "readinessProbe": {"tcpSocket": {"port": REDIS_PORT}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    pod_spec = {
        "nodeSelector": dict(REAL_NODE_SELECTOR),
        "tolerations": [dict(REAL_NODE_TOLERATION)],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": REDIS_USER,
            "runAsGroup": REDIS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "data", "emptyDir": {}}],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": REDIS_NAME, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": REDIS_NAME, "labels": labels},
        "spec": {"selector": labels, "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis"}]},
    }
    return [deployment, service]
