"""Messages that carry many clusters (rotation.store.jobs.JobBatch): built, read back, refused when hostile.

Also how many clusters an event puts in one message (rotation.service.fanout).
"""

from __future__ import annotations

import base64
import json

import pytest

from rotation.store.jobs import MAX_BATCH, Job, JobBatch, JobRejected, batches, parse_message
from tests.helpers.batches import KEY, cid, event_jobs


def batch_body(**fields: object) -> str:
    """A batch message's JSON with ``fields`` changed (``...`` leaves a field out)."""
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


def test_the_size_of_an_event_s_messages_follows_its_fan_out() -> None:
    """One cluster per message up to 32, then 4 or more, never past 256 messages nor 100 per message."""
    from rotation.service.fanout import fanout_batch_size

    assert [fanout_batch_size(n) for n in (1, 32, 33, 100, 1024, 2000, 10000)] == [1, 1, 4, 4, 4, 8, 40]
    assert fanout_batch_size(1_000_000) == MAX_BATCH  # then more messages than 256
    assert len(batches(event_jobs(1000), fanout_batch_size(1000))) == 250
