r"""The watch registry and the rotation history, on Azure Table storage (``azure-data-tables`` aio).

Layout (all keys lower-case; ``/`` in an ARM id becomes ``|``, which ARM ids cannot contain, because
table keys must not contain ``/ \ # ?`` or control characters):

- table ``watchedclusters``
    - watch rows: PartitionKey ``{vault host}|{key name}`` (the key identity), RowKey the encoded cluster id.
      Finding the clusters of a key is one single-partition query.
    - cluster rows: PartitionKey ``clusters``, RowKey the encoded cluster id, holding the pointer to the
      cluster's watch partition (``KeyPartition``, empty when unwatched) and its claim (rule 8:
      ``ClaimOwner``, ``ClaimExpires``). Watched and unwatched clusters claim the same way, and history
      or registration writes never disturb a claim's ETag.
- table ``rotationhistory``: PartitionKey the encoded cluster id, RowKey an inverted timestamp plus a
  random suffix, so a plain partition query returns newest first. Rows are only ever inserted.

Every storage failure reaches the caller as `ServiceError` (``service="storage"``); nothing is swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from rotation.errors import ServiceError
from rotation.ids import InvalidResourceId, parse_cluster_id
from rotation.outcomes import Outcome
from rotation.store.clients import SERVICE, storage_errors

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Callable, Mapping

    from azure.data.tables import TableEntity
    from azure.data.tables.aio import TableClient, TableServiceClient

    from rotation.ids import ResourceId
    from rotation.outcomes import RotationResult

WATCH_TABLE = "watchedclusters"
HISTORY_TABLE = "rotationhistory"
CLUSTER_PARTITION = "clusters"  # never a key identity: those always contain '|'
_MAX_TICKS = 10**19 - 1  # microseconds since the epoch stay below this until far beyond year 9999
_MAX_TEXT = 8000  # characters kept of a reason or error message (a table string holds 32K)
_WRITE_ATTEMPTS = 5  # read-modify-write rounds before giving up on a row others keep changing
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UPDATES_OUTCOME_VERSION = frozenset({Outcome.ROTATED, Outcome.ALREADY_CURRENT})
# Fan-out markers live in their key's watch partition, under RowKeys that sort after every cluster row
# (those start with '|'), so queries for watch rows stop before them (``RowKey lt '~'``).
FANOUT_PREFIX = "~fanout~"
_WATCH_ROWS = "RowKey lt '~'"


class ClaimState(StrEnum):
    """The state of a watched cluster's row.

    The registry sets ``watching`` and ``pending``; ``rotating`` is part of the vocabulary for callers that
    show a claimed cluster (claims live on the cluster row, see the module docstring).
    """

    WATCHING = "watching"
    ROTATING = "rotating"
    PENDING = "pending"


@dataclass(frozen=True)
class WatchedCluster:
    """One registered cluster, as stored."""

    cluster_id: str  # as given at registration (original casing)
    subscription: str
    vault_host: str  # e.g. contoso-kv.vault.azure.net
    key_name: str
    current_version: str | None  # None for a versionless cluster
    identity: str | None  # the CMK user-assigned identity id
    owner: str | None
    state: str  # ClaimState value
    last_outcome: str | None  # Outcome value
    last_reason: str | None
    last_outcome_at: datetime | None
    registered_at: datetime
    updated_at: datetime
    operation_url: str | None  # while an accepted operation runs (rule 7)
    target_key_url: str | None  # the target of that operation
    etag: str | None = None  # of the row as read

    @property
    def key(self) -> str:
        """``{vault host}/{key name}``, as `RotationResult.key` spells it."""
        return f"{self.vault_host}/{self.key_name}"

    @property
    def key_url(self) -> str:
        """The key URL the registry last saw on the cluster (versioned unless versionless)."""
        base = f"https://{self.vault_host}/keys/{self.key_name}"
        return f"{base}/{self.current_version}" if self.current_version else base


@dataclass(frozen=True)
class KeyMember:
    """A cluster watched on a key, as an event's fan-out needs it."""

    cluster_id: str
    subscription: str


@dataclass(frozen=True)
class HistoryEntry:
    """One rotation attempt of one cluster, as appended to the history."""

    cluster_id: str
    at: datetime
    outcome: str
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


@dataclass
class Claim:
    """A claim this process holds on one cluster (rule 8), and what taking it told about the cluster.

    Kept by the job that took it: with the ETag of its last write, renewing and releasing the claim are
    one conditional write each, and ``key_partition`` (the cluster row's pointer) finds the watch row
    without reading the cluster row again. A write that finds the row changed falls back to reading it.
    """

    cluster_id: ResourceId
    owner: str
    ttl: float
    etag: str | None
    key_partition: str | None  # the watch partition the cluster row pointed at; None when unwatched
    asserted_at: float  # time.monotonic() just before the claim was last written

    def fresh(self, now: float | None = None) -> bool:
        """Whether the claim was written less than a quarter of its TTL ago.

        No other worker can take a claim before it expires, so a fresh claim needs no renewal before a
        PUT; the other three quarters of the TTL cover the request itself and the clocks of other workers
        running ahead of this one.
        """
        elapsed = (time.monotonic() if now is None else now) - self.asserted_at
        return 0 <= elapsed < self.ttl / 4


def key_partition(vault_host: str, key_name: str) -> str:
    """The watch-table PartitionKey of a key: ``{vault host}|{key name}``, lower-cased."""
    return f"{vault_host.strip().lower()}|{key_name.strip().lower()}"


def cluster_row_key(cluster_id: ResourceId) -> str:
    """The table key of a cluster: its normalized id with ``/`` replaced by ``|``."""
    return cluster_id.normalized.replace("/", "|")


def _row_key_for_text(cluster_id: str) -> str:
    """`cluster_row_key` of an id string; one that does not parse is made safe character by character."""
    try:
        return cluster_row_key(parse_cluster_id(cluster_id))
    except InvalidResourceId:
        safe = "".join("_" if ch in "\\#?" or ch < " " or ch == "\x7f" else ch for ch in cluster_id)
        return safe.lower().replace("/", "|")[:512] or "_"


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: object) -> datetime | None:
    """A stored datetime as a plain timezone-aware UTC `datetime` (None when absent)."""
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    v = value.astimezone(UTC)
    return datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, tzinfo=UTC)


def _text(value: object) -> str | None:
    """A stored string; empty means absent."""
    return value if isinstance(value, str) and value else None


def _paths(raw: object) -> tuple[str, ...]:
    """The collateral-change paths of a history entity (a JSON list), () when absent or unreadable."""
    try:
        value = json.loads(raw) if isinstance(raw, str) else []
    except ValueError:
        return ()
    return tuple(str(p) for p in value) if isinstance(value, list) else ()


def _clip(value: str | None) -> str | None:
    return value[:_MAX_TEXT] if value is not None else None


def _inverted_ticks(at: datetime) -> str:
    micros = int((at - _EPOCH) / timedelta(microseconds=1))
    return f"{_MAX_TICKS - micros:019d}"


def _watch_entity(cluster: WatchedCluster) -> dict[str, Any]:
    """The watch-row entity of ``cluster`` (None fields are left out, so a REPLACE clears them)."""
    return {
        "PartitionKey": key_partition(cluster.vault_host, cluster.key_name),
        "RowKey": _row_key_for_text(cluster.cluster_id),
        "ClusterId": cluster.cluster_id,
        "Subscription": cluster.subscription,
        "VaultHost": cluster.vault_host,
        "KeyName": cluster.key_name,
        "CurrentVersion": cluster.current_version,
        "Identity": cluster.identity,
        "Owner": cluster.owner,
        "State": cluster.state,
        "LastOutcome": cluster.last_outcome,
        "LastReason": _clip(cluster.last_reason),
        "LastOutcomeAt": cluster.last_outcome_at,
        "RegisteredAt": cluster.registered_at,
        "UpdatedAt": cluster.updated_at,
        "OperationUrl": cluster.operation_url,
        "TargetKeyUrl": cluster.target_key_url,
    }


def _watched(entity: Mapping[str, Any], etag: str | None) -> WatchedCluster:
    registered = _utc(entity.get("RegisteredAt")) or _EPOCH
    return WatchedCluster(
        cluster_id=str(entity.get("ClusterId", "")),
        subscription=str(entity.get("Subscription", "")),
        vault_host=str(entity.get("VaultHost", "")),
        key_name=str(entity.get("KeyName", "")),
        current_version=_text(entity.get("CurrentVersion")),
        identity=_text(entity.get("Identity")),
        owner=_text(entity.get("Owner")),
        state=_text(entity.get("State")) or ClaimState.WATCHING.value,
        last_outcome=_text(entity.get("LastOutcome")),
        last_reason=_text(entity.get("LastReason")),
        last_outcome_at=_utc(entity.get("LastOutcomeAt")),
        registered_at=registered,
        updated_at=_utc(entity.get("UpdatedAt")) or registered,
        operation_url=_text(entity.get("OperationUrl")),
        target_key_url=_text(entity.get("TargetKeyUrl")),
        etag=etag,
    )


def _history_entity(entry: HistoryEntry, partition: str) -> dict[str, Any]:
    return {
        "PartitionKey": partition,
        "RowKey": f"{_inverted_ticks(entry.at)}-{secrets.token_hex(4)}",
        "ClusterId": entry.cluster_id,
        "At": entry.at,
        "Outcome": entry.outcome,
        "Reason": _clip(entry.reason),
        "Trigger": entry.trigger,
        "EventId": entry.event_id,
        "InvocationId": entry.invocation_id,
        "FromVersion": entry.from_version,
        "ToVersion": entry.to_version,
        "Key": entry.key,
        "Attempts": entry.attempts,
        "DurationS": float(entry.duration_s),
        "ErrorCode": entry.error_code,
        "ErrorMessage": _clip(entry.error_message),
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
        at=_utc(entity.get("At")) or _EPOCH,
        outcome=str(entity.get("Outcome", "")),
        reason=str(entity.get("Reason", "")),
        trigger=_text(entity.get("Trigger")),
        event_id=_text(entity.get("EventId")),
        invocation_id=_text(entity.get("InvocationId")),
        from_version=_text(entity.get("FromVersion")),
        to_version=_text(entity.get("ToVersion")),
        key=_text(entity.get("Key")),
        attempts=int(attempts) if isinstance(attempts, int | float) else 0,
        duration_s=float(duration) if isinstance(duration, int | float) else 0.0,
        error_code=_text(entity.get("ErrorCode")),
        error_message=_text(entity.get("ErrorMessage")),
        request_id=_text(entity.get("RequestId")),
        correlation_id=_text(entity.get("CorrelationId")),
        operation_url=_text(entity.get("OperationUrl")),
        dequeue_count=dequeue if isinstance(dequeue := entity.get("DequeueCount"), int) else None,
        collateral_changes=_paths(entity.get("CollateralChanges")),
    )


def _etag(entity: TableEntity) -> str | None:
    return _meta_etag(entity.metadata)


def _meta_etag(meta: Mapping[str, Any]) -> str | None:
    """The ETag in a write's response metadata."""
    etag = meta.get("etag")
    return etag if isinstance(etag, str) else None


class Registry:
    """Watched clusters, their claims and their rotation history.

    Takes ownership of ``tables`` (`close` closes it). Tables are created on first use, once per instance.
    Permission: Storage Table Data Contributor (or a connection string).
    """

    def __init__(
        self,
        tables: TableServiceClient,
        *,
        watch_table: str = WATCH_TABLE,
        history_table: str = HISTORY_TABLE,
    ) -> None:
        self._service = tables
        self._watch = tables.get_table_client(watch_table)
        self._history = tables.get_table_client(history_table)
        self._ready = False
        self._ready_lock = asyncio.Lock()

    @property
    def service_client(self) -> TableServiceClient:
        """The table service client (for the daemon's timer lease table; still owned by this registry)."""
        return self._service

    async def close(self) -> None:
        """Close the table clients and the service client."""
        await self._watch.close()
        await self._history.close()
        await self._service.close()

    async def _tables(self) -> tuple[TableClient, TableClient]:
        """The watch and history tables, created if missing on the first call."""
        if not self._ready:
            async with self._ready_lock:
                if not self._ready:
                    for table in (self._watch, self._history):
                        with (
                            storage_errors(f"create table {table.table_name}"),
                            contextlib.suppress(ResourceExistsError),
                        ):
                            await table.create_table()
                    self._ready = True
        return self._watch, self._history

    # -- reads -------------------------------------------------------------------------------------

    async def _read(self, table: TableClient, partition: str, row: str) -> TableEntity | None:
        with storage_errors(f"read {table.table_name} row"):
            try:
                return await table.get_entity(partition, row)
            except ResourceNotFoundError:
                return None

    async def _locate(self, row: str) -> tuple[TableEntity | None, TableEntity | None]:
        """The cluster row of ``row`` and, when watched, its watch row."""
        watch, _ = await self._tables()
        pointer = await self._read(watch, CLUSTER_PARTITION, row)
        partition = _text(pointer.get("KeyPartition")) if pointer is not None else None
        if partition is None:
            return pointer, None
        return pointer, await self._read(watch, partition, row)

    async def get(self, cluster_id: ResourceId) -> WatchedCluster | None:
        """The registered cluster, or None when it is not watched."""
        _, entity = await self._locate(cluster_row_key(cluster_id))
        return _watched(entity, _etag(entity)) if entity is not None else None

    async def get_claimed(self, claim: Claim) -> WatchedCluster | None:
        """`get` for a cluster under ``claim``: one read, at the watch row the claim's pointer names.

        While the claim is held the cluster is rotated by no one else; a re-registration meanwhile moves
        the row, and the next write through `record` or `set_operation` finds it again.
        """
        if claim.key_partition is None:
            return None
        watch, _ = await self._tables()
        entity = await self._read(watch, claim.key_partition, cluster_row_key(claim.cluster_id))
        return _watched(entity, _etag(entity)) if entity is not None else None

    async def for_key(self, vault_host: str, key_name: str) -> builtins.list[WatchedCluster]:
        """Every cluster watched on the key ``vault_host``/``key_name`` (case-insensitive).

        One single-partition query (paged by the service past 1000 rows).
        """
        return [_watched(entity, _etag(entity)) async for entity in self._key_rows(vault_host, key_name)]

    async def members_of_key(self, vault_host: str, key_name: str) -> builtins.list[KeyMember]:
        """`for_key` reduced to each cluster's id and subscription: what fanning an event out needs.

        The same single-partition query, selecting two properties: the SDK then parses no timestamps, which
        was most of the CPU of reading 1000 rows.
        """
        rows = self._key_rows(vault_host, key_name, select=["ClusterId", "Subscription"])
        return [KeyMember(str(e.get("ClusterId", "")), str(e.get("Subscription", ""))) async for e in rows]

    async def _key_rows(
        self, vault_host: str, key_name: str, *, select: builtins.list[str] | None = None
    ) -> AsyncIterator[TableEntity]:
        """The watch rows of one key: a single-partition query, 1000 rows per page (``select``: columns)."""
        watch, _ = await self._tables()
        with storage_errors(f"query {watch.table_name} for key {vault_host}/{key_name}"):
            async for entity in watch.query_entities(
                f"PartitionKey eq @pk and {_WATCH_ROWS}",
                parameters={"pk": key_partition(vault_host, key_name)},
                select=select,
                results_per_page=1000,
            ):
                yield entity

    async def list(self, *, page_size: int = 200) -> AsyncIterator[WatchedCluster]:
        """Every watched cluster, grouped by key, ``page_size`` rows per storage request."""
        watch, _ = await self._tables()
        with storage_errors(f"list {watch.table_name}"):
            pages = watch.query_entities(
                f"PartitionKey ne @pk and {_WATCH_ROWS}",
                parameters={"pk": CLUSTER_PARTITION},
                results_per_page=page_size,
            )
            async for entity in pages:
                yield _watched(entity, _etag(entity))

    async def history(self, cluster_id: ResourceId, *, limit: int = 50) -> builtins.list[HistoryEntry]:
        """The cluster's last ``limit`` rotation records, newest first."""
        _, history = await self._tables()
        out: builtins.list[HistoryEntry] = []
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

    # -- registration ------------------------------------------------------------------------------

    async def upsert(
        self,
        *,
        cluster_id: ResourceId,
        vault_host: str,
        key_name: str,
        current_version: str | None,
        identity: str | None,
        owner: str | None,
    ) -> WatchedCluster:
        """Register or re-register a cluster (idempotent).

        ``owner=None`` keeps the stored owner (re-registering changes only what it is told to). The id is
        stored as given: callers pass it in the casing ARM returns. Keeps the registration time, last
        outcome and any operation in flight. When the cluster's key changed, its row moves to the new key's
        partition and the old row is deleted.
        """
        row = cluster_row_key(cluster_id)
        watch, _ = await self._tables()
        for _attempt in range(_WRITE_ATTEMPTS):
            _, old = await self._locate(row)
            now = _now()
            previous = _watched(old, _etag(old)) if old is not None else None
            cluster = WatchedCluster(
                cluster_id=str(cluster_id),
                subscription=cluster_id.subscription,
                vault_host=vault_host.lower(),
                key_name=key_name,
                current_version=current_version.lower() if current_version else None,
                identity=identity,
                owner=owner if owner is not None else (previous.owner if previous else None),
                state=previous.state if previous else ClaimState.WATCHING.value,
                last_outcome=previous.last_outcome if previous else None,
                last_reason=previous.last_reason if previous else None,
                last_outcome_at=previous.last_outcome_at if previous else None,
                registered_at=previous.registered_at if previous else now,
                updated_at=now,
                operation_url=previous.operation_url if previous else None,
                target_key_url=previous.target_key_url if previous else None,
            )
            entity = _watch_entity(cluster)
            moved = old is not None and old["PartitionKey"] != entity["PartitionKey"]
            with storage_errors(f"register {cluster_id}"):
                try:
                    if old is not None and not moved:
                        meta = await watch.update_entity(
                            entity,
                            mode=UpdateMode.REPLACE,
                            etag=_etag(old),
                            match_condition=MatchConditions.IfNotModified,
                        )
                    else:
                        meta = await watch.upsert_entity(entity, mode=UpdateMode.REPLACE)
                except ResourceModifiedError:
                    continue
                await self._point(row, str(cluster_id), entity["PartitionKey"])
                if old is not None and moved:
                    with contextlib.suppress(ResourceNotFoundError):
                        await watch.delete_entity(old["PartitionKey"], row)
            return replace(cluster, etag=_meta_etag(meta))
        raise _conflict(f"register {cluster_id}")

    async def _point(self, row: str, cluster_id: str, partition: str) -> None:
        """Set (or clear, with ``partition=""``) the cluster row's pointer; claim fields are untouched."""
        watch, _ = await self._tables()
        await watch.upsert_entity(
            {
                "PartitionKey": CLUSTER_PARTITION,
                "RowKey": row,
                "ClusterId": cluster_id,
                "KeyPartition": partition,
            },
            mode=UpdateMode.MERGE,
        )

    async def remove(self, cluster_id: ResourceId) -> bool:
        """Stop watching a cluster; False when it was not watched. Its history and claim stay."""
        row = cluster_row_key(cluster_id)
        watch, _ = await self._tables()
        pointer, entity = await self._locate(row)
        if pointer is None:
            return False
        with storage_errors(f"unregister {cluster_id}"):
            if entity is not None:
                try:
                    await watch.delete_entity(entity["PartitionKey"], row)
                except ResourceNotFoundError:
                    entity = None
            if _text(pointer.get("KeyPartition")) is not None:
                await self._point(row, str(pointer.get("ClusterId") or cluster_id), "")
        return entity is not None

    # -- outcomes ----------------------------------------------------------------------------------

    async def _update_watched(
        self,
        row: str,
        action: str,
        change: Callable[[WatchedCluster], WatchedCluster],
        known: WatchedCluster | None = None,
    ) -> WatchedCluster | None:
        """Read-modify-REPLACE the watch row of ``row`` conditionally; None when it is not watched.

        ``known``: the row as last read or written by the caller; its ETag saves the reads, and a row
        changed since costs one failed write and a read. Returns the row as written, with its new ETag.
        """
        watch, _ = await self._tables()
        current = known if known is not None and known.etag is not None else None
        for _attempt in range(_WRITE_ATTEMPTS):
            if current is None:
                _, entity = await self._locate(row)
                if entity is None:
                    return None
                current = _watched(entity, _etag(entity))
            updated = change(current)
            with storage_errors(action):
                try:
                    meta = await watch.update_entity(
                        _watch_entity(updated),
                        mode=UpdateMode.REPLACE,
                        etag=current.etag,
                        match_condition=MatchConditions.IfNotModified,
                    )
                except (ResourceModifiedError, ResourceNotFoundError):  # changed, moved or unregistered
                    current = None
                    continue
            return replace(updated, etag=_meta_etag(meta))
        raise _conflict(action)

    async def record(
        self,
        result: RotationResult,
        *,
        trigger: str | None,
        event_id: str | None,
        invocation_id: str | None,
        known: WatchedCluster | None = None,
        dequeue_count: int | None = None,
    ) -> WatchedCluster | None:
        """Append ``result`` to the history and, when the cluster is watched, update its row.

        The row gets the last outcome; its current version follows a `rotated` or `already-current`
        result; a `pending` result keeps the operation to resume (state ``pending``), any other clears it.
        ``known`` is the row as the caller last saw it (see `_update_watched`); returns the row as written.
        """
        now = _now()
        entry = HistoryEntry(
            cluster_id=result.cluster_id,
            at=now,
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
        row = _row_key_for_text(result.cluster_id)
        _, history = await self._tables()
        with storage_errors(f"append history of {result.cluster_id}"):
            await history.create_entity(_history_entity(entry, row))

        def change(cluster: WatchedCluster) -> WatchedCluster:
            pending = result.outcome is Outcome.PENDING
            version = cluster.current_version
            if result.outcome in _UPDATES_OUTCOME_VERSION and result.to_version:
                version = result.to_version.lower()
            return replace(
                cluster,
                current_version=version,
                state=ClaimState.PENDING.value if pending else ClaimState.WATCHING.value,
                last_outcome=result.outcome.value,
                last_reason=result.reason,
                last_outcome_at=now,
                updated_at=now,
                operation_url=(result.operation_url or cluster.operation_url) if pending else None,
                target_key_url=(result.target_key_url or cluster.target_key_url) if pending else None,
            )

        return await self._update_watched(row, f"record outcome of {result.cluster_id}", change, known)

    async def set_operation(
        self,
        cluster_id: ResourceId,
        *,
        operation_url: str,
        target_key_url: str,
        known: WatchedCluster | None = None,
    ) -> WatchedCluster | None:
        """Record an accepted operation before polling it (rule 7); state becomes ``pending``.

        A cluster that is not watched has no row to hold it: nothing is written (None). ``known`` is the
        row as the caller last saw it (see `_update_watched`); returns the row as written.
        """

        def change(cluster: WatchedCluster) -> WatchedCluster:
            return replace(
                cluster,
                state=ClaimState.PENDING.value,
                operation_url=operation_url,
                target_key_url=target_key_url,
                updated_at=_now(),
            )

        return await self._update_watched(
            cluster_row_key(cluster_id), f"record operation of {cluster_id}", change, known
        )

    # -- fan-out memory ----------------------------------------------------------------------------

    async def fanned_out_at(self, vault_host: str, key_name: str, version: str) -> datetime | None:
        """When an event for this key version was last fanned out to its clusters (None: not recently).

        One point read of the marker `remember_fanout` wrote in the key's watch partition.
        """
        watch, _ = await self._tables()
        entity = await self._read(
            watch, key_partition(vault_host, key_name), FANOUT_PREFIX + version.strip().lower()
        )
        return _utc(entity.get("At")) if entity is not None else None

    async def remember_fanout(self, vault_host: str, key_name: str, version: str) -> None:
        """Record that this key version's jobs were just queued (one upsert; the newest time wins)."""
        watch, _ = await self._tables()
        with storage_errors(f"remember fan-out of {vault_host}/{key_name}"):
            await watch.upsert_entity(
                {
                    "PartitionKey": key_partition(vault_host, key_name),
                    "RowKey": FANOUT_PREFIX + version.strip().lower(),
                    "At": _now(),
                },
                mode=UpdateMode.REPLACE,
            )

    # -- claims (rule 8) ---------------------------------------------------------------------------

    async def holder(self, cluster_id: ResourceId) -> tuple[str | None, datetime | None]:
        """Who holds the cluster's claim and until when (``(None, None)`` when nobody does)."""
        watch, _ = await self._tables()
        current = await self._read(watch, CLUSTER_PARTITION, cluster_row_key(cluster_id))
        if current is None:
            return None, None
        owner = _text(current.get("ClaimOwner"))
        expires = _utc(current.get("ClaimExpires"))
        if owner is None or expires is None or expires <= _now():
            return None, None
        return owner, expires

    async def claim(self, cluster_id: ResourceId, *, owner: str, ttl: float = 600.0) -> bool:
        """Claim the cluster for ``owner`` for ``ttl`` seconds: one writer per cluster (rule 8).

        Succeeds when the cluster is unclaimed, its claim expired, or it is already ``owner``'s. The write
        is ETag-conditional (or an insert), so of two racing claimants exactly one wins. Works the same
        for unwatched clusters (their cluster row holds only the claim).
        """
        return await self.take(cluster_id, owner=owner, ttl=ttl) is not None

    async def take(self, cluster_id: ResourceId, *, owner: str, ttl: float = 600.0) -> Claim | None:
        """`claim`, returning the `Claim` to renew and release it with (None: another owner holds it).

        One read of the cluster row and one conditional write (or insert).
        """
        row = cluster_row_key(cluster_id)
        watch, _ = await self._tables()
        asserted = time.monotonic()
        now = _now()
        expires_at = now + timedelta(seconds=ttl)
        current = await self._read(watch, CLUSTER_PARTITION, row)
        with storage_errors(f"claim {cluster_id}"):
            if current is None:
                try:
                    meta = await watch.create_entity(
                        {
                            **_claim_entity(row, owner, expires_at),
                            "ClusterId": str(cluster_id),
                            "KeyPartition": "",
                        }
                    )
                except ResourceExistsError:
                    return None
                return Claim(cluster_id, owner, ttl, _meta_etag(meta), None, asserted)
            holder = _text(current.get("ClaimOwner"))
            expires = _utc(current.get("ClaimExpires"))
            if holder is not None and holder != owner and expires is not None and expires > now:
                return None
            try:
                etag = await self._merge_claim(watch, row, owner, expires_at, etag=_etag(current))
            except (ResourceModifiedError, ResourceNotFoundError):
                return None
        return Claim(cluster_id, owner, ttl, etag, _text(current.get("KeyPartition")), asserted)

    async def renew(self, claim: Claim) -> bool:
        """Write ``claim`` again for another TTL; False when another owner took the cluster meanwhile.

        One conditional write while the row is as this claim last wrote it; otherwise (a registration
        changed the pointer, or the claim lapsed) the row is read and claimed again as `take` does.
        """
        if claim.etag is not None:
            watch, _ = await self._tables()
            asserted = time.monotonic()
            expires_at = _now() + timedelta(seconds=claim.ttl)
            with storage_errors(f"claim {claim.cluster_id}"):
                try:
                    etag = await self._merge_claim(
                        watch, cluster_row_key(claim.cluster_id), claim.owner, expires_at, etag=claim.etag
                    )
                except (ResourceModifiedError, ResourceNotFoundError):
                    pass
                else:
                    claim.etag, claim.asserted_at = etag, asserted
                    return True
        again = await self.take(claim.cluster_id, owner=claim.owner, ttl=claim.ttl)
        if again is None:
            return False
        claim.etag, claim.asserted_at = again.etag, again.asserted_at
        claim.key_partition = again.key_partition
        return True

    async def release_claim(self, claim: Claim) -> None:
        """`release` for a claim this process holds: one conditional write while the row is unchanged."""
        if claim.etag is not None:
            watch, _ = await self._tables()
            with storage_errors(f"release {claim.cluster_id}"):
                try:
                    await self._merge_claim(
                        watch, cluster_row_key(claim.cluster_id), "", _EPOCH, etag=claim.etag
                    )
                except ResourceModifiedError:
                    pass  # changed since our write: read it and clear the claim only if still ours
                except ResourceNotFoundError:
                    return
                else:
                    claim.etag = None
                    return
        await self.release(claim.cluster_id, owner=claim.owner)

    async def release(self, cluster_id: ResourceId, *, owner: str) -> None:
        """Drop ``owner``'s claim on the cluster; someone else's claim is left alone."""
        row = cluster_row_key(cluster_id)
        watch, _ = await self._tables()
        for _attempt in range(_WRITE_ATTEMPTS):
            current = await self._read(watch, CLUSTER_PARTITION, row)
            if current is None or _text(current.get("ClaimOwner")) != owner:
                return
            with storage_errors(f"release {cluster_id}"):
                try:
                    await self._merge_claim(watch, row, "", _EPOCH, etag=_etag(current))
                except ResourceModifiedError:
                    continue  # the row changed (a pointer write?): read again, still only ours to clear
                except ResourceNotFoundError:
                    return
            return
        raise _conflict(f"release {cluster_id}")

    @staticmethod
    async def _merge_claim(
        watch: TableClient, row: str, owner: str, expires_at: datetime, *, etag: str | None
    ) -> str | None:
        """MERGE the claim fields into the cluster row if it is unchanged since ``etag``; the new ETag.

        ``owner=""`` clears the claim. The caller handles `ResourceModifiedError` and `ResourceNotFoundError`.
        """
        meta = await watch.update_entity(
            _claim_entity(row, owner, expires_at),
            mode=UpdateMode.MERGE,
            etag=etag,
            match_condition=MatchConditions.IfNotModified,
        )
        return _meta_etag(meta)


def _claim_entity(row: str, owner: str, expires_at: datetime) -> dict[str, Any]:
    """The claim fields of a cluster row (``owner=""`` with the epoch: no claim)."""
    return {"PartitionKey": CLUSTER_PARTITION, "RowKey": row, "ClaimOwner": owner, "ClaimExpires": expires_at}


def _conflict(action: str) -> ServiceError:
    """Conditional writes kept losing to other writers: a transient conflict, to retry later."""
    return ServiceError(
        f"{action}: the row kept changing under {_WRITE_ATTEMPTS} conditional writes",
        service=SERVICE,
        status=409,
        code="UpdateConditionNotSatisfied",
    )
