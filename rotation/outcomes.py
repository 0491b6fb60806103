"""The words shared by logs, history, the CLI and HTTP (docs/design.md, "Outcomes").

`Outcome`: what happened to one cluster; `EventOutcome`: what became of one event; `Trigger`: what started a
job. All are `StrEnum`s, so the JSON and log text is the value itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rotation.errors import TransientFailure


class Outcome(StrEnum):
    """What happened to one cluster (or one event)."""

    ROTATED = "rotated"
    ALREADY_CURRENT = "already-current"
    STALE_EVENT = "stale-event"
    VERSIONLESS = "versionless"
    KEY_MISMATCH = "key-mismatch"
    KEY_NOT_USABLE = "key-not-usable"
    NOT_CMK = "not-cmk"
    CLUSTER_NOT_FOUND = "cluster-not-found"
    PENDING = "pending"
    DRY_RUN = "dry-run"
    FAILED = "failed"
    IGNORED = "ignored"
    REJECTED = "rejected"

    @property
    def needs_attention(self) -> bool:
        """Whether this outcome makes a CLI command exit 1 (a cluster failed or a request was refused).

        Rule skips that leave the cluster safe and as intended (already current, stale event, versionless,
        another key, dry run, pending) do not; a failure, a refused target key, or a cluster that cannot be
        rotated at all (gone, not CMK) does.
        """
        return self in _ATTENTION


_ATTENTION = frozenset(
    {Outcome.FAILED, Outcome.KEY_NOT_USABLE, Outcome.NOT_CMK, Outcome.CLUSTER_NOT_FOUND, Outcome.REJECTED}
)


class EventOutcome(StrEnum):
    """What became of one event as a whole (each cluster it reached has its own `Outcome`)."""

    QUEUED = "queued"  # one job per watched cluster of the key is on the queue
    WARNED = "warned"  # a near-expiry or expired key: logged for on-call, nothing queued
    DUPLICATE = "duplicate"  # this version was fanned out moments ago: nothing queued again
    NO_CLUSTERS = "no-clusters"  # `replay`: no watched cluster uses the key
    IGNORED = Outcome.IGNORED.value
    REJECTED = Outcome.REJECTED.value


class Trigger(StrEnum):
    """What started a job: recorded with it on the queue, in the logs and in the history."""

    EVENT = "event"  # a Key Vault event, fanned out
    RECONCILE = "reconcile"  # the reconcile pass found the cluster behind
    MANUAL = "manual"  # `rotate`, or POST /api/rotate
    REPLAY = "replay"  # `replay` of an event file
    CHECK = "check"  # following an accepted operation (rule 7); never writes


@dataclass(frozen=True)
class RotationResult:
    """The record of one rotation attempt of one cluster: what the logs, history and CLI report."""

    cluster_id: str
    outcome: Outcome
    reason: str
    from_version: str | None = None
    to_version: str | None = None
    key: str | None = None  # "{vault host}/{key name}"
    target_key_url: str | None = None
    attempts: int = 0
    duration_s: float = 0.0
    error_code: str | None = None
    error_message: str | None = None
    operation_url: str | None = None
    request_id: str | None = None  # ARM x-ms-request-id of the PUT (or of the failing call)
    correlation_id: str | None = None  # ARM x-ms-correlation-request-id, what ARM support asks for
    body: dict[str, Any] | None = field(default=None, repr=False)
    # Paths (never values) that changed between the GET before the write and the verifying GET, besides
    # the key URL and status fields (rule 9): a PUT replaces, so the rotation must show what else it moved.
    collateral_changes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the outcome as its string value; the dry-run body only when present."""
        out = asdict(self)
        out["outcome"] = self.outcome.value
        out["duration_s"] = round(self.duration_s, 3)
        out["collateral_changes"] = list(self.collateral_changes)
        if self.body is None:
            del out["body"]
        return out


def exhausted(
    cluster_id: str, exc: TransientFailure, *, note: str = "", to_version: str | None = None
) -> RotationResult:
    """The `FAILED` result of a job whose retries ran out on ``exc``; ``note`` says what happens next."""
    return RotationResult(
        cluster_id=cluster_id,
        outcome=Outcome.FAILED,
        reason=f"retries exhausted{note}: {exc.cause}",
        to_version=to_version,
        attempts=exc.attempts,
        error_code=exc.cause.error_code,
        error_message=exc.cause.message,
        request_id=exc.cause.request_id,
    )
