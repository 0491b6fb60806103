"""Rule 5 of docs/design.md: the body a rotation writes, built from the cluster, never echoed.

`build_body` is the documented PUT body, `build_patch_body` the spec's PatchCMK body
(ROTATION_WRITE_METHOD=patch); `not_updatable` recognises ARM refusing either at an api-version that treats
the encryption as create-only, and `NOT_UPDATABLE_NEXT_STEP` says what to change.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rotation.azure.arm import Cluster
    from rotation.errors import ServiceError
    from rotation.ids import KeyUrl


def build_body(cluster: Cluster, target: KeyUrl) -> dict[str, Any]:
    """Rule 5: the documented PUT body, built from the cluster's location, tags, key identity and identities.

    A PUT replaces the resource (the spec: it "overwrites all properties"), so every user-assigned identity
    the cluster already has is listed and its tags are sent back as they were; nothing else of the GET is.
    """
    return {
        "identity": _identity(cluster),
        "location": cluster.location,
        "tags": dict(cluster.tags),
        "properties": {"encryption": _encryption(cluster, target)},
    }


def build_patch_body(cluster: Cluster, target: KeyUrl) -> dict[str, Any]:
    """The spec's ``MongoClusters_PatchCMK`` body (identity + encryption), for ROTATION_WRITE_METHOD=patch.

    Shape of Azure/azure-rest-api-specs ``specification/mongocluster/resource-manager/Microsoft.DocumentDB/
    MongoCluster/examples/2025-09-01/MongoClusters_PatchCMK.json`` (2025-08-01-preview on). A PATCH merges,
    so tags and other properties are left out and stay as they are.
    """
    return {
        "identity": _identity(cluster),
        "properties": {"encryption": _encryption(cluster, target)},
    }


def _identity(cluster: Cluster) -> dict[str, Any]:
    """Every identity the cluster has, the key identity included; the type kept (case-insensitively).

    ``SystemAssigned,UserAssigned`` stays as it is: dropping ``SystemAssigned`` from a replacing PUT would
    remove the cluster's system identity.
    """
    if cluster.key_identity is None:
        raise ValueError("cluster has no key identity")
    identities = dict.fromkeys(cluster.identity_ids)
    if not any(i.lower() == cluster.key_identity.lower() for i in identities):
        identities[cluster.key_identity] = None
    current = cluster.identity_type or ""
    compact = current.replace(" ", "").lower()
    if "userassigned" in compact:
        identity_type = current
    elif "systemassigned" in compact:
        identity_type = "SystemAssigned,UserAssigned"
    else:
        identity_type = "UserAssigned"
    return {"type": identity_type, "userAssignedIdentities": {i: {} for i in identities}}


def _encryption(cluster: Cluster, target: KeyUrl) -> dict[str, Any]:
    return {
        "customerManagedKeyEncryption": {
            "keyEncryptionKeyIdentity": {
                "identityType": "UserAssignedIdentity",
                "userAssignedIdentityResourceId": cluster.key_identity,
            },
            "keyEncryptionKeyUrl": str(target),
        }
    }


# Wording of a 400 that refuses to change a property the api-version treats as create-only (in the
# 2025-07-01-preview swagger `properties.encryption` has x-ms-mutability read, create). ARM's own code for
# it is PropertyChangeNotAllowed; providers also answer in words.
_NOT_UPDATABLE = re.compile(
    r"cannot be updated|can ?not be (?:updated|modified)|not updatable|is not allowed to be updated"
    r"|propertychangenotallowed|create-?only",
    re.IGNORECASE,
)
NOT_UPDATABLE_NEXT_STEP = (
    "next step: set ROTATION_ARM_API_VERSION=2025-09-01 (encryption is updatable from 2025-08-01-preview on) "
    "or ROTATION_WRITE_METHOD=patch (with such an api-version)"
)


def not_updatable(exc: ServiceError) -> bool:
    """Whether ARM refused the write because a property cannot be updated at this api-version."""
    if exc.status != 400:  # noqa: PLR2004
        return False
    return bool(_NOT_UPDATABLE.search(f"{exc.code or ''} {exc.message or ''}"))
