"""Reads and writes of the objects the operator owns or watches. Children are written with server-side
apply under one field manager, so the API server computes every diff."""

from __future__ import annotations

import base64
from typing import Any

from kubernetes_asyncio import client

from rayvllm import API_GROUP, API_VERSION, PLURAL
from rayvllm.errors import KubernetesError, KubernetesRejectedError
from rayvllm.k8s.api import AS_APPLY, AS_JSON_PATCH, apply_body, call, call_or_none, to_dict

RAY_GROUP, RAY_VERSION, RAYCLUSTERS = "ray.io", "v1", "rayclusters"


class Kubernetes:
    """The operator's view of the Kubernetes API; one instance per process, shared by handlers."""

    def __init__(self, api: client.ApiClient, field_manager: str) -> None:
        self._api = api
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self.field_manager = field_manager

    # ---- RayCluster ------------------------------------------------------------------------------

    async def get_raycluster(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await call_or_none(
            f"get RayCluster {namespace}/{name}",
            self._custom.get_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, RAYCLUSTERS, name),
        )

    async def apply_raycluster(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        what = f"apply RayCluster {meta['namespace']}/{meta['name']}"
        result: dict[str, Any] | None = await call(
            what,
            self._custom.patch_namespaced_custom_object(
                RAY_GROUP,
                RAY_VERSION,
                meta["namespace"],
                RAYCLUSTERS,
                meta["name"],
                apply_body(manifest),
                field_manager=self.field_manager,
                force=True,
                **AS_APPLY,
            ),
        )
        if result is None:
            # The client maps only HTTP 200 of a PATCH to a body; an apply that creates answers 201.
            result = await self.get_raycluster(meta["namespace"], meta["name"])
        if result is None:
            raise KubernetesError(f"{what}: applied, then not found")
        return result

    # ---- Service ---------------------------------------------------------------------------------

    async def apply_service(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """The Service as stored after the apply."""
        meta = manifest["metadata"]
        applied = await call(
            f"apply Service {meta['namespace']}/{meta['name']}",
            self._core.patch_namespaced_service(
                meta["name"],
                meta["namespace"],
                apply_body(manifest),
                field_manager=self.field_manager,
                force=True,
                **AS_APPLY,
            ),
        )
        return to_dict(self._api, applied)

    # ---- Pods ------------------------------------------------------------------------------------

    async def apply_pod_metadata(
        self, namespace: str, name: str, labels: dict[str, str], annotations: dict[str, str], manager: str
    ) -> None:
        """Own exactly `labels` and `annotations` on the pod under `manager`: those this manager set before
        and that are absent now are removed by the API server."""
        metadata = {"name": name, "labels": labels, "annotations": annotations}
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata}
        await call_or_none(
            f"label pod {namespace}/{name}",
            self._core.patch_namespaced_pod(
                name, namespace, apply_body(body), field_manager=manager, force=True, **AS_APPLY
            ),
        )

    # ---- Secrets ---------------------------------------------------------------------------------

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's data, decoded (one GET), or None when it does not exist. Callers keep values in
        memory only for as long as they need them and never log them."""
        secret = await call_or_none(
            f"get Secret {namespace}/{name}", self._core.read_namespaced_secret(name, namespace)
        )
        if secret is None:
            return None
        data = {
            key: base64.b64decode(value).decode(errors="replace")
            for key, value in (secret.data or {}).items()
        }
        return {**(secret.string_data or {}), **data}

    # ---- VLLMCluster spec.replicas (the autoscaler) ----------------------------------------------

    async def set_replicas(self, namespace: str, name: str, expected: int, replicas: int) -> str | None:
        """spec.replicas from `expected` to `replicas`, only if it still is `expected`: a JSON patch whose
        `test` fails (HTTP 422) when someone (`kubectl scale`, an edit) changed it since the caller looked,
        so a decision made on a stale view is dropped rather than overwriting theirs. None once written,
        else the API server's refusal (422: that, or admission refusing the object as it now is)."""
        patch = [
            {"op": "test", "path": "/spec/replicas", "value": expected},
            {"op": "replace", "path": "/spec/replicas", "value": replicas},
        ]
        try:
            await call(
                f"set spec.replicas of VLLMCluster {namespace}/{name} to {replicas}",
                self._custom.patch_namespaced_custom_object(
                    API_GROUP,
                    API_VERSION,
                    namespace,
                    PLURAL,
                    name,
                    patch,
                    field_manager=self.field_manager,
                    **AS_JSON_PATCH,
                ),
            )
        except KubernetesRejectedError as refused:
            if refused.status != 422:
                raise
            return str(refused)
        return None

    # ---- VLLMCluster status ----------------------------------------------------------------------

    async def replace_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Write the whole status (computed whole, so fields that went away must go too)."""
        # JSON patch "add" on /status replaces it, or creates it on a fresh object.
        await call_or_none(
            f"write status of VLLMCluster {namespace}/{name}",
            self._custom.patch_namespaced_custom_object_status(
                API_GROUP,
                API_VERSION,
                namespace,
                PLURAL,
                name,
                [{"op": "add", "path": "/status", "value": status}],
                **AS_JSON_PATCH,
            ),
        )
