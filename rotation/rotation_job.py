"""One rotation job as the engine runs it: what it asks, what it runs on, what is known of it as it runs.

`RotationRequest` is the job (from the queue, the CLI, reconcile or a check); `ClustersPort` and `KeysPort`
are the ARM and Key Vault calls it makes (`Protocol`s: the rules are tested on in-memory fakes); `WriteFlag`
is up while its write may be on its way to ARM; `JobState` gathers what the engine learns (key, versions,
attempts, operation, collateral changes) into the job's log fields and its `RotationResult`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rotation.ids import InvalidKeyUrl, parse_key_url
from rotation.outcomes import RotationResult, Trigger

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence
    from datetime import datetime

    from rotation.azure.arm import AcceptedOperation, Cluster, OperationStatus
    from rotation.azure.lro import OperationKind
    from rotation.errors import ServiceError
    from rotation.ids import KeyUrl, ResourceId
    from rotation.key_rules import KeyVersion
    from rotation.outcomes import Outcome


class ClustersPort(Protocol):
    """The ARM calls a rotation makes (`rotation.azure.arm.ClustersClient`)."""

    async def get(self, cluster_id: ResourceId) -> Cluster: ...  # noqa: D102
    async def put(self, cluster_id: ResourceId, body: dict[str, Any]) -> AcceptedOperation: ...  # noqa: D102
    async def patch(self, cluster_id: ResourceId, body: dict[str, Any]) -> AcceptedOperation: ...  # noqa: D102
    async def operation_status(  # noqa: D102
        self, url: str, *, cluster_id: ResourceId, kind: OperationKind | None = None
    ) -> OperationStatus: ...


class KeysPort(Protocol):
    """The Key Vault reads a rotation makes (`rotation.azure.keyvault.KeyVaultKeys`)."""

    async def get_version(self, key: KeyUrl) -> KeyVersion: ...  # noqa: D102
    async def newest_usable(self, key: KeyUrl, now: datetime | None = None) -> KeyVersion | None: ...  # noqa: D102
    def read_ahead(self, keys: Iterable[KeyUrl]) -> None:
        """Start reading versions a job will likely ask `get_version` for, without waiting for them."""


@dataclass(frozen=True)
class RotationRequest:
    """One job: move ``cluster_id`` to ``target`` (None: the newest usable version of its own key)."""

    cluster_id: ResourceId
    target: KeyUrl | None = None
    trigger: Trigger = Trigger.MANUAL
    event_id: str | None = None
    dry_run: bool = False
    operation_url: str | None = None  # an accepted operation to resume instead of PUTting (rule 7)
    invocation_id: str | None = None  # the Functions invocation (or CLI run) doing the job, for the logs
    dequeue_count: int | None = None  # the queue delivery running the job (None: not from the queue)
    # The version the registry last recorded for the cluster: a hint only (its Key Vault read starts early).
    registered_version: str | None = None


def versions_to_read_ahead(request: RotationRequest, allowed_suffixes: Sequence[str]) -> list[KeyUrl]:
    """The key versions rules 2 and 3 will read for ``request``: read while the cluster's GET is on its way.

    The target and the version the registry recorded (a hint: malformed, it is left out); none for a job
    without a target, one resuming an operation, or one the registry already shows on its target.
    """
    target, version = request.target, request.registered_version
    if target is None or request.operation_url is not None or version == target.version:
        return []
    if not version:
        return [target]
    try:
        url = f"{target.vault_url}/keys/{target.name}/{version}"
        return [target, parse_key_url(url, allowed_suffixes=allowed_suffixes, require_version=True)]
    except InvalidKeyUrl:
        return [target]


@dataclass
class WriteFlag:
    """Up while a PUT of this job may be on its way to ARM; ``guard`` runs before each PUT attempt.

    The guard is where the caller re-asserts its claim on the cluster (rule 8): it raises to stop a PUT
    that another writer could overtake, e.g. when this job ran past its claim's expiry.
    """

    in_flight: bool = False
    guard: Callable[[], Awaitable[None]] | None = None


class JobState:
    """What is known so far about one job, for its result and its log lines."""

    def __init__(self, request: RotationRequest) -> None:
        self.request = request
        self.key: str | None = None
        self.from_version: str | None = None
        self.target: KeyUrl | None = request.target
        self.attempts = 0
        self.operation_url: str | None = None
        self.request_id: str | None = None
        self.correlation_id: str | None = None
        self.before: Cluster | None = None  # the GET this job started from (rule 9's comparison)
        self.collateral: tuple[str, ...] = ()

    def log_fields(self) -> dict[str, Any]:
        """The fields every log line of this job carries."""
        return {
            "cluster_id": str(self.request.cluster_id),
            "subscription": self.request.cluster_id.subscription,
            "event_id": self.request.event_id,
            "invocation_id": self.request.invocation_id,
            "trigger": self.request.trigger,
            "key": self.key,
            "from_version": self.from_version,
            "to_version": self.target.version if self.target else None,
        }

    def result(
        self,
        outcome: Outcome,
        reason: str,
        duration: float,
        *,
        error: ServiceError | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> RotationResult:
        """The job's result with ``outcome``; an ``error`` fills in its code, message and request ids."""
        if error is not None:
            error_code = error_code or error.error_code
            error_message = error_message or error.message
            self.request_id = self.request_id or error.request_id
            self.correlation_id = self.correlation_id or error.correlation_id
        return RotationResult(
            cluster_id=str(self.request.cluster_id),
            outcome=outcome,
            reason=reason,
            from_version=self.from_version,
            to_version=self.target.version if self.target else None,
            key=self.key,
            target_key_url=str(self.target) if self.target else None,
            attempts=self.attempts,
            duration_s=duration,
            error_code=error_code,
            error_message=error_message,
            operation_url=self.operation_url,
            request_id=self.request_id,
            correlation_id=self.correlation_id,
            body=body,
            collateral_changes=self.collateral,
        )
