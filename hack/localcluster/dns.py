"""CoreDNS as the cluster DNS, on the bridge address: pods (and the in-cluster operator) resolve
`<cluster>-head-svc.<namespace>.svc` exactly as in production. Names outside the cluster are answered
NXDOMAIN here; nothing is forwarded beyond this machine."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from hack.localcluster.network import NODE_IP
from hack.localcluster.procs import Daemons

COMPONENT = "coredns"


def corefile(kubeconfig: Path, ready_port: int) -> str:
    return f"""cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} rayvllm-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
.:53 {{
    bind {NODE_IP}
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def start(daemons: Daemons, binary: Path, state_dir: Path, kubeconfig: Path, ready_port: int) -> None:
    config = state_dir / "Corefile"
    config.write_text(corefile(kubeconfig, ready_port))
    daemons.spawn(COMPONENT, [binary, f"-conf={config}"], component="dns")
    daemons.wait(
        "CoreDNS ready (its kubernetes plugin synced)",
        lambda: _ready(ready_port),
        60,
        watch=[COMPONENT],
        component="dns",
    )


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False
