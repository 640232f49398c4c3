"""Toxiproxy (hack/build-tools.sh builds its server from its Go module): a TCP proxy whose faults ("toxics":
latency, a stalled or reset connection, an answer cut after some bytes) and whose listener (disabled:
connection refused) a test switches through its HTTP API. The API listens on 127.0.0.1; each proxy listens
where the test says (the cluster bridge's address, for the in-cluster operator to reach it). The server is
this process's child, started and stopped by its pid."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from tests.support.local_server import LocalServer

# Which way a toxic acts: `downstream` on what the upstream answers, `upstream` on what the client sends.
Stream = Literal["upstream", "downstream"]


@dataclass(frozen=True)
class Toxic:
    """One toxic as Toxiproxy's API takes it: its `type` (latency, timeout, reset_peer, limit_data, slicer,
    ...) with that type's integer `attributes` (milliseconds, bytes), acting on every connection."""

    name: str
    type: str
    attributes: Mapping[str, int]
    stream: Stream = "downstream"

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": 1.0,
            "attributes": dict(self.attributes),
        }


@dataclass(frozen=True)
class ProxyState:
    """A proxy as the API reports it; `listen` is the address it really bound (a port 0 asked for is
    resolved)."""

    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: tuple[str, ...]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ProxyState:
        return cls(
            name=str(body["name"]),
            listen=str(body["listen"]),
            upstream=str(body["upstream"]),
            enabled=bool(body["enabled"]),
            toxics=tuple(str(t["name"]) for t in body.get("toxics") or []),
        )


class ToxiproxyError(AssertionError):
    """The API refused a request; the message carries its answer."""


@dataclass
class Toxiproxy(LocalServer):
    def start(self) -> None:
        self.launch(["-host", "127.0.0.1", "-port", str(self.port)], "/version", timeout=30)

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        answer = httpx.request(method, f"{self.url}{path}", json=body, timeout=10)
        if answer.status_code >= 300:
            raise ToxiproxyError(f"{method} {path}: HTTP {answer.status_code}: {answer.text.strip()}")
        return answer.json() if answer.content else None

    def create(self, name: str, listen: str, upstream: str) -> ProxyState:
        """A proxy listening (enabled) at `listen` (host:port; port 0 picks a free one) towards `upstream`."""
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": True}
        return ProxyState.of(self._call("POST", "/proxies", body))

    def proxy(self, name: str) -> ProxyState:
        return ProxyState.of(self._call("GET", f"/proxies/{name}"))

    def update(self, name: str, *, upstream: str | None = None, enabled: bool | None = None) -> ProxyState:
        """A new upstream (the listener restarts on the same address; open connections close) and/or the
        listener on or off: disabled, connections to it are refused."""
        changes: dict[str, Any] = {}
        if upstream is not None:
            changes["upstream"] = upstream
        if enabled is not None:
            changes["enabled"] = enabled
        return ProxyState.of(self._call("POST", f"/proxies/{name}", changes))

    def add_toxic(self, proxy: str, toxic: Toxic) -> None:
        """Acts on the proxy's open connections too, not only on new ones."""
        self._call("POST", f"/proxies/{proxy}/toxics", toxic.body())

    def remove_toxic(self, proxy: str, toxic: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic}")
