"""One HTTP connection pool per process for every Azure SDK client the rotator builds.

By default azure-core gives each client its own aiohttp session with ``trust_env=True``. aiohttp then looks
for a ``.netrc`` file on a worker thread before every request (aiohttp 3.10 and later), and each client
keeps its own pool of connections. On the queue worker's path (about a dozen storage and ARM requests per
job) that thread hop and file lookup was about a third of the CPU a request cost
(`make bench`; docs/benchmarks.md).

Here the proxy settings are read once from the same environment variables that azure-core and aiohttp
honour (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``, any case; parsed by `urllib.request`), the proxy is
chosen per host, and one aiohttp session serves ARM, Key Vault, the managed-identity endpoint and storage.
A proxy URL may carry ``user:password@``; credentials in ``.netrc`` are not read.
"""

from __future__ import annotations

import os
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from azure.core.pipeline.transport._aiohttp import AioHttpTransport  # the public name is a lazy Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from aiohttp.connector import Connection
    from azure.core.rest import AsyncHttpResponse, HttpRequest

# Connections the process keeps open at most, over all hosts. The queue worker runs up to a few hundred
# invocations at once; each has at most one request in flight.
CONNECTION_LIMIT = 256
# Connections to one host (one storage endpoint, ARM through its proxy) at most: past it a request waits for
# a free connection instead of opening one more. A burst of hundreds of jobs otherwise opens hundreds of
# connections to one endpoint at once, each a TCP (and TLS) handshake; 128 requests in flight to one host
# are more than a worker's CPU keeps busy (docs/benchmarks.md).
CONNECTIONS_PER_HOST = 128
# An idle connection is closed after this long, before the server would close it (Azurite and other Node.js
# servers: 5 s). A request sent on a connection the server is closing at that moment is reset, and azure-core
# does not retry a POST or PATCH that got no answer. aiohttp counts idle time from when the client released
# the connection, the server from when it sent the answer: the margin covers up to 3 s of a loaded event loop
# and the network, which makes such a reset unlikely, not impossible (one is then a transient failure: the
# job is retried or queued again). Against Azure, whose servers keep connections longer, a pause of more
# than 2 s on a host costs a new TLS handshake.
IDLE_CONNECTION_SECONDS = 2.0
# No answer the rotator reads is near this; a larger declared body is refused before it is read.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024


class ResponseTooLarge(aiohttp.ClientResponseError):
    """An answer's body is larger than `MAX_RESPONSE_BYTES` (azure-core: ServiceResponseError)."""


def _too_large(response: aiohttp.ClientResponse, size: str) -> ResponseTooLarge:
    response.close()
    return ResponseTooLarge(
        response.request_info,
        response.history,
        status=response.status,
        message=f"answer of {size} bytes is over the {MAX_RESPONSE_BYTES}-byte limit",
    )


class _CappedBody:
    """The body stream of an answer that declared no length: reading past `MAX_RESPONSE_BYTES` raises.

    aiohttp's ``ClientResponse.read()`` and azure-core's streamed downloads both read through
    ``response.content.read``; everything else is the wrapped `aiohttp.StreamReader`'s own.
    """

    def __init__(self, inner: aiohttp.StreamReader, response: aiohttp.ClientResponse) -> None:
        self._inner = inner
        self._response = response
        self._seen = 0

    def _count(self, data: bytes) -> bytes:
        self._seen += len(data)
        if self._seen > MAX_RESPONSE_BYTES:
            raise _too_large(self._response, f"more than {MAX_RESPONSE_BYTES}")
        return data

    async def read(self, n: int = -1) -> bytes:
        """Read as `aiohttp.StreamReader.read`, counting; the whole body in chunks when ``n`` is -1."""
        if n >= 0:
            return self._count(await self._inner.read(n))
        chunks = []
        while chunk := await self._inner.read(64 * 1024):
            chunks.append(self._count(chunk))
        return b"".join(chunks)

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - the wrapped reader's own attributes
        return getattr(self._inner, name)


class _CappedResponse(aiohttp.ClientResponse):
    """An answer declaring a length over the limit is refused unread; one declaring none is capped.

    Its body is then read through `_CappedBody`. A response class rather than a trace hook: with any trace
    configured, aiohttp builds and sends five trace events per request, a few per cent of a worker's CPU.
    """

    async def start(self, connection: Connection) -> aiohttp.ClientResponse:
        """Read the status and headers (aiohttp's own), then check the declared length."""
        response = await super().start(connection)
        length = self.content_length
        if length is None:
            self.content = _CappedBody(self.content, self)  # type: ignore[assignment]
        elif length > MAX_RESPONSE_BYTES:
            raise _too_large(self, str(length))
        return response


# urllib's NO_PROXY matcher (suffixes, ports, '*'), the one aiohttp uses; not in the type stubs.
_proxy_bypass: Callable[[str, dict[str, str]], bool] = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]


class EnvironmentProxies:
    """The proxy for each URL, from the process environment as read when this was built."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        # As urllib.request.getproxies_environment: ``*_proxy`` names in any case, lower case winning.
        found: dict[str, str] = {}
        for lower_wins in (False, True):
            for name, value in env.items():
                if name.lower().endswith("_proxy") and (name == name.lower()) == lower_wins:
                    scheme = name.lower().removesuffix("_proxy")
                    if value:
                        found[scheme] = value
                    else:
                        found.pop(scheme, None)
        self._proxies = {scheme: url for scheme, url in found.items() if scheme in {"http", "https", "no"}}
        self._by_origin: dict[tuple[str, str], str | None] = {}

    def for_url(self, url: str) -> str | None:
        """The proxy URL to send ``url`` through, or None to connect directly."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        netloc = parts.netloc.rpartition("@")[2].lower()
        origin = (scheme, netloc)
        if origin not in self._by_origin:
            proxy = self._proxies.get(scheme)
            if proxy and _proxy_bypass(netloc, self._proxies):
                proxy = None
            self._by_origin[origin] = proxy or None
        return self._by_origin[origin]


class SharedHttp:
    """The process's aiohttp session (created on first use, inside the running loop) and its transports."""

    def __init__(self, *, environ: Mapping[str, str] | None = None, limit: int = CONNECTION_LIMIT) -> None:
        self.proxies = EnvironmentProxies(environ)
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The session, opened now if needed (must be called from the event loop that will use it)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                response_class=_CappedResponse,
                connector=aiohttp.TCPConnector(
                    limit=self._limit,
                    limit_per_host=CONNECTIONS_PER_HOST,
                    keepalive_timeout=IDLE_CONNECTION_SECONDS,
                ),
                trust_env=False,  # proxies come from `EnvironmentProxies`; no per-request .netrc lookup
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,  # as azure-core's own sessions: its pipeline decodes
            )
        return self._session

    def transport(self) -> SharedTransport:
        """A transport for one SDK client; closing it leaves the shared session open."""
        return SharedTransport(self)

    async def close(self) -> None:
        """Close the session and its connections (after every client using it is closed)."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def transport_kwargs(http: SharedHttp | None) -> dict[str, Any]:
    """``transport=`` for an SDK client on ``http``'s pool; nothing (its own pool) when ``http`` is None."""
    return {"transport": http.transport()} if http is not None else {}


class SharedTransport(AioHttpTransport):
    """azure-core's aiohttp transport over the `SharedHttp` session, with the proxy chosen per host."""

    def __init__(self, shared: SharedHttp) -> None:
        super().__init__(session_owner=True, use_env_settings=False)
        self._shared = shared

    async def open(self) -> None:
        """Use the shared session as it is now (azure-core would otherwise open one of its own)."""
        self.session = self._shared.session()
        self._has_been_opened = True

    async def close(self) -> None:
        """Forget the session; it belongs to the `SharedHttp`, which other clients still use."""
        self.session = None
        self._has_been_opened = False

    async def send(self, request: HttpRequest, **config: Any) -> AsyncHttpResponse:  # type: ignore[override]  # noqa: ANN401
        """Send ``request`` through the proxy the environment names for its host (unless one is given)."""
        if config.get("proxy") is None and not config.get("proxies"):
            proxy = self._shared.proxies.for_url(request.url)
            if proxy is not None:
                config["proxy"] = proxy
        response: AsyncHttpResponse = await super().send(request, **config)
        return response
