"""ROTATION_MAX_CONCURRENCY: how many clusters a process works on at once; a waiting job gives its place up.

A job spends most of its life waiting for its operation (the ``Retry-After`` between polls, minutes in all)
or between retries. Holding a place through those waits made a process that received more clusters than
places run them in waves, one operation's length apart: a queue message carries several clusters
(`rotation.store.jobs.JobBatch`), so one instance can hold a few thousand, and the last wave could outlast
the function's timeout (host.json: 10 minutes). Here a job holds a place while it sends requests and does
its own work, and gives it up while it sleeps (`sleep`, the sleep the process's `Rotator` is built with); it
takes one again before it goes on, in arrival order. The limit still bounds the requests in flight and the
work done at once; a waiting job costs a coroutine.

Never give a place up while holding a lock others queue for with theirs: the lock's holder could wake to find
every place taken by jobs waiting for its lock. So a job waiting for a write slot of the subscription's ARM
budget (under the pacer's per-subscription lock, `rotation.azure.pacing`) keeps its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class _Place:
    """One job's place: whether it holds it now (it gives it up while it sleeps)."""

    def __init__(self, slots: JobSlots) -> None:
        self.slots = slots
        self.held = False

    async def take(self) -> None:
        await self.slots._semaphore.acquire()  # noqa: SLF001 - the place belongs to its slots
        self.held = True

    def give_up(self) -> None:
        if self.held:
            self.held = False
            self.slots._semaphore.release()  # noqa: SLF001


_PLACE: contextvars.ContextVar[_Place | None] = contextvars.ContextVar("rotation_job_place", default=None)


class JobSlots:
    """Places for ``size`` jobs at work at once in this process (ROTATION_MAX_CONCURRENCY)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("at least one place")
        self.size = size
        self._semaphore = asyncio.Semaphore(size)

    @property
    def free(self) -> int:
        """Places nobody holds now."""
        return self._semaphore._value  # noqa: SLF001 - asyncio.Semaphore keeps its count there

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Hold a place for the job running in this block (given up while it sleeps through `sleep`)."""
        place = _Place(self)
        await place.take()
        token = _PLACE.set(place)
        try:
            yield
        finally:
            _PLACE.reset(token)
            place.give_up()


async def sleep(seconds: float) -> None:
    """`asyncio.sleep`, giving the current job's place up meanwhile and taking one again after it.

    Outside a job (`JobSlots.hold`), or in a job that holds no place now, only sleeps.
    """
    place = _PLACE.get()
    if place is None or not place.held:
        await asyncio.sleep(seconds)
        return
    place.give_up()
    await asyncio.sleep(seconds)  # cancelled here: the job ends without a place (its hand-off needs none)
    await place.take()  # cancelled here: no place is held, and `hold` gives none back
