"""Long-running ARM operations of ``Microsoft.DocumentDB/mongoClusters``: which URL to follow, and how.

ARM's rules, as azure-mgmt-core's ``ARMPolling`` applies them (``azure/mgmt/core/polling/arm_polling.py``:
``AzureAsyncOperationPolling``, ``LocationPolling``, ``BodyContentPolling``): a write answered 200, 201 or
202 is followed through its ``Azure-AsyncOperation`` header when there is one (the body's ``status`` says
Succeeded, Failed or Canceled), else through ``Location`` (202 while running, 200/204 when done), else by
reading the resource itself until ``properties.provisioningState`` is terminal (202 with no header: running;
200/201 with no state: done). The mongoClusters spec's examples (Azure/azure-rest-api-specs,
``specification/mongocluster/resource-manager/Microsoft.DocumentDB/MongoCluster/examples/2025-09-01/
MongoClusters_Update.json``, response 202) name the two operation URLs
``/subscriptions/{sub}/providers/Microsoft.DocumentDB/locations/{loc}/mongoClusterAzureAsyncOperation/{id}``
and ``.../locations/{loc}/mongoClusterOperationResults/{id}``.

The URL of an accepted operation comes from ARM's answer, so it is an input: it is followed only on the
configured ARM host, over https on port 443, in the cluster's own subscription, on a DocumentDB
``locations/{loc}/mongoCluster...`` path (or the cluster's own resource URL, when ARM gave no header). The
kind of a recorded URL (rule 7) is read back from its path by `operation_kind`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from rotation.errors import ServiceError
from rotation.url_guard import OPERATION_TYPES

if TYPE_CHECKING:
    from rotation.ids import ResourceId

__all__ = [
    "DEFAULT_POLL_SECONDS",
    "TERMINAL_STATES",
    "OperationKind",
    "OperationUrlRefused",
    "check_operation_url",
    "operation_kind",
]

# The wait between polls when ARM names none (a resource GET never does; ARMPolling's default is 30 s).
DEFAULT_POLL_SECONDS = 5.0
TERMINAL_STATES = frozenset({"succeeded", "failed", "canceled", "cancelled"})
_HTTPS_PORT = 443
# The spec's two operation types (`rotation.url_guard.OPERATION_TYPES`, the same set the queue's check jobs
# are held to): Azure-AsyncOperation's and Location's. No other type is followed.
_OPERATION_PATH = re.compile(
    r"/subscriptions/(?P<sub>[^/]+)/providers/microsoft\.documentdb/locations/(?P<loc>[^/]+)"
    rf"/(?P<type>{'|'.join(sorted(OPERATION_TYPES))})/(?P<id>[^/]+)/?",
    re.IGNORECASE,
)
_LOCATION_TYPE = "mongoclusteroperationresults"  # the Location header's type; the other reads ``status``


class OperationUrlRefused(ServiceError):
    """ARM named an operation URL the rotator will not follow: a permanent failure, never retried.

    Retrying would repeat the write (rule 7 forbids it) and the URL would not change; the job fails loudly.
    """

    @property
    def transient(self) -> bool:
        """Never: the same answer cannot become followable."""
        return False

    def __str__(self) -> str:
        return f"{self.service} refused: {self.message}"


class OperationKind(StrEnum):
    """How an accepted write is followed (ARM's three ways, in ARMPolling's order)."""

    ASYNC_OPERATION = "azure-asyncoperation"  # GET the URL: body ``status``
    LOCATION = "location"  # GET the URL: 202 running, 200/204 done
    RESOURCE = "resource"  # GET the cluster: ``properties.provisioningState``


def check_operation_url(url: str, *, host: str, cluster_id: ResourceId) -> OperationKind:
    """Refuse (`OperationUrlRefused`) an operation URL not to follow; return the kind its path names.

    ``host`` is the configured ARM endpoint's host. The checks hold for both header kinds and for a
    recorded URL being resumed.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise OperationUrlRefused(f"operation URL is not a URL: {exc}", service="arm") from exc
    hostname = (parts.hostname or "").lower()
    if parts.scheme.lower() != "https" or hostname != host.lower():
        raise OperationUrlRefused(f"operation URL on unexpected host: {parts.hostname!r}", service="arm")
    if port not in {None, _HTTPS_PORT} or parts.username is not None or parts.password is not None:
        raise OperationUrlRefused(
            f"operation URL on unexpected port or with credentials: {port!r}", service="arm"
        )
    path = unquote(parts.path)
    if path.rstrip("/").lower() == str(cluster_id).lower():
        return OperationKind.RESOURCE
    match = _OPERATION_PATH.fullmatch(path)
    if match is None:
        raise OperationUrlRefused(
            f"operation URL is not a DocumentDB mongoCluster operation: {path[:120]!r}", service="arm"
        )
    if match.group("sub").lower() != cluster_id.subscription.lower():
        raise OperationUrlRefused(
            f"operation URL is in subscription {match.group('sub')[:40]!r}, not the cluster's", service="arm"
        )
    if match.group("type").lower() == _LOCATION_TYPE:
        return OperationKind.LOCATION
    return OperationKind.ASYNC_OPERATION


def operation_kind(url: str, *, host: str, cluster_id: ResourceId) -> OperationKind:
    """The kind of a recorded operation URL (rule 7: resume the way it was accepted); checked as above."""
    return check_operation_url(url, host=host, cluster_id=cluster_id)


def is_terminal(status: str) -> bool:
    """Whether an operation or provisioning state is Succeeded, Failed or Canceled."""
    return status.lower() in TERMINAL_STATES
