"""Every manifest under tests/bad_inputs/ against the real API server and the running operator: refused at
admission with a message naming the field, or accepted and reported in status plus a Warning Event, with
no children leaked and the operator neither crashing nor hot-looping."""

from __future__ import annotations

import re
import time
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


@pytest.mark.parametrize("path", ADMISSION, ids=[p.stem for p in ADMISSION])
def test_rejected_at_admission(kube: Kube, namespace: str, crds: Path, path: Path) -> None:
    _, expected = expectation(path)
    result = kube.kubectl("apply", "-n", namespace, "-f", str(path), check=False)
    assert result.returncode != 0, f"{path.name} was accepted:\n{result.stdout}"
    assert expected in result.stderr, f"{path.name}: {expected!r} not in:\n{result.stderr}"
    assert kube.get_json("vllmclusters", "-n", namespace)["items"] == []


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
        lambda: [
            e
            for e in kube.get_json(
                "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
            )["items"]
            if e["type"] == "Warning" and e["reason"] == reason
        ],
        timeout=30,
        what=f"a Warning Event {reason}",
    )
    assert events[0]["message"]

    if reason == "SecretNotFound":
        # Nothing that cannot work is created.
        assert kube.get_json("raycluster", name, "-n", namespace) is None
        assert kube.get_json("service", name, "-n", namespace) is None

    # No hot loop: with a 2 s resync, an unchanged world writes no new status.
    version = obj["metadata"]["resourceVersion"]
    before = operator.log_text().count(f"[{namespace}/{name}] status:")
    time.sleep(6)  # three resync periods: the quantity measured is "nothing happens"
    after_obj = kube.get_json("vllmcluster", name, "-n", namespace)
    assert after_obj["metadata"]["resourceVersion"] == version
    assert operator.log_text().count(f"[{namespace}/{name}] status:") == before
    assert operator.alive()
