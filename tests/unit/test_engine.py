"""The rules of rotation (docs/design.md, rules 1-7 and 9) on in-memory fakes: no I/O, no waiting."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from rotation.azure.arm import OperationStatus
from rotation.errors import ClusterBusy, ServiceError, TransientFailure
from rotation.outcomes import Outcome
from rotation.rotation_job import RotationRequest
from rotation.settings import RetrySettings
from rotation.write_body import build_body
from tests.helpers.fakes import (
    NOW,
    OTHER_UAMI,
    SUB,
    UAMI,
    FakeClusters,
    FakeKeys,
    cluster,
    key_url,
    key_version,
    make_rotator,
    rotate,
    transient,
)


@pytest.fixture
def arm() -> FakeClusters:
    """An empty fake ARM."""
    return FakeClusters()


@pytest.fixture
def kv() -> FakeKeys:
    """A fake vault with versions 1, 2 and 3 of the key."""
    return FakeKeys(key_version(1), key_version(2), key_version(3))


async def test_rotates_to_event_version_and_verifies(arm, kv, fake_time):
    """A cluster on version 1 moves to version 2 with one PUT, one poll and a verifying GET."""
    cid = arm.add(cluster(key=key_url(1)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    assert result.outcome is Outcome.ROTATED
    assert (result.from_version, result.to_version) == (key_url(1).version, key_url(2).version)
    assert len(arm.puts) == 1
    assert arm.gets == 2  # decide + verify
    assert result.key == "contoso-kv.vault.azure.net/cmk-docdb"
    assert result.attempts == 1


async def test_put_body_is_the_documented_shape_with_every_identity(arm, kv, fake_time):
    """Rule 5: exactly identity, location, tags and the encryption block; every identity and tag stays."""
    cid = arm.add(cluster(key=key_url(1), tags={"costCentre": "4711", "owner": "orders team"}))
    await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    _, body = arm.puts[0]
    assert body == {
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {UAMI: {}, OTHER_UAMI: {}}},
        "location": "westeurope",
        "tags": {"costCentre": "4711", "owner": "orders team"},
        "properties": {
            "encryption": {
                "customerManagedKeyEncryption": {
                    "keyEncryptionKeyIdentity": {
                        "identityType": "UserAssignedIdentity",
                        "userAssignedIdentityResourceId": UAMI,
                    },
                    "keyEncryptionKeyUrl": str(key_url(2)),
                }
            }
        },
    }


def test_body_adds_key_identity_missing_from_identity_list():
    """A key identity not listed under identity is added, never dropped."""
    body = build_body(cluster(identity_ids=(OTHER_UAMI,)), key_url(2))
    assert set(body["identity"]["userAssignedIdentities"]) == {OTHER_UAMI, UAMI}


async def test_duplicate_event_is_already_current_with_one_put(arm, kv, fake_time):
    """Rule 2: a second delivery of the same event finds the cluster current and sends no PUT."""
    cid = arm.add(cluster(key=key_url(1)))
    rotator = make_rotator(arm, kv, fake_time)
    first = await rotate(rotator, cid, key_url(2))
    second = await rotate(rotator, cid, key_url(2))
    assert (first.outcome, second.outcome) == (Outcome.ROTATED, Outcome.ALREADY_CURRENT)
    assert len(arm.puts) == 1


async def test_older_event_than_cluster_version_is_stale(arm, kv, fake_time):
    """Rule 2: never go backwards; an event for an older version than the cluster's is stale-event."""
    cid = arm.add(cluster(key=key_url(3)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    assert result.outcome is Outcome.STALE_EVENT
    assert arm.puts == []


async def test_versionless_cluster_is_left_alone(arm, kv, fake_time):
    """Rule 4: a versionless key URL needs no re-PUT."""
    cid = arm.add(cluster(key=key_url(None)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    assert result.outcome is Outcome.VERSIONLESS
    assert arm.puts == []


@pytest.mark.parametrize(
    "target",
    [
        key_url(2, name="other-key"),
        key_url(2, vault="https://other-kv.vault.azure.net"),
    ],
    ids=["other-key", "other-vault"],
)
async def test_event_for_another_key_or_vault_is_key_mismatch(arm, kv, fake_time, target):
    """Rule 1: an event never moves a cluster to another key or vault."""
    cid = arm.add(cluster(key=key_url(1)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, target)
    assert result.outcome is Outcome.KEY_MISMATCH
    assert arm.puts == []


async def test_key_name_comparison_ignores_case(arm, kv, fake_time):
    """Rule 1 compares vault host and key name case-insensitively."""
    cid = arm.add(cluster(key="https://CONTOSO-KV.vault.azure.net/keys/CMK-DOCDB/" + key_url(1).version))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    assert result.outcome is Outcome.ROTATED


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"enabled": False}, "disabled"),
        ({"not_before": NOW + timedelta(days=1)}, "not active"),
        ({"expires_on": NOW - timedelta(seconds=1)}, "expired"),
        ({"key_type": "EC", "size": None}, "key type EC"),
        ({"size": 1024}, "key size 1024"),
        ({"operations": ("encrypt", "decrypt", "unwrapKey")}, "wrapKey"),
        ({"operations": ("wrapKey",)}, "unwrapKey"),
    ],
)
async def test_unusable_target_is_refused(arm, kv, fake_time, overrides, reason):
    """Rule 3: a target version that would take the cluster offline is key-not-usable, and nothing is sent."""
    kv.add(key_version(4, **overrides))
    cid = arm.add(cluster(key=key_url(1)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(4))
    assert result.outcome is Outcome.KEY_NOT_USABLE
    assert reason in result.reason
    assert arm.puts == []


async def test_expiry_exactly_now_is_not_usable(arm, kv, fake_time):
    """Rule 3: nbf <= now < exp, so exp == now is already expired."""
    kv.add(key_version(4, expires_on=NOW))
    cid = arm.add(cluster(key=key_url(1)))
    assert (await rotate(make_rotator(arm, kv, fake_time), cid, key_url(4))).outcome is Outcome.KEY_NOT_USABLE


async def test_target_version_that_does_not_exist_is_not_usable(arm, kv, fake_time):
    """Rule 3: a forged event naming a version Key Vault does not have causes no PUT."""
    cid = arm.add(cluster(key=key_url(1)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(99))
    assert result.outcome is Outcome.KEY_NOT_USABLE
    assert arm.puts == []


async def test_without_target_moves_to_newest_usable_version(arm, kv, fake_time):
    """Manual and reconcile rotation go to the newest usable version, skipping a newer disabled one."""
    kv.add(key_version(4, enabled=False))
    cid = arm.add(cluster(key=key_url(1)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid)
    assert result.outcome is Outcome.ROTATED
    assert result.to_version == key_url(3).version


async def test_without_target_and_no_usable_version(arm, fake_time):
    """No usable version at all: key-not-usable."""
    kv = FakeKeys(key_version(1, enabled=False))
    cid = arm.add(cluster(key=key_url(1)))
    assert (await rotate(make_rotator(arm, kv, fake_time), cid)).outcome is Outcome.KEY_NOT_USABLE


async def test_service_managed_cluster_is_not_cmk(arm, kv, fake_time):
    """A cluster without a customer-managed key is not-cmk."""
    cid = arm.add(cluster(key_url=None, key_identity=None))
    object.__setattr__(arm.clusters[cid.normalized], "key_url", None)
    assert (await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))).outcome is Outcome.NOT_CMK


async def test_missing_cluster_is_cluster_not_found(arm, kv, fake_time):
    """A cluster ARM does not know is cluster-not-found, with ARM's error code."""
    from rotation.ids import parse_cluster_id

    cid = parse_cluster_id(
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.DocumentDB/mongoClusters/gone"
    )
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    assert result.outcome is Outcome.CLUSTER_NOT_FOUND
    assert result.error_code == "ResourceNotFound"


async def test_throttled_put_waits_retry_after_then_succeeds(arm, kv, fake_time):
    """Rule 6: a 429 waits the server's Retry-After, then the PUT is sent again."""
    arm.errors["put"].append(transient(429, retry_after=2.0, code="TooManyRequests"))
    cid = arm.add(cluster(key=key_url(1)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    assert result.outcome is Outcome.ROTATED
    assert result.attempts == 2
    assert fake_time.sleeps[0] == 2.0


@pytest.mark.parametrize(
    "error",
    [
        transient(409, code="Conflict"),
        transient(429, code="RetryableErrorDueToAnotherOperation"),
        transient(500),
        transient(503),
        ServiceError("reset", service="arm", status=None),
    ],
    ids=["409", "429-another-operation", "500", "503", "no-response"],
)
async def test_transient_put_errors_are_retried_with_backoff(arm, kv, fake_time, error):
    """Rule 6: 409, 5xx and connection errors are retried with a bounded, jittered wait."""
    arm.errors["put"].append(error)
    cid = arm.add(cluster(key=key_url(1)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    assert result.outcome is Outcome.ROTATED
    assert result.attempts == 2
    assert 0 <= fake_time.sleeps[0] <= 0.5


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_permanent_put_errors_are_not_retried(arm, kv, fake_time, status):
    """Rule 6: 400/401/403/404 fail at once with ARM's code and message."""
    arm.errors["put"].append(ServiceError("bad body", service="arm", status=status, code="BadRequest"))
    cid = arm.add(cluster(key=key_url(1)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    assert result.outcome is Outcome.FAILED
    assert (result.error_code, result.error_message) == ("BadRequest", "bad body")
    assert result.attempts == 1
    assert fake_time.sleeps == []


async def test_exhausted_retries_raise_for_redelivery(arm, kv, fake_time):
    """Rule 6 and 10: when tenacity gives up on a transient error the job raises, so it is redelivered."""
    for _ in range(4):
        arm.errors["put"].append(transient(503))
    cid = arm.add(cluster(key=key_url(1)))
    with pytest.raises(TransientFailure) as info:
        await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    assert info.value.attempts == 4
    assert info.value.cause.status == 503
    assert arm.puts == []


async def test_retry_total_time_is_bounded(arm, kv, fake_time):
    """Rule 6: the retry budget stops on total time as well as on attempts."""
    for _ in range(10):
        arm.errors["put"].append(transient(429, retry_after=30.0))
    cid = arm.add(cluster(key=key_url(1)))
    rotator = make_rotator(arm, kv, fake_time, retry=RetrySettings(max_attempts=50, max_seconds=60))
    with pytest.raises(TransientFailure):
        await rotate(rotator, cid, key_url(2))
    assert sum(fake_time.sleeps) <= 90


async def test_failed_operation_is_failed_with_its_error(arm, kv, fake_time):
    """A long-running operation that ends Failed gives failed with the operation's error code."""
    arm.op_result = OperationStatus(
        status="Failed", retry_after=0, error_code="KeyVaultAccessDenied", error_message="no access"
    )
    cid = arm.add(cluster(key=key_url(1)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    assert result.outcome is Outcome.FAILED
    assert (result.error_code, result.error_message) == ("KeyVaultAccessDenied", "no access")


async def test_verification_mismatch_is_failed(arm, kv, fake_time):
    """Rule 9: an operation that succeeds but leaves the old key URL is failed."""
    arm.ignore_key_update = True
    cid = arm.add(cluster(key=key_url(1)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    assert result.outcome is Outcome.FAILED
    assert "verification" in result.reason


async def test_dry_run_sends_no_put_and_returns_the_body(arm, kv, fake_time):
    """Dry run decides as usual and returns the body it would send."""
    cid = arm.add(cluster(key=key_url(1)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2), dry_run=True)
    assert result.outcome is Outcome.DRY_RUN
    assert arm.puts == []
    assert result.body is not None
    assert result.body["properties"]["encryption"]["customerManagedKeyEncryption"][
        "keyEncryptionKeyUrl"
    ] == str(key_url(2))


async def test_polls_at_the_servers_pace(arm, kv, fake_time):
    """Polling waits the operation's Retry-After between polls."""
    arm.op_polls = 3
    cid = arm.add(cluster(key=key_url(1)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    assert result.outcome is Outcome.ROTATED
    assert arm.polls == 3
    assert fake_time.sleeps == [0.0, 1.0, 1.0]


async def test_operation_over_budget_is_pending_then_resumed_without_second_put(arm, kv, fake_time):
    """Rule 7: past the polling budget the job is pending; resuming polls the operation, never PUTs."""
    arm.op_polls = 10
    cid = arm.add(cluster(key=key_url(1)))
    accepted: list[str] = []

    async def on_accepted(url: str, target: object) -> None:
        accepted.append(url)

    rotator = make_rotator(arm, kv, fake_time, poll_budget_seconds=3.0)
    first = await rotator.rotate(RotationRequest(cluster_id=cid, target=key_url(2)), on_accepted=on_accepted)
    assert first.outcome is Outcome.PENDING
    assert first.operation_url == accepted[0]
    resumed = make_rotator(arm, kv, fake_time, poll_budget_seconds=60.0)
    second = await resumed.rotate(
        RotationRequest(cluster_id=cid, target=key_url(2), operation_url=first.operation_url, trigger="check")
    )
    assert second.outcome is Outcome.ROTATED
    assert len(arm.puts) == 1


async def test_operation_url_is_reported_before_polling(arm, kv, fake_time):
    """Rule 7: the accepted operation's URL reaches the caller before the first poll."""
    cid = arm.add(cluster(key=key_url(1)))
    seen: list[int] = []

    async def on_accepted(url: str, target: object) -> None:
        seen.append(arm.polls)

    await make_rotator(arm, kv, fake_time).rotate(
        RotationRequest(cluster_id=cid, target=key_url(2)), on_accepted=on_accepted
    )
    assert seen == [0]


async def test_transient_get_is_retried(arm, kv, fake_time):
    """Reads go through the same retry layer: a 503 on GET is retried."""
    arm.errors["get"].append(transient(503))
    cid = arm.add(cluster(key=key_url(1)))
    assert (await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))).outcome is Outcome.ROTATED


async def test_transient_key_vault_read_is_retried(arm, kv, fake_time):
    """Key Vault reads are retried on transient errors too."""
    kv.errors.append(ServiceError("busy", service="keyvault", status=429, retry_after=1.0))
    cid = arm.add(cluster(key=key_url(1)))
    assert (await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))).outcome is Outcome.ROTATED
    assert 1.0 in fake_time.sleeps


async def test_guard_runs_before_each_put_and_can_stop_it(arm, kv, fake_time):
    """Rule 8: the caller's guard runs before every PUT attempt; when it raises, no PUT is sent."""
    from rotation.rotation_job import WriteFlag

    class Lost(Exception):
        pass

    calls: list[int] = []

    async def guard() -> None:
        calls.append(len(arm.puts))
        if len(calls) == 2:
            raise Lost

    arm.errors["put"].append(transient(503))  # first attempt fails before reaching the fake's log
    cid = arm.add(cluster(key=key_url(1)))
    with pytest.raises(Lost):
        await make_rotator(arm, kv, fake_time).rotate(
            RotationRequest(cluster_id=cid, target=key_url(2)), write_flag=WriteFlag(guard=guard)
        )
    assert calls == [0, 0]
    assert arm.puts == []


# -- operations already running on the cluster (rule 2 against a concurrent operation) ------------------


async def test_an_operation_running_on_the_cluster_defers_the_job(arm, kv, fake_time):
    """An operation not ours to resume runs on the cluster: decide after it ends, never PUT over it."""
    cid = arm.add(cluster(key=key_url(1), provisioning_state="Updating"))
    with pytest.raises(ClusterBusy, match="provisioningState Updating"):
        await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    assert arm.puts == []


async def test_a_put_retried_after_another_operation_ended_is_not_sent(arm, kv, fake_time):
    """409 on the PUT, and the operation behind it moved the cluster to a newer version: no retry PUT."""
    cid = arm.add(cluster(key=key_url(1)))
    real_put = arm.put

    async def conflicting_put(cluster_id, body):
        if not arm.puts and arm.gets == 1:  # the first attempt: the other operation ends meanwhile
            arm.clusters[cid.normalized] = replace(arm.clusters[cid.normalized], key_url=str(key_url(3)))
            raise transient(409, code="Conflict")
        return await real_put(cluster_id, body)

    arm.put = conflicting_put
    with pytest.raises(ClusterBusy, match="moved to"):
        await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    assert arm.puts == []
    assert arm.gets == 2  # the decision's GET, and the GET before the retry


async def test_a_put_whose_answer_was_lost_while_its_operation_runs_defers(arm, kv, fake_time):
    """503 after our PUT started an operation: the GET before the retry sees it running and defers."""
    cid = arm.add(cluster(key=key_url(1)))

    async def started_then_lost(cluster_id, body):
        arm.clusters[cid.normalized] = replace(arm.clusters[cid.normalized], provisioning_state="Updating")
        raise transient(503)

    arm.put = started_then_lost
    with pytest.raises(ClusterBusy, match="provisioningState Updating"):
        await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))


async def test_a_put_retried_on_an_unchanged_cluster_is_sent_again(arm, kv, fake_time):
    """409 and the cluster is as it was: the same body goes again after one more GET."""
    arm.errors["put"].append(transient(409, code="Conflict"))
    cid = arm.add(cluster(key=key_url(1)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(2))
    assert result.outcome is Outcome.ROTATED
    assert len(arm.puts) == 1
    assert arm.gets == 3  # decision, before the retry, verification


async def test_the_key_vault_reads_start_with_the_clusters_get(arm, kv, fake_time):
    """An event job asks for its target and the registered version before the GET (they are read meanwhile)."""
    cid = arm.add(cluster(key=key_url(1)))
    asked_before_get: list[object] = []
    get = arm.get

    async def get_after_noting(cluster_id):
        asked_before_get.append(list(kv.ahead))
        return await get(cluster_id)

    arm.get = get_after_noting
    result = await rotate(
        make_rotator(arm, kv, fake_time), cid, key_url(2), registered_version=key_url(1).version
    )
    assert result.outcome is Outcome.ROTATED
    assert asked_before_get[0] == [key_url(2), key_url(1)]


def test_what_a_job_reads_ahead():
    """Only versions the job will read: none without a target, when resuming, or when already on it."""
    from rotation.ids import DEFAULT_VAULT_SUFFIXES
    from rotation.rotation_job import versions_to_read_ahead

    cid = FakeClusters().add(cluster(key=key_url(1)))

    def ahead(**kw):
        return versions_to_read_ahead(RotationRequest(cluster_id=cid, **kw), DEFAULT_VAULT_SUFFIXES)

    v1 = key_url(1).version
    assert ahead(target=key_url(2), registered_version=v1) == [key_url(2), key_url(1)]
    assert ahead(target=key_url(2)) == [key_url(2)]  # not registered (the CLI's rotate)
    assert ahead(target=key_url(2), registered_version="not/a version?x=1") == [key_url(2)]  # a hint only
    assert ahead(target=key_url(2), registered_version=key_url(2).version) == []  # already current
    assert ahead(registered_version=v1) == []  # reconcile: the newest version is listed, not read ahead
    assert ahead(target=key_url(2), registered_version=v1, operation_url="https://x/op") == []  # resuming
