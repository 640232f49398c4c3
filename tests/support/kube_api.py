"""One persistent client of the API server per kubeconfig, shared by every thread of a Kube: GETs without a
process per poll. A passing fault raises TransientError ("not yet": wait_for polls on), a missing object
answers None, anything else raises AssertionError naming the request and the API's message."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from urllib3.util.retry import Retry

from hack.localcluster.procs import TransientError

# (connect, read) seconds: a poll of an API server that accepted the connection but hangs ends well within
# the waits' deadlines instead of blocking one forever.
REQUEST_TIMEOUT = (5.0, 30.0)
# One immediate retry, which gets a fresh connection: a pooled connection the API server dropped (it
# restarted) fails first. More would multiply the timeouts; wait_for does the waiting.
RETRIES = Retry(total=1, backoff_factor=0, status=0, redirect=0)
ACCEPT = "application/json, */*"  # kubectl's


@dataclass(frozen=True)
class Session:
    kubeconfig_stamp: tuple[int, int, int]
    api: client.ApiClient
    default_namespace: str


class ApiConnection:
    """The client follows the kubeconfig file: a cluster brought up again rewrites it (a new server or
    credentials), and the next request connects anew."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self._lock = threading.Lock()
        self._session: Session | None = None

    def session(self) -> Session:
        status = self.kubeconfig.stat()
        stamp = (status.st_ino, status.st_mtime_ns, status.st_size)
        with self._lock:
            if self._session is None or self._session.kubeconfig_stamp != stamp:
                self._session = connect(self.kubeconfig, stamp)
            return self._session

    def get(self, path: str, query: Sequence[tuple[str, str]], what: str) -> bytes | None:
        """The body of GET `path`; None when the object asked for does not exist. `what` names the request
        in errors."""
        api = self.session().api
        method, url, headers, _, _ = api.param_serialize(
            "GET",
            path,
            query_params=list(query),
            header_params={"Accept": ACCEPT},
            auth_settings=["BearerToken"],
        )
        try:
            response = api.call_api(method, url, headers, _request_timeout=REQUEST_TIMEOUT)
            body = response.read()
        except (urllib3.exceptions.HTTPError, client.ApiException, OSError) as error:
            raise transport_failure(error, f"{what} (GET {url})") from error
        assert isinstance(body, bytes)
        return checked_body(response.status, body, f"{what} (GET {url})")


def connect(kubeconfig: Path, stamp: tuple[int, int, int]) -> Session:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.retries = RETRIES
    _, current = config.list_kube_config_contexts(config_file=str(kubeconfig))
    namespace = (current.get("context") or {}).get("namespace") or "default"
    return Session(stamp, client.ApiClient(configuration), str(namespace))


def checked_body(status: int, body: bytes, what: str) -> bytes | None:
    """`body` of a successful answer; None for NotFound of a named object. A NotFound naming no object
    means the API has no such resource type (a CRD not installed): an error, as kubectl makes it."""
    if 200 <= status < 300:
        return body
    failure = api_status(body)
    message = f"{what}: HTTP {status}: {failure.get('message') or body[:500].decode(errors='replace')}"
    if status == 429 or status >= 500:
        raise TransientError(message)
    if status == 404 and (failure.get("details") or {}).get("name"):
        return None
    raise AssertionError(message)


def api_status(body: bytes) -> dict[str, Any]:
    """The API's Status object of a failed request (empty if the body is not one)."""
    try:
        decoded = json.loads(body)
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) and decoded.get("kind") == "Status" else {}


def transport_failure(error: BaseException, what: str) -> Exception:
    """TransientError for a fault that passes (refused, reset or timed-out connections, a TLS handshake cut
    short by a restarting server), AssertionError for one that does not (a host name that does not resolve,
    a certificate the CA did not sign)."""
    cause = error.reason if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason else error
    message = f"{what}: {type(cause).__name__}: {cause}"
    return TransientError(message) if passes(cause) else AssertionError(message)


# Faults of a server restarting or overloaded. urllib3's TimeoutError covers NewConnectionError (refused).
PASSING = (urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError, ConnectionError, TimeoutError)


def passes(cause: BaseException) -> bool:
    if isinstance(cause, urllib3.exceptions.NameResolutionError):
        return False
    if isinstance(cause, PASSING):
        return True
    # The client reports TLS failures as ApiException with status 0.
    tls = isinstance(cause, (urllib3.exceptions.SSLError, ssl.SSLError)) or (
        isinstance(cause, client.ApiException) and cause.status == 0
    )
    text = str(cause).lower()
    return tls and ("timed out" in text or "eof" in text)
