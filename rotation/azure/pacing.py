"""Per-subscription pacing of ARM requests from the throttling headers (docs/design.md, Azure behaviour 3).

ARM throttles each subscription with a token bucket per principal and kind of request (writes: 200 burst,
10/s refill; reads: 250, 25/s; "Request limits and throttling", learn.microsoft.com/azure/azure-resource-
manager/management/request-limits-and-throttling) and answers every request with the budget left
(``x-ms-ratelimit-remaining-subscription-writes`` / ``-reads``); over the limit it answers 429 with
``Retry-After``. Bursting into the limit wastes a round trip per 429 and parks the request for a whole
``Retry-After`` (1 s at least, ten refills' worth of writes).

`ArmPacer` keeps, per subscription and kind (read or write), a mirror of that bucket:

- until the first answer shows the budget, one request goes out alone (a probe) and the others wait for it;
- then requests go out while the mirror holds a token, and are spaced at the refill rate once it is empty,
  one at a time in arrival order;
- the mirror counts every request it admits and refills at the refill rate; an answer can only lower it, to
  ``remaining + 1 + refill * (time since this request was sent) - others in flight`` (other spenders of
  the same budget show up there; answers handled out of order could only raise it wrongly);
- a small reserve stays unspent: a request admitted now may reach ARM a little later, when the server's
  bucket, capped at its burst, has not refilled as much as the mirror counted;
- a 429 blocks the subscription's requests of that kind until its ``Retry-After`` window ends: no request is
  sent inside it.

One pacer per process (`rotation.service.runtime.Runtime`), shared by every job, so concurrent jobs on one
subscription share one budget. Every instance of the app uses the same identity, so they all spend the same
bucket; the headers show each process what the others spent, but only after the fact: started together,
W processes would each spend the burst they all see, and each take the whole refill. With a `BudgetLedger`
(`rotation.store.budget`: one Table row per bucket) the processes also share the write budget *before*
spending it: each write first takes a slot from the ledger, a generic cell rate algorithm over the bucket's
burst and refill (the same arithmetic as the token bucket), reserved a few at a time with one conditional
write: the writes waiting now and, once the bucket is spent, those jobs announced (`expect_write`). The
ledger keeps a second of refill back as slack, and a slot older than half of it is dropped (a token nobody
spends; the other half covers the way to ARM): a slot used late could spend tokens the bucket lost to its
cap meanwhile. That slack is handed out too when the bucket is known to be full (every earlier slot used or
dropped): a fan-out within the burst goes out as its writes come, and the slot after it comes a second
later. The newest header is a floor for the ledger, and a write holding a slot still needs a token of the
mirror (spenders outside the app show up only in the headers). A ledger that cannot be reached, or that
answers too slowly for its slots to be used, is passed by: the mirror alone paces that write, never blocks
a rotation. Reads are paced by the mirror alone (a rotation's four reads against a bucket 2.5 times faster).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from rotation.azure.http_errors import header, retry_after_seconds
from rotation.errors import ServiceError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

logger = logging.getLogger(__name__)

WRITE_REFILL_PER_S = 10.0  # ARM's documented write refill per subscription
READ_REFILL_PER_S = 25.0  # ARM's documented read refill per subscription
WRITE_BURST = 200  # ARM's documented write bucket per subscription
READ_BURST = 250  # ARM's documented read bucket per subscription
# Write slots reserved from the ledger in one conditional write: one for each write waiting in this process,
# at most MAX_GRANT (one process does not hold the budget others wait for). A slot reserved and not used is
# budget nobody spends, so grants follow demand and never run ahead of it.
MAX_GRANT = 32
LEDGER_TIMEOUT_S = 30.0  # a ledger slower than this is passed by (the mirror alone paces that request)
# Reservations whose slots all came back too old, before the mirror alone paces a write. Each new one starts
# after the last: the slots soon lie in the future, and a future slot cannot age on the way back. Passing the
# ledger by is the last resort: its writes are spent outside it, which the other processes do not see.
LEDGER_ATTEMPTS = 4
# How late a write may reach ARM after its slot of the shared ledger (`ArmPacer._ledger_reserve`): the
# ledger keeps this much refill as slack (10 of ARM's 200 writes; at most half a smaller burst). Half of it is
# for the wait in this process (a slot older than that is dropped), half for the way to ARM (a loaded event
# loop, the pipeline, the network). Once the bucket is known full the slack is handed out too, so it costs
# only a fan-out larger than the burst, this long once (`rotation.store.budget`).
LEDGER_LATE_S = 1.0
RESERVE_TOKENS = 2.0  # left in the bucket: covers requests that reach ARM later than they were admitted
MAX_BLOCK_S = 60.0  # one odd Retry-After header cannot park a subscription longer than this
_THROTTLED = 429
_EPSILON = 1e-9  # a token's worth lost to float rounding is still a token
_MIN_SLEEP_S = 0.001  # every wait moves time forward
_SUBSCRIPTION = re.compile(r"/subscriptions/([^/?#]+)", re.IGNORECASE)
_WRITE_METHODS = frozenset({"PUT", "PATCH", "POST", "DELETE"})
# The write bucket a job announced with `ArmPacer.expect_write`, until its first write (one per task).
_EXPECTED_WRITE: contextvars.ContextVar[tuple[str, bool] | None] = contextvars.ContextVar(
    "rotation_expected_write", default=None
)


def subscription_of(url: str) -> str | None:
    """The subscription id an ARM URL addresses (lower-case), or None."""
    match = _SUBSCRIPTION.search(url)
    return match.group(1).lower() if match else None


def is_write(method: str) -> bool:
    """Whether ARM counts ``method`` against the write budget."""
    return method.upper() in _WRITE_METHODS


class BudgetLedger(Protocol):
    """The ARM budget of each subscription, shared by every process of the app (`rotation.store.budget`)."""

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

        ``floor``: the bucket is known to be at least this far spent (its theoretical arrival time, from the
        headers ARM answered), whatever the ledger says. ``ahead``: as many more, for writes expected soon,
        but only when the bucket is spent (their slots lie in the future). ``late``: how long
        after its time a slot may still reach ARM (``burst`` leaves that much refill out; the caller drops a
        slot it could not send in time); a ledger may hand out that refill at once when the bucket is known
        to be full. Raises `ServiceError` when the ledger cannot be read or written.
        """
        ...


@dataclass
class PacerStats:
    """What the pacer did, for logs and benchmarks."""

    admitted: int = 0
    waited: int = 0  # requests that waited at all
    wait_seconds: float = 0.0
    throttled: int = 0  # 429 answers seen
    reservations: int = 0  # ledger calls that reserved slots
    reserved: int = 0  # slots they reserved
    ledger_failures: int = 0  # ledger calls passed by (storage failure or timeout)
    dropped: int = 0  # slots not used within their time (budget nobody spent)


@dataclass
class Ticket:
    """One admitted request: hand it back to `ArmPacer.observe` or `ArmPacer.release`."""

    key: tuple[str, bool]
    sent_at: float
    done: bool = False
    sent_wall: float = 0.0


@dataclass
class _Bucket:
    refill_per_s: float
    tokens: float | None = None  # the mirror; None until an answer showed the budget
    stamp: float = 0.0
    cap: float = math.inf  # the burst, learned from the largest budget seen
    in_flight: int = 0
    blocked_until: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    queued: int = 0  # requests waiting for the lock: how many slots to reserve at once
    slots: collections.deque[float] = field(default_factory=collections.deque)  # from the ledger, wall clock
    expected: int = 0  # writes announced by jobs in this process (`ArmPacer.expect_write`), not sent yet
    spent_until: tuple[float, float] = (0.0, 0.0)  # (wall time sent, theoretical arrival time) from a header

    def available(self, now: float) -> float:
        if self.tokens is None:
            return math.inf
        return min(self.cap, self.tokens + max(0.0, now - self.stamp) * self.refill_per_s)

    def set_tokens(self, value: float, now: float) -> None:
        self.tokens, self.stamp = value, now

    def wake(self) -> None:
        """Wake the requests waiting for the probe's answer."""
        self.answered.set()
        self.answered = asyncio.Event()


class ArmPacer:
    """Admit ARM requests per subscription at the pace its budget allows; see the module docstring."""

    def __init__(
        self,
        *,
        write_refill_per_s: float = WRITE_REFILL_PER_S,
        read_refill_per_s: float = READ_REFILL_PER_S,
        reserve: float = RESERVE_TOKENS,
        write_burst: int = WRITE_BURST,
        read_burst: int = READ_BURST,
        ledger: BudgetLedger | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if write_refill_per_s <= 0 or read_refill_per_s <= 0:
            raise ValueError("refill rates must be positive")
        self._refill = {True: write_refill_per_s, False: read_refill_per_s}
        self._burst = {True: float(write_burst), False: float(read_burst)}
        self._reserve = max(0.0, reserve)
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._buckets: dict[tuple[str, bool], _Bucket] = {}
        self.ledger = ledger
        self.stats = PacerStats()

    @contextlib.contextmanager
    def expect_write(self, subscription: str) -> Iterator[None]:
        """Announce that the job running in this context will likely write to ``subscription`` soon.

        Reservations from the ledger then cover the writes of jobs still reading, so a burst of jobs costs
        one storage request per MAX_GRANT writes. The announcement ends with the job's first write, or with
        the block.
        """
        key = (subscription.lower(), True)
        bucket = self._bucket(key)
        bucket.expected += 1
        token = _EXPECTED_WRITE.set(key)
        try:
            yield
        finally:
            if _EXPECTED_WRITE.get() == key:
                bucket.expected = max(0, bucket.expected - 1)  # the job ended without writing
            _EXPECTED_WRITE.reset(token)

    def share_through(self, ledger: BudgetLedger | None) -> None:
        """Take slots from ``ledger`` before each request from now on (None: the mirror alone)."""
        self.ledger = ledger

    def _ledger_reserve(self, *, write: bool) -> float:
        """Tokens of the bucket the ledger keeps as slack for slots that reach ARM after their time.

        A slot used late spends a token the bucket may have lost to its cap while the slot waited (the
        processes hold slots the bucket does not know of): LEDGER_LATE_S of refill, at most half the burst,
        at least the mirror's reserve. Its refill time is how late a slot may reach ARM (`_late`).
        """
        burst = self._burst[write]
        slack = min(0.5 * burst, LEDGER_LATE_S * self._refill[write])
        return max(min(self._reserve, 0.1 * burst), slack)

    def _bucket(self, key: tuple[str, bool]) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(refill_per_s=self._refill[key[1]])
        return bucket

    def blocked_until(self, subscription: str, *, write: bool) -> float:
        """The end of the subscription's current ``Retry-After`` window (clock time; 0 when none)."""
        bucket = self._buckets.get((subscription.lower(), write))
        return bucket.blocked_until if bucket is not None else 0.0

    def budget(self, subscription: str, *, write: bool) -> float | None:
        """The mirror's tokens now (None while unknown)."""
        bucket = self._buckets.get((subscription.lower(), write))
        if bucket is None or bucket.tokens is None:
            return None
        return bucket.available(self._clock())

    async def acquire(self, subscription: str, *, write: bool) -> Ticket:
        """Wait until a request of this kind may be sent to ``subscription``; return its ticket."""
        key = (subscription.lower(), write)
        bucket = self._bucket(key)
        started = self._clock()
        bucket.queued += 1
        async with bucket.lock:  # FIFO: requests are admitted in arrival order
            bucket.queued -= 1
            # Writes only: a rotation spends one write and four reads, and ARM's read bucket is larger and
            # refills 2.5 times faster; reads are paced by the mirror alone (the headers).
            shared = write and self.ledger is not None  # then the ledger keeps the reserve, for everyone
            slot: float | None = None
            while True:
                now = self._clock()
                if now < bucket.blocked_until:  # a Retry-After first: a slot taken before would age in it
                    await self._sleep(max(_MIN_SLEEP_S, bucket.blocked_until - now))
                    continue
                if shared and (slot is None or self._wall() - slot > self._late() / 2):
                    if slot is not None:
                        self.stats.dropped += 1  # it aged in the mirror's wait: take another
                    slot = await self._shared_slot(key, bucket)
                    shared = slot is not None
                    continue
                if await self._admitted(bucket, now, shared=shared):
                    break
            if write:
                _announced_write_came(bucket, key)
            bucket.in_flight += 1
            sent_at = self._clock()
        waited = sent_at - started
        self.stats.admitted += 1
        if waited >= _MIN_SLEEP_S:
            self.stats.waited += 1
            self.stats.wait_seconds += waited
        return Ticket(key, sent_at, sent_wall=self._wall())

    def _late(self) -> float:
        """How long after its time a slot of the shared budget may reach ARM (the slack's refill time)."""
        return self._ledger_reserve(write=True) / self._refill[True]

    async def _admitted(self, bucket: _Bucket, now: float, *, shared: bool) -> bool:
        """Whether the mirror admits a request now (and counts it); False after a wait: look again."""
        if bucket.tokens is None:
            if bucket.in_flight == 0:
                return True  # the probe
            await bucket.answered.wait()
            return False
        available = bucket.available(now)
        # The reserve never exceeds a tenth of the burst, so small budgets are still usable. With a slot of
        # the shared budget the ledger keeps the slack; the mirror still catches spenders outside the app.
        need = 1.0 if shared else 1.0 + min(self._reserve, 0.1 * bucket.cap)
        if available >= need - _EPSILON:
            bucket.set_tokens(max(0.0, available - 1.0), now)
            return True
        await self._sleep(max(_MIN_SLEEP_S, (need - available) / bucket.refill_per_s))
        return False

    async def _shared_slot(self, key: tuple[str, bool], bucket: _Bucket) -> float | None:
        """Wait for this request's slot of the shared budget, reserving slots when none is left; its time.

        None when the ledger gave none (unreachable, or every reservation came back too late to use): the
        mirror alone paces this request.
        """
        # A slot may reach ARM up to ``late`` after its time: half for the wait here (older, it is dropped),
        # half for the way to ARM (LEDGER_LATE_S). Checked again after a reservation: a slow write ages them.
        late = self._late()
        for attempt in range(LEDGER_ATTEMPTS + 1):
            now = self._wall()
            while bucket.slots and bucket.slots[0] < now - late / 2:
                bucket.slots.popleft()
                self.stats.dropped += 1
            if bucket.slots:
                slot = bucket.slots.popleft()
                delay = slot - self._wall()
                if delay > 0:
                    await self._sleep(delay)
                return slot
            if attempt == LEDGER_ATTEMPTS:
                self._pass_ledger_by(key, "slots came back older than half the window")
                return None
            assert self.ledger is not None  # noqa: S101 - the caller checked
            write = key[1]
            # This write, those queued behind it, and those jobs of this process announced (they read the
            # cluster first): one reservation for a burst of jobs rather than one each.
            announced = _EXPECTED_WRITE.get() == key  # then this write is among the expected ones
            count = min(MAX_GRANT, 1 + bucket.queued)
            ahead = max(0, min(MAX_GRANT, bucket.expected + (0 if announced else 1)) - count)
            # Every process must reserve with the same burst: the configured one (the cap the headers showed
            # this process is only a lower bound of it). Some tokens stay unreserved, as in the mirror: a
            # request may reach ARM later than its slot.
            burst = max(1.0, self._burst[write] - self._ledger_reserve(write=write))
            sent, spent = bucket.spent_until
            # What the newest header showed spent (spenders outside the app included).
            floor = max(spent, sent) if spent else 0.0
            try:
                async with asyncio.timeout(LEDGER_TIMEOUT_S):
                    slots = await self.ledger.reserve(
                        key[0],
                        write=write,
                        count=count,
                        ahead=ahead,
                        refill_per_s=self._refill[write],
                        burst=burst,
                        floor=floor,
                        late=late,
                    )
            except (ServiceError, TimeoutError) as exc:
                self._pass_ledger_by(key, str(exc) or type(exc).__name__)
                return None
            self.stats.reservations += 1
            self.stats.reserved += len(slots)
            if not slots:
                return None
            bucket.slots.extend(sorted(slots))
        return None

    def _pass_ledger_by(self, key: tuple[str, bool], reason: str) -> None:
        """Count and log a write the ledger gave no slot: the mirror alone paces it."""
        self.stats.ledger_failures += 1
        logger.warning("rotation.pacing_ledger_unavailable", extra={"subscription": key[0], "reason": reason})

    def observe(self, ticket: Ticket, status: int, headers: Any) -> None:  # noqa: ANN401 - any mapping
        """Correct the mirror from the answer to ``ticket``'s request (status and response headers)."""
        if ticket.done:
            return
        ticket.done = True
        bucket = self._bucket(ticket.key)
        bucket.in_flight = max(0, bucket.in_flight - 1)
        now = self._clock()
        remaining = _remaining(headers, write=ticket.key[1])
        if remaining is not None and ticket.sent_wall >= bucket.spent_until[0]:
            # The bucket's theoretical arrival time (`rotation.store.budget`) as this answer shows it.
            write = ticket.key[1]
            burst = self._burst[write] - self._ledger_reserve(write=write)
            # From when the answer came: ARM counted the request somewhere between sending and now, and the
            # later time is the safe one for when its bucket is full again.
            tat = self._wall() + (burst - remaining) / self._refill[write]
            bucket.spent_until = (ticket.sent_wall, tat)
        if remaining is not None:
            bucket.cap = remaining + 1.0 if math.isinf(bucket.cap) else max(bucket.cap, remaining + 1.0)
            others = bucket.in_flight  # admitted, not answered: they will spend budget the header still shows
            high = remaining + 1.0 + bucket.refill_per_s * max(0.0, now - ticket.sent_at) - others
            if bucket.tokens is None:
                bucket.set_tokens(remaining - others, now)
            else:
                # Only ever lowered: answers come back out of order, and an old answer handled late would
                # raise the mirror past requests the server has counted since. Our own count and the refill
                # keep it exact; the header catches other spenders of the same budget.
                bucket.set_tokens(min(bucket.available(now), high), now)
        if status == _THROTTLED:
            self.stats.throttled += 1
            wait = min(retry_after_seconds(headers) or 1.0, MAX_BLOCK_S)
            bucket.blocked_until = max(bucket.blocked_until, now + wait)
            # A token becomes available when the window ends: the mirror says so too.
            bucket.set_tokens(min(bucket.available(now), 1.0 - wait * bucket.refill_per_s), now)
        bucket.wake()

    def release(self, ticket: Ticket) -> None:
        """The request got no answer (connection error, timeout): free its place without news."""
        if ticket.done:
            return
        ticket.done = True
        bucket = self._bucket(ticket.key)
        bucket.in_flight = max(0, bucket.in_flight - 1)
        bucket.wake()


def _announced_write_came(bucket: _Bucket, key: tuple[str, bool]) -> None:
    """The write the job in this context announced (`ArmPacer.expect_write`), if any, has come."""
    if bucket.expected and _EXPECTED_WRITE.get() == key:
        bucket.expected -= 1
        _EXPECTED_WRITE.set(None)


def _remaining(headers: Any, *, write: bool) -> float | None:  # noqa: ANN401
    raw = header(headers, "x-ms-ratelimit-remaining-subscription-" + ("writes" if write else "reads"))
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
