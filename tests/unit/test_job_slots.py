"""ROTATION_MAX_CONCURRENCY's places: held while a job works, given up while it sleeps."""

from __future__ import annotations

import asyncio

import pytest

from rotation.service import slots
from rotation.service.slots import JobSlots


async def test_a_sleeping_job_lets_another_work_in_its_place() -> None:
    """With one place, a second job runs to its end while the first one sleeps; the first then goes on."""
    places = JobSlots(1)
    order: list[str] = []

    async def first() -> None:
        async with places.hold():
            order.append("first works")
            await slots.sleep(0.05)
            order.append("first wakes")

    async def second() -> None:
        await asyncio.sleep(0.01)
        async with places.hold():
            order.append("second works")

    await asyncio.gather(first(), second())
    assert order == ["first works", "second works", "first wakes"]
    assert places.free == 1


async def test_work_never_exceeds_the_places() -> None:
    """However many jobs there are, no more than the limit do work at once (sleeping ones aside)."""
    places = JobSlots(3)
    working = 0
    most = 0

    async def job() -> None:
        nonlocal working, most
        async with places.hold():
            for _ in range(3):
                working += 1
                most = max(most, working)
                await asyncio.sleep(0.002)  # work that does not give the place up (a request)
                working -= 1
                await slots.sleep(0.005)  # a wait that does

    await asyncio.gather(*(job() for _ in range(20)))
    assert most == 3
    assert places.free == 3


async def test_a_job_takes_a_place_again_before_it_goes_on() -> None:
    """Woken while every place is taken, a job waits for one before it goes on."""
    places = JobSlots(1)
    woke_at_free: list[int] = []
    release = asyncio.Event()

    async def sleeper() -> None:
        async with places.hold():
            await slots.sleep(0.01)
            woke_at_free.append(places.free)

    async def holder() -> None:
        await asyncio.sleep(0.005)
        async with places.hold():
            await release.wait()  # holds its place past the sleeper's wake-up

    tasks = [asyncio.create_task(sleeper()), asyncio.create_task(holder())]
    await asyncio.sleep(0.05)
    assert woke_at_free == []  # still waiting for the holder's place
    release.set()
    await asyncio.gather(*tasks)
    assert woke_at_free == [0]
    assert places.free == 1


@pytest.mark.parametrize("cancel_after", [0.005, 0.03])
async def test_cancelled_while_sleeping_or_waiting_for_a_place_gives_back_only_what_it_holds(
    cancel_after: float,
) -> None:
    """Cancelled asleep (0.005 s) or waiting to take a place again (0.03 s), no place is lost or made up."""
    places = JobSlots(1)
    release = asyncio.Event()

    async def sleeper() -> None:
        async with places.hold():
            await slots.sleep(0.01)

    async def holder() -> None:
        await asyncio.sleep(0.001)
        async with places.hold():
            await release.wait()

    sleeping = asyncio.create_task(sleeper())
    holding = asyncio.create_task(holder())
    await asyncio.sleep(cancel_after)
    sleeping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeping
    release.set()
    await holding
    assert places.free == 1
    async with places.hold():  # the one place is still there, and only one
        assert places.free == 0


async def test_outside_a_job_sleep_only_sleeps() -> None:
    """A sleep outside any job (the CLI, a test) touches no place."""
    places = JobSlots(2)
    await slots.sleep(0.001)
    assert places.free == 2
    with pytest.raises(ValueError, match="at least one place"):
        JobSlots(0)


async def test_a_job_coming_back_from_a_wait_goes_before_jobs_not_yet_started() -> None:
    """Its poll and retry budgets are running: back from its sleep, a job takes the next free place first."""
    places = JobSlots(1)
    order: list[str] = []
    release = asyncio.Event()

    async def returning() -> None:
        async with places.hold():
            await slots.sleep(0.02)
            order.append("returning goes on")

    async def holder() -> None:
        await asyncio.sleep(0.005)
        async with places.hold():
            await release.wait()

    async def newcomer() -> None:
        await asyncio.sleep(0.01)  # queued before the returning job wakes
        async with places.hold():
            order.append("newcomer starts")

    tasks = [asyncio.create_task(f()) for f in (returning, holder, newcomer)]
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["returning goes on", "newcomer starts"]
    assert places.free == 1


async def test_a_task_started_inside_a_job_does_not_give_the_jobs_place_up() -> None:
    """A place belongs to the task that took it: a sleep in a task the job started leaves it held."""
    places = JobSlots(1)
    async with places.hold():
        await asyncio.create_task(slots.sleep(0.01))
        assert places.free == 0
    assert places.free == 1


async def test_the_serve_drains_sleep_gives_the_place_up_too() -> None:
    """`rotation serve` builds its rotator on the drain's sleep: a job waiting there lets another one work."""
    from rotation.serve.queue_worker import Drain

    places = JobSlots(1)
    drain = Drain()
    worked: list[str] = []

    async def waiting() -> None:
        async with places.hold():
            await drain.sleep(0.05)

    async def other() -> None:
        await asyncio.sleep(0.01)
        async with places.hold():
            worked.append("other")

    tasks = [asyncio.create_task(waiting()), asyncio.create_task(other())]
    await asyncio.sleep(0.03)
    assert worked == ["other"]  # while the first job still sleeps (until 0.05 s), in its place
    await asyncio.gather(*tasks)
    assert places.free == 1
