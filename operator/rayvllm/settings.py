"""The operator's one settings object, read from RAYVLLM_* environment variables once at startup
and handed to handlers through kopf's memo. Nothing else in the package reads the environment."""

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rayvllm.engine_env import OWNED_ENV_NAMES, sets_ray_auth


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAYVLLM_", frozen=True)

    field_manager: str = Field("rayvllm", description="Server-side apply field manager for children.")
    resync_seconds: float = Field(
        15.0, gt=0, description="Period of the drift check and engine supervision timer."
    )
    dashboard_url_template: str = Field(
        "http://{cluster}-head-svc.{namespace}.svc:8265",
        description=(
            "How the operator reaches a RayCluster's dashboard. {cluster} and {namespace} are "
            "substituted. Set to e.g. http://127.0.0.1:8265 when the operator runs outside the cluster."
        ),
    )
    engine_host_override: str | None = Field(
        None,
        description=(
            "If set, engines are probed at this host instead of the Ray node IP that hosts them "
            "(for an operator outside the cluster network). In-cluster this stays unset."
        ),
    )
    starting_probe_seconds: float = Field(
        1.5,
        gt=0,
        description=(
            "While an engine is starting (or restarting, or draining), how often it is looked at, so Ready "
            "follows the engine's first healthy answer within this time rather than at the next resync."
        ),
    )
    probe_concurrency: int = Field(
        32,
        ge=1,
        description="Ray dashboard and engine HTTP calls in flight at once, across every VLLMCluster.",
    )
    probe_concurrency_per_cluster: int = Field(
        4,
        ge=1,
        description=(
            "Of those, how many one VLLMCluster may hold at once: a head or engine that answers slowly (or a "
            "byte at a time) only delays its own object's calls, never every other object's."
        ),
    )
    kube_connections: int = Field(
        16,
        ge=1,
        description=(
            "Connections to the Kubernetes API server the operator's client keeps at most (kopf's watches "
            "have their own). Each costs a TLS read buffer of 256 KiB; calls beyond it wait their turn."
        ),
    )
    resync_jitter: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Each resync waits resync_seconds times a random factor in [1-jitter, 1+jitter], so "
        "many objects do not supervise in lockstep.",
    )
    http_timeout_seconds: float = Field(
        5.0, gt=0, description="Timeout of each read, connect or write of a Ray / engine HTTP call."
    )
    http_deadline_seconds: float = Field(
        20.0,
        gt=0,
        description=(
            "The most one Ray dashboard or engine call may take in all, its retries and its whole answer "
            "included: http_timeout_seconds bounds each read, so a server sending a byte every few seconds "
            "would otherwise hold its slot forever."
        ),
    )
    http_body_limit_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description=(
            "The largest answer (JSON, /metrics, error text) read from a Ray dashboard or an engine; a larger "
            "one is an error, never read whole into memory. Also the most read of a job log's tail."
        ),
    )
    log_tail_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description=(
            "How much of the end of an engine job's log is kept (status shows its last lines): the same cost "
            "whether the log holds 1 KB or 2 GB."
        ),
    )
    unhealthy_grace_seconds: float = Field(
        30.0,
        ge=0,
        description="How long a once-ready engine may fail its health check before it is restarted.",
    )
    canary_interval_seconds: float = Field(
        60.0,
        ge=0,
        description=(
            "How often a serving engine is sent a canary completion of one token, so an engine that answers "
            "/health but no longer generates (frozen, or its Ray workers gone) is found; 0 turns it off. "
            "While a canary fails it is repeated at every probe, and the engine is restarted once "
            "unhealthy_grace_seconds are over."
        ),
    )
    canary_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description=(
            "How long the canary completion may take. A canary that times out while the engine's token "
            "counters (/metrics) move means a busy engine, not a hung one."
        ),
    )
    drain_seconds: float = Field(
        5.0,
        ge=0,
        description=(
            "Scale-down: how long a leaving engine stays out of the Service, its job still running, before it "
            "is stopped: in-flight requests finish and kube-proxy stops sending it new ones meanwhile."
        ),
    )
    deletion_deadline_seconds: float = Field(
        300.0,
        ge=0,
        description=(
            "How long after its deletion a VLLMCluster may wait for its engine jobs to stop (or for the Ray "
            "dashboard or the API server to answer) before its finalizer is released anyway, with a Warning "
            "Event naming what may be left behind. KubeRay bounds its own clean-up the same way (300 s)."
        ),
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus metrics on this port (unset: no metrics server)."
    )
    metrics_host: str = Field("0.0.0.0", description="Address the metrics server binds.")
    engine_bind_host: str = Field(
        "0.0.0.0",
        description="Address vLLM's API server binds inside the worker pod (127.0.0.1 for a local Ray).",
    )
    engine_python: str = Field(
        "python", description="The Python (with Ray and vLLM) that runs the engine entrypoint on Ray nodes."
    )
    engine_job_env: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Extra environment for every engine job, as JSON (e.g. the vLLM CPU knobs of the local "
            "e2e setup). The spec's engine.env wins over it. RAY_AUTH_*, RAY_ENABLE_K8S_TOKEN_AUTH and the HF "
            "token and API key variables are refused: the operator does not start."
        ),
    )

    @field_validator("engine_job_env")
    @classmethod
    def _no_owned_engine_env(cls, env: dict[str, str]) -> dict[str, str]:
        """The same names a VLLMCluster may not set (rayvllm.engine_env): in every engine job they would turn
        Ray's token auth off, or replace each object's HF token or API key with one for all."""
        owned = sorted(name for name in env if sets_ray_auth(name) or name in OWNED_ENV_NAMES)
        if owned:
            raise ValueError(
                f"must not set {', '.join(owned)}: Ray's token auth is KubeRay's, and the HF token and API "
                "key come from each VLLMCluster's Secrets; remove them"
            )
        return env


def load_settings() -> Settings:
    return Settings()
