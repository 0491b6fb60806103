"""The watch registry, claims and history against a real Azurite (rotation/store/)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableServiceClient

from rotation.errors import ServiceError
from rotation.ids import parse_cluster_id
from rotation.outcomes import Outcome, RotationResult
from rotation.store.claims import Claim
from rotation.store.registry import Registry
from rotation.store.tables import CLUSTER_PARTITION, cluster_row_key, key_partition
from rotation.store.watch import WatchedCluster, WatchState, _watch_entity
from tests.helpers.azurite import unique_name

SUB = "22222222-2222-2222-2222-222222222222"
VAULT = "contoso-kv.vault.azure.net"
OTHER_VAULT = "fabrikam-kv.vault.azure.net"
KEY = "cmk-docdb"
UAMI = f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-docdb-cmk"
V1 = "1" * 32
V2 = "2" * 32
V3 = "3" * 32
OP = "https://management.azure.com/subscriptions/x/providers/Microsoft.DocumentDB/locations/westeurope/operationsStatus/op1?api-version=2025-07-01-preview"


def cid(name: str = "orders-prod", *, rg: str = "rg-data"):
    """A mongoClusters id in the test subscription."""
    return parse_cluster_id(
        f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.DocumentDB/mongoClusters/{name}"
    )


@pytest.fixture
async def registry(azurite):
    """A Registry on tables of its own in Azurite."""
    tables = TableServiceClient.from_connection_string(azurite.connection_string)
    reg = Registry(tables, watch_table=unique_name("watch"), history_table=unique_name("hist"))
    yield reg
    await reg.close()


async def register(reg: Registry, name: str = "orders-prod", **overrides) -> WatchedCluster:
    """Watch a cluster of the test vault and key, ``overrides`` changing fields."""
    fields = {
        "cluster_id": cid(name),
        "vault_host": VAULT,
        "key_name": KEY,
        "current_version": V1,
        "identity": UAMI,
        "owner": "team-data",
    }
    fields.update(overrides)
    return await reg.watched.upsert(**fields)


def not_written(cluster_id, *, owner: str) -> Claim:
    """A claim handle this process never wrote (no ETag): what ``owner`` would release without holding it."""
    return Claim(cluster_id, owner, ttl=600.0, etag=None, key_partition=None, asserted_at=0.0)


def result(outcome: Outcome, name: str = "orders-prod", **fields) -> RotationResult:
    """A rotation result of ``outcome`` for a cluster of the test key."""
    base = {"reason": f"because {outcome.value}", "key": f"{VAULT}/{KEY}"}
    base.update(fields)
    return RotationResult(cluster_id=str(cid(name)), outcome=outcome, **base)


# -- registration ------------------------------------------------------------------------------------


async def test_upsert_then_get_round_trips_every_field(registry):
    """A registered cluster reads back with the id's original casing, its key, version, identity and owner."""
    mixed = parse_cluster_id(
        f"/subscriptions/{SUB}/resourceGroups/RG-Data/providers/Microsoft.DocumentDB/mongoClusters/Orders-Prod"
    )
    stored = await registry.watched.upsert(
        cluster_id=mixed, vault_host=VAULT, key_name=KEY, current_version=V1, identity=UAMI, owner="team-data"
    )
    got = await registry.watched.get(cid("orders-prod", rg="rg-data"))  # ids are case-insensitive
    assert got is not None
    assert got.cluster_id == str(mixed)
    assert (got.subscription, got.vault_host, got.key_name, got.key) == (SUB, VAULT, KEY, f"{VAULT}/{KEY}")
    assert (got.current_version, got.identity, got.owner, got.state) == (V1, UAMI, "team-data", "watching")
    assert got.last_outcome is None
    assert got.registered_at.tzinfo is not None
    assert got.registered_at == stored.registered_at
    assert got.etag


async def test_get_of_an_unregistered_cluster_is_none(registry):
    """A cluster never registered is not watched."""
    assert await registry.watched.get(cid("nobody")) is None


async def test_versionless_cluster_stores_no_version(registry):
    """A versionless cluster keeps current_version None."""
    await register(registry, current_version=None)
    got = await registry.watched.get(cid())
    assert got is not None
    assert got.current_version is None
    assert got.key_url == f"https://{VAULT}/keys/{KEY}"


async def test_reregister_updates_fields_and_keeps_registered_at_and_last_outcome(registry):
    """Registering again is idempotent: new owner and version, same registration time and last outcome."""
    first = await register(registry)
    await registry.record(
        result(Outcome.ROTATED, from_version=V1, to_version=V2),
        trigger="event",
        event_id="e1",
        invocation_id=None,
    )
    again = await register(registry, current_version=V2, owner="team-other")
    got = await registry.watched.get(cid())
    assert got is not None
    assert got.registered_at == first.registered_at == again.registered_at
    assert got.owner == "team-other"
    assert got.last_outcome == "rotated"
    assert got.updated_at >= first.updated_at
    assert [c.cluster_id async for c in registry.watched.iterate()] == [str(cid())]


async def test_key_change_moves_the_row_to_the_new_key_partition(registry):
    """A re-registration on another key leaves the old key's partition and appears under the new one."""
    first = await register(registry)
    await register(registry, vault_host=OTHER_VAULT, key_name="cmk-2", current_version=V3)
    assert await registry.watched.for_key(VAULT, KEY) == []
    moved = await registry.watched.for_key(OTHER_VAULT, "cmk-2")
    assert [c.cluster_id for c in moved] == [str(cid())]
    got = await registry.watched.get(cid())
    assert got is not None
    assert (got.vault_host, got.key_name, got.current_version) == (OTHER_VAULT, "cmk-2", V3)
    assert got.registered_at == first.registered_at
    assert len([c async for c in registry.watched.iterate()]) == 1


async def test_remove_unwatches_and_reports_whether_it_was_watched(registry):
    """Removing a watched cluster returns True once, then False; it leaves get, iterate and for_key."""
    await register(registry)
    assert await registry.watched.remove(cid()) is True
    assert await registry.watched.get(cid()) is None
    assert await registry.watched.for_key(VAULT, KEY) == []
    assert [c async for c in registry.watched.iterate()] == []
    assert await registry.watched.remove(cid()) is False
    assert await registry.watched.remove(cid("never")) is False


async def test_remove_then_register_again_watches_again(registry):
    """A removed cluster can be registered again."""
    await register(registry)
    await registry.watched.remove(cid())
    await register(registry)
    assert await registry.watched.get(cid()) is not None


async def test_list_pages_through_every_watched_cluster_and_skips_claim_rows(registry):
    """list() yields every watched cluster across keys and pages, and never a claim-only row."""
    names = [f"cluster-{i:02d}" for i in range(7)]
    for i, name in enumerate(names):
        await register(registry, name, key_name=KEY if i % 2 else "cmk-other")
    assert await registry.claims.take(cid("unwatched"), owner="w1")
    listed = [c.cluster_id async for c in registry.watched.iterate(page_size=2)]
    assert sorted(listed) == sorted(str(cid(n)) for n in names)


# -- for_key -----------------------------------------------------------------------------------------


async def test_for_key_returns_only_that_keys_clusters_case_insensitively(registry):
    """for_key matches vault host and key name in any casing and returns no other key's clusters."""
    await register(registry, "a-cluster")
    await register(registry, "b-cluster")
    await register(registry, "c-cluster", key_name="cmk-other")
    await register(registry, "d-cluster", vault_host=OTHER_VAULT)
    await register(registry, "e-cluster", key_name="cmk-docdb-2")  # a name with the same prefix
    found = await registry.watched.for_key(VAULT.upper(), KEY.upper())
    assert sorted(c.cluster_id for c in found) == [str(cid("a-cluster")), str(cid("b-cluster"))]
    assert all(c.etag for c in found)


async def test_for_key_over_1000_rows_is_one_single_partition_request(azurite):
    """1000 clusters on one key (and 200 on another) come back from one request filtered on one PartitionKey."""
    urls: list[str] = []
    tables = TableServiceClient.from_connection_string(
        azurite.connection_string, raw_request_hook=lambda req: urls.append(req.http_request.url)
    )
    watch = unique_name("watch")
    reg = Registry(tables, watch_table=watch, history_table=unique_name("hist"))
    try:
        await reg.watched.get(cid("warm-up"))  # creates the tables
        now = datetime.now(UTC)
        table = tables.get_table_client(watch)

        def row(i: int, key_name: str) -> dict:
            return _watch_entity(
                WatchedCluster(
                    cluster_id=str(cid(f"c-{key_name}-{i:04d}")),
                    subscription=SUB,
                    vault_host=VAULT,
                    key_name=key_name,
                    current_version=V1,
                    identity=UAMI,
                    owner=None,
                    state="watching",
                    last_outcome=None,
                    last_reason=None,
                    last_outcome_at=None,
                    registered_at=now,
                    updated_at=now,
                    operation_url=None,
                    target_key_url=None,
                )
            )

        async def seed(count: int, key_name: str) -> None:
            rows = [row(i, key_name) for i in range(count)]
            for start in range(0, count, 100):
                await table.submit_transaction([("upsert", r) for r in rows[start : start + 100]])

        try:
            await seed(1000, KEY)
            await seed(200, "cmk-other")
        finally:
            await table.close()
        urls.clear()
        started = asyncio.get_running_loop().time()
        found = await reg.watched.for_key(VAULT, KEY)
        elapsed = asyncio.get_running_loop().time() - started
        assert len(found) == 1000
        assert {c.key_name for c in found} == {KEY}
        assert len(urls) == 1
        assert "PartitionKey%20eq" in urls[0] or "PartitionKey eq" in urls[0]
        assert elapsed < 5.0  # generous; the measured figure is reported, not asserted
        urls.clear()
        members = await reg.watched.for_key(VAULT, KEY)  # what an event's fan-out reads
        assert sorted(m.cluster_id for m in members) == sorted(c.cluster_id for c in found)
        assert {m.subscription for m in members} == {SUB}
        assert len(urls) == 1
        assert "$select=ClusterId%2CSubscription" in urls[0]
    finally:
        await reg.close()


# -- history and outcomes ----------------------------------------------------------------------------


async def test_history_is_newest_first_and_append_only(registry):
    """Every record() appends one entry (even identical ones); history lists them newest first."""
    await register(registry)
    outcomes = [
        Outcome.FAILED,
        Outcome.PENDING,
        Outcome.ROTATED,
        Outcome.ALREADY_CURRENT,
        Outcome.ALREADY_CURRENT,
    ]
    for i, outcome in enumerate(outcomes):
        await registry.record(
            result(outcome, to_version=V2, attempts=i, duration_s=0.5 + i),
            trigger="event",
            event_id=f"ev-{i}",
            invocation_id=f"inv-{i}",
        )
    entries = await registry.history.recent(cid())
    assert [e.event_id for e in entries] == ["ev-4", "ev-3", "ev-2", "ev-1", "ev-0"]
    assert [e.outcome for e in entries] == [o.value for o in reversed(outcomes)]
    assert all(a.at >= b.at for a, b in itertools.pairwise(entries))
    assert entries[0].attempts == 4
    assert entries[0].duration_s == 4.5
    assert entries[0].to_dict()["at"].endswith("+00:00")
    assert [e.event_id for e in await registry.history.recent(cid(), limit=2)] == ["ev-4", "ev-3"]


async def test_history_of_an_unwatched_cluster_is_kept(registry):
    """A manual rotation of an unwatched cluster is still in its history, and no watch row appears."""
    await registry.record(
        result(Outcome.ROTATED, "manual-one", to_version=V2),
        trigger="manual",
        event_id=None,
        invocation_id=None,
    )
    entries = await registry.history.recent(cid("manual-one"))
    assert [(e.outcome, e.trigger, e.to_version) for e in entries] == [("rotated", "manual", V2)]
    assert await registry.watched.get(cid("manual-one")) is None


async def test_history_entry_keeps_every_field(registry):
    """A failed result's error code, message, request and correlation ids and operation URL are in its history."""
    await registry.record(
        result(
            Outcome.FAILED,
            from_version=V1,
            to_version=V2,
            attempts=3,
            duration_s=12.25,
            error_code="InternalServerError",
            error_message="boom",
            request_id="req-1",
            correlation_id="corr-1",
            operation_url=OP,
            collateral_changes=("properties.highAvailability.targetMode", "tags['cost centre']"),
        ),
        trigger="reconcile",
        event_id=None,
        invocation_id="inv-9",
        dequeue_count=3,
    )
    (entry,) = await registry.history.recent(cid())
    assert entry.to_dict() == {
        "cluster_id": str(cid()),
        "at": entry.at.isoformat(),
        "outcome": "failed",
        "reason": "because failed",
        "trigger": "reconcile",
        "event_id": None,
        "invocation_id": "inv-9",
        "from_version": V1,
        "to_version": V2,
        "key": f"{VAULT}/{KEY}",
        "attempts": 3,
        "duration_s": 12.25,
        "error_code": "InternalServerError",
        "error_message": "boom",
        "request_id": "req-1",
        "correlation_id": "corr-1",
        "operation_url": OP,
        "dequeue_count": 3,
        "collateral_changes": ["properties.highAvailability.targetMode", "tags['cost centre']"],
    }


async def test_record_updates_last_outcome_and_current_version(registry):
    """A rotated result moves current_version to the result's to_version; a failure keeps it and records the outcome."""
    await register(registry)
    before = datetime.now(UTC) - timedelta(seconds=1)
    await registry.record(
        result(Outcome.ROTATED, from_version=V1, to_version=V2),
        trigger="event",
        event_id="e",
        invocation_id=None,
    )
    got = await registry.watched.get(cid())
    assert got is not None
    assert (got.current_version, got.last_outcome, got.last_reason, got.state) == (
        V2,
        "rotated",
        "because rotated",
        "watching",
    )
    assert got.last_outcome_at is not None
    assert got.last_outcome_at > before
    await registry.record(
        result(Outcome.FAILED, to_version=V3), trigger="event", event_id="e2", invocation_id=None
    )
    got = await registry.watched.get(cid())
    assert got is not None
    assert (got.current_version, got.last_outcome) == (V2, "failed")
    await registry.record(
        result(Outcome.ALREADY_CURRENT, to_version=V3), trigger="reconcile", event_id=None, invocation_id=None
    )
    got = await registry.watched.get(cid())
    assert got is not None
    assert (got.current_version, got.last_outcome) == (V3, "already-current")


async def test_set_operation_then_pending_then_rotated_clears_the_operation(registry):
    """An accepted operation is recorded before polling, survives a pending result, and is cleared by rotated."""
    await register(registry)
    target = f"https://{VAULT}/keys/{KEY}/{V2}"
    await registry.watched.set_operation(cid(), operation_url=OP, target_key_url=target)
    got = await registry.watched.get(cid())
    assert got is not None
    assert (got.state, got.operation_url, got.target_key_url) == ("pending", OP, target)
    await registry.record(
        result(Outcome.PENDING, to_version=V2), trigger="event", event_id="e", invocation_id=None
    )
    got = await registry.watched.get(cid())
    assert got is not None
    assert (got.state, got.operation_url, got.target_key_url, got.last_outcome) == (
        "pending",
        OP,
        target,
        "pending",
    )
    assert got.current_version == V1
    await registry.record(
        result(Outcome.ROTATED, to_version=V2), trigger="check", event_id="e", invocation_id=None
    )
    got = await registry.watched.get(cid())
    assert got is not None
    assert (got.state, got.operation_url, got.target_key_url) == ("watching", None, None)
    assert (got.current_version, got.last_outcome) == (V2, "rotated")


async def test_set_operation_on_an_unwatched_cluster_writes_nothing(registry):
    """set_operation for a cluster with no watch row neither fails nor registers it."""
    await registry.watched.set_operation(
        cid("loose"), operation_url=OP, target_key_url=f"https://{VAULT}/keys/{KEY}/{V2}"
    )
    assert await registry.watched.get(cid("loose")) is None


async def test_reregister_keeps_an_operation_in_flight(registry):
    """Re-registering a pending cluster keeps its operation URL, so it is still resumed (rule 7)."""
    await register(registry)
    await registry.watched.set_operation(
        cid(), operation_url=OP, target_key_url=f"https://{VAULT}/keys/{KEY}/{V2}"
    )
    await register(registry, owner="someone")
    got = await registry.watched.get(cid())
    assert got is not None
    assert (got.state, got.operation_url) == ("pending", OP)


async def test_a_state_or_outcome_this_version_does_not_know_reads_as_absent_and_is_logged_once(
    registry, caplog
):
    """Unknown stored State/LastOutcome texts read as watching / no outcome; the row stays; each logged once."""
    await register(registry)
    await register(registry, "other-cluster")
    state, outcome = unique_name("paused"), unique_name("quarantined")
    watch = await registry._tables.watch()  # to write what a newer version would store
    for name in ("orders-prod", "other-cluster"):
        await watch.update_entity(
            {
                "PartitionKey": key_partition(VAULT, KEY),
                "RowKey": cluster_row_key(cid(name)),
                "State": state,
                "LastOutcome": outcome,
            },
            mode=UpdateMode.MERGE,
        )
    caplog.set_level("WARNING", logger="rotation.store.watch")
    got = await registry.watched.get(cid())
    assert got is not None
    assert (got.state, got.last_outcome, got.current_version) == (WatchState.WATCHING, None, V1)
    listed = [c async for c in registry.watched.iterate()]
    assert sorted(c.cluster_id for c in listed) == sorted([str(cid()), str(cid("other-cluster"))])
    assert all((c.state, c.last_outcome) == (WatchState.WATCHING, None) for c in listed)
    logged = [r for r in caplog.records if r.getMessage() == "rotation.watch_row_unknown_value"]
    assert sorted((r.column, r.value) for r in logged) == [("LastOutcome", outcome), ("State", state)]


# -- claims (rule 8) ---------------------------------------------------------------------------------


async def test_second_owner_is_refused_until_release(registry):
    """A live claim refuses another owner, is re-entrant for its owner, and release frees it."""
    await register(registry)
    assert await registry.claims.take(cid(), owner="w1") is not None
    assert await registry.claims.take(cid(), owner="w2") is None
    again = await registry.claims.take(cid(), owner="w1")
    assert again is not None
    await registry.claims.release(again)
    assert await registry.claims.take(cid(), owner="w2") is not None


async def test_expired_claim_lapses(registry):
    """A claim past its ttl (a dead worker) no longer holds the cluster."""
    await register(registry)
    # The TTL counts from before the claim's own two round trips: 1 s leaves a loaded machine room.
    assert await registry.claims.take(cid(), owner="dead", ttl=1.0) is not None
    assert await registry.claims.take(cid(), owner="w2") is None
    await asyncio.sleep(1.3)
    assert await registry.claims.take(cid(), owner="w2") is not None


async def test_release_by_a_non_owner_does_nothing(registry):
    """release() by someone else leaves the claim in place."""
    assert await registry.claims.take(cid(), owner="w1") is not None
    await registry.claims.release(not_written(cid(), owner="w2"))
    assert await registry.claims.take(cid(), owner="w2") is None
    await registry.claims.release(not_written(cid("never-claimed"), owner="w2"))  # no row: nothing to do


@pytest.mark.parametrize("watched", [True, False])
async def test_concurrent_claims_have_exactly_one_winner(registry, watched):
    """Racing claims on a watched or unwatched cluster: exactly one owner wins each round."""
    if watched:
        await register(registry)
    for round_ in range(5):
        owners = [f"r{round_}-w{i}" for i in range(8)]
        taken = await asyncio.gather(*(registry.claims.take(cid(), owner=o) for o in owners))
        wins = [claim is not None for claim in taken]
        assert sum(wins) == 1, wins
        winner = taken[wins.index(True)]
        assert winner is not None
        await registry.claims.release(winner)


async def test_claims_do_not_disturb_the_watch_row(registry):
    """Claiming and releasing leave the registration intact, and record() works while claimed."""
    await register(registry)
    claim = await registry.claims.take(cid(), owner="w1")
    assert claim
    await registry.record(
        result(Outcome.ROTATED, to_version=V2), trigger="event", event_id="e", invocation_id=None
    )
    await registry.claims.release(claim)
    got = await registry.watched.get(cid())
    assert got is not None
    assert (got.current_version, got.owner) == (V2, "team-data")


async def test_unregister_keeps_a_live_claim(registry):
    """Removing a cluster does not drop a claim a worker still holds."""
    await register(registry)
    assert await registry.claims.take(cid(), owner="w1")
    await registry.watched.remove(cid())
    assert await registry.claims.take(cid(), owner="w2") is None


# -- claim handles: one request per renewal, release and row write -----------------------------------


@pytest.fixture
async def counted(azurite):
    """A registry whose table requests are counted (method, partition of the URL)."""
    sent: list[tuple[str, str]] = []

    def hook(request) -> None:
        sent.append((request.http_request.method, request.http_request.url))

    tables = TableServiceClient.from_connection_string(azurite.connection_string, raw_request_hook=hook)
    reg = Registry(tables, watch_table=unique_name("watch"), history_table=unique_name("hist"))
    await reg.watched.get(cid("warm-up"))  # creates the tables
    sent.clear()
    yield reg, sent
    await reg.close()


async def test_a_job_s_registry_traffic_is_seven_requests(counted):
    """take, watch row, set_operation, history, record, release: 7 requests (15 with plain reads)."""
    reg, sent = counted
    await register(reg)
    sent.clear()
    claim = await reg.claims.take(cid(), owner="w1", ttl=60)
    assert claim is not None
    assert claim.key_partition == key_partition(VAULT, KEY)
    watched = await reg.watched.get_claimed(claim)
    assert watched is not None
    assert watched.current_version == V1
    watched = await reg.watched.set_operation(
        cid(), operation_url=OP, target_key_url=f"https://{VAULT}/keys/{KEY}/{V2}", known=watched
    )
    assert watched is not None
    assert watched.state == "pending"
    await reg.record(
        result(Outcome.ROTATED, to_version=V2),
        trigger="event",
        event_id="e",
        invocation_id=None,
        known=watched,
    )
    await reg.claims.release(claim)
    assert [m for m, _ in sent] == [
        "GET",
        "PATCH",
        "GET",
        "PUT",
        "POST",
        "PUT",
        "PATCH",
    ]  # MERGE goes as PATCH
    got = await reg.watched.get(cid())
    assert got is not None
    assert (got.current_version, got.state, got.operation_url) == (V2, "watching", None)
    assert await reg.claims.take(cid(), owner="w2", ttl=60)  # released


async def test_a_stale_known_row_costs_one_failed_write_and_loses_nothing(counted):
    """A re-registration between the read and the write: the write reads again and keeps the new owner."""
    reg, sent = counted
    await register(reg)
    claim = await reg.claims.take(cid(), owner="w1", ttl=60)
    assert claim is not None
    known = await reg.watched.get_claimed(claim)
    await register(reg, owner="team-payments")  # changes the row's ETag
    sent.clear()
    written = await reg.record(
        result(Outcome.ROTATED, to_version=V2), trigger="event", event_id="e", invocation_id=None, known=known
    )
    assert written is not None
    assert (written.owner, written.current_version) == ("team-payments", V2)
    assert [m for m, _ in sent] == [
        "POST",
        "PUT",
        "GET",
        "GET",
        "PUT",
    ]  # history, 412, cluster row, watch row, write
    got = await reg.watched.get(cid())
    assert got is not None
    assert (got.owner, got.current_version) == ("team-payments", V2)


async def test_renew_is_one_write_and_survives_a_pointer_change(counted):
    """Renewing after a registration rewrote the cluster row reads it once and keeps the claim."""
    reg, sent = counted
    await register(reg)
    claim = await reg.claims.take(cid(), owner="w1", ttl=60)
    assert claim is not None
    sent.clear()
    assert await reg.claims.renew(claim)
    assert [m for m, _ in sent] == ["PATCH"]
    await register(reg, key_name="cmk-new")  # moves the watch row and rewrites the pointer
    assert await reg.claims.renew(claim)
    assert claim.key_partition == key_partition(VAULT, "cmk-new")
    assert await reg.claims.take(cid(), owner="w2") is None  # still w1's


async def test_renew_fails_once_another_owner_took_the_lapsed_claim(registry):
    """A claim that lapsed and was taken cannot be renewed, and its release leaves the new claim alone."""
    await register(registry)
    claim = await registry.claims.take(cid(), owner="slow", ttl=0.2)
    assert claim is not None
    await asyncio.sleep(0.4)
    assert await registry.claims.take(cid(), owner="w2", ttl=60)
    assert await registry.claims.renew(claim) is False
    await registry.claims.release(claim)
    assert await registry.claims.take(cid(), owner="w3") is None  # w2 still holds it


async def test_release_claim_after_a_pointer_change_still_releases(registry):
    """Releasing a claim whose ETag is stale (a registration wrote the row) reads it and clears our claim."""
    await register(registry)
    claim = await registry.claims.take(cid(), owner="w1", ttl=60)
    assert claim is not None
    await registry.watched.remove(cid())  # rewrites the cluster row's pointer
    await registry.claims.release(claim)
    assert await registry.claims.take(cid(), owner="w2") is not None


def test_a_claim_is_fresh_for_a_quarter_of_its_ttl():
    """Within ttl/4 of its write no other worker can have taken it; past that it must be renewed."""
    claim = Claim(cid(), "w1", ttl=900.0, etag="e", key_partition=None, asserted_at=1000.0)
    assert claim.fresh(now=1000.0)
    assert claim.fresh(now=1224.9)
    assert not claim.fresh(now=1225.0)
    assert not claim.fresh(now=999.0)  # a clock that went backwards proves nothing


# -- keys and failures -------------------------------------------------------------------------------


def test_table_keys_contain_no_forbidden_characters():
    """Partition and row keys replace '/' with '|' and are lower-case; the cluster partition is not a key identity."""
    row = cluster_row_key(cid("Orders-Prod", rg="RG"))
    assert (
        row
        == f"|subscriptions|{SUB}|resourcegroups|rg|providers|microsoft.documentdb|mongoclusters|orders-prod"
    )
    assert not any(ch in row for ch in "/\\#?")
    assert key_partition("Contoso-KV.vault.azure.net", "CMK") == "contoso-kv.vault.azure.net|cmk"
    assert "|" not in CLUSTER_PARTITION


async def test_unreachable_storage_raises_a_transient_service_error():
    """Storage that cannot be reached raises ServiceError(service='storage', transient), never returns None."""
    tables = TableServiceClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;",
        retry_total=0,
    )
    reg = Registry(tables)
    try:
        with pytest.raises(ServiceError) as caught:
            await reg.watched.get(cid())
    finally:
        await reg.close()
    assert caught.value.service == "storage"
    assert caught.value.status is None
    assert caught.value.transient
    assert isinstance(caught.value.__cause__, ServiceRequestError)
