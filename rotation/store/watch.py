"""Watch rows: the registered clusters, found by key, with their last outcome and operation in flight.

A cluster's watch row sits in its key's partition, and its cluster row points there (layout in
`rotation.store.tables`); the same partition holds the key's fan-out markers.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from rotation.outcomes import Outcome
from rotation.store.clients import storage_errors
from rotation.store.tables import (
    CLUSTER_PARTITION,
    EPOCH,
    POINTER,
    WRITE_ATTEMPTS,
    clip,
    cluster_row_key,
    conflict,
    etag,
    key_partition,
    meta_etag,
    now,
    read_row,
    row_key_for_text,
    text,
    utc,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping
    from datetime import datetime

    from azure.data.tables import TableEntity

    from rotation.ids import ResourceId
    from rotation.outcomes import RotationResult
    from rotation.store.claims import Claim
    from rotation.store.tables import Tables

logger = logging.getLogger(__name__)

_UPDATES_OUTCOME_VERSION = frozenset({Outcome.ROTATED, Outcome.ALREADY_CURRENT})
# Fan-out markers live in their key's watch partition, under RowKeys that sort after every cluster row
# (those start with '|'), so queries for watch rows stop before them (``RowKey lt '~'``).
FANOUT_PREFIX = "~fanout~"
_WATCH_ROWS = "RowKey lt '~'"
_reported: set[tuple[str, str]] = set()  # unknown stored values already logged by this process


class WatchState(StrEnum):
    """The state of a watch row: ``pending`` while an accepted operation is followed (rule 7)."""

    WATCHING = "watching"
    PENDING = "pending"


@dataclass(frozen=True)
class WatchedCluster:
    """One registered cluster, as stored.

    A stored ``State`` or ``LastOutcome`` this version does not know (written by a newer one) reads as if
    absent: ``state`` `WatchState.WATCHING`, ``last_outcome`` None. The row is still read, listed and
    rotated; the first such value of each column is logged per process (``rotation.watch_row_unknown_value``,
    WARNING). A write of the row by this version replaces the value it could not read.
    """

    cluster_id: str  # as given at registration (original casing)
    subscription: str
    vault_host: str  # e.g. contoso-kv.vault.azure.net
    key_name: str
    current_version: str | None  # None for a versionless cluster
    identity: str | None  # the CMK user-assigned identity id
    owner: str | None
    state: WatchState
    last_outcome: Outcome | None
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
    """A cluster watched on a key: the columns an event's fan-out and a replay need, and the row's ETag."""

    cluster_id: str
    subscription: str
    key_name: str  # as registered
    etag: str | None


class WatchedClusters:
    """Register, find, list and unregister watched clusters; keep each one's outcome and operation."""

    def __init__(self, tables: Tables) -> None:
        self._tables = tables

    async def _locate(self, row: str) -> tuple[TableEntity | None, TableEntity | None]:
        """The cluster row of ``row`` and, when watched, its watch row."""
        watch = await self._tables.watch()
        pointer = await read_row(watch, CLUSTER_PARTITION, row)
        partition = text(pointer.get(POINTER)) if pointer is not None else None
        if partition is None:
            return pointer, None
        return pointer, await read_row(watch, partition, row)

    async def get(self, cluster_id: ResourceId) -> WatchedCluster | None:
        """The registered cluster, or None when it is not watched."""
        _, entity = await self._locate(cluster_row_key(cluster_id))
        return _watched(entity, etag(entity)) if entity is not None else None

    async def get_claimed(self, claim: Claim) -> WatchedCluster | None:
        """`get` for a cluster under ``claim``: one read, at the watch row the claim's pointer names.

        While the claim is held the cluster is rotated by no one else; a re-registration meanwhile moves
        the row, and the next write through `record_outcome` or `set_operation` finds it again.
        """
        if claim.key_partition is None:
            return None
        watch = await self._tables.watch()
        entity = await read_row(watch, claim.key_partition, cluster_row_key(claim.cluster_id))
        return _watched(entity, etag(entity)) if entity is not None else None

    async def for_key(self, vault_host: str, key_name: str) -> list[KeyMember]:
        """Every cluster watched on the key ``vault_host``/``key_name`` (case-insensitive).

        One single-partition query (paged by the service past 1000 rows), selecting three columns: the
        SDK then parses no timestamps, which was most of the CPU of reading 1000 whole rows.
        """
        watch = await self._tables.watch()
        with storage_errors(f"query {watch.table_name} for key {vault_host}/{key_name}"):
            return [
                KeyMember(
                    str(entity.get("ClusterId", "")),
                    str(entity.get("Subscription", "")),
                    str(entity.get("KeyName", "")),
                    etag(entity),
                )
                async for entity in watch.query_entities(
                    f"PartitionKey eq @pk and {_WATCH_ROWS}",
                    parameters={"pk": key_partition(vault_host, key_name)},
                    select=["ClusterId", "Subscription", "KeyName"],
                    results_per_page=1000,
                )
            ]

    async def iterate(self, *, page_size: int = 200) -> AsyncIterator[WatchedCluster]:
        """Every watched cluster, grouped by key, ``page_size`` rows per storage request."""
        watch = await self._tables.watch()
        with storage_errors(f"list {watch.table_name}"):
            pages = watch.query_entities(
                f"PartitionKey ne @pk and {_WATCH_ROWS}",
                parameters={"pk": CLUSTER_PARTITION},
                results_per_page=page_size,
            )
            async for entity in pages:
                yield _watched(entity, etag(entity))

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
        watch = await self._tables.watch()
        for _attempt in range(WRITE_ATTEMPTS):
            _, old = await self._locate(row)
            at = now()
            previous = _watched(old, etag(old)) if old is not None else None
            cluster = WatchedCluster(
                cluster_id=str(cluster_id),
                subscription=cluster_id.subscription,
                vault_host=vault_host.lower(),
                key_name=key_name,
                current_version=current_version.lower() if current_version else None,
                identity=identity,
                owner=owner if owner is not None else (previous.owner if previous else None),
                state=previous.state if previous else WatchState.WATCHING,
                last_outcome=previous.last_outcome if previous else None,
                last_reason=previous.last_reason if previous else None,
                last_outcome_at=previous.last_outcome_at if previous else None,
                registered_at=previous.registered_at if previous else at,
                updated_at=at,
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
                            etag=etag(old),
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
            return replace(cluster, etag=meta_etag(meta))
        raise conflict(f"register {cluster_id}")

    async def _point(self, row: str, cluster_id: str, partition: str) -> None:
        """Set (or clear, with ``partition=""``) the cluster row's pointer; claim fields are untouched."""
        watch = await self._tables.watch()
        await watch.upsert_entity(
            {"PartitionKey": CLUSTER_PARTITION, "RowKey": row, "ClusterId": cluster_id, POINTER: partition},
            mode=UpdateMode.MERGE,
        )

    async def remove(self, cluster_id: ResourceId) -> bool:
        """Stop watching a cluster; False when it was not watched. Its history and claim stay."""
        row = cluster_row_key(cluster_id)
        watch = await self._tables.watch()
        pointer, entity = await self._locate(row)
        if pointer is None:
            return False
        with storage_errors(f"unregister {cluster_id}"):
            if entity is not None:
                try:
                    await watch.delete_entity(entity["PartitionKey"], row)
                except ResourceNotFoundError:
                    entity = None
            if text(pointer.get(POINTER)) is not None:
                await self._point(row, str(pointer.get("ClusterId") or cluster_id), "")
        return entity is not None

    async def _update(
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
        watch = await self._tables.watch()
        current = known if known is not None and known.etag is not None else None
        for _attempt in range(WRITE_ATTEMPTS):
            if current is None:
                _, entity = await self._locate(row)
                if entity is None:
                    return None
                current = _watched(entity, etag(entity))
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
            return replace(updated, etag=meta_etag(meta))
        raise conflict(action)

    async def record_outcome(
        self, result: RotationResult, *, at: datetime, known: WatchedCluster | None = None
    ) -> WatchedCluster | None:
        """Update the cluster's row with ``result`` when it is watched (None: not watched, nothing written).

        The row gets the last outcome; its current version follows a `rotated` or `already-current`
        result; a `pending` result keeps the operation to resume (state ``pending``), any other clears it.
        ``known`` is the row as the caller last saw it (see `_update`); returns the row as written.
        """

        def change(cluster: WatchedCluster) -> WatchedCluster:
            pending = result.outcome is Outcome.PENDING
            version = cluster.current_version
            if result.outcome in _UPDATES_OUTCOME_VERSION and result.to_version:
                version = result.to_version.lower()
            return replace(
                cluster,
                current_version=version,
                state=WatchState.PENDING if pending else WatchState.WATCHING,
                last_outcome=result.outcome,
                last_reason=result.reason,
                last_outcome_at=at,
                updated_at=at,
                operation_url=(result.operation_url or cluster.operation_url) if pending else None,
                target_key_url=(result.target_key_url or cluster.target_key_url) if pending else None,
            )

        row = row_key_for_text(result.cluster_id)
        return await self._update(row, f"record outcome of {result.cluster_id}", change, known)

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
        row as the caller last saw it (see `_update`); returns the row as written.
        """

        def change(cluster: WatchedCluster) -> WatchedCluster:
            return replace(
                cluster,
                state=WatchState.PENDING,
                operation_url=operation_url,
                target_key_url=target_key_url,
                updated_at=now(),
            )

        return await self._update(
            cluster_row_key(cluster_id), f"record operation of {cluster_id}", change, known
        )

    async def fanned_out_at(self, vault_host: str, key_name: str, version: str) -> datetime | None:
        """When an event for this key version was last fanned out to its clusters (None: not recently).

        One point read of the marker `remember_fanout` wrote in the key's watch partition.
        """
        watch = await self._tables.watch()
        entity = await read_row(
            watch, key_partition(vault_host, key_name), FANOUT_PREFIX + version.strip().lower()
        )
        return utc(entity.get("At")) if entity is not None else None

    async def remember_fanout(self, vault_host: str, key_name: str, version: str) -> None:
        """Record that this key version's jobs were just queued (one upsert; the newest time wins)."""
        watch = await self._tables.watch()
        with storage_errors(f"remember fan-out of {vault_host}/{key_name}"):
            await watch.upsert_entity(
                {
                    "PartitionKey": key_partition(vault_host, key_name),
                    "RowKey": FANOUT_PREFIX + version.strip().lower(),
                    "At": now(),
                },
                mode=UpdateMode.REPLACE,
            )


def _watch_entity(cluster: WatchedCluster) -> dict[str, Any]:
    """The watch-row entity of ``cluster`` (None fields are left out, so a REPLACE clears them)."""
    return {
        "PartitionKey": key_partition(cluster.vault_host, cluster.key_name),
        "RowKey": row_key_for_text(cluster.cluster_id),
        "ClusterId": cluster.cluster_id,
        "Subscription": cluster.subscription,
        "VaultHost": cluster.vault_host,
        "KeyName": cluster.key_name,
        "CurrentVersion": cluster.current_version,
        "Identity": cluster.identity,
        "Owner": cluster.owner,
        "State": str(cluster.state),
        "LastOutcome": str(cluster.last_outcome) if cluster.last_outcome is not None else None,
        "LastReason": clip(cluster.last_reason),
        "LastOutcomeAt": cluster.last_outcome_at,
        "RegisteredAt": cluster.registered_at,
        "UpdatedAt": cluster.updated_at,
        "OperationUrl": cluster.operation_url,
        "TargetKeyUrl": cluster.target_key_url,
    }


_E = TypeVar("_E", WatchState, Outcome)


def _known(kind: type[_E], column: str, entity: Mapping[str, Any]) -> _E | None:
    """The stored ``column`` as a ``kind`` member; None when absent or unknown (logged once per value)."""
    stored = text(entity.get(column))
    if stored is None:
        return None
    try:
        return kind(stored)
    except ValueError:
        if (column, stored) not in _reported:
            _reported.add((column, stored))
            fields = {"cluster_id": str(entity.get("ClusterId", "")), "column": column, "value": stored[:64]}
            logger.warning("rotation.watch_row_unknown_value", extra=fields)
        return None


def _watched(entity: Mapping[str, Any], row_etag: str | None) -> WatchedCluster:
    registered = utc(entity.get("RegisteredAt")) or EPOCH
    return WatchedCluster(
        cluster_id=str(entity.get("ClusterId", "")),
        subscription=str(entity.get("Subscription", "")),
        vault_host=str(entity.get("VaultHost", "")),
        key_name=str(entity.get("KeyName", "")),
        current_version=text(entity.get("CurrentVersion")),
        identity=text(entity.get("Identity")),
        owner=text(entity.get("Owner")),
        state=_known(WatchState, "State", entity) or WatchState.WATCHING,
        last_outcome=_known(Outcome, "LastOutcome", entity),
        last_reason=text(entity.get("LastReason")),
        last_outcome_at=utc(entity.get("LastOutcomeAt")),
        registered_at=registered,
        updated_at=utc(entity.get("UpdatedAt")) or registered,
        operation_url=text(entity.get("OperationUrl")),
        target_key_url=text(entity.get("TargetKeyUrl")),
        etag=row_etag,
    )
