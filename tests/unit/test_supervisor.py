"""Pieces of the engine supervisor: the engine fingerprint, what leaves the engine's logs (redacted), and how
often the executor reads a loading engine's log."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from rayvllm.engine.context import EngineContext
from rayvllm.engine.failure import LAST_FAILURE_LIMIT, failure_text, last_log_line, log_tail, redact
from rayvllm.engine.fingerprint import engine_config_hash
from rayvllm.engine.probe import EngineProbe, EngineState, LoadSample
from rayvllm.identity import ClusterRef
from rayvllm.models import EngineStatus, parse_spec
from rayvllm.models.rayapi import JobInfo
from rayvllm.models.status import LOG_LINE_LIMIT
from rayvllm.ray import RayDashboardClient
from rayvllm.settings import Settings
from rayvllm.supervisor import Supervisor


def spec(**changes: Any) -> Any:
    body: dict[str, Any] = {"model": {"source": "hf://org/model"}, "ray": {"image": "img"}}
    for key, value in changes.items():
        body[key] = value
    return parse_spec(body)


def test_fingerprint_ignores_what_does_not_change_an_engine() -> None:
    base = engine_config_hash(spec())
    assert engine_config_hash(spec(replicas=3)) == base
    assert engine_config_hash(spec(suspend=True)) == base
    assert engine_config_hash(spec(restartPolicy={"maxRestarts": 1})) == base


def test_fingerprint_changes_with_model_engine_and_image() -> None:
    base = engine_config_hash(spec())
    assert engine_config_hash(spec(engine={"maxModelLen": 128})) != base
    assert engine_config_hash(spec(model={"source": "hf://org/other"})) != base
    assert engine_config_hash(spec(ray={"image": "img:2"})) != base


def test_redact_hides_tokens_and_keys_but_keeps_the_rest() -> None:
    line = "auth: Bearer abc.def-123 token=hf_abcdefghijkl api_key: sk-123 password='p4ss' model loaded"
    out = redact(line)
    for secret in ("abc.def-123", "hf_abcdefghijkl", "sk-123", "p4ss"):
        assert secret not in out, out
    assert "Bearer <redacted>" in out and "model loaded" in out


def test_log_tail_keeps_the_last_non_empty_lines() -> None:
    logs = "\n".join(f"line {i}" for i in range(100)) + "\n\n"
    tail = log_tail(logs, lines=3)
    assert tail == "line 97\nline 98\nline 99"
    assert log_tail(None) == "" and log_tail("") == ""


def test_failure_text_is_bounded_and_keeps_the_reason_s_start_and_the_end() -> None:
    text = failure_text("attempt 0: Ray job FAILED", "x" * 10_000 + "\nthe real error")
    assert len(text) <= LAST_FAILURE_LIMIT
    assert text.startswith("attempt 0: Ray job FAILED\n...x")
    assert text.endswith("the real error")
    assert failure_text("why", None) == "why"
    # Ray's memory monitor writes a message longer than the limit on one line: its start says what happened.
    oom = "attempt 0: Ray job FAILED: Task was killed due to the node running low on memory. " + "y" * 9000
    text = failure_text(oom, "the last line")
    assert len(text) == LAST_FAILURE_LIMIT
    assert text.startswith(
        "attempt 0: Ray job FAILED: Task was killed due to the node running low on memory."
    )
    assert text.split("\n", 1)[0].endswith("y...") and text.endswith("the last line")


# ---- Secret values the operator holds, and the loading engine's log line -------------------------------

API_KEY, HF_TOKEN = "k3y-Of-The-Api", "hf_0123456789abcdef"
HELD = frozenset({API_KEY, HF_TOKEN, "a-longer-k3y-Of-The-Api-with-more"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"serving with key {API_KEY} on :8000", "serving with key <redacted> on :8000"),
        # A held value with no token shape is found by value alone.
        (f"VLLM_API_KEY is {API_KEY}.", "VLLM_API_KEY is <redacted>."),
        # The longer value goes whole, not as a redacted part of it.
        ("x a-longer-k3y-Of-The-Api-with-more x", "x <redacted> x"),
        (f"{API_KEY}{API_KEY}", "<redacted><redacted>"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redact_replaces_every_held_secret_value(text: str, expected: str) -> None:
    assert redact(text, HELD) == expected


def test_redact_ignores_empty_values() -> None:
    assert redact("model loaded", frozenset({""})) == "model loaded"


def test_failure_text_redacts_held_values_in_the_reason_and_the_log() -> None:
    text = failure_text(f"Ray job FAILED: last logs: {API_KEY}", f"started\nusing {API_KEY}\n", HELD)
    assert API_KEY not in text and text.count("<redacted>") == 2


VLLM_LINE = "INFO 03-01 12:00:05 [loader.py:458] Loading weights took 3.21 seconds"
BAR = "\x1b[32m100%|██████████| 2/2 [00:02<00:00,  1.05it/s]\x1b[0m"
SHARDS = "Loading safetensors checkpoint shards:  50% Completed | 1/2 [00:01<00:01,  1.20s/it]"


@pytest.mark.parametrize(
    ("logs", "expected"),
    [
        (None, None),
        ("", None),
        ("\n  \n\t\n", None),
        (f"{VLLM_LINE}\n\n   \n", VLLM_LINE),
        # A bare progress bar is noise; a named one is what the engine is doing.
        (f"{VLLM_LINE}\n{BAR}\n", VLLM_LINE),
        (f"{VLLM_LINE}\n{SHARDS}\n", SHARDS),
        ("=====\n----\n", None),
        # tqdm redraws with carriage returns: only the latest drawing counts.
        (
            "Loading safetensors checkpoint shards:   0% Completed | 0/2\r"
            "Loading safetensors checkpoint shards: 100% Completed | 2/2\r",
            "Loading safetensors checkpoint shards: 100% Completed | 2/2",
        ),
        # Ray's prefix of a worker's line is not a word of the line; colour codes are dropped.
        (f"{VLLM_LINE}\n(RayWorkerWrapper pid=4242, ip=10.0.0.7) {BAR}\n", VLLM_LINE),
        (
            "(RayWorkerWrapper pid=4242) INFO 03-01 [worker.py:12] Memory profiling done\n",
            "(RayWorkerWrapper pid=4242) INFO 03-01 [worker.py:12] Memory profiling done",
        ),
        ("\x1b[1;33mWARNING\x1b[0m no GPU found\n", "WARNING no GPU found"),
        # An indented line continues the one above it (the source line Python's warnings module echoes, a
        # traceback frame): the line it belongs to says more.
        (
            f"{VLLM_LINE}\n/venv/vllm/utils.py:12: FutureWarning: lookup is deprecated\n"
            '  wrapper = lookup(vars(value).get("kernel"))\n',
            "/venv/vllm/utils.py:12: FutureWarning: lookup is deprecated",
        ),
        ('Traceback (most recent call last):\n  File "x.py", line 1\n', "Traceback (most recent call last):"),
        # Never a Secret value, whether held by the operator or only shaped like a token.
        (f"INFO using api key {API_KEY}\n", "INFO using api key <redacted>"),
        ("INFO HF_TOKEN=hf_abcdefghijklmnop\n", "INFO HF_TOKEN=<redacted>"),
    ],
)
def test_last_log_line_is_the_latest_meaningful_line_redacted(logs: str | None, expected: str | None) -> None:
    assert last_log_line(logs, HELD) == expected


def test_last_log_line_is_cut_after_redaction() -> None:
    # The Secret value straddles the cut: redacting after cutting would leave its first part in status.
    line = "x" * (LOG_LINE_LIMIT - 10) + API_KEY + " and more words after it"
    kept = last_log_line(line, HELD)
    assert kept is not None and len(kept) == LOG_LINE_LIMIT and kept.endswith("...")
    assert API_KEY[:5] not in kept
    assert last_log_line("w" * 10_000, HELD) == "w" * (LOG_LINE_LIMIT - 3) + "..."


# ---- the executor reads a loading engine's log at most every 30 s ---------------------------------------

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
REF = ClusterRef("team-a", "llm", "uid-1", generation=3)
OWN_PODS = {"10.0.0.7": "llm-gpu-0"}  # where FakeRay's job runs


class FakeRay:
    """The part of RayDashboardClient the supervisor uses for a watched engine: one RUNNING job."""

    def __init__(self, logs: str) -> None:
        self.text = logs
        self.log_reads = 0

    async def get(self, submission_id: str) -> JobInfo:
        return JobInfo(
            submission_id=submission_id, status="RUNNING", driver_agent_http_address="http://10.0.0.7:52365"
        )

    async def logs(self, submission_id: str) -> str:
        self.log_reads += 1
        return self.text


@dataclass
class FakeProber:
    state: EngineState = EngineState.STARTING
    loads_read: list[str] = field(default_factory=list)

    async def probe(self, base_url: str, served_model_name: str, api_key: str | None = None) -> EngineProbe:
        return EngineProbe(self.state, self.state.value)

    async def load(self, base_url: str) -> LoadSample | None:
        self.loads_read.append(base_url)
        return LoadSample(3.0, 0.0)


def test_a_loading_engine_s_log_is_read_at_most_every_30_s_and_never_once_ready() -> None:
    ray, prober = FakeRay(f"INFO starting\nINFO loading weights with key {API_KEY}\n{BAR}\n"), FakeProber()
    settings = Settings(starting_probe_seconds=1.5, engine_host_override=None)

    def run_at(seconds: float, engines: list[EngineStatus]) -> list[EngineStatus]:
        ctx = EngineContext(
            REF,
            spec(replicas=1),
            settings,
            T0 + timedelta(seconds=seconds),
            secrets=frozenset({API_KEY}),
            pod_by_ip=OWN_PODS,
        )
        supervisor = Supervisor(cast(RayDashboardClient, ray), ctx, prober=prober)
        return asyncio.run(supervisor.run(engines, may_submit=False)).engines

    engines = [
        EngineStatus(
            index=0,
            submission_id="rayvllm-llm-r0-g3-a0-x",
            job_status="PENDING",
            generation=3,
            config_hash=engine_config_hash(spec(replicas=1)),
            started_at=T0 - timedelta(seconds=90),
        )
    ]
    reads = []
    for second in (0, 1.5, 3, 29.9, 30, 31.5, 59.9):
        engines = run_at(second, engines)
        reads.append(ray.log_reads)
    assert reads == [1, 1, 1, 1, 2, 2, 2]
    (loading,) = engines
    assert loading.last_log_line == "INFO loading weights with key <redacted>"
    assert loading.last_log_read_at == T0 + timedelta(seconds=30)

    prober.state = EngineState.READY
    engines = run_at(61, engines)
    (ready,) = engines
    assert (ready.ready, ready.load_seconds, ready.last_log_line, ready.last_log_read_at) == (
        True,
        151,
        None,
        None,
    )
    for second in (62, 100, 3600):
        assert run_at(second, engines) == engines
    assert ray.log_reads == 2


def test_loads_are_read_from_the_ready_engines_only_with_autoscaling() -> None:
    settings = Settings(starting_probe_seconds=1.5, engine_host_override=None)
    autoscaled = spec(replicas=1, autoscaling={"maxReplicas": 2, "targetRequestsPerReplica": 2})

    def run(cluster_spec: Any, prober: FakeProber) -> dict[int, LoadSample | None]:
        ctx = EngineContext(REF, cluster_spec, settings, T0, pod_by_ip=OWN_PODS)
        engine = EngineStatus(
            index=0,
            submission_id="rayvllm-llm-r0-g3-a0-x",
            job_status="RUNNING",
            generation=3,
            config_hash=engine_config_hash(cluster_spec),
            started_at=T0 - timedelta(seconds=90),
        )
        supervisor = Supervisor(cast(RayDashboardClient, FakeRay("")), ctx, prober=prober)
        return asyncio.run(supervisor.run([engine], may_submit=False)).loads

    loading = FakeProber(EngineState.STARTING)
    assert run(autoscaled, loading) == {} and loading.loads_read == []
    serving = FakeProber(EngineState.READY)
    assert run(autoscaled, serving) == {0: LoadSample(3.0, 0.0)}
    assert serving.loads_read == ["http://10.0.0.7:8000"]
    unscaled = FakeProber(EngineState.READY)
    assert run(spec(replicas=1), unscaled) == {} and unscaled.loads_read == []


# ---- a scaled-down engine's record (and so its pod) stays until its stopped job has ended in Ray ------------


@dataclass
class EndingRay:
    """Ray as the supervisor sees it around a stopped job: `status` is what GET /api/jobs/{id} answers."""

    status: str
    calls: list[str] = field(default_factory=list)

    async def stop(self, submission_id: str) -> bool:
        self.calls.append(f"stop {submission_id}")
        return True

    async def get(self, submission_id: str) -> JobInfo:
        self.calls.append(f"get {submission_id}")
        return JobInfo(submission_id=submission_id, status=self.status)


LEAVING_SID = "rayvllm-llm-r1-g3-a0-x"


def retire_engine_1(
    ray: EndingRay, drained_for: float, **changes: Any
) -> tuple[list[EngineStatus], list[str]]:
    """One pass over a VLLMCluster scaled from 2 to 1 replica whose engine 1 has drained for `drained_for` s:
    the records status keeps and the Events' reasons."""
    ctx = EngineContext(REF, spec(replicas=1, **changes), Settings(engine_host_override=None), T0)
    leaving = EngineStatus(
        index=1,
        submission_id=LEAVING_SID,
        job_status="RUNNING",
        generation=3,
        ready=False,
        pod_name="llm-workers-b",
        draining_since=T0 - timedelta(seconds=drained_for),
    )
    result = asyncio.run(
        Supervisor(cast(RayDashboardClient, ray), ctx, prober=FakeProber()).run([leaving], False)
    )
    return result.engines, [event.reason for event in result.events]


def test_a_drained_engine_whose_stopped_job_still_ends_keeps_its_record_and_pod() -> None:
    ray = EndingRay("RUNNING")
    engines, reasons = retire_engine_1(ray, drained_for=6)
    assert ray.calls == [f"stop {LEAVING_SID}", f"get {LEAVING_SID}"]
    kept = {e.index: e for e in engines}[1]
    assert kept.pod_name == "llm-workers-b" and not kept.ready
    assert kept.draining_since == T0 - timedelta(seconds=6)
    assert "EngineStopped" not in reasons


@pytest.mark.parametrize("status", ["STOPPED", "FAILED", "SUCCEEDED", "PENDING"])
def test_the_record_goes_with_engine_stopped_once_the_job_has_ended_or_never_ran(status: str) -> None:
    engines, reasons = retire_engine_1(EndingRay(status), drained_for=6)
    assert [e.index for e in engines] == [0] and "EngineStopped" in reasons


def test_a_stop_past_ray_s_own_sigkill_deadline_lets_the_record_go_without_asking_ray() -> None:
    # drain 5 s + RAY_JOB_STOP_WAIT_TIME_S (30 s grace + vLLM's --shutdown-timeout 20) + the 10 s margin = 65 s
    ray = EndingRay("RUNNING")
    engines, reasons = retire_engine_1(ray, drained_for=64.9, engine={"extraArgs": ["--shutdown-timeout=20"]})
    assert 1 in {e.index for e in engines} and ray.calls[-1] == f"get {LEAVING_SID}"
    ray = EndingRay("RUNNING")
    engines, reasons = retire_engine_1(ray, drained_for=65, engine={"extraArgs": ["--shutdown-timeout=20"]})
    assert [e.index for e in engines] == [0] and "EngineStopped" in reasons
    assert ray.calls == [f"stop {LEAVING_SID}"]


def test_a_suspended_cluster_s_engines_are_stopped_without_waiting_for_their_jobs() -> None:
    ray = EndingRay("RUNNING")
    engines, reasons = retire_engine_1(ray, drained_for=6, suspend=True)
    assert engines == [] and ray.calls == [f"stop {LEAVING_SID}"] and "EngineStopped" in reasons
