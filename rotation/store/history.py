"""The rotation history: one row per rotation attempt of a cluster, newest first (rows are only inserted).

Layout in `rotation.store.tables`. What ``rotation history --json`` prints is `HistoryEntry.to_dict`.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from rotation.store.clients import storage_errors
from rotation.store.tables import EPOCH, clip, cluster_row_key, row_key_for_text, text, utc

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rotation.ids import ResourceId
    from rotation.outcomes import RotationResult
    from rotation.store.tables import Tables

_MAX_TICKS = 10**19 - 1  # microseconds since the epoch stay below this until far beyond year 9999


@dataclass(frozen=True)
class HistoryEntry:
    """One rotation attempt of one cluster, as appended to the history.

    Its fields are those of the `RotationResult` it records (less the target key URL and the dry-run
    body, which are not kept) plus when and why it ran. It does not hold a `RotationResult`: ``outcome``
    stays the text as stored, so a row written by a newer version, with an outcome this one does not
    know, is shown as it was written rather than as some other outcome.
    """

    cluster_id: str
    at: datetime
    outcome: str  # an `Outcome` value
    reason: str
    trigger: str | None
    event_id: str | None
    invocation_id: str | None
    from_version: str | None
    to_version: str | None
    key: str | None
    attempts: int
    duration_s: float
    error_code: str | None
    error_message: str | None
    request_id: str | None
    operation_url: str | None
    correlation_id: str | None = None
    dequeue_count: int | None = None  # the queue delivery that failed (retries exhausted), when known
    collateral_changes: tuple[str, ...] = ()  # paths that changed besides the key (rule 9)

    @classmethod
    def of(
        cls,
        result: RotationResult,
        *,
        at: datetime,
        trigger: str | None,
        event_id: str | None,
        invocation_id: str | None,
        dequeue_count: int | None = None,
    ) -> HistoryEntry:
        """The entry recording ``result``."""
        return cls(
            cluster_id=result.cluster_id,
            at=at,
            outcome=result.outcome.value,
            reason=result.reason,
            trigger=trigger,
            event_id=event_id,
            invocation_id=invocation_id,
            from_version=result.from_version,
            to_version=result.to_version,
            key=result.key,
            attempts=result.attempts,
            duration_s=result.duration_s,
            error_code=result.error_code,
            error_message=result.error_message,
            request_id=result.request_id,
            correlation_id=result.correlation_id,
            operation_url=result.operation_url,
            dequeue_count=dequeue_count,
            collateral_changes=result.collateral_changes,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``at`` in ISO 8601."""
        return {
            "cluster_id": self.cluster_id,
            "at": self.at.isoformat(),
            "outcome": self.outcome,
            "reason": self.reason,
            "trigger": self.trigger,
            "event_id": self.event_id,
            "invocation_id": self.invocation_id,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "key": self.key,
            "attempts": self.attempts,
            "duration_s": round(self.duration_s, 3),
            "error_code": self.error_code,
            "error_message": self.error_message,
            "request_id": self.request_id,
            "correlation_id": self.correlation_id,
            "operation_url": self.operation_url,
            "dequeue_count": self.dequeue_count,
            "collateral_changes": list(self.collateral_changes),
        }


class History:
    """Append to and read the rotation history."""

    def __init__(self, tables: Tables) -> None:
        self._tables = tables

    async def append(self, entry: HistoryEntry) -> None:
        """Insert ``entry`` in its cluster's partition (one request)."""
        history = await self._tables.history()
        with storage_errors(f"append history of {entry.cluster_id}"):
            await history.create_entity(_history_entity(entry, row_key_for_text(entry.cluster_id)))

    async def recent(self, cluster_id: ResourceId, *, limit: int = 50) -> list[HistoryEntry]:
        """The cluster's last ``limit`` rotation records, newest first."""
        history = await self._tables.history()
        out: list[HistoryEntry] = []
        if limit <= 0:
            return out
        with storage_errors(f"query {history.table_name}"):
            pages = history.query_entities(
                "PartitionKey eq @pk",
                parameters={"pk": cluster_row_key(cluster_id)},
                results_per_page=min(limit, 1000),
            )
            async for entity in pages:
                out.append(_history_entry(entity))
                if len(out) >= limit:
                    break
        return out


def _inverted_ticks(at: datetime) -> str:
    micros = int((at - EPOCH) / timedelta(microseconds=1))
    return f"{_MAX_TICKS - micros:019d}"


def _paths(raw: object) -> tuple[str, ...]:
    """The collateral-change paths of a history entity (a JSON list), () when absent or unreadable."""
    try:
        value = json.loads(raw) if isinstance(raw, str) else []
    except ValueError:
        return ()
    return tuple(str(p) for p in value) if isinstance(value, list) else ()


def _history_entity(entry: HistoryEntry, partition: str) -> dict[str, Any]:
    return {
        "PartitionKey": partition,
        "RowKey": f"{_inverted_ticks(entry.at)}-{secrets.token_hex(4)}",
        "ClusterId": entry.cluster_id,
        "At": entry.at,
        "Outcome": entry.outcome,
        "Reason": clip(entry.reason),
        "Trigger": entry.trigger,
        "EventId": entry.event_id,
        "InvocationId": entry.invocation_id,
        "FromVersion": entry.from_version,
        "ToVersion": entry.to_version,
        "Key": entry.key,
        "Attempts": entry.attempts,
        "DurationS": float(entry.duration_s),
        "ErrorCode": entry.error_code,
        "ErrorMessage": clip(entry.error_message),
        "RequestId": entry.request_id,
        "CorrelationId": entry.correlation_id,
        "OperationUrl": entry.operation_url,
        "DequeueCount": entry.dequeue_count,
        "CollateralChanges": json.dumps(list(entry.collateral_changes)) if entry.collateral_changes else None,
    }


def _history_entry(entity: Mapping[str, Any]) -> HistoryEntry:
    attempts = entity.get("Attempts")
    duration = entity.get("DurationS")
    return HistoryEntry(
        cluster_id=str(entity.get("ClusterId", "")),
        at=utc(entity.get("At")) or EPOCH,
        outcome=str(entity.get("Outcome", "")),
        reason=str(entity.get("Reason", "")),
        trigger=text(entity.get("Trigger")),
        event_id=text(entity.get("EventId")),
        invocation_id=text(entity.get("InvocationId")),
        from_version=text(entity.get("FromVersion")),
        to_version=text(entity.get("ToVersion")),
        key=text(entity.get("Key")),
        attempts=int(attempts) if isinstance(attempts, int | float) else 0,
        duration_s=float(duration) if isinstance(duration, int | float) else 0.0,
        error_code=text(entity.get("ErrorCode")),
        error_message=text(entity.get("ErrorMessage")),
        request_id=text(entity.get("RequestId")),
        correlation_id=text(entity.get("CorrelationId")),
        operation_url=text(entity.get("OperationUrl")),
        dequeue_count=dequeue if isinstance(dequeue := entity.get("DequeueCount"), int) else None,
        collateral_changes=_paths(entity.get("CollateralChanges")),
    )
