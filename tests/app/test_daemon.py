"""The daemon's parts in-process: NCRONTAB schedule, host.json queue options, drain, webhook and key."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer

from rotation.errors import ServiceError
from rotation.serve.daemon import build_app, http_key, is_loopback
from rotation.serve.queue_worker import Drain, QueueOptions
from rotation.serve.schedule import Schedule, ScheduleError
from rotation.settings import SettingsError
from tests.helpers.paths import ROOT

KEY = "0123456789abcdef-key"


def at(text: str) -> datetime:
    """An ISO time as a UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# ---- schedule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 */15 * * * *", "2026-11-30 10:14:59", "2026-11-30 10:15:00"),
        ("0 */15 * * * *", "2026-11-30 10:15:00", "2026-11-30 10:30:00"),  # strictly after
        ("0 */15 * * * *", "2026-12-31 23:45:00", "2027-01-01 00:00:00"),
        ("*/10 * * * * *", "2026-11-30 10:00:05", "2026-11-30 10:00:10"),
        ("0 30 9 * * Mon-Fri", "2026-11-28 12:00:00", "2026-11-30 09:30:00"),  # Saturday -> Monday
        ("0 0 0 1 Jan *", "2026-06-01 00:00:00", "2027-01-01 00:00:00"),
        ("0 0 12 13 * 5", "2026-01-01 00:00:00", "2026-02-13 12:00:00"),  # the 13th AND a Friday
        ("0 0 0 29 2 *", "2026-01-01 00:00:00", "2028-02-29 00:00:00"),
        ("5,35 0-1 0 * * sunday", "2026-11-29 00:00:36", "2026-11-29 00:01:05"),
    ],
)
def test_schedule_next_occurrence_follows_ncrontab(expression, after, expected):
    """Six-field NCRONTAB: seconds first, names and ranges, day and weekday both required, strictly after."""
    assert Schedule.parse(expression).next_after(at(after)) == at(expected)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 */15 * * *", "has 5 fields"),
        ("0 60 * * * *", "minute field: 60 is outside 0-59"),
        ("0 0 25 * * *", "hour field: 25 is outside 0-23"),
        ("0 0 0 0 * *", "day field: 0 is outside 1-31"),
        ("0 0 0 * Foo *", "month field: 'Foo' is not a number"),
        ("0 */0 * * * *", "minute field: step '0' is not a positive number"),
        ("0 5-1 * * * *", "runs backwards"),
        ("0 1,,2 * * * *", "empty list item"),
        ("0 0 0 31 2 *", "never fires"),
    ],
)
def test_schedule_rejects_what_ncrontab_rejects(expression, message):
    """A bad expression is refused with the field and the reason."""
    with pytest.raises(ScheduleError, match=message):
        Schedule.parse(expression).next_after(at("2026-01-01 00:00:00"))


def test_default_schedule_is_every_quarter_hour():
    """The documented default `0 */15 * * * *` fires four times an hour, on the second 0."""
    schedule = Schedule.parse("0 */15 * * * *")
    moment, fired = at("2026-11-30 00:00:00"), []
    for _ in range(5):
        moment = schedule.next_after(moment)
        fired.append(moment.strftime("%H:%M:%S"))
    assert fired == ["00:15:00", "00:30:00", "00:45:00", "01:00:00", "01:15:00"]


# ---- host.json --------------------------------------------------------------------------------------


def test_queue_options_come_from_the_apps_host_json():
    """The daemon reads the same extensions.queues settings the Functions host reads."""
    doc = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    options = QueueOptions.from_host_json(ROOT / "host.json")
    assert options.max_dequeue_count == doc["maxDequeueCount"]
    assert options.batch_size == doc["batchSize"]
    assert options.new_batch_threshold == doc["newBatchThreshold"]
    assert options.visibility_timeout_s == 30.0  # "00:00:30"
    assert options.max_polling_interval_s == 2.0  # "00:00:02"


def test_queue_options_default_to_the_functions_defaults(tmp_path):
    """No host.json, or one without queues: maxDequeueCount 5, visibilityTimeout 0, batchSize 16, 1 min polling."""
    for path in (None, tmp_path / "missing.json"):
        options = QueueOptions.from_host_json(path)
        assert (options.max_dequeue_count, options.visibility_timeout_s, options.batch_size) == (5, 0.0, 16)
        assert options.max_polling_interval_s == 60.0
    empty = tmp_path / "host.json"
    empty.write_text('{"version": "2.0"}')
    assert QueueOptions.from_host_json(empty).max_dequeue_count == 5


def test_serve_reads_the_app_s_host_json_by_default():
    """Without --host-json, `rotation serve` reads the host.json at the project root (in the image, /app)."""
    from rotation.serve import daemon

    assert daemon.HOST_JSON == ROOT / "host.json"
    queues = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    options = QueueOptions.from_host_json(daemon.HOST_JSON)
    assert (options.batch_size, options.max_dequeue_count) == (queues["batchSize"], queues["maxDequeueCount"])
    assert options.max_polling_interval_s == 2.0  # the app's "00:00:02", not the Functions default of 60 s


def test_serve_without_host_json_says_so_and_agrees_on_the_last_delivery(tmp_path, caplog):
    """No host.json (an installed package): a WARNING names the defaults; the host's override setting wins."""
    from rotation.serve.daemon import queue_options
    from rotation.settings import MAX_DEQUEUE_SETTING, Settings

    env = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    with caplog.at_level("WARNING", logger="rotation.serve.daemon"):
        options, settings = queue_options(tmp_path / "host.json", Settings.from_env(env), env)
    assert [r.getMessage() for r in caplog.records] == ["rotation.serve_host_json_missing"]
    assert "--host-json" in caplog.records[0].reason
    assert (options.batch_size, options.max_dequeue_count, settings.max_dequeue_count) == (16, 5, 5)

    host_json = tmp_path / "app-host.json"
    host_json.write_text(json.dumps({"extensions": {"queues": {"maxDequeueCount": 3}}}))
    caplog.clear()
    options, settings = queue_options(host_json, Settings.from_env(env), env)
    assert caplog.records == []
    assert (options.max_dequeue_count, settings.max_dequeue_count) == (3, 3)  # one count for both

    overridden = {**env, MAX_DEQUEUE_SETTING: "7"}
    options, settings = queue_options(host_json, Settings.from_env(overridden), overridden)
    assert (options.max_dequeue_count, settings.max_dequeue_count) == (7, 7)  # the app setting wins


@pytest.mark.parametrize(
    ("queues", "message"),
    [
        ({"maxDequeueCount": 0}, "maxDequeueCount"),
        ({"batchSize": 33}, "batchSize"),
        ({"maxDequeueCount": "5"}, "maxDequeueCount"),
        ({"visibilityTimeout": "thirty seconds"}, "is not a TimeSpan"),
    ],
)
def test_queue_options_refuse_bad_values(tmp_path, queues, message):
    """A value the host would refuse stops the daemon with a setting error naming it."""
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"extensions": {"queues": queues}}))
    with pytest.raises(SettingsError, match=message):
        QueueOptions.from_host_json(path)


def test_timespans_with_days_and_milliseconds(tmp_path):
    """host.json TimeSpans may carry days ("1.02:00:00"); a bare number is milliseconds (Functions 1.x)."""
    path = tmp_path / "host.json"
    path.write_text(
        json.dumps(
            {"extensions": {"queues": {"visibilityTimeout": "1.02:00:00", "maxPollingInterval": 2500}}}
        )
    )
    options = QueueOptions.from_host_json(path)
    assert options.visibility_timeout_s == 26 * 3600
    assert options.max_polling_interval_s == 2.5


# ---- drain ------------------------------------------------------------------------------------------


async def test_drain_spends_every_budget_and_ends_sleeps():
    """After the drain begins, each clock reading is past any budget and a running sleep returns at once."""
    drain = Drain()
    before = drain.clock()
    assert drain.clock() - before < 1
    sleeper = asyncio.create_task(drain.sleep(60))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    drain.start()
    await asyncio.wait_for(sleeper, 1)
    assert time.monotonic() - started < 0.5
    deadline = drain.clock() + 240  # a polling budget taken after the drain began
    assert drain.clock() > deadline


# ---- the key ----------------------------------------------------------------------------------------


def test_key_is_required_off_loopback():
    """Loopback may go without a key; any other address needs one of at least 16 characters."""
    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.4", "example.com"))  # noqa: S104
    assert http_key({}, "127.0.0.1") is None
    assert http_key({"ROTATION_HTTP_KEY": KEY}, "0.0.0.0") == KEY  # noqa: S104
    with pytest.raises(SettingsError, match=r"required to listen on 0\.0\.0\.0"):
        http_key({}, "0.0.0.0")  # noqa: S104
    with pytest.raises(SettingsError, match="at least 16"):
        http_key({"ROTATION_HTTP_KEY": "short"}, "127.0.0.1")


# ---- the webhook, in-process ------------------------------------------------------------------------


@pytest.fixture
async def client(stack):
    """The daemon's web app on the test stack's Service, behind a key."""
    woken: list[int] = []
    app = build_app(stack.service, key=KEY, on_queued=lambda: woken.append(1))
    async with TestClient(TestServer(app)) as test_client:
        test_client.woken = woken
        yield test_client


async def test_every_route_needs_the_key(client):
    """Without the key (or with a wrong one) every route answers 401; `code=` and `x-functions-key` both work."""
    for method, path in [
        ("GET", "/api/health"),
        ("GET", "/api/clusters"),
        ("POST", "/api/events"),
        ("OPTIONS", "/api/events"),
        ("POST", "/api/rotate"),
        ("GET", "/api/doctor"),
    ]:
        resp = await client.request(method, path, headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
        assert resp.status == 401, (method, path)
        resp = await client.request(method, path, params={"code": KEY + "x"})
        assert resp.status == 401, (method, path)
    assert (await client.get("/api/health", params={"code": KEY})).status == 200
    assert (await client.get("/api/health", headers={"x-functions-key": KEY})).status == 200


async def test_read_key_opens_only_the_get_routes(stack):
    """`ROTATION_HTTP_READ_KEY` reads (GET) but never writes nor delivers events (403); the key opens both."""
    from rotation.serve.daemon import http_read_key

    reader = "r" * 20
    app = build_app(stack.service, key=KEY, read_key=reader, on_queued=lambda: None)
    async with TestClient(TestServer(app)) as client:
        for path in ("/api/health", "/api/clusters", "/api/doctor"):
            assert (await client.get(path, params={"code": reader})).status == 200, path
        for method, path in [
            ("POST", "/api/clusters"),
            ("DELETE", "/api/clusters"),
            ("POST", "/api/rotate"),
            ("POST", "/api/events"),
            ("OPTIONS", "/api/events"),
        ]:
            resp = await client.request(method, path, headers={"x-functions-key": reader})
            assert resp.status == 403, (method, path)
            assert "only the GET routes" in (await resp.json())["error"]["message"]
        resp = await client.post("/api/rotate", params={"code": KEY}, json={"clusterId": "not-an-id"})
        assert resp.status == 400  # past the key: the route itself answers
    assert http_read_key({}, KEY) is None
    assert http_read_key({"ROTATION_HTTP_READ_KEY": reader}, KEY) == reader
    with pytest.raises(SettingsError, match="needs ROTATION_HTTP_KEY"):
        http_read_key({"ROTATION_HTTP_READ_KEY": reader}, None)
    with pytest.raises(SettingsError, match="must differ"):
        http_read_key({"ROTATION_HTTP_READ_KEY": KEY}, KEY)
    with pytest.raises(SettingsError, match="at least 16"):
        http_read_key({"ROTATION_HTTP_READ_KEY": "short"}, KEY)


async def test_event_grid_validation_handshake(client):
    """A SubscriptionValidationEvent is answered 200 with its validationCode as validationResponse."""
    validation = [
        {
            "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
            "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv",
            "subject": "",
            "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6", "validationUrl": "https://x"},
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": "2026-11-30T00:00:00Z",
            "metadataVersion": "1",
            "dataVersion": "1",
        }
    ]
    resp = await client.post(
        "/api/events",
        json=validation,
        params={"code": KEY},
        headers={"aeg-event-type": "SubscriptionValidation"},
    )
    assert resp.status == 200
    assert await resp.json() == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    validation[0]["data"] = {"validationCode": 42}
    resp = await client.post("/api/events", json=validation, params={"code": KEY})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "InvalidValidationEvent"


async def test_cloudevents_abuse_protection_handshake(client):
    """OPTIONS with WebHook-Request-Origin is answered 200 with WebHook-Allowed-Origin; without the origin, 400."""
    resp = await client.options(
        "/api/events", params={"code": KEY}, headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
    )
    assert resp.status == 200
    assert resp.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert "POST" in resp.headers["Allow"]
    assert (await client.options("/api/events", params={"code": KEY})).status == 400
    assert (await client.get("/api/events", params={"code": KEY})).status == 405


async def test_webhook_queues_one_job_per_watched_cluster(stack, client):
    """A CloudEvents delivery of KeyNewVersionCreated queues the cluster's job and wakes the worker."""
    key, v1 = stack.new_key()
    cluster = stack.add_cluster(key, v1)
    await stack.register(cluster)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=True)
    event = stack.sim.to_cloud_event(stack.sim.events[-1])
    resp = await client.post(
        "/api/events",
        data=json.dumps(event),
        params={"code": KEY},
        headers={"Content-Type": "application/cloudevents+json; charset=utf-8"},
    )
    assert resp.status == 200
    doc = await resp.json()
    assert [(e["outcome"], e["queued"]) for e in doc["events"]] == [("queued", 1)]
    [job] = await stack.queued()
    assert job.cluster_id == cluster
    assert job.target_key_url == stack.sim.key_url(stack.vault, key, v2)
    assert client.woken == [1]


async def test_rotate_route_queues_the_job_and_wakes_the_worker(stack, client):
    """POST /api/rotate of a watched cluster: 202, the job on the queue, the worker woken; unwatched: 404, not woken."""
    key, v1 = stack.new_key()
    cluster = stack.add_cluster(key, v1)
    unwatched = stack.add_cluster(key, v1)
    resp = await client.post("/api/rotate", params={"code": KEY}, json={"clusterId": unwatched})
    assert resp.status == 404
    assert client.woken == []
    await stack.register(cluster)
    resp = await client.post("/api/rotate", params={"code": KEY}, json={"clusterId": cluster})
    assert resp.status == 202
    [job] = await stack.queued()
    assert (job.cluster_id, job.trigger) == (cluster, "manual")
    assert client.woken == [1]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b"\xff\xfe", 400),
        (b"[" * 100_000, 400),
        (b'[{"eventType": "Microsoft.KeyVault.KeyNewVersionCreated", "data": "nope"}]', 200),
        (b'{"specversion": "1.0", "type": "Microsoft.Storage.BlobCreated", "id": "1", "source": "s"}', 200),
    ],
)
async def test_webhook_answers_hostile_bodies_without_a_500(client, body, status):
    """Not JSON: 400 (Event Grid dead-letters it). Malformed or foreign events: 200, rejected or ignored, nothing queued."""
    resp = await client.post("/api/events", data=body, params={"code": KEY})
    assert resp.status == status
    if status == 200:
        outcomes = {e["outcome"] for e in (await resp.json())["events"]}
        assert outcomes <= {"rejected", "ignored"}
    assert client.woken == []


async def test_webhook_storage_failure_asks_event_grid_to_redeliver(stack, client, monkeypatch):
    """When the job queue cannot be written, the webhook answers 503, so Event Grid delivers the event again."""
    key, v1 = stack.new_key()
    await stack.register(stack.add_cluster(key, v1))
    stack.sim.create_key_version(stack.vault, key, emit_event=True)

    async def broken(*args, **kwargs):
        raise ServiceError("send job: queue unavailable", service="storage", status=503)

    monkeypatch.setattr(stack.service.queue, "send_many", broken)
    resp = await client.post("/api/events", json=[stack.sim.events[-1]], params={"code": KEY})
    assert resp.status == 503
    assert "queue unavailable" in (await resp.json())["error"]["message"]


async def test_webhook_answers_before_event_grid_gives_up(stack, client, monkeypatch):
    """When queueing hangs, the webhook still answers (503, so Event Grid redelivers) by its deadline, under Event Grid's 30 s."""
    from rotation.serve import webhook

    key, v1 = stack.new_key()
    await stack.register(stack.add_cluster(key, v1))
    stack.sim.create_key_version(stack.vault, key, emit_event=True)

    async def hanging(*args, **kwargs):
        await asyncio.sleep(60)

    assert webhook.EVENT_DEADLINE_S < 30  # the real deadline leaves Event Grid's 30 s some room
    monkeypatch.setattr(stack.service.queue, "send_many", hanging)
    monkeypatch.setattr(webhook, "EVENT_DEADLINE_S", 0.3)
    started = time.monotonic()
    resp = await client.post("/api/events", json=[stack.sim.events[-1]], params={"code": KEY})
    assert resp.status == 503
    assert time.monotonic() - started < 2
    assert "not done within" in (await resp.json())["error"]["message"]


async def test_worker_runs_at_most_batch_size_plus_new_batch_threshold(stack):
    """As the host's listener: a new batch is fetched only while at most newBatchThreshold jobs run (here 2 + 1)."""
    from rotation.serve.queue_worker import QueueWorker
    from rotation.store.clients import queue_client
    from rotation.store.jobs import Job

    queues = stack.service.queue._service
    prefix = (
        f"/subscriptions/{stack.subscription}/resourceGroups/rg/providers/Microsoft.DocumentDB/mongoClusters"
    )
    for i in range(8):
        await stack.service.queue.send(Job.new(f"{prefix}/c{i}", trigger="manual"))
    running, peak, done, calls = 0, 0, [], 0

    async def job(body, *, dequeue_count, invocation_id):
        nonlocal running, peak, calls
        calls += 1
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.1 if calls % 2 else 0.4)  # uneven, so batches overlap
        running -= 1
        done.append(body)

    stack.service.worker.handle_job = job
    drain = Drain()
    options = QueueOptions(batch_size=2, new_batch_threshold=1, max_polling_interval_s=0.2)
    listener = queue_client(queues, stack.queue_name)
    poison = queue_client(queues, f"{stack.queue_name}-poison")
    worker = QueueWorker(stack.service, listener, poison, options, drain)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(20):
            while len(done) < 8 or worker.processing:  # noqa: ASYNC110 - the worker runs in this loop
                await asyncio.sleep(0.05)
    finally:
        drain.start()
        await task
        await listener.close()
        await poison.close()
    assert peak == 3  # never more, and the threshold lets a new batch in early
    assert (worker.stats.succeeded, worker.stats.failed) == (8, 0)
    assert await stack.queued() == []  # every message deleted after its job returned


async def test_timer_lease_gives_each_occurrence_to_one_replica(azurite):
    """Of replicas taking the same occurrence, one wins; a later occurrence is free again; a past one never is."""
    import uuid

    from azure.data.tables.aio import TableServiceClient

    from rotation.serve.timer_lease import TABLE, TimerLease

    async with TableServiceClient.from_connection_string(azurite.connection_string) as tables:
        timer = f"t{uuid.uuid4().hex[:8]}"
        replicas = [TimerLease(tables.get_table_client(TABLE), owner=f"r{i}", timer=timer) for i in range(5)]
        first, second = at("2026-11-30 10:15:00"), at("2026-11-30 10:30:00")
        won = await asyncio.gather(*(r.take(first) for r in replicas))
        assert sorted(won) == [False] * 4 + [True]
        assert await replicas[2].take(second) is True
        assert await replicas[3].take(second) is False
        assert await replicas[0].take(first) is False  # a replica that fires late does not run it again


async def test_webhook_names_why_a_body_is_refused(client):
    """A body nested past the bound, or not UTF-8, is refused with that reason (400: Event Grid dead-letters it)."""
    resp = await client.post("/api/events", data=b"[" * 100_000, params={"code": KEY})
    assert resp.status == 400
    assert "nested" in (await resp.json())["error"]["message"]
    resp = await client.post("/api/events", data=b'["\xff"]', params={"code": KEY})
    assert resp.status == 400
    assert "not UTF-8" in (await resp.json())["error"]["message"]
