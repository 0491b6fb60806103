"""The HTTP CONNECT proxy that ``HTTPS_PROXY`` points at.

``CONNECT host:443`` for a served host is answered 200 and the bytes are piped to the internal TLS server
(which presents a certificate from the simulator's CA). Any other host gets 403 and is never contacted;
any other method gets 400.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ConnectProxy", "is_served_host"]

_EXACT_HOSTS = frozenset(
    {"management.azure.com", "management.chinacloudapi.cn", "management.usgovcloudapi.net"}
)
_WILDCARD_SUFFIXES = (
    ".vault.azure.net",
    ".vault.azure.cn",
    ".vault.usgovcloudapi.net",
    ".managedhsm.azure.net",
)
_HEAD_LIMIT = 16 * 1024
_HEAD_TIMEOUT_S = 10.0
_CHUNK = 64 * 1024


def is_served_host(host: str) -> bool:
    """Whether the simulator serves this host name (one label under a wildcard, like the certificate)."""
    name = host.lower().rstrip(".")
    if name in _EXACT_HOSTS:
        return True
    for suffix in _WILDCARD_SUFFIXES:
        label = name.removesuffix(suffix)
        if label != name and label and "." not in label:
            return True
    return False


def _response(status: str) -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode("ascii")


class ConnectProxy:
    """A raw asyncio server that tunnels CONNECT requests to ``127.0.0.1:{upstream_port}``."""

    def __init__(self, upstream_port: int, on_refused: Callable[[str], None]) -> None:
        self._upstream_port = upstream_port
        self._on_refused = on_refused
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        """Listen on a free loopback port; return it."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=_HEAD_LIMIT)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop listening and drop every open tunnel."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()  # flushes what the tunnel still holds, then closes
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT_S)
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3 or parts[0].upper() != "CONNECT":  # noqa: PLR2004
            writer.write(_response("400 Bad Request"))
            await writer.drain()
            return
        host, _, port = parts[1].rpartition(":")
        host = host.strip("[]")
        if port != "443" or not is_served_host(host):
            self._on_refused(parts[1])
            writer.write(_response("403 Forbidden"))
            await writer.drain()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        self._writers.add(up_writer)
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            tasks = {
                asyncio.ensure_future(_pipe(reader, up_writer)),
                asyncio.ensure_future(_pipe(up_reader, writer)),
            }
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._writers.discard(up_writer)
            up_writer.transport.abort()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await source.read(_CHUNK):
            sink.write(data)
            await sink.drain()
        if not sink.is_closing():
            # Flush what is buffered before the caller closes the other side.
            await sink.drain()
