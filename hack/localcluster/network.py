"""The cluster's network on this machine: one Linux bridge that carries the real node's pods, the node's own
address (the API server, kubelet and CoreDNS listen there for pods), and routes that keep every cluster
range on this machine.

Safety, found the hard way: a ClusterIP dialled before kube-proxy had written its rules left through the
default route. So the Service and pod ranges are routed onto the bridge, kwok's fake ranges are routed
`unreachable`, and an nftables table counts and drops any packet of those ranges on the external
interface; `guard_counters()` reads its counters and the test session fails when they are not 0.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from hack.localcluster.procs import CommandError, log, run

BRIDGE = "rvbr0"
NODE_IP = "10.88.0.1"
POD_CIDR = "10.88.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
API_SERVICE_IP = "10.96.0.1"
# kwok invents these addresses for its fake pods and nodes: nothing answers there, so nothing may try.
FAKE_POD_CIDR = "10.244.0.0/16"
FAKE_NODE_CIDR = "10.250.0.0/16"
FAKE_NODE_IP = "10.250.0.1"
CLUSTER_RANGES = (POD_CIDR, SERVICE_CIDR, FAKE_POD_CIDR, FAKE_NODE_CIDR)
GUARD_TABLE = "rayvllm_guard"
SYSCTLS = {
    # Pods reach Services and the node through the host's routing.
    "net/ipv4/ip_forward": "1",
    # Replies between two pods of the bridge must pass kube-proxy's conntrack (Service hairpin).
    "net/bridge/bridge-nf-call-iptables": "1",
}


def _ip(*args: str, check: bool = True) -> str:
    return run(["ip", *args], check=check).stdout


def external_interfaces() -> list[str]:
    """The interfaces of the machine's default routes: where no cluster packet may ever go."""
    routes = json.loads(_ip("-j", "route", "show", "default") or "[]")
    return sorted({r["dev"] for r in routes if "dev" in r})


@dataclass(frozen=True)
class Network:
    state_dir: Path

    @property
    def _sysctl_backup(self) -> Path:
        return self.state_dir / "sysctl-before.json"

    @property
    def _tables_backup(self) -> Path:
        return self.state_dir / "nft-tables-before.json"

    def up(self) -> None:
        if not self._tables_backup.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._tables_backup.write_text(json.dumps(_nft_tables()))
        if not _ip("link", "show", BRIDGE, check=False):
            _ip("link", "add", BRIDGE, "type", "bridge")
        addresses = _ip("-4", "-o", "addr", "show", "dev", BRIDGE)
        if f"{NODE_IP}/" not in addresses:
            _ip("addr", "add", f"{NODE_IP}/16", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        _ip("route", "replace", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP)
        for fake in (FAKE_POD_CIDR, FAKE_NODE_CIDR):
            _ip("route", "replace", "unreachable", fake)
        self._set_sysctls()
        self._guard()
        log(
            "network",
            f"bridge {BRIDGE} {NODE_IP}; routes: {POD_CIDR} {SERVICE_CIDR} on it, kwok ranges unreachable",
        )

    def down(self) -> None:
        for fake in (FAKE_POD_CIDR, FAKE_NODE_CIDR):
            _ip("route", "del", "unreachable", fake, check=False)
        _ip("route", "del", SERVICE_CIDR, check=False)
        if _ip("link", "show", BRIDGE, check=False):
            _ip("link", "del", BRIDGE)
        run(["nft", "delete", "table", "inet", GUARD_TABLE], check=False)
        self._drop_new_empty_tables()
        self._restore_sysctls()

    def _drop_new_empty_tables(self) -> None:
        """kube-proxy's iptables (the nf_tables backend) creates the ip/ip6 filter, nat and mangle tables;
        `kube-proxy --cleanup` empties but keeps them. Those that were not there before `up` and hold no
        rule any more go too."""
        if not self._tables_backup.exists():
            return
        before = {tuple(t) for t in json.loads(self._tables_backup.read_text())}
        for family, name in _nft_tables():
            if (family, name) in before:
                continue
            listing = run(["nft", "list", "table", family, name], check=False).stdout
            rules = [line for line in listing.splitlines() if line.strip() and not _structural(line)]
            if not rules:
                run(["nft", "delete", "table", family, name], check=False)
        self._tables_backup.unlink()

    def _set_sysctls(self) -> None:
        if not self._sysctl_backup.exists():
            before = {key: Path("/proc/sys", key).read_text().strip() for key in SYSCTLS}
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._sysctl_backup.write_text(json.dumps(before))
        for key, value in SYSCTLS.items():
            Path("/proc/sys", key).write_text(value)

    def _restore_sysctls(self) -> None:
        if self._sysctl_backup.exists():
            for key, value in json.loads(self._sysctl_backup.read_text()).items():
                with contextlib.suppress(OSError):
                    Path("/proc/sys", key).write_text(value)
            self._sysctl_backup.unlink()

    def _guard(self) -> None:
        external = external_interfaces()
        if not external:
            raise CommandError("no default route: cannot tell which interface to guard")
        ifaces = "{ " + ", ".join(f'"{i}"' for i in external) + " }"
        ranges = "{ " + ", ".join(CLUSTER_RANGES) + " }"
        # Each dropped packet is also logged (kernel log, rate-limited), so a leak names its addresses.
        log = 'log prefix "rayvllm-guard: " level warn'
        ruleset = f"""
table inet {GUARD_TABLE} {{
  counter leaked_out {{ }}
  counter leaked_in {{ }}
  counter refused_egress {{ }}
  chain forward {{
    # Pods have no way beyond this machine: what they send to any address outside the cluster's ranges
    # is refused right at the bridge (a reset, so the caller fails at once), counted and logged.
    type filter hook forward priority -300; policy accept;
    iifname "{BRIDGE}" ip daddr != {ranges} counter name refused_egress log prefix "rayvllm-egress: " level warn meta l4proto tcp reject with tcp reset
    iifname "{BRIDGE}" ip daddr != {ranges} counter name refused_egress log prefix "rayvllm-egress: " level warn reject with icmpx type admin-prohibited
  }}
  chain out {{
    type filter hook postrouting priority -300; policy accept;
    oifname {ifaces} ip daddr {ranges} counter name leaked_out {log} drop
    oifname {ifaces} ip saddr {ranges} counter name leaked_out {log} drop
  }}
  chain in {{
    type filter hook prerouting priority -300; policy accept;
    iifname {ifaces} ip saddr {ranges} counter name leaked_in {log} drop
    iifname {ifaces} ip daddr {ranges} counter name leaked_in {log} drop
  }}
}}
"""
        run(["nft", "delete", "table", "inet", GUARD_TABLE], check=False)
        run(["nft", "-f", "-"], stdin=ruleset)


def _nft_tables() -> list[tuple[str, str]]:
    out = run(["nft", "list", "tables"], check=False).stdout
    return [(parts[1], parts[2]) for parts in (line.split() for line in out.splitlines()) if len(parts) == 3]


def _structural(line: str) -> bool:
    """A line of `nft list table` that declares structure (table, chain, hook, braces), not a rule."""
    text = line.strip()
    return text.startswith(("table ", "chain ", "type ", "policy ", "}", "#")) or text == "{"


def guard_counters() -> dict[str, int]:
    """Packets of the cluster's ranges seen (and dropped) on the external interface since `up`
    (`leaked_out`, `leaked_in`: must stay 0), and pod packets to outside addresses refused at the bridge
    (`refused_egress`: third-party code in the images probing e.g. a cloud metadata address)."""
    out = run(["nft", "list", "counters", "table", "inet", GUARD_TABLE]).stdout
    counts = {name: int(value) for name, value in re.findall(r"counter (\w+) \{\s*packets (\d+)", out)}
    if set(counts) != {"leaked_out", "leaked_in", "refused_egress"}:
        raise CommandError(f"the network guard's counters are not all there: {out!r}")
    return counts


def leftovers() -> list[str]:
    """What of the cluster's network is still on this machine (empty after a clean `down`)."""
    found: list[str] = []
    if _ip("link", "show", BRIDGE, check=False):
        found.append(f"bridge {BRIDGE}")
    links = _ip("-o", "link", "show", check=False)
    found += [f"link {m}" for m in re.findall(r"^\d+: (veth\w+)@", links, flags=re.M)]
    routes = _ip("route", "show", "table", "all", check=False)
    prefixes = tuple(cidr.split("/")[0].rsplit(".", 2)[0] for cidr in CLUSTER_RANGES)
    found += [f"route {line}" for line in routes.splitlines() if any(p + "." in line for p in prefixes)]
    netns = _ip("netns", "list", check=False)
    found += [f"netns {line.split()[0]}" for line in netns.splitlines() if line.startswith("cni-")]
    ruleset = run(["nft", "list", "ruleset"], check=False).stdout
    found += [
        f"nft {m}" for m in re.findall(r"(table inet rayvllm_guard|chain (?:KUBE|CNI)-[\w-]+)", ruleset)
    ]
    return found
