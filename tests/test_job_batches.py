"""Messages that carry many clusters (rotation.store.jobs.JobBatch): built, read back, refused when hostile."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from rotation.ids import parse_cluster_id
from rotation.store.jobs import MAX_BATCH, Job, JobBatch, JobRejected, batches, parse_message

KEY = "https://kv1.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef"


def cid(i: int, sub: str = "11111111-1111-1111-1111-111111111111") -> str:
    return f"/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.DocumentDB/mongoClusters/c-{i:04d}"


def event_jobs(n: int) -> list[Job]:
    return [Job.new(cid(i), trigger="event", target_key_url=KEY, event_id="ev-1") for i in range(n)]


def batch_body(**fields: object) -> str:
    base: dict[str, object] = {
        "cluster_ids": [cid(1), cid(2)],
        "target_key_url": KEY,
        "trigger": "event",
        "event_id": "ev-1",
        "enqueued_at": "2026-11-30T03:00:00+00:00",
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


def test_a_batch_round_trips_and_splits_into_the_jobs_it_carries() -> None:
    """What goes in comes out: each cluster becomes the job a single message would have carried."""
    jobs = event_jobs(3)
    batch = JobBatch.of(jobs)
    parsed = parse_message(batch.to_json())
    assert parsed == batch
    assert isinstance(parsed, JobBatch)
    assert [(j.cluster_id, j.target_key_url, j.trigger, j.event_id) for j in parsed.jobs()] == [
        (j.cluster_id, j.target_key_url, j.trigger, j.event_id) for j in jobs
    ]


def test_batches_keep_order_and_a_lone_cluster_stays_a_single_job() -> None:
    """250 jobs in messages of 100: 100, 100, 50; one job alone is sent in today's single-job format."""
    messages = batches(event_jobs(250), 100)
    assert [len(m.cluster_ids) for m in messages if isinstance(m, JobBatch)] == [100, 100, 50]
    flat = [j.cluster_id for m in messages if isinstance(m, JobBatch) for j in m.jobs()]
    assert flat == [cid(i) for i in range(250)]
    [single] = batches(event_jobs(1), 100)
    assert isinstance(single, Job)
    assert isinstance(parse_message(single.to_json()), Job)
    five = event_jobs(5)
    assert batches(five, 1000) == [JobBatch.of(five)]  # at most MAX_BATCH per message, whatever is asked


def test_a_full_batch_of_the_longest_ids_fits_a_queue_message() -> None:
    """100 clusters with 40-character names and 90-character groups: under 64 KB once base64-encoded."""
    sub = "11111111-1111-1111-1111-111111111111"
    rg = "r" * 90
    ids = [
        f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DocumentDB/mongoClusters/"
        for _ in range(MAX_BATCH)
    ]
    jobs = [
        Job.new(f"{base}{i:04d}{'c' * 36}", trigger="event", target_key_url=KEY) for i, base in enumerate(ids)
    ]
    body = JobBatch.of(jobs).to_json()
    assert len(base64.b64encode(body.encode())) < 64 * 1024
    assert parse_message(body) == JobBatch.of(jobs)


def test_a_batch_cannot_mix_targets_or_follow_an_operation() -> None:
    """The sender never builds a batch of different events or of check jobs."""
    jobs = event_jobs(2)
    other = Job.new(cid(9), trigger="event", target_key_url=KEY, event_id="ev-2")
    with pytest.raises(ValueError, match="one target"):
        JobBatch.of([*jobs, other])
    check = Job.new(cid(9), trigger="check", target_key_url=KEY, event_id="ev-1", operation_url="https://x")
    with pytest.raises(ValueError, match="without operation"):
        JobBatch.of([jobs[0], check])
    with pytest.raises(ValueError, match="1 to"):
        JobBatch.of(event_jobs(MAX_BATCH + 1))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (batch_body(cluster_ids=[]), "list of 1 to 100 ids, got 0 entries"),
        (batch_body(cluster_ids="x"), "list of 1 to 100 ids, got a JSON string"),
        (batch_body(cluster_ids=[cid(i) for i in range(MAX_BATCH + 1)]), "got 101 entries"),
        (batch_body(cluster_ids=[cid(1), 7]), "cluster_ids[1] must be a non-empty string"),
        (batch_body(cluster_ids=[cid(1), "/subscriptions/x"]), "job cluster_ids[1]:"),
        (batch_body(cluster_ids=[cid(1), cid(1).upper()]), "cluster_ids[1] repeats a cluster"),
        (batch_body(cluster_id=cid(3)), "both cluster_id and cluster_ids"),
        (
            batch_body(trigger="check", operation_url="https://management.azure.com/x"),
            "cannot be a 'check' job",
        ),
        (batch_body(backoffs=2), "following an operation"),
        (batch_body(target_key_url="https://evil.example.com/keys/cmk/1"), "job target_key_url:"),
        (batch_body(enqueued_at=...), "no enqueued_at"),
    ],
)
def test_a_hostile_batch_is_refused_with_a_one_line_reason(body: str, reason: str) -> None:
    """Each way a batch can be malformed is named, as for a single job; nothing is acted on."""
    with pytest.raises(JobRejected, match=None) as caught:
        parse_message(body)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_batch_is_not_read_as_a_single_job() -> None:
    """Callers that take only single jobs (`Job.from_json`) refuse a batch, saying so."""
    with pytest.raises(JobRejected, match="carries 2 clusters, expected one"):
        Job.from_json(batch_body())


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


def test_the_size_of_an_event_s_messages_follows_its_fan_out() -> None:
    """One cluster per message up to 32, then 4 or more, never past 256 messages nor 100 per message."""
    from rotation.service.fanout import fanout_batch_size

    assert [fanout_batch_size(n) for n in (1, 32, 33, 100, 1024, 2000, 10000)] == [1, 1, 4, 4, 4, 8, 40]
    assert fanout_batch_size(1_000_000) == MAX_BATCH  # then more messages than 256
    assert len(batches(event_jobs(1000), fanout_batch_size(1000))) == 250


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
