"""ARM adapter for ``Microsoft.DocumentDB/mongoClusters``: GET, PUT, operation status, list.

Built on `rotation.azure.arm_connection` (azure-mgmt-core's async ARM pipeline with the pipeline's own retry
switched off: rule 6 gives the one retry layer to tenacity, `rotation.retry`). Each method makes exactly one
HTTP request and translates the answer into `Cluster` / `AcceptedOperation` / `OperationStatus`, or raises
`ServiceError`.

Permissions (Azure RBAC on the cluster's scope): ``Microsoft.DocumentDB/mongoClusters/read`` for `get` and
`list_clusters`, ``.../write`` plus ``Microsoft.ManagedIdentity/userAssignedIdentities/assign/action`` for
`put` and `patch`, ``Microsoft.DocumentDB/locations/*/read`` for `operation_status` (the spec's operation
types ``mongoClusterAzureAsyncOperation`` and ``mongoClusterOperationResults`` live under ``locations``).
Which URL an accepted write is followed through, and how, is `rotation.azure.lro`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from rotation.azure.arm_connection import ArmConnection
from rotation.azure.http_errors import raise_for_status, retry_after_seconds
from rotation.azure.lro import (
    DEFAULT_POLL_SECONDS,
    OperationKind,
    check_operation_url,
    is_terminal,
)
from rotation.azure.pacing import ArmPacer
from rotation.errors import ServiceError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from azure.core.credentials_async import AsyncTokenCredential
    from azure.core.pipeline.transport import AsyncHttpTransport
    from azure.core.rest import AsyncHttpResponse

    from rotation.ids import ResourceId

_ACCEPTED = frozenset({200, 201, 202, 204})  # ARMPolling's valid answers to a long-running write
MAX_LIST_PAGES = 200  # a listing longer than this (a nextLink loop?) is refused, as `arm_reads` does
LIST_DEADLINE_SECONDS = 300.0  # the whole of one listing, however its pages come


@dataclass(frozen=True)
class Cluster:
    """What the rotator needs from a cluster GET, and no more (rule 5: the body is built, not echoed)."""

    id: str
    name: str
    location: str
    identity_type: str | None
    identity_ids: tuple[str, ...]
    key_url: str | None
    key_identity: str | None
    provisioning_state: str | None
    cluster_status: str | None
    tags: Mapping[str, str] = field(default_factory=dict)
    # The GET body as ARM sent it, for the collateral-change check (rule 9); never sent back (rule 5).
    doc: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_cmk(self) -> bool:
        """Whether the cluster is encrypted with a customer-managed key."""
        return self.key_url is not None

    @classmethod
    def from_arm(cls, doc: object) -> Cluster:
        """Read a mongoClusters GET body; raise `TypeError`/`ValueError` when it is not a cluster."""
        if not isinstance(doc, dict):
            raise TypeError("cluster body is not a JSON object")
        props = doc.get("properties")
        props = props if isinstance(props, dict) else {}
        identity = doc.get("identity")
        identity = identity if isinstance(identity, dict) else {}
        uamis = identity.get("userAssignedIdentities")
        cmk = _dig(props, "encryption", "customerManagedKeyEncryption")
        kek_identity = _dig(cmk, "keyEncryptionKeyIdentity")
        key_url = cmk.get("keyEncryptionKeyUrl")
        key_identity = kek_identity.get("userAssignedIdentityResourceId")
        location = doc.get("location")
        if not isinstance(location, str) or not location:
            raise ValueError("cluster body has no location")
        tags = doc.get("tags")
        return cls(
            id=str(doc.get("id", "")),
            name=str(doc.get("name", "")),
            location=location,
            identity_type=_str_or_none(identity.get("type")),
            identity_ids=tuple(uamis) if isinstance(uamis, dict) else (),
            key_url=key_url if isinstance(key_url, str) and key_url else None,
            key_identity=key_identity if isinstance(key_identity, str) and key_identity else None,
            provisioning_state=_str_or_none(props.get("provisioningState")),
            cluster_status=_str_or_none(props.get("clusterStatus")),
            tags={str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {},
            doc=copy.deepcopy(doc),
        )


@dataclass(frozen=True)
class AcceptedOperation:
    """The answer to an accepted write: the operation to follow and how (`rotation.azure.lro`).

    ``url`` is the ``Azure-AsyncOperation`` or ``Location`` URL, or the cluster's own URL when ARM gave
    neither (then ``status`` is the provisioning state the answer showed, and a terminal one means done).
    ``url=None`` only from a test double that completed the write at once.
    """

    url: str | None
    retry_after: float
    request_id: str | None
    correlation_id: str | None
    kind: OperationKind = OperationKind.ASYNC_OPERATION
    status: str = "InProgress"
    status_code: int | None = None

    @property
    def done(self) -> bool:
        """Whether the answer itself ended the operation (no header, terminal provisioning state)."""
        return self.url is None or (self.kind is OperationKind.RESOURCE and is_terminal(self.status))


@dataclass(frozen=True)
class OperationStatus:
    """One poll of a long-running operation; ``retry_after`` None when the answer named no wait."""

    status: str
    retry_after: float | None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def done(self) -> bool:
        """Whether the operation reached Succeeded, Failed or Canceled."""
        return is_terminal(self.status)

    @property
    def succeeded(self) -> bool:
        """Whether the operation ended Succeeded."""
        return self.status.lower() == "succeeded"


class ClustersClient(ArmConnection):
    """Async client for the mongoClusters calls a rotation makes; one instance per process."""

    def __init__(
        self,
        endpoint: str,
        credential: AsyncTokenCredential,
        *,
        api_version: str,
        connection_timeout: float = 10.0,
        read_timeout: float = 60.0,
        pacer: ArmPacer | None = None,
        transport: AsyncHttpTransport[Any, Any] | None = None,
        deadline: float | None = None,
    ) -> None:
        # Per-subscription pacing from the throttling headers (rotation.azure.pacing); share one per process.
        super().__init__(
            endpoint,
            credential,
            connection_timeout=connection_timeout,
            read_timeout=read_timeout,
            pacer=pacer if pacer is not None else ArmPacer(),
            transport=transport,
            deadline=deadline,
        )
        self._api_version = api_version

    async def get(self, cluster_id: ResourceId) -> Cluster:
        """GET the cluster; raise `NotFoundError` when it does not exist."""
        response = await self._send("GET", self._resource_url(cluster_id))
        self._raise_for_status(response, what=str(cluster_id))
        try:
            return Cluster.from_arm(response.json())
        except (TypeError, ValueError) as exc:
            raise ServiceError(
                f"unreadable cluster body: {exc}", service="arm", status=response.status_code
            ) from exc

    async def put(self, cluster_id: ResourceId, body: dict[str, Any]) -> AcceptedOperation:
        """PUT the cluster body (MongoClusters_CreateOrUpdate); return the operation to follow."""
        return await self._write("PUT", cluster_id, body)

    async def patch(self, cluster_id: ResourceId, body: dict[str, Any]) -> AcceptedOperation:
        """PATCH the cluster (MongoClusters_Update, the spec's PatchCMK shape); return the operation."""
        return await self._write("PATCH", cluster_id, body)

    async def _write(self, method: str, cluster_id: ResourceId, body: dict[str, Any]) -> AcceptedOperation:
        """One write; its answer read as ARMPolling reads it (`rotation.azure.lro`): 200, 201, 202 or 204."""
        response = await self._send(method, self._resource_url(cluster_id), json=body)
        self._raise_for_status(response, what=str(cluster_id))
        status_code = response.status_code
        headers = response.headers
        if status_code not in _ACCEPTED:
            raise ServiceError(
                f"unexpected HTTP {status_code} to {method}", service="arm", status=status_code
            )
        base = AcceptedOperation(
            url=None,
            retry_after=retry_after_seconds(headers) or DEFAULT_POLL_SECONDS,
            request_id=headers.get("x-ms-request-id"),
            correlation_id=headers.get("x-ms-correlation-request-id"),
            status_code=status_code,
        )
        for header, kind in (
            ("Azure-AsyncOperation", OperationKind.ASYNC_OPERATION),
            ("Location", OperationKind.LOCATION),
        ):
            url = headers.get(header)
            if url:
                check_operation_url(url, endpoint=self._endpoint, cluster_id=cluster_id)
                return replace(base, url=url, kind=kind)
        # No header: the resource itself tells (BodyContentPolling): 202 running, else its provisioningState.
        state: str | None = None
        if status_code != 202 and response.content:  # noqa: PLR2004
            try:
                state = _str_or_none(_dig(response.json(), "properties").get("provisioningState"))
            except ValueError:
                state = None
        if status_code == 202:  # noqa: PLR2004
            state = "InProgress"
        elif state is None:
            state = "InProgress" if status_code == 201 else "Succeeded"  # noqa: PLR2004
        return replace(base, url=self._resource_url(cluster_id), kind=OperationKind.RESOURCE, status=state)

    async def operation_status(
        self, url: str, *, cluster_id: ResourceId, kind: OperationKind | None = None
    ) -> OperationStatus:
        """Poll an accepted operation once; ``kind`` None: the kind its checked URL names (rule 7)."""
        self._check_same_host(url)  # one strict parse: scheme, host, port 443, no user info or backslash
        named = check_operation_url(url, endpoint=self._endpoint, cluster_id=cluster_id)
        kind = kind or named
        if kind is OperationKind.RESOURCE:
            response = await self._send("GET", self._resource_url(cluster_id))
        else:
            response = await self._send("GET", url, api_version=False)
        self._raise_for_status(response, what="operation")
        retry_after = retry_after_seconds(response.headers)  # a resource GET names none
        if response.status_code == 202:  # noqa: PLR2004 - running, whatever the kind
            return OperationStatus(status="InProgress", retry_after=retry_after)
        try:
            doc = response.json() if response.content else {}
        except ValueError:
            doc = {}
        doc = doc if isinstance(doc, dict) else {}
        if kind is OperationKind.RESOURCE:
            state = _str_or_none(_dig(doc, "properties").get("provisioningState"))
            return OperationStatus(status=state or "Succeeded", retry_after=retry_after)
        status = doc.get("status") if kind is OperationKind.ASYNC_OPERATION else None
        if kind is OperationKind.ASYNC_OPERATION and (not isinstance(status, str) or not status):
            # An Azure-AsyncOperation answer without a status tells nothing of the operation: not Succeeded.
            raise ServiceError(
                "operation answer has no status", service="arm", status=response.status_code, code="NoStatus"
            )
        if not isinstance(status, str):
            status = "Succeeded"  # a Location URL answers 200/204 (with the resource) once done
        error = _dig(doc, "error")
        return OperationStatus(
            status=status,
            retry_after=retry_after,
            error_code=_str_or_none(error.get("code")),
            error_message=_str_or_none(error.get("message")),
        )

    async def list_clusters(self, subscription: str) -> AsyncIterator[Cluster]:
        """Every mongoCluster of a subscription, following ``nextLink``."""
        url: str | None = (
            f"{self._endpoint}/subscriptions/{subscription}/providers/Microsoft.DocumentDB/mongoClusters"
        )
        first = True
        pages = 0
        ends = time.monotonic() + LIST_DEADLINE_SECONDS
        while url:
            pages += 1
            if pages > MAX_LIST_PAGES or time.monotonic() > ends:
                raise ServiceError(
                    f"subscription {subscription}: listing ran past {MAX_LIST_PAGES} pages or "
                    f"{LIST_DEADLINE_SECONDS:g} s",
                    service="arm",
                    status=200,
                    code="TooManyPages",
                )
            response = await self._send("GET", url, api_version=first)
            self._raise_for_status(response, what=f"subscription {subscription}")
            doc = response.json()
            for item in doc.get("value", []) if isinstance(doc, dict) else []:
                try:
                    yield Cluster.from_arm(item)
                except (TypeError, ValueError):
                    continue
            next_link = doc.get("nextLink") if isinstance(doc, dict) else None
            url = next_link if isinstance(next_link, str) and next_link else None
            if url is not None:
                self._check_same_host(url)
            first = False

    def _resource_url(self, cluster_id: ResourceId) -> str:
        return f"{self._endpoint}{cluster_id}"

    async def _send(
        self,
        method: str,
        url: str,
        *,
        json: dict[str, Any] | None = None,
        api_version: bool = True,
    ) -> AsyncHttpResponse:
        params = {"api-version": self._api_version} if api_version else None
        return await self._request(method, url, params=params, json=json)

    @staticmethod
    def _raise_for_status(response: AsyncHttpResponse, *, what: str) -> None:
        raise_for_status(response, service="arm", what=what)


def _dig(doc: object, *keys: str) -> dict[str, Any]:
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc if isinstance(doc, dict) else {}


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
