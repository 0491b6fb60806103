"""The rotator against the published contract: fixtures in the spec examples' shapes, and the SDK's models.

Fixtures (tests/contract/*.json) follow Azure/azure-rest-api-specs examples (each names its file); they go
through `Cluster.from_arm`, the body builders and the LRO code (`ClustersClient` with a transport that
replays the fixture's answers). Every body the rotator builds round-trips through the official SDK's models
(azure-mgmt-mongocluster 1.2.0) with no field they do not know.
"""

from __future__ import annotations

import json
from typing import Any, Self

import pytest
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import AsyncHttpTransport
from azure.core.rest._http_response_impl_async import AsyncHttpResponseImpl
from azure.core.utils import CaseInsensitiveDict

from rotation.azure.arm import Cluster, ClustersClient
from rotation.azure.lro import OperationKind
from rotation.ids import parse_cluster_id, parse_key_url
from rotation.write_body import build_body, build_patch_body
from tests.helpers.sdk_oracle import as_cluster, as_update, contract

FIXTURES = ("get-cmk.json", "put-create-cmk.json", "patch-cmk-202.json")
TARGET = parse_key_url("https://orders-kv.vault.azure.net/keys/cmk-docdb/1f2e3d4c5b6a79880796a5b4c3d2e1f0")


class _Closed:
    async def close(self) -> None:
        return None


class ReplayTransport(AsyncHttpTransport):  # type: ignore[type-arg]
    """Answers each request with the next scripted (method, status, headers, body); records the requests."""

    def __init__(self, answers: list[tuple[str, int, dict[str, str], Any]]) -> None:
        self.answers = list(answers)
        self.requests: list[Any] = []

    async def send(self, request: Any, **kwargs: Any) -> AsyncHttpResponseImpl:  # noqa: ARG002
        method, status, headers, body = self.answers.pop(0)
        assert request.method == method
        self.requests.append(request)
        content = json.dumps(body).encode() if body is not None else b""
        response = AsyncHttpResponseImpl(
            request=request,
            internal_response=_Closed(),
            status_code=status,
            reason="OK",
            content_type="application/json",
            headers=CaseInsensitiveDict({"Content-Type": "application/json", **headers}),
            stream_download_generator=None,
        )
        response._content = content
        return response

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


class StaticToken:
    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:  # noqa: ARG002
        return AccessToken("token", 2**31)

    async def close(self) -> None:
        return None


def client(transport: ReplayTransport, api: str = "2025-09-01") -> ClustersClient:
    """An ARM clusters client on the replayed transport, at ``api``."""
    return ClustersClient(
        "https://management.azure.com", StaticToken(), api_version=api, transport=transport, pacer=None
    )


@pytest.mark.parametrize("name", FIXTURES)
def test_each_fixture_names_the_published_example_it_follows(name):
    """Every contract fixture cites a file of the mongocluster REST spec's examples."""
    source = contract(name)["source"]
    assert source.startswith("Azure/azure-rest-api-specs/specification/mongocluster/")
    assert "/examples/" in source


def test_fixtures_pass_the_sdk_models():
    """The fixtures themselves are valid for the official SDK (the oracle accepts the published shapes)."""
    as_cluster(contract("get-cmk.json")["response"]["body"])
    create = contract("put-create-cmk.json")
    as_cluster(create["request"]["body"])
    as_cluster(create["response"]["body"])
    as_update(contract("patch-cmk-202.json")["request"]["body"])


def test_the_oracle_rejects_a_field_the_spec_does_not_have():
    """An unknown field at any depth fails the round trip (the oracle is not a rubber stamp)."""
    body = contract("get-cmk.json")["response"]["body"]
    body["properties"]["encryption"]["customerManagedKeyEncryption"]["keyVersion"] = "x"
    with pytest.raises(AssertionError, match="keyVersion"):
        as_cluster(body)
    with pytest.raises(AssertionError, match="location"):
        as_update({"location": "westeurope", "properties": {}})


def test_get_fixture_reads_into_a_cluster():
    """The published GET shape gives the cluster's key, identity, tags and states."""
    body = contract("get-cmk.json")["response"]["body"]
    cluster = Cluster.from_arm(body)
    cmk = body["properties"]["encryption"]["customerManagedKeyEncryption"]
    assert cluster.key_url == cmk["keyEncryptionKeyUrl"]
    assert cluster.key_identity == cmk["keyEncryptionKeyIdentity"]["userAssignedIdentityResourceId"]
    assert cluster.identity_ids == tuple(body["identity"]["userAssignedIdentities"])
    assert (cluster.identity_type, cluster.location) == ("UserAssigned", "westeurope")
    assert cluster.tags == {"costCentre": "4711", "owner": "orders"}
    assert (cluster.provisioning_state, cluster.cluster_status) == ("Succeeded", "Ready")


def test_create_answer_reads_as_a_provisioning_cluster():
    """The 201 of a create reads as InProgress/Provisioning, with its (versionless) key."""
    cluster = Cluster.from_arm(contract("put-create-cmk.json")["response"]["body"])
    assert (cluster.provisioning_state, cluster.cluster_status) == ("InProgress", "Provisioning")
    assert cluster.is_cmk


def test_put_body_round_trips_through_the_sdk_and_has_the_create_request_shape():
    """The PUT body is a MongoCluster with no unknown field, using the create example's encryption block."""
    cluster = Cluster.from_arm(contract("get-cmk.json")["response"]["body"])
    body = build_body(cluster, TARGET)
    model = as_cluster(body)
    assert model.properties.encryption.customer_managed_key_encryption.key_encryption_key_url == str(TARGET)
    published = contract("put-create-cmk.json")["request"]["body"]
    assert body["identity"].keys() == published["identity"].keys()
    assert (
        body["properties"]["encryption"]["customerManagedKeyEncryption"].keys()
        == published["properties"]["encryption"]["customerManagedKeyEncryption"].keys()
    )
    assert body["tags"] == cluster.tags


def test_patch_body_round_trips_and_has_the_patch_cmk_shape():
    """The PATCH body is a MongoClusterUpdate with exactly the PatchCMK example's fields."""
    cluster = Cluster.from_arm(contract("get-cmk.json")["response"]["body"])
    body = build_patch_body(cluster, TARGET)
    as_update(body)
    published = contract("patch-cmk-202.json")["request"]["body"]

    def keys(doc: Any) -> Any:
        if isinstance(doc, dict):
            return {k if not k.startswith("/subscriptions/") else "*": keys(v) for k, v in doc.items()}
        return None

    assert keys(body) == keys(published)


@pytest.mark.parametrize(
    ("headers", "kind", "poll_url_key"),
    [
        (("Azure-AsyncOperation", "Location"), OperationKind.ASYNC_OPERATION, "Azure-AsyncOperation"),
        (("Location",), OperationKind.LOCATION, "Location"),
        ((), OperationKind.RESOURCE, None),
    ],
    ids=["both-headers", "location-only", "no-header"],
)
async def test_patch_cmk_202_is_followed_the_way_arm_polling_does(headers, kind, poll_url_key):
    """The example's 202 is followed through Azure-AsyncOperation, else Location, else the resource."""
    fixture = contract("patch-cmk-202.json")
    cluster_id = parse_cluster_id(fixture["request"]["cluster_id"])
    given = {name: fixture["response"]["headers"][name] for name in headers}
    running_cluster = {
        **contract("get-cmk.json")["response"]["body"],
        "properties": {"provisioningState": "Updating"},
    }
    poll_running: tuple[str, int, dict[str, str], Any]
    poll_done: tuple[str, int, dict[str, str], Any]
    if kind is OperationKind.ASYNC_OPERATION:
        poll_running = ("GET", 200, {"Retry-After": "2"}, {"status": "InProgress"})
        poll_done = ("GET", 200, {}, {"status": "Succeeded"})
    elif kind is OperationKind.LOCATION:
        poll_running = ("GET", 202, {"Retry-After": "2"}, None)
        poll_done = ("GET", 200, {}, contract("get-cmk.json")["response"]["body"])
    else:
        poll_running = ("GET", 200, {}, running_cluster)
        poll_done = ("GET", 200, {}, contract("get-cmk.json")["response"]["body"])
    transport = ReplayTransport([("PATCH", 202, given, None), poll_running, poll_done])
    async with client(transport) as arm:
        accepted = await arm.patch(cluster_id, fixture["request"]["body"])
        assert accepted.kind is kind
        assert not accepted.done
        if poll_url_key is not None:
            assert accepted.url == fixture["response"]["headers"][poll_url_key]
        else:
            assert accepted.url == f"https://management.azure.com{cluster_id}"
        first = await arm.operation_status(accepted.url, cluster_id=cluster_id, kind=accepted.kind)
        second = await arm.operation_status(accepted.url, cluster_id=cluster_id)  # resumed: kind from URL
    assert not first.done
    assert first.retry_after == (None if kind is OperationKind.RESOURCE else 2.0)
    assert second.succeeded
    polled = [str(r.url) for r in transport.requests[1:]]
    if poll_url_key is not None:
        assert polled == [fixture["response"]["headers"][poll_url_key]] * 2
    else:
        assert all(u.startswith(f"https://management.azure.com{cluster_id}?api-version=") for u in polled)
