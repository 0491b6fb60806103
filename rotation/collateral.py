"""What else a rotation changed: the GET before the write against the verifying GET (DESIGN rule 9).

The mongoClusters spec says a PUT "overwrites all properties for the resource" (Azure/azure-rest-api-specs,
``specification/mongocluster/.../MongoCluster.tsp``, ``createOrUpdate``), so a rotation that sends only
identity, location, tags and encryption could reset anything else the service treats as omitted. This module
names every path that differs, outside the key URL and the fields that move on their own (provisioning and
status fields, ``systemData``, ``etag``). It returns paths only, never values: a value can be a secret.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["changed_paths"]

# Fields a rotation is meant to change, or that change by themselves between two GETs.
_IGNORED = frozenset(
    {
        "etag",
        "systemData",
        "properties.provisioningState",
        "properties.clusterStatus",
        "properties.encryption.customerManagedKeyEncryption.keyEncryptionKeyUrl",
        "properties.replica.replicationState",
        "properties.backup.earliestRestoreTime",
    }
)
# Maps keyed by ARM ids, which are case-insensitive: compared on lower-cased keys.
_ID_KEYED = frozenset({"identity.userAssignedIdentities"})
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_PATHS = 50


def changed_paths(before: Mapping[str, object], after: Mapping[str, object]) -> list[str]:
    """Every path whose value differs between two cluster GET bodies, sorted; at most 50."""
    out: list[str] = []
    _diff(before, after, "", "", out)
    return sorted(out)[:_MAX_PATHS]


def _diff(before: object, after: object, path: str, schema_path: str, out: list[str]) -> None:
    if schema_path in _IGNORED or (_empty(before) and _empty(after)):
        return
    if isinstance(before, dict) and after is None:
        after = {}
    if isinstance(after, dict) and before is None:
        before = {}
    if isinstance(before, dict) and isinstance(after, dict):
        old, new = before, after
        if schema_path in _ID_KEYED:
            old = {str(k).lower(): v for k, v in before.items()}
            new = {str(k).lower(): v for k, v in after.items()}
        for key in sorted(set(old) | set(new), key=str):
            name = str(key)
            child = f"{path}.{name}" if _PLAIN_KEY.fullmatch(name) else f"{path}[{name!r}]"
            child_schema = f"{schema_path}.{name}" if schema_path else name
            if schema_path in _ID_KEYED or schema_path == "tags":
                child_schema = f"{schema_path}.*"
            _diff(old.get(key), new.get(key), child.lstrip("."), child_schema, out)
        return
    if before != after:
        out.append(path or "$")


def _empty(value: object) -> bool:
    """Absent and empty are the same to ARM (``"tags": {}`` or no ``tags``)."""
    return value is None or value in ({}, [])
