"""Virtual time for the pacer's tests: a clock that jumps to the next wake-up, and ARM's bucket on it."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rotation.azure.pacing import ArmPacer

SUB = "11111111-1111-1111-1111-111111111111"
WRITES = "x-ms-ratelimit-remaining-subscription-writes"


class VirtualTime:
    """Virtual time: `sleep` parks a coroutine; `run` advances the clock to the next wake-up when idle."""

    def __init__(self) -> None:
        self.now = 0.0
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        """The virtual monotonic time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Park the caller until the clock reaches its wake-up."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (self.now + max(0.0, seconds), next(self._seq), future))
        await future

    async def run(self, main: Awaitable[Any]) -> Any:
        """Run ``main`` to its end, moving the clock to the next wake-up whenever every coroutine waits."""
        task = asyncio.ensure_future(main)
        while not task.done():
            for _ in range(20):  # let every ready coroutine run before time moves
                await asyncio.sleep(0)
            if task.done():
                break
            if not self._waiters:
                continue
            at, _, future = heapq.heappop(self._waiters)
            self.now = max(self.now, at)
            future.set_result(None)
        return task.result()


class ServerBucket:
    """ARM's token bucket as the simulator keeps it, on the fake clock."""

    def __init__(self, time: VirtualTime, burst: int, refill: float) -> None:
        self.time, self.burst, self.refill = time, burst, refill
        self.tokens, self.stamp = float(burst), 0.0

    def take(self) -> tuple[int, dict[str, str]]:
        """One write: 202 with the remaining-writes header, or 429 with the wait ARM names."""
        now = self.time.now
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.refill)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 202, {WRITES: str(int(self.tokens))}
        wait = max(1, math.ceil((1.0 - self.tokens) / self.refill))
        return 429, {WRITES: "0", "Retry-After": str(wait)}


async def write_until_accepted(
    time: VirtualTime, pacer: ArmPacer, server: ServerBucket, statuses: list[int], latency: float
) -> None:
    """One write on ``SUB`` through ``pacer`` to ``server``, sent again after each 429; each status kept."""
    while True:
        ticket = await pacer.acquire(SUB, write=True)
        await time.sleep(latency)
        status, headers = server.take()
        statuses.append(status)
        await time.sleep(latency)
        pacer.observe(ticket, status, headers)
        if status != 429:
            return
