"""The non-Helm install paths on the real control plane: manifests/install.yaml applied server-side is
idempotent, and the image's own command line (the Dockerfile's ENTRYPOINT, parsed, not copied) runs the
operator under the chart's ServiceAccount identity and reconciles a VLLMCluster without a single
permission error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kube import Kube
from tests.support.operator_identity import dockerfile_instruction, grant_operator_identity
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "manifests" / "install.yaml"
SAMPLE = REPO / "manifests" / "samples" / "tiny-cpu.yaml"
INSTALL_NAMESPACE = "rayvllm-system"
# What a missing permission looks like in kopf's and the operator's logs.
PERMISSION_PROBLEMS = ("forbidden", "not enough permissions", "http 403", "403 forbidden", "unauthorized")
Manifest = dict[str, Any]


def install_docs() -> list[Manifest]:
    return [d for d in yaml.safe_load_all(INSTALL.read_text()) if d]


def resource_versions(kube: Kube) -> dict[str, str]:
    listed = json.loads(kube.kubectl("get", "-f", str(INSTALL), "-o", "json").stdout)
    items = listed["items"] if listed.get("kind") == "List" else [listed]
    return {f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"] for o in items}


def deployment_available(kube: Kube) -> bool:
    found = kube.get_json("deployment", "rayvllm-operator", "-n", INSTALL_NAMESPACE) or {}
    status = found.get("status", {})
    return bool(
        status.get("observedGeneration") == found.get("metadata", {}).get("generation")
        and status.get("availableReplicas") == 1
        and status.get("updatedReplicas") == 1
        and not status.get("unavailableReplicas")
    )


@pytest.fixture
def install_namespace_free(kube: Kube) -> Iterator[None]:
    """rayvllm-system absent (a previous run's may still be terminating); afterwards everything
    install.yaml created is deleted again, except the CRD, which other tests share."""
    wait_for(
        lambda: kube.get_json("namespace", INSTALL_NAMESPACE) is None,
        timeout=120,
        what=f"namespace {INSTALL_NAMESPACE} left by an earlier run to finish terminating",
    )
    try:
        yield
    finally:
        keep = [d for d in install_docs() if d["kind"] != "CustomResourceDefinition"]
        kube.kubectl(
            "delete", "--wait=false", "--ignore-not-found", "-f", "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": keep}),
        )  # fmt: skip


def test_install_yaml_server_side_apply_twice_changes_nothing(
    kube: Kube, install_namespace_free: None
) -> None:
    started = time.monotonic()
    first = kube.kubectl("apply", "--server-side", "-f", str(INSTALL)).stdout
    kinds = sorted(d["kind"] for d in install_docs())
    assert first.count("serverside-applied") == len(kinds), first
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/vllmclusters.rayvllm.io")
    # Wait for the controllers to settle (they write status), so only an apply could still change things.
    wait_for(lambda: deployment_available(kube), timeout=90, what="the operator Deployment to be available")
    pods = kube.get_json("pods", "-n", INSTALL_NAMESPACE, "-l", "app.kubernetes.io/name=rayvllm-operator")
    assert [p["status"]["phase"] for p in pods["items"]] == ["Running"]
    assert pods["items"][0]["spec"]["nodeName"]
    applied_in = time.monotonic() - started
    before = resource_versions(kube)
    assert sorted(k.split("/")[0] for k in before) == kinds

    second = kube.kubectl("apply", "--server-side", "-f", str(INSTALL)).stdout
    after = resource_versions(kube)
    assert after == before, f"the second apply changed objects: {set(after.items()) ^ set(before.items())}"
    assert second.count("serverside-applied") == len(kinds), second
    # And the server agrees that nothing would change.
    diff = kube.kubectl("diff", "--server-side", "-f", str(INSTALL), check=False)
    assert diff.returncode == 0, (
        f"kubectl diff found differences ({diff.returncode}):\n{diff.stdout}{diff.stderr}"
    )
    print(f"install.yaml applied and the operator pod Running in {applied_in:.1f}s")


# ---- the image's command line, under the chart's identity -------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def entrypoint_argv(liveness_port: int, namespace: str) -> list[str]:
    """The Dockerfile's ENTRYPOINT as parsed, with two local substitutions only: `kopf` is the venv's,
    and the liveness listener moves from 0.0.0.0:8080 to a free loopback port. The CMD default
    (--all-namespaces) is replaced by --namespace=<test namespace>, the same override the Helm chart
    makes in namespaced mode, so this operator never touches other tests' objects."""
    entrypoint = dockerfile_instruction("ENTRYPOINT")
    assert dockerfile_instruction("CMD") == ["--all-namespaces"]
    assert entrypoint[0] == "kopf"
    kopf = Path(sys.executable).parent / "kopf"
    assert kopf.exists(), f"{kopf} missing: run `make venv`"
    liveness = [
        i for i, arg in enumerate(entrypoint) if arg.startswith("--liveness=") and "0.0.0.0:8080" in arg
    ]
    assert len(liveness) == 1, entrypoint
    argv = [str(kopf), *entrypoint[1:]]
    argv[liveness[0]] = entrypoint[liveness[0]].replace("0.0.0.0:8080", f"127.0.0.1:{liveness_port}")
    return [*argv, f"--namespace={namespace}"]


def healthz(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError("the operator did not stop within 30s of SIGTERM") from None
    return int(proc.returncode)


def test_image_entrypoint_runs_the_operator_under_the_chart_identity(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    crds = sorted((REPO / "crds").glob("*.yaml"))
    for crd in crds:
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        name = yaml.safe_load(crd.read_text())["metadata"]["name"]
        kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    identity = grant_operator_identity(kube, namespace, tmp_path, watch_namespaces=[namespace])

    port = free_port()
    argv = entrypoint_argv(port, namespace)
    log_path = tmp_path / "operator.log"
    closed_port = free_port()  # Nothing dials the simulated cluster's addresses: Ray is "down" on loopback.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAYVLLM_")},
        "KUBECONFIG": str(identity.kubeconfig),
        "RAYVLLM_DASHBOARD_URL_TEMPLATE": f"http://127.0.0.1:{closed_port}",
        "RAYVLLM_ENGINE_HOST_OVERRIDE": "127.0.0.1",
        "RAYVLLM_RESYNC_SECONDS": "2",
    }
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path,
            start_new_session=True,
        )  # fmt: skip
    sample = yaml.safe_load(SAMPLE.read_text())
    name = sample["metadata"]["name"]
    try:

        def live() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"operator exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}"
                )
            return healthz(f"http://127.0.0.1:{port}/healthz") == 200

        wait_for(live, timeout=60, what=f"the operator's liveness endpoint to answer 200 (log: {log_path})")
        live_in = time.monotonic() - started

        # Use, not only review: the operator reconciles a VLLMCluster with exactly the chart's permissions.
        kube.apply(sample, namespace)
        wait_for(
            lambda: kube.get_json("raycluster", name, "-n", namespace),
            timeout=60,
            what="the operator to create the RayCluster",
        )
        wait_for(lambda: kube.get_json("service", name, "-n", namespace), timeout=30, what="the Service")
        wait_for(
            lambda: (
                (kube.get_json("vllmcluster", name, "-n", namespace) or {}).get("status", {}).get("phase")
            ),
            timeout=30,
            what="the operator to write status.phase",
        )
        events = wait_for(
            lambda: kube.get_json(
                "events",
                "-n",
                namespace,
                "--field-selector",
                f"involvedObject.kind=VLLMCluster,involvedObject.name={name}",
            )["items"],
            timeout=30,
            what="the operator to post Events",
        )
        assert events
        kube.kubectl("delete", "vllmcluster", name, "-n", namespace, "--wait=true", "--timeout=60s")
        assert healthz(f"http://127.0.0.1:{port}/healthz") == 200
    finally:
        code = stop(proc)
        leftover = kube.get_json("vllmcluster", name, "-n", namespace)
        if leftover:  # never leave a finalizer without an operator behind: the namespace could not go
            kube.kubectl(
                "patch",
                "vllmcluster",
                name,
                "-n",
                namespace,
                "--type=merge",
                "-p",
                '{"metadata":{"finalizers":null}}',
            )
    assert code == 0, f"exit code {code} after SIGTERM"

    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a log line is not JSON: {line!r}") from None
    assert all(isinstance(r, dict) and {"message", "timestamp", "severity"} <= set(r) for r in records)
    messages = [str(r["message"]) for r in records]
    assert any("rayvllm operator configured" in m for m in messages), messages[:5]
    assert any(r.get("object", {}).get("name") == name for r in records), "no log line about the VLLMCluster"
    problems = [line for line in lines if any(p in line.lower() for p in PERMISSION_PROBLEMS)]
    assert not problems, f"permission problems under the chart's identity: {problems}"
    print(f"operator live in {live_in:.1f}s; {len(records)} JSON log lines")
