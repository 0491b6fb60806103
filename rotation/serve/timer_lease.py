"""One reconcile pass per scheduled occurrence, however many `rotation serve` replicas run.

The Functions host runs a timer trigger on one instance at a time (a singleton lock in the app's storage,
Microsoft docs, "Timer trigger for Azure Functions", scale-out). Without the host, each replica fires at
the same occurrences, so they agree through one row of a table: the first replica to move the row's
``Occurrence`` forward to the current occurrence (an ETag-conditional write, as the registry's claims)
runs the pass; the others see it done and skip. A replica that dies mid-pass loses that occurrence only,
as the host would: the next one runs as usual, and reconcile is level-triggered.

Permission: Storage Table Data Contributor (as the registry).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from rotation.store.clients import storage_errors

if TYPE_CHECKING:
    from datetime import datetime

    from azure.data.tables.aio import TableClient

TABLE = "rotationtimers"
_PARTITION = "timer"
_ATTEMPTS = 3  # a lost race re-reads the row; three are plenty for replicas firing together


class TimerLease:
    """Decides which replica runs a timer's occurrence. Does not own ``table``."""

    def __init__(self, table: TableClient, *, owner: str, timer: str = "reconcile") -> None:
        self._table = table
        self._owner = owner
        self._timer = timer
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def _ensure(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                with storage_errors(f"create table {TABLE}"), contextlib.suppress(ResourceExistsError):
                    await self._table.create_table()
                self._ready = True

    async def take(self, occurrence: datetime) -> bool:
        """True for exactly one caller per ``occurrence`` (UTC); False when another replica has it."""
        await self._ensure()
        due = occurrence.isoformat()  # one format for every replica: UTC, seconds
        entity = {"PartitionKey": _PARTITION, "RowKey": self._timer, "Occurrence": due, "Owner": self._owner}
        with storage_errors(f"take the {self._timer} timer's occurrence {due}"):
            for _ in range(_ATTEMPTS):
                try:
                    row = await self._table.get_entity(_PARTITION, self._timer)
                except ResourceNotFoundError:
                    try:
                        await self._table.create_entity(entity)
                    except ResourceExistsError:
                        continue  # another replica wrote it first: read what it wrote
                    return True
                if str(row.get("Occurrence", "")) >= due:
                    return False
                try:
                    await self._table.update_entity(
                        entity,
                        mode=UpdateMode.REPLACE,
                        etag=row.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
                except ResourceModifiedError:
                    continue
                return True
        return False
