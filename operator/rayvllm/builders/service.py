"""The Service `<name>`: the one stable address of a VLLMCluster. It selects the pods the engine supervisor
labels as serving, so traffic only reaches engines that passed their health check."""

from __future__ import annotations

from typing import Any

from rayvllm.builders.labels import serving_selector
from rayvllm.builders.meta import child_metadata
from rayvllm.models.spec import VLLMClusterSpec

SERVICE_PORT_NAME = "http"


def build_service(spec: VLLMClusterSpec, name: str, namespace: str, uid: str) -> dict[str, Any]:
    """The endpoint Service for VLLMCluster `namespace/name`, as a plain dict ready for server-side apply."""
    port = spec.engine.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(name, namespace, uid),
        "spec": {
            "type": "ClusterIP",
            "selector": serving_selector(name),
            "ports": [{"name": SERVICE_PORT_NAME, "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def service_url(spec: VLLMClusterSpec, name: str, namespace: str) -> str:
    """The OpenAI-compatible base URL clients use inside the cluster."""
    return f"http://{name}.{namespace}.svc:{spec.engine.port}/v1"
