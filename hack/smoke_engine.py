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


def process_tree_rss(root_pids: list[int]) -> int:
    """Summed RSS (bytes) of the given processes and all their descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo, seen = 0, list(root_pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


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
        peak_rss = 0
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
            peak_rss = max(peak_rss, process_tree_rss(vllm_server_pids(args.port)))
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
        peak_rss = max(peak_rss, process_tree_rss(vllm_server_pids(args.port)))

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
