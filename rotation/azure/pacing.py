"""Per-subscription pacing of ARM requests from the throttling headers (docs/design.md, Azure behaviour 3).

ARM throttles each subscription with a token bucket (writes: 200 burst, 10/s refill; reads: 250, 25/s) and
answers every request with the budget left (``x-ms-ratelimit-remaining-subscription-writes`` / ``-reads``);
over the limit it answers 429 with ``Retry-After``. Bursting into the limit wastes a round trip per 429 and
parks the request for a whole ``Retry-After`` (1 s at least, ten refills' worth of writes).

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
subscription share one budget. Several processes against one subscription each correct their mirror from
the headers, which count everyone's requests; they can still overshoot briefly, and a 429 then parks them.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rotation.azure.http_errors import header, retry_after_seconds

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

WRITE_REFILL_PER_S = 10.0  # ARM's documented write refill per subscription
READ_REFILL_PER_S = 25.0  # ARM's documented read refill per subscription
RESERVE_TOKENS = 2.0  # left in the bucket: covers requests that reach ARM later than they were admitted
MAX_BLOCK_S = 60.0  # one odd Retry-After header cannot park a subscription longer than this
_THROTTLED = 429
_EPSILON = 1e-9  # a token's worth lost to float rounding is still a token
_MIN_SLEEP_S = 0.001  # every wait moves time forward
_SUBSCRIPTION = re.compile(r"/subscriptions/([^/?#]+)", re.IGNORECASE)
_WRITE_METHODS = frozenset({"PUT", "PATCH", "POST", "DELETE"})


def subscription_of(url: str) -> str | None:
    """The subscription id an ARM URL addresses (lower-case), or None."""
    match = _SUBSCRIPTION.search(url)
    return match.group(1).lower() if match else None


def is_write(method: str) -> bool:
    """Whether ARM counts ``method`` against the write budget."""
    return method.upper() in _WRITE_METHODS


@dataclass
class PacerStats:
    """What the pacer did, for logs and benchmarks."""

    admitted: int = 0
    waited: int = 0  # requests that waited at all
    wait_seconds: float = 0.0
    throttled: int = 0  # 429 answers seen


@dataclass
class Ticket:
    """One admitted request: hand it back to `ArmPacer.observe` or `ArmPacer.release`."""

    key: tuple[str, bool]
    sent_at: float
    done: bool = False


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
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if write_refill_per_s <= 0 or read_refill_per_s <= 0:
            raise ValueError("refill rates must be positive")
        self._refill = {True: write_refill_per_s, False: read_refill_per_s}
        self._reserve = max(0.0, reserve)
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[tuple[str, bool], _Bucket] = {}
        self.stats = PacerStats()

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
        async with bucket.lock:  # FIFO: requests are admitted in arrival order
            while True:
                now = self._clock()
                if now < bucket.blocked_until:
                    await self._sleep(max(_MIN_SLEEP_S, bucket.blocked_until - now))
                    continue
                if bucket.tokens is None:
                    if bucket.in_flight == 0:
                        break  # the probe
                    await bucket.answered.wait()
                    continue
                available = bucket.available(now)
                # The reserve never exceeds a tenth of the burst, so small budgets are still usable.
                need = 1.0 + min(self._reserve, 0.1 * bucket.cap)
                if available >= need - _EPSILON:
                    bucket.set_tokens(max(0.0, available - 1.0), now)
                    break
                await self._sleep(max(_MIN_SLEEP_S, (need - available) / bucket.refill_per_s))
            bucket.in_flight += 1
            sent_at = self._clock()
        waited = sent_at - started
        self.stats.admitted += 1
        if waited >= _MIN_SLEEP_S:
            self.stats.waited += 1
            self.stats.wait_seconds += waited
        return Ticket(key, sent_at)

    def observe(self, ticket: Ticket, status: int, headers: Any) -> None:  # noqa: ANN401 - any mapping
        """Correct the mirror from the answer to ``ticket``'s request (status and response headers)."""
        if ticket.done:
            return
        ticket.done = True
        bucket = self._bucket(ticket.key)
        bucket.in_flight = max(0, bucket.in_flight - 1)
        now = self._clock()
        remaining = _remaining(headers, write=ticket.key[1])
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


def _remaining(headers: Any, *, write: bool) -> float | None:  # noqa: ANN401
    raw = header(headers, "x-ms-ratelimit-remaining-subscription-" + ("writes" if write else "reads"))
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
