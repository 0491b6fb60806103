"""The registry: watch rows, claims and history on one storage account's tables, and what spans them.

`Registry` owns the table clients (`rotation.store.tables`) and shows its three parts: ``watched``
(`rotation.store.watch`), ``claims`` (`rotation.store.claims`) and ``history``
(`rotation.store.history`). Recording a result touches two of them, so it lives here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rotation.store.claims import Claims
from rotation.store.history import History, HistoryEntry
from rotation.store.tables import HISTORY_TABLE, WATCH_TABLE, Tables, now
from rotation.store.watch import WatchedClusters

if TYPE_CHECKING:
    from azure.data.tables.aio import TableServiceClient

    from rotation.outcomes import RotationResult
    from rotation.store.watch import WatchedCluster


class Registry:
    """Watched clusters, their claims and their rotation history.

    Takes ownership of ``tables`` (`close` closes it). Tables are created on first use, once per instance,
    whichever part uses them first. Permission: Storage Table Data Contributor (or a connection string).
    """

    def __init__(
        self,
        tables: TableServiceClient,
        *,
        watch_table: str = WATCH_TABLE,
        history_table: str = HISTORY_TABLE,
    ) -> None:
        self._tables = Tables(tables, watch_table=watch_table, history_table=history_table)
        self.watched = WatchedClusters(self._tables)
        self.claims = Claims(self._tables)
        self.history = History(self._tables)

    @property
    def service_client(self) -> TableServiceClient:
        """The table service client (for the daemon's timer lease table; still owned by this registry)."""
        return self._tables.service

    async def close(self) -> None:
        """Close the table clients and the service client."""
        await self._tables.close()

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

        See `WatchedClusters.record_outcome` for what the row gets; ``known`` is the row as the caller last
        saw it. Returns the row as written (None: not watched).
        """
        at = now()
        entry = HistoryEntry.of(
            result,
            at=at,
            trigger=trigger,
            event_id=event_id,
            invocation_id=invocation_id,
            dequeue_count=dequeue_count,
        )
        await self.history.append(entry)
        return await self.watched.record_outcome(result, at=at, known=known)
