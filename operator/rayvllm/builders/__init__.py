"""Pure builders: (spec model, name, namespace, uid) -> plain dict manifests.
No I/O, no environment, no clock."""

from rayvllm.builders.labels import CLUSTER_LABEL, SERVING_LABEL, cluster_labels, serving_selector
from rayvllm.builders.raycluster import build_ray_cluster
from rayvllm.builders.service import build_service, service_url

__all__ = [
    "CLUSTER_LABEL",
    "SERVING_LABEL",
    "build_ray_cluster",
    "build_service",
    "cluster_labels",
    "service_url",
    "serving_selector",
]
