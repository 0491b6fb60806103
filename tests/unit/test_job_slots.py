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
