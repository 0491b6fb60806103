"""The storage account behind the registry, the history and the job queue: clients and error mapping.

``AzureWebJobsStorage`` is either a connection string (``UseDevelopmentStorage=true`` for Azurite, which
both SDKs expand themselves) or identity-based (``AzureWebJobsStorage__accountName`` and friends, the
Functions host's own convention). Every storage call of the rotator runs inside `storage_errors`, which
turns azure-core errors into `ServiceError` (``service="storage"``): transient ones (no response, 408,
429, 5xx) must reach the caller, so the queue or Event Grid redelivers.

Permissions (identity-based): Storage Table Data Contributor and Storage Queue Data Contributor on the
account (the Functions host itself also needs Storage Blob Data Owner for its leases).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.data.tables.aio import TableServiceClient
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient, QueueServiceClient

from rotation.azure.http_errors import from_azure_error
from rotation.azure.transport import transport_kwargs
from rotation.errors import ServiceError
from rotation.settings import STORAGE_SETTING, SettingsError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from azure.core.credentials_async import AsyncTokenCredential

    from rotation.azure.transport import SharedHttp
    from rotation.settings import Settings

SERVICE = "storage"
_DEV_ACCOUNT = "devstoreaccount1"
_DEV_ENDPOINTS = {
    "blob": f"http://127.0.0.1:10000/{_DEV_ACCOUNT}",
    "queue": f"http://127.0.0.1:10001/{_DEV_ACCOUNT}",
    "table": f"http://127.0.0.1:10002/{_DEV_ACCOUNT}",
}

# The queue SDK's exponential retry with short waits: its default (15 s, 18 s, 24 s) keeps `on_key_event`
# past Event Grid's 30 s when the queue is unreachable; the failure must reach the caller soon (rule 10).
QUEUE_RETRY: dict[str, Any] = {
    "retry_total": 2,
    "initial_backoff": 1,
    "increment_base": 2,
    "random_jitter_range": 1,
}


@dataclass(frozen=True)
class StorageEndpoints:
    """The service endpoints of the configured account (for logs and health checks; never a secret)."""

    table_url: str
    queue_url: str
    blob_url: str | None


def _parse_connection_string(text: str) -> dict[str, str]:
    """``Key=Value;...`` pairs, keys lower-cased (values may contain '=': base64 account keys)."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key:
            out[key.strip().lower()] = value.strip()
    return out


def storage_endpoints(settings: Settings) -> StorageEndpoints:
    """The table, queue and blob endpoints ``settings`` point at; raise `SettingsError` if none is set."""
    if settings.storage_connection:
        pairs = _parse_connection_string(settings.storage_connection)
        if pairs.get("usedevelopmentstorage", "").lower() == "true":
            return StorageEndpoints(
                table_url=_DEV_ENDPOINTS["table"],
                queue_url=_DEV_ENDPOINTS["queue"],
                blob_url=_DEV_ENDPOINTS["blob"],
            )
        protocol = pairs.get("defaultendpointsprotocol", "https")
        account = pairs.get("accountname", "")
        suffix = pairs.get("endpointsuffix", "core.windows.net")

        def endpoint(service: str) -> str:
            explicit = pairs.get(f"{service}endpoint")
            return (explicit or f"{protocol}://{account}.{service}.{suffix}").rstrip("/")

        return StorageEndpoints(
            table_url=endpoint("table"), queue_url=endpoint("queue"), blob_url=endpoint("blob")
        )
    identity = settings.storage_identity
    account = identity.get("accountName", "").strip()
    table = identity.get("tableServiceUri", "").strip()
    queue = identity.get("queueServiceUri", "").strip()
    blob = identity.get("blobServiceUri", "").strip()
    missing = [name for name, uri in (("table", table), ("queue", queue)) if not uri]
    if missing and not account:
        raise SettingsError(
            f"{STORAGE_SETTING} is not set: give a connection string, or {STORAGE_SETTING}__accountName "
            f"(or __{missing[0]}ServiceUri) for identity-based access"
        )
    return StorageEndpoints(
        table_url=(table or f"https://{account}.table.core.windows.net").rstrip("/"),
        queue_url=(queue or f"https://{account}.queue.core.windows.net").rstrip("/"),
        blob_url=(blob or (f"https://{account}.blob.core.windows.net" if account else "")).rstrip("/")
        or None,
    )


def storage_credential(
    settings: Settings, credential: AsyncTokenCredential | None = None, *, http: SharedHttp | None = None
) -> AsyncTokenCredential:
    """The token credential for identity-based storage, as the Functions host chooses it.

    ``__credential=managedidentity`` means a `ManagedIdentityCredential` (user-assigned when
    ``__clientId`` is set); otherwise ``credential`` or, when None, a new `DefaultAzureCredential`.
    A credential created here belongs to the caller: build it with this function and pass it to
    `storage_clients` to be able to close it.
    """
    identity = settings.storage_identity
    if identity.get("credential", "").strip().lower() == "managedidentity":
        client_id = identity.get("clientId", "").strip() or None
        return ManagedIdentityCredential(client_id=client_id, **transport_kwargs(http))
    return credential if credential is not None else DefaultAzureCredential(**transport_kwargs(http))


def storage_clients(
    settings: Settings, credential: AsyncTokenCredential | None = None, *, http: SharedHttp | None = None
) -> tuple[TableServiceClient, QueueServiceClient]:
    """Table and queue service clients for ``AzureWebJobsStorage``; nothing is contacted yet.

    A connection string wins over identity-based settings. Neither set: `SettingsError`. Queue messages
    must be base64 text: take queue clients from `queue_client`, which sets that encoding. ``http``: the
    process's shared connection pool (`rotation.azure.transport`); None gives each client its own.
    """
    if settings.storage_connection:
        conn = settings.storage_connection
        try:
            tables = TableServiceClient.from_connection_string(conn, **transport_kwargs(http))
            queues = QueueServiceClient.from_connection_string(conn, **QUEUE_RETRY, **transport_kwargs(http))
        except ValueError as exc:
            # The SDKs' own words ("Connection string is either blank or malformed."), never the value:
            # a connection string may hold the account key.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "malformed"
            raise SettingsError(
                f"{STORAGE_SETTING} is not a usable connection string ({reason}); expected "
                "'DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...;EndpointSuffix=...' or "
                f"'UseDevelopmentStorage=true', or set {STORAGE_SETTING}__accountName (identity-based)"
            ) from None
        return tables, queues
    endpoints = storage_endpoints(settings)  # raises SettingsError when nothing is configured
    token = storage_credential(settings, credential, http=http)
    return (
        TableServiceClient(endpoints.table_url, credential=token, **transport_kwargs(http)),
        QueueServiceClient(endpoints.queue_url, credential=token, **QUEUE_RETRY, **transport_kwargs(http)),
    )


def queue_client(queues: QueueServiceClient, name: str) -> QueueClient:
    """A client for queue ``name`` reading and writing base64 text, the Functions queue trigger's default.

    (The service client does not pass message encoding on to the queue clients it makes.)
    """
    return queues.get_queue_client(
        name,
        message_encode_policy=TextBase64EncodePolicy(),
        message_decode_policy=TextBase64DecodePolicy(),
    )


def storage_error(exc: Exception, action: str) -> ServiceError:
    """Translate an azure-core error raised while doing ``action`` into a `ServiceError`."""
    if isinstance(exc, HttpResponseError) and exc.response is not None:
        return from_azure_error(
            exc,
            f"{action}: {exc.reason or type(exc).__name__}",
            service=SERVICE,
            code=getattr(exc, "error_code", None),
            not_found=isinstance(exc, ResourceNotFoundError),
        )
    # No response: connection refused or reset, timeout, or a credential that could not get a token.
    return ServiceError(f"{action}: {type(exc).__name__}{_cause(exc)}", service=SERVICE)


# Where an error's text may go on to a secret: a URL's query (aiohttp names the URL it could not send to,
# and a SAS signature rides in the query, its quotes and escapes as they come), or a signature, key or token
# named anywhere. The text is cut at the first of these, whatever follows.
_SECRET_FROM = re.compile(
    r"[?\uff1f]|%3f|sig|signature|sharedaccess|accountkey|token|password|secret", re.IGNORECASE
)
_CAUSE_CHARS = 200


def _cause(exc: Exception) -> str:
    """``": <first line of the error's text>"`` up to any query string or secret, clipped; "" when empty.

    On-call needs to tell a reset connection from a refused one or a timeout; nothing past a URL's path is
    kept.
    """
    lines = str(exc).strip().splitlines()
    if not lines:
        return ""
    first = lines[0]
    secret = _SECRET_FROM.search(first)
    if secret is not None:
        first = first[: secret.start()] + "..."
    return ": " + (first if len(first) <= _CAUSE_CHARS else first[: _CAUSE_CHARS - 3] + "...")


@contextlib.contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """Raise azure-core errors from the block as `ServiceError` (chained); anything else passes through.

    Callers handle the errors they expect (412 on a conditional write, 404 on a read) inside the block.
    """
    try:
        yield
    except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
        raise storage_error(exc, action) from exc
