"""The CONNECT proxy: served hosts are tunnelled to the simulator, nothing else leaves the machine."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from azsim.proxy import is_served_host


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    "target", ["example.com:443", "login.microsoftonline.com:443", "management.azure.com:80"]
)
async def test_connect_to_other_hosts_is_refused(sim, target):
    """A CONNECT to a host the simulator does not serve is 403 and logged as refused."""
    answer = await _exchange(sim.ports.proxy, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403")
    assert target in sim.refused_connects


async def test_plain_http_through_the_proxy_is_400(sim):
    """A plain-HTTP request through the proxy is 400."""
    answer = await _exchange(
        sim.ports.proxy, b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400")


async def test_connect_to_a_vault_host_reaches_the_tls_server(world):
    """A CONNECT to a vault host is 200 and TLS inside it reaches Key Vault (its 401 challenge)."""
    host = f"{world.vault}.vault.azure.net"
    reader, writer = await asyncio.open_connection("127.0.0.1", world.sim.ports.proxy)
    try:
        writer.write(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=str(world.sim.ca.cert_path))
        await writer.start_tls(context, server_hostname=host)
        writer.write(
            f"GET /keys/cmk?api-version=7.5 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 401")
    assert b"WWW-Authenticate" in answer


def test_served_hosts_follow_the_certificate():
    """Served hosts are exactly the certificate's names: ARM, one-label vault and HSM hosts of each cloud."""
    assert is_served_host("management.azure.com")
    assert is_served_host("Contoso-KV.vault.azure.net")
    assert is_served_host("hsm.managedhsm.azure.net")
    assert is_served_host("kv.vault.usgovcloudapi.net")
    assert not is_served_host("a.b.vault.azure.net")
    assert not is_served_host("vault.azure.net")
    assert not is_served_host("login.microsoftonline.com")
    assert not is_served_host("management.azure.com.evil.example")
