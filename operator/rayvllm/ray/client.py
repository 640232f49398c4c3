"""Async client of one Ray cluster's dashboard: the Job Submission REST API, GCS health and the
cluster's resources. Pure HTTP (httpx): the operator image does not need the `ray` package.

Endpoints (Ray 2.60, ray/dashboard/modules/job/job_head.py): POST /api/jobs/, GET /api/jobs/,
GET|DELETE /api/jobs/{id}, POST /api/jobs/{id}/stop, GET /api/gcs_healthz, GET /api/version (also without the
token, to see it refused); a job log's
end from the state API's GET /api/v0/logs/file (ray/dashboard/modules/state/state_head.py); resources from
GET /api/v0/nodes and GET /api/cluster_status (see resources.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from rayvllm.bounded import Bounds
from rayvllm.errors import MalformedResponseError, RayError, RayRequestRejectedError
from rayvllm.models.rayapi import AUTH_REFUSALS, ClusterResources, JobInfo, JobSubmitRequest, VersionAnswer
from rayvllm.ray.http import DashboardHTTP, RetryPolicy, decode_json
from rayvllm.ray.resources import build_cluster_resources

log = logging.getLogger(__name__)

# Ray's JobManager refuses a submission id it already has with a ValueError that the dashboard
# relays as HTTP 500 with the traceback as the body.
DUPLICATE_SUBMISSION_MARKER = "Please use a different submission_id"
# Deleting a job that is not terminal fails inside Ray's JobManager with a RuntimeError, relayed as
# HTTP 500 too; retrying cannot help.
NOT_TERMINAL_MARKER = "non-terminal state"
# The state API truncates lists at 100 by default; a cluster never has this many nodes.
NODE_LIST_LIMIT = "10000"
# Lines of a job log's end asked for: more than status shows (engine.failure keeps 20), so that blank lines
# and progress bars between them still leave enough; the byte cap (Bounds.tail_bytes) bounds them anyway.
LOG_TAIL_LINES = 100


@dataclass(frozen=True)
class Submission:
    submission_id: str
    # False when a job with this id already existed: a restarted operator adopts it, never duplicates it.
    created: bool


def _job_path(submission_id: str) -> str:
    return f"/api/jobs/{quote(submission_id, safe='')}"


def _parse_job(payload: Any, what: str) -> JobInfo:
    try:
        return JobInfo.model_validate(payload)
    except ValidationError as e:
        raise RayError(f"{what}: unexpected job record: {e}") from e


class RayDashboardClient:
    """One Ray cluster's dashboard, e.g. http://NAME-head-svc.NAMESPACE.svc:8265.

    Every method raises RayError (transient: unreachable, timeout, 5xx after retries), RayAuthError
    (401/403) or RayRequestRejectedError (other 4xx); a missing job is a None/False result, not an error."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        bounds: Bounds | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """`bounds` limit every call (without: the defaults, with `timeout` per read)."""
        self._http = DashboardHTTP(
            base_url,
            token=token,
            bounds=bounds or Bounds(timeout=timeout),
            retry=retry,
            transport=transport,
            client=client,
        )

    @property
    def base_url(self) -> str:
        return self._http.base_url

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- jobs ---------------------------------------------------------------------------------------

    async def submit(self, request: JobSubmitRequest) -> Submission:
        """Submit unless a job with this submission id exists (GET first, POST only on 404, as KubeRay
        does). A POST that races with another submitter, or that is retried after the first try
        succeeded unseen, answers 'Please use a different submission_id': that counts as submitted."""
        if await self.get(request.submission_id) is not None:
            return Submission(request.submission_id, created=False)
        response = await self._http.request(
            "POST",
            "/api/jobs/",
            json=request.to_wire(),
            final=lambda r: DUPLICATE_SUBMISSION_MARKER in r.text,
        )
        if response.status_code >= 300:
            log.info("job %s already submitted (duplicate submission id)", request.submission_id)
            return Submission(request.submission_id, created=False)
        answer = decode_json(response)
        returned = answer.get("submission_id") if isinstance(answer, dict) else None
        if returned != request.submission_id:
            raise RayError(
                f"POST /api/jobs/ answered submission id {returned!r}, not {request.submission_id!r}"
            )
        return Submission(request.submission_id, created=True)

    async def get(self, submission_id: str) -> JobInfo | None:
        """The job, or None if the cluster does not know it (never submitted, deleted, or lost with a
        head that restarted without GCS fault tolerance)."""
        path = _job_path(submission_id)
        response = await self._http.request("GET", path, allow=frozenset({404}))
        if response.status_code == 404:
            return None
        return _parse_job(decode_json(response), f"GET {path}")

    async def list(self) -> list[JobInfo]:
        """Submission jobs only: drivers started by `ray.init()` inside the cluster have no submission
        id and are not the operator's."""
        payload = await self._http.get_json("/api/jobs/")
        if not isinstance(payload, list):
            raise RayError("GET /api/jobs/ did not answer a list")
        return [
            _parse_job(item, "GET /api/jobs/")
            for item in payload
            if isinstance(item, dict) and item.get("submission_id")
        ]

    async def logs(self, submission_id: str) -> str | None:
        """The end of the entrypoint's stdout+stderr: its last LOG_TAIL_LINES lines, of which at most
        Bounds.tail_bytes are kept (whole lines); "" before the job has a driver; None if the job is unknown.

        Not GET /api/jobs/{id}/logs: in Ray 2.60 its agent reads the whole file and answers it as one JSON
        string, so a long-lived engine's log costs its size on both sides. The state API's log route seeks
        back from the end of the driver's log file on its node and streams only the lines asked for; it needs
        the driver's node id (GetLogOptions), which the job record has. Not retried: a log only explains."""
        job = await self.get(submission_id)
        if job is None:
            return None
        if job.driver_node_id is None:
            return ""
        params = {
            "submission_id": submission_id,
            "node_id": job.driver_node_id,
            "lines": str(LOG_TAIL_LINES),
            # Ray's own RPC timeout to the node's agent, in whole seconds: not past this call's deadline.
            "timeout": str(max(1, int(self._http.bounds.deadline))),
        }
        answer = await self._http.request("GET", "/api/v0/logs/file", params=params, retry=False, tail=True)
        text = answer.text
        # Where the answer was cut it is mid-line (mid-character even, hence "replace" in Answer.text): those
        # parts are dropped, so status shows whole lines only.
        text = text.split("\n", 1)[-1] if answer.truncated else text
        return text if answer.ended else text.rpartition("\n")[0] + "\n"

    async def stop(self, submission_id: str) -> bool:
        """Ask Ray to stop the job: SIGTERM to the entrypoint's process group, SIGKILL after
        RAY_JOB_STOP_WAIT_TIME_S. False if it was already terminal or is unknown."""
        path = f"{_job_path(submission_id)}/stop"
        response = await self._http.request("POST", path, allow=frozenset({404}))
        if response.status_code == 404:
            return False
        answer = decode_json(response)
        return bool(answer.get("stopped")) if isinstance(answer, dict) else False

    async def delete(self, submission_id: str) -> bool:
        """Forget a terminal job (its record and logs). False if unknown. Ray refuses to delete a job
        that is not terminal: RayRequestRejectedError; stop it and wait first."""
        path = _job_path(submission_id)
        response = await self._http.request(
            "DELETE", path, allow=frozenset({404}), final=lambda r: NOT_TERMINAL_MARKER in r.text
        )
        if response.status_code == 404:
            return False
        if response.status_code >= 300:
            raise RayRequestRejectedError(
                f"DELETE {path}: the job is not terminal; stop it and wait first", response.status_code
            )
        answer = decode_json(response)
        return bool(answer.get("deleted")) if isinstance(answer, dict) else False

    # --- cluster ------------------------------------------------------------------------------------

    async def gcs_healthy(self) -> bool:
        """True if the dashboard answers and reaches the GCS; False if it answers that the GCS is not
        alive. Raises RayError when the dashboard itself cannot be reached. Not retried: a health check
        wants the answer of now."""
        response = await self._http.request(
            "GET", "/api/gcs_healthz", allow=frozenset({500, 503}), retry=False
        )
        return response.status_code == 200

    async def ray_version(self) -> str:
        """The cluster's Ray version (GET /api/version), to check it matches the image's."""
        answer = await self._http.get_json("/api/version")
        version = answer.get("ray_version") if isinstance(answer, dict) else None
        if not isinstance(version, str):
            raise RayError("GET /api/version: no ray_version")
        return version

    async def version(self, *, with_token: bool) -> VersionAnswer:
        """GET /api/version with the token or without it, a refusal (401/403) answered, not raised: how the
        operator sees that token auth is in force (rayvllm.ray_auth decides). Ray 2.60's token middleware
        guards this route (only /, /favicon.ico, /static/*, /api/authentication_mode, /api/authenticate and
        the health checks are public: dashboard/http_server_head.py), it is served by the job module that
        takes submissions, and it answers a few bytes. A 2xx that is not the expected JSON still says
        whether the token was asked for: it is answered with no version."""
        response = await self._http.request(
            "GET", "/api/version", allow=AUTH_REFUSALS, authenticated=with_token
        )
        if response.status_code in AUTH_REFUSALS:
            return VersionAnswer(response.status_code)
        try:
            payload = decode_json(response)
        except RayError:
            payload = None
        fields = payload if isinstance(payload, dict) else {}
        version, session = fields.get("ray_version"), fields.get("session_name")
        return VersionAnswer(
            response.status_code,
            ray_version=version if isinstance(version, str) else None,
            session_name=session if isinstance(session, str) else None,
        )

    async def cluster_resources(self) -> ClusterResources:
        """Every node with its IP, head flag, state and logical resources. Totals are exact and current;
        availability comes from the autoscaler's report when the head runs one, and lags reality by
        a few seconds (a new node shows None, a freshly taken resource still shows free)."""
        nodes = await self._http.get_json("/api/v0/nodes", params={"limit": NODE_LIST_LIMIT})
        status: Any = None
        try:
            status = await self._http.get_json("/api/cluster_status", params={"format": "0"})
        except RayError as e:
            # Availability is a diagnostic nicety; totals alone gate readiness.
            log.debug("no cluster_status from %s: %s", self.base_url, e)
        try:
            return build_cluster_resources(nodes, status)
        except MalformedResponseError as e:
            raise RayError(f"{self.base_url}: {e}") from e


class Dashboards:
    """Makes the client of each RayCluster's dashboard; all share one HTTP connection pool and `bounds`."""

    def __init__(self, http: httpx.AsyncClient, bounds: Bounds) -> None:
        self.http = http
        self._bounds = bounds

    def client(self, base_url: str, token: str | None) -> RayDashboardClient:
        return RayDashboardClient(base_url, token=token, bounds=self._bounds, client=self.http)
