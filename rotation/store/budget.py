"""The ARM budget every process of the app shares, one Table row per subscription and kind of request.

ARM's bucket is per subscription and principal (`rotation.azure.pacing`); all instances of the app use one
identity, so they spend one bucket. Each row holds the bucket's *theoretical arrival time* (TAT) of the
generic cell rate algorithm, the virtual-scheduling form of a token bucket: with ``T = 1 / refill`` and a
tolerance ``(burst - 1) * T``, a request at ``t`` conforms when ``t >= TAT - tolerance``, and then
``TAT = max(TAT, t) + T``. Reserving ``n`` requests at once is one ETag-conditional write: request ``j``
(from 1) may be sent from ``max(now, max(TAT, now) + (j - 1) * T - tolerance)``, and ``TAT`` moves ``n * T``.
Two processes that race for a row lose one write (412) and one read, never a token: the loser reads the
winner's TAT and reserves after it.

Rows live in the watch table (layout: `rotation.store.tables`), partition ``~budget``, RowKey
``~{subscription}|writes`` or ``|reads``: a RowKey from ``~`` on is never a watch row (those queries stop at
``RowKey lt '~'``), and the table exists wherever the app runs, with the access it already has.
Clock: each process's wall clock; instances in Azure keep theirs synchronised well within one refill.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from rotation.errors import ServiceError
from rotation.store.clients import SERVICE, storage_errors

if TYPE_CHECKING:
    from collections.abc import Callable

    from azure.data.tables.aio import TableClient

PARTITION = "~budget"
ATTEMPTS = 16  # conditional writes lost to other processes before the caller falls back to its own mirror
# After losing a race on a row, read it before writing for this long: where processes take turns on a row, a
# write with the ETag this process last saw would fail anyway (a read and a write instead of three requests).
RACED_S = 5.0


def row_key(subscription: str, *, write: bool) -> str:
    """The RowKey of a subscription's bucket of one kind."""
    return f"~{subscription.lower()}|{'writes' if write else 'reads'}"


class TableBudget:
    """`rotation.azure.pacing.BudgetLedger` on Table storage. Does not own ``table``.

    Keeps the last TAT and ETag it wrote per row, so a process alone on a subscription spends one write per
    reservation; a process that lost a race reads the row again (two requests). Permission: Storage Table
    Data Contributor, as the registry.
    """

    def __init__(self, table: TableClient, *, wall: Callable[[], float] = time.time) -> None:
        self._table = table
        self._wall = wall
        self._known: dict[str, tuple[float, str | None]] = {}  # RowKey -> (TAT, ETag) as last written/read
        self._raced: dict[str, float] = {}  # RowKey -> when this process last lost a race on it (wall clock)
        self.requests = 0  # storage requests sent, for benchmarks
        self.races = 0  # conditional writes lost to another process (each costs a read and a write more)

    async def reserve(
        self,
        subscription: str,
        *,
        write: bool,
        count: int,
        refill_per_s: float,
        burst: float,
        floor: float = 0.0,
        ahead: int = 0,
    ) -> list[float]:
        """Reserve ``count`` requests of the bucket; the wall-clock time from which each may be sent.

        ``floor``: a TAT the bucket is known to have reached (ARM's headers show everyone's spending,
        including writes that took no slot): the reservation starts no earlier. ``ahead``: as many more
        when the bucket is spent, so that every one of them lies in the future (`BudgetLedger.reserve`).
        """
        if count < 1 or refill_per_s <= 0:
            return []
        row = row_key(subscription, write=write)
        interval = 1.0 / refill_per_s
        tolerance = max(0.0, burst - 1.0) * interval
        if self._wall() - self._raced.get(row, -RACED_S) < RACED_S:
            self._known.pop(row, None)
        for _attempt in range(ATTEMPTS):
            known = self._known.get(row)
            if known is None:
                known = await self._read(row)
            tat, etag = known
            now = self._wall()
            start = max(tat, now, floor)
            slots = [max(now, start + j * interval - tolerance) for j in range(count)]
            if ahead and start + count * interval - tolerance > now:  # spent: the next slot is a future one
                slots += [start + j * interval - tolerance for j in range(count, count + ahead)]
            new_tat = start + len(slots) * interval
            written = await self._write(row, new_tat, etag)
            if written is None:
                self.races += 1
                self._known.pop(row, None)  # another process moved it: read it again
                self._raced[row] = self._wall()
                continue
            self._known[row] = (new_tat, written)
            return slots
        raise ServiceError(
            f"ARM budget {row}: the row kept changing under {ATTEMPTS} conditional writes",
            service=SERVICE,
            status=412,
            code="UpdateConditionNotSatisfied",
        )

    async def _read(self, row: str) -> tuple[float, str | None]:
        """The row's TAT and ETag; (0, None) when it does not exist yet."""
        self.requests += 1
        with storage_errors(f"read ARM budget {row}"):
            try:
                entity = await self._table.get_entity(PARTITION, row)
            except ResourceNotFoundError:
                return 0.0, None
        tat = entity.get("Tat")
        etag = entity.metadata.get("etag")
        return (float(tat) if isinstance(tat, int | float) else 0.0), (
            etag if isinstance(etag, str) else None
        )

    async def _write(self, row: str, tat: float, etag: str | None) -> str | None:
        """Write the new TAT if the row is as read (insert when new); its ETag, or None when it changed."""
        self.requests += 1
        entity: dict[str, Any] = {"PartitionKey": PARTITION, "RowKey": row, "Tat": float(tat)}
        with storage_errors(f"write ARM budget {row}"):
            try:
                if etag is None:
                    meta = await self._table.create_entity(entity)
                else:
                    meta = await self._table.update_entity(
                        entity,
                        mode=UpdateMode.REPLACE,
                        etag=etag,
                        match_condition=MatchConditions.IfNotModified,
                    )
            except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
                return None
        written = meta.get("etag")
        return written if isinstance(written, str) else ""
