"""ROTATION_MAX_CONCURRENCY: how many clusters a process works on at once; a waiting job gives its place up.

A job spends most of its life waiting for its operation (the ``Retry-After`` between polls, minutes in all)
or between retries. Holding a place through those waits made a process that received more clusters than
places run them in waves, one operation's length apart: a queue message carries several clusters
(`rotation.store.jobs.JobBatch`), so one instance can hold a few thousand, and the last wave could outlast
the function's timeout (host.json: 10 minutes). Here a job holds a place while it sends requests and does
its own work, and gives it up while it sleeps (`sleep`, the sleep the process's `Rotator` is built with, or
any wait in `away`); it takes one again before it goes on, ahead of jobs that have not started (its poll
and retry budgets are running), in arrival order among those. The limit still bounds the requests in
flight and the work done at once; a waiting job costs a coroutine.

Never give a place up while holding a lock others queue for with theirs: the lock's holder could wake to find
every place taken by jobs waiting for its lock. So a job waiting for a write slot of the subscription's ARM
budget (under the pacer's per-subscription lock, `rotation.azure.pacing`) keeps its place.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class _Place:
    """One job's place: the task it belongs to, and whether it holds it now (not while it sleeps)."""

    def __init__(self, slots: JobSlots, task: asyncio.Task[Any] | None) -> None:
        self.slots = slots
        self.task = task
        self.held = False

    async def take(self, *, returning: bool) -> None:
        await self.slots._acquire(returning=returning)  # noqa: SLF001 - the place belongs to its slots
        self.held = True

    def give_up(self) -> None:
        if self.held:
            self.held = False
            self.slots._release()  # noqa: SLF001


_PLACE: contextvars.ContextVar[_Place | None] = contextvars.ContextVar("rotation_job_place", default=None)


class JobSlots:
    """Places for ``size`` jobs at work at once in this process (ROTATION_MAX_CONCURRENCY).

    A semaphore with two queues: a job coming back from a wait gets the next free place before a job that
    has not started yet.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("at least one place")
        self.size = size
        self._free = size
        self._returning: collections.deque[asyncio.Future[None]] = collections.deque()
        self._starting: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def free(self) -> int:
        """Places nobody holds now."""
        return self._free

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Hold a place for the job running in this block (given up while it sleeps through `sleep`)."""
        place = _Place(self, asyncio.current_task())
        await place.take(returning=False)
        token = _PLACE.set(place)
        try:
            yield
        finally:
            place.give_up()
            _PLACE.reset(token)

    async def _acquire(self, *, returning: bool) -> None:
        queue = self._returning if returning else self._starting
        ahead = self._returning if returning else (self._returning or self._starting)
        if self._free > 0 and not ahead:
            self._free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release()  # handed a place just as it was cancelled: pass it on
            else:
                queue.remove(granted)
            raise

    def _release(self) -> None:
        """Hand the place to the next waiter (coming back first), or keep it free."""
        for queue in (self._returning, self._starting):
            while queue:
                granted = queue.popleft()
                if not granted.done():
                    granted.set_result(None)
                    return
        self._free += 1


def _current() -> _Place | None:
    """The place the running task holds now, if any (a task started inside a job has none of its own)."""
    place = _PLACE.get()
    if place is None or not place.held or place.task is not asyncio.current_task():
        return None
    return place


@contextlib.asynccontextmanager
async def away() -> AsyncIterator[None]:
    """Give the current job's place up for the block's wait; take one again (ahead of new jobs) after it.

    Outside a job (`JobSlots.hold`) it only runs the block. A block that raises (cancelled, say) ends with
    no place held, and `hold` gives none back.
    """
    place = _current()
    if place is None:
        yield
        return
    place.give_up()
    yield
    await place.take(returning=True)


async def sleep(seconds: float) -> None:
    """`asyncio.sleep`, away from the current job's place (`away`)."""
    async with away():
        await asyncio.sleep(seconds)
