r"""The two tables behind the registry, and the helpers their rows share (``azure-data-tables`` aio).

Layout (all keys lower-case; ``/`` in an ARM id becomes ``|``, which ARM ids cannot contain, because
table keys must not contain ``/ \ # ?`` or control characters):

- table ``watchedclusters``
    - watch rows (`rotation.store.watch`): PartitionKey ``{vault host}|{key name}`` (the key identity),
      RowKey the encoded cluster id. Finding the clusters of a key is one single-partition query. The
      key's fan-out markers share its partition, under RowKeys that sort after every cluster row.
    - cluster rows: PartitionKey ``clusters``, RowKey the encoded cluster id, holding the pointer to the
      cluster's watch partition (``KeyPartition``, empty when unwatched; `rotation.store.watch`) and its
      claim (rule 8: ``ClaimOwner``, ``ClaimExpires``; `rotation.store.claims`). Watched and unwatched
      clusters claim the same way, and history or registration writes never disturb a claim's ETag.
    - ARM budget rows (`rotation.store.budget`): PartitionKey ``~budget``, RowKey ``~{subscription}|writes``:
      the write budget every instance of the app shares. From ``~`` on, a RowKey is never a watch row.
- table ``rotationhistory`` (`rotation.store.history`): PartitionKey the encoded cluster id, RowKey an
  inverted timestamp plus a random suffix, so a plain partition query returns newest first. Rows are only
  ever inserted.

Every storage failure reaches the caller as `ServiceError` (``service="storage"``); nothing is swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from rotation.errors import ServiceError
from rotation.ids import InvalidResourceId, parse_cluster_id
from rotation.store.clients import SERVICE, storage_errors

if TYPE_CHECKING:
    from collections.abc import Mapping

    from azure.data.tables import TableEntity
    from azure.data.tables.aio import TableClient, TableServiceClient

    from rotation.ids import ResourceId

WATCH_TABLE = "watchedclusters"
HISTORY_TABLE = "rotationhistory"
CLUSTER_PARTITION = "clusters"  # never a key identity: those always contain '|'
POINTER = "KeyPartition"  # the cluster row's column naming its watch partition ("" when unwatched)
WRITE_ATTEMPTS = 5  # read-modify-write rounds before giving up on a row others keep changing
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_TEXT = 8000  # characters kept of a reason or error message (a table string holds 32K)


class Tables:
    """The table service client and the watch and history tables, created on first use.

    Owns ``service`` (`close` closes it). Both tables are created on the first call of `ready`, once per
    instance. Permission: Storage Table Data Contributor (or a connection string).
    """

    def __init__(self, service: TableServiceClient, *, watch_table: str, history_table: str) -> None:
        self.service = service
        self._watch = service.get_table_client(watch_table)
        self._history = service.get_table_client(history_table)
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def ready(self) -> tuple[TableClient, TableClient]:
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

    async def watch(self) -> TableClient:
        """The watch table (see `ready`)."""
        watch, _ = await self.ready()
        return watch

    async def history(self) -> TableClient:
        """The history table (see `ready`)."""
        _, history = await self.ready()
        return history

    async def close(self) -> None:
        """Close the table clients and the service client."""
        await self._watch.close()
        await self._history.close()
        await self.service.close()


async def read_row(table: TableClient, partition: str, row: str) -> TableEntity | None:
    """One point read; None when the row does not exist."""
    with storage_errors(f"read {table.table_name} row"):
        try:
            return await table.get_entity(partition, row)
        except ResourceNotFoundError:
            return None


def key_partition(vault_host: str, key_name: str) -> str:
    """The watch-table PartitionKey of a key: ``{vault host}|{key name}``, lower-cased."""
    return f"{vault_host.strip().lower()}|{key_name.strip().lower()}"


def cluster_row_key(cluster_id: ResourceId) -> str:
    """The table key of a cluster: its normalized id with ``/`` replaced by ``|``."""
    return cluster_id.normalized.replace("/", "|")


def row_key_for_text(cluster_id: str) -> str:
    """`cluster_row_key` of an id string; one that does not parse is made safe character by character."""
    try:
        return cluster_row_key(parse_cluster_id(cluster_id))
    except InvalidResourceId:
        safe = "".join("_" if ch in "\\#?" or ch < " " or ch == "\x7f" else ch for ch in cluster_id)
        return safe.lower().replace("/", "|")[:512] or "_"


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def utc(value: object) -> datetime | None:
    """A stored datetime as a plain timezone-aware UTC `datetime` (None when absent)."""
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    v = value.astimezone(UTC)
    return datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, tzinfo=UTC)


def text(value: object) -> str | None:
    """A stored string; empty means absent."""
    return value if isinstance(value, str) and value else None


def clip(value: str | None) -> str | None:
    """A reason or error message cut to what a row keeps."""
    return value[:_MAX_TEXT] if value is not None else None


def etag(entity: TableEntity) -> str | None:
    """The ETag of a row as read."""
    return meta_etag(entity.metadata)


def meta_etag(meta: Mapping[str, Any]) -> str | None:
    """The ETag in a write's response metadata."""
    value = meta.get("etag")
    return value if isinstance(value, str) else None


def conflict(action: str) -> ServiceError:
    """Conditional writes kept losing to other writers: a transient conflict, to retry later."""
    return ServiceError(
        f"{action}: the row kept changing under {WRITE_ATTEMPTS} conditional writes",
        service=SERVICE,
        status=409,
        code="UpdateConditionNotSatisfied",
    )
