"""Key Vault keys through the real KeyClient (aio): challenge, get, list, create, rotate, update, events."""

from __future__ import annotations

import re
import time

import aiohttp
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.keys import KeyType
from azure.keyvault.keys.aio import KeyClient

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
async def keys(world, credential):
    """A KeyClient on the world's vault with the managed-identity credential."""
    async with KeyClient(world.vault_url, credential) as client:
        yield client


async def test_first_request_gets_the_challenge_then_the_token_is_used(world, keys):
    """KeyClient's first request gets the 401 challenge; the retry with the token is answered 200."""
    key = await keys.get_key("cmk")
    kv = [r for r in world.sim.requests if r.service == "kv"]
    assert kv[0].status == 401
    assert kv[0].path == "/keys/cmk/"
    assert kv[1].status == 200
    assert key.properties.version == world.v1


async def test_challenge_names_tenant_and_resource_per_cloud(world, sim):
    """The 401 challenge names the tenant's authority and the vault resource of the vault's cloud (public, China)."""
    async with (
        aiohttp.ClientSession(trust_env=True) as session,
        session.get(f"{world.vault_url}/keys/cmk?api-version=7.5") as resp,
    ):
        assert resp.status == 401
        challenge = resp.headers["WWW-Authenticate"]
    assert f'authorization="https://login.microsoftonline.com/{sim.tenant_id}"' in challenge
    assert 'resource="https://vault.azure.net"' in challenge
    china = sim.add_vault(world.vault, subscription=world.subscription, suffix="vault.azure.cn")
    async with (
        aiohttp.ClientSession(trust_env=True) as session,
        session.get(f"{china}/keys?api-version=7.5") as resp,
    ):
        assert 'resource="https://vault.azure.cn"' in resp.headers["WWW-Authenticate"]


async def test_get_latest_and_specific_version(world, keys):
    """A GET without version answers the newest version (RSA 3072); one with a version answers that version's key and attributes."""
    sim = world.sim
    newer = sim.create_key_version(world.vault, "cmk", size=3072)
    latest = await keys.get_key("cmk")
    assert latest.properties.version == newer == sim.latest_version(world.vault, "cmk")
    assert latest.id == world.key_url(newer)
    assert len(latest.key.n) == 384
    assert latest.key.n[0] & 0x80
    assert latest.key.e == b"\x01\x00\x01"
    old = await keys.get_key("cmk", world.v1)
    assert len(old.key.n) == 256
    assert old.key_type == KeyType.rsa
    assert set(old.key_operations) == {"encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"}
    assert old.properties.created_on < latest.properties.created_on
    assert old.properties.recovery_level == "Recoverable"


async def test_unknown_key_and_version_are_404_key_not_found(world, keys):
    """An unknown key or version is 404 KeyNotFound."""
    with pytest.raises(ResourceNotFoundError) as missing_key:
        await keys.get_key("nope")
    assert missing_key.value.error.code == "KeyNotFound"
    with pytest.raises(ResourceNotFoundError):
        await keys.get_key("cmk", "0" * 32)


async def test_list_versions_is_paged(world, keys):
    """Listing versions is paged by maxresults, in creation order; listing keys names the vault's key."""
    sim = world.sim
    created = [world.v1] + [sim.create_key_version(world.vault, "cmk") for _ in range(4)]
    listed = [p.version async for p in keys.list_properties_of_key_versions("cmk", max_page_size=2)]
    assert listed == created
    pages = [r for r in sim.requests if r.path == "/keys/cmk/versions" and r.status == 200]
    assert len(pages) == 3
    assert pages[1].query["maxresults"] == "2"
    names = [p.name async for p in keys.list_properties_of_keys()]
    assert names == ["cmk"]


async def test_create_and_rotate_make_new_versions_and_emit_events(world, keys):
    """Creating and rotating a key make new versions, each emitting one KeyNewVersionCreated event with the vault as topic."""
    sim = world.sim
    before = len(sim.events)
    created = await keys.create_rsa_key("cmk", size=4096, key_operations=["wrapKey", "unwrapKey"])
    assert HEX32.match(created.properties.version)
    assert len(created.key.n) == 512
    assert created.key_operations == ["wrapKey", "unwrapKey"]
    rotated = await keys.rotate_key("cmk")
    assert rotated.properties.version != created.properties.version
    assert sim.latest_version(world.vault, "cmk") == rotated.properties.version
    events = sim.events[before:]
    assert [e["data"]["Version"] for e in events] == [created.properties.version, rotated.properties.version]
    event = events[0]
    assert event["eventType"] == "Microsoft.KeyVault.KeyNewVersionCreated"
    vault_id = (
        f"/subscriptions/{world.subscription}/resourceGroups/rg-keys/providers/Microsoft.KeyVault/vaults/"
    )
    assert event["topic"] == vault_id + world.vault
    assert event["subject"] == "cmk"
    assert event["data"]["Id"] == created.id
    assert event["eventTime"].endswith("Z")
    assert event["dataVersion"] == "1"
    assert event["metadataVersion"] == "1"


async def test_created_timestamps_strictly_increase(world, keys):
    """Versions created back to back get strictly increasing creation times."""
    sim = world.sim
    versions = [sim.create_key_version(world.vault, "fast", emit_event=False) for _ in range(3)]
    stamps = [(await keys.get_key("fast", v)).properties.created_on for v in versions]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 3


async def test_update_key_properties_changes_attributes(world, keys):
    """Updating a version through the SDK or the simulator changes its enabled flag, expiry and operations."""
    exp = int(time.time()) + 3600
    updated = await keys.update_key_properties("cmk", world.v1, enabled=False, expires_on=None)
    assert updated.properties.enabled is False
    world.sim.update_key_version(world.vault, "cmk", world.v1, enabled=True, exp=exp, ops=["wrapKey"])
    again = await keys.get_key("cmk", world.v1)
    assert again.properties.enabled is True
    assert int(again.properties.expires_on.timestamp()) == exp
    assert again.key_operations == ["wrapKey"]


async def test_ec_keys_have_a_curve(world, keys):
    """An EC key answers its P-256 curve and a 32-byte x coordinate."""
    version = world.sim.create_key_version(world.vault, "ec", kty="EC", emit_event=False)
    key = await keys.get_key("ec", version)
    assert key.key_type == KeyType.ec
    assert key.key.crv == "P-256"
    assert len(key.key.x) == 32


async def test_event_in_cloudevents_schema(world):
    """Key events carry NBF/EXP and convert to the CloudEvents schema; near-expiry events can be emitted."""
    sim = world.sim
    version = sim.create_key_version(world.vault, "cmk", nbf=1763629980, exp=1795165980)
    event = sim.events[-1]
    assert event["data"]["NBF"] == 1763629980
    assert event["data"]["EXP"] == 1795165980
    cloud = sim.to_cloud_event(event)
    assert cloud == {
        "id": event["id"],
        "source": event["topic"],
        "subject": "cmk",
        "type": "Microsoft.KeyVault.KeyNewVersionCreated",
        "time": event["eventTime"],
        "specversion": "1.0",
        "data": event["data"],
    }
    near = sim.emit_key_event(world.vault, "cmk", version, "Microsoft.KeyVault.KeyNearExpiry")
    assert near["eventType"] == "Microsoft.KeyVault.KeyNearExpiry"
    assert sim.events[-1] == near


async def test_events_parse_with_the_eventgrid_models(world):
    """The emitted events are what azure-eventgrid and azure-core's CloudEvent read."""
    from azure.core.messaging import CloudEvent
    from azure.eventgrid import EventGridEvent, SystemEventNames

    world.sim.create_key_version(world.vault, "cmk")
    raw = world.sim.events[-1]
    parsed = EventGridEvent.from_dict(raw)
    assert parsed.event_type == SystemEventNames.KeyVaultKeyNewVersionCreatedEventName
    cloud = CloudEvent.from_dict(world.sim.to_cloud_event(raw))
    assert cloud.type == SystemEventNames.KeyVaultKeyNewVersionCreatedEventName
