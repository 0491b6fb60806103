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
kind of a recorded URL (rule 7) is read back from its path. The checks are `rotation.url_guard`'s, the same
ones a check job's URL is held to.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from rotation.errors import ServiceError
from rotation.url_guard import UnsafeUrl, check_operation_path, check_same_origin

if TYPE_CHECKING:
    from rotation.ids import ResourceId

__all__ = [
    "DEFAULT_POLL_SECONDS",
    "TERMINAL_STATES",
    "OperationKind",
    "OperationUrlRefused",
    "check_operation_url",
]

# The wait between polls when ARM names none (a resource GET never does; ARMPolling's default is 30 s).
DEFAULT_POLL_SECONDS = 5.0
TERMINAL_STATES = frozenset({"succeeded", "failed", "canceled", "cancelled"})
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


def check_operation_url(url: str, *, endpoint: str, cluster_id: ResourceId) -> OperationKind:
    """Refuse (`OperationUrlRefused`) an operation URL not to follow; return the kind its path names.

    ``endpoint`` is the configured ARM endpoint. One strict parse (`check_same_origin`), then the path's
    grammar (`check_operation_path`); the checks hold for both header kinds and for a recorded URL resumed.
    """
    try:
        kind = check_operation_path(check_same_origin(url, endpoint), cluster_id)
    except UnsafeUrl as exc:
        raise OperationUrlRefused(f"operation URL refused: {exc}", service="arm") from None
    if not kind:
        return OperationKind.RESOURCE
    return OperationKind.LOCATION if kind == _LOCATION_TYPE else OperationKind.ASYNC_OPERATION


def is_terminal(status: str) -> bool:
    """Whether an operation or provisioning state is Succeeded, Failed or Canceled."""
    return status.lower() in TERMINAL_STATES
