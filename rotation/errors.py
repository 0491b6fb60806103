"""Errors keyed on what the caller does next: retry later, or give up with a reason.

Adapters translate azure-core errors into these at their boundary (``raise ... from exc``), so the rules
in `rotation.engine` never branch on HTTP libraries.
"""

from __future__ import annotations

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class RotationError(Exception):
    """Base of the rotator's own errors."""


class ServiceError(RotationError):
    """An Azure service answered with an error, or could not be reached.

    ``status`` is None when no response arrived (connection refused or reset, timeout). ``transient``
    says whether the same request may succeed later (429, 409, 408, 5xx, no response);
    400/401/403/404 never do.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.service = service
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.request_id = request_id
        self.correlation_id = correlation_id
        self.attempts = 1  # set by the retry policy that gave up

    @property
    def error_code(self) -> str | None:
        """What results and history record as the error code: the service's code, else the HTTP status."""
        return self.code or (str(self.status) if self.status else None)

    @property
    def transient(self) -> bool:
        """Whether retrying the same call can help."""
        if self.status is None:
            return True
        if self.code == "RetryableErrorDueToAnotherOperation":
            return True
        return self.status in RETRYABLE_STATUS

    def __str__(self) -> str:
        where = (
            f"{self.service} {self.status}" if self.status is not None else f"{self.service} (no response)"
        )
        code = f" {self.code}" if self.code else ""
        return f"{where}{code}: {self.message}"


class NotFoundError(ServiceError):
    """The resource (cluster, key, key version) does not exist."""


class ClusterBusy(RotationError):
    """The cluster cannot be rotated now; the job is deferred and decides again later.

    Another worker holds the cluster's claim (rule 8), or an operation is running on the cluster (its
    ``provisioningState`` is not terminal): a decision taken now could be overtaken by that operation.
    """


class TransientFailure(RotationError):
    """Retries are exhausted on a transient error: the job must be redelivered, not acknowledged."""

    def __init__(self, cluster_id: str, cause: ServiceError, attempts: int) -> None:
        super().__init__(f"{cluster_id}: gave up after {attempts} attempt(s): {cause}")
        self.cluster_id = cluster_id
        self.cause = cause
        self.attempts = attempts


class Interrupted(RotationError):
    """The operator interrupted a run after ARM accepted a write; the message says what is still running."""
