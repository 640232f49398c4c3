"""Secrets never leak: one scan over a whole run. Each scenario registers the secret values it uses (HF
token, API key, Redis password) and, before its namespace goes, keeps the places a value could surface in:
the VLLMClusters' status, the namespace's Events, the Ray job records (entrypoint, metadata, runtime_env),
the generated RayClusters and the log of every operator instance (restarted containers included). At the end
of the session every kept place is searched for every value registered by any scenario (a Redis password
must not appear in the storm's operator logs either); tests/e2e/conftest.py fails the run on a hit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import httpx

from hack.localcluster.helm_release import OperatorRelease
from rayvllm.ray.http import AUTH_HEADER
from tests.e2e.realnode import dashboard_of
from tests.support.kube import Kube


def ray_job_records(kube: Kube, namespace: str, name: str) -> str:
    """Every Ray job record of this VLLMCluster as Ray's Jobs API returns it (GET /api/jobs/), as text."""
    url, token = dashboard_of(kube, namespace, name)
    listed = httpx.get(f"{url}/api/jobs/", headers={AUTH_HEADER: f"Bearer {token}"}, timeout=10)
    listed.raise_for_status()
    mine = [j for j in listed.json() if (j.get("metadata") or {}).get("rayvllm.io/name") == name]
    assert mine, "no Ray job of this VLLMCluster found"
    return json.dumps(mine)


@dataclass
class SecretScan:
    secrets: dict[str, str] = field(default_factory=dict)
    """secret value -> what it is and which scenario used it"""
    places: dict[str, str] = field(default_factory=dict)
    """where (scenario: place) -> the text found there"""

    def secret(self, value: str, what: str) -> None:
        self.secrets[value] = what

    def keep(self, where: str, text: str) -> None:
        self.places[where] = self.places.get(where, "") + text

    def keep_operator(self, scenario: str, release: OperatorRelease) -> None:
        """The log of the release's operator containers, those restarted in place included."""
        self.keep(f"{scenario}: operator log", release.logs())
        self.keep(f"{scenario}: operator log (previous containers)", release.logs(previous=True))

    def keep_cluster(self, scenario: str, kube: Kube, namespace: str, name: str) -> None:
        """What VLLMCluster `name` shows of itself: its status, the namespace's Events, its Ray job records
        (its Ray cluster must answer) and its RayCluster. Call it before the namespace goes."""
        obj = kube.get_json("vllmcluster", name, "-n", namespace) or {}
        self.keep(f"{scenario}: status", json.dumps(obj.get("status")))
        self.keep(f"{scenario}: events", json.dumps(kube.get_json("events", "-n", namespace)))
        self.keep(f"{scenario}: ray job records", ray_job_records(kube, namespace, name))
        self.keep(f"{scenario}: raycluster", json.dumps(kube.get_json("raycluster", name, "-n", namespace)))

    def leaks(self) -> list[tuple[str, str]]:
        """(where, what) for every registered value found in a kept place."""
        return [
            (where, what)
            for where, text in self.places.items()
            for value, what in self.secrets.items()
            if value in text
        ]

    def summary(self) -> str:
        size = sum(len(text) for text in self.places.values())
        return (
            f"secret scan: {len(self.secrets)} secret values ({', '.join(sorted(self.secrets.values()))}) "
            f"searched in {len(self.places)} places ({size / 1e6:.1f} MB): {len(self.leaks())} hits"
        )


# The session's scan; the `secret_scan` fixture (tests/e2e/conftest.py) checks it when the session ends.
SCAN = SecretScan()
