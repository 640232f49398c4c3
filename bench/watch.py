"""Client-side arrival times of watch events: one thread per resource streams a namespace's watch from the
API server and stamps each event with `time.monotonic()` the moment its line arrives.

Why not creationTimestamp: it has one-second granularity, and what users feel is when a change becomes
visible to watchers (controllers, kubectl -w). Every measured interval is a difference of two such
stamps taken by the same process and clock, so watch delivery delay cancels out to first order."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode


@dataclass(frozen=True)
class Endpoint:
    """The API server as an admin client: address and the client certificate's files."""

    host: str
    port: int
    ca: Path
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context

    def connect(self, timeout: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context(), timeout=timeout)

    def get_json(self, path: str, timeout: float = 30) -> Any:
        conn = self.connect(timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
            return json.loads(body)
        finally:
            conn.close()


@dataclass(frozen=True, slots=True)
class Seen:
    """One watch event, reduced to what the benchmark reads."""

    t: float  # time.monotonic() at arrival
    type: str  # ADDED, MODIFIED, DELETED
    name: str
    uid: str
    generation: int
    owner: str | None  # "Kind/name" of the controller (or first) ownerReference
    role: str | None  # a Ray pod's ray.io/node-type; None for other objects
    cluster: str | None  # a Ray pod's ray.io/cluster label
    phase: str | None  # status.phase
    observed: int | None  # status.observedGeneration
    degraded: bool  # condition Degraded is True


def _seen(t: float, event_type: str, obj: dict[str, Any]) -> Seen:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    owners = meta.get("ownerReferences") or []
    controller = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    conditions: list[Any] = status.get("conditions") or []
    return Seen(
        t=t,
        type=event_type,
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        owner=f"{controller['kind']}/{controller['name']}" if controller else None,
        role=labels.get("ray.io/node-type"),
        cluster=labels.get("ray.io/cluster"),
        phase=status.get("phase") if isinstance(status.get("phase"), str) else None,
        observed=observed if isinstance(observed, int) else None,
        degraded=any(c.get("type") == "Degraded" and c.get("status") == "True" for c in conditions),
    )


class Recorder:
    """Every event of the watched kinds, in arrival order, and the latest state of each live object."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self.lock = threading.Lock()
        self.events: dict[str, list[Seen]] = {}
        self.latest: dict[str, dict[str, Seen]] = {}
        self.gaps: dict[str, int] = {}  # watches restarted from a fresh list: events may be missing
        self.last: dict[str, float] = {}  # arrival of the latest event per kind

    def add(self, kind: str, seen: Seen) -> None:
        with self.lock:
            self.events.setdefault(kind, []).append(seen)
            self.last[kind] = seen.t
            live = self.latest.setdefault(kind, {})
            if seen.type == "DELETED":
                live.pop(seen.name, None)
            else:
                live[seen.name] = seen

    def gap(self, kind: str) -> None:
        with self.lock:
            self.gaps[kind] = self.gaps.get(kind, 0) + 1

    def snapshot(self, kind: str) -> dict[str, Seen]:
        with self.lock:
            return dict(self.latest.get(kind, {}))

    def history(self, kind: str) -> list[Seen]:
        with self.lock:
            return list(self.events.get(kind, []))

    def quiet_for(self, kind: str) -> float:
        """Seconds since the latest event of `kind` (since the recorder began if none)."""
        with self.lock:
            return time.monotonic() - self.last.get(kind, self._started)

    def wait(
        self, what: str, ready: Callable[[Recorder], bool], timeout: float, interval: float = 0.25
    ) -> float:
        """Poll `ready(self)` (cheaply: every `interval` s, not on every event) until it holds; return the
        monotonic time it was first seen true. TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            if ready(self):
                return time.monotonic()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)


class StreamWatch(threading.Thread):
    """A watch of one collection (e.g. /api/v1/namespaces/x/pods) into a Recorder under `kind`. It lists
    first (for the resourceVersion to start from), resumes from the last version seen when the server ends
    the stream, and keeps that version fresh with bookmarks."""

    def __init__(self, endpoint: Endpoint, kind: str, path: str, recorder: Recorder) -> None:
        super().__init__(name=f"watch-{kind}", daemon=True)
        self.endpoint = endpoint
        self.kind = kind
        self.path = path
        self.recorder = recorder
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._conn: http.client.HTTPSConnection | None = None

    def run(self) -> None:
        try:
            version = self._list()
            while not self._stopping.is_set():
                version = self._stream(version)
        except BaseException as exc:  # reported by the owner through .error
            if not self._stopping.is_set():
                self.error = exc

    def stop(self) -> None:
        self._stopping.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        self.join(timeout=10)

    def _list(self) -> str:
        listed = self.endpoint.get_json(f"{self.path}?limit=1")
        return str(listed["metadata"]["resourceVersion"])

    def _stream(self, version: str) -> str:
        query = urlencode(
            {"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": version, "timeoutSeconds": "300"}
        )
        # Bookmarks arrive about once a minute; a read blocked longer than this means a dead connection.
        conn = self.endpoint.connect(timeout=120)
        self._conn = conn
        try:
            conn.request("GET", f"{self.path}?{query}")
            response = conn.getresponse()
            if response.status == 410:
                self.recorder.gap(self.kind)
                return self._list()
            if response.status != 200:
                raise RuntimeError(f"watch {self.path}: {response.status} {response.read()[:300]!r}")
            self.ready.set()
            for t, line in _lines(response):
                event = json.loads(line)
                event_type = event.get("type")
                obj = event.get("object") or {}
                if event_type == "ERROR":
                    # 410 Gone inside the stream: the version is too old; start over from a list.
                    self.recorder.gap(self.kind)
                    return self._list()
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if event_type in ("ADDED", "MODIFIED", "DELETED"):
                    self.recorder.add(self.kind, _seen(t, event_type, obj))
            return version
        except (OSError, http.client.HTTPException, ValueError):
            if self._stopping.is_set():
                return version
            time.sleep(0.5)  # a broken stream: resume from the last version seen
            return version
        finally:
            conn.close()
            self._conn = None


def _lines(response: http.client.HTTPResponse) -> Iterator[tuple[float, bytes]]:
    """Each event line, stamped on arrival (before it is parsed, so parsing cost never skews the stamp)."""
    while True:
        line = response.readline()
        if not line:
            return
        yield time.monotonic(), line


WATCHED: dict[str, str] = {
    "vllmclusters": "/apis/rayvllm.io/v1alpha1/namespaces/{ns}/vllmclusters",
    "rayclusters": "/apis/ray.io/v1/namespaces/{ns}/rayclusters",
    "pods": "/api/v1/namespaces/{ns}/pods",
    "services": "/api/v1/namespaces/{ns}/services",
}


class NamespaceWatch:
    """The benchmark's watches of one namespace, started before its burst and stopped after its phase."""

    def __init__(self, endpoint: Endpoint, namespace: str, kinds: tuple[str, ...] = tuple(WATCHED)) -> None:
        self.recorder = Recorder()
        self.watches = [
            StreamWatch(endpoint, kind, WATCHED[kind].format(ns=namespace), self.recorder) for kind in kinds
        ]

    def __enter__(self) -> Recorder:
        for watch in self.watches:
            watch.start()
        deadline = time.monotonic() + 30
        for watch in self.watches:
            if not watch.ready.wait(max(0.0, deadline - time.monotonic())):
                self.__exit__()
                raise TimeoutError(f"watch {watch.path} not established in 30s: {watch.error}")
        return self.recorder

    def __exit__(self, *_: object) -> None:
        for watch in self.watches:
            watch.stop()

    def errors(self) -> list[str]:
        return [f"{w.kind}: {w.error}" for w in self.watches if w.error is not None]
