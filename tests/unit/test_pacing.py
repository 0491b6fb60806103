"""The per-subscription ARM pacer (rotation.azure.pacing) on a fake clock: probe, burst, spacing, Retry-After."""

from __future__ import annotations

import asyncio

import pytest

from rotation.azure.pacing import ArmPacer, Ticket, is_write, subscription_of
from tests.helpers.virtual_time import SUB, WRITES, ServerBucket, VirtualTime, write_until_accepted


def pacer_on(time: VirtualTime, refill: float = 10.0, reserve: float = 0.0) -> ArmPacer:
    """An `ArmPacer` on the fake time with the given write refill rate and reserve."""
    return ArmPacer(write_refill_per_s=refill, reserve=reserve, clock=time.clock, sleep=time.sleep)


def test_subscription_and_kind_of_a_request() -> None:
    """A request's subscription is read from its path, case-folded, and PUT and PATCH count as writes."""
    assert subscription_of(f"/subscriptions/{SUB.upper()}/resourceGroups/rg/x") == SUB
    assert subscription_of("https://management.azure.com/providers/x") is None
    assert is_write("put")
    assert is_write("PATCH")
    assert not is_write("GET")


def test_refill_rates_must_be_positive() -> None:
    """A refill rate of zero is refused."""
    with pytest.raises(ValueError, match="positive"):
        ArmPacer(write_refill_per_s=0)


async def test_first_request_probes_alone_then_the_budget_admits_a_burst() -> None:
    """The first write goes alone; its answer's remaining budget lets the waiting writes go at once."""
    time = VirtualTime()
    pacer = pacer_on(time)

    async def main() -> list[float]:
        probe = await pacer.acquire(SUB, write=True)
        waiting = [asyncio.ensure_future(pacer.acquire(SUB, write=True)) for _ in range(3)]
        await asyncio.sleep(0)
        assert not any(t.done() for t in waiting)  # nobody goes before the probe's answer
        await time.sleep(0.05)
        pacer.observe(probe, 202, {WRITES: "10"})
        tickets = await asyncio.gather(*waiting)
        return [t.sent_at for t in tickets]

    sent = await time.run(main())
    assert sent == [0.05, 0.05, 0.05]  # budget 10: all three at once, on the answer


async def test_an_empty_budget_spaces_requests_at_the_refill_rate() -> None:
    """Once the budget is spent, writes are spaced at the refill rate."""
    time = VirtualTime()
    pacer = pacer_on(time, refill=10.0)

    async def main() -> list[Ticket]:
        probe = await pacer.acquire(SUB, write=True)
        pacer.observe(probe, 202, {WRITES: "2"})
        return list(await asyncio.gather(*(pacer.acquire(SUB, write=True) for _ in range(5))))

    tickets = await time.run(main())
    sent = [round(t.sent_at, 6) for t in tickets]
    assert sent == [0.0, 0.0, 0.1, 0.2, 0.3]
    assert pacer.stats.waited == 3


async def test_a_reserve_stays_unspent_and_the_pace_is_kept() -> None:
    """The reserve is never spent: beyond the budget less the reserve, writes wait for the refill."""
    time = VirtualTime()
    pacer = pacer_on(time, refill=10.0, reserve=2.0)

    async def main() -> list[Ticket]:
        probe = await pacer.acquire(SUB, write=True)
        pacer.observe(probe, 202, {WRITES: "49"})  # a burst of 50: the reserve is 2 tokens
        return list(await asyncio.gather(*(pacer.acquire(SUB, write=True) for _ in range(50))))

    tickets = await time.run(main())
    sent = [round(t.sent_at, 6) for t in tickets]
    assert sent[:47] == [0.0] * 47
    assert sent[47:] == [0.1, 0.2, 0.3]


async def test_no_request_is_sent_inside_a_retry_after_window() -> None:
    """After a 429 with Retry-After no write goes until the window ends; reads have their own budget."""
    time = VirtualTime()
    pacer = pacer_on(time)

    async def main() -> tuple[list[Ticket], Ticket]:
        first = await pacer.acquire(SUB, write=True)
        pacer.observe(first, 202, {WRITES: "5"})
        throttled = await pacer.acquire(SUB, write=True)
        await time.sleep(0.2)
        pacer.observe(throttled, 429, {WRITES: "0", "Retry-After": "3"})
        reads = await pacer.acquire(SUB, write=False)  # the read budget is another bucket
        later = list(await asyncio.gather(*(pacer.acquire(SUB, write=True) for _ in range(3))))
        return later, reads

    later, reads = await time.run(main())
    assert reads.sent_at == pytest.approx(0.2)
    assert all(t.sent_at >= 3.2 for t in later)
    assert pacer.blocked_until(SUB, write=True) == pytest.approx(3.2)
    assert pacer.stats.throttled == 1


async def test_a_lower_budget_from_the_server_wins_over_the_mirror() -> None:
    """A lower remaining budget from the server replaces the pacer's own count."""
    time = VirtualTime()
    pacer = pacer_on(time, refill=10.0)

    async def main() -> None:
        probe = await pacer.acquire(SUB, write=True)
        pacer.observe(probe, 202, {WRITES: "50"})
        other = await pacer.acquire(SUB, write=True)
        pacer.observe(other, 202, {WRITES: "0"})  # someone else spent the budget

    await time.run(main())
    budget = pacer.budget(SUB, write=True)
    assert budget is not None
    assert budget <= 1.0  # the header floors the budget: at most one token may be left


async def test_a_request_without_an_answer_lets_the_next_one_probe() -> None:
    """A probe released without an answer lets the next request go as the new probe."""
    time = VirtualTime()
    pacer = pacer_on(time)

    async def main() -> float:
        probe = await pacer.acquire(SUB, write=True)
        nxt = asyncio.ensure_future(pacer.acquire(SUB, write=True))
        await time.sleep(1.0)
        pacer.release(probe)
        return (await nxt).sent_at

    assert await time.run(main()) == 1.0


async def test_many_jobs_against_arm_s_bucket_get_no_429_and_keep_the_refill_pace() -> None:
    """100 writes, burst 20, refill 10/s, 30 ms each way: no 429, done close to the bound (8 s)."""
    time = VirtualTime()
    pacer = pacer_on(time, refill=10.0, reserve=2.0)
    server = ServerBucket(time, burst=20, refill=10.0)
    statuses: list[int] = []
    latency = 0.03

    async def main() -> float:
        await asyncio.gather(
            *(write_until_accepted(time, pacer, server, statuses, latency) for _ in range(100))
        )
        return time.now

    makespan = await time.run(main())
    assert statuses.count(429) == 0
    assert len(statuses) == 100
    bound = (100 - 20) / 10.0
    assert bound <= makespan <= bound * 1.05 + 2 * latency


async def test_pacing_without_a_pacer_budget_header_still_admits() -> None:
    """Answers without the header (e.g. a proxy's error page) leave the budget unknown, never stuck."""
    time = VirtualTime()
    pacer = pacer_on(time)

    async def main() -> int:
        for _ in range(3):
            ticket = await pacer.acquire(SUB, write=False)
            pacer.observe(ticket, 500, {})
        return pacer.stats.admitted

    assert await time.run(main()) == 3
