"""The local Azure simulator (over TLS, through HTTPS_PROXY): one per session, its settings per test.

The simulator's CA must exist and ``SSL_CERT_FILE`` name it before aiohttp is first imported (aiohttp
builds its verified SSL context at import), so this module, the first plugin ``tests/conftest.py`` loads,
does that first. Tests then reach the simulator only through the standard Azure SDK settings, exactly as
the deployed app reaches Azure.
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
from collections.abc import AsyncIterator, Iterator  # noqa: E402

import pytest  # noqa: E402
from azure.identity.aio import DefaultAzureCredential  # noqa: E402

from azsim.simulator import Simulator  # noqa: E402

# Settings that would send DefaultAzureCredential down another path than managed identity,
# or send traffic around the simulator's proxy.
FOREIGN_SETTINGS = (
    "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME", "AZURE_PASSWORD", "MSI_ENDPOINT", "MSI_SECRET",
    "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "HTTP_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "ALL_PROXY", "all_proxy", "AzureWebJobsStorage",
)  # fmt: skip


# CONNECTs the simulator's proxy refused, by test: only the proxy's own tests ask for a host it does not serve.
_REFUSED: list[tuple[str, str]] = []
_MAY_BE_REFUSED = "tests/sim/test_proxy.py"


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    """One running simulator for the session; at its end, no test but the proxy's reached for another host."""
    with Simulator(ca_dir=CA_DIR, seed=11) as sim:
        yield sim
    stray = [(test, target) for test, target in _REFUSED if not test.startswith(_MAY_BE_REFUSED)]
    assert not stray, f"CONNECT to hosts the simulator does not serve (a request left loopback?): {stray}"


@pytest.fixture
def sim(
    simulator: Simulator, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Simulator]:
    """The simulator's settings in os.environ, default behaviour, fast operations, an empty request log."""
    for name in FOREIGN_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in simulator.env.items():
        monkeypatch.setenv(name, value)
    simulator.reset()
    simulator.configure(operation_seconds=0.2, poll_interval=0.05)
    simulator.clear_requests()
    yield simulator
    _REFUSED.extend((request.node.nodeid, target) for target in simulator.refused_connects)
    simulator.reset()


@pytest.fixture
async def credential(sim: Simulator) -> AsyncIterator[DefaultAzureCredential]:
    """DefaultAzureCredential, which reaches the simulator's managed-identity endpoint."""
    async with DefaultAzureCredential() as cred:
        yield cred
