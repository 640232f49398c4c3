"""Pure builders: (spec model, name, namespace, uid) -> plain dict manifests.
No I/O, no environment, no clock."""

from rayvllm.builders.labels import CLUSTER_LABEL, SERVING_LABEL, cluster_labels, serving_selector
from rayvllm.builders.raycluster import RAY_AUTH_TOKEN_KEY, build_ray_cluster, ray_auth_secret_name
from rayvllm.builders.service import build_service, service_url

__all__ = [
    "CLUSTER_LABEL",
    "RAY_AUTH_TOKEN_KEY",
    "SERVING_LABEL",
    "build_ray_cluster",
    "build_service",
    "cluster_labels",
    "ray_auth_secret_name",
    "service_url",
    "serving_selector",
]
