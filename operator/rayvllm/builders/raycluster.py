"""The KubeRay RayCluster (ray.io/v1, KubeRay v1.6.1 schema) that hosts a VLLMCluster's engines.

Shape: a CPU-only head, and one GPU worker group of identical pods whose size is fixed (replicas =
minReplicas = maxReplicas, no autoscaler): the engines' placement groups need every GPU at once, and the
operator, not the Ray autoscaler, decides capacity.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from rayvllm.builders.labels import SPEC_HASH_ANNOTATION, cluster_labels
from rayvllm.builders.meta import child_metadata
from rayvllm.models.kube import ResourceRequirements, SecretKeyRef
from rayvllm.models.spec import (
    DEFAULT_HEAD_START_PARAMS,
    MODEL_PVC_MOUNT_ROOT,
    SHM_MOUNT_PATH,
    VLLMClusterSpec,
)
from rayvllm.placement import ENGINE_SLOT_RESOURCE
from rayvllm.workers import WorkerPlan

RAY_API_VERSION = "ray.io/v1"
RAY_CLUSTER_KIND = "RayCluster"
HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"
WORKER_GROUP = "gpu"
ENGINE_PORT_NAME = "vllm-http"
# vLLM's OpenAI server serves its Prometheus metrics here, on the engine port.
ENGINE_METRICS_PATH = "/metrics"

HF_TOKEN_ENV = "HF_TOKEN"
API_KEY_ENV = "VLLM_API_KEY"
HF_HOME_ENV = "HF_HOME"

SHM_VOLUME = "dshm"
MODEL_SOURCE_VOLUME = "model-source"
MODEL_CACHE_VOLUME = "model-cache"

# KubeRay turns a group's `resources` map into `ray start --num-gpus/--resources`; a key named GPU sets
# --num-gpus whatever the Kubernetes resource name is (KubeRay only guesses it for names ending in "gpu").
RAY_GPU_RESOURCE = "GPU"


def _from_secret(ref: SecretKeyRef) -> dict[str, Any]:
    """An EnvVarSource: pods read the Secret themselves; its value never passes through the operator."""
    return {"secretKeyRef": {"name": ref.name, "key": ref.key}}


def _secret_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": _from_secret(ref)}


def _hf_token_env(spec: VLLMClusterSpec) -> list[dict[str, Any]]:
    token = spec.model.hf_token_secret_ref
    return [_secret_env(HF_TOKEN_ENV, token)] if token else []


# Ray's usage reporting probes the cloud metadata server (169.254.169.254) and calls an outside endpoint from
# every pod: the Ray clusters the operator makes stay quiet. spec.engine.env can turn it on for the workers.
RAY_USAGE_STATS_ENV = "RAY_USAGE_STATS_ENABLED"


def _quiet_ray_env(spec: VLLMClusterSpec) -> list[dict[str, Any]]:
    if any(var.name == RAY_USAGE_STATS_ENV for var in spec.engine.env):
        return []
    return [{"name": RAY_USAGE_STATS_ENV, "value": "0"}]


# The engine's API server is a Ray job's entrypoint, started by the job's supervisor actor in a session of its
# own; its engine core and workers are its children, in that session's process group. When the API server
# dies (crash, OOM kill, SIGKILL) they are orphaned and live on holding the memory (on GPUs: the device
# memory) every restart in that pod needs: seen as a chain of failed restarts under a memory limit. Ray
# starts a watcher with each entrypoint that kills its process group once the supervisor exits, but with
# Ray's default the exiting supervisor first kills its direct children, the watcher among them (Ray 2.60,
# measured: the orphans lived on). So the workers keep that watcher alive and clean up their Ray workers'
# children by process group instead (Ray's recommended cleanup). Not the raylet subreaper: it makes the
# supervisor reap its children itself, and every entrypoint's exit code read 0 (a crash reported SUCCEEDED).
ORPHAN_CLEANUP_ENV = {
    "RAY_kill_child_processes_on_worker_exit": "false",
    "RAY_process_group_cleanup_enabled": "true",
}


def _switches_env(switches: dict[str, str], spec: VLLMClusterSpec) -> list[dict[str, Any]]:
    """The operator's Ray switches as env vars, leaving out those spec.engine.env sets itself."""
    own = {var.name for var in spec.engine.env}
    return [{"name": name, "value": value} for name, value in switches.items() if name not in own]


# On SIGTERM, Ray 2.60's `ray start --block` first asks the GCS to drain its node, for up to this many seconds
# (default 30), so Ray Serve's proxies can quiesce. Engines are drained by the operator (out of the Service)
# before their pods go; and when a RayCluster is deleted its head goes at the same moment, the GCS no longer
# answers, and every pod waited out the whole drain and then its grace period (measured: 31-32 s per pod, each
# one SIGKILLed). 0: Ray's processes are stopped at once.
NO_DRAIN_ON_SIGTERM_ENV = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


def _worker_env(spec: VLLMClusterSpec) -> list[dict[str, Any]]:
    env = (
        _quiet_ray_env(spec)
        + _switches_env(ORPHAN_CLEANUP_ENV, spec)
        + _switches_env(NO_DRAIN_ON_SIGTERM_ENV, spec)
        + _hf_token_env(spec)
    )
    if spec.engine.api_key_secret_ref:
        # vLLM reads VLLM_API_KEY when --api-key is absent: the key never appears in a Ray job request.
        env.append(_secret_env(API_KEY_ENV, spec.engine.api_key_secret_ref))
    if spec.model_cache:
        env.append({"name": HF_HOME_ENV, "value": spec.model_cache.mount_path})
    env.extend(var.to_wire() for var in spec.engine.env)
    return env


def _worker_resources(spec: VLLMClusterSpec) -> dict[str, Any]:
    worker = spec.ray.worker
    user = worker.resources or ResourceRequirements()
    gpus = {worker.gpu_resource_name: worker.gpus_per_worker}
    # Extended resources need requests == limits; setting both keeps that true whatever the user gave.
    return {
        "limits": {**(user.limits or {}), **gpus},
        "requests": {**(user.requests or {}), **gpus},
    }


def _worker_volumes(spec: VLLMClusterSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and their mounts: a memory-backed /dev/shm for NCCL, the model's PVC, the HF cache."""
    volumes: list[dict[str, Any]] = [
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": spec.ray.worker.shm_size}}
    ]
    mounts: list[dict[str, Any]] = [{"name": SHM_VOLUME, "mountPath": SHM_MOUNT_PATH}]
    claim = spec.model.parsed_source.volume_claim
    if claim:
        volumes.append(
            {"name": MODEL_SOURCE_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append(
            {"name": MODEL_SOURCE_VOLUME, "mountPath": f"{MODEL_PVC_MOUNT_ROOT}/{claim}", "readOnly": True}
        )
    if spec.model_cache:
        volumes.append(
            {"name": MODEL_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": spec.model_cache.claim_name}}
        )
        mounts.append({"name": MODEL_CACHE_VOLUME, "mountPath": spec.model_cache.mount_path})
    return volumes, mounts


# KubeRay runs `ray start --block` under bash. In a pod of its own process namespace bash is PID 1, which
# ignores SIGTERM without a handler (every deletion waited out the grace period and ended in SIGKILL); in the
# shared one SIGTERM ends bash and the runtime kills the rest wholesale. `ray stop` (KubeRay's own samples set
# it) stops Ray's processes in order, raylet first and GCS last; the container then ends within seconds.
RAY_STOP_LIFECYCLE = {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}}


def _container(spec: VLLMClusterSpec, name: str) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": spec.ray.image,
        "lifecycle": copy.deepcopy(RAY_STOP_LIFECYCLE),
    }
    if spec.ray.image_pull_policy:
        container["imagePullPolicy"] = spec.ray.image_pull_policy
    return container


def _pod_template(
    name: str,
    containers: list[dict[str, Any]],
    node_selector: dict[str, str],
    tolerations: list[dict[str, Any]],
    volumes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    # One process namespace for the pod: the pause container becomes its PID 1, which reaps orphans. Without it
    # a stopped engine's children (vLLM's engine core and workers, orphaned when its API server exits) stay
    # zombies under Ray's PID 1, which never reaps them; Ray's job stop waits for them as if alive and so
    # takes the whole RAY_JOB_STOP_WAIT_TIME_S before its SIGKILL (measured: 30 s for every engine stop).
    pod_spec: dict[str, Any] = {"shareProcessNamespace": True, "containers": containers}
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if volumes:
        pod_spec["volumes"] = volumes
    return {"metadata": {"labels": cluster_labels(name)}, "spec": pod_spec}


def scrape_annotations(spec: VLLMClusterSpec) -> dict[str, str]:
    """The prometheus.io annotations of a pod serving an engine's API server: Prometheus configurations
    that discover pods by annotation scrape vLLM's own metrics from it. Applied to the pod with its serving
    label (reconcile.label_serving_pods), not put in the pod template: KubeRay recreates pods whose
    template changes, so a template annotation added by an operator upgrade would reload every model."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(spec.engine.port),
        "prometheus.io/path": ENGINE_METRICS_PATH,
    }


def _head_group(spec: VLLMClusterSpec, name: str) -> dict[str, Any]:
    head = spec.ray.head
    container = _container(spec, HEAD_CONTAINER)
    if head.resources:
        container["resources"] = head.resources.to_wire()
    container["env"] = [
        {"name": RAY_USAGE_STATS_ENV, "value": "0"},
        # spec.engine.env reaches the workers only: the head always gets the switch.
        *({"name": name, "value": value} for name, value in NO_DRAIN_ON_SIGTERM_ENV.items()),
        *_hf_token_env(spec),
    ]
    return {
        "rayStartParams": {**DEFAULT_HEAD_START_PARAMS, **head.ray_start_params},
        "template": _pod_template(
            name, [container], head.node_selector, [toleration.to_wire() for toleration in head.tolerations]
        ),
    }


def _worker_group(spec: VLLMClusterSpec, name: str, plan: WorkerPlan) -> dict[str, Any]:
    worker = spec.ray.worker
    volumes, mounts = _worker_volumes(spec)
    container = _container(spec, WORKER_CONTAINER)
    container["resources"] = _worker_resources(spec)
    env = _worker_env(spec)
    if env:
        container["env"] = env
    container["ports"] = [{"name": ENGINE_PORT_NAME, "containerPort": spec.engine.port, "protocol": "TCP"}]
    container["volumeMounts"] = mounts
    workers = plan.replicas
    group: dict[str, Any] = {
        "groupName": WORKER_GROUP,
        "replicas": workers,
        "minReplicas": workers,
        "maxReplicas": workers,
        "numOfHosts": 1,
        "rayStartParams": {},
        "resources": {
            RAY_GPU_RESOURCE: str(worker.gpus_per_worker),
            ENGINE_SLOT_RESOURCE: str(spec.engine_slots_per_worker),
        },
        "template": _pod_template(
            name,
            [container],
            worker.node_selector,
            [toleration.to_wire() for toleration in worker.tolerations],
            volumes,
        ),
    }
    if plan.workers_to_delete:
        group["scaleStrategy"] = {"workersToDelete": list(plan.workers_to_delete)}
    return group


def _gcs_fault_tolerance(spec: VLLMClusterSpec) -> dict[str, Any] | None:
    options = spec.ray.gcs_fault_tolerance
    if options is None:
        return None
    built: dict[str, Any] = {"redisAddress": options.redis_address}
    if options.redis_password_secret_ref:
        built["redisPassword"] = {"valueFrom": _from_secret(options.redis_password_secret_ref)}
    return built


def build_ray_cluster(
    spec: VLLMClusterSpec, name: str, namespace: str, uid: str, workers: WorkerPlan | None = None
) -> dict[str, Any]:
    """The RayCluster for VLLMCluster `namespace/name` (uid for the owner reference), as a plain dict ready
    for server-side apply. `workers` overrides the worker count during a scale-down (rayvllm.workers)."""
    ray_spec: dict[str, Any] = {
        "rayVersion": spec.ray.ray_version,
        "suspend": spec.suspend,
        "enableInTreeAutoscaling": False,
        # Ray's dashboard (job submission runs code) must not be open to every pod in the cluster: KubeRay
        # generates a token Secret (ray_auth_secret_name) and the operator presents it.
        "authOptions": {"mode": "token"},
        # KubeRay's Recreate replaces all pods when their template changes, which is what our Recreate means.
        # RollingReplicas replaces engines, not pods: a change of the pods' template (spec.ray.image) still
        # replaces them all, and the engines with them (docs/upgrades.md).
        "upgradeStrategy": {"type": "Recreate"},
        "headGroupSpec": _head_group(spec, name),
        "workerGroupSpecs": [_worker_group(spec, name, workers or WorkerPlan(spec.desired_workers))],
    }
    gcs = _gcs_fault_tolerance(spec)
    if gcs:
        ray_spec["gcsFaultToleranceOptions"] = gcs
    digest = pod_spec_hash(ray_spec)
    for template in (ray_spec["headGroupSpec"]["template"], ray_spec["workerGroupSpecs"][0]["template"]):
        template["metadata"]["annotations"] = {
            **template["metadata"].get("annotations", {}),
            SPEC_HASH_ANNOTATION: digest,
        }
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": RAY_CLUSTER_KIND,
        "metadata": child_metadata(name, namespace, uid),
        "spec": ray_spec,
    }


def pod_spec_hash(ray_spec: dict[str, Any]) -> str:
    """The hash of a RayCluster spec as it shapes pods: worker counts and workersToDelete left out (they
    add or remove pods, they change none), and the template annotations (the hash itself)."""
    shaped = copy.deepcopy(ray_spec)
    for group in shaped.get("workerGroupSpecs", []):
        for key in ("replicas", "minReplicas", "maxReplicas", "scaleStrategy"):
            group.pop(key, None)
    for group in (shaped.get("headGroupSpec", {}), *shaped.get("workerGroupSpecs", [])):
        (group.get("template", {}).get("metadata") or {}).pop("annotations", None)
    return hashlib.sha256(json.dumps(shaped, sort_keys=True).encode()).hexdigest()[:16]


RAY_AUTH_TOKEN_KEY = "auth_token"


def ray_auth_secret_name(name: str) -> str:
    """The Secret KubeRay generates for a token-auth RayCluster: its utils.CheckName(name), which keeps the
    last 50 characters and replaces a leading digit or punctuation with 'r'."""
    clipped = name[-50:]
    return "r" + clipped[1:] if not clipped[0].isalpha() else clipped
