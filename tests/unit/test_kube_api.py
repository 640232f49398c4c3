"""Kube.get_json and get_raw over their one client, against a scripted fake API server on 127.0.0.1: what a
missing object, a passing fault and a real failure become, wait_for polling through passing faults, one
client shared by threads, and a rewritten kubeconfig followed. Classification of transport errors without
any server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client

from tests.support import kube_api
from tests.support.kube import Kube
from tests.support.kube_api import transport_failure
from tests.support.wait import TransientError, wait_for

CONTEXT_NS = "context-ns"
UNAVAILABLE = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": "the server is currently unable to handle the request",
    "reason": "ServiceUnavailable",
    "code": 503,
}


def not_found(name: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "status": "Failure",
        "message": f'pods "{name}" not found',
        "reason": "NotFound",
        "details": {"name": name, "kind": "pods"},
        "code": 404,
    }


# A reply: (status, JSON body or raw bytes), "drop" (close the connection unanswered) or ("sleep", seconds).
Reply = Any


@dataclass
class FakeApi:
    """Answers each path with its scripted replies in turn (the last one repeats); records every request."""

    replies: dict[str, list[Reply]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_reply(self, path: str) -> Reply:
        with self.lock:
            self.requests.append(path)
            scripted = self.replies.get(path.split("?")[0]) or [(404, b"404 page not found")]
            return scripted.pop(0) if len(scripted) > 1 else scripted[0]


def serve(api: FakeApi) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # kept-alive connections, as the API server's

        def do_GET(self) -> None:
            reply = api.next_reply(self.path)
            if reply == "drop":
                self.close_connection = True
                self.connection.close()
                return
            if reply[0] == "sleep":
                time.sleep(reply[1])
                reply = (200, {})
            status, body = reply
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return server


def write_kubeconfig(path: Path, port: int) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "nobody", "user": {}}],
                "contexts": [
                    {
                        "name": "fake",
                        "context": {"cluster": "fake", "user": "nobody", "namespace": CONTEXT_NS},
                    }
                ],
                "current-context": "fake",
            }
        )
    )
    return path


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def server(api: FakeApi) -> Iterator[ThreadingHTTPServer]:
    running = serve(api)
    yield running
    running.shutdown()
    running.server_close()


@pytest.fixture
def kube(server: ThreadingHTTPServer, tmp_path: Path) -> Kube:
    # get_json never runs kubectl: a path that does not exist proves it.
    return Kube(write_kubeconfig(tmp_path / "kubeconfig", server.server_address[1]), tmp_path / "no-kubectl")


POD = "/api/v1/namespaces/ns/pods/p"


def test_an_object_as_kubectl_prints_it(kube: Kube, api: FakeApi) -> None:
    api.replies[POD] = [
        (200, {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p", "managedFields": []}})
    ]
    assert kube.get_json("pod", "p", "-n", "ns") == {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": "p"},
    }


def test_a_list_in_the_contexts_namespace_with_selectors(kube: Kube, api: FakeApi) -> None:
    api.replies[f"/api/v1/namespaces/{CONTEXT_NS}/pods"] = [
        (200, {"kind": "PodList", "items": [{"metadata": {}}]})
    ]
    found = kube.get_json("pods", "-l", "a=b")
    assert found["items"] == [{"apiVersion": "v1", "kind": "Pod", "metadata": {}}]
    assert api.requests == [f"/api/v1/namespaces/{CONTEXT_NS}/pods?labelSelector=a%3Db"]


def test_a_missing_object_is_none(kube: Kube, api: FakeApi) -> None:
    api.replies[POD] = [(404, not_found("p"))]
    assert kube.get_json("pod", "p", "-n", "ns") is None


def test_a_missing_resource_type_is_an_error_not_none(kube: Kube) -> None:
    # The API's answer for a CRD not installed: a 404 that names no object.
    with pytest.raises(AssertionError, match=r"kubectl get vllm x -n ns \(GET .*vllmclusters/x\): HTTP 404"):
        kube.get_json("vllm", "x", "-n", "ns")


@pytest.mark.parametrize("status", [500, 503, 504, 429])
def test_overload_and_server_errors_are_transient(kube: Kube, api: FakeApi, status: int) -> None:
    api.replies[POD] = [(status, {**UNAVAILABLE, "code": status})]
    with pytest.raises(
        TransientError, match=f"kubectl get pod p -n ns .*HTTP {status}: the server is currently"
    ):
        kube.get_json("pod", "p", "-n", "ns")


def test_a_refusal_is_an_assertion_naming_the_request_and_the_apis_message(kube: Kube, api: FakeApi) -> None:
    forbidden = {"kind": "Status", "message": 'pods "p" is forbidden: User "x" cannot get', "code": 403}
    api.replies[POD] = [(403, forbidden)]
    with pytest.raises(
        AssertionError, match=r'kubectl get pod p -n ns \(GET .*/pods/p\): HTTP 403: pods "p" is forbidden'
    ):
        kube.get_json("pod", "p", "-n", "ns")


def test_a_dropped_connection_is_transient(kube: Kube, api: FakeApi) -> None:
    api.replies[POD] = ["drop"]
    with pytest.raises(TransientError, match="kubectl get pod p -n ns"):
        kube.get_json("pod", "p", "-n", "ns")


def test_one_dropped_connection_is_retried_on_a_fresh_one(kube: Kube, api: FakeApi) -> None:
    api.replies[POD] = ["drop", (200, {"metadata": {"name": "p"}})]
    assert kube.get_json("pod", "p", "-n", "ns") == {"metadata": {"name": "p"}}


def test_a_read_timeout_is_transient(kube: Kube, api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_api, "REQUEST_TIMEOUT", (1.0, 0.1))
    api.replies[POD] = [("sleep", 0.5)]
    with pytest.raises(TransientError, match="ReadTimeoutError"):
        kube.get_json("pod", "p", "-n", "ns")


def test_a_refused_connection_is_transient(tmp_path: Path) -> None:
    stopped = serve(FakeApi())
    port = stopped.server_address[1]
    stopped.shutdown()
    stopped.server_close()
    kube = Kube(write_kubeconfig(tmp_path / "kubeconfig", port), tmp_path / "no-kubectl")
    with pytest.raises(TransientError, match="NewConnectionError"):
        kube.get_json("namespace", "x")


def test_wait_for_polls_through_transient_errors(kube: Kube, api: FakeApi) -> None:
    api.replies[POD] = [(503, UNAVAILABLE), "drop", "drop", (404, not_found("p")), (200, {"metadata": {}})]
    assert wait_for(lambda: kube.get_json("pod", "p", "-n", "ns"), timeout=10, what="p", interval=0.01)
    assert len(api.requests) == 5  # 503; a drop and its retry (one get_json); 404 (None: not yet); 200


def test_raw_paths(kube: Kube, api: FakeApi) -> None:
    api.replies["/metrics"] = [(200, b"apiserver_request_total 1\n")]
    assert kube.get_raw("/metrics") == "apiserver_request_total 1\n"


def test_threads_share_one_client(kube: Kube, api: FakeApi) -> None:
    api.replies[POD] = [(200, {"metadata": {"name": "p"}})]
    sessions = set()

    def poll(_: int) -> Any:
        sessions.add(id(kube._connection.session()))
        return kube.get_json("pod", "p", "-n", "ns")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(poll, range(64)))
    assert results == [{"metadata": {"name": "p"}}] * 64
    assert len(sessions) == 1


def test_a_rewritten_kubeconfig_is_followed(kube: Kube, api: FakeApi) -> None:
    api.replies[POD] = [(200, {"metadata": {"name": "first"}})]
    assert kube.get_json("pod", "p", "-n", "ns")["metadata"]["name"] == "first"
    second = FakeApi(replies={POD: [(200, {"metadata": {"name": "second"}})]})
    other = serve(second)
    try:
        write_kubeconfig(kube.kubeconfig, other.server_address[1])
        assert kube.get_json("pod", "p", "-n", "ns")["metadata"]["name"] == "second"
    finally:
        other.shutdown()
        other.server_close()


# ---- transport errors, without a server ------------------------------------------------------------------

POOL = urllib3.HTTPConnectionPool("127.0.0.1", 1)  # what the errors name; never connected
CONNECTION = urllib3.connection.HTTPConnection("127.0.0.1", 1)


@pytest.mark.parametrize(
    "error",
    [
        urllib3.exceptions.MaxRetryError(
            POOL, "/", urllib3.exceptions.NewConnectionError(CONNECTION, "refused")
        ),
        urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
        urllib3.exceptions.ReadTimeoutError(POOL, "/", "read timed out"),
        urllib3.exceptions.ConnectTimeoutError(None, "connect timed out"),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
        client.ApiException(status=0, reason="SSLError\n_ssl.c:990: The handshake operation timed out"),
        urllib3.exceptions.SSLError("EOF occurred in violation of protocol (_ssl.c:2427)"),
    ],
)
def test_passing_faults_are_transient(error: Exception) -> None:
    assert isinstance(transport_failure(error, "kubectl get pods"), TransientError)


@pytest.mark.parametrize(
    "error",
    [
        client.ApiException(
            status=0, reason="SSLError\n[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
        ),
        urllib3.exceptions.MaxRetryError(
            POOL,
            "/",
            urllib3.exceptions.NameResolutionError("apiserver", CONNECTION, socket.gaierror(-2, "unknown")),
        ),
        ValueError("bad"),
    ],
)
def test_lasting_faults_are_assertions_naming_the_request(error: Exception) -> None:
    failure = transport_failure(error, "kubectl get pods")
    assert type(failure) is AssertionError
    assert str(failure).startswith("kubectl get pods: ")
