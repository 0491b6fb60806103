"""Key Vault adapter on ``azure-keyvault-keys`` (aio): a version's properties, a key's versions.

A pure adapter: HTTP, paging and the answers parsed into `rotation.key_rules.KeyVersion`; rule 3 (which
version is usable, which is the newest usable one) is `rotation.key_rules`. The SDK's own retry is off
(``retry_total=0``): tenacity is the one retry layer (rule 6).

Permissions: reading key properties and listing versions (``keys/get``, ``keys/list`` access policy, or
``Microsoft.KeyVault/vaults/keys/read`` data action, e.g. the Key Vault Reader role). No key material
and no cryptographic operation is ever requested.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.keys.aio import KeyClient

from rotation.azure.http_errors import from_azure_error
from rotation.azure.transport import transport_kwargs
from rotation.errors import ServiceError
from rotation.key_rules import KeyVersion, pick_newest_usable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from azure.core.credentials_async import AsyncTokenCredential
    from azure.keyvault.keys import KeyProperties, KeyRotationPolicy, KeyVaultKey

    from rotation.azure.transport import SharedHttp
    from rotation.ids import KeyUrl

# How long a version's properties read from Key Vault are reused by this process. A fan-out of one key to
# many clusters then reads each version once (per process), not once per cluster; a version disabled in
# the vault is seen by rotations starting after this, as by one that read it just before the change.
VERSION_CACHE_SECONDS = 15.0
# A key's version listing longer than this many pages (25 versions each) is refused: a nextLink that leads
# back to itself would otherwise page forever. Key Vault keeps at most a few hundred versions of a key.
MAX_LIST_PAGES = 200
# The whole of one adapter call (every page of a listing, every byte of an answer), however slowly it comes.
CALL_DEADLINE_SECONDS = 60.0
_T = TypeVar("_T")


class KeyVaultKeys:
    """Reads key versions from any number of vaults; one `KeyClient` per vault, reused for the process."""

    def __init__(
        self,
        credential: AsyncTokenCredential,
        *,
        read_timeout: float = 30.0,
        cache_seconds: float = VERSION_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        http: SharedHttp | None = None,
        deadline: float = CALL_DEADLINE_SECONDS,
        max_pages: int = MAX_LIST_PAGES,
    ) -> None:
        self._credential = credential
        self._deadline = deadline
        self._max_pages = max_pages
        self._http = http
        self._clients: dict[str, KeyClient] = {}
        self._read_timeout = read_timeout
        self._cache_seconds = cache_seconds
        self._clock = clock
        # version URL -> (read at, properties); and the reads in flight, shared by concurrent callers
        self._versions: dict[str, tuple[float, KeyVersion]] = {}
        self._reading: dict[str, asyncio.Future[KeyVersion]] = {}
        self._ahead: set[asyncio.Task[KeyVersion]] = set()  # `read_ahead` reads nobody awaits yet

    async def close(self) -> None:
        """Close every vault client (reads started by `read_ahead` are cancelled first)."""
        for task in list(self._ahead):
            task.cancel()
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()

    def _client(self, key: KeyUrl) -> KeyClient:
        client = self._clients.get(key.vault_url)
        if client is None:
            client = KeyClient(
                key.vault_url,
                self._credential,
                retry_total=0,
                connection_timeout=10,
                read_timeout=self._read_timeout,
                **transport_kwargs(self._http),
            )
            self._clients[key.vault_url] = client
        return client

    async def rotation_policy(self, key: KeyUrl) -> KeyRotationPolicy:
        """The key's rotation policy (``keys/getrotationpolicy``); `NotFoundError` when it has none."""
        client = self._client(key)
        return await _call(lambda: client.get_key_rotation_policy(key.name), key, self._deadline)

    def read_ahead(self, keys: Iterable[KeyUrl]) -> None:
        """Start `get_version` for each versioned key not kept or being read, and return at once.

        A job calls it for the versions it will read after requests of its own: its `get_version` then
        shares the read. A failure here is dropped (the job's own read tries again and reports it).
        """
        for key in keys:
            url = str(key).lower()
            if key.version is None or self._kept(url) is not None or url in self._reading:
                continue
            task = asyncio.get_running_loop().create_task(self.get_version(key))
            self._ahead.add(task)
            task.add_done_callback(self._ahead_done)

    def _ahead_done(self, task: asyncio.Task[KeyVersion]) -> None:
        self._ahead.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the job's own read reports a failure

    def _kept(self, url: str) -> KeyVersion | None:
        """The version read within ``cache_seconds``, if any (``url`` lower-case)."""
        cached = self._versions.get(url)
        return cached[1] if cached is not None and self._clock() - cached[0] < self._cache_seconds else None

    async def get_version(self, key: KeyUrl) -> KeyVersion:
        """Properties of one version (``key`` must be versioned); `NotFoundError` when it does not exist.

        Reused for ``cache_seconds``; concurrent callers for one version share one read. Failures are not
        kept: the next caller reads again.
        """
        url = str(key).lower()
        kept = self._kept(url)
        if kept is not None:
            return kept
        reading = self._reading.get(url)
        if reading is not None:
            return await asyncio.shield(reading)
        future: asyncio.Future[KeyVersion] = asyncio.get_running_loop().create_future()
        self._reading[url] = future
        try:
            result = _from_sdk_key(
                key,
                await _call(lambda: self._client(key).get_key(key.name, key.version), key, self._deadline),
            )
        except BaseException as exc:
            # The reader's own cancellation must not cancel the callers sharing its read: they get a transient
            # error instead, which their retry policy answers with a read of their own.
            shared = (
                ServiceError(f"{key.host}/{key.name}: shared read was cancelled", service="keyvault")
                if isinstance(exc, asyncio.CancelledError)
                else exc
            )
            future.set_exception(shared)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            self._reading.pop(url, None)
        self._versions[url] = (self._clock(), result)
        future.set_result(result)
        return result

    async def list_versions(self, key: KeyUrl) -> list[KeyVersion]:
        """Every version's properties (no key type or size: the list call does not return them)."""
        client = self._client(key)

        async def collect() -> list[KeyProperties]:
            found: list[KeyProperties] = []
            pages = 0
            async for page in client.list_properties_of_key_versions(key.name).by_page():
                pages += 1
                if pages > self._max_pages:
                    raise ServiceError(
                        f"{key.host}/{key.name}: version listing ran past {self._max_pages} pages",
                        service="keyvault",
                        status=200,
                        code="TooManyPages",
                    )
                found.extend([props async for props in page])
            return found

        items = await _call(collect, key, self._deadline)
        return [_from_properties(key, props) for props in items if props.version]

    async def newest_usable(self, key: KeyUrl, now: datetime | None = None) -> KeyVersion | None:
        """The most recently created version that passes rule 3, or None (`rotation.key_rules`).

        One list call, then one GET per candidate, newest first, skipping versions whose listed
        attributes (enabled, nbf, exp) already rule them out; usually one GET in all.
        """
        now = now or datetime.now(UTC)
        versions = await self.list_versions(key)
        return await pick_newest_usable(versions, self.get_version, now)


async def _call(func: Callable[[], Awaitable[_T]], key: KeyUrl, deadline: float) -> _T:
    """``func()`` within ``deadline`` seconds, azure-core's errors translated into `ServiceError`."""
    try:
        async with asyncio.timeout(deadline):
            return await func()
    except TimeoutError:
        raise ServiceError(
            f"{key.host}/{key.name}: no complete answer within {deadline:g} s", service="keyvault"
        ) from None
    except RecursionError:
        raise ServiceError(
            f"{key.host}/{key.name}: answer nested too deeply",
            service="keyvault",
            status=200,
            code="AnswerRefused",
        ) from None
    except ResourceNotFoundError as exc:
        raise from_azure_error(
            exc, f"{key} not found", service="keyvault", code=_code(exc), not_found=True
        ) from exc
    except HttpResponseError as exc:
        raise from_azure_error(
            exc,
            f"{key.host}/{key.name}: {exc.reason or 'error'}",
            service="keyvault",
            code=_code(exc),
            not_found=False,
        ) from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise ServiceError(f"{key.host}: {type(exc).__name__}", service="keyvault") from exc


def _code(exc: HttpResponseError) -> str | None:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    return code if isinstance(code, str) else None


def _from_properties(key: KeyUrl, props: KeyProperties) -> KeyVersion:
    return KeyVersion(
        url=key.with_version(props.version or ""),
        enabled=bool(props.enabled),
        created_on=props.created_on,
        not_before=props.not_before,
        expires_on=props.expires_on,
    )


def _from_sdk_key(key: KeyUrl, sdk: KeyVaultKey) -> KeyVersion:
    jwk = sdk.key
    modulus = getattr(jwk, "n", None)
    size = len(modulus) * 8 if isinstance(modulus, bytes | bytearray) and modulus else None
    ops = tuple(str(getattr(op, "value", op)) for op in (sdk.key_operations or []))
    key_type = sdk.key_type
    return KeyVersion(
        url=key.with_version(sdk.properties.version or key.version or ""),
        enabled=bool(sdk.properties.enabled),
        created_on=sdk.properties.created_on,
        not_before=sdk.properties.not_before,
        expires_on=sdk.properties.expires_on,
        key_type=str(getattr(key_type, "value", key_type)) if key_type else None,
        size=size,
        operations=ops,
    )
