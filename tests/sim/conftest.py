"""Fixtures for the simulator's own tests: one simulator per session, its settings per test.

The CA must exist and ``SSL_CERT_FILE`` point at it before aiohttp is first imported (aiohttp builds its
verified SSL context at import), so this module does that at import time, before importing the
simulator. When a parent conftest already did it with an azsim CA, that CA directory is reused.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from azsim.tls import CA_CERT, LEAF_CERT, ensure_ca


def _ca_dir() -> Path:
    current = os.environ.get("SSL_CERT_FILE")
    if current:
        path = Path(current)
        if path.name == CA_CERT and (path.parent / LEAF_CERT).is_file():
            return path.parent
    if "aiohttp" in sys.modules:
        warnings.warn(
            "aiohttp was imported before SSL_CERT_FILE named the azsim CA; TLS to the simulator will fail",
            stacklevel=1,
        )
    created = Path(tempfile.mkdtemp(prefix="azsim-tests-", dir="/tmp"))
    atexit.register(shutil.rmtree, created, ignore_errors=True)
    return created


CA_DIR = _ca_dir()
CA = ensure_ca(CA_DIR)
os.environ["SSL_CERT_FILE"] = str(CA.cert_path)
os.environ["REQUESTS_CA_BUNDLE"] = str(CA.cert_path)

# Only now may aiohttp be imported (through the simulator and the Azure SDK).
from collections.abc import AsyncIterator, Iterator  # noqa: E402 - fixture return types
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
import pytest  # noqa: E402
from azure.identity.aio import DefaultAzureCredential  # noqa: E402

from azsim.simulator import Simulator  # noqa: E402

API_VERSION = "2025-07-01-preview"
ARM = "https://management.azure.com"

# Settings that would make DefaultAzureCredential take another path than managed identity.
_FOREIGN_SETTINGS = (
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "HTTP_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)


@pytest.fixture(scope="session")
def sim_server() -> Iterator[Simulator]:
    """One running simulator for the whole session."""
    sim = Simulator(ca_dir=CA_DIR, seed=7)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def sim_env(sim_server: Simulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    """The simulator's settings in os.environ, default behaviour, an empty request log."""
    for name in _FOREIGN_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in sim_server.env.items():
        monkeypatch.setenv(name, value)
    sim_server.reset()
    sim_server.clear_requests()
    yield sim_server
    sim_server.reset()


@dataclass
class World:
    """Resources created for one test, under a subscription of its own."""

    sim: Simulator
    subscription: str
    vault: str
    vault_url: str
    key: str
    version: str
    identity: str
    other_identity: str
    cluster_id: str
    plain_cluster_id: str

    def key_url(self, version: str | None = None) -> str:
        return self.sim.key_url(self.vault, self.key, version)

    def put_body(self, key_url: str | None = None, identity: str | None = None) -> dict[str, Any]:
        """The documented PUT body for the CMK cluster."""
        uami = identity or self.identity
        return {
            "identity": {"type": "UserAssigned", "userAssignedIdentities": {uami: {}}},
            "location": "westeurope",
            "properties": {
                "encryption": {
                    "customerManagedKeyEncryption": {
                        "keyEncryptionKeyIdentity": {
                            "identityType": "UserAssignedIdentity",
                            "userAssignedIdentityResourceId": uami,
                        },
                        "keyEncryptionKeyUrl": key_url or self.key_url(self.version),
                    }
                }
            },
        }


@pytest.fixture
def world(sim_env: Simulator) -> World:
    """A vault with one key, two identities, a CMK cluster and a service-managed cluster."""
    sub = str(uuid.uuid4())
    suffix = uuid.uuid4().hex[:8]
    vault = f"kv-{suffix}"
    vault_url = sim_env.add_vault(vault, subscription=sub)
    version = sim_env.create_key_version(vault, "cmk", emit_event=False)
    identity = sim_env.add_identity(subscription=sub, resource_group="rg-data", name="id-cmk")
    other = sim_env.add_identity(subscription=sub, resource_group="rg-data", name="id-other")
    cluster_id = sim_env.add_cluster(
        subscription=sub,
        resource_group="rg-data",
        name="orders",
        key_url=sim_env.key_url(vault, "cmk", version),
        identity=identity,
        tags={"team": "orders"},
    )
    plain = sim_env.add_cluster(subscription=sub, resource_group="rg-data", name="plain")
    return World(sim_env, sub, vault, vault_url, "cmk", version, identity, other, cluster_id, plain)


@pytest.fixture
async def credential(sim_env: Simulator) -> AsyncIterator[DefaultAzureCredential]:
    """DefaultAzureCredential, which reaches the simulator's managed-identity endpoint."""
    async with DefaultAzureCredential() as cred:
        yield cred


@dataclass
class Answer:
    """One HTTP answer."""

    status: int
    headers: dict[str, str]
    body: Any


class ArmClient:
    """Plain aiohttp (trust_env=True, so through HTTPS_PROXY) with a managed-identity token."""

    def __init__(self, session: aiohttp.ClientSession, token: str) -> None:
        self.session = session
        self.token = token

    async def call(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        api_version: str | None = API_VERSION,
        headers: dict[str, str] | None = None,
        token: str | None = "default",  # noqa: S107 - a marker, not a secret
    ) -> Answer:
        full = url if url.startswith("https://") else ARM + url
        params = {"api-version": api_version} if api_version and "api-version" not in full else None
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        async with self.session.request(method, full, json=body, params=params, headers=sent) as resp:
            text = await resp.text()
            parsed = await resp.json(content_type=None) if text else None
            return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, parsed)


@pytest.fixture
async def arm(credential: DefaultAzureCredential) -> AsyncIterator[ArmClient]:
    """An ARM client for raw requests."""
    token = await credential.get_token("https://management.azure.com/.default")
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(trust_env=True, connector=connector) as session:
        yield ArmClient(session, token.token)
