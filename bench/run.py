"""One benchmark run: for each N a fresh loopback cluster, the operator under test started on it, the phases
measured, and the cluster torn down whatever happens (also on Ctrl-C or SIGTERM)."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from bench import manifests, phases, report
from bench.audit import AuditLog, kuberay
from bench.context import Context
from bench.operator import FIXED_ENV, Operator, environment_overrides
from bench.procstat import Sampler
from bench.testbed import OPERATOR_NAMESPACE, Checkout, Testbed
from hack.localcluster.procs import REPO, log

DEFAULT_STATE = Path("/tmp/rayvllm-bench")
# Far from the default cluster's 26400-26414.
DEFAULT_PORT_BASE = 27400
TEARDOWN_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000], help="object counts, one run each")
    parser.add_argument("--steady-seconds", type=float, default=120, help="each steady-state window")
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=30,
        help="no VLLMCluster change this long before a steady window",
    )
    parser.add_argument("--edits", type=int, default=3, help="objects edited one after another")
    parser.add_argument("--recreations", type=int, default=3, help="Services and RayClusters deleted, each")
    parser.add_argument("--quick", action="store_true", help="N=20, 30 s windows, 20 s settle: a smoke run")
    parser.add_argument(
        "--operator-root", type=Path, default=REPO / "operator", help="the operator source root"
    )
    parser.add_argument("--label", default=None, help="names this run in the table (default: the commit)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: STATE/results.json)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    parser.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE)
    parser.add_argument("--max-minutes", type=float, default=240, help="hard limit of the whole run")
    args = parser.parse_args(argv)
    if args.quick:
        # Settling must outlast one resync period (15 s, +20% jitter) to see the objects' last transitions.
        args.n, args.steady_seconds, args.settle_seconds = [20], 30.0, 20.0
    if args.out is None:
        args.out = args.state_dir / "results.json"
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Unwinds like Ctrl-C, through every `finally` that stops the operator and tears the cluster down.
    raise KeyboardInterrupt(f"signal {signum}")


def run_n(args: argparse.Namespace, checkout: Checkout, n: int, deadline: float) -> dict[str, Any]:
    started = time.monotonic()
    testbed = Testbed(args.state_dir, args.port_base)
    workdir = args.state_dir / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    operator: Operator | None = None
    sampler: Sampler | None = None
    result: dict[str, Any] = {"n": n}
    try:
        testbed.up(n, checkout)
        identity = testbed.grant_operator(checkout)
        operator = Operator(
            checkout.operator_root, identity.kubeconfig, args.state_dir / "logs" / f"operator-{n}.log"
        )
        result["operator_module"] = operator.check_import()
        live = operator  # for the sampler's closure: the operator's pid while it runs

        def pids() -> dict[str, int]:
            found = testbed.daemon_pids()
            if live.pid is not None:
                found["operator"] = live.pid
            return found

        sampler = Sampler(pids)
        sampler.start()
        operator.start()
        ctx = Context(
            testbed=testbed,
            endpoint=testbed.endpoint(),
            audit=AuditLog(testbed.audit_log.path),
            sampler=sampler,
            operator=operator,
            operator_user=identity.username,
            sample=manifests.load_sample(
                checkout.root if (checkout.root / manifests.SAMPLE).exists() else REPO
            ),
            n=n,
            steady_seconds=args.steady_seconds,
            settle_seconds=args.settle_seconds,
            edits=args.edits,
            recreations=args.recreations,
            deadline=deadline,
            workdir=workdir,
        )
        result["warmup"] = phases.warmup(ctx)
        result["healthy"], template = phases.healthy(ctx)
        result["degraded"] = phases.degraded(ctx)
        operator.stop()
        if template is not None:
            result["floor"] = phases.floor(ctx, template)
        result["kuberay_user_agents"] = sorted(
            {w.agent.split(" ")[0] for w in ctx.audit.read() if kuberay(w)}
        )
    except Exception as exc:  # the other N still run; the error is in the results
        log("bench", f"N={n} failed: {exc!r}")
        result["error"] = repr(exc)
        if operator is not None:
            result["operator_log_tail"] = operator.log_tail()
    finally:
        # A second Ctrl-C or SIGTERM must not cut the teardown short: they wait until it is done.
        signal.pthread_sigmask(signal.SIG_BLOCK, TEARDOWN_SIGNALS)
        if operator is not None:
            operator.stop()
        if sampler is not None:
            sampler.stop()
            result["peak_rss_mib"] = {k: round(v / 2**20, 1) for k, v in sorted(sampler.peak_rss.items())}
            result["min_mem_available_mib"] = round(sampler.min_available / 2**20)
        # The benchmark process itself (its watches' records and the parsed audit log), not its children.
        result["bench_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        testbed.down()
        result["wall_seconds"] = round(time.monotonic() - started, 1)
        print(
            f"[bench] N={n}: cluster torn down after {result['wall_seconds']:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        signal.pthread_sigmask(signal.SIG_UNBLOCK, TEARDOWN_SIGNALS)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _terminate)
    checkout = Checkout(args.operator_root.resolve())
    started = time.monotonic()
    deadline = started + args.max_minutes * 60
    results: dict[str, Any] = {
        "label": args.label or _default_label(checkout.describe()),
        "checkout": checkout.describe(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "operator_env": {**environment_overrides(), **FIXED_ENV},
        "operator_namespace": OPERATOR_NAMESPACE,
        "machine": {"cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "runs": [],
    }
    lock = _lock(args.state_dir)
    try:
        for n in args.n:
            results["runs"].append(run_n(args, checkout, n, deadline))
            _write(args.out, results, started)
    except KeyboardInterrupt:
        log("bench", "interrupted (the cluster was torn down); partial results kept")
        _write(args.out, results, started)
        return 130
    finally:
        lock.close()
    table = report.markdown([results])
    print(table)
    log("bench", f"results: {args.out}; total {time.monotonic() - started:.0f}s")
    return 1 if any("error" in r for r in results["runs"]) else 0


def _lock(state_dir: Path) -> TextIO:
    """One benchmark per state directory: a second one would tear the first one's cluster down (its `up`
    stops what the pid files name) and share its ports."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = (state_dir / "bench.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(
            f"another benchmark runs in {state_dir}: give this one --state-dir and --port-base"
        ) from None
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _default_label(described: dict[str, Any]) -> str:
    """The commit, marked when the operator's tree has uncommitted changes (numbers of a work in progress)."""
    label = str(described.get("commit") or "unknown")[:7]
    return label + ("+modified" if described.get("operator_tree_modified") else "")


def _write(path: Path, results: dict[str, Any], started: float) -> None:
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    results["table"] = report.markdown([results])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
