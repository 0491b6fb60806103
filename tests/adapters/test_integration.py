"""The real adapters (ARM pipeline, KeyClient, DefaultAzureCredential) against the simulator over TLS.

Everything is reached through HTTPS_PROXY, SSL_CERT_FILE and the managed-identity endpoint, as in Azure.
Assertions about what was sent are read from the simulator's request log, never from the rotator's word.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from azsim.faults import Fault
from azsim.simulator import Simulator
from rotation.errors import TransientFailure
from rotation.ids import parse_cluster_id, parse_key_url
from rotation.outcomes import Outcome
from rotation.rotation_job import RotationRequest
from rotation.service.runtime import Runtime
from rotation.settings import RetrySettings, Settings
from tests.helpers.world import World, make_world

FAST_RETRY = RetrySettings(max_attempts=5, max_seconds=30, initial_wait=0.05, max_wait=0.2)


@pytest.fixture
def world(sim: Simulator) -> World:
    """A vault with key ``cmk``, the CMK cluster ``orders-prod`` on v1 with its key identity and ``id-app``."""
    return make_world(sim, name="orders-prod", other_identity="id-app", attach_other_identity=True)


@pytest.fixture
async def runtime(sim: Simulator):
    """A runtime with fast retries, closed after the test."""
    rt = Runtime.create(Settings(retry=FAST_RETRY, poll_budget_seconds=30))
    yield rt
    await rt.close()


async def rotate(rt: Runtime, world: World, target: str | None = None, **kw: Any):
    """Rotate the world's cluster (to ``target`` when given) with ``rt``."""
    request = RotationRequest(
        cluster_id=parse_cluster_id(world.cluster_id),
        target=parse_key_url(target) if target else None,
        **kw,
    )
    return await rt.rotator.rotate(request)


async def test_rotates_and_sends_the_documented_body(world, runtime):
    """A new version is PUT with the documented body (both identities kept), polled, and verified."""
    v2 = world.new_version()
    result = await rotate(runtime, world, world.key_url(v2))
    assert result.outcome is Outcome.ROTATED, result.reason
    assert world.key_of() == world.key_url(v2)
    puts = world.puts()
    assert len(puts) == 1
    assert puts[0].body == {
        "identity": {
            "type": "UserAssigned",
            "userAssignedIdentities": {world.identity: {}, world.other_identity: {}},
        },
        "location": "westeurope",
        "tags": {},
        "properties": {
            "encryption": {
                "customerManagedKeyEncryption": {
                    "keyEncryptionKeyIdentity": {
                        "identityType": "UserAssignedIdentity",
                        "userAssignedIdentityResourceId": world.identity,
                    },
                    "keyEncryptionKeyUrl": world.key_url(v2),
                }
            }
        },
    }
    gets = [r for r in world.sim.requests if r.service == "arm" and r.method == "GET"]
    assert any("/mongoClusterAzureAsyncOperation/" in r.path for r in gets)
    assert gets[-1].path.lower() == world.cluster_id.lower()  # the verifying GET comes last


async def test_without_target_goes_to_newest_usable_version(world, runtime):
    """`rotate` with no key URL moves to the newest usable version, skipping a newer disabled one."""
    v2 = world.new_version()
    world.new_version(enabled=False)
    result = await rotate(runtime, world)
    assert result.outcome is Outcome.ROTATED
    assert result.to_version == v2


async def test_already_current(world, runtime):
    """The cluster's own version is already-current, with no PUT."""
    result = await rotate(runtime, world, world.key_url(world.v1))
    assert result.outcome is Outcome.ALREADY_CURRENT
    assert world.puts() == []


async def test_stale_event(world, runtime):
    """An event for an older version than the cluster's is stale-event, with no PUT."""
    v2 = world.new_version()
    world.sim.set_cluster_key_url(world.cluster_id, world.key_url(v2))
    result = await rotate(runtime, world, world.key_url(world.v1))
    assert result.outcome is Outcome.STALE_EVENT
    assert world.puts() == []


async def test_versionless(world, runtime):
    """A versionless cluster is left alone."""
    world.sim.set_cluster_key_url(world.cluster_id, world.key_url(None))
    v2 = world.new_version()
    result = await rotate(runtime, world, world.key_url(v2))
    assert result.outcome is Outcome.VERSIONLESS
    assert world.puts() == []


async def test_key_mismatch_other_key_and_other_vault(world, runtime):
    """An event for another key or another vault never moves the cluster."""
    other_key = world.sim.create_key_version(world.vault, "other", emit_event=False)
    world.sim.add_vault("kv-other-" + world.vault[-6:], subscription=world.subscription)
    other_vault = world.sim.create_key_version("kv-other-" + world.vault[-6:], "cmk", emit_event=False)
    for target in (
        world.key_url(other_key, key="other"),
        world.key_url(other_vault, vault="kv-other-" + world.vault[-6:]),
    ):
        result = await rotate(runtime, world, target)
        assert result.outcome is Outcome.KEY_MISMATCH
    assert world.puts() == []


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"enabled": False}, "disabled"),
        ({"nbf": int(time.time()) + 86400}, "not active"),
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"kty": "EC"}, "key type EC"),
        ({"size": 1024}, "1024"),
        ({"ops": ["encrypt", "decrypt", "unwrapKey"]}, "wrapKey"),
    ],
    ids=["disabled", "nbf-future", "expired", "ec", "1024-bit", "no-wrapKey"],
)
async def test_key_not_usable(world, runtime, kwargs, reason):
    """A target version that would take the cluster offline is refused with no PUT."""
    bad = world.new_version(**kwargs)
    result = await rotate(runtime, world, world.key_url(bad))
    assert result.outcome is Outcome.KEY_NOT_USABLE
    assert reason in result.reason
    assert world.puts() == []


async def test_not_cmk(world, runtime, sim):
    """A service-managed cluster is not-cmk."""
    plain = sim.add_cluster(subscription=world.subscription, resource_group="rg-data", name="plain")
    result = await runtime.rotator.rotate(RotationRequest(cluster_id=parse_cluster_id(plain)))
    assert result.outcome is Outcome.NOT_CMK


async def test_cluster_not_found(world, runtime):
    """A cluster ARM does not have is cluster-not-found."""
    gone = world.cluster_id.replace("orders-prod", "gone")
    result = await runtime.rotator.rotate(RotationRequest(cluster_id=parse_cluster_id(gone)))
    assert result.outcome is Outcome.CLUSTER_NOT_FOUND
    assert result.error_code == "ResourceNotFound"


async def test_throttled_put_waits_retry_after(world, runtime):
    """A 429 with Retry-After: 2 makes the next PUT wait about 2 s (simulator timestamps), then succeed."""
    v2 = world.new_version()
    world.sim.inject(
        method="PUT",
        service="arm",
        faults=[Fault.status(429, error_code="TooManyRequests", headers={"Retry-After": "2"})],
    )
    result = await rotate(runtime, world, world.key_url(v2))
    assert result.outcome is Outcome.ROTATED
    puts = world.puts()
    assert [p.status for p in puts] == [429, 200]
    assert 1.9 <= puts[1].time - puts[0].time <= 3.5


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(409, error_code="Conflict"),
        Fault.status(500, error_code="InternalServerError"),
        Fault.status(503, error_code="ServiceUnavailable"),
        Fault.reset(),
    ],
    ids=["409", "500", "503", "reset"],
)
async def test_transient_put_fault_then_success(world, runtime, fault):
    """409, 500, 503 and a connection reset are retried; the second PUT succeeds."""
    v2 = world.new_version()
    world.sim.inject(method="PUT", service="arm", faults=[fault])
    result = await rotate(runtime, world, world.key_url(v2))
    assert result.outcome is Outcome.ROTATED
    puts = world.puts()
    assert puts[0].fault is not None
    assert puts[-1].status == 200
    assert len(puts) == 2
    # aiohttp itself re-sends once when a pooled connection is reset before any answer; other faults
    # come back to tenacity.
    assert result.attempts == (1 if fault.kind == "reset" else 2)
    assert world.key_of() == world.key_url(v2)


async def test_repeated_resets_reach_tenacity(world, runtime):
    """Resets beyond the transport's one silent re-send are retried by tenacity, then succeed."""
    v2 = world.new_version()
    world.sim.inject(method="PUT", service="arm", faults=[Fault.reset()] * 3)
    result = await rotate(runtime, world, world.key_url(v2))
    assert result.outcome is Outcome.ROTATED
    assert result.attempts >= 2
    assert [p.fault for p in world.puts()][:3] == ["reset"] * 3


async def test_bad_request_is_not_retried(world, runtime):
    """A 400 is final: one PUT, outcome failed with ARM's code."""
    v2 = world.new_version()
    world.sim.inject(
        method="PUT",
        service="arm",
        faults=[Fault.status(400, error_code="InvalidRequestContent", message="nope")],
    )
    result = await rotate(runtime, world, world.key_url(v2))
    assert result.outcome is Outcome.FAILED
    assert (result.error_code, result.error_message) == ("InvalidRequestContent", "nope")
    assert len(world.puts()) == 1


async def test_persistent_503_exhausts_retries(world, runtime):
    """ARM failing past the retry budget raises TransientFailure (the queue will redeliver)."""
    v2 = world.new_version()
    world.sim.inject(method="PUT", service="arm", faults=[Fault.status(503)] * 5)
    with pytest.raises(TransientFailure):
        await rotate(runtime, world, world.key_url(v2))
    assert len(world.puts()) == 5


async def test_failed_operation(world, runtime):
    """An operation that ends Failed gives failed with the operation's error code."""
    v2 = world.new_version()
    world.sim.fail_next_operation(
        world.cluster_id, code="KeyVaultAccessForbidden", message="identity lost access"
    )
    result = await rotate(runtime, world, world.key_url(v2))
    assert result.outcome is Outcome.FAILED
    assert result.error_code == "KeyVaultAccessForbidden"
    assert world.key_of() == world.key_url(world.v1)


async def test_verification_mismatch(world, runtime):
    """An operation that succeeds without changing the key URL is failed by verification."""
    v2 = world.new_version()
    world.sim.ignore_key_updates(world.cluster_id)
    result = await rotate(runtime, world, world.key_url(v2))
    assert result.outcome is Outcome.FAILED
    assert "verification" in result.reason


async def test_dry_run_sends_no_put(world, runtime):
    """Dry run reads and decides, and sends no PUT."""
    v2 = world.new_version()
    result = await rotate(runtime, world, world.key_url(v2), dry_run=True)
    assert result.outcome is Outcome.DRY_RUN
    assert world.puts() == []
    assert world.key_of() == world.key_url(world.v1)


async def test_key_vault_challenge_and_token_reuse(world, runtime):
    """Key Vault's 401 challenge is answered; the token is fetched from the identity endpoint, not per call."""
    v2 = world.new_version()
    await rotate(runtime, world, world.key_url(v2))
    kv = [r for r in world.sim.requests if r.service == "kv"]
    assert kv[0].status == 401
    assert all(r.status == 200 for r in kv[1:])
    identity = [r for r in world.sim.requests if r.service == "identity"]
    assert 1 <= len(identity) <= 2  # one token for ARM, one for Key Vault


async def test_cancelling_a_shared_key_read_does_not_cancel_the_other_reader(world, runtime):
    """Two callers share one Key Vault read; cancelling its owner gives the other a transient error, not a cancel."""
    import asyncio

    from rotation.errors import ServiceError

    v2 = world.new_version()
    target = parse_key_url(world.key_url(v2))
    await runtime.keys.get_version(
        parse_key_url(world.key_url(world.v1))
    )  # challenge and token out of the way
    world.sim.inject(method="GET", service="kv", path_contains=v2, faults=[Fault.slow(2.0)])
    owner = asyncio.create_task(runtime.keys.get_version(target))
    await asyncio.sleep(0.3)
    sharer = asyncio.create_task(runtime.keys.get_version(target))
    await asyncio.sleep(0.1)
    owner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await owner
    with pytest.raises(ServiceError) as info:
        await sharer
    assert info.value.transient
    assert (await runtime.keys.get_version(target)).version == v2  # the next caller reads again


async def test_a_read_ahead_is_the_jobs_own_read_and_its_failure_is_left_to_the_job(world, runtime):
    """`read_ahead` starts the read a job then shares: one request; a failed one is dropped, read again later."""
    import asyncio

    await runtime.keys.get_version(parse_key_url(world.key_url(world.v1)))  # the challenge, the token
    v2, v3 = world.new_version(), world.new_version()

    def reads(version: str) -> int:
        kv = (r for r in world.sim.requests if r.service == "kv" and r.status != 401)
        return sum(1 for r in kv if version in r.path)

    target = parse_key_url(world.key_url(v2))
    runtime.keys.read_ahead([target, parse_key_url(world.key_url(world.v1))])  # v1 is kept: not read again
    assert (await runtime.keys.get_version(target)).version == v2
    assert reads(v2) == 1
    assert reads(world.v1) == 1
    world.sim.inject(method="GET", service="kv", path_contains=v3, faults=[Fault.status(503)])
    runtime.keys.read_ahead([parse_key_url(world.key_url(v3))])
    # The failed read ends unobserved: nothing raised, no "exception never retrieved".
    await asyncio.wait(set(runtime.keys._ahead), timeout=10)  # the reads started ahead
    assert reads(v3) == 1
    assert (await runtime.keys.get_version(parse_key_url(world.key_url(v3)))).version == v3
    assert reads(v3) == 2
