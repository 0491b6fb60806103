"""The worker splits a message of many clusters (rotation.service.batch); poison shows and returns it whole.

Each cluster runs as its own job, a failed one is queued again alone, nothing is lost.
"""

from __future__ import annotations

import json
import logging

import pytest

from rotation.ids import parse_cluster_id
from rotation.store.jobs import Job, JobBatch, parse_message
from tests.helpers.batches import cid, event_jobs
from tests.helpers.world import puts


async def test_a_poisoned_batch_is_shown_and_moved_back_whole(stack) -> None:
    """`poison list` decodes a batch (its clusters), `poison retry` sends it back as it was."""
    from rotation.cli.commands import format_poisoned
    from rotation.store.clients import queue_client
    from rotation.store.poison import PoisonQueue

    batch = JobBatch.of(event_jobs(3))
    poison_queue = queue_client(stack.service.queue.service_client, f"{stack.queue_name}-poison")
    jobs_queue = queue_client(stack.service.queue.service_client, stack.queue_name)
    poison = PoisonQueue(stack.service.queue.service_client, name=stack.queue_name)
    try:
        await poison_queue.create_queue()
        await poison_queue.send_message(batch.to_json())
        [item] = await poison.peek()
        assert item.batch == batch
        assert item.job is None
        doc = item.to_dict()
        assert doc["cluster_ids"] == list(batch.cluster_ids)
        assert f"{cid(0)} (+2 more)  trigger=event" in format_poisoned(doc)
        moved, left = await poison.retry()
        assert ([m.message_id for m in moved], left) == ([item.message_id], [])
        [back] = [m async for m in jobs_queue.receive_messages(max_messages=32)]
        assert parse_message(back.content) == batch
    finally:
        await poison.close()
        await poison_queue.close()
        await jobs_queue.close()


# -- the worker splits a batch ------------------------------------------------------------------------


async def _raw_queued(stack) -> list[Job | JobBatch]:
    """Every message in the stack's job queue, parsed (a peek: nothing changes)."""
    from azure.core.exceptions import ResourceNotFoundError

    from rotation.store.clients import queue_client

    async with queue_client(stack.service.queue.service_client, stack.queue_name) as client:
        try:
            messages = await client.peek_messages(max_messages=32)
        except ResourceNotFoundError:
            return []
    return [parse_message(m.content) for m in messages]


async def _three_behind(stack) -> tuple[list[str], str]:
    """Three watched clusters on one key, and the key's new version (no event sent)."""
    key, v1 = stack.new_key()
    clusters = [stack.add_cluster(key, v1) for _ in range(3)]
    await stack.register(*clusters)
    stack.first_version = (key, v1)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False)
    return clusters, stack.sim.key_url(stack.vault, key, v2)


def _batch(clusters: list[str], target: str) -> JobBatch:
    return JobBatch.of(
        [Job.new(c, trigger="event", target_key_url=target, event_id="ev-b") for c in clusters]
    )


async def test_a_batch_rotates_each_of_its_clusters_once(stack) -> None:
    """One message, three clusters: three rotations (one PUT each), each recorded, nothing queued again."""
    clusters, target = await _three_behind(stack)
    assert await stack.service.worker.handle_job(_batch(clusters, target).to_json(), dequeue_count=1) is None
    assert [stack.key_of(c) for c in clusters] == [target] * 3
    assert sorted(r.path.lower() for r in stack.puts()) == sorted(c.lower() for c in clusters)
    for c in clusters:
        [entry, *_] = await stack.service.registry.history.recent(parse_cluster_id(c), limit=1)
        assert (entry.outcome, entry.event_id) == ("rotated", "ev-b")
    assert await _raw_queued(stack) == []


async def test_a_failing_cluster_is_queued_alone_and_the_others_are_not_redone(stack, caplog) -> None:
    """A cluster whose PUT keeps failing goes back to the queue alone; the other two are not written again."""
    from azsim.faults import Fault

    clusters, target = await _three_behind(stack)
    name = clusters[1].rsplit("/", 1)[-1]
    attempts = stack.service.settings.retry.max_attempts  # every attempt of the batch's run fails, no more
    stack.sim.inject(method="PUT", service="arm", path_contains=name, faults=[Fault.status(503)] * attempts)
    with caplog.at_level(logging.WARNING, logger="rotation.service.batch"):
        assert (
            await stack.service.worker.handle_job(_batch(clusters, target).to_json(), dequeue_count=1) is None
        )
    assert [stack.key_of(c) == target for c in clusters] == [True, False, True]
    [queued] = await _raw_queued(stack)
    assert isinstance(queued, Job)
    assert (queued.cluster_id, queued.target_key_url, queued.event_id) == (clusters[1], target, "ev-b")
    [requeued] = [r for r in caplog.records if r.getMessage() == "rotation.job_requeued"]
    assert requeued.cluster_id == clusters[1]
    puts_before = len(stack.puts())
    await stack.drain()  # the queue's own retry of that one cluster
    assert [stack.key_of(c) for c in clusters] == [target] * 3
    assert len(stack.puts()) == puts_before + 1  # only the failed cluster was written again


async def test_a_batch_whose_failure_cannot_be_queued_raises_for_redelivery(stack) -> None:
    """Storage down when a failed cluster must be queued again: the invocation raises, the message returns."""
    from azsim.faults import Fault
    from rotation.errors import ServiceError

    clusters, target = await _three_behind(stack)
    name = clusters[0].rsplit("/", 1)[-1]
    stack.sim.inject(method="PUT", service="arm", path_contains=name, faults=[Fault.status(503)] * 10)

    async def storage_down(job: object, **_: object) -> None:
        raise ServiceError("storage (no response): send job", service="storage")

    stack.service.queue.send = storage_down  # type: ignore[method-assign]
    with pytest.raises(ServiceError, match="send job"):
        await stack.service.worker.handle_job(_batch(clusters, target).to_json(), dequeue_count=1)
    assert [stack.key_of(c) == target for c in clusters] == [False, True, True]


async def test_a_batch_acts_only_on_its_watched_clusters(stack) -> None:
    """Rule 11 per cluster: an unregistered cluster in a batch is refused; the others are rotated."""
    clusters, target = await _three_behind(stack)
    stranger = stack.add_cluster(*stack.first_version)  # on the same key, never registered
    before = stack.key_of(stranger)
    await stack.service.worker.handle_job(_batch([*clusters, stranger], target).to_json(), dequeue_count=1)
    assert [stack.key_of(c) for c in clusters] == [target] * 3
    assert stack.key_of(stranger) == before
    assert await _raw_queued(stack) == []


async def test_a_large_fan_out_is_sent_as_batches_and_every_cluster_is_reached(stack, monkeypatch) -> None:
    """Past SINGLE_JOB_FANOUT clusters an event is queued as batches; draining them rotates every cluster."""
    from rotation.service import fanout

    monkeypatch.setattr(fanout, "SINGLE_JOB_FANOUT", 2)
    key, v1 = stack.new_key()
    clusters = [stack.add_cluster(key, v1) for _ in range(5)]
    await stack.register(*clusters)
    stack.sim.create_key_version(stack.vault, key, emit_event=True)
    report = await stack.service.fanout.handle_event(stack.service.fanout.parse(stack.sim.events[-1]))
    assert report.outcome == "queued"
    assert len(report.jobs) == 5
    messages = await _raw_queued(stack)
    assert sorted(len(m.cluster_ids) if isinstance(m, JobBatch) else 1 for m in messages) == [1, 4]
    await stack.drain()
    target = report.jobs[0].target_key_url
    assert [stack.key_of(c) for c in clusters] == [target] * 5


async def test_a_hostile_batch_reaching_the_worker_is_acknowledged_and_nothing_is_sent(stack, caplog) -> None:
    """A batch naming a cluster twice is rejected whole (logged, acknowledged): no ARM request at all."""
    clusters, target = await _three_behind(stack)
    body = json.loads(_batch(clusters, target).to_json())
    body["cluster_ids"].append(clusters[0].upper())
    stack.sim.clear_requests()
    with caplog.at_level(logging.ERROR, logger="rotation.service.worker"):
        assert await stack.service.worker.handle_job(json.dumps(body), dequeue_count=1) is None
    [rejected] = [r for r in caplog.records if r.getMessage() == "rotation.job_rejected"]
    assert "repeats a cluster" in rejected.reason
    assert [r for r in stack.sim.requests if r.service == "arm"] == []
    assert await _raw_queued(stack) == []


async def test_a_claim_that_cannot_be_released_lapses_and_the_rotation_stands(stack, caplog) -> None:
    """A release that fails after the outcome is recorded is logged; the job stands and is not run again."""
    from rotation.errors import ServiceError

    clusters, target = await _three_behind(stack)

    async def release_fails(claim: object) -> None:
        raise ServiceError("storage (no response): release", service="storage")

    stack.service.registry.claims.release = release_fails  # type: ignore[method-assign]
    job = Job.new(clusters[0], trigger="event", target_key_url=target, event_id="ev-r")
    with caplog.at_level(logging.WARNING, logger="rotation.service.worker"):
        result = await stack.service.worker.handle_job(job.to_json(), dequeue_count=1)
    assert result is not None
    assert result.outcome == "rotated"
    assert stack.key_of(clusters[0]) == target
    [failed] = [r for r in caplog.records if r.getMessage() == "rotation.claim_release_failed"]
    assert failed.cluster_id == clusters[0]
    assert await _raw_queued(stack) == []


async def test_clusters_waiting_for_their_operations_do_not_hold_back_the_others(stack) -> None:
    """Twelve clusters on four places: every PUT goes before the first operation ends, not in three waves.

    A job gives its place up while it waits for its operation (`rotation.service.slots`); holding it made a
    process run the clusters it received in waves, one operation's length apart.
    """
    key, v1 = stack.new_key()
    clusters = [stack.add_cluster(key, v1) for _ in range(12)]
    await stack.register(*clusters)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False)
    target = stack.sim.key_url(stack.vault, key, v2)
    # Operations of 3 s: three waves would spread the PUTs over at least 6 s; the room up to 3 s is for a
    # loaded machine's twelve claims, GETs and PUTs on four places.
    stack.sim.configure(operation_seconds=3.0, poll_interval=0.2)
    assert stack.service.settings.max_concurrency == 4
    stack.sim.clear_requests()
    assert await stack.service.worker.handle_job(_batch(clusters, target).to_json(), dequeue_count=1) is None
    assert [stack.key_of(c) for c in clusters] == [target] * 12
    sent = sorted(r.time for r in puts(stack.sim, accepted=True))
    assert len(sent) == 12
    assert sent[-1] - sent[0] < 3.0  # all within the first operation's length


async def test_jobs_queued_for_write_slots_on_few_places_all_finish(stack) -> None:
    """More clusters of one subscription than places, writes spaced by ARM's budget: every one finishes.

    A job waiting for its write slot waits under the subscription's lock in the pacer; had it given its
    place up there, the jobs queued on that lock could take every place and it could never go on.
    """
    import asyncio

    key, v1 = stack.new_key()
    clusters = [stack.add_cluster(key, v1) for _ in range(6)]
    await stack.register(*clusters)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False)
    target = stack.sim.key_url(stack.vault, key, v2)
    stack.sim.configure(operation_seconds=0.2, poll_interval=0.1, write_burst=2, write_refill_per_s=10.0)
    service = stack.service_with(max_concurrency=2, arm_write_burst=2, arm_write_refill_per_s=10.0)
    async with service:
        body = _batch(clusters, target).to_json()
        assert await asyncio.wait_for(service.worker.handle_job(body, dequeue_count=1), timeout=30) is None
    assert [stack.key_of(c) for c in clusters] == [target] * 6
