"""Storage clients from AzureWebJobsStorage and the storage error mapping (rotation/store/clients.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy

from rotation.errors import NotFoundError, ServiceError
from rotation.settings import Settings, SettingsError
from rotation.store.clients import (
    StorageEndpoints,
    queue_client,
    storage_clients,
    storage_endpoints,
    storage_error,
    storage_errors,
)

ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def from_env(**env: str) -> Settings:
    """Settings from exactly these variables."""
    return Settings.from_env(env)


async def close(*clients) -> None:
    """Close each client."""
    for client in clients:
        await client.close()


# -- connection strings ------------------------------------------------------------------------------


async def test_development_storage_points_at_azurite_default_endpoints():
    """UseDevelopmentStorage=true is accepted by both SDKs and means Azurite's well-known endpoints."""
    settings = from_env(AzureWebJobsStorage="UseDevelopmentStorage=true")
    tables, queues = storage_clients(settings)
    try:
        assert tables.url.rstrip("/") == "http://127.0.0.1:10002/devstoreaccount1"
        assert queues.url.rstrip("/") == "http://127.0.0.1:10001/devstoreaccount1"
        assert tables.account_name == queues.account_name == "devstoreaccount1"
    finally:
        await close(tables, queues)
    assert storage_endpoints(settings) == StorageEndpoints(
        table_url="http://127.0.0.1:10002/devstoreaccount1",
        queue_url="http://127.0.0.1:10001/devstoreaccount1",
        blob_url="http://127.0.0.1:10000/devstoreaccount1",
    )


async def test_account_connection_string_uses_the_account_key_and_public_endpoints():
    """A cloud connection string yields https endpoints of the account, signed with its shared key."""
    conn = f"DefaultEndpointsProtocol=https;AccountName=st1;AccountKey={ACCOUNT_KEY};EndpointSuffix=core.windows.net"
    settings = from_env(AzureWebJobsStorage=conn)
    tables, queues = storage_clients(settings)
    try:
        assert tables.url.rstrip("/") == "https://st1.table.core.windows.net"
        assert queues.url.rstrip("/") == "https://st1.queue.core.windows.net"
        assert isinstance(tables.credential, AzureNamedKeyCredential)
    finally:
        await close(tables, queues)
    assert storage_endpoints(settings).blob_url == "https://st1.blob.core.windows.net"


async def test_azurite_connection_string_reaches_azurite(azurite):
    """Clients from Azurite's connection string talk to it (tables and queues listed without error)."""
    tables, queues = storage_clients(from_env(AzureWebJobsStorage=azurite.connection_string))
    try:
        assert isinstance([t async for t in tables.list_tables()], list)
        assert isinstance([q async for q in queues.list_queues()], list)
    finally:
        await close(tables, queues)


def test_explicit_endpoints_in_a_connection_string_win():
    """TableEndpoint/QueueEndpoint in a connection string are the endpoints reported."""
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
        "TableEndpoint=http://127.0.0.1:5/devstoreaccount1;QueueEndpoint=http://127.0.0.1:6/devstoreaccount1/;"
    )
    endpoints = storage_endpoints(from_env(AzureWebJobsStorage=conn))
    assert (endpoints.table_url, endpoints.queue_url) == (
        "http://127.0.0.1:5/devstoreaccount1",
        "http://127.0.0.1:6/devstoreaccount1",
    )


# -- identity-based ----------------------------------------------------------------------------------


async def test_identity_based_managed_identity_with_client_id():
    """__accountName + __credential=managedidentity + __clientId: account endpoints and a user-assigned MI credential."""
    settings = from_env(
        AzureWebJobsStorage__accountName="st1",
        AzureWebJobsStorage__credential="managedidentity",
        AzureWebJobsStorage__clientId="00000000-0000-0000-0000-00000000abcd",
    )
    tables, queues = storage_clients(settings)
    try:
        assert tables.url.rstrip("/") == "https://st1.table.core.windows.net"
        assert queues.url.rstrip("/") == "https://st1.queue.core.windows.net"
        assert isinstance(tables.credential, ManagedIdentityCredential)
        assert queues.credential is tables.credential
    finally:
        await close(tables, queues, tables.credential)


async def test_identity_based_service_uris_and_passed_credential():
    """__tableServiceUri/__queueServiceUri are used as given, with the caller's credential."""
    settings = from_env(
        AzureWebJobsStorage__tableServiceUri="https://st2.table.core.usgovcloudapi.net",
        AzureWebJobsStorage__queueServiceUri="https://st2.queue.core.usgovcloudapi.net/",
    )
    mine = DefaultAzureCredential()
    tables, queues = storage_clients(settings, mine)
    try:
        assert tables.url.rstrip("/") == "https://st2.table.core.usgovcloudapi.net"
        assert queues.url.rstrip("/") == "https://st2.queue.core.usgovcloudapi.net"
        assert tables.credential is mine
        assert queues.credential is mine
    finally:
        await close(tables, queues, mine)
    assert storage_endpoints(settings).blob_url is None


async def test_identity_based_without_credential_setting_defaults_to_default_azure_credential():
    """With only __accountName and no credential passed, a DefaultAzureCredential is used."""
    tables, queues = storage_clients(from_env(AzureWebJobsStorage__accountName="st3"))
    try:
        assert isinstance(tables.credential, DefaultAzureCredential)
    finally:
        await close(tables, queues, tables.credential)


def test_nothing_configured_is_a_settings_error():
    """Neither a connection string nor identity settings: SettingsError naming AzureWebJobsStorage."""
    with pytest.raises(SettingsError, match="AzureWebJobsStorage is not set"):
        storage_clients(Settings())
    with pytest.raises(SettingsError, match="AzureWebJobsStorage is not set"):
        storage_clients(from_env(AzureWebJobsStorage__credential="managedidentity"))


async def test_queue_client_encodes_messages_as_base64_text():
    """queue_client() sets base64 text encoding both ways, as the Functions queue trigger expects."""
    _, queues = storage_clients(from_env(AzureWebJobsStorage="UseDevelopmentStorage=true"))
    client = queue_client(queues, "rotation-jobs")
    try:
        assert isinstance(client._message_encode_policy, TextBase64EncodePolicy)
        assert isinstance(client._message_decode_policy, TextBase64DecodePolicy)
        assert client.queue_name == "rotation-jobs"
    finally:
        await close(client, queues, _)


# -- error mapping -----------------------------------------------------------------------------------


def http_error(status: int, cls=HttpResponseError, headers=None, code=None):
    """An azure-core error of ``cls`` carrying a response of ``status`` (headers and code when given)."""
    response = SimpleNamespace(
        status_code=status, reason="Reason", headers=headers or {}, text=lambda: "", request=None
    )
    error = cls(message="failed", response=response)
    error.error_code = code
    return error


@pytest.mark.parametrize(
    ("status", "transient"),
    [(500, True), (503, True), (408, True), (429, True), (400, False), (403, False), (409, True)],
)
def test_http_errors_become_service_errors_with_status(status, transient):
    """An HTTP error keeps its status, code, request id and Retry-After, and says whether it is transient."""
    error = storage_error(
        http_error(status, headers={"x-ms-request-id": "rid-1", "Retry-After": "3"}, code="ServerBusy"),
        "do x",
    )
    assert type(error) is ServiceError
    assert (error.service, error.status, error.code, error.request_id) == (
        "storage",
        status,
        "ServerBusy",
        "rid-1",
    )
    assert error.retry_after == 3.0
    assert error.transient is transient
    assert str(error).startswith(f"storage {status} ServerBusy: do x")


def test_not_found_becomes_not_found_error():
    """404 maps to NotFoundError, a non-transient ServiceError."""
    error = storage_error(http_error(404, ResourceNotFoundError), "read")
    assert isinstance(error, NotFoundError)
    assert not error.transient


@pytest.mark.parametrize(
    "exc",
    [
        ServiceRequestError("connection refused"),
        ServiceResponseError("connection reset"),
        ClientAuthenticationError("no token"),
    ],
)
def test_errors_without_a_response_are_transient(exc):
    """No response (connection refused or reset, no token) is transient: the platform redelivers."""
    with pytest.raises(ServiceError) as caught, storage_errors("send"):
        raise exc
    assert (caught.value.status, caught.value.transient) == (None, True)
    assert caught.value.__cause__ is exc


def test_an_error_without_a_response_says_what_happened_without_a_query_string():
    """On-call reads which network error it was; a URL's query (a SAS signature, say) is not logged."""
    exc = ServiceRequestError(
        "Can not write request body for https://acct.table.core.windows.net/t?sv=2024&sig=SECRET%3D\nmore"
    )
    error = storage_error(exc, "append history")
    assert str(error) == (
        "storage (no response): append history: ServiceRequestError: "
        "Can not write request body for https://acct.table.core.windows.net/t..."
    )
    assert str(storage_error(ServiceRequestError("[Errno 104] Connection reset by peer"), "a")).endswith(
        "a: ServiceRequestError: [Errno 104] Connection reset by peer"
    )
    assert str(storage_error(ServiceRequestError("x" * 500), "a")).endswith("x" * 197 + "...")
    assert str(storage_error(ServiceRequestError(""), "a")).endswith("a: ServiceRequestError")


@pytest.mark.parametrize(
    "text",
    [
        "url=\"https://acct.table.core.windows.net/w()?$filter=PartitionKey eq 'x'&sv=2023&sig=SECRET%3D\"",
        "error at https://acct.queue.core.windows.net/q/messages%3Fsv=1%26sig=SECRET",
        "SharedAccessSignature=sv=2020&sig=SECRET;QueueEndpoint=https://acct.queue.core.windows.net",
        "https://acct.table.core.windows.net/t\u00a0?sig=SECRET",
        "https://acct.table.core.windows.net/t\uff1fsig=SECRET",
        "params {'sig': 'SECRET'}",
        "AccountKey=SECRET;EndpointSuffix=core.windows.net",
        "\n\nhttps://acct.table.core.windows.net/t?sig=SECRET",
    ],
)
def test_no_secret_in_an_error_text_reaches_the_message(text):
    """However the query or key is quoted, escaped or named, the message stops before it."""
    assert "SECRET" not in str(storage_error(ServiceRequestError(text), "read"))


def test_other_exceptions_pass_through_untranslated():
    """storage_errors only maps azure-core errors."""
    with pytest.raises(KeyError), storage_errors("x"):
        raise KeyError("k")
