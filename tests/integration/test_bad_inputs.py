"""Every manifest under tests/bad_inputs/ against the real API server and the running operator: refused at
admission with a message naming the field, or accepted and reported in status plus a Warning Event, with
no children leaked and the operator neither crashing nor hot-looping."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kube import Kube
from tests.support.operator import OperatorProcess
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

BAD = sorted((Path(__file__).resolve().parents[1] / "bad_inputs").glob("*.yaml"))


def expectation(path: Path) -> tuple[str, str]:
    first = path.read_text().splitlines()[0]
    match = re.match(r"#\s*(expect|expect-status):\s*(.+)$", first)
    assert match, f"{path.name}: first line must be '# expect: ...' or '# expect-status: ...'"
    return match.group(1), match.group(2).strip()


ADMISSION = [p for p in BAD if expectation(p)[0] == "expect"]
STATUS = [p for p in BAD if expectation(p)[0] == "expect-status"]


def test_enough_bad_inputs() -> None:
    assert len(BAD) >= 20, [p.name for p in BAD]
    assert STATUS, "at least one case only the cluster can judge"


@pytest.fixture(scope="module")
def admission_namespace(kube: Kube) -> Iterator[str]:
    """One namespace for all admission cases: nothing is ever created in it."""
    name = f"t-admission-{secrets.token_hex(3)}"
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize("path", ADMISSION, ids=[p.stem for p in ADMISSION])
def test_rejected_at_admission(kube: Kube, admission_namespace: str, crds: Path, path: Path) -> None:
    _, expected = expectation(path)
    result = kube.kubectl("apply", "-n", admission_namespace, "-f", str(path), check=False)
    assert result.returncode != 0, f"{path.name} was accepted:\n{result.stdout}"
    assert expected in result.stderr, f"{path.name}: {expected!r} not in:\n{result.stderr}"
    assert kube.get_json("vllmclusters", "-n", admission_namespace)["items"] == []


@pytest.mark.parametrize("path", STATUS, ids=[p.stem for p in STATUS])
def test_reported_in_status_with_event(
    kube: Kube, namespace: str, operator: OperatorProcess, path: Path
) -> None:
    _, reason = expectation(path)
    manifest: dict[str, Any] = yaml.safe_load(path.read_text())
    name = manifest["metadata"]["name"]
    kube.kubectl("apply", "-n", namespace, "-f", str(path))

    def degraded() -> dict[str, Any] | None:
        obj = kube.get_json("vllmcluster", name, "-n", namespace) or {}
        conditions = {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}
        ok = (
            conditions.get("Degraded", {}).get("reason") == reason
            and conditions["Degraded"]["status"] == "True"
        )
        return obj if ok else None

    obj = wait_for(degraded, timeout=60, what=f"Degraded={reason} on {name}")
    ready = {c["type"]: c for c in obj["status"]["conditions"]}["Ready"]
    assert ready["status"] == "False"
    assert obj["status"]["phase"] in ("Pending", "Degraded", "Failed")

    events = wait_for(
        lambda: [e for e in kube.events(namespace, name) if e["type"] == "Warning" and e["reason"] == reason],
        timeout=30,
        what=f"a Warning Event {reason}",
    )
    assert events[0]["message"]

    if reason == "SecretNotFound":
        # Nothing that cannot work is created.
        assert kube.get_json("raycluster", name, "-n", namespace) is None
        assert kube.get_json("service", name, "-n", namespace) is None

    # No hot loop: with a 2 s resync, an unchanged world makes no new status write.
    writes = f"[{namespace}/{name}] status:"
    before = operator.log_text().count(writes)
    time.sleep(6)  # three resync periods: the quantity measured is "nothing happens"
    assert operator.log_text().count(writes) == before, operator.log_tail()
    assert operator.alive()


def test_a_secret_created_later_is_found(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    """A missing Secret is looked for again with backoff (1, 2, 4, then every 4 resyncs), never given up on:
    created after several misses, it is found within the backoff's cap and the children follow."""
    path = next(p for p in STATUS if p.stem == "missing-hf-token-secret")
    manifest: dict[str, Any] = yaml.safe_load(path.read_text())
    name, ref = manifest["metadata"]["name"], manifest["spec"]["model"]["hfTokenSecretRef"]
    kube.kubectl("apply", "-n", namespace, "-f", str(path))
    wait_for(
        lambda: any(e["reason"] == "SecretNotFound" for e in kube.events(namespace, name)),
        timeout=30,
        what="SecretNotFound reported",
    )
    time.sleep(7 * 2)  # seven resyncs of 2 s: the looks are now BACKOFF_LIMIT (4) resyncs apart
    assert kube.get_json("raycluster", name, "-n", namespace) is None
    kube.kubectl(
        "create", "secret", "generic", ref["name"], "-n", namespace, f"--from-literal={ref['key']}=not-real"
    )
    # Four resyncs (with their +-20% jitter) and the pass itself.
    wait_for(
        lambda: kube.get_json("raycluster", name, "-n", namespace),
        timeout=4 * 2 * 1.2 + 5,
        interval=0.2,
        what="the RayCluster created once the Secret exists",
    )
    assert operator.alive()
