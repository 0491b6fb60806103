"""The simulator's mongoClusters answers against the published contract, so it cannot drift from the spec.

Each answer is compared with the fixture of the example it models (tests/contract/, each naming its file in
Azure/azure-rest-api-specs) and loaded into the official SDK's models (azure-mgmt-mongocluster 1.2.0) with no
field they do not know: GET, list, the PUT update (200) and create (201) answers, the Location result.
"""

from __future__ import annotations

import asyncio
import copy
import re
from typing import Any

import pytest

from tests.helpers.sdk_oracle import as_cluster, as_update, contract, shape

OPERATION_FIELDS = {"id", "name", "status", "startTime", "endTime", "error", "percentComplete", "properties"}


def _published_shape(*names_and_paths: tuple[str, str]) -> set[str]:
    out: set[str] = set()
    for name, where in names_and_paths:
        doc = contract(name)
        for part in where.split("."):
            doc = doc[part]
        out |= shape(doc)
    return out


GET_SHAPE = _published_shape(("get-cmk.json", "response.body"))
CREATED_SHAPE = _published_shape(("put-create-cmk.json", "response.body"), ("get-cmk.json", "response.body"))


def _url_pattern(url: str) -> re.Pattern[str]:
    """The fixture's operation URL with its subscription, location, id and api-version as wildcards."""
    fixture = contract("patch-cmk-202.json")["request"]
    operation_id = url.split("?", 1)[0].rsplit("/", 1)[1]
    variable = ("44444444-4444-4444-4444-444444444444", "westeurope", operation_id, fixture["api-version"])
    pattern = re.escape(url)
    for part in variable:
        pattern = pattern.replace(re.escape(part), "[^/?&]+")
    return re.compile(pattern)


async def _wait(arm_client, url: str) -> None:
    for _ in range(200):
        answer = await arm_client.call("GET", url, api_version=None)
        if answer.status != 202 and (answer.body or {}).get("status") != "InProgress":
            return
        await asyncio.sleep(0.02)
    raise AssertionError("operation never ended")


async def test_get_and_list_answers_have_the_published_shape(world, arm_client):
    """A GET and every list item fit the example's shape and load into MongoCluster with no unknown field."""
    got = (await arm_client.call("GET", world.cluster_id)).body
    assert shape(got) <= GET_SHAPE, shape(got) - GET_SHAPE
    as_cluster(got)
    listed = await arm_client.call(
        "GET", f"/subscriptions/{world.subscription}/providers/Microsoft.DocumentDB/mongoClusters"
    )
    assert len(listed.body["value"]) == 2
    for item in listed.body["value"]:
        assert shape(item) <= GET_SHAPE
        as_cluster(item)


@pytest.mark.parametrize("answer_mode", ["both", "location", "none"])
async def test_put_update_answers_200_with_the_selected_headers(world, arm_client, answer_mode):
    """An update PUT answers 200 (the spec: 200 update, 201 create) with the mode's headers and a valid body."""
    world.sim.configure(write_answer=answer_mode, operation_seconds=0.05, poll_interval=0.02)
    answer = await arm_client.call(
        "PUT",
        world.cluster_id,
        body=world.put_body(world.key_url(world.sim.create_key_version(world.vault, "cmk"))),
    )
    assert answer.status == 200
    assert shape(answer.body) <= GET_SHAPE
    as_cluster(answer.body)
    published = contract("patch-cmk-202.json")["response"]["headers"]
    expected = {"both": {"Azure-AsyncOperation", "Location"}, "location": {"Location"}, "none": set()}[
        answer_mode
    ]
    assert {h for h in published if h.lower() in answer.headers} == expected
    for name in expected:
        assert _url_pattern(published[name]).fullmatch(answer.headers[name.lower()]), answer.headers[
            name.lower()
        ]
    assert answer.headers["retry-after"]
    if "Location" in expected:
        await _wait(arm_client, answer.headers["location"])
        result = await arm_client.call("GET", answer.headers["location"], api_version=None)
        assert result.status == 200
        as_cluster(result.body)


async def test_patch_cmk_answers_202_with_the_published_headers(world, arm_client):
    """A PatchCMK-shaped PATCH answers 202 with both headers, each URL of the example's shape."""
    world.sim.configure(operation_seconds=0.05, poll_interval=0.02)
    body = copy.deepcopy(contract("patch-cmk-202.json")["request"]["body"])
    body["identity"]["userAssignedIdentities"] = {world.identity: {}}
    cmk = body["properties"]["encryption"]["customerManagedKeyEncryption"]
    cmk["keyEncryptionKeyIdentity"]["userAssignedIdentityResourceId"] = world.identity
    cmk["keyEncryptionKeyUrl"] = world.key_url(world.sim.create_key_version(world.vault, "cmk"))
    as_update(body)
    answer = await arm_client.call("PATCH", world.cluster_id, body=body)
    published = contract("patch-cmk-202.json")["response"]
    assert answer.status == published["status"]
    for name, url in published["headers"].items():
        assert _url_pattern(url).fullmatch(answer.headers[name.lower()]), answer.headers[name.lower()]
    status = await arm_client.call("GET", answer.headers["azure-asyncoperation"], api_version=None)
    assert set(status.body) <= OPERATION_FIELDS
    assert status.body["status"] in {"InProgress", "Succeeded"}
    await _wait(arm_client, answer.headers["azure-asyncoperation"])
    after = (await arm_client.call("GET", world.cluster_id)).body
    as_cluster(after)
    assert after["tags"] == {"team": "orders"}  # PATCH merges: tags it did not name stay


async def test_put_create_answers_201_provisioning_like_the_example(world, arm_client):
    """A create PUT in the Create_CMK example's shape answers 201, InProgress/Provisioning, valid for the SDK."""
    world.sim.configure(operation_seconds=0.05, poll_interval=0.02)
    published = contract("put-create-cmk.json")
    body = copy.deepcopy(published["request"]["body"])
    body["identity"]["userAssignedIdentities"] = {world.identity: {}}
    cmk = body["properties"]["encryption"]["customerManagedKeyEncryption"]
    cmk["keyEncryptionKeyIdentity"]["userAssignedIdentityResourceId"] = world.identity
    cmk["keyEncryptionKeyUrl"] = world.key_url()
    new_id = world.cluster_id.rsplit("/", 1)[0] + "/orders-new"
    answer = await arm_client.call("PUT", new_id, body=body)
    assert answer.status == published["response"]["status"]
    states = ("provisioningState", "clusterStatus")
    assert [answer.body["properties"][s] for s in states] == [
        published["response"]["body"]["properties"][s] for s in states
    ]
    assert shape(answer.body) <= CREATED_SHAPE, shape(answer.body) - CREATED_SHAPE
    as_cluster(answer.body)
    assert "password" not in repr(answer.body)  # the administrator's password is never returned
    await _wait(arm_client, answer.headers["azure-asyncoperation"])
    created = (await arm_client.call("GET", new_id)).body
    as_cluster(created)
    assert created["properties"]["compute"] == body["properties"]["compute"]
    assert created["properties"]["highAvailability"] == body["properties"]["highAvailability"]


async def test_put_without_tags_clears_them_and_patch_merges(world, arm_client):
    """A PUT replaces the tags (none sent: none left); a PATCH merges them (null removes one)."""
    world.sim.configure(operation_seconds=0.0)
    patched = await arm_client.call("PATCH", world.cluster_id, body={"tags": {"owner": "x", "team": None}})
    assert patched.status == 202
    assert (await arm_client.call("GET", world.cluster_id)).body["tags"] == {"owner": "x"}
    body = world.put_body()
    assert "tags" not in body
    assert (await arm_client.call("PUT", world.cluster_id, body=body)).status == 200
    assert (await arm_client.call("GET", world.cluster_id)).body["tags"] == {}
    body["tags"] = {"a": "b"}
    await arm_client.call("PUT", world.cluster_id, body=body)
    assert (await arm_client.call("GET", world.cluster_id)).body["tags"] == {"a": "b"}


async def test_resetting_put_mode_resets_only_omitted_service_properties(world, arm_client):
    """With put_resets_omitted a PUT sets what it leaves out to the service defaults; what it sends stays."""
    world.sim.configure(operation_seconds=0.0, put_resets_omitted=True)
    body = world.put_body()
    body["properties"]["publicNetworkAccess"] = "Disabled"
    await arm_client.call("PUT", world.cluster_id, body=body)
    props = (await arm_client.call("GET", world.cluster_id)).body["properties"]
    assert props["publicNetworkAccess"] == "Disabled"
    assert props["highAvailability"] == {"targetMode": "Disabled"}
    assert props["authConfig"] == {"allowedModes": ["NativeAuth"]}
    assert props["compute"] == {"tier": "M30"}  # not a property the service resets


async def test_encryption_update_is_refused_before_its_api_version_in_that_mode(world, arm_client):
    """In the create-only mode, a key change at 2025-07-01-preview is a 400 saying it cannot be updated."""
    world.sim.configure(encryption_updatable_from="2025-08-01-preview", operation_seconds=0.0)
    body = world.put_body(world.key_url(world.sim.create_key_version(world.vault, "cmk")))
    refused = await arm_client.call("PUT", world.cluster_id, body=body)
    assert refused.status == 400
    assert "cannot be updated" in refused.body["error"]["message"]
    assert (await arm_client.call("PUT", world.cluster_id, body=body, api_version="2025-09-01")).status == 200


@pytest.mark.parametrize("answer_mode", ["both", "location", "none"])
@pytest.mark.parametrize("method", ["put", "patch"])
async def test_the_official_sdk_drives_each_write_to_completion(world, credential, method, answer_mode):
    """azure-mgmt-mongocluster's own client and ARMPolling finish a key change in each write-answer mode."""
    from azure.mgmt.mongocluster.aio import MongoClusterMgmtClient

    world.sim.configure(write_answer=answer_mode, operation_seconds=0.1, poll_interval=0.02)
    new_url = world.key_url(world.sim.create_key_version(world.vault, "cmk"))
    name = world.cluster_id.rsplit("/", 1)[1]
    async with MongoClusterMgmtClient(credential, world.subscription) as client:
        if method == "put":
            body = {**world.put_body(new_url), "tags": {"team": "orders"}}
            poller = await client.mongo_clusters.begin_create_or_update(
                "rg-data", name, body, polling_interval=0.02
            )
        else:
            body = world.put_body(new_url)
            del body["location"]
            poller = await client.mongo_clusters.begin_update("rg-data", name, body, polling_interval=0.02)
        result = await asyncio.wait_for(poller.result(), 10)
    assert result.properties.encryption.customer_managed_key_encryption.key_encryption_key_url == new_url
    assert result.properties.provisioning_state == "Succeeded"
    assert result.tags == {"team": "orders"}
    assert _cmk_of(world.sim.cluster(world.cluster_id)) == new_url


def _cmk_of(body: dict[str, Any]) -> str:
    return body["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"]
