"""Session fixtures: the local Azure simulator (over TLS, through HTTPS_PROXY) and Azurite.

The simulator's CA must exist and ``SSL_CERT_FILE`` name it before aiohttp is first imported (aiohttp
builds its verified SSL context at import), so this module does that first. Tests then reach the simulator
only through the standard Azure SDK settings, exactly as the deployed app reaches Azure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from azsim.tls import ensure_ca

CA_DIR = Path(tempfile.mkdtemp(prefix="cmk-rotator-tests-"))
CA = ensure_ca(CA_DIR)
os.environ["SSL_CERT_FILE"] = str(CA.cert_path)
os.environ["REQUESTS_CA_BUNDLE"] = str(CA.cert_path)

# Only now may aiohttp be imported (through the simulator and the Azure SDK).
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from azsim.azurite import Azurite  # noqa: E402
from azsim.simulator import Simulator  # noqa: E402

# Settings that would send DefaultAzureCredential down another path than managed identity,
# or send traffic around the simulator's proxy.
FOREIGN_SETTINGS = (
    "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME", "AZURE_PASSWORD", "MSI_ENDPOINT", "MSI_SECRET",
    "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "HTTP_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "ALL_PROXY", "all_proxy", "AzureWebJobsStorage",
)  # fmt: skip


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    """One running simulator for the session."""
    with Simulator(ca_dir=CA_DIR, seed=11) as sim:
        yield sim


@pytest.fixture
def sim(simulator: Simulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    """The simulator's settings in os.environ, default behaviour, fast operations, an empty request log."""
    for name in FOREIGN_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in simulator.env.items():
        monkeypatch.setenv(name, value)
    simulator.reset()
    simulator.configure(operation_seconds=0.2, poll_interval=0.05)
    simulator.clear_requests()
    yield simulator
    simulator.reset()


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One Azurite (blob, queue, table) for the session, in memory, stopped at the end."""
    with Azurite() as server:
        yield server


@pytest.fixture
async def stack(sim: Simulator, azurite: Azurite, monkeypatch: pytest.MonkeyPatch):
    """A Service with its own tables and queue on Azurite, the simulator, and a vault and identity of its own."""
    import uuid
    from dataclasses import replace

    from stack import Stack

    from rotation.service.process import Service
    from rotation.settings import RetrySettings, Settings

    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    settings = replace(
        Settings.from_env({"AzureWebJobsStorage": azurite.connection_string}),
        retry=RetrySettings(max_attempts=4, max_seconds=20, initial_wait=0.02, max_wait=0.1),
        poll_budget_seconds=20,
        check_delay_seconds=0,
        max_concurrency=4,
    )
    suffix = uuid.uuid4().hex[:10]
    queue_name = f"jobs-{suffix}"
    tables = (f"w{suffix}", f"h{suffix}")
    service = Service.create(settings, watch_table=tables[0], history_table=tables[1], queue_name=queue_name)
    sub = str(uuid.uuid4())
    vault = f"kv-{suffix}"
    simulator = sim
    simulator.add_vault(vault, subscription=sub)
    identity = simulator.add_identity(subscription=sub, resource_group="rg-data", name="id-cmk")
    built = Stack(simulator, service, azurite.connection_string, queue_name, sub, vault, identity, tables)
    yield built
    await built.service.close()
