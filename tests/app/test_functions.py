"""The Functions app (function_app.py) through its real function objects, the simulator and Azurite.

Triggers are built as the Python worker builds them; assertions read the simulator's request log, the job
queue and the registry, never only what a function returned.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
import time
import uuid

import pytest

from azsim.host import max_dequeue_count
from rotation.ids import parse_cluster_id
from rotation.service.process import Service
from rotation.store.jobs import Job
from tests.helpers.app import (
    POISON_QUEUE,
    bindings,
    context,
    event_trigger,
    functions,
    queue_message,
)
from tests.helpers.app import user_function as fn
from tests.helpers.paths import ROOT
from tests.helpers.world import make_world, puts

HTTP_FUNCTIONS = {
    "clusters": (["GET"], "clusters"),
    "clusters_write": (["POST", "DELETE"], "clusters"),
    "history": (["GET"], "history"),
    "rotate": (["POST"], "rotate"),
    "health": (["GET"], "health"),
}


async def register_all(app, cluster_ids: list[str]) -> Service:
    """Watch the clusters through the app's Service, then empty the request log."""
    service = await app.service()
    for cluster_id in cluster_ids:
        await service.registration.register(cluster_id, owner="team-test")
    app.sim.clear_requests()
    return service


async def send_event(event: dict) -> None:
    """Deliver one event to `on_key_event` as the worker does."""
    await fn("on_key_event")(event_trigger(event), context("on_key_event"))


def records(caplog, message: str) -> list[logging.LogRecord]:
    """The log records whose message is ``message``."""
    return [r for r in caplog.records if r.getMessage() == message]


# ---- bindings -----------------------------------------------------------------------------------------


def test_bindings_of_every_function():
    """Each function has the trigger binding the host needs; every HTTP route requires a function key."""
    names = set(functions())
    assert {"on_key_event", "rotate_cluster", *HTTP_FUNCTIONS} <= names
    assert bindings("on_key_event") == [{"direction": "IN", "type": "eventGridTrigger", "name": "event"}]
    queue = bindings("rotate_cluster")
    assert len(queue) == 1
    assert queue[0]["type"] == "queueTrigger"
    assert queue[0]["queueName"] == "rotation-jobs"
    assert queue[0]["connection"] == "AzureWebJobsStorage"
    for name, (methods, route) in HTTP_FUNCTIONS.items():
        trigger, out = bindings(name)
        assert trigger["type"] == "httpTrigger"
        assert trigger["authLevel"].lower() == "function"
        assert sorted(trigger["methods"]) == sorted(methods)
        assert trigger["route"] == route
        assert out == {"direction": "OUT", "type": "http", "name": "$return"}
    if "reconcile" in names:
        [timer] = bindings("reconcile")
        assert timer["type"] == "timerTrigger"
        assert timer["schedule"] == "%ROTATION_RECONCILE_SCHEDULE%"  # the app setting, default in infra
    for name in names:  # any function added later must not open an anonymous route
        for binding in bindings(name):
            if binding["type"] == "httpTrigger":
                assert binding["authLevel"].lower() in {"function", "admin"}, name


def test_host_json():
    """host.json pins the v4 extension bundle and sets maxDequeueCount and a functionTimeout."""
    doc = json.loads((ROOT / "host.json").read_text())
    assert doc["version"] == "2.0"
    assert doc["extensionBundle"] == {
        "id": "Microsoft.Azure.Functions.ExtensionBundle",
        "version": "[4.*, 5.0.0)",
    }
    assert isinstance(doc["extensions"]["queues"]["maxDequeueCount"], int)
    assert 1 <= doc["extensions"]["queues"]["maxDequeueCount"] <= 10
    assert max_dequeue_count() == doc["extensions"]["queues"]["maxDequeueCount"]
    hours, minutes, seconds = (int(p) for p in doc["functionTimeout"].split(":"))
    assert 0 < hours * 3600 + minutes * 60 + seconds <= 3600
    queues = doc["extensions"]["queues"]
    assert 1 <= queues["batchSize"] <= 32  # the queue extension's range
    # Rotations wait on ARM, not the CPU: the deployment's ROTATION_MAX_CONCURRENCY is what one instance runs.
    bicep = (ROOT / "infra" / "main.bicep").read_text()
    assert f"param maxConcurrency int = {queues['batchSize'] + queues['newBatchThreshold']}" in bicep


# ---- Event Grid trigger -------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
async def test_new_version_event_queues_one_job_per_watched_cluster(app, schema):
    """A KeyNewVersionCreated event (either schema) queues exactly one job per watched cluster of the key."""
    world = make_world(app.sim, subscriptions=2, per_subscription=2, other_key=True)
    await register_all(app, [*world.clusters, world.other_cluster])
    v2, event = world.new_version_event()
    payload = event if schema == "eventgrid" else app.sim.to_cloud_event(event)
    await send_event(payload)
    jobs = await app.take_jobs()
    assert sorted(j["cluster_id"] for j in jobs) == sorted(world.clusters)
    assert world.other_cluster not in {j["cluster_id"] for j in jobs}
    for job in jobs:
        assert job["target_key_url"] == world.key_url(v2)
        assert job["trigger"] == "event"
        assert job["event_id"] == event["id"]
        Job.from_json(json.dumps(job))  # the queue function accepts what the event function sent
    assert puts(app.sim) == []  # the event function only queues


async def test_near_expiry_warns_naming_clusters_and_queues_nothing(app, caplog):
    """KeyNearExpiry logs rotation.key_near_expiry at WARNING naming the watched clusters; no job."""
    world = make_world(app.sim, subscriptions=2, per_subscription=2, other_key=True)
    await register_all(app, world.clusters)
    event = app.sim.emit_key_event(world.vault, "cmk", world.v1, "Microsoft.KeyVault.KeyNearExpiry")
    caplog.set_level(logging.INFO, logger="rotation")
    await send_event(event)
    [warning] = records(caplog, "rotation.key_near_expiry")
    assert warning.levelno == logging.WARNING
    assert sorted(warning.clusters) == sorted(world.clusters)
    assert warning.event_id == event["id"]
    assert await app.count() == 0


async def test_key_expired_logs_error_and_queues_nothing(app, caplog):
    """KeyExpired logs rotation.key_expired at ERROR naming the watched clusters; no job."""
    world = make_world(app.sim, subscriptions=1, per_subscription=2, other_key=True)
    await register_all(app, world.clusters)
    event = app.sim.emit_key_event(world.vault, "cmk", world.v1, "Microsoft.KeyVault.KeyExpired")
    caplog.set_level(logging.INFO, logger="rotation")
    await send_event(app.sim.to_cloud_event(event))
    [error] = records(caplog, "rotation.key_expired")
    assert error.levelno == logging.ERROR
    assert sorted(error.clusters) == sorted(world.clusters)
    assert await app.count() == 0


async def test_secret_event_is_ignored(app, caplog):
    """A SecretNewVersionCreated event is acknowledged as ignored and queues nothing."""
    world = make_world(app.sim, subscriptions=1, per_subscription=2, other_key=True)
    await register_all(app, world.clusters)
    _, event = world.new_version_event()
    secret = json.loads(json.dumps(event).replace("/keys/", "/secrets/"))
    secret["eventType"] = "Microsoft.KeyVault.SecretNewVersionCreated"
    secret["data"]["ObjectType"] = "Secret"
    caplog.set_level(logging.INFO, logger="rotation")
    await send_event(secret)
    [ignored] = records(caplog, "rotation.event_ignored")
    assert ignored.outcome == "ignored"
    assert await app.count() == 0


@pytest.mark.parametrize(
    "tamper",
    [
        lambda e: e["data"].update(Id=e["data"]["Id"].replace(".vault.azure.net", ".vault.evil.example")),
        lambda e: e["data"].update(Version="not-a-version"),
        lambda e: e.update(data="not an object"),
    ],
    ids=["evil-host", "bad-version", "data-not-object"],
)
async def test_malformed_event_is_rejected_and_acknowledged(app, caplog, tamper):
    """A malformed key event is logged at ERROR as rotation.event_rejected with its id; no job, no raise."""
    world = make_world(app.sim, subscriptions=1, per_subscription=2, other_key=True)
    await register_all(app, world.clusters)
    _, event = world.new_version_event()
    tamper(event)
    caplog.set_level(logging.INFO, logger="rotation")
    await send_event(event)  # returns: Event Grid must not redeliver what cannot be fixed
    [rejected] = records(caplog, "rotation.event_rejected")
    assert rejected.levelno == logging.ERROR
    assert rejected.event_id == event["id"]
    assert rejected.reason
    assert await app.count() == 0
    assert puts(app.sim) == []


async def test_event_to_enqueue_for_100_clusters(app, request):
    """One event for a key watched by 100 clusters queues a job for each, well within Event Grid's 30 s."""
    world = make_world(app.sim, subscriptions=1, per_subscription=1, other_key=True)
    service = await app.service()
    host = f"{world.vault}.vault.azure.net"
    gate = asyncio.Semaphore(16)

    async def upsert(i: int) -> None:
        cluster_id = parse_cluster_id(
            f"/subscriptions/{world.subscriptions[0]}/resourceGroups/rg-bulk/providers/"
            f"Microsoft.DocumentDB/mongoClusters/bulk-{i:03d}"
        )
        async with gate:
            await service.registry.watched.upsert(
                cluster_id=cluster_id,
                vault_host=host,
                key_name="cmk",
                current_version=world.v1,
                identity=world.identities[world.subscriptions[0]],
                owner=None,
            )

    await asyncio.gather(*(upsert(i) for i in range(100)))
    _, event = world.new_version_event()
    trigger = event_trigger(event)
    started = time.perf_counter()
    await fn("on_key_event")(trigger, context("on_key_event"))
    elapsed = time.perf_counter() - started
    request.node.user_properties.append(("event_to_enqueue_s", round(elapsed, 3)))  # for reports
    messages = await app.take_jobs()
    clusters = [c for m in messages for c in m.get("cluster_ids", [m.get("cluster_id")])]
    assert len(clusters) == 100
    assert len(set(clusters)) == 100
    assert len(messages) == 25  # past 32 clusters, 4 per message (rotation.service.fanout.fanout_batch_size)
    assert {m["event_id"] for m in messages} == {event["id"]}
    assert elapsed < 5.0


# ---- queue trigger ------------------------------------------------------------------------------------


async def test_job_rotates_cluster_and_records_it(app):
    """A queued job PUTs the new key version, and the registry row and history record the rotation."""
    world = make_world(app.sim, subscriptions=1, per_subscription=1, other_key=True)
    service = await register_all(app, world.clusters)
    [cluster] = world.clusters
    v2, event = world.new_version_event()
    await send_event(event)
    [job] = await app.take_jobs()
    await fn("rotate_cluster")(queue_message(json.dumps(job)), context("rotate_cluster"))
    [put] = puts(app.sim, cluster)
    assert put.status in {200, 201, 202}
    assert world.version_of(cluster) == v2
    row = await service.registry.watched.get(parse_cluster_id(cluster))
    assert (row.last_outcome, row.current_version, row.state) == ("rotated", v2, "watching")
    assert row.operation_url is None
    [entry] = await service.registry.history.recent(parse_cluster_id(cluster))
    assert (entry.outcome, entry.trigger, entry.event_id) == ("rotated", "event", event["id"])
    assert (entry.from_version, entry.to_version) == (world.v1, v2)


async def test_end_to_end_across_two_subscriptions(app):
    """Event -> queue -> QueueHost: every watched cluster in both subscriptions moves, the other key's does not."""
    world = make_world(app.sim, subscriptions=2, per_subscription=3, other_key=True)
    service = await register_all(app, [*world.clusters, world.other_cluster])
    v2, event = world.new_version_event()
    await send_event(event)
    host = await app.drain()
    assert (host.stats.invocations, host.stats.succeeded, host.stats.poisoned) == (6, 6, 0)
    for cluster in world.clusters:
        assert world.version_of(cluster) == v2
        assert len(puts(app.sim, cluster)) == 1
        row = await service.registry.watched.get(parse_cluster_id(cluster))
        assert (row.last_outcome, row.current_version) == ("rotated", v2)
    assert puts(app.sim, world.other_cluster) == []
    assert {r.path.split("/")[2] for r in puts(app.sim)} == set(world.subscriptions)
    assert await app.count() == 0


async def test_duplicate_event_delivery_puts_once_per_cluster(app, monkeypatch):
    """The same event delivered twice queues one job per cluster (fan-out memory) and one PUT each."""
    monkeypatch.setenv("ROTATION_DEFER_SECONDS", "1.0")  # a job deferred by a claim comes back soon
    world = make_world(app.sim, subscriptions=2, per_subscription=2, other_key=True)
    service = await register_all(app, world.clusters)
    v2, event = world.new_version_event()
    await send_event(event)
    await send_event(event)
    assert await app.count() == len(world.clusters)
    host = await app.drain()
    assert host.stats.failed == 0
    for cluster in world.clusters:
        assert len(puts(app.sim, cluster)) == 1, cluster
        assert world.version_of(cluster) == v2
        outcomes = sorted(e.outcome for e in await service.registry.history.recent(parse_cluster_id(cluster)))
        assert outcomes == ["rotated"]


async def test_a_storm_of_one_event_queues_one_job_per_cluster(app):
    """The same valid event delivered 20 times queues 5 jobs for 5 clusters, not 100 (then nothing more)."""
    world = make_world(app.sim, subscriptions=1, per_subscription=5, other_key=True)
    await register_all(app, world.clusters)
    _, event = world.new_version_event()
    for _ in range(20):
        await send_event(event)
    jobs = await app.take_jobs()
    assert sorted(j["cluster_id"] for j in jobs) == sorted(world.clusters)


async def test_two_services_on_one_cluster_put_once(app, sim, caplog, monkeypatch):
    """Two workers (distinct worker ids) handling the same job at once: one PUT, the other defers."""
    monkeypatch.setenv("ROTATION_DEFER_SECONDS", "1.0")
    world = make_world(sim, subscriptions=1, per_subscription=1, other_key=True)
    first = await register_all(app, world.clusters)
    [cluster] = world.clusters
    sim.configure(operation_seconds=0.5)
    v2, _ = world.new_version_event()
    second = Service.create(first.settings)
    try:
        body = Job.new(cluster, trigger="manual", target_key_url=world.key_url(v2)).to_json()
        caplog.set_level(logging.INFO, logger="rotation")
        results = await asyncio.gather(first.worker.handle_job(body), second.worker.handle_job(body))
    finally:
        await second.close()
    assert len(puts(sim, cluster)) == 1
    assert world.version_of(cluster) == v2
    assert sorted(r.outcome.value if r else "deferred" for r in results) == ["deferred", "rotated"]
    [requeued] = await app.wait_jobs(1)
    assert (requeued["cluster_id"], requeued["backoffs"]) == (cluster, 1)
    [deferred] = records(caplog, "rotation.job_deferred")
    assert deferred.cluster_id == cluster


@pytest.mark.parametrize("stagger", [0.0, 0.3], ids=["together", "while-polling"])
async def test_two_invocations_of_one_job_put_once(app, sim, monkeypatch, stagger):
    """Two rotate_cluster invocations of one job in one process: one PUT; the later one is re-queued."""
    monkeypatch.setenv("ROTATION_DEFER_SECONDS", "1.0")
    world = make_world(sim, subscriptions=1, per_subscription=1, other_key=True)
    service = await register_all(app, world.clusters)
    [cluster] = world.clusters
    sim.configure(operation_seconds=0.6)
    v2, _ = world.new_version_event()
    body = Job.new(cluster, trigger="manual", target_key_url=world.key_url(v2)).to_json()
    rotate = fn("rotate_cluster")

    async def later() -> None:
        await asyncio.sleep(stagger)
        await rotate(queue_message(body), context("rotate_cluster"))

    await asyncio.gather(rotate(queue_message(body), context("rotate_cluster")), later())
    assert [p.status for p in puts(sim, cluster)] == [200]  # one update PUT, answered 200 as the spec says
    assert world.version_of(cluster) == v2
    history = [e.outcome for e in await service.registry.history.recent(parse_cluster_id(cluster))]
    assert history == ["rotated"]
    [requeued] = await app.wait_jobs(1)
    assert (requeued["cluster_id"], requeued["backoffs"]) == (cluster, 1)


async def test_persistent_503_poisons_the_job_and_rotate_finishes_it(app, sim, monkeypatch, caplog):
    """Persistent ARM 503: each delivery raises, the job is poisoned with failed history; `rotate` ends it.

    The last delivery says the job moves to the poison queue, and every retry-exhausted line carries the
    trigger's dequeue count (host.json's maxDequeueCount, overridden as the host reads it: 2 here).
    """
    monkeypatch.setenv("AzureFunctionsJobHost__extensions__queues__maxDequeueCount", "2")
    monkeypatch.setenv("ROTATION_RETRY_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("ROTATION_RETRY_INITIAL_WAIT", "0")
    monkeypatch.setenv("ROTATION_RETRY_MAX_WAIT", "0.01")
    world = make_world(sim, subscriptions=1, per_subscription=1, other_key=True)
    service = await register_all(app, world.clusters)
    [cluster] = world.clusters
    v2, event = world.new_version_event()
    await send_event(event)
    sim.set_fault_rates({"503": 1.0}, service="arm", methods=("PUT",))
    host = await app.drain(max_dequeue=2, visibility_timeout=1)
    assert (host.stats.invocations, host.stats.failed, host.stats.poisoned) == (2, 2, 1)
    assert all(e.startswith("TransientFailure") for e in host.stats.errors)
    assert [p.status for p in puts(sim, cluster)] == [503] * 4  # 2 attempts x 2 deliveries
    assert world.version_of(cluster) == world.v1
    [poisoned] = await app.take_jobs(POISON_QUEUE)
    assert (poisoned["cluster_id"], poisoned["target_key_url"]) == (cluster, world.key_url(v2))
    failed = await service.registry.history.recent(parse_cluster_id(cluster))
    assert [e.outcome for e in failed] == ["failed", "failed"]
    assert all("retries exhausted" in e.reason for e in failed)
    assert all(e.error_code in {"ServiceUnavailable", "503"} for e in failed)
    newest, first = failed  # one entry per delivery, newest first
    assert "(delivery 1 of 2); the queue redelivers:" in first.reason
    assert "(delivery 2 of 2); moved to rotation-jobs-poison:" in newest.reason
    assert [first.dequeue_count, newest.dequeue_count] == [1, 2]
    exhausted = [r for r in caplog.records if r.getMessage() == "rotation.cluster_retry_exhausted"]
    assert sorted(r.dequeue_count for r in exhausted) == [1, 2]
    [poison_line] = [r for r in caplog.records if r.getMessage() == "rotation.job_poisoned"]
    assert (poison_line.cluster_id, poison_line.dequeue_count, poison_line.queue) == (
        cluster,
        2,
        POISON_QUEUE,
    )
    row = await service.registry.watched.get(parse_cluster_id(cluster))
    assert row.last_outcome == "failed"

    sim.set_fault_rates({})
    sim.clear_requests()
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "rotation",
            "rotate",
            poisoned["cluster_id"],
            "--key-url",
            poisoned["target_key_url"],
        ],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("rotated")
    assert len(puts(sim, cluster)) == 1
    assert world.version_of(cluster) == v2
    latest = (await service.registry.history.recent(parse_cluster_id(cluster)))[0]
    assert (latest.outcome, latest.trigger, latest.to_version) == ("rotated", "manual", v2)


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b"\xff\xfe",
        b"[1, 2, 3]",
        json.dumps(
            {"cluster_id": "/subscriptions/x/evil", "trigger": "event", "enqueued_at": "2026-01-01T00:00:00Z"}
        ),
        json.dumps(
            {
                "cluster_id": "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg/providers/Microsoft.DocumentDB/mongoClusters/abc",
                "trigger": "event",
                "target_key_url": "https://kv.vault.evil.example/keys/k/" + "0" * 32,
                "enqueued_at": "2026-01-01T00:00:00Z",
            }
        ),
    ],
    ids=["not-json", "not-utf8", "array", "bad-cluster-id", "key-outside-allowed-vaults"],
)
async def test_malformed_job_is_acknowledged_with_error_log(app, caplog, body):
    """A message that is not a valid job is logged at ERROR as rotation.job_rejected; nothing raises."""
    caplog.set_level(logging.INFO, logger="rotation")
    await fn("rotate_cluster")(queue_message(body, dequeue_count=1), context("rotate_cluster"))
    [rejected] = records(caplog, "rotation.job_rejected")
    assert rejected.levelno == logging.ERROR
    assert rejected.reason
    assert "\n" not in rejected.reason
    assert app.sim.requests == []
    assert await app.count() == 0


async def test_queue_body_from_the_wire_is_base64_json(app):
    """Jobs are sent base64-encoded (the queue trigger's default decoding) with every field of the job."""
    world = make_world(app.sim, subscriptions=1, per_subscription=1, other_key=True)
    await register_all(app, world.clusters)
    _, event = world.new_version_event()
    await send_event(event)
    async with app.queue() as q:
        [message] = await q.peek_messages(max_messages=32)
    doc = json.loads(base64.b64decode(message.content, validate=True))
    assert set(doc) >= {"cluster_id", "target_key_url", "trigger", "event_id", "enqueued_at"}
    assert uuid.UUID(doc["event_id"])
