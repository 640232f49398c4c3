"""Manual end-to-end smoke of the engine path with real Ray and real vLLM (CPU build), no Kubernetes:

    .venv/bin/python hack/smoke_engine.py [--keep-ray] [--port 28000]

1. builds/reuses the Ray+vLLM venv (hack/ray-env.sh) and generates the tiny model (hack/tiny_model.py);
2. starts the local Ray cluster (hack/local_ray.py: head without engine slots + one worker with one);
3. builds the engine job with the operator's own builder (rayvllm.engine.build_engine_job) for an
   mp / TP=1 spec pointing at the tiny model, and submits it with the operator's dashboard client;
4. polls the job until RUNNING and the engine's /health + /v1/models until ready, sends one
   /v1/completions request, stops the job and waits until STOPPED;
5. prints the measurements as JSON (last line) and stops Ray unless --keep-ray.

Runs with the operator venv (it imports rayvllm from operator/); Ray and vLLM run from the other venv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from rayvllm.engine import (  # noqa: E402
    CPU_TEST_ENV,
    EngineJobOptions,
    EngineRef,
    build_engine_job,
    probe_engine,
)
from rayvllm.models import parse_spec  # noqa: E402
from rayvllm.ray import RayDashboardClient  # noqa: E402


def log(msg: str) -> None:
    print(f"[smoke {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ray_venv() -> Path:
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "ray-env.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def process_tree(root_pids: list[int]) -> list[int]:
    """The given processes and all their descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], list(root_pids)
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.append(pid)
            todo.extend(children.get(pid, []))
    return tree


def memory(pids: list[int]) -> tuple[int, int]:
    """(summed RSS, summed PSS) in bytes. RSS double-counts pages the processes share (torch's
    libraries, the forked model runner); PSS splits them, so it is the honest total."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def listeners(pids: list[int]) -> list[str]:
    """TCP listening addresses of these processes (from `ss`), to check nothing binds beyond loopback."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=False).stdout
    found = []
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            found.append(line.split()[3])
    return sorted(set(found))


def vllm_server_pids(port: int) -> list[int]:
    """The vLLM API server started for this smoke: its command line names the module and our port."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vllm.entrypoints.openai.api_server" in argv and str(port).encode() in argv:
            found.append(int(entry.name))
    return found


async def smoke(args: argparse.Namespace, venv: Path, model_dir: Path, dashboard: str) -> dict[str, object]:
    spec = parse_spec(
        {
            "model": {"source": str(model_dir), "servedModelName": "tiny-llama"},
            "engine": {
                "tensorParallelSize": 1,
                "executorBackend": "mp",
                "maxModelLen": 256,
                "port": args.port,
                "extraArgs": shlex.split(args.extra_args),
            },
            "ray": {"image": "local"},
        }
    )
    ref = EngineRef(
        namespace="smoke", name="tiny", replica=0, generation=1, attempt=int(time.time()) % 100000
    )
    options = EngineJobOptions(host="127.0.0.1", extra_env=CPU_TEST_ENV)
    request = build_engine_job(spec, ref, options)
    log(f"entrypoint: {request.entrypoint}")
    result: dict[str, object] = {"submission_id": request.submission_id}
    url = f"http://127.0.0.1:{args.port}"

    async with RayDashboardClient(dashboard) as ray, httpx.AsyncClient(timeout=5) as http:
        t0 = time.monotonic()
        submitted = await ray.submit(request)
        log(f"submitted {submitted}")
        running_at = ready_at = None
        peak_rss = peak_pss = 0
        bound: list[str] = []
        job = None
        deadline = t0 + args.timeout
        while time.monotonic() < deadline:
            job = await ray.get(request.submission_id)
            assert job is not None, "job vanished"
            if job.status == "RUNNING" and running_at is None:
                running_at = time.monotonic() - t0
                log(
                    f"RUNNING after {running_at:.1f}s on {job.driver_agent_http_address} (node {job.driver_node_id})"
                )
            if job.terminal:
                logs = await ray.logs(request.submission_id)
                raise SystemExit(
                    f"job ended {job.status}: {job.message}\n--- logs ---\n{(logs or '')[-4000:]}"
                )
            tree = process_tree(vllm_server_pids(args.port))
            rss, pss = memory(tree)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            if running_at is not None:
                probe = await probe_engine(url, "tiny-llama", client=http)
                if probe.ready:
                    ready_at = time.monotonic() - t0
                    log(f"ready after {ready_at:.1f}s: {probe.detail}")
                    break
            await asyncio.sleep(0.5)
        else:
            raise SystemExit(
                f"not ready within {args.timeout}s (last job status {job.status if job else None})"
            )

        completion = await http.post(
            f"{url}/v1/completions",
            json={"model": "tiny-llama", "prompt": "Hello world", "max_tokens": 8, "temperature": 0},
            timeout=60,
        )
        completion.raise_for_status()
        text = completion.json()["choices"][0]["text"]
        log(f"completion: {text!r}")
        tree = process_tree(vllm_server_pids(args.port))
        rss, pss = memory(tree)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        bound = listeners(tree)
        log(f"vLLM processes {tree} listen on {bound}")

        t_stop = time.monotonic()
        stopped = await ray.stop(request.submission_id)
        while True:
            job = await ray.get(request.submission_id)
            if job is None or job.terminal:
                break
            await asyncio.sleep(0.2)
        stop_s = time.monotonic() - t_stop
        leftovers = vllm_server_pids(args.port)
        log(f"stop -> {job.status if job else None} in {stop_s:.1f}s; vLLM processes left: {leftovers}")
        logs = await ray.logs(request.submission_id) or ""
        deleted = await ray.delete(request.submission_id)

        result.update(
            {
                "submit_to_running_s": round(running_at or -1, 1),
                "submit_to_health_200_s": round(ready_at or -1, 1),
                "peak_rss_mib": round(peak_rss / 2**20),
                "peak_pss_mib": round(peak_pss / 2**20),
                "vllm_listeners": bound,
                "driver_agent_http_address": job.driver_agent_http_address if job else None,
                "driver_node_id": job.driver_node_id if job else None,
                "completion_text": text,
                "stop_requested": stopped,
                "final_status": job.status if job else None,
                "stop_to_terminal_s": round(stop_s, 1),
                "vllm_processes_after_stop": leftovers,
                "deleted": deleted,
                "log_bytes": len(logs),
            }
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=28000, help="engine port on 127.0.0.1")
    parser.add_argument("--gcs-port", type=int, default=26379)
    parser.add_argument("--dashboard-port", type=int, default=28265)
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/rayvllm-tiny-llama"))
    parser.add_argument("--timeout", type=float, default=600, help="seconds from submit to ready")
    parser.add_argument("--extra-args", default="", help="more vLLM arguments, e.g. '--enforce-eager'")
    parser.add_argument("--keep-ray", action="store_true", help="leave the local Ray cluster running")
    args = parser.parse_args()

    t0 = time.monotonic()
    venv = ray_venv()
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, str(REPO / "hack" / "tiny_model.py"), str(args.model_dir)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    ray_cmd = [
        python,
        str(REPO / "hack" / "local_ray.py"),
        f"--gcs-port={args.gcs_port}",
        f"--dashboard-port={args.dashboard_port}",
    ]
    dashboard = (
        subprocess.run([*ray_cmd[:2], "start", *ray_cmd[2:]], check=True, stdout=subprocess.PIPE, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    log(f"Ray dashboard {dashboard} (setup {time.monotonic() - t0:.1f}s)")
    try:
        result = asyncio.run(smoke(args, venv, args.model_dir, dashboard))
    finally:
        if not args.keep_ray:
            subprocess.run([*ray_cmd[:2], "stop", *ray_cmd[2:]], check=False)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
