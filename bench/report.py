"""The results table: one markdown table, a column per (run label, N), from one or more results files.

python -m bench.report before.json after.json     # a before/after table from two runs
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Run = dict[str, Any]
NONE = "-"  # a cell with nothing measured
Row = tuple[str, Callable[[Run], str]]


def _get(run: Run, *path: str) -> Any:
    value: Any = run
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _latency(*path: str, full: bool = False) -> Callable[[Run], str]:
    def cell(run: Run) -> str:
        s = _get(run, *path)
        if not s or "p50_ms" not in s:
            return NONE
        text = f"{s['p50_ms']:.0f} / {s['p99_ms']:.0f}" + (f" / {s['max_ms']:.0f}" if full else "")
        if s.get("expected") is not None and s["n"] < s["expected"]:
            text += f" (only {s['n']}/{s['expected']})"
        return text

    return cell


def _samples(path: str, key: str) -> Callable[[Run], str]:
    def cell(run: Run) -> str:
        items = _get(run, "healthy", path) or []
        values = [i[key] for i in items if i.get(key) is not None]
        failed = len(items) - len(values)
        if not values:
            return NONE if not items else f"{failed} timed out"
        text = f"{statistics.median(values):.0f} / {max(values):.0f}"
        return text + (f" ({failed} timed out)" if failed else "")

    return cell


def _value(*path: str, unit: str = "") -> Callable[[Run], str]:
    def cell(run: Run) -> str:
        v = _get(run, *path)
        return NONE if v is None else f"{v}{unit}"

    return cell


def _usage(phase: str, process: str) -> Callable[[Run], str]:
    def cell(run: Run) -> str:
        u = _get(run, phase, "steady", "usage", process)
        return (
            NONE if not u else f"{u['cpu_percent']:.1f}% / {u['rss_mean_mib']:.0f} / {u['rss_max_mib']:.0f}"
        )

    return cell


def _phases(phase: str) -> Callable[[Run], str]:
    def cell(run: Run) -> str:
        p = _get(run, phase, "steady", "phases_at_start") or {}
        if not p:
            return NONE
        degraded = _get(run, phase, "steady", "degraded_condition_at_start")
        text = ", ".join(f"{k} {v}" for k, v in sorted(p.items()))
        return text + ("" if degraded is None else f"; Degraded=True {degraded}")

    return cell


def _write_rows(runs: Sequence[Run], phase: str, who: str) -> list[Row]:
    keys = sorted(
        {
            k
            for r in runs
            for k in (_get(r, phase, "steady", f"{who}_writes_per_object_minute") or {})
            if k not in ("total", "failed")
        }
    )
    rows: list[Row] = [
        (
            f"{phase} steady: {who} writes / object / min, total",
            _value(phase, "steady", f"{who}_writes_per_object_minute", "total"),
        )
    ]
    rows += [
        (f"{phase} steady: … {k}", _value(phase, "steady", f"{who}_writes_per_object_minute", k, unit=""))
        for k in keys
    ]
    rows.append(
        (
            f"{phase} steady: … failed (HTTP >= 400)",
            _value(phase, "steady", f"{who}_writes_per_object_minute", "failed"),
        )
    )
    return rows


def rows(runs: Sequence[Run]) -> list[Row]:
    table: list[Row] = [
        (
            "healthy: `kubectl create` of N VLLMClusters (s)",
            _value("healthy", "burst", "kubectl_create_seconds"),
        ),
        ("healthy: burst start → all settled (s)", _value("healthy", "settled_after_burst_seconds")),
        ("healthy: burst start → quiet (s)", _value("healthy", "quiet_after_burst_seconds")),
        (
            "ours: VLLMCluster → its RayCluster, p50 / p99 (ms)",
            _latency("healthy", "latency", "ours_vllmcluster_to_raycluster"),
        ),
        (
            "ours: VLLMCluster → its Service, p50 / p99 (ms)",
            _latency("healthy", "latency", "ours_vllmcluster_to_service"),
        ),
        (
            "ours: burst start → RayCluster, p50 / p99 / max (ms)",
            _latency("healthy", "latency", "ours_burst_start_to_raycluster", full=True),
        ),
        (
            "KubeRay beside ours: RayCluster → first pod, p50 / p99 (ms)",
            _latency("healthy", "latency", "kuberay_raycluster_to_first_pod"),
        ),
        ("floor: `kubectl create` of N RayClusters (s)", _value("floor", "burst", "kubectl_create_seconds")),
        (
            "floor: burst start → RayCluster, p50 / p99 / max (ms)",
            _latency("floor", "latency", "floor_burst_start_to_raycluster", full=True),
        ),
        (
            "floor: KubeRay RayCluster → first pod, p50 / p99 (ms)",
            _latency("floor", "latency", "kuberay_raycluster_to_first_pod"),
        ),
        (
            "edit spec → RayCluster new generation, median / max (ms)",
            _samples("edits", "from_vllmcluster_ms"),
        ),
        ("Service deleted → recreated, median / max (ms)", _samples("recreate_service", "from_deleted_ms")),
        (
            "RayCluster deleted → recreated, median / max (ms)",
            _samples("recreate_raycluster", "from_deleted_ms"),
        ),
    ]
    for phase in ("healthy", "degraded"):
        table.append((f"{phase} steady: phases at window start", _phases(phase)))
        table += _write_rows(runs, phase, "operator")
        table.append(
            (f"{phase} steady: operator CPU % of a core / RSS mean / max (MiB)", _usage(phase, "operator"))
        )
        table.append(
            (
                f"{phase} steady: KubeRay writes / object / min",
                _value(phase, "steady", "kuberay_writes_per_object_minute", "total"),
            )
        )
        table.append((f"{phase} steady: KubeRay CPU % / RSS mean / max (MiB)", _usage(phase, "kuberay")))
        table.append(
            (f"{phase} steady: kube-apiserver CPU % / RSS mean / max (MiB)", _usage(phase, "kube-apiserver"))
        )
        table.append((f"{phase} steady: machine load average 1 / 5 min at the end", _load(phase)))
        table.append(
            (
                f"{phase}: delete all N → finalizers released (s)",
                _value(phase, "delete_all", "all_vllmclusters_deleted_seconds"),
            )
        )
    table += [
        ("peak RSS: operator / kube-apiserver / etcd / KubeRay (MiB)", _peaks),
        ("peak RSS of the benchmark process (MiB)", _value("bench_peak_rss_mib")),
        ("machine: lowest MemAvailable during the run (MiB)", _value("min_mem_available_mib")),
        ("run wall time (s)", _value("wall_seconds")),
        ("error", lambda r: str(r.get("error", "")) or "none"),
    ]
    return table


def _load(phase: str) -> Callable[[Run], str]:
    def cell(run: Run) -> str:
        load = _get(run, phase, "steady", "load_average_at_end")
        return NONE if not load else f"{load[0]:.1f} / {load[1]:.1f}"

    return cell


def _peaks(run: Run) -> str:
    peaks = run.get("peak_rss_mib") or {}
    return " / ".join(
        f"{peaks[k]:.0f}" if k in peaks else NONE for k in ("operator", "kube-apiserver", "etcd", "kuberay")
    )


def markdown(results: Sequence[dict[str, Any]]) -> str:
    columns = [(res.get("label", "?"), run) for res in results for run in res.get("runs", [])]
    runs = [run for _, run in columns]
    header = "| metric | " + " | ".join(f"{label} N={run['n']}" for label, run in columns) + " |"
    lines = [header, "|---|" + "---|" * len(columns)]
    for name, cell in rows(runs):
        lines.append(f"| {name} | " + " | ".join(cell(run) for run in runs) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    print(markdown([json.loads(Path(p).read_text()) for p in argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
