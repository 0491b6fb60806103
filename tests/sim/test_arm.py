"""ARM mongoClusters through the CONNECT proxy: reads, writes, operations, throttling, validation."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import pytest
from azure.core.pipeline import policies
from azure.core.polling import AsyncLROPoller
from azure.core.rest import HttpRequest
from azure.mgmt.core import AsyncARMPipelineClient
from azure.mgmt.core.policies import AsyncARMChallengeAuthenticationPolicy
from azure.mgmt.core.polling.async_arm_polling import AsyncARMPolling

API = "2025-07-01-preview"
CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"


async def _wait_done(arm_client, answer) -> dict[str, Any]:
    url = answer.headers["azure-asyncoperation"]
    for _ in range(100):
        status = await arm_client.call("GET", url, api_version=None)
        assert status.status == 200
        if status.body["status"] != "InProgress":
            return status.body
        assert status.headers["retry-after"] == "1"
        await asyncio.sleep(float(status.headers["retry-after-ms"]) / 1000)
    raise AssertionError("operation never ended")


async def test_get_cluster_returns_the_documented_shape(world, arm_client):
    """A GET answers the cluster's documented ARM JSON (type, tags, identity, CMK, states) with rate-limit and request-id headers."""
    answer = await arm_client.call("GET", world.cluster_id)
    assert answer.status == 200
    body = answer.body
    assert body["id"] == world.cluster_id
    assert body["type"] == "Microsoft.DocumentDB/mongoClusters"
    assert body["tags"] == {"team": "orders"}
    assert set(body["identity"]["userAssignedIdentities"]) == {world.identity}
    cmk = body["properties"]["encryption"]["customerManagedKeyEncryption"]
    assert cmk["keyEncryptionKeyUrl"] == world.key_url(world.v1)
    assert cmk["keyEncryptionKeyIdentity"]["userAssignedIdentityResourceId"] == world.identity
    assert body["properties"]["provisioningState"] == "Succeeded"
    assert body["properties"]["clusterStatus"] == "Ready"
    assert answer.headers["x-ms-ratelimit-remaining-subscription-reads"].isdigit()
    assert answer.headers["x-ms-request-id"]
    assert body == world.sim.cluster(world.cluster_id)


async def test_path_segments_match_case_insensitively(world, arm_client):
    """A GET finds the cluster whatever the case of the path's segments, and answers its id as created."""
    answer = await arm_client.call("GET", world.cluster_id.lower().replace("mongoclusters", "MONGOCLUSTERS"))
    assert answer.status == 200
    assert answer.body["id"] == world.cluster_id


async def test_service_managed_cluster_has_no_cmk(world, arm_client):
    """A service-managed cluster's JSON has neither `encryption` nor `identity`."""
    body = (await arm_client.call("GET", world.plain_cluster)).body
    assert "encryption" not in body["properties"]
    assert "identity" not in body


async def test_missing_token_is_401_and_missing_api_version_is_400(world, arm_client):
    """No token or a forged one is 401 AuthenticationFailed; no api-version is 400 MissingApiVersionParameter."""
    unauthenticated = await arm_client.call("GET", world.cluster_id, token=None)
    assert unauthenticated.status == 401
    assert unauthenticated.body["error"]["code"] == "AuthenticationFailed"
    forged = await arm_client.call("GET", world.cluster_id, token="forged")
    assert forged.status == 401
    no_version = await arm_client.call("GET", world.cluster_id, api_version=None)
    assert no_version.status == 400
    assert no_version.body["error"]["code"] == "MissingApiVersionParameter"


async def test_unknown_cluster_is_404_resource_not_found(world, arm_client):
    """A GET of a cluster that does not exist is 404 ResourceNotFound."""
    answer = await arm_client.call("GET", world.cluster_id + "-gone")
    assert answer.status == 404
    assert answer.body["error"]["code"] == "ResourceNotFound"


async def test_correlation_and_client_request_ids_are_echoed(world, arm_client):
    """The correlation and client request ids are echoed in the answer and the client's id is logged."""
    answer = await arm_client.call(
        "GET",
        world.cluster_id,
        headers={"x-ms-correlation-request-id": "corr-1", "x-ms-client-request-id": "client-1"},
    )
    assert answer.headers["x-ms-correlation-request-id"] == "corr-1"
    assert answer.headers["x-ms-client-request-id"] == "client-1"
    assert world.sim.requests[-1].client_request_id == "client-1"


async def test_list_is_paged_with_absolute_next_links(world, arm_client):
    """Listing by subscription is paged with absolute nextLinks; listing by resource group returns only its clusters."""
    sim = world.sim
    for index in range(3):
        sim.add_cluster(subscription=world.subscription, resource_group="rg-other", name=f"c{index}")
    sim.configure(list_page_size=2)
    names: list[str] = []
    url = f"/subscriptions/{world.subscription}/providers/Microsoft.DocumentDB/mongoClusters"
    pages = 0
    next_url: str | None = url
    while next_url:
        answer = await arm_client.call("GET", next_url)
        assert answer.status == 200
        names += [c["name"] for c in answer.body["value"]]
        next_url = answer.body.get("nextLink")
        assert next_url is None or next_url.startswith("https://management.azure.com/subscriptions/")
        pages += 1
    assert sorted(names) == ["c0", "c1", "c2", "orders", "plain"]
    assert pages == 3
    in_group = await arm_client.call(
        "GET",
        f"/subscriptions/{world.subscription}/resourceGroups/rg-other/providers/Microsoft.DocumentDB/mongoClusters",
    )
    assert {c["name"] for c in in_group.body["value"]} == {"c0", "c1"}


async def test_put_runs_a_long_running_operation_and_changes_the_key(world, arm_client):
    """An update PUT answers 200 (the spec: 200 update, 201 create) with the examples' two operation URLs."""
    sim = world.sim
    new_version = sim.create_key_version(world.vault, "cmk")
    sim.configure(operation_seconds=0.3, poll_interval=0.05)
    answer = await arm_client.call("PUT", world.cluster_id, body=world.put_body(world.key_url(new_version)))
    assert answer.status == 200
    assert answer.body["properties"]["provisioningState"] == "Updating"
    operation_url = answer.headers["azure-asyncoperation"]
    assert operation_url.startswith(
        f"https://management.azure.com/subscriptions/{world.subscription}/providers/"
        "Microsoft.DocumentDB/locations/westeurope/mongoClusterAzureAsyncOperation/"
    )
    assert f"api-version={API}" in operation_url
    assert "/locations/westeurope/mongoClusterOperationResults/" in answer.headers["location"]
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["retry-after-ms"] == "50"
    assert answer.headers["x-ms-ratelimit-remaining-subscription-writes"].isdigit()

    during = await arm_client.call("GET", world.cluster_id)
    assert during.body["properties"]["provisioningState"] == "Updating"
    result_running = await arm_client.call("GET", answer.headers["location"], api_version=None)
    assert result_running.status == 202

    final = await _wait_done(arm_client, answer)
    assert final["status"] == "Succeeded"
    assert final["endTime"] >= final["startTime"]
    after = await arm_client.call("GET", world.cluster_id)
    cmk = after.body["properties"]["encryption"]["customerManagedKeyEncryption"]
    assert cmk["keyEncryptionKeyUrl"] == world.key_url(new_version)
    assert after.body["properties"]["provisioningState"] == "Succeeded"
    result_done = await arm_client.call("GET", answer.headers["location"], api_version=None)
    assert result_done.status == 200


async def test_put_through_the_arm_pipeline_client_and_lro_poller(world, credential):
    """The SDK's own ARM pipeline and ARM polling drive a PUT to completion."""
    new_version = world.sim.create_key_version(world.vault, "cmk")
    world.sim.configure(operation_seconds=0.2, poll_interval=0.05)
    client = AsyncARMPipelineClient(
        base_url="https://management.azure.com",
        policies=[
            policies.RequestIdPolicy(),
            policies.UserAgentPolicy(sdk_moniker="azsim-tests/1"),
            AsyncARMChallengeAuthenticationPolicy(credential, "https://management.azure.com/.default"),
            policies.AsyncRetryPolicy(retry_total=0),
        ],
    )
    async with client:
        request = HttpRequest(
            "PUT",
            f"https://management.azure.com{world.cluster_id}?api-version={API}",
            json=world.put_body(world.key_url(new_version)),
        )
        initial = await client._pipeline.run(request)
        assert initial.http_response.status_code == 200
        poller = AsyncLROPoller(
            client,
            initial,
            lambda response: response.http_response.json(),
            AsyncARMPolling(timeout=0.05),
        )
        result = await asyncio.wait_for(poller.result(), 10)
    cmk = result["properties"]["encryption"]["customerManagedKeyEncryption"]
    assert cmk["keyEncryptionKeyUrl"] == world.key_url(new_version)
    assert result["properties"]["provisioningState"] == "Succeeded"


async def test_put_during_an_operation_is_409_conflict(world, arm_client):
    """A second PUT while the first operation runs is 409 Conflict, and the cluster stays Updating."""
    world.sim.set_operation_seconds(world.cluster_id, 5)
    first = await arm_client.call("PUT", world.cluster_id, body=world.put_body())
    assert first.status == 200
    second = await arm_client.call("PUT", world.cluster_id, body=world.put_body())
    assert second.status == 409
    assert second.body["error"]["code"] == "Conflict"
    assert "in progress" in second.body["error"]["message"]
    assert world.sim.cluster(world.cluster_id)["properties"]["provisioningState"] == "Updating"


async def test_empty_write_bucket_is_429_with_retry_after(world, arm_client):
    """Writes beyond the write bucket are 429 TooManyRequests with Retry-After; reads have their own bucket."""
    world.sim.configure(write_burst=2, write_refill_per_s=0.25, operation_seconds=0)
    statuses = []
    remaining = []
    for _ in range(3):
        answer = await arm_client.call("PUT", world.cluster_id, body=world.put_body())
        statuses.append(answer.status)
        remaining.append(answer.headers["x-ms-ratelimit-remaining-subscription-writes"])
    assert statuses == [200, 200, 429]
    assert remaining == ["1", "0", "0"]
    assert answer.body["error"]["code"] == "TooManyRequests"
    assert int(answer.headers["retry-after"]) in {3, 4}
    # Reads have their own bucket.
    assert (await arm_client.call("GET", world.cluster_id)).status == 200


async def test_empty_read_bucket_is_429(world, arm_client):
    """A read beyond the read bucket is 429 with Retry-After 1 and no reads remaining."""
    world.sim.configure(read_burst=1, read_refill_per_s=1)
    assert (await arm_client.call("GET", world.cluster_id)).status == 200
    answer = await arm_client.call("GET", world.cluster_id)
    assert answer.status == 429
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["x-ms-ratelimit-remaining-subscription-reads"] == "0"


async def test_put_to_unknown_cluster_creates_it_with_201(world, arm_client):
    """A PUT of a cluster that does not exist creates it: 201, InProgress/Provisioning, then Succeeded/Ready."""
    world.sim.configure(operation_seconds=0.05, poll_interval=0.05)
    answer = await arm_client.call("PUT", world.cluster_id + "x", body=world.put_body())
    assert answer.status == 201
    assert answer.body["properties"]["provisioningState"] == "InProgress"
    assert answer.body["properties"]["clusterStatus"] == "Provisioning"
    assert (await _wait_done(arm_client, answer))["status"] == "Succeeded"
    created = (await arm_client.call("GET", world.cluster_id + "x")).body
    assert (created["properties"]["provisioningState"], created["properties"]["clusterStatus"]) == (
        "Succeeded",
        "Ready",
    )
    assert (
        _cmk(created)["keyEncryptionKeyUrl"]
        == world.put_body()["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"]
    )


async def test_patch_to_unknown_cluster_is_404(world, arm_client):
    """A PATCH cannot create: 404 ResourceNotFound."""
    answer = await arm_client.call("PATCH", world.cluster_id + "x", body={"tags": {}})
    assert answer.status == 404
    assert answer.body["error"]["code"] == "ResourceNotFound"


def _cmk(body: dict[str, Any]) -> dict[str, Any]:
    return body["properties"]["encryption"]["customerManagedKeyEncryption"]


def _drop_location(body, world):
    del body["location"]


def _other_location(body, world):
    body["location"] = "eastus"


def _system_identity(body, world):
    body["identity"] = {"type": "SystemAssigned"}


def _unknown_identity(body, world):
    body["identity"]["userAssignedIdentities"] = {world.identity + "-nope": {}}


def _no_identity_block(body, world):
    del body["identity"]


def _no_key_url(body, world):
    del _cmk(body)["keyEncryptionKeyUrl"]


def _no_identity_type(body, world):
    del _cmk(body)["keyEncryptionKeyIdentity"]["identityType"]


def _no_key_identity(body, world):
    del _cmk(body)["keyEncryptionKeyIdentity"]


def _system_identity_type(body, world):
    _cmk(body)["keyEncryptionKeyIdentity"]["identityType"] = "SystemAssignedIdentity"


def _unattached_key_identity(body, world):
    _cmk(body)["keyEncryptionKeyIdentity"]["userAssignedIdentityResourceId"] = world.other_identity


def _malformed_url(body, world):
    _cmk(body)["keyEncryptionKeyUrl"] = "not a url"


def _unknown_vault(body, world):
    _cmk(body)["keyEncryptionKeyUrl"] = "https://nowhere-kv.vault.azure.net/keys/cmk/" + "0" * 32


def _unknown_key(body, world):
    _cmk(body)["keyEncryptionKeyUrl"] = f"{world.vault_url}/keys/other/{world.v1}"


def _unknown_version(body, world):
    _cmk(body)["keyEncryptionKeyUrl"] = world.key_url("f" * 32)


def _disabled_version(body, world):
    version = world.sim.create_key_version(world.vault, "cmk", enabled=False)
    _cmk(body)["keyEncryptionKeyUrl"] = world.key_url(version)


def _expired_version(body, world):
    version = world.sim.create_key_version(world.vault, "cmk", exp=int(time.time()) - 60)
    _cmk(body)["keyEncryptionKeyUrl"] = world.key_url(version)


def _drop_cmk(body, world):
    del body["properties"]["encryption"]


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (_drop_location, "LocationRequired"),
        (_other_location, "InvalidResourceLocation"),
        (_system_identity, "InvalidIdentity"),
        (_unknown_identity, "InvalidIdentity"),
        (_no_identity_block, "InvalidIdentity"),
        (_no_key_url, "MissingEncryptionProperty"),
        (_no_identity_type, "MissingEncryptionProperty"),
        (_no_key_identity, "MissingEncryptionProperty"),
        (_system_identity_type, "InvalidKeyEncryptionKeyIdentity"),
        (_unattached_key_identity, "InvalidKeyEncryptionKeyIdentity"),
        (_malformed_url, "InvalidKeyVaultKeyUrl"),
        (_unknown_vault, "InvalidKeyVaultKeyUrl"),
        (_unknown_key, "KeyVaultKeyNotFound"),
        (_unknown_version, "KeyVaultKeyNotFound"),
        (_disabled_version, "KeyVaultKeyDisabled"),
        (_expired_version, "KeyVaultKeyExpired"),
        (_drop_cmk, "EncryptionModeChangeNotSupported"),
    ],
)
async def test_invalid_put_body_is_400_with_an_arm_error(world, arm_client, mutate, code):
    """Each invalid PUT body is 400 with its ARM error code, changes nothing and starts no operation."""
    body = world.put_body()
    mutate(body, world)
    before = world.sim.cluster(world.cluster_id)
    answer = await arm_client.call("PUT", world.cluster_id, body=body)
    assert answer.status == 400
    assert answer.body["error"]["code"] == code
    assert answer.body["error"]["message"]
    assert world.sim.cluster(world.cluster_id) == before
    # No operation was started: a valid PUT is accepted at once.
    assert (await arm_client.call("PUT", world.cluster_id, body=world.put_body())).status == 200


async def test_cmk_on_a_service_managed_cluster_is_refused(world, arm_client):
    """A CMK PUT on a service-managed cluster is 400 EncryptionModeChangeNotSupported."""
    answer = await arm_client.call("PUT", world.plain_cluster, body=world.put_body())
    assert answer.status == 400
    assert answer.body["error"]["code"] == "EncryptionModeChangeNotSupported"


async def test_location_is_compared_without_case_or_spaces(world, arm_client):
    """A PUT with location `West Europe` matches the cluster's `westeurope`."""
    body = world.put_body()
    body["location"] = "West Europe"
    assert (await arm_client.call("PUT", world.cluster_id, body=body)).status == 200


async def test_identities_in_the_body_are_attached_even_when_the_put_fails(world, arm_client):
    """Identities named in a PUT body are attached even when the PUT is refused (an unknown key version)."""
    body = world.put_body(world.key_url("0" * 32))
    body["identity"]["userAssignedIdentities"][world.other_identity] = {}
    answer = await arm_client.call("PUT", world.cluster_id, body=body)
    assert answer.status == 400
    assert answer.body["error"]["code"] == "KeyVaultKeyNotFound"
    attached = world.sim.cluster(world.cluster_id)["identity"]["userAssignedIdentities"]
    assert set(attached) == {world.identity, world.other_identity}


async def test_key_identity_may_come_from_the_body(world, arm_client):
    """A key identity named only in the body is attached and used, once it may wrap and unwrap with the key."""
    sim = world.sim
    sim.add_role_assignment(
        sim.vault_arm_id(world.vault), sim.principal_id(world.other_identity), CRYPTO_SERVICE_ENCRYPTION_USER
    )
    body = world.put_body(identity=world.other_identity)
    answer = await arm_client.call("PUT", world.cluster_id, body=body)
    assert answer.status == 200
    assert (await _wait_done(arm_client, answer))["status"] == "Succeeded"
    cluster = world.sim.cluster(world.cluster_id)
    assert _cmk(cluster)["keyEncryptionKeyIdentity"]["userAssignedIdentityResourceId"] == world.other_identity
    # A PUT replaces the identity list with the body's.
    assert set(cluster["identity"]["userAssignedIdentities"]) == {world.other_identity}


async def test_key_identity_without_wrap_access_fails_the_operation(world, arm_client):
    """The write is accepted, then the operation fails with the service's error: the identity lacks wrap/unwrap."""
    body = world.put_body(identity=world.other_identity)
    answer = await arm_client.call("PUT", world.cluster_id, body=body)
    assert answer.status == 200
    final = await _wait_done(arm_client, answer)
    assert final["status"] == "Failed"
    assert final["error"]["code"] == "KeyVaultAccessForbidden"
    assert "wrapKey and unwrapKey" in final["error"]["message"]
    cluster = world.sim.cluster(world.cluster_id)
    assert _cmk(cluster)["keyEncryptionKeyIdentity"]["userAssignedIdentityResourceId"] == world.identity


async def test_failed_operation_keeps_the_old_key(world, arm_client):
    """A failed operation reports its error in the status and the operation result, and the cluster keeps the old key."""
    sim = world.sim
    new_version = sim.create_key_version(world.vault, "cmk")
    sim.fail_next_operation(world.cluster_id, code="KeyVaultAccessDenied", message="no access")
    answer = await arm_client.call("PUT", world.cluster_id, body=world.put_body(world.key_url(new_version)))
    assert answer.status == 200
    final = await _wait_done(arm_client, answer)
    assert final["status"] == "Failed"
    assert final["error"] == {"code": "KeyVaultAccessDenied", "message": "no access"}
    cluster = sim.cluster(world.cluster_id)
    assert _cmk(cluster)["keyEncryptionKeyUrl"] == world.key_url(world.v1)
    assert cluster["properties"]["provisioningState"] == "Succeeded"
    put = next(r for r in sim.requests if r.method == "PUT")
    assert (put.status, put.fault) == (200, "op-failed")
    result = await arm_client.call("GET", answer.headers["location"], api_version=None)
    assert result.status == 400
    assert result.body["error"]["code"] == "KeyVaultAccessDenied"


async def test_operation_failure_rate_fails_operations(world, arm_client):
    """With an operation failure rate of 1 every accepted PUT's operation ends Failed."""
    world.sim.set_operation_failure_rate(1.0)
    answer = await arm_client.call("PUT", world.cluster_id, body=world.put_body())
    assert (await _wait_done(arm_client, answer))["status"] == "Failed"


async def test_ignored_key_updates_succeed_without_changing_the_key(world, arm_client):
    """With key updates ignored the operation succeeds but the cluster keeps its old key."""
    sim = world.sim
    sim.ignore_key_updates(world.cluster_id)
    new_version = sim.create_key_version(world.vault, "cmk")
    answer = await arm_client.call("PUT", world.cluster_id, body=world.put_body(world.key_url(new_version)))
    assert (await _wait_done(arm_client, answer))["status"] == "Succeeded"
    assert _cmk(sim.cluster(world.cluster_id))["keyEncryptionKeyUrl"] == world.key_url(world.v1)


async def test_patch_is_202_with_location_and_applies_encryption(world, arm_client):
    """A PATCH is 202 with Location and changes the key; a PATCH without the key identity is 400 MissingEncryptionProperty."""
    new_version = world.sim.create_key_version(world.vault, "cmk")
    body = {"properties": copy.deepcopy(world.put_body(world.key_url(new_version))["properties"])}
    answer = await arm_client.call("PATCH", world.cluster_id, body=body)
    assert answer.status == 202
    assert answer.headers["location"]
    assert (await _wait_done(arm_client, answer))["status"] == "Succeeded"
    assert _cmk(world.sim.cluster(world.cluster_id))["keyEncryptionKeyUrl"] == world.key_url(new_version)
    bad = {"properties": {"encryption": {"customerManagedKeyEncryption": {"keyEncryptionKeyUrl": "x"}}}}
    refused = await arm_client.call("PATCH", world.cluster_id, body=bad)
    assert refused.status == 400
    assert refused.body["error"]["code"] == "MissingEncryptionProperty"


async def test_out_of_band_changes_show_in_get(world, arm_client):
    """Status and key changed out of band show in the next GET; a removed cluster is 404."""
    sim = world.sim
    sim.set_cluster_status(world.cluster_id, "Inaccessible")
    sim.set_cluster_key_url(world.cluster_id, world.key_url())
    body = (await arm_client.call("GET", world.cluster_id)).body
    assert body["properties"]["clusterStatus"] == "Inaccessible"
    assert _cmk(body)["keyEncryptionKeyUrl"] == world.key_url()
    sim.remove_cluster(world.cluster_id)
    assert (await arm_client.call("GET", world.cluster_id)).status == 404
