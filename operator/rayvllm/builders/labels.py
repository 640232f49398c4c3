"""Label keys the operator puts on its children, and the selectors built from them. The engine supervisor
sets SERVING_LABEL on the pod that hosts a ready engine's API server; the Service selects on it."""

from __future__ import annotations

from rayvllm import API_GROUP

APP_NAME_LABEL = "app.kubernetes.io/name"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
INSTANCE_LABEL = "app.kubernetes.io/instance"
CLUSTER_LABEL = f"{API_GROUP}/cluster"
SERVING_LABEL = f"{API_GROUP}/serving"
# On every Ray pod template: a hash of the RayCluster spec the pod was made from, leaving out what changes no
# pod (worker counts, workersToDelete). KubeRay keeps a hash like it on its pods but does not keep
# RayCluster status.observedGeneration current, so pods of the current spec are told apart by this.
SPEC_HASH_ANNOTATION = f"{API_GROUP}/spec-hash"

APP_NAME = "rayvllm"
MANAGER = "rayvllm"
SERVING = "true"


def cluster_labels(name: str) -> dict[str, str]:
    """Labels on every object and pod made for the VLLMCluster `name`."""
    return {
        APP_NAME_LABEL: APP_NAME,
        MANAGED_BY_LABEL: MANAGER,
        INSTANCE_LABEL: name,
        CLUSTER_LABEL: name,
    }


def serving_selector(name: str) -> dict[str, str]:
    """Pods that host a ready engine of the VLLMCluster `name`."""
    return {CLUSTER_LABEL: name, SERVING_LABEL: SERVING}


def selector_string(labels: dict[str, str]) -> str:
    """A label selector in the string form of status.selector (the /scale subresource)."""
    return ",".join(f"{key}={value}" for key, value in labels.items())
