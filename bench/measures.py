"""The measuring steps the phases are made of: reading the recorded watch events, a burst, settling, a
steady-state window, an edit, a recreated child, deleting everything; each bounded by its own timeout and
the run's deadline."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench import manifests
from bench.audit import by_user, kuberay, per_object_minute
from bench.context import Context
from bench.manifests import Manifest
from bench.stats import summary
from bench.watch import Recorder, Seen
from hack.localcluster.procs import log, wait_for

OURS = "VLLMCluster/"
# The operator's default resync period bounds how soon it notices a deleted child it does not watch.
RESYNC_SECONDS = 15.0


# ---- reading the recorded events ----------------------------------------------------------------------


def first_added(
    history: Sequence[Seen], key: Callable[[Seen], str | None] = lambda s: s.name
) -> dict[str, float]:
    """The arrival time of the first ADDED event per key (name by default)."""
    found: dict[str, float] = {}
    for seen in history:
        k = key(seen)
        if seen.type == "ADDED" and k is not None and k not in found:
            found[k] = seen.t
    return found


def owned_by_ours(seen: Seen) -> str | None:
    return seen.owner.removeprefix(OURS) if seen.owner and seen.owner.startswith(OURS) else None


def child_of(rec: Recorder, kind: str, parent: str) -> Seen | None:
    return next((s for s in rec.snapshot(kind).values() if owned_by_ours(s) == parent), None)


def first_event(rec: Recorder, kind: str, after: float, match: Callable[[Seen], bool]) -> Seen | None:
    return next((s for s in rec.history(kind) if s.t >= after and match(s)), None)


def current(seen: Seen) -> bool:
    """The operator has written a status for this generation of the object."""
    return seen.phase is not None and (seen.observed is None or seen.observed == seen.generation)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# ---- building blocks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Burst:
    start: float
    end: float

    def asdict(self) -> dict[str, float]:
        return {"kubectl_create_seconds": round(self.end - self.start, 2)}


def burst(ctx: Context, namespace: str, items: Sequence[Manifest], label: str) -> Burst:
    """All objects in one `kubectl create -f` (it creates them one request after another)."""
    path = manifests.write_list(ctx.workdir / f"{label}-{ctx.n}.json", items)
    start = time.monotonic()
    ctx.kubectl("create", "-n", namespace, "-f", str(path), timeout=900)
    end = time.monotonic()
    log("bench", f"{label}: created {len(items)} objects in {end - start:.1f}s")
    return Burst(start, end)


def create_namespace(ctx: Context, namespace: str) -> None:
    ctx.kubectl("create", "namespace", namespace)
    # Namespaces get their default ServiceAccount from the controller-manager; pods need it to be admitted.
    wait_for(
        lambda: ctx.testbed.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False),
        timeout=ctx.timeout(60),
        what=f"the default ServiceAccount in {namespace}",
    )


def delete_namespace(ctx: Context, namespace: str) -> dict[str, Any]:
    start = time.monotonic()
    ctx.kubectl("delete", "namespace", namespace, "--wait=false")

    def gone() -> bool:
        return not ctx.testbed.kubectl("get", "namespace", namespace, "--ignore-not-found", "-o", "name")

    try:
        wait_for(gone, timeout=ctx.timeout(300 + 0.6 * ctx.n), what=f"namespace {namespace} to be deleted")
        return {"namespace_deleted_seconds": round(time.monotonic() - start, 1)}
    except AssertionError as exc:
        log("bench", str(exc))
        return {"namespace_deleted_seconds": None, "error": str(exc)}


def delete_all(ctx: Context, rec: Recorder, namespace: str) -> dict[str, Any]:
    """Delete every VLLMCluster at once and time until the operator released all finalizers (the API
    deleted them); then the namespace. Finalizers still held at the timeout are removed (and reported)."""
    start = time.monotonic()
    ctx.kubectl("delete", "vllmclusters", "--all", "-n", namespace, "--wait=false", timeout=600)
    result: dict[str, Any] = {}
    try:
        rec.wait(
            "every VLLMCluster to be deleted",
            lambda r: not r.snapshot("vllmclusters"),
            ctx.timeout(300 + 0.6 * ctx.n),
        )
        deleted = [s.t for s in rec.history("vllmclusters") if s.type == "DELETED" and s.t >= start]
        result["all_vllmclusters_deleted_seconds"] = round(max(deleted) - start, 2) if deleted else None
    except TimeoutError as exc:
        left = sorted(rec.snapshot("vllmclusters"))
        log("bench", f"{exc}: {len(left)} left; removing their finalizers")
        result.update(all_vllmclusters_deleted_seconds=None, finalizers_stripped=len(left))
        for name in left:
            ctx.testbed.kubectl(
                "patch", "vllmcluster", name, "-n", namespace, "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False,
            )  # fmt: skip
    result.update(delete_namespace(ctx, namespace))
    return result


def settle(ctx: Context, rec: Recorder, start: float, label: str) -> float | None:
    """Wait until no VLLMCluster has changed (status included) for `settle_seconds`: the objects' own
    transitions are over (e.g. Provisioning -> Degraded once KubeRay calls the cluster ready and the operator
    finds no dashboard), so the window measures the loop at rest. Seconds after the burst, None if never."""
    try:
        done = rec.wait(
            f"{ctx.settle_seconds:.0f}s without a VLLMCluster change",
            lambda r: r.quiet_for("vllmclusters") >= ctx.settle_seconds,
            # An operator that rewrites status on every pass never gets quiet: measure it as it is then.
            ctx.timeout(max(120.0, 6 * ctx.settle_seconds)),
        )
        return round(done - start, 1)
    except TimeoutError as exc:
        log("bench", f"{label}: {exc}; measuring anyway")
        return None


def steady(ctx: Context, rec: Recorder, label: str) -> dict[str, Any]:
    """Writes per object per minute (audit log), CPU and RSS (/proc) over `steady_seconds`."""
    objects = rec.snapshot("vllmclusters").values()
    phases = Counter(s.phase or "(none)" for s in objects)
    degraded = sum(s.degraded for s in objects)
    log(
        "bench",
        f"{label}: steady window of {ctx.steady_seconds:.0f}s; phases {dict(phases)}, {degraded} Degraded",
    )
    wall_start = time.time()
    window = ctx.sampler.open_window()
    ctx.sleep(ctx.steady_seconds)
    wall_end = time.time()
    # The machine is shared: a load far above what this cluster makes flags a window disturbed from outside.
    load = os.getloadavg()
    usage = ctx.sampler.close_window(window)
    time.sleep(2)  # requests received before the end are answered, so logged, by now
    seconds = wall_end - wall_start
    ours = ctx.audit.between(wall_start, wall_end, by_user(ctx.operator_user))
    theirs = ctx.audit.between(wall_start, wall_end, kuberay)
    return {
        "seconds": round(seconds, 1),
        "objects": ctx.n,
        "phases_at_start": dict(phases),
        "degraded_condition_at_start": degraded,
        "operator_writes_per_object_minute": per_object_minute(ours, ctx.n, seconds),
        "operator_writes_total": len(ours),
        "kuberay_writes_per_object_minute": per_object_minute(theirs, ctx.n, seconds),
        "usage": {name: asdict(u) for name, u in usage.items()},
        "load_average_at_end": [round(x, 2) for x in load],
    }


def spread(step: int, steps: int, n: int) -> int:
    """Indices spread over the objects, away from the ends of the burst."""
    return min(n - 1, (2 * step + 1) * n // (2 * steps))


def edit(ctx: Context, rec: Recorder, namespace: str, index: int, step: int) -> dict[str, Any]:
    """Patch one object's worker resources; time until its RayCluster shows a new generation."""
    name = manifests.name(index)
    parent = rec.snapshot("vllmclusters")[name]
    child = child_of(rec, "rayclusters", name)
    if child is None:
        return {"object": name, "error": "no RayCluster"}
    patch = json.dumps(manifests.edited_worker_memory(step))
    sent = time.monotonic()
    ctx.kubectl("patch", "vllmcluster", name, "-n", namespace, "--type=merge", "-p", patch)

    def updated(r: Recorder) -> bool:
        now = r.snapshot("rayclusters").get(child.name)
        return now is not None and now.generation > child.generation

    try:
        rec.wait(f"RayCluster {child.name} to change", updated, ctx.timeout(120))
    except TimeoutError as exc:
        return {"object": name, "error": str(exc)}
    seen = first_event(
        rec, "vllmclusters", sent, lambda s: s.name == name and s.generation > parent.generation
    )
    changed = first_event(
        rec, "rayclusters", sent, lambda s: s.name == child.name and s.generation > child.generation
    )
    assert seen is not None and changed is not None
    return {
        "object": name,
        "from_vllmcluster_ms": ms(changed.t - seen.t),
        "from_kubectl_ms": ms(changed.t - sent),
    }


def recreate(ctx: Context, rec: Recorder, namespace: str, kind: str, index: int) -> dict[str, Any]:
    """Delete one object's child (Service or RayCluster); time until the operator made a new one."""
    parent = manifests.name(index)
    child = child_of(rec, kind, parent)
    if child is None:
        return {"object": parent, "error": f"no {kind} owned by it"}
    sent = time.monotonic()
    ctx.kubectl("delete", kind, child.name, "-n", namespace, "--wait=false")

    def remade(r: Recorder) -> bool:
        now = r.snapshot(kind).get(child.name)
        return now is not None and now.uid != child.uid

    try:
        rec.wait(f"{kind} {child.name} to be recreated", remade, ctx.timeout(8 * RESYNC_SECONDS))
    except TimeoutError as exc:
        return {"object": parent, "error": str(exc)}
    deleted = first_event(rec, kind, sent, lambda s: s.type == "DELETED" and s.uid == child.uid)
    added = first_event(
        rec, kind, sent, lambda s: s.type == "ADDED" and s.name == child.name and s.uid != child.uid
    )
    assert added is not None
    return {
        "object": parent,
        "from_deleted_ms": ms(added.t - deleted.t) if deleted is not None else None,
        "from_kubectl_ms": ms(added.t - sent),
    }


def recreations(
    ctx: Context, rec: Recorder, namespace: str, kind: str, indices: Sequence[int]
) -> list[dict[str, Any]]:
    """`recreate` for each index; after a first timeout the rest are skipped: an operator that does not
    recreate that kind would only spend the same timeout again on each."""
    results: list[dict[str, Any]] = []
    for index in indices:
        results.append(recreate(ctx, rec, namespace, kind, index))
        if "error" in results[-1]:
            break
    return results


def reaction(rec: Recorder, start: float, n: int) -> dict[str, Any]:
    """Per object: our VLLMCluster -> RayCluster (and Service), burst start -> RayCluster, and KubeRay's
    RayCluster -> its first pod."""
    parents = first_added(rec.history("vllmclusters"))
    clusters = first_added(rec.history("rayclusters"), owned_by_ours)
    services = first_added(rec.history("services"), owned_by_ours)
    return {
        "ours_vllmcluster_to_raycluster": summary(
            [clusters[p] - t for p, t in parents.items() if p in clusters], n
        ),
        "ours_vllmcluster_to_service": summary(
            [services[p] - t for p, t in parents.items() if p in services], n
        ),
        "ours_burst_start_to_raycluster": summary([t - start for t in clusters.values()], n),
        **kuberay_reaction(rec, n),
    }


def kuberay_reaction(rec: Recorder, n: int) -> dict[str, Any]:
    clusters = first_added(rec.history("rayclusters"))
    first_pods = first_added(rec.history("pods"), lambda s: s.cluster)
    return {
        "kuberay_raycluster_to_first_pod": summary(
            [first_pods[c] - t for c, t in clusters.items() if c in first_pods], n
        )
    }
