"""The measured phases of one run at one N, in order: warm-up, healthy burst (reaction latency, steady
state, edits, recreated children, delete all), Degraded burst (steady state, delete all), and the floor
(the same RayClusters created directly, with the operator stopped).

Every wait is bounded by its own timeout and by the run's deadline; a phase that times out records what it
saw and the run goes on, so one slow part never leaves the cluster running."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from bench import manifests
from bench.context import Context
from bench.manifests import Manifest, Variant
from bench.measures import (
    RESYNC_SECONDS,
    burst,
    child_of,
    create_namespace,
    current,
    delete_all,
    delete_namespace,
    edit,
    first_added,
    kuberay_reaction,
    ms,
    owned_by_ours,
    reaction,
    recreations,
    settle,
    spread,
    steady,
)
from bench.stats import summary
from bench.watch import NamespaceWatch, Recorder
from hack.localcluster.procs import log

# ---- the phases -----------------------------------------------------------------------------------------


def warmup(ctx: Context) -> dict[str, Any]:
    """One object end to end first: the operator's watches are live and its clients connected before the
    burst, so the burst does not measure start-up."""
    namespace = "bench-warmup"
    create_namespace(ctx, namespace)
    with NamespaceWatch(ctx.endpoint, namespace, ("vllmclusters", "rayclusters")) as rec:
        obj = manifests.vllmcluster(ctx.sample, 0, Variant.HEALTHY)
        start = time.monotonic()
        ctx.kubectl("create", "-n", namespace, "-f", "-", stdin=json.dumps(obj))
        done = rec.wait(
            "the warm-up RayCluster",
            lambda r: child_of(r, "rayclusters", obj["metadata"]["name"]) is not None,
            ctx.timeout(120),
        )
        result: dict[str, Any] = {"kubectl_to_raycluster_seen_ms": ms(done - start)}
        result.update(delete_all(ctx, rec, namespace))
    return result


def healthy(ctx: Context) -> tuple[dict[str, Any], Manifest | None]:
    namespace = "bench-healthy"
    create_namespace(ctx, namespace)
    n = ctx.n
    items = [manifests.vllmcluster(ctx.sample, i, Variant.HEALTHY) for i in range(n)]
    result: dict[str, Any] = {}
    template: Manifest | None = None
    watch = NamespaceWatch(ctx.endpoint, namespace)
    with watch as rec:
        b = burst(ctx, namespace, items, "healthy")
        result["burst"] = b.asdict()

        def settled(r: Recorder) -> bool:
            parents = r.snapshot("vllmclusters").values()
            children = sum(owned_by_ours(s) is not None for s in r.snapshot("rayclusters").values())
            running = sum(p.phase == "Running" for p in r.snapshot("pods").values())
            return (
                len(parents) >= n and all(current(s) for s in parents) and children >= n and running >= 2 * n
            )

        try:
            done = rec.wait(
                "every object's RayCluster, Running pods and status", settled, ctx.timeout(ctx.settle_timeout)
            )
            result["settled_after_burst_seconds"] = round(done - b.start, 1)
        except TimeoutError as exc:
            log("bench", f"healthy: {exc}; measuring anyway")
            result["settled_after_burst_seconds"] = None
        result["latency"] = reaction(rec, b.start, n)
        log("bench", f"healthy: latency {json.dumps(result['latency'])}")
        result["quiet_after_burst_seconds"] = settle(ctx, rec, b.start, "healthy")
        result["steady"] = steady(ctx, rec, "healthy")
        result["edits"] = [edit(ctx, rec, namespace, spread(k, ctx.edits, n), k) for k in range(ctx.edits)]
        picks = [spread(k, ctx.recreations, n) for k in range(ctx.recreations)]
        result["recreate_service"] = recreations(ctx, rec, namespace, "services", picks)
        # Other objects than the edited ones (an edit may still be rolling out its pods).
        picks = [(i + 1) % n for i in picks]
        result["recreate_raycluster"] = recreations(ctx, rec, namespace, "rayclusters", picks)
        log(
            "bench",
            f"healthy: edits {result['edits']}; recreated {result['recreate_service']} {result['recreate_raycluster']}",
        )
        made = child_of(rec, "rayclusters", manifests.name(0))
        if made is not None:
            template = json.loads(ctx.kubectl("get", "raycluster", made.name, "-n", namespace, "-o", "json"))
        result["delete_all"] = delete_all(ctx, rec, namespace)
        result["watch_gaps"] = dict(rec.gaps)
    result["watch_errors"] = watch.errors()
    return result, template


def degraded(ctx: Context) -> dict[str, Any]:
    namespace = "bench-degraded"
    create_namespace(ctx, namespace)
    n = ctx.n
    items = [manifests.vllmcluster(ctx.sample, i, manifests.degraded_variant(i)) for i in range(n)]
    result: dict[str, Any] = {
        "variants": dict(Counter(manifests.degraded_variant(i).value for i in range(n)))
    }
    watch = NamespaceWatch(ctx.endpoint, namespace)
    with watch as rec:
        b = burst(ctx, namespace, items, "degraded")
        result["burst"] = b.asdict()

        def reported(r: Recorder) -> bool:
            parents = r.snapshot("vllmclusters").values()
            return len(parents) >= n and all(current(s) for s in parents)

        def all_degraded(r: Recorder) -> bool:
            return all(s.degraded for s in r.snapshot("vllmclusters").values())

        try:
            done = rec.wait("a status for every object", reported, ctx.timeout(ctx.settle_timeout))
            result["status_after_burst_seconds"] = round(done - b.start, 1)
            # Unschedulable shows only once the scheduler said so and the operator looked again.
            done = rec.wait(
                "the Degraded condition on every object",
                all_degraded,
                ctx.timeout(max(6 * RESYNC_SECONDS, 0.3 * n)),
            )
            result["degraded_after_burst_seconds"] = round(done - b.start, 1)
        except TimeoutError as exc:
            log("bench", f"degraded: {exc}; measuring anyway")
        result["quiet_after_burst_seconds"] = settle(ctx, rec, b.start, "degraded")
        result["steady"] = steady(ctx, rec, "degraded")
        result["delete_all"] = delete_all(ctx, rec, namespace)
        result["watch_gaps"] = dict(rec.gaps)
    result["watch_errors"] = watch.errors()
    return result


def floor(ctx: Context, template: Manifest) -> dict[str, Any]:
    """The same RayClusters created directly, in one burst too, with our operator stopped: what the API
    server and KubeRay do without us."""
    namespace = "bench-floor"
    create_namespace(ctx, namespace)
    n = ctx.n
    items = [manifests.floor_copy(template, i) for i in range(n)]
    result: dict[str, Any] = {}
    watch = NamespaceWatch(ctx.endpoint, namespace, ("rayclusters", "pods"))
    with watch as rec:
        b = burst(ctx, namespace, items, "floor")
        result["burst"] = b.asdict()

        def every_cluster_has_a_pod(r: Recorder) -> bool:
            clusters = r.snapshot("rayclusters")
            with_pods = {p.cluster for p in r.snapshot("pods").values()}
            return len(clusters) >= n and all(c in with_pods for c in clusters)

        try:
            rec.wait("a pod for every RayCluster", every_cluster_has_a_pod, ctx.timeout(ctx.settle_timeout))
        except TimeoutError as exc:
            log("bench", f"floor: {exc}; reporting what was seen")
        clusters = first_added(rec.history("rayclusters"))
        result["latency"] = {
            "floor_burst_start_to_raycluster": summary([t - b.start for t in clusters.values()], n),
            **kuberay_reaction(rec, n),
        }
        log("bench", f"floor: latency {json.dumps(result['latency'])}")
        result["watch_gaps"] = dict(rec.gaps)
    result["watch_errors"] = watch.errors()
    ctx.kubectl("delete", "rayclusters", "--all", "-n", namespace, "--wait=false", timeout=600)
    result["delete"] = delete_namespace(ctx, namespace)
    return result
