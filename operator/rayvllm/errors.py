"""The project's own error tree. k8s/ and ray/ convert library exceptions into these; handlers map
them to kopf.TemporaryError (retry later) or kopf.PermanentError (needs a spec change)."""


class RayvllmError(Exception):
    """Base of every error the operator raises on purpose."""


class TransientError(RayvllmError):
    """Worth retrying unchanged: a timeout, a 5xx, a connection refused, a conflict."""

    def __init__(self, message: str, retry_after: float = 10.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(RayvllmError):
    """Will fail the same way until someone changes the input."""


class InvalidSpecError(PermanentError):
    """The VLLMCluster spec is invalid; `field` names the offending field path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class KubernetesError(TransientError):
    """The Kubernetes API answered with an error that may go away (5xx, 409, 429, timeouts)."""


class KubernetesNotFoundError(KubernetesError):
    """The object asked for does not exist (HTTP 404)."""


class KubernetesRejectedError(PermanentError):
    """The Kubernetes API refused a request as invalid or forbidden (400, 403, 422)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RayError(TransientError):
    """The Ray dashboard could not be reached or answered with a retriable error."""


class RayAuthError(PermanentError):
    """The Ray dashboard refused our credentials (401/403)."""


class RayRequestRejectedError(PermanentError):
    """The dashboard refused a request as invalid (4xx other than 401/403/404): the same request
    will fail again."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class AnswerTooLargeError(RayvllmError):
    """A Ray dashboard or an engine answered more than the operator reads (settings.http_body_limit_bytes):
    the answer was not read whole, and asking again would bring the same answer."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(f"{message} (RAYVLLM_HTTP_BODY_LIMIT_BYTES)")
        self.limit = limit


class MalformedResponseError(ValueError):
    """A Ray dashboard answer lacked a field its parser relies on."""


class SchemaError(ValueError):
    """The API models produced something a structural CRD schema cannot express."""
