"""The process's shared HTTP session: proxies from the environment, one pool, closing order."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rotation.azure.transport import EnvironmentProxies, SharedHttp, SharedTransport

PROXY = "http://127.0.0.1:3128"


@pytest.mark.parametrize(
    ("environ", "url", "expected"),
    [
        ({"HTTPS_PROXY": PROXY}, "https://management.azure.com/subscriptions", PROXY),
        ({"HTTPS_PROXY": PROXY}, "http://127.0.0.1:10002/devstoreaccount1", None),  # no HTTP_PROXY
        ({"HTTP_PROXY": PROXY}, "http://st1.table.core.windows.net/t", PROXY),
        ({"https_proxy": PROXY, "HTTPS_PROXY": "http://other:1"}, "https://kv.vault.azure.net/keys/k", PROXY),
        ({"HTTPS_PROXY": PROXY, "https_proxy": ""}, "https://kv.vault.azure.net/keys/k", None),
        ({"HTTPS_PROXY": PROXY, "NO_PROXY": "127.0.0.1,localhost"}, "https://localhost:8443/x", None),
        ({"HTTPS_PROXY": PROXY, "NO_PROXY": ".vault.azure.net"}, "https://kv.vault.azure.net/keys/k", None),
        ({"HTTPS_PROXY": PROXY, "NO_PROXY": ".vault.azure.net"}, "https://management.azure.com/", PROXY),
        ({"HTTPS_PROXY": PROXY, "no_proxy": "*"}, "https://management.azure.com/", None),
        ({"HTTPS_PROXY": PROXY}, "https://user:pw@management.azure.com/", PROXY),
        ({}, "https://management.azure.com/", None),
    ],
)
def test_proxy_for_url_follows_the_standard_variables(
    environ: dict[str, str], url: str, expected: str | None
) -> None:
    """The proxy for a URL follows HTTPS_PROXY/NO_PROXY as the standard variables define them."""
    assert EnvironmentProxies(environ).for_url(url) == expected


def test_proxies_are_read_once() -> None:
    """Proxy settings are read once, when the object is made."""
    environ = {"HTTPS_PROXY": PROXY}
    proxies = EnvironmentProxies(environ)
    environ["HTTPS_PROXY"] = "http://elsewhere:1"
    assert proxies.for_url("https://management.azure.com/") == PROXY


async def test_clients_share_one_session_and_closing_one_leaves_it_open() -> None:
    """Clients share one session without trust_env; closing one leaves it open, closing the pool closes it."""
    http = SharedHttp(environ={})
    first, second = http.transport(), http.transport()
    await first.open()
    await second.open()
    assert first.session is second.session
    session = first.session
    assert session is not None
    assert session.trust_env is False  # no .netrc lookup on a worker thread before each request
    await first.close()
    assert not session.closed
    await second.open()
    assert second.session is session
    await http.close()
    assert session.closed
    await first.open()  # a client used after the pool was closed gets a new one, not a closed session
    assert first.session is not None
    assert not first.session.closed
    await http.close()


async def test_rotation_goes_through_the_proxy_on_the_shared_pool(stack, monkeypatch) -> None:
    """Every ARM, Key Vault and token request of a rotation reaches the simulator (only reachable by proxy)."""
    key, v1 = stack.new_key()
    cluster = stack.add_cluster(key, v1)
    await stack.register(cluster)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False)
    from rotation.store.jobs import Job

    body = Job.new(cluster, trigger="event", target_key_url=stack.sim.key_url(stack.vault, key, v2)).to_json()
    sent: list[str] = []
    original = SharedTransport.send

    async def counting(self: SharedTransport, request, **config):
        sent.append(request.url)
        return await original(self, request, **config)

    monkeypatch.setattr(SharedTransport, "send", counting)
    result = await stack.service.worker.handle_job(body)
    assert result is not None
    assert result.outcome.value == "rotated"
    services = {r.service for r in stack.sim.requests}
    assert {"arm", "kv"} <= services
    table_port = stack.service.registry.service_client.url.split(":")[2].split("/")[0]
    tables = [u for u in sent if f":{table_port}/" in u]
    # claim (read, write), watch row, operation, history, outcome, release: rule 7 and 8 in 7 requests; and
    # the shared ARM write budget's row, read (none yet) and written once for the PUT (rotation.store.budget)
    assert len(tables) == 9, tables
    assert sum("budget" in u for u in tables) == 1, (
        tables
    )  # its read names the row; the insert posts to the table
    arm = [u for u in sent if "management.azure.com" in u]
    assert len(arm) >= 4  # GET, PUT, at least one poll, verifying GET: all through the shared pool
    session = stack.service.runtime.http.session()
    assert not session.closed
    assert session.connector is not None
    assert session.connector.limit == 256


@contextlib.asynccontextmanager
async def _serving(path: str, handler: Any, **runner_options: Any) -> AsyncIterator[str]:
    """Serve ``handler`` at ``path`` on a free loopback port; yield its URL."""
    from aiohttp import web

    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def chunked_server():
    """A loopback HTTP server that streams 2 MiB with chunked encoding: no Content-Length is declared."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.StreamResponse:
        stream = web.StreamResponse()
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        try:
            for _ in range(32):
                await stream.write(b"x" * 65536)
            await stream.write_eof()
        except ConnectionResetError:
            pass  # the client stopped reading at its cap
        return stream

    async with _serving("/big", handler) as url:
        yield url


async def test_an_answer_without_a_declared_length_is_cut_at_the_cap(chunked_server, monkeypatch):
    """A chunked answer larger than the cap is refused while it is read, through aiohttp and azure-core alike."""
    from azure.core import AsyncPipelineClient
    from azure.core.exceptions import ServiceResponseError
    from azure.core.rest import HttpRequest

    from rotation.azure import transport

    monkeypatch.setattr(transport, "MAX_RESPONSE_BYTES", 1024 * 1024)
    http = SharedHttp(environ={})
    try:
        async with http.session().get(chunked_server) as response:
            assert response.content_length is None
            with pytest.raises(transport.ResponseTooLarge, match="over the 1048576-byte limit"):
                await response.read()
        async with AsyncPipelineClient(chunked_server, transport=http.transport()) as client:
            with pytest.raises(ServiceResponseError) as caught:
                await client.send_request(HttpRequest("GET", chunked_server))
        assert isinstance(caught.value.inner_exception, transport.ResponseTooLarge)
        monkeypatch.setattr(transport, "MAX_RESPONSE_BYTES", 4 * 1024 * 1024)
        async with http.session().get(chunked_server) as response:
            assert len(await response.read()) == 2 * 1024 * 1024  # under the cap: read whole
    finally:
        await http.close()


@pytest.fixture
async def counting_server():
    """A loopback HTTP server that keeps connections alive for 5 s and tells which connection served each call."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return web.Response(text=str(peer[1] if peer else -1))

    async with _serving("/", handler, keepalive_timeout=5.0) as url:  # Node.js's and Azurite's default
        yield url


async def test_an_idle_connection_is_closed_by_the_pool_before_the_server_closes_it(
    counting_server, monkeypatch
):
    """A connection idle longer than the pool keeps one is not sent on again: a new one is opened.

    A server closing an idle connection while a request is sent on it resets the request, and azure-core
    does not retry a POST or PATCH without an answer; the pool gives up idle connections first.
    """
    import asyncio

    from rotation.azure import transport

    monkeypatch.setattr(transport, "IDLE_CONNECTION_SECONDS", 1.0)
    http = SharedHttp(environ={})
    try:
        ports = []
        for pause in (0.0, 0.05, 1.6):  # the second well inside the idle limit, the third well past it
            await asyncio.sleep(pause)
            async with http.session().get(counting_server) as response:
                ports.append(await response.text())
        assert ports[0] == ports[1]  # reused while fresh
        assert ports[2] != ports[1]  # idle past the pool's limit (the server would still keep it): new
    finally:
        await http.close()


def test_the_pool_gives_up_idle_connections_before_azurite_does() -> None:
    """Azurite (Node.js) closes a connection idle for its keep-alive timeout; the pool's limit is below it."""
    import re
    from pathlib import Path

    from rotation.azure.transport import IDLE_CONNECTION_SECONDS

    root = Path(__file__).resolve().parents[2] / "node_modules" / "azurite" / "dist" / "src"
    for service in ("table", "queue"):
        constants = (root / service / "utils" / "constants.js").read_text()
        found = re.search(rf"DEFAULT_{service.upper()}_KEEP_ALIVE_TIMEOUT = (\d+)", constants)
        assert found is not None, f"Azurite's {service} keep-alive default not found"
        assert int(found.group(1)) / 2 > IDLE_CONNECTION_SECONDS  # room for a loaded loop's late release
