"""Starts, stops and reports a local multi-node Ray cluster on 127.0.0.1 for the e2e tier.

    python hack/local_ray.py start   [--workers 1] [--gcs-port 26379] [--dashboard-port 28265] ...
    python hack/local_ray.py status
    python hack/local_ray.py stop

Standard library only, so any python3 >= 3.11 runs it; the `ray` CLI comes from the Ray/vLLM venv
(`--venv`, else $RAYVLLM_RAY_VENV, else the venv of the interpreter running this script).

The shape mirrors what KubeRay builds for a VLLMCluster:
- a head node with no GPUs and no `rayvllm_engine_slots`, running GCS and the dashboard (the Job
  Submission API the operator talks to);
- worker nodes carrying the custom resource `rayvllm_engine_slots: 1`, which is where the operator
  places each vLLM API server entrypoint (`entrypoint_resources`), exactly as the GPU worker pods
  of the real cluster do.

Every port is set explicitly and away from Ray's defaults (6379, 8265, 10001, 52365, ...) so this
cluster can coexist with another Ray on the machine. Ray's own `ray stop` is never used: it kills
every Ray process of the machine by name. Instead every process this cluster starts inherits the
environment marker RAYVLLM_LOCAL_RAY=<temp dir>, and `stop` signals exactly the processes whose
environment carries it, or that descend from or share a session with this cluster's processes
(Ray's daemons, its workers and job entrypoints such as vLLM alike; see cluster_procs).

RAY_AUTH_MODE is always set explicitly: Ray 2.60 turns token auth on by default for a new local
cluster when it is unset. `--auth-token TOKEN` starts the cluster with RAY_AUTH_MODE=token (clients
then send `X-Ray-Authorization: Bearer TOKEN`); without it RAY_AUTH_MODE=disabled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

MARKER = "RAYVLLM_LOCAL_RAY"
ENGINE_SLOT_RESOURCE = "rayvllm_engine_slots"
STATE_FILE = "local_ray.json"
# Ray stores unix sockets under <temp dir>/session_*/sockets/; Linux caps socket paths at 107 bytes.
MAX_TEMP_DIR_LEN = 40


def log(msg: str) -> None:
    print(f"[local-ray {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Cluster:
    temp_dir: str
    gcs_port: int
    dashboard_port: int
    workers: int
    auth_token: str | None = None
    pids: list[int] = field(default_factory=list)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"


def ports(gcs_port: int, node: int) -> dict[str, int]:
    """Every port of node `node` (0 = head), derived from the GCS port so two clusters started
    with GCS ports 1000 apart never collide. Node i uses gcs_port+1000+100*i .. +99."""
    base = gcs_port + 1000 + 100 * node
    return {
        "node-manager-port": base,
        "object-manager-port": base + 1,
        "dashboard-agent-listen-port": base + 2,
        "dashboard-agent-grpc-port": base + 3,
        "metrics-export-port": base + 4,
        "runtime-env-agent-port": base + 5,
        "min-worker-port": base + 10,
        "max-worker-port": base + 99,
    }


def ray_bin(venv: str | None) -> Path:
    root = venv or os.environ.get("RAYVLLM_RAY_VENV")
    path = Path(root) / "bin" / "ray" if root else Path(sys.executable).parent / "ray"
    if not path.exists():
        sys.exit(f"local_ray: no `ray` CLI at {path}; build the venv with hack/ray-env.sh and pass --venv")
    return path


# The caller's values of these would point the nodes at another cluster or another auth mode. Other
# RAY_* variables pass through (e.g. RAY_JOB_START_TIMEOUT_SECONDS for a test that wants it short).
CALLER_RAY_ENV_DROPPED = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
)


def node_env(cluster: Cluster, ray: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CALLER_RAY_ENV_DROPPED}
    env[MARKER] = cluster.temp_dir
    # Job entrypoints run `python ...` through the shell; in the real image that is the image's
    # Python with Ray and vLLM, here it must be the venv's.
    env["PATH"] = f"{ray.parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    # Ray rewrites 127.0.0.1 to the machine's outward IP unless it believes it is a single-machine
    # (Windows/macOS) install; this switch is how it decides. Everything here must stay on
    # loopback. Workers need a launcher to start at all with it (WORKER_LAUNCHER).
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if cluster.auth_token:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = cluster.auth_token
    else:
        env["RAY_AUTH_MODE"] = "disabled"
    return env


# `ray start` for a worker. Ray replaces 127.0.0.1 in --address and --node-ip-address by the
# machine's outward IP (services.resolve_ip_for_localhost) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
# is 0 (see node_env), but the head binds to 127.0.0.1 only, so a rewritten address never reaches
# the GCS. With that switch at 0, `ray start --address` refuses to start a worker ("Multi-node Ray
# clusters are not supported on Windows and OSX"), so the launching process alone flips the switch
# back and skips the rewrite. Its children (raylet, dashboard agent, workers) keep the variable and
# resolve 127.0.0.1 to 127.0.0.1 on their own; without it the worker's dashboard agent dials the
# outward IP and hangs, and with it GET /api/jobs/<id>/logs.
WORKER_LAUNCHER = (
    "import sys; import ray._private.ray_constants as c, ray._private.services as s; "
    "c.ENABLE_RAY_CLUSTER = True; s.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)


def start_node(ray: Path, cluster: Cluster, node: int, args: argparse.Namespace) -> int:
    cmd = [str(ray)] if node == 0 else [str(ray.parent / "python"), "-c", WORKER_LAUNCHER]
    cmd += ["start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    cmd += [f"--{name}={value}" for name, value in ports(cluster.gcs_port, node).items()]
    cmd.append(f"--object-store-memory={args.object_store_mb * 1024 * 1024}")
    if node == 0:
        cmd += [
            "--head",
            f"--port={cluster.gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={cluster.dashboard_port}",
            f"--ray-client-server-port={cluster.gcs_port + 50}",
            f"--temp-dir={cluster.temp_dir}",
            "--num-gpus=0",
            f"--num-cpus={args.head_cpus}",
        ]
    else:
        cmd += [
            f"--address={cluster.gcs_address}",
            # The head's temp dir, not one per node: a worker's dashboard agent reads job logs
            # from the session dir it learns from the GCS, i.e. the head's. On Kubernetes every pod
            # has its own /tmp/ray at the same path; on one machine they must share it.
            f"--temp-dir={cluster.temp_dir}",
            "--num-gpus=0",
            f"--num-cpus={args.worker_cpus}",
            f"--resources={json.dumps({ENGINE_SLOT_RESOURCE: 1})}",
        ]
    log_path = Path(cluster.temp_dir) / f"node-{node}.log"
    with log_path.open("ab") as out:
        # A session of its own: a Ctrl-C in the caller's terminal must not reach the cluster.
        proc = subprocess.Popen(
            cmd, env=node_env(cluster, ray), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    log(f"node {node} ({'head' if node == 0 else 'worker'}) pid {proc.pid}, log {log_path}")
    LAUNCHED[proc.pid] = proc
    return proc.pid


# The `ray start` processes this invocation launched, to report how one died.
LAUNCHED: dict[int, subprocess.Popen[bytes]] = {}


def death_note(cluster: Cluster, node: int) -> str:
    pid = cluster.pids[node] if node < len(cluster.pids) else None
    proc = LAUNCHED.get(pid) if pid is not None else None
    code = proc.poll() if proc is not None else None
    how = (
        "still running"
        if code is None
        else (f"killed by signal {-code}" if code < 0 else f"exit code {code}")
    )
    try:
        tail = (Path(cluster.temp_dir) / f"node-{node}.log").read_text(errors="replace").splitlines()[-15:]
    except OSError:
        tail = []
    return f"node {node} `ray start` {how}; last lines of its log:\n" + "\n".join(tail)


def http_get(cluster: Cluster, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
    req = urllib.request.Request(cluster.dashboard_url + path)
    if cluster.auth_token:
        req.add_header("X-Ray-Authorization", f"Bearer {cluster.auth_token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())
    except (OSError, urllib.error.URLError):
        return 0, b""


def alive_nodes(cluster: Cluster) -> list[dict[str, object]]:
    code, body = http_get(cluster, "/api/v0/nodes?limit=1000&filters=state%3DALIVE")
    if code != 200:
        return []
    try:
        result = json.loads(body)["data"]["result"]["result"]
    except (ValueError, KeyError, TypeError):
        return []
    return list(result)


def head_agent_ready(cluster: Cluster) -> bool:
    """The Job API submits through the head node's dashboard agent; until that agent has
    registered, POST /api/jobs/ answers 500 'No available agent'. Its HTTP port is ours to know."""
    port = ports(cluster.gcs_port, 0)["dashboard-agent-listen-port"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/healthz", timeout=3.0) as resp:
            return int(resp.status) == 200
    except (OSError, urllib.error.URLError):
        return False


def wait_ready(cluster: Cluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    want = 1 + cluster.workers
    last = ""
    while time.monotonic() < deadline:
        dead = [node for node, pid in enumerate(cluster.pids) if not pid_alive(pid)]
        if dead:
            notes = "\n".join(death_note(cluster, node) for node in dead)
            raise SystemExit(f"local_ray: a node's `ray start` exited:\n{notes}")
        code, _ = http_get(cluster, "/api/gcs_healthz")
        nodes = alive_nodes(cluster) if code == 200 else []
        agent = head_agent_ready(cluster) if nodes else False
        state = f"gcs_healthz={code} alive_nodes={len(nodes)}/{want} head_agent={agent}"
        if state != last:
            log(state)
            last = state
        if code == 200 and len(nodes) >= want and agent:
            return
        time.sleep(1.0)
    notes = "\n".join(death_note(cluster, node) for node in range(len(cluster.pids)))
    raise SystemExit(f"local_ray: not ready after {timeout:.0f}s ({last}):\n{notes}")


@dataclass
class Proc:
    pid: int
    ppid: int
    sid: int
    state: str
    start: int  # clock ticks since boot: tells a reused pid apart


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may itself contain spaces or parentheses.
    fields = stat.rsplit(")", 1)[1].split()
    return Proc(pid=pid, ppid=int(fields[1]), sid=int(fields[3]), state=fields[0], start=int(fields[19]))


def pid_alive(pid: int) -> bool:
    proc = read_proc(pid)
    # A zombie is gone for our purposes; its parent (often init) reaps it.
    return proc is not None and proc.state != "Z"


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def has_marker(pid: int, temp_dir: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARKER}={temp_dir}".encode() in environ.split(b"\0")


def cluster_procs(cluster: Cluster, known: dict[int, int]) -> dict[int, int]:
    """Every live process of this cluster, as {pid: start}.

    Three overlapping ways in, because each misses something:
    - the sessions of the `ray start` processes (start_new_session): Ray's daemons stay in them
      even once orphaned, but job entrypoints get sessions of their own;
    - descendants (by parent pid) of anything already found, and anything sharing a session with
      it: catches job entrypoints (vLLM) and their children, including orphans of a killed driver;
    - the RAYVLLM_LOCAL_RAY marker in the environment: catches orphans whose parents died
      earlier; useless on its own, since Ray's and vLLM's setproctitle() overwrite /proc/<pid>/environ.
    `known` carries what earlier scans found, so processes orphaned by our own SIGTERMs stay found.
    """
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            proc = read_proc(int(entry.name))
            if proc is not None and proc.state != "Z":
                procs[proc.pid] = proc
    found = {pid: p.start for pid, p in procs.items() if known.get(pid) == p.start}
    found |= {pid: procs[pid].start for pid in cluster.pids if pid in procs}
    found |= {pid: p.start for pid, p in procs.items() if p.sid in cluster.pids}
    found |= {pid: p.start for pid, p in procs.items() if has_marker(pid, cluster.temp_dir)}
    while True:
        sids = {procs[pid].sid for pid in found} - {os.getsid(0)}
        more = {
            pid: p.start
            for pid, p in procs.items()
            if pid not in found and (p.ppid in found or p.sid in sids)
        }
        if not more:
            return found
        found |= more


def load_state(temp_dir: str) -> Cluster | None:
    path = Path(temp_dir) / STATE_FILE
    if not path.exists():
        return None
    return Cluster(**json.loads(path.read_text()))


def save_state(cluster: Cluster) -> None:
    (Path(cluster.temp_dir) / STATE_FILE).write_text(json.dumps(asdict(cluster), indent=2))


def default_temp_dir(args: argparse.Namespace) -> str:
    return str(args.temp_dir or f"/tmp/rayvllm-ray-{args.gcs_port}")


def cmd_start(args: argparse.Namespace) -> int:
    temp_dir = default_temp_dir(args)
    if len(temp_dir) > MAX_TEMP_DIR_LEN:
        sys.exit(
            f"local_ray: --temp-dir {temp_dir!r} is longer than {MAX_TEMP_DIR_LEN} chars "
            "(Ray's unix socket paths under it would exceed the kernel's 107-byte limit)"
        )
    existing = load_state(temp_dir)
    if existing and cluster_procs(existing, {}):
        if len(alive_nodes(existing)) == 1 + existing.workers:
            log(f"already running (temp dir {temp_dir})")
            print(existing.dashboard_url)
            return 0
        log("found leftovers of an earlier cluster that is not healthy; stopping them first")
        stop(existing, args.stop_timeout)

    ray = ray_bin(args.venv)
    Path(temp_dir).mkdir(parents=True, exist_ok=True)
    cluster = Cluster(
        temp_dir=temp_dir,
        gcs_port=args.gcs_port,
        dashboard_port=args.dashboard_port,
        workers=args.workers,
        auth_token=args.auth_token,
    )
    started = time.monotonic()
    cluster.pids.append(start_node(ray, cluster, 0, args))
    save_state(cluster)
    # Workers need the GCS; `ray start --address` retries on its own, but a head that failed to
    # start would leave them retrying for minutes, so wait for it first.
    deadline = time.monotonic() + args.timeout
    while http_get(cluster, "/api/gcs_healthz")[0] != 200:
        if time.monotonic() > deadline or not pid_alive(cluster.pids[0]):
            note = death_note(cluster, 0)
            stop(cluster, args.stop_timeout)
            sys.exit(f"local_ray: head did not come up: {note}")
        time.sleep(0.5)
    for node in range(1, args.workers + 1):
        cluster.pids.append(start_node(ray, cluster, node, args))
    save_state(cluster)
    try:
        wait_ready(cluster, max(1.0, deadline - time.monotonic()))
    except SystemExit:
        stop(cluster, args.stop_timeout)
        raise
    log(
        f"ready in {time.monotonic() - started:.1f}s: head + {args.workers} worker(s), "
        f"GCS {cluster.gcs_address}, RAY_AUTH_MODE={'token' if args.auth_token else 'disabled'}"
    )
    log(f"dashboard {cluster.dashboard_url}")
    print(cluster.dashboard_url)
    return 0


def stop(cluster: Cluster, timeout: float) -> bool:
    """SIGTERM the whole cluster, SIGKILL what is left after `timeout`; rescans every half second,
    as raylets may spawn workers while they are being torn down."""
    deadline = time.monotonic() + timeout
    known: dict[int, int] = {}
    killing = False
    while True:
        known = cluster_procs(cluster, known)
        if not known:
            return True
        if not killing and time.monotonic() > deadline:
            log(
                f"{len(known)} process(es) outlived SIGTERM by {timeout:.0f}s, sending SIGKILL: "
                + ", ".join(f"{pid} {comm(pid)}" for pid in known)
            )
            killing = True
        if killing and time.monotonic() > deadline + 15:
            log(f"processes survive SIGKILL: {sorted(known)}")
            return False
        for pid in known:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if killing else signal.SIGTERM)
            # Reap our own children (the `ray start` processes) so they do not linger as zombies.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.5)


def cmd_stop(args: argparse.Namespace) -> int:
    temp_dir = default_temp_dir(args)
    cluster = load_state(temp_dir)
    if cluster is None:
        log(f"no cluster state in {temp_dir}; nothing to stop")
        return 0
    running = cluster_procs(cluster, {})
    if not running:
        log(f"nothing running for {temp_dir}")
        return 0
    log(f"stopping {len(running)} process(es) of {temp_dir}")
    ok = stop(cluster, args.stop_timeout)
    log("stopped" if ok else "some processes survived")
    return 0 if ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    temp_dir = default_temp_dir(args)
    cluster = load_state(temp_dir)
    pids = cluster_procs(cluster, {}) if cluster else {}
    if cluster is None or not pids:
        print(json.dumps({"running": False, "temp_dir": temp_dir, "processes": len(pids)}))
        return 1
    nodes = alive_nodes(cluster)
    print(
        json.dumps(
            {
                "running": bool(nodes),
                "temp_dir": temp_dir,
                "dashboard_url": cluster.dashboard_url,
                "gcs_address": cluster.gcs_address,
                "auth": "token" if cluster.auth_token else "disabled",
                "processes": len(pids),
                "nodes": [
                    {
                        "node_id": n.get("node_id"),
                        "is_head": n.get("is_head_node"),
                        "resources": n.get("resources_total"),
                    }
                    for n in nodes
                ],
            },
            indent=2,
        )
    )
    return 0 if nodes else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--venv", help="Ray/vLLM venv (default: $RAYVLLM_RAY_VENV or this interpreter's)")
    parser.add_argument("--gcs-port", type=int, default=26379)
    parser.add_argument("--dashboard-port", type=int, default=28265)
    parser.add_argument("--temp-dir", help="default /tmp/rayvllm-ray-<gcs-port>; keep it short")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--head-cpus",
        type=int,
        default=0,
        help="logical CPUs of the head (0, like a KubeRay head that runs no work)",
    )
    parser.add_argument("--worker-cpus", type=int, default=2, help="logical CPUs of each worker")
    parser.add_argument("--object-store-mb", type=int, default=128)
    parser.add_argument("--auth-token", help="start with RAY_AUTH_MODE=token and this token")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for readiness")
    # Short: a raylet drains for up to 30 s on SIGTERM, which buys nothing in a throwaway cluster.
    parser.add_argument("--stop-timeout", type=float, default=5, help="seconds between SIGTERM and SIGKILL")
    args = parser.parse_args()
    return {"start": cmd_start, "stop": cmd_stop, "status": cmd_status}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
