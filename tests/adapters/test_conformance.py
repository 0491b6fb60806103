"""The rotator against the simulator in each of ARM's answer shapes, as the mongoClusters spec allows them.

Write answers: both operation headers (the spec's examples), ``Location`` only, or none (the resource's
provisioningState tells); write methods PUT (default) and PATCH (the spec's PatchCMK); a job that dies after
the write is accepted is resumed from the recorded operation URL (rule 7). Then what a replacing PUT could
cost the user: tags kept, other properties checked (collateral changes), a create-only refusal explained.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest

from azsim.faults import Fault
from azsim.simulator import Simulator
from rotation.ids import parse_cluster_id, parse_key_url
from rotation.outcomes import Outcome
from rotation.rotation_job import RotationRequest
from rotation.service.runtime import Runtime
from rotation.settings import RetrySettings, Settings
from tests.helpers.world import World, make_world

FAST_RETRY = RetrySettings(max_attempts=3, max_seconds=10, initial_wait=0.02, max_wait=0.1)
TAGS = {"costCentre": "4711", "owner": "orders team", "policy:data-class": "confidential"}
WRITE_ANSWERS = ("both", "location", "none")
METHODS = ("put", "patch")


def _polls(world: World) -> list[str]:
    """Paths of ARM GETs other than the cluster's own."""
    return [
        r.path
        for r in world.sim.requests
        if r.service == "arm" and r.method == "GET" and r.path.lower() != world.cluster_id.lower()
    ]


def _resource_gets(world: World) -> int:
    """ARM GETs of the cluster itself."""
    gets = [r for r in world.sim.requests if r.service == "arm" and r.method == "GET"]
    return sum(1 for r in gets if r.path.lower() == world.cluster_id.lower())


@pytest.fixture
def world(sim: Simulator) -> World:
    """A vault with key ``cmk``, the key identity and the CMK cluster ``orders-prod`` with tags, on v1."""
    return make_world(sim, name="orders-prod", tags=dict(TAGS))


def settings(method: str = "put", **kw: Any) -> Settings:
    """Settings for the write method (its api-version unless given), fast retries, ``kw`` overriding."""
    api = kw.pop("api_version", "2025-09-01" if method == "patch" else "2025-07-01-preview")
    env = {"ROTATION_WRITE_METHOD": method, "ROTATION_ARM_API_VERSION": api}
    return replace(Settings.from_env(env), **{"retry": FAST_RETRY, "poll_budget_seconds": 20, **kw})


async def rotate(world: World, target: str, cfg: Settings, **kw: Any):
    """Rotate the world's cluster to ``target`` with a runtime on ``cfg``."""
    runtime = Runtime.create(cfg)
    try:
        request = RotationRequest(
            cluster_id=parse_cluster_id(world.cluster_id), target=parse_key_url(target), **kw
        )
        return await runtime.rotator.rotate(request)
    finally:
        await runtime.close()


def _cmk_url(body: dict[str, Any]) -> str:
    return body["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"]


@pytest.mark.parametrize("answer", WRITE_ANSWERS)
@pytest.mark.parametrize("method", METHODS)
async def test_rotation_succeeds_in_each_write_answer_mode(world, method, answer):
    """PUT and PATCH each rotate and verify whether ARM answers with both headers, Location only, or none."""
    world.sim.configure(write_answer=answer)
    v2 = world.new_version()
    result = await rotate(world, world.key_url(v2), settings(method))
    assert result.outcome is Outcome.ROTATED, result.reason
    assert _cmk_url(world.cluster()) == world.key_url(v2)
    (write,) = world.puts(patch=True)
    assert write.method == method.upper()
    assert write.status == (202 if method == "patch" else 200)  # PatchCMK: 202; an update PUT: 200
    polls = _polls(world)
    if answer == "both":
        assert polls
        assert all("/mongoClusterAzureAsyncOperation/" in p for p in polls)
    elif answer == "location":
        assert polls
        assert all("/mongoClusterOperationResults/" in p for p in polls)
    else:
        assert polls == []
        assert _resource_gets(world) >= 3  # decide, at least one provisioningState poll, verify
    assert result.collateral_changes == ()
    assert world.cluster()["tags"] == TAGS


@pytest.mark.parametrize("answer", WRITE_ANSWERS)
@pytest.mark.parametrize("method", METHODS)
async def test_resumed_job_completes_in_each_write_answer_mode(world, method, answer):
    """A job that stops after the write is accepted is resumed from its recorded URL, with no second write."""
    world.sim.configure(write_answer=answer)
    world.sim.set_operation_seconds(world.cluster_id, 30)
    v2 = world.new_version()
    target = world.key_url(v2)
    recorded: list[str] = []

    runtime = Runtime.create(settings(method, poll_budget_seconds=0))
    try:
        request = RotationRequest(cluster_id=parse_cluster_id(world.cluster_id), target=parse_key_url(target))

        async def on_accepted(url: str, _target: object) -> None:
            recorded.append(url)

        first = await runtime.rotator.rotate(request, on_accepted=on_accepted)
    finally:
        await runtime.close()
    assert first.outcome is Outcome.PENDING, first.reason
    assert recorded == [first.operation_url]
    if answer == "none":
        assert first.operation_url.lower().endswith(world.cluster_id.lower())
    world.sim.advance(60)
    resumed = await rotate(
        world, target, settings(method), operation_url=first.operation_url, trigger="check"
    )
    assert resumed.outcome is Outcome.ROTATED, resumed.reason
    assert len(world.puts(patch=True)) == 1
    assert _cmk_url(world.cluster()) == target


async def test_tags_survive_a_put_in_the_mode_that_clears_omitted_tags(world):
    """The simulator's PUT clears tags it is not sent (the spec's worst case); the rotator's PUT keeps them."""
    v2 = world.new_version()
    before = world.cluster()
    result = await rotate(world, world.key_url(v2), settings("put"))
    assert result.outcome is Outcome.ROTATED
    after = world.cluster()
    assert after["tags"] == before["tags"] == TAGS
    assert world.puts(patch=True)[0].body["tags"] == TAGS
    assert result.collateral_changes == ()


async def test_collateral_change_is_logged_and_kept_in_the_result(world, caplog):
    """A PUT that resets omitted properties still rotates, and the changed paths (no values) are reported."""
    world.sim.configure(put_resets_omitted=True)
    v2 = world.new_version()
    with caplog.at_level(logging.INFO, logger="rotation"):
        result = await rotate(world, world.key_url(v2), settings("put"))
    assert result.outcome is Outcome.ROTATED
    assert set(result.collateral_changes) == {
        "properties.highAvailability.targetMode",
        "properties.publicNetworkAccess",
        "properties.authConfig.allowedModes",
    }
    (record,) = [r for r in caplog.records if r.getMessage() == "rotation.collateral_change"]
    assert record.levelno == logging.ERROR
    assert record.changed_paths == sorted(result.collateral_changes)
    assert record.cluster_id == world.cluster_id
    text = repr(record.__dict__)
    assert "ZoneRedundantPreferred" not in text
    assert "MicrosoftEntraID" not in text


async def test_patch_leaves_omitted_properties_alone(world):
    """PATCH merges: in the resetting mode it changes nothing besides the key."""
    world.sim.configure(put_resets_omitted=True)
    v2 = world.new_version()
    result = await rotate(world, world.key_url(v2), settings("patch"))
    assert result.outcome is Outcome.ROTATED
    assert result.collateral_changes == ()
    assert world.puts(patch=True)[0].body == {
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {world.identity: {}}},
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


async def test_create_only_refusal_names_the_next_step(world, caplog):
    """A 400 saying encryption cannot be updated at this api-version fails with the setting to change."""
    world.sim.configure(encryption_updatable_from="2025-08-01-preview")
    v2 = world.new_version()
    with caplog.at_level(logging.INFO, logger="rotation"):
        result = await rotate(world, world.key_url(v2), settings("put"))
    assert result.outcome is Outcome.FAILED
    assert "cannot be updated" in (result.error_message or "")
    assert "ROTATION_ARM_API_VERSION=2025-09-01" in result.reason
    assert "ROTATION_WRITE_METHOD=patch" in result.reason
    (failed,) = [r for r in caplog.records if r.getMessage() == "rotation.cluster_failed"]
    assert "ROTATION_ARM_API_VERSION=2025-09-01" in failed.reason
    assert len(world.puts(patch=True)) == 1  # a 400 is not retried
    retried = await rotate(world, world.key_url(v2), settings("put", api_version="2025-09-01"))
    assert retried.outcome is Outcome.ROTATED, retried.reason


async def test_key_identity_without_wrap_access_fails_with_the_service_error(world):
    """An identity that cannot wrap/unwrap makes the operation fail; the result carries the service's error."""
    world.sim.remove_role_assignments(world.sim.principal_id(world.identity))
    v2 = world.new_version()
    result = await rotate(world, world.key_url(v2), settings("put"))
    assert result.outcome is Outcome.FAILED
    assert result.error_code == "KeyVaultAccessForbidden"
    assert "wrapKey and unwrapKey" in (result.error_message or "")


@pytest.mark.parametrize("header", ["Azure-AsyncOperation", "Location"])
@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.net/subscriptions/{sub}/providers/Microsoft.DocumentDB/locations/westeurope/mongoClusterOperationResults/1",
        "https://management.azure.com/subscriptions/00000000-0000-0000-0000-000000000000/providers/Microsoft.DocumentDB/locations/westeurope/mongoClusterOperationResults/1",
        "https://management.azure.com/subscriptions/{sub}/providers/Microsoft.KeyVault/locations/westeurope/mongoClusterOperationResults/1",
        "https://management.azure.com:8443/subscriptions/{sub}/providers/Microsoft.DocumentDB/locations/westeurope/mongoClusterOperationResults/1",
        "http://management.azure.com/subscriptions/{sub}/providers/Microsoft.DocumentDB/locations/westeurope/mongoClusterOperationResults/1",
    ],
    ids=["other-host", "other-subscription", "other-provider", "other-port", "plain-http"],
)
async def test_operation_url_outside_the_checks_is_never_followed(world, header, url):
    """Either header naming a URL off ARM, in another subscription or provider, or not https:443, is refused."""
    world.sim.inject(
        method="PUT",
        service="arm",
        faults=[Fault.status(202, headers={header: url.format(sub=world.subscription)})],
    )
    v2 = world.new_version()
    result = await rotate(
        world, world.key_url(v2), settings("put", retry=replace(FAST_RETRY, max_attempts=1))
    )
    assert result.outcome is Outcome.FAILED
    assert "operation URL" in result.reason
    assert _polls(world) == []


async def test_collateral_change_is_in_the_cluster_history(stack):
    """A watched cluster's history row names the paths a resetting PUT changed, and the outcome is rotated."""
    from rotation.store.jobs import Job

    key, v1 = stack.new_key()
    cluster = stack.add_cluster(key, v1)
    await stack.register(cluster)
    stack.sim.configure(put_resets_omitted=True)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False)
    job = Job.new(cluster, trigger="manual", target_key_url=stack.sim.key_url(stack.vault, key, v2))
    result = await stack.service.worker.execute(job)
    assert result.outcome is Outcome.ROTATED, result.reason
    (entry,) = await stack.service.registry.history.recent(parse_cluster_id(cluster))
    assert entry.outcome == "rotated"
    assert set(entry.collateral_changes) == {
        "properties.highAvailability.targetMode",
        "properties.publicNetworkAccess",
        "properties.authConfig.allowedModes",
    }
    assert entry.to_dict()["collateral_changes"] == sorted(entry.collateral_changes)


def test_cli_reports_the_create_only_refusal_with_the_next_step(world):
    """`rotate` exits 1 and its line (and its log) says which setting to change when ARM refuses the key change."""
    from tests.helpers.cli import run_cli

    world.sim.configure(encryption_updatable_from="2025-08-01-preview")
    v2 = world.new_version()
    proc = run_cli("rotate", world.cluster_id, "--key-url", world.key_url(v2))
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stdout.strip().splitlines()
    assert line.startswith("failed")
    assert "set ROTATION_ARM_API_VERSION=2025-09-01" in line
    assert "ROTATION_WRITE_METHOD=patch" in line
    assert "rotation.cluster_failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    ok = run_cli(
        "rotate",
        world.cluster_id,
        "--key-url",
        world.key_url(v2),
        env={"ROTATION_WRITE_METHOD": "patch", "ROTATION_ARM_API_VERSION": "2025-09-01"},
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("rotated")


def test_cli_refuses_patch_with_an_old_api_version_in_one_line(world):
    """ROTATION_WRITE_METHOD=patch with 2025-07-01-preview stops at start-up: exit 2, one line, no write."""
    from tests.helpers.cli import run_cli

    proc = run_cli("rotate", world.cluster_id, env={"ROTATION_WRITE_METHOD": "patch"})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "ROTATION_WRITE_METHOD=patch needs ROTATION_ARM_API_VERSION 2025-08-01-preview" in proc.stderr
    assert world.puts(patch=True) == []


@pytest.mark.parametrize("method", METHODS)
async def test_system_and_user_assigned_identity_type_is_kept(sim, method):
    """A cluster with `SystemAssigned,UserAssigned` keeps both after a PUT or PATCH rotation."""
    world = make_world(sim, name="orders-sys", identity_type="SystemAssigned,UserAssigned")
    v2 = world.new_version()
    result = await rotate(world, world.key_url(v2), settings(method))
    assert result.outcome is Outcome.ROTATED, result.reason
    assert world.puts(patch=True)[0].body["identity"]["type"] == "SystemAssigned,UserAssigned"
    assert world.cluster()["identity"]["type"] == "SystemAssigned,UserAssigned"
    assert result.collateral_changes == ()
