"""The simulator's event loop thread and its four loopback servers.

1. the CONNECT proxy (``HTTPS_PROXY``), tunnelling to
2. the TLS server, which dispatches on the Host header: ``management.*`` to ARM, vault hosts to Key Vault;
3. the managed-identity endpoint (plain http, ``IDENTITY_ENDPOINT``);
4. the control API (plain http, ``AZSIM_CONTROL_URL``).

Every ARM, Key Vault and identity request goes through :meth:`Runtime._serve`: fault injection, latency,
the handler, common headers, the request log.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from azsim.arm import handle_arm
from azsim.identity import handle_identity
from azsim.keyvault import handle_kv
from azsim.messages import Incoming, Reply, RequestRecord, error_reply
from azsim.proxy import ConnectProxy

if TYPE_CHECKING:
    from collections.abc import Callable

    from azsim.state import State
    from azsim.tls import CaFiles

__all__ = ["Ports", "Runtime"]

_START_TIMEOUT_S = 15.0
_SHUTDOWN_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Ports:
    """Where each server listens on 127.0.0.1."""

    proxy: int
    tls: int
    identity: int
    control: int


def service_for_host(host: str) -> str | None:
    """``arm`` or ``kv`` for a served host name, else None."""
    name = host.lower().rsplit(":", 1)[0] if host.count(":") == 1 else host.lower()
    if name.startswith("management."):
        return "arm"
    if ".vault." in name or name.endswith(".managedhsm.azure.net"):
        return "kv"
    return None


class Runtime:
    """Runs the servers on a private event loop in a daemon thread."""

    def __init__(
        self,
        state: State,
        ca: CaFiles,
        identity_header: str,
        control_routes: Callable[[web.Application], None],
    ) -> None:
        self._state = state
        self._ca = ca
        self._identity_header = identity_header
        self._control_routes = control_routes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self._proxy: ConnectProxy | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Ports:
        """Start the loop thread and every server; return their ports."""
        if self._loop is not None:
            raise RuntimeError("the simulator is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="azsim", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            return asyncio.run_coroutine_threadsafe(self._start(), loop).result(_START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every server and the loop thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), loop).result(_START_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_START_TIMEOUT_S)
            loop.close()
            self._loop = self._thread = None

    async def _start(self) -> Ports:
        tls_app = web.Application(client_max_size=4 * 1024 * 1024)
        tls_app.router.add_route("*", "/{tail:.*}", self._tls_entry)
        identity_app = web.Application()
        identity_app.router.add_route("*", "/{tail:.*}", self._identity_entry)
        control_app = web.Application()
        self._control_routes(control_app)

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._ca.leaf_cert_path, self._ca.leaf_key_path)

        tls_port = await self._serve_app(tls_app, context)
        identity_port = await self._serve_app(identity_app, None)
        control_port = await self._serve_app(control_app, None)

        def refused(target: str) -> None:
            with self._state.lock:
                self._state.refused_connects.append(target)

        self._proxy = ConnectProxy(tls_port, refused)
        proxy_port = await self._proxy.start()
        return Ports(proxy=proxy_port, tls=tls_port, identity=identity_port, control=control_port)

    async def _serve_app(self, app: web.Application, context: ssl.SSLContext | None) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        address = runner.addresses[0]
        port: int = address[1]
        return port

    async def _stop(self) -> None:
        if self._proxy is not None:
            await self._proxy.close()
            self._proxy = None
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    # -- request entry points ------------------------------------------------------------------

    async def _tls_entry(self, request: web.Request) -> web.StreamResponse:
        service = service_for_host(request.host)
        if service is None:
            reply = error_reply(421, "MisdirectedRequest", f"The simulator does not serve '{request.host}'.")
            return _to_response(reply)
        handler = handle_arm if service == "arm" else handle_kv
        return await self._serve(request, service, lambda req: handler(self._state, req))

    async def _identity_entry(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(
            request,
            "identity",
            lambda req: handle_identity(self._state, req, self._identity_header),
        )

    async def _serve(
        self,
        request: web.Request,
        service: str,
        handler: Callable[[Incoming], Reply],
    ) -> web.StreamResponse:
        received = time.time()
        raw = await request.read()
        host = request.host.rsplit(":", 1)[0] if request.host.count(":") == 1 else request.host
        incoming = Incoming(
            method=request.method,
            host=host.lower(),
            path=request.path,
            query={k: v for k, v in request.query.items()},  # noqa: C416 - MultiDict to dict
            headers={k.lower(): v for k, v in request.headers.items()},
            raw_body=raw,
        )
        with self._state.lock:
            fault = self._state.faults.draw(service, incoming.method, incoming.path)
            latency = self._state.config.latency
        if latency > 0 and service != "identity":
            await asyncio.sleep(latency)
        label: str | None = None
        reply: Reply | None = None
        if fault is not None:
            label = fault.label
            if fault.kind == "answer":
                self._record(incoming, service, fault.status_code, label, received)
                return web.Response(
                    status=fault.status_code,
                    headers={"Content-Type": "application/json", **dict(fault.headers)},
                    body=(fault.body or "").encode("utf-8"),
                )
            if fault.kind == "slow":
                await asyncio.sleep(fault.seconds)
            elif fault.kind == "reset":
                self._record(incoming, service, 0, "reset", received)
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
            elif fault.kind != "trickle":  # a trickle answers normally, slowly (below)
                reply = fault.reply()
        if reply is None:
            reply = handler(incoming)
        self._decorate(incoming, service, reply)
        self._record(incoming, service, reply.status, reply.fault or label, received)
        if fault is not None and fault.kind == "trickle":
            return await _trickle(request, _to_response(reply), fault.seconds)
        return _to_response(reply)

    @staticmethod
    def _decorate(incoming: Incoming, service: str, reply: Reply) -> None:
        if service == "identity":
            return
        headers = reply.headers
        headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
        correlation = incoming.headers.get("x-ms-correlation-request-id")
        headers.setdefault("x-ms-correlation-request-id", correlation or str(uuid.uuid4()))
        client_request_id = incoming.headers.get("x-ms-client-request-id")
        if client_request_id:
            headers.setdefault("x-ms-client-request-id", client_request_id)

    def _record(
        self, incoming: Incoming, service: str, status: int, fault: str | None, received: float
    ) -> None:
        body: Any = None
        if service != "identity":
            try:
                body = incoming.json_body()
            except ValueError:
                body = None
        record = RequestRecord(
            time=time.time(),
            service=service,
            method=incoming.method.upper(),
            host=incoming.host,
            path=incoming.path,
            query=dict(incoming.query),
            status=status,
            fault=fault,
            body=body,
            client_request_id=incoming.headers.get("x-ms-client-request-id"),
            received=received,
        )
        with self._state.lock:
            self._state.record(record)


async def _trickle(request: web.Request, response: web.Response, seconds: float) -> web.StreamResponse:
    """Send ``response``'s body one byte at a time, ``seconds`` apart (chunked: no Content-Length)."""
    body = response.body if isinstance(response.body, bytes) else b""
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.headers.pop("Content-Length", None)
    stream.enable_chunked_encoding()
    await stream.prepare(request)
    try:
        for index in range(len(body)):
            await stream.write(body[index : index + 1])
            await asyncio.sleep(seconds)
        await stream.write_eof()
    except ConnectionResetError:
        pass  # the client gave up on the trickle: what the fault is for
    return stream


def _to_response(reply: Reply) -> web.Response:
    if reply.body is None:
        return web.Response(status=reply.status, headers=reply.headers)
    return web.Response(
        status=reply.status,
        headers=reply.headers,
        body=json.dumps(reply.body).encode("utf-8"),
        content_type="application/json",
        charset="utf-8",
    )
