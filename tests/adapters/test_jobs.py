"""The job queue and the job message format against a real Azurite (rotation/store/jobs.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.storage.queue import TextBase64DecodePolicy
from azure.storage.queue.aio import QueueClient, QueueServiceClient

from rotation.errors import ServiceError
from rotation.store.jobs import Job, JobQueue, JobRejected
from tests.helpers.azurite import unique_name

SUB = "22222222-2222-2222-2222-222222222222"
CLUSTER = (
    f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/Microsoft.DocumentDB/mongoClusters/orders-prod"
)
TARGET = "https://contoso-kv.vault.azure.net/keys/cmk-docdb/" + "2" * 32
OP = "https://management.azure.com/subscriptions/x/providers/Microsoft.DocumentDB/locations/westeurope/operationsStatus/op1?api-version=2025-07-01-preview"
T0 = datetime(2026, 11, 1, 12, 30, tzinfo=UTC)


def job(**overrides) -> Job:
    """A rotation job for the test cluster, ``overrides`` changing fields."""
    fields = {
        "cluster_id": CLUSTER,
        "target_key_url": TARGET,
        "trigger": "event",
        "event_id": "ev-1",
        "enqueued_at": T0,
    }
    fields.update(overrides)
    return Job(**fields)


@pytest.fixture
async def queue_name():
    """A queue name no other test uses."""
    return unique_name("jobs")


@pytest.fixture
async def jobs(azurite, queue_name):
    """A JobQueue on its own queue in Azurite."""
    q = JobQueue(QueueServiceClient.from_connection_string(azurite.connection_string), name=queue_name)
    yield q
    await q.close()


@pytest.fixture
async def reader(azurite, queue_name):
    """A plain SDK client on the same queue, decoding base64 as the Functions host does."""
    client = QueueClient.from_connection_string(
        azurite.connection_string, queue_name, message_decode_policy=TextBase64DecodePolicy()
    )
    yield client
    await client.close()


async def receive_all(client: QueueClient) -> list:
    """Every visible message of the queue."""
    return [m async for m in client.receive_messages(messages_per_page=32, max_messages=1000)]


# -- through the real queue --------------------------------------------------------------------------


async def test_job_round_trips_through_the_queue_as_base64_json(jobs, reader, azurite, queue_name):
    """A sent job arrives base64-encoded on the wire, decodes to compact JSON, and parses back equal."""
    sent = job(backoffs=2)
    await jobs.send(sent)
    (message,) = await receive_all(reader)
    assert message.content == sent.to_json()
    assert json.loads(message.content) == {
        "cluster_id": CLUSTER,
        "target_key_url": TARGET,
        "trigger": "event",
        "event_id": "ev-1",
        "enqueued_at": "2026-11-01T12:30:00+00:00",
        "operation_url": None,
        "backoffs": 2,
        "checks": 0,
    }
    assert " " not in message.content  # compact
    assert Job.from_json(message.content) == sent
    raw = QueueClient.from_connection_string(azurite.connection_string, queue_name)  # no decoding
    try:
        await jobs.send(sent)
        (wire,) = await receive_all(raw)
    finally:
        await raw.close()
    assert base64.b64decode(wire.content).decode() == sent.to_json()


async def test_send_many_sends_100_jobs_concurrently(jobs, reader):
    """send_many of 100 jobs returns 100 and every job is on the queue once."""
    batch = [
        job(cluster_id=CLUSTER.replace("orders-prod", f"c-{i:03d}"), event_id=f"ev-{i}") for i in range(100)
    ]
    assert await jobs.send_many(batch, concurrency=16) == 100
    received = await receive_all(reader)
    assert sorted(Job.from_json(m.content).event_id for m in received) == sorted(
        f"ev-{i}" for i in range(100)
    )


async def test_send_many_of_nothing_sends_nothing(jobs):
    """An empty batch returns 0 without touching storage."""
    assert await jobs.send_many([]) == 0


async def test_delay_keeps_the_message_invisible(jobs, reader):
    """A job sent with a delay is not received before it, while an undelayed one is."""
    await jobs.send(job(event_id="later"), delay=30)
    await jobs.send(job(event_id="now"))
    received = await receive_all(reader)
    assert [Job.from_json(m.content).event_id for m in received] == ["now"]
    props = await reader.get_queue_properties()
    assert props.approximate_message_count == 2


async def test_queue_is_created_on_first_use_once(jobs, reader):
    """The first send creates the queue; later sends reuse it."""
    await jobs.send(job())
    await jobs.send(job())
    assert len(await receive_all(reader)) == 2


def test_poison_queue_name_follows_the_functions_convention(jobs):
    """The poison queue is '{name}-poison'."""
    assert jobs.poison_name == f"{jobs.name}-poison"
    assert JobQueue.__init__.__kwdefaults__["name"] == "rotation-jobs"


async def test_unreachable_queue_raises_a_transient_service_error():
    """Queue storage that cannot be reached raises ServiceError(service='storage'), transient."""
    service = QueueServiceClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        "QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;",
        retry_total=0,
    )
    q = JobQueue(service)
    try:
        with pytest.raises(ServiceError) as caught:
            await q.send(job())
    finally:
        await q.close()
    assert (caught.value.service, caught.value.status, caught.value.transient) == ("storage", None, True)
    assert isinstance(caught.value.__cause__, ServiceRequestError)


async def test_send_many_raises_the_first_failure_after_trying_every_job():
    """A failing batch raises ServiceError rather than an ExceptionGroup or a partial count."""
    service = QueueServiceClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        "QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;",
        retry_total=0,
    )
    q = JobQueue(service)
    q._ready = True  # skip creation so the sends themselves fail
    try:
        with pytest.raises(ServiceError):
            await asyncio.wait_for(q.send_many([job(), job()]), timeout=30)
    finally:
        await q.close()


# -- the message format ------------------------------------------------------------------------------


def test_from_json_accepts_bytes_nulls_and_unknown_fields():
    """A valid message parses from bytes; optional fields may be null or absent; unknown fields are ignored."""
    body = {
        "cluster_id": CLUSTER,
        "target_key_url": None,
        "trigger": "reconcile",
        "enqueued_at": "2026-11-01T12:30:00Z",
        "future_field": 1,
    }
    parsed = Job.from_json(json.dumps(body).encode())
    assert parsed == Job(
        cluster_id=CLUSTER, target_key_url=None, trigger="reconcile", event_id=None, enqueued_at=T0
    )


def test_check_job_round_trips_its_operation_url():
    """A 'check' job carries the operation to resume."""
    check = job(trigger="check", operation_url=OP)
    assert Job.from_json(check.to_json()) == check


def test_new_job_is_enqueued_now_in_utc():
    """Job.new stamps the current UTC time."""
    before = datetime.now(UTC)
    made = Job.new(CLUSTER, trigger="manual")
    assert before <= made.enqueued_at <= datetime.now(UTC)
    assert (made.target_key_url, made.backoffs, made.operation_url) == (None, 0, None)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        ("not json", "is not JSON"),
        ("[1, 2]", "is a JSON array, expected an object"),
        ("null", "is a JSON null, expected an object"),
        ("{}", "has no cluster_id"),
        ('{"cluster_id": 5}', "cluster_id must be a non-empty string, got a JSON number"),
        (
            '{"cluster_id": "/subscriptions/x"}',
            "job cluster_id: not a mongoClusters resource id: missing segments",
        ),
        (json.dumps({"cluster_id": CLUSTER.replace(SUB, "x")}), "subscription 'x' is not a GUID"),
        (
            json.dumps({"cluster_id": CLUSTER.replace("mongoClusters", "databaseAccounts")}),
            "not a mongoClusters resource id",
        ),
        (
            json.dumps({"cluster_id": CLUSTER, "target_key_url": "http://x/keys/k"}),
            "job target_key_url: key URL",
        ),
        (
            json.dumps({"cluster_id": CLUSTER, "target_key_url": "https://evil.example.com/keys/k"}),
            "not in an allowed vault domain",
        ),
        (
            json.dumps(
                {"cluster_id": CLUSTER, "target_key_url": "https://contoso-kv.vault.azure.net/keys/cmk"}
            ),
            "job target_key_url: key URL has no version",
        ),
        (json.dumps({"cluster_id": CLUSTER, "target_key_url": 7}), "target_key_url must be a string or null"),
        (json.dumps({"cluster_id": CLUSTER}), "has no trigger"),
        (json.dumps({"cluster_id": CLUSTER, "trigger": "whenever"}), "trigger 'whenever' is not one of"),
        (
            json.dumps({"cluster_id": CLUSTER, "trigger": "check", "enqueued_at": "2026-11-01T00:00:00Z"}),
            "'check' has no operation_url",
        ),
        (
            json.dumps({"cluster_id": CLUSTER, "trigger": "check", "operation_url": "http://x"}),
            "operation_url is not an https URL",
        ),
        (json.dumps({"cluster_id": CLUSTER, "trigger": "event"}), "has no enqueued_at"),
        (
            json.dumps({"cluster_id": CLUSTER, "trigger": "event", "enqueued_at": "yesterday"}),
            "enqueued_at is not an ISO 8601 time",
        ),
        (
            json.dumps(
                {
                    "cluster_id": CLUSTER,
                    "trigger": "event",
                    "enqueued_at": "2026-11-01T00:00:00Z",
                    "backoffs": -1,
                }
            ),
            "backoffs must be a non-negative integer",
        ),
        (
            json.dumps(
                {
                    "cluster_id": CLUSTER,
                    "trigger": "event",
                    "enqueued_at": "2026-11-01T00:00:00Z",
                    "backoffs": True,
                }
            ),
            "backoffs must be a non-negative integer",
        ),
        ("[" * 100_000 + "]" * 100_000, "bytes; the limit is 65536"),
        ("[" * 20_000 + "]" * 20_000, "nested 20000 deep; the limit is 64"),
        (b"\x00 not a job", "is not JSON"),  # json.loads(bytes) would guess UTF-16 and raise
        (b"\x00\x00\x00{", "is not JSON"),
        ('{"cluster_id": ' + "[" * 20_000 + "]" * 20_000 + "}", "nested 20001 deep"),
    ],
)
def test_from_json_rejects_malformed_messages_with_a_one_line_reason(body, reason):
    """Malformed messages raise JobRejected (a ValueError) whose single-line message names the problem."""
    with pytest.raises(JobRejected) as caught:
        Job.from_json(body)
    message = str(caught.value)
    assert reason in message
    assert "\n" not in message
    assert isinstance(caught.value, ValueError)
