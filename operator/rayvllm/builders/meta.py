"""Object metadata shared by every child: name, namespace, labels and the controller owner reference
(so Kubernetes garbage-collects children with their VLLMCluster)."""

from __future__ import annotations

from typing import Any

from rayvllm import KIND
from rayvllm.builders.labels import cluster_labels
from rayvllm.models.resource import API_VERSION_STRING


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION_STRING,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(name: str, namespace: str, uid: str) -> dict[str, Any]:
    """Children are named after the VLLMCluster (deterministic, so re-applying is idempotent)."""
    return {
        "name": name,
        "namespace": namespace,
        "labels": cluster_labels(name),
        "ownerReferences": [owner_reference(name, uid)],
    }
