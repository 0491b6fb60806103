"""The registry's HTTP routes through the app's real function objects and ``func.HttpRequest``.

Every answer is JSON; bad input is a 4xx with ``{"error": {"code", "message"}}`` and never a 500. Effects are
read back from the simulator's request log, the registry and the job queue.
"""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from rotation.ids import parse_cluster_id
from rotation.logs import JsonFormatter, TextFormatter
from tests.helpers.app import context, http_request, queue_message
from tests.helpers.app import user_function as fn
from tests.helpers.world import make_world, puts

SUB = "11111111-1111-1111-1111-111111111111"
VALID_ID = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.DocumentDB/mongoClusters/abc"
HOSTILE_ID = VALID_ID + "\nrotation.cluster_registered cluster_id=forged outcome=rotated"


async def call(name: str, method: str, *, params=None, body=None) -> tuple[int, dict]:
    """Call an HTTP function; its status and JSON body (the content type must be JSON)."""
    response = await fn(name)(http_request(method, name, params=params, body=body))
    assert response.mimetype == "application/json"
    return response.status_code, json.loads(response.get_body())


def assert_error(status: int, doc: dict, expected_status: int, code: str) -> None:
    """The answer is an error of ``expected_status`` with ``code`` and a message, nothing else."""
    assert status == expected_status, doc
    assert set(doc) == {"error"}
    assert doc["error"]["code"] == code
    assert isinstance(doc["error"]["message"], str)
    assert doc["error"]["message"]


async def test_register_list_unregister(app):
    """POST registers a CMK cluster (200, its row), GET lists it, DELETE removes it (200, then 404)."""
    world = make_world(app.sim, subscriptions=1, per_subscription=1, other_key=True)
    [cluster] = world.clusters
    status, row = await call("clusters", "POST", body={"clusterId": cluster, "owner": "team-orders"})
    assert status == 200, row
    assert row["cluster_id"] == cluster
    assert row["key"] == f"{world.vault}.vault.azure.net/cmk"
    assert row["current_version"] == world.v1
    assert row["identity"] == world.identities[world.subscriptions[0]]
    assert row["owner"] == "team-orders"
    assert "etag" not in row
    gets = [r for r in app.sim.requests if r.service == "arm" and r.method == "GET"]
    assert [r.path.lower() for r in gets] == [cluster.lower()]
    assert puts(app.sim) == []

    status, listing = await call("clusters", "GET")
    assert status == 200
    mine = [c for c in listing["clusters"] if c["cluster_id"] == cluster]
    assert len(mine) == 1
    assert mine[0]["owner"] == "team-orders"
    assert listing["count"] == len(listing["clusters"])

    status, removed = await call("clusters", "DELETE", params={"clusterId": cluster})
    assert (status, removed) == (200, {"removed": cluster})
    service = await app.service()
    assert await service.registry.watched.get(parse_cluster_id(cluster)) is None
    status, doc = await call("clusters", "DELETE", params={"clusterId": cluster})
    assert_error(status, doc, 404, "NotWatched")


async def test_reregister_updates_owner(app):
    """POSTing a watched cluster again is idempotent and updates its owner."""
    world = make_world(app.sim, subscriptions=1, per_subscription=1, other_key=True)
    [cluster] = world.clusters
    await call("clusters", "POST", body={"clusterId": cluster, "owner": "a"})
    status, row = await call("clusters", "POST", body={"clusterId": cluster, "owner": "b"})
    assert (status, row["owner"]) == (200, "b")
    service = await app.service()
    assert (await service.registry.watched.get(parse_cluster_id(cluster))).owner == "b"
    assert len(await service.registry.watched.for_key(f"{world.vault}.vault.azure.net", "cmk")) == 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "InvalidJson"),
        (b"\xff\xfe\x00", 400, "InvalidJson"),
        (b"[1, 2]", 400, "InvalidBody"),
        (b'"just a string"', 400, "InvalidBody"),
        (b"null", 400, "InvalidBody"),
        (b"", 400, "MissingClusterId"),
        (b"{}", 400, "MissingClusterId"),
        (json.dumps({"clusterId": 42}).encode(), 400, "MissingClusterId"),
        (json.dumps({"clusterId": "/subscriptions/nope"}).encode(), 400, "InvalidClusterId"),
        (
            json.dumps(
                {
                    "clusterId": f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/abc"
                }
            ).encode(),
            400,
            "InvalidClusterId",
        ),
        (json.dumps({"clusterId": VALID_ID, "owner": "a\nb"}).encode(), 400, "InvalidBody"),
        (json.dumps({"clusterId": VALID_ID, "owner": "x" * 300}).encode(), 400, "InvalidBody"),
        (json.dumps({"clusterId": VALID_ID, "pad": "x" * (64 * 1024)}).encode(), 413, "BodyTooLarge"),
    ],
    ids=[
        "bad-json",
        "not-utf8",
        "array",
        "string",
        "null",
        "empty",
        "no-cluster-id",
        "cluster-id-not-string",
        "bad-cluster-id",
        "not-mongo-cluster",
        "owner-with-newline",
        "owner-too-long",
        "oversized",
    ],
)
async def test_register_rejects_bad_input(app, body, status, code):
    """Bad POST bodies get a 4xx JSON error naming the problem; nothing reaches ARM or the registry."""
    got, doc = await call("clusters", "POST", body=body)
    assert_error(got, doc, status, code)
    assert app.sim.requests == []


async def test_register_refuses_service_managed_and_missing_clusters(app):
    """A service-managed or non-existent cluster is refused with 422 RegistrationRefused and not recorded."""
    world = make_world(app.sim, subscriptions=1, per_subscription=1, other_key=True)
    plain = app.sim.add_cluster(
        subscription=world.subscriptions[0], resource_group="rg-data", name="plain-db"
    )
    missing = plain.replace("plain-db", "gone-db")
    service = await app.service()
    for cluster, words in ((plain, "not-cmk"), (missing, "not found")):
        status, doc = await call("clusters", "POST", body={"clusterId": cluster})
        assert_error(status, doc, 422, "RegistrationRefused")
        assert words in doc["error"]["message"]
        assert await service.registry.watched.get(parse_cluster_id(cluster)) is None
    assert [r.status for r in app.sim.requests if r.service == "arm"] == [200, 404]


@pytest.mark.parametrize(
    ("params", "code"),
    [({}, "MissingClusterId"), ({"clusterId": "nope"}, "InvalidClusterId")],
    ids=["missing", "malformed"],
)
async def test_unregister_rejects_bad_cluster_id(app, params, code):
    """DELETE without a valid clusterId is a 400."""
    status, doc = await call("clusters", "DELETE", params=params)
    assert_error(status, doc, 400, code)


async def test_clusters_rejects_other_methods(app):
    """A method the route does not serve is a 405 JSON error."""
    status, doc = await call("clusters", "PATCH", body={})
    assert_error(status, doc, 405, "MethodNotAllowed")


async def test_rotate_queues_a_job_and_history_shows_it(app):
    """POST rotate is 202 with a manual job in the queue; run by the queue function, history lists it."""
    world = make_world(app.sim, subscriptions=1, per_subscription=1, other_key=True)
    [cluster] = world.clusters
    await call("clusters", "POST", body={"clusterId": cluster})
    v2 = app.sim.create_key_version(world.vault, "cmk", emit_event=False)
    status, doc = await call("rotate", "POST", body={"clusterId": cluster, "keyUrl": world.key_url(v2)})
    assert status == 202, doc
    assert doc["queued"]["cluster_id"] == cluster
    [job] = await app.take_jobs()
    assert (job["cluster_id"], job["target_key_url"], job["trigger"]) == (
        cluster,
        world.key_url(v2),
        "manual",
    )
    assert puts(app.sim) == []  # the route only queues

    await fn("rotate_cluster")(queue_message(json.dumps(job)), context("rotate_cluster"))
    assert len(puts(app.sim, cluster)) == 1
    status, doc = await call("history", "GET", params={"clusterId": cluster, "limit": "5"})
    assert status == 200
    assert doc["clusterId"] == cluster
    [entry] = doc["history"]
    assert (entry["outcome"], entry["trigger"], entry["to_version"]) == ("rotated", "manual", v2)


async def test_rotate_without_key_url_queues_newest_version_job(app):
    """POST rotate without keyUrl queues a job with no target (newest usable version)."""
    world = make_world(app.sim, subscriptions=1, per_subscription=1, other_key=True)
    [cluster] = world.clusters
    await call("clusters", "POST", body={"clusterId": cluster})
    status, _ = await call("rotate", "POST", body={"clusterId": cluster})
    assert status == 202
    [job] = await app.take_jobs()
    assert (job["cluster_id"], job["target_key_url"]) == (cluster, None)


async def test_rotate_of_an_unwatched_cluster_is_404_and_queues_nothing(app):
    """Rule 11: POST rotate for a cluster nobody registered (it exists, it is CMK) is a one-line 404."""
    world = make_world(app.sim, subscriptions=1, per_subscription=1, other_key=True)
    [cluster] = world.clusters
    v2 = app.sim.create_key_version(world.vault, "cmk", emit_event=False)
    status, doc = await call("rotate", "POST", body={"clusterId": cluster, "keyUrl": world.key_url(v2)})
    assert_error(status, doc, 404, "NotWatched")
    assert "\n" not in doc["error"]["message"]
    assert await app.count() == 0
    assert puts(app.sim) == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            {"clusterId": VALID_ID, "keyUrl": "https://kv.vault.evil.example/keys/k/" + "0" * 32},
            "InvalidKeyUrl",
        ),
        ({"clusterId": VALID_ID, "keyUrl": "https://contoso-kv.vault.azure.net/keys/k"}, "InvalidKeyUrl"),
        (
            {"clusterId": VALID_ID, "keyUrl": "http://contoso-kv.vault.azure.net/keys/k/" + "0" * 32},
            "InvalidKeyUrl",
        ),
        ({"clusterId": VALID_ID, "keyUrl": 7}, "InvalidBody"),
        ({"clusterId": "/subscriptions/x"}, "InvalidClusterId"),
        ({}, "MissingClusterId"),
    ],
    ids=["outside-allowed-vaults", "versionless", "http", "not-string", "bad-cluster-id", "no-cluster-id"],
)
async def test_rotate_rejects_bad_input(app, body, code):
    """A keyUrl outside the allowed vaults (or otherwise bad) is a 400 and queues nothing."""
    status, doc = await call("rotate", "POST", body=body)
    assert_error(status, doc, 400, code)
    assert await app.count() == 0


@pytest.mark.parametrize("limit", ["0", "501", "abc", "-1", "1.5", "", "\u00b2", "\u0663"])
async def test_history_rejects_bad_limit(app, limit):
    """History with a limit that is not an integer from 1 to 500 is a 400, never a 500."""
    status, doc = await call("history", "GET", params={"clusterId": VALID_ID, "limit": limit})
    assert_error(status, doc, 400, "InvalidLimit")


async def test_history_of_unknown_cluster_is_empty(app):
    """History of a cluster never seen is 200 with an empty list."""
    cluster = VALID_ID.replace("/abc", f"/h{uuid.uuid4().hex[:10]}")
    status, doc = await call("history", "GET", params={"clusterId": cluster})
    assert (status, doc) == (200, {"clusterId": cluster, "history": []})


async def test_health(app):
    """GET health answers 200 with the storage reachable and the dry-run mode."""
    status, doc = await call("health", "GET")
    assert (status, doc) == (200, {"status": "ok", "dryRun": False})


async def test_hostile_cluster_id_is_never_logged_raw(app, caplog):
    """A clusterId carrying a newline is refused on every route and never reaches a log line raw."""
    caplog.set_level(logging.DEBUG, logger="rotation")
    caplog.set_level(logging.DEBUG, logger="function_app")
    answers = [
        await call("clusters", "POST", body={"clusterId": HOSTILE_ID}),
        await call("clusters", "DELETE", params={"clusterId": HOSTILE_ID}),
        await call("history", "GET", params={"clusterId": HOSTILE_ID}),
        await call("rotate", "POST", body={"clusterId": HOSTILE_ID}),
    ]
    for status, doc in answers:
        assert_error(status, doc, 400, "InvalidClusterId")
        assert "\n" not in doc["error"]["message"]
    # the queue function sees the same id in a forged job
    job = {"cluster_id": HOSTILE_ID, "trigger": "manual", "enqueued_at": "2026-01-01T00:00:00Z"}
    await fn("rotate_cluster")(queue_message(json.dumps(job)), context("rotate_cluster"))
    assert caplog.records  # the rejected job at least was logged
    for record in caplog.records:
        assert HOSTILE_ID not in record.getMessage()
        assert "\n" not in record.getMessage()
        assert "\n" not in TextFormatter().format(record)
        assert "\n" not in JsonFormatter().format(record)
    assert app.sim.requests == []
    assert await app.count() == 0
