"""Test access to the real control plane: the pinned kubectl for commands, and the official Python client for
reads (get_json: one persistent client, no process per poll) and for the tests' own API calls (api())."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families

from hack.localcluster.kubecli import Kubectl
from tests.support.kube_api import ApiConnection
from tests.support.kube_get import parse_get


@dataclass(frozen=True)
class Kube:
    kubeconfig: Path
    kubectl_path: Path
    # get_json's one client, shared by every thread polling through this Kube.
    _connection: ApiConnection = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_connection", ApiConnection(self.kubeconfig))

    def api(self) -> client.ApiClient:
        """A new client of its own (close it: `with kube.api() as api`)."""
        # The loader is unannotated (returns Any): the annotation says what it builds.
        api_client: client.ApiClient = config.new_client_from_config(config_file=str(self.kubeconfig))
        return api_client

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = Kubectl(self.kubectl_path, self.kubeconfig).run(*args, stdin=stdin, timeout=240, check=False)
        # A test's failure, not CommandError's exit: a watcher thread would end silently on SystemExit.
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def get_json(self, *args: str) -> Any:
        """What `kubectl get ARGS -o json` prints (a list kind or several: a List, {"items": [...]}); None
        when the named object does not exist. Asked of the API directly (tests/support/kube_get.py translates
        ARGS, a ValueError for what it cannot). A passing API fault raises TransientError, which wait_for
        polls on; any other failure AssertionError."""
        request = parse_get(args)
        what = f"kubectl get {' '.join(args)}"
        paths = request.paths(self._connection.session().default_namespace)
        answers = []
        for path in paths:
            body = self._connection.get(path, request.query(), what)
            if body is None:
                return None
            answers.append(json.loads(body))
        return request.printed(answers)

    def get_raw(self, path: str) -> str:
        """`kubectl get --raw PATH`, e.g. the API server's /metrics."""
        body = self._connection.get(path, (), f"kubectl get --raw {path}")
        if body is None:
            raise AssertionError(f"kubectl get --raw {path}: not found")
        return body.decode()

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The Events about the object `name` in `namespace`."""
        found = self.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")
        return list(found["items"]) if found else []

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None) -> None:
        body = manifest if isinstance(manifest, str) else json.dumps(manifest)
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", "--server-side", "--force-conflicts", *ns, "-f", "-", stdin=body)


def json_object(returned: object) -> dict[str, Any]:
    """What the client's custom-object calls return, annotated `object`: the decoded JSON object."""
    if not isinstance(returned, dict):
        raise TypeError(f"the API returned {type(returned).__name__}, not a JSON object")
    return returned


Writes = dict[tuple[str, str, str], float]
# Requests that change state, as the API server counts them (server-side apply is its own verb).
WRITE_VERBS = frozenset({"APPLY", "PATCH", "POST", "PUT", "DELETE"})
OURS = frozenset({"vllmclusters", "rayclusters", "services", "pods", "events"})


def apiserver_writes(kube: Kube) -> Writes:
    """apiserver_request_total for writes to the kinds the operator writes, by (verb, resource,
    subresource), from the API server's own metrics."""
    text = kube.get_raw("/metrics")
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "apiserver_request_total"
                and labels.get("verb") in WRITE_VERBS
                and labels.get("resource") in OURS
            ):
                key = (labels["verb"], labels["resource"], labels.get("subresource", ""))
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def operator_writes(writes: Mapping[tuple[str, str, str], float]) -> Writes:
    """The writes only the operator makes: server-side applies (children and serving labels; nothing else
    in the cluster applies) and patches of VLLMClusters (status, kopf's annotations)."""
    return {key: n for key, n in writes.items() if key[0] == "APPLY" or key[1] == "vllmclusters"}


def write_delta(
    after: Mapping[tuple[str, str, str], float], before: Mapping[tuple[str, str, str], float]
) -> Writes:
    return {
        key: value - before.get(key, 0.0) for key, value in after.items() if value != before.get(key, 0.0)
    }
