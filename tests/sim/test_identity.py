"""The App Service managed-identity endpoint, through DefaultAzureCredential."""

from __future__ import annotations

import dataclasses
import os

import aiohttp


async def test_default_credential_gets_a_token_from_identity_endpoint(sim, credential):
    """DefaultAzureCredential gets an ARM token from the identity endpoint, which logs the request without the token."""
    token = await credential.get_token("https://management.azure.com/.default")
    assert token.token in sim.tokens
    assert token.expires_on > 0
    record = [r for r in sim.requests if r.service == "identity"][-1]
    assert record.path == "/msi/token"
    assert record.status == 200
    assert record.query["resource"] == "https://management.azure.com"
    assert record.query["api-version"] == "2019-08-01"
    assert token.token not in repr(dataclasses.asdict(record))


async def test_every_token_is_new_and_random(sim):
    """Each token request answers a new random Bearer token for the requested resource and client id."""
    url = os.environ["IDENTITY_ENDPOINT"]
    headers = {"X-IDENTITY-HEADER": os.environ["IDENTITY_HEADER"]}
    params = {"api-version": "2019-08-01", "resource": "https://vault.azure.net", "client_id": "abc"}
    async with aiohttp.ClientSession(trust_env=True) as session:
        bodies = []
        for _ in range(2):
            async with session.get(url, params=params, headers=headers) as resp:
                assert resp.status == 200
                bodies.append(await resp.json())
    assert bodies[0]["access_token"] != bodies[1]["access_token"]
    assert len(bodies[0]["access_token"]) >= 32
    assert bodies[0]["token_type"] == "Bearer"
    assert bodies[0]["resource"] == "https://vault.azure.net"
    assert bodies[0]["client_id"] == "abc"
    assert int(bodies[0]["expires_on"]) > 0
    assert {b["access_token"] for b in bodies} <= sim.tokens


async def test_wrong_identity_header_is_401(sim):
    """A wrong X-IDENTITY-HEADER is 401 Unauthorized."""
    url = os.environ["IDENTITY_ENDPOINT"]
    params = {"api-version": "2019-08-01", "resource": "https://vault.azure.net"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, params=params, headers={"X-IDENTITY-HEADER": "wrong"}) as resp,
    ):
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "Unauthorized"


async def test_token_for_another_audience_is_refused_by_arm(world, credential, arm_client):
    """ARM refuses a Key Vault token with 401 InvalidAuthenticationTokenAudience."""
    vault_token = await credential.get_token("https://vault.azure.net/.default")
    answer = await arm_client.call("GET", world.cluster_id, token=vault_token.token)
    assert answer.status == 401
    assert answer.body["error"]["code"] == "InvalidAuthenticationTokenAudience"
