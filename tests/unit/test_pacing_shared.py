"""Several processes on one ARM budget (rotation.azure.pacing with rotation.store.budget), on a fake clock.

Each "process" is its own `ArmPacer` with its own `TableBudget`, over one in-memory table with ETags as
Table storage keeps them, against one server bucket (ARM's, as the simulator keeps it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableEntity
from hypothesis import given, settings
from hypothesis import strategies as st

from rotation.azure.pacing import LEDGER_ATTEMPTS, LEDGER_LATE_S, ArmPacer
from rotation.errors import ServiceError
from rotation.store.budget import PARTITION, TableBudget, row_key
from tests.helpers.virtual_time import SUB, ServerBucket, VirtualTime, write_until_accepted

LATENCY = 0.03  # each way, ARM and storage alike


class MemoryTable:
    """The three Table calls `TableBudget` makes, with ETags and the errors azure-data-tables raises."""

    def __init__(self, time: VirtualTime, latency: float = 0.005) -> None:
        self.time = time
        self.latency = latency
        self.rows: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        self.requests = 0
        self.conflicts = 0
        self._etags = itertools.count(1)

    async def _hop(self) -> None:
        self.requests += 1
        await self.time.sleep(self.latency)

    async def get_entity(self, partition: str, row: str) -> TableEntity:
        await self._hop()
        if (partition, row) not in self.rows:
            raise ResourceNotFoundError("not found")
        entity, etag = self.rows[(partition, row)]
        out = TableEntity(entity)
        out._metadata = {"etag": etag}
        return out

    async def create_entity(self, entity: dict[str, Any]) -> dict[str, Any]:
        await self._hop()
        key = (entity["PartitionKey"], entity["RowKey"])
        if key in self.rows:
            self.conflicts += 1
            raise ResourceExistsError("exists")
        etag = f"W/{next(self._etags)}"
        self.rows[key] = (dict(entity), etag)
        return {"etag": etag}

    async def update_entity(
        self, entity: dict[str, Any], *, mode: object, etag: str, match_condition: MatchConditions
    ) -> dict[str, Any]:
        del mode
        await self._hop()
        key = (entity["PartitionKey"], entity["RowKey"])
        if key not in self.rows:
            raise ResourceNotFoundError("not found")
        if match_condition is MatchConditions.IfNotModified and self.rows[key][1] != etag:
            self.conflicts += 1
            raise ResourceModifiedError("412")
        new = f"W/{next(self._etags)}"
        self.rows[key] = (dict(entity), new)
        return {"etag": new}


def process(time: VirtualTime, table: MemoryTable | None, *, burst: int = 20) -> ArmPacer:
    """One worker process's pacer, sharing through ``table`` when given."""
    ledger = TableBudget(table, wall=time.clock) if table is not None else None  # type: ignore[arg-type]
    return ArmPacer(
        write_refill_per_s=10.0,
        write_burst=burst,
        reserve=2.0,
        ledger=ledger,
        clock=time.clock,
        wall=time.clock,
        sleep=time.sleep,
    )


async def _fan_out(time: VirtualTime, pacers: list[ArmPacer], server: ServerBucket, writes: int) -> list[int]:
    """``writes`` writes on one subscription, dealt round-robin to the pacers; every answer's status."""
    statuses: list[int] = []

    await asyncio.gather(
        *(
            write_until_accepted(time, pacers[i % len(pacers)], server, statuses, LATENCY)
            for i in range(writes)
        )
    )
    return statuses


async def test_four_processes_without_a_ledger_overrun_the_bucket() -> None:
    """The problem the ledger solves: each process sees the same burst and takes the whole refill."""
    time = VirtualTime()
    server = ServerBucket(time, burst=20, refill=10.0)
    pacers = [process(time, None) for _ in range(4)]
    statuses = await time.run(_fan_out(time, pacers, server, 100))
    assert statuses.count(429) > 10


async def test_four_processes_sharing_the_ledger_get_no_429_and_keep_the_refill_pace() -> None:
    """100 writes over 4 processes, burst 20, refill 10/s: no 429, and the refill's pace from the start.

    The ledger keeps a second of refill as slack for late writes (`LEDGER_LATE_S`): the bucket is known full
    after the idle spell, so the first 20 go at once, the 21st a second of slack later, then the refill's
    pace: 9 s; ARM's own bound is 8 s.
    """
    time = VirtualTime()
    server = ServerBucket(time, burst=20, refill=10.0)
    table = MemoryTable(time)
    pacers = [process(time, table) for _ in range(4)]

    async def main() -> list[int]:
        await time.sleep(2.0)  # idle: the bucket is full, and the ledger knows it
        return await _fan_out(time, pacers, server, 100)

    statuses = await time.run(main())
    makespan = time.now - 2.0
    assert statuses.count(429) == 0
    assert len(statuses) == 100
    bound = (100 - 20) / 10.0
    assert bound <= makespan <= (bound + LEDGER_LATE_S) * 1.01 + 2 * LATENCY
    reserved = sum(p.stats.reserved for p in pacers)
    assert reserved >= 100
    # A few slots at a time: far fewer storage requests than writes, even with four processes racing.
    assert table.requests < 60
    assert sum(p.stats.ledger_failures for p in pacers) == 0


async def test_a_process_alone_reserves_with_one_write_per_grant() -> None:
    """The ledger remembers the ETag it wrote: alone on a row, each reservation is one conditional write."""
    time = VirtualTime()
    table = MemoryTable(time)
    ledger = TableBudget(table, wall=time.clock)  # type: ignore[arg-type]

    async def main() -> list[list[float]]:
        return [await ledger.reserve(SUB, write=True, count=8, refill_per_s=10.0, burst=4) for _ in range(3)]

    first, second, third = await time.run(main())
    assert table.requests == 1 + 3  # the first read (no row yet), then one write per reservation
    assert ledger.requests == 4
    start = first[0]
    # burst 4: four at once, then one every 0.1 s, continuing across reservations
    assert [round(t - start, 6) for t in first] == [0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4]
    assert [round(t - start, 6) for t in second] == [round(0.5 + 0.1 * i, 6) for i in range(8)]
    assert round(third[0] - start, 6) == 1.3
    assert PARTITION == "~budget"
    assert row_key(SUB.upper(), write=True) == f"~{SUB}|writes"


async def test_a_process_that_loses_a_race_reserves_after_the_winner() -> None:
    """Two ledgers on one row: the second's cached ETag is stale, it reads the row again, never overlaps."""
    time = VirtualTime()
    table = MemoryTable(time)
    a = TableBudget(table, wall=time.clock)  # type: ignore[arg-type]
    b = TableBudget(table, wall=time.clock)  # type: ignore[arg-type]

    async def main() -> list[list[float]]:
        first = await a.reserve(SUB, write=True, count=2, refill_per_s=10.0, burst=1)
        second = await b.reserve(SUB, write=True, count=2, refill_per_s=10.0, burst=1)
        third = await a.reserve(SUB, write=True, count=2, refill_per_s=10.0, burst=1)  # stale: b wrote since
        return [first, second, third]

    slots = await time.run(main())
    flat = sorted(t for group in slots for t in group)
    gaps = [round(y - x, 6) for x, y in itertools.pairwise(flat)]
    assert all(g >= 0.1 - 1e-6 for g in gaps)  # burst 1: one request per refill, whoever holds it
    assert table.conflicts == 1


async def test_an_unreachable_ledger_is_passed_by_and_pacing_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Storage down: the request is paced by the mirror alone, and the failure is logged."""

    class Down:
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
            del subscription, write, count, refill_per_s, burst, floor, ahead, late
            raise ServiceError("storage down", service="storage")

    time = VirtualTime()
    pacer = ArmPacer(ledger=Down(), clock=time.clock, wall=time.clock, sleep=time.sleep)

    async def main() -> int:
        ticket = await pacer.acquire(SUB, write=True)
        pacer.observe(ticket, 200, {"x-ms-ratelimit-remaining-subscription-writes": "100"})
        await pacer.acquire(SUB, write=True)
        return pacer.stats.admitted

    with caplog.at_level(logging.WARNING, logger="rotation.azure.pacing"):
        assert await time.run(main()) == 2
    assert pacer.stats.ledger_failures == 2
    assert [r.message for r in caplog.records] == ["rotation.pacing_ledger_unavailable"] * 2


async def test_jobs_that_announce_their_write_share_one_reservation_once_the_bucket_is_spent() -> None:
    """Another process spent the burst; eight jobs announce a write: one reservation of eight future slots."""
    time = VirtualTime()
    table = MemoryTable(time)
    pacer = process(time, table)
    other = TableBudget(table, wall=time.clock)  # type: ignore[arg-type]

    async def job(i: int) -> None:
        with pacer.expect_write(SUB):
            await time.sleep(0.01 * i)  # the job reads the cluster first
            ticket = await pacer.acquire(SUB, write=True)
            pacer.observe(ticket, 202, {"x-ms-ratelimit-remaining-subscription-writes": "0"})

    async def main() -> None:
        await other.reserve(SUB, write=True, count=20, refill_per_s=10.0, burst=18)
        await asyncio.gather(*(job(i) for i in range(8)))

    await time.run(main())
    assert (pacer.stats.reservations, pacer.stats.reserved) == (1, 8)


async def test_a_bucket_not_known_full_is_reserved_only_for_writes_waiting_now() -> None:
    """Tokens left, but slots handed out less than ``late`` ago: jobs still reading get none of them.

    Held for a job still reading, such a slot is dropped if the job comes late (a token nobody spends);
    only a full bucket, or a spent one (future slots), is reserved for the writes jobs announced.
    """
    time = VirtualTime()
    table = MemoryTable(time)
    pacer = process(time, table)
    other = TableBudget(table, wall=time.clock)  # type: ignore[arg-type]

    async def main() -> None:
        await time.sleep(1.0)
        await other.reserve(SUB, write=True, count=5, refill_per_s=10.0, burst=10, late=LEDGER_LATE_S)
        await time.sleep(1.2)  # the bucket has tokens, but the other process's slots may still be in use
        with pacer.expect_write(SUB):
            for _ in range(7):  # seven more jobs announced, still reading
                pacer._bucket((SUB, True)).expected += 1  # as seven `expect_write` blocks would
            ticket = await pacer.acquire(SUB, write=True)
            pacer.observe(ticket, 202, {"x-ms-ratelimit-remaining-subscription-writes": "14"})

    await time.run(main())
    assert (pacer.stats.reservations, pacer.stats.reserved) == (1, 1)


async def test_a_full_bucket_goes_out_whole_to_the_writes_as_they_come() -> None:
    """After an idle spell the bucket is known full: 20 writes go at once, slack included, none ahead."""
    time = VirtualTime()
    pacer = process(time, MemoryTable(time))
    sent: list[float] = []

    async def job(i: int) -> None:
        with pacer.expect_write(SUB):
            await time.sleep(0.002 * i)  # the job reads the cluster first
            ticket = await pacer.acquire(SUB, write=True)
            sent.append(time.now)
            pacer.observe(ticket, 202, {"x-ms-ratelimit-remaining-subscription-writes": str(19 - i)})

    async def main() -> None:
        await time.sleep(2.0)
        await asyncio.gather(*(job(i) for i in range(20)))

    await time.run(main())
    assert pacer.stats.reserved == 20  # slots for writes that came, none for jobs still reading
    assert pacer.stats.dropped == 0
    assert max(sent) < 2.0 + 0.1  # the whole burst within its arrival; the slack alone would hold 10 back


async def test_a_job_that_ends_without_writing_withdraws_its_announcement() -> None:
    """A job that found nothing to write (already current) leaves no slot reserved in its name."""
    time = VirtualTime()
    pacer = process(time, MemoryTable(time))

    async def main() -> None:
        with pacer.expect_write(SUB):
            await pacer.acquire(SUB, write=False)  # a read does not use the announcement
        ticket = await pacer.acquire(SUB, write=True)
        pacer.observe(ticket, 202, {"x-ms-ratelimit-remaining-subscription-writes": "100"})

    await time.run(main())
    assert (pacer.stats.reservations, pacer.stats.reserved) == (1, 1)


# The ledger's arithmetic against ARM's bucket, every slot sent anywhere in its window: burst 20 and refill 10/s
# as in the bench, with the pacer's slack (LEDGER_LATE_S of refill, here half the burst) and with a smaller
# one; ARM's own burst of 200; clocks at 0 and at today's wall-clock seconds (floats 2.4e-7 s apart there).
BURST, REFILL, LATE = 20, 10.0, LEDGER_LATE_S
SCALES = st.sampled_from([(20, LEDGER_LATE_S), (20, 0.5), (200, LEDGER_LATE_S)])
STEP = st.tuples(
    st.sampled_from([0.0, 0.05, 0.1, 0.3, 0.5, 0.6, 1.0, 2.5]),  # wait before the reservation (s)
    st.integers(0, 2),  # which of three processes reserves
    st.integers(1, 24),  # slots for writes waiting now
    st.integers(0, 6),  # slots for writes announced (granted only as future slots of a spent bucket)
    st.sampled_from([0.0, 1.0, 0.5, -1.0]),  # where in its window each slot is sent (-1: anywhere, at random)
)


def rejected(uses: list[float], *, burst: int = BURST, refill: float = REFILL) -> int:
    """How many of the writes sent at ``uses`` a token bucket full at time 0 answers 429.

    ARM's bucket as the simulator keeps it: capped at the burst, refilled continuously. A ten-thousandth of a
    token is float rounding at wall-clock times, not a token short.
    """
    tokens, stamp, refused = float(burst), 0.0, 0
    for at in sorted(uses):
        tokens, stamp = min(float(burst), tokens + (at - stamp) * refill), at
        if tokens >= 1.0 - 1e-4:
            tokens -= 1.0
        else:
            refused += 1
    return refused


def send_times(
    steps: list[tuple[float, int, int, int, float]],
    seed: int,
    *,
    window: float | None = None,
    burst: int = BURST,
    late: float = LATE,
    start: float = 0.0,
) -> list[float]:
    """Reservations as ``steps`` say, each slot sent the step's share of the way through its window.

    ``window``: how late a slot is sent at most (``late``, the window the ledger was told, by default). A
    slot whose window ended before the reservation came back is dropped, as `ArmPacer` drops it.
    """
    time = VirtualTime()
    table = MemoryTable(time)
    ledgers = [TableBudget(table, wall=time.clock) for _ in range(3)]  # type: ignore[arg-type]
    pick = random.Random(seed)  # noqa: S311 - test data, not secrets
    uses: list[float] = []
    slack = min(0.5 * burst, late * REFILL)  # as `ArmPacer._ledger_reserve`

    async def main() -> None:
        await time.sleep(start)
        for wait, who, count, ahead, share in steps:
            await time.sleep(wait)
            slots = await ledgers[who].reserve(
                SUB,
                write=True,
                count=count,
                ahead=ahead,
                refill_per_s=REFILL,
                burst=burst - slack,
                late=slack / REFILL,
            )
            for slot in slots:
                first, last = max(slot, time.now), slot + (slack / REFILL if window is None else window)
                if first <= last:
                    uses.append(first + (pick.random() if share < 0 else share) * (last - first))

    asyncio.run(time.run(main()))
    return uses


@settings(max_examples=500, deadline=None)
@given(
    steps=st.lists(STEP, min_size=1, max_size=24),
    seed=st.integers(0, 2**32),
    scale=SCALES,
    start=st.sampled_from([0.0, 1.7e9]),
)
def test_no_slot_sent_within_its_window_draws_a_429(
    steps: list[tuple[float, int, int, int, float]], seed: int, scale: tuple[int, float], start: float
) -> None:
    """Whatever the reservations and however late within its window each slot is sent, ARM's bucket holds."""
    burst, late = scale
    assert rejected(send_times(steps, seed, burst=burst, late=late, start=start), burst=burst) == 0


def test_a_full_bucket_hands_out_the_whole_burst_and_the_next_slot_waits_for_the_slack() -> None:
    """After an idle spell, 20 writes go at once (the slack too), and the 21st a slack's refill later."""
    time = VirtualTime()
    ledger = TableBudget(MemoryTable(time, latency=0.0), wall=time.clock)  # type: ignore[arg-type]
    start = 1.7e9  # a wall clock of today: the whole burst despite float rounding there

    async def main() -> list[float]:
        await time.sleep(start)
        first = await ledger.reserve(SUB, write=True, count=12, refill_per_s=REFILL, burst=10, late=LATE)
        second = await ledger.reserve(SUB, write=True, count=9, refill_per_s=REFILL, burst=10, late=LATE)
        return first + second

    slots = asyncio.run(time.run(main()))
    assert slots[:20] == [start] * 20
    assert slots[20] == pytest.approx(start + LATE + 1 / REFILL)
    # One slot at a time, as writes trickle in: the 20th is still in the window (the TAT carries the rounding
    # of 20 additions at 1.7e9 s, where floats are 2.4e-7 s apart).
    time = VirtualTime()
    ledger = TableBudget(MemoryTable(time, latency=0.0), wall=time.clock)  # type: ignore[arg-type]

    async def trickle() -> list[float]:
        await time.sleep(start + 0.123)
        sent = []
        for _ in range(20):
            sent += await ledger.reserve(SUB, write=True, count=1, refill_per_s=REFILL, burst=10, late=LATE)
            await time.sleep(0.013)
        return sent

    trickled = asyncio.run(time.run(trickle()))
    assert trickled[-1] - trickled[0] == pytest.approx(19 * 0.013)  # each went when it came
    # The first writes slower than the refill (0.15 s apart), the rest at once: the window keeps its burst.
    time = VirtualTime()
    ledger = TableBudget(MemoryTable(time, latency=0.0), wall=time.clock)  # type: ignore[arg-type]

    async def slow_start() -> list[float]:
        await time.sleep(start)
        sent = []
        for _ in range(3):
            sent += await ledger.reserve(SUB, write=True, count=1, refill_per_s=REFILL, burst=10, late=LATE)
            await time.sleep(0.15)
        return sent + await ledger.reserve(
            SUB, write=True, count=17, refill_per_s=REFILL, burst=10, late=LATE
        )

    slow = asyncio.run(time.run(slow_start()))
    assert slow[3:] == [slow[3]] * 17  # every one at once, none at the refill's pace
    assert slow[3] == pytest.approx(start + 0.45)
    # Without ``late`` (an older version's call), the slack stays back: 10 at once, then the refill's pace.
    time = VirtualTime()
    ledger = TableBudget(MemoryTable(time, latency=0.0), wall=time.clock)  # type: ignore[arg-type]
    plain = asyncio.run(time.run(ledger.reserve(SUB, write=True, count=11, refill_per_s=REFILL, burst=10)))
    assert plain[:10] == [0.0] * 10
    assert plain[10] == pytest.approx(0.1)


def test_the_check_catches_a_slot_sent_after_its_window() -> None:
    """The property above can fail: the same ledger, slots sent up to twice as late, draws 429s."""
    steps = [
        (2.0, 0, 8, 0, 1.0),  # the burst at once, each slot sent at the end of its window
        (0.0, 1, 8, 0, 1.0),
        (0.0, 2, 4, 0, 1.0),
        (1.1, 0, 8, 0, 0.0),  # the slots after it, each sent on time
        (0.0, 1, 8, 0, 0.0),
    ]
    assert rejected(send_times(steps, 1, window=LATE)) == 0
    assert rejected(send_times(steps, 1, window=2 * LATE)) > 0


async def test_slots_that_come_back_too_old_from_a_slow_ledger_are_not_sent() -> None:
    """A ledger slower than half the window returns only aged slots: they are dropped, not sent.

    After LEDGER_ATTEMPTS such reservations the mirror alone paces the write, as with an unreachable ledger.
    """
    time = VirtualTime()
    pacer = process(time, MemoryTable(time, latency=0.6))  # each slot is 0.6 s old when it comes back

    async def main() -> float:
        await time.sleep(2.0)
        ticket = await pacer.acquire(SUB, write=True)
        return ticket.sent_wall

    sent = await time.run(main())
    assert pacer.stats.reservations == LEDGER_ATTEMPTS
    assert pacer.stats.dropped == LEDGER_ATTEMPTS
    assert sent >= 2.0 + 0.6 * LEDGER_ATTEMPTS


def _spied(pacer: ArmPacer) -> list[float]:
    """Every slot the pacer's ledger hands out, in order."""
    slots: list[float] = []
    reserve = pacer.ledger.reserve  # type: ignore[union-attr]

    async def spy(*args: Any, **kw: Any) -> list[float]:
        got = await reserve(*args, **kw)
        slots.extend(got)
        return got

    pacer.ledger.reserve = spy  # type: ignore[union-attr, method-assign]
    return slots


async def test_a_slot_held_through_the_mirrors_wait_is_taken_again_when_it_aged() -> None:
    """A slot that aged while its write waited for the mirror is dropped; the write goes on a fresh one.

    The second write of a fresh process waits for the probe's answer, here 1.5 s.
    """
    time = VirtualTime()
    pacer = process(time, MemoryTable(time, latency=0.0))
    slots = _spied(pacer)

    async def main() -> float:
        await time.sleep(2.0)
        probe = await pacer.acquire(SUB, write=True)
        second = asyncio.ensure_future(pacer.acquire(SUB, write=True))
        await time.sleep(1.5)
        pacer.observe(probe, 202, {"x-ms-ratelimit-remaining-subscription-writes": "19"})
        return (await second).sent_wall

    sent = await time.run(main())
    assert pacer.stats.dropped == 1
    assert sent - max(slots) <= LEDGER_LATE_S / 2  # sent on a slot taken after the wait


async def test_a_write_that_comes_in_a_retry_after_takes_its_slot_when_it_ends() -> None:
    """No slot is taken to wait out a 429's Retry-After in (it would age there, a token nobody spends)."""
    time = VirtualTime()
    pacer = process(time, MemoryTable(time, latency=0.0))
    slots = _spied(pacer)

    async def main() -> float:
        await time.sleep(2.0)
        first = await pacer.acquire(SUB, write=True)
        pacer.observe(first, 429, {"x-ms-ratelimit-remaining-subscription-writes": "0", "Retry-After": "2"})
        return (await pacer.acquire(SUB, write=True)).sent_wall

    sent = await time.run(main())
    assert sent >= 4.0  # not inside the Retry-After
    assert (pacer.stats.dropped, len(slots)) == (0, 2)
    assert sent - slots[-1] <= LEDGER_LATE_S / 2
