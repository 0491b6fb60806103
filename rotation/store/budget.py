"""The ARM budget every process of the app shares, one Table row per subscription and kind of request.

ARM's bucket is per subscription and principal (`rotation.azure.pacing`); all instances of the app use one
identity, so they spend one bucket. Each row holds the bucket's *theoretical arrival time* (TAT) of the
generic cell rate algorithm, the virtual-scheduling form of a token bucket: with ``T = 1 / refill`` and a
tolerance ``(burst - 1) * T``, a request at ``t`` conforms when ``t >= TAT - tolerance``, and then
``TAT = max(TAT, t) + T``. Reserving ``n`` requests at once is one ETag-conditional write: request ``j``
(from 1) may be sent from ``max(now, max(TAT, now) + (j - 1) * T - tolerance)``, and ``TAT`` moves ``n * T``.
Two processes that race for a row lose one write (412) and one read, never a token: the loser reads the
winner's TAT and reserves after it.

A slot may reach ARM up to ``late`` seconds after its time (the caller drops it before that). The caller
keeps ``late * refill`` tokens of the burst out of the GCRA for that: used late, a slot can meet a bucket
that sat at its cap and lost refill the ledger counted. That slack is only needed after the bucket has been
at its cap: once every slot handed out before has been used or dropped and the TAT lies ``late`` in the
past, ARM's bucket is full, and the next ``late`` seconds of refill may be handed out at once to the writes
that come (column ``Early``: until when a slot due by then may go now). When those writes come slower than
the refill, the GCRA's clock jumps to the present and drops refill that ARM's full bucket dropped too; the
window then moves by as much, so it keeps its whole burst. So a fan-out within the burst goes out as its
writes come, and one past it waits as long as without (the slot after the burst comes ``late`` later: the
slots given early took that refill). Writes jobs only announced (``ahead``) get no slot of the window: a
job still reading often comes too late for one, and each slot dropped is refill nobody spends.
`tests/unit/test_pacing_shared.py` checks all of it against ARM's bucket with every slot sent anywhere in
its window. The arithmetic assumes every process of the app reserves with the same burst and ``late``: while
an upgrade runs an older version beside this one (a quarter of the burst as slack, slots kept 5 s), their
writes can draw 429s, which the write retry layer answers (rule 6).

Rows live in the watch table (layout: `rotation.store.tables`), partition ``~budget``, RowKey
``~{subscription}|writes`` or ``|reads``: a RowKey from ``~`` on is never a watch row (those queries stop at
``RowKey lt '~'``), and the table exists wherever the app runs, with the access it already has.
Clock: each process's wall clock; instances in Azure keep theirs synchronised well within one refill.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
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
# A slot due at the end of the early window, give or take float rounding, is within it: wall-clock times near
# 1.7e9 s are 2.4e-7 s apart, and a TAT moved by many reservations carries their rounding. A thousandth of
# the refill interval is far above that and far below a token.
_EPSILON = 1e-3


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
        # RowKey -> (TAT, Early, ETag) as last written/read
        self._known: dict[str, tuple[float, float, str | None]] = {}
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
        late: float = 0.0,
    ) -> list[float]:
        """Reserve ``count`` requests of the bucket; the wall-clock time from which each may be sent.

        ``floor``: a TAT the bucket is known to have reached (ARM's headers show everyone's spending,
        including writes that took no slot): the reservation starts no earlier. ``ahead``: as many more
        when the bucket is spent, so that every one of them lies in the future (`BudgetLedger.reserve`);
        none of the early window (a job still reading would often come too late for such a slot, and each
        dropped one is refill nobody spends).
        ``late``: how long after its time the caller may still use a slot (``burst`` already leaves that
        much refill out); see the module docstring.
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
            tat, early, etag = known
            grant = _Grant(self._wall(), interval, tolerance, late)
            slots, new_tat, early = grant.slots(max(tat, floor), early, count=count, ahead=ahead)
            written = await self._write(row, new_tat, early, etag)
            if written is None:
                self.races += 1
                self._known.pop(row, None)  # another process moved it: read it again
                self._raced[row] = self._wall()
                continue
            self._known[row] = (new_tat, early, written)
            return slots
        raise ServiceError(
            f"ARM budget {row}: the row kept changing under {ATTEMPTS} conditional writes",
            service=SERVICE,
            status=412,
            code="UpdateConditionNotSatisfied",
        )

    async def _read(self, row: str) -> tuple[float, float, str | None]:
        """The row's TAT, Early and ETag; (0, 0, None) when it does not exist yet.

        A row written without ``Early`` (an older version of the app) reads as 0: no slot goes early.
        """
        self.requests += 1
        with storage_errors(f"read ARM budget {row}"):
            try:
                entity = await self._table.get_entity(PARTITION, row)
            except ResourceNotFoundError:
                return 0.0, 0.0, None
        etag = entity.metadata.get("etag")
        tat, early = _number(entity.get("Tat")), _number(entity.get("Early"))
        return tat, early, (etag if isinstance(etag, str) else None)

    async def _write(self, row: str, tat: float, early: float, etag: str | None) -> str | None:
        """Write the new TAT if the row is as read (insert when new); its ETag, or None when it changed."""
        self.requests += 1
        entity: dict[str, Any] = {"PartitionKey": PARTITION, "RowKey": row, "Tat": tat, "Early": early}
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


@dataclass(frozen=True)
class _Grant:
    """The arithmetic of one reservation at ``now`` (see the module docstring)."""

    now: float
    interval: float  # 1 / refill
    tolerance: float  # (burst - 1) * interval
    late: float

    def slots(self, tat: float, early: float, *, count: int, ahead: int) -> tuple[list[float], float, float]:
        """The slots for ``count`` writes waiting and up to ``ahead`` announced ones; the new TAT and Early.

        ``tat``: the row's, or the header's floor when that is later.
        """
        now, interval, late = self.now, self.interval, self.late
        if late > 0 and tat + late <= now:
            early = now + late  # every earlier slot is used or dropped, and the bucket is back at its cap
        elif now < early and tat < now:
            # Writes came slower than the refill, and the GCRA's clock jumps to now: the refill it drops is
            # refill ARM's full bucket dropped too, so the window keeps its burst: it moves that far.
            early += now - tat
        start = max(tat, now)
        slots: list[float] = []
        for j in range(count + ahead):
            due = max(now, start + j * interval - self.tolerance)
            if j < count and due <= early + _EPSILON * interval:
                slots.append(now)  # the bucket is full: its refill of the next ``late`` seconds too
            elif j < count or due > max(now, early) + _EPSILON * interval:  # announced: a spent bucket's
                slots.append(due)
            else:
                break
        return slots, start + len(slots) * interval, early


def _number(value: object) -> float:
    """A float column's value; 0 for a missing or foreign one."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(value)
