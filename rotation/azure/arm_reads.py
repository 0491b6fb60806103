"""ARM reads for ``rotation doctor``: the vault, the cluster's identity, RBAC on the vault, Resource Graph.

On the connection `rotation.azure.arm` uses too (`rotation.azure.arm_connection`, the pipeline's retry off:
callers retry through `rotation.retry`); each method makes one request (or one per page) and returns a small
frozen dataclass, or raises `NotFoundError` / `ServiceError`.

Permissions (all read-only; Key Vault Reader on the vault covers the first three): ``Microsoft.KeyVault/
vaults/read`` (`get_vault`, `find_vault`), ``Microsoft.Authorization/roleAssignments/read`` and
``roleDefinitions/read`` (`role_assignments`, `role_definition`), ``Microsoft.ManagedIdentity/
userAssignedIdentities/read`` (`get_identity`). Resource Graph returns only what the caller may read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from rotation.azure.arm_connection import ArmConnection
from rotation.azure.http_errors import raise_for_status
from rotation.errors import ServiceError

if TYPE_CHECKING:
    from collections.abc import Callable

    from azure.core.credentials_async import AsyncTokenCredential
    from azure.core.pipeline.transport import AsyncHttpTransport

VAULT_API = "2023-07-01"
IDENTITY_API = "2023-01-31"
AUTHORIZATION_API = "2022-04-01"
RESOURCE_GRAPH_API = "2022-10-01"
_MAX_PAGES = 20
_T = TypeVar("_T")


@dataclass(frozen=True)
class VaultInfo:
    """The ARM properties of a Key Vault that decide whether a cluster can use its keys."""

    id: str
    name: str
    location: str
    soft_delete: bool
    purge_protection: bool
    rbac_authorization: bool
    public_network_access: str
    default_action: str
    bypass: str
    ip_rules: int
    virtual_network_rules: int
    access_policies: tuple[AccessPolicy, ...]

    @classmethod
    def from_arm(cls, doc: object) -> VaultInfo:
        """Read a ``Microsoft.KeyVault/vaults`` GET body; `TypeError` when it is not one."""
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            raise TypeError("vault body has no id")
        props = _dict(doc.get("properties"))
        acls = _dict(props.get("networkAcls"))
        policies = tuple(
            AccessPolicy(
                object_id=str(p.get("objectId", "")).lower(),
                key_permissions=tuple(str(k).lower() for k in _list(_dict(p.get("permissions")).get("keys"))),
            )
            for p in _list(props.get("accessPolicies"))
            if isinstance(p, dict)
        )
        return cls(
            id=doc["id"],
            name=str(doc.get("name", "")),
            location=str(doc.get("location", "")),
            # Soft delete is on unless ARM says false (it cannot be turned off since 2020).
            soft_delete=props.get("enableSoftDelete") is not False,
            # ARM leaves enablePurgeProtection out (null) while it is off.
            purge_protection=props.get("enablePurgeProtection") is True,
            rbac_authorization=props.get("enableRbacAuthorization") is True,
            public_network_access=str(props.get("publicNetworkAccess") or "Enabled"),
            default_action=str(acls.get("defaultAction") or "Allow"),
            bypass=str(acls.get("bypass") or "AzureServices"),
            ip_rules=len(_list(acls.get("ipRules"))),
            virtual_network_rules=len(_list(acls.get("virtualNetworkRules"))),
            access_policies=policies,
        )


@dataclass(frozen=True)
class AccessPolicy:
    """One vault access policy: who, and which key permissions (lower-case)."""

    object_id: str
    key_permissions: tuple[str, ...]


@dataclass(frozen=True)
class IdentityInfo:
    """A user-assigned managed identity."""

    id: str
    location: str
    principal_id: str

    @classmethod
    def from_arm(cls, doc: object) -> IdentityInfo:
        """Read a ``userAssignedIdentities`` GET body; `TypeError` when it is not one."""
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            raise TypeError("identity body has no id")
        props = _dict(doc.get("properties"))
        return cls(
            id=doc["id"],
            location=str(doc.get("location", "")),
            principal_id=str(props.get("principalId", "")).lower(),
        )


@dataclass(frozen=True)
class RoleAssignmentInfo:
    """A role assignment: the role's definition id, its scope and its ABAC condition, if any."""

    role_definition_id: str
    scope: str
    condition: str | None


@dataclass(frozen=True)
class RoleDefinitionInfo:
    """A role definition's name and its data actions (what it allows on keys)."""

    id: str
    role_name: str
    data_actions: tuple[str, ...]
    not_data_actions: tuple[str, ...]


class ArmReads(ArmConnection):
    """Async client for the read-only ARM calls of ``rotation doctor``; one per doctor run."""

    def __init__(
        self,
        endpoint: str,
        credential: AsyncTokenCredential,
        *,
        connection_timeout: float = 10.0,
        read_timeout: float = 30.0,
        transport: AsyncHttpTransport[Any, Any] | None = None,
    ) -> None:
        super().__init__(
            endpoint,
            credential,
            connection_timeout=connection_timeout,
            read_timeout=read_timeout,
            transport=transport,
        )

    async def find_vault(self, name: str) -> str | None:
        """The ARM id of the Key Vault named ``name`` (names are global), via Resource Graph, or None."""
        safe = name.replace("'", "")
        query = (
            f"resources | where type =~ 'microsoft.keyvault/vaults' and name =~ '{safe}' "
            "| project id, name, location, subscriptionId, resourceGroup"
        )
        doc = await self._json(
            "POST",
            "/providers/Microsoft.ResourceGraph/resources",
            RESOURCE_GRAPH_API,
            what=f"Resource Graph query for vault {name}",
            body={"query": query},
        )
        rows = _list(doc.get("data"))
        for row in rows:
            if isinstance(row, dict) and isinstance(row.get("id"), str):
                return str(row["id"])
        return None

    async def get_vault(self, vault_id: str) -> VaultInfo:
        """GET ``Microsoft.KeyVault/vaults/{name}``."""
        doc = await self._json("GET", vault_id, VAULT_API, what=vault_id)
        return _parsed(VaultInfo.from_arm, doc)

    async def get_identity(self, identity_id: str) -> IdentityInfo:
        """GET ``Microsoft.ManagedIdentity/userAssignedIdentities/{name}``."""
        doc = await self._json("GET", identity_id, IDENTITY_API, what=identity_id)
        return _parsed(IdentityInfo.from_arm, doc)

    async def role_assignments(self, scope: str, principal_id: str) -> list[RoleAssignmentInfo]:
        """Role assignments of ``principal_id`` at, above and below ``scope`` (every page)."""
        url: str | None = f"{scope.rstrip('/')}/providers/Microsoft.Authorization/roleAssignments"
        principal = "".join(c for c in principal_id if c.isalnum() or c == "-")
        params: dict[str, str] | None = {"$filter": f"principalId eq '{principal}'"}
        out: list[RoleAssignmentInfo] = []
        for _ in range(_MAX_PAGES):
            if url is None:
                break
            doc = await self._json(
                "GET",
                url,
                AUTHORIZATION_API if params else None,
                what=f"role assignments on {scope}",
                params=params,
            )
            for item in _list(doc.get("value")):
                props = _dict(_dict(item).get("properties"))
                definition = props.get("roleDefinitionId")
                if isinstance(definition, str) and definition:
                    condition = props.get("condition")
                    out.append(
                        RoleAssignmentInfo(
                            role_definition_id=definition,
                            scope=str(props.get("scope", "")),
                            condition=condition if isinstance(condition, str) and condition else None,
                        )
                    )
            next_link = doc.get("nextLink")
            url, params = (next_link, None) if isinstance(next_link, str) and next_link else (None, None)
        return out

    async def role_definition(self, definition_id: str) -> RoleDefinitionInfo:
        """GET a role definition (``.../providers/Microsoft.Authorization/roleDefinitions/{guid}``)."""
        doc = await self._json("GET", definition_id, AUTHORIZATION_API, what=definition_id)
        props = _dict(doc.get("properties"))
        data: list[str] = []
        not_data: list[str] = []
        for perm in _list(props.get("permissions")):
            data += [str(a) for a in _list(_dict(perm).get("dataActions"))]
            not_data += [str(a) for a in _list(_dict(perm).get("notDataActions"))]
        return RoleDefinitionInfo(
            id=definition_id,
            role_name=str(props.get("roleName", definition_id.rsplit("/", 1)[-1])),
            data_actions=tuple(data),
            not_data_actions=tuple(not_data),
        )

    async def _json(
        self,
        method: str,
        path_or_url: str,
        api_version: str | None,
        *,
        what: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        url = path_or_url if path_or_url.startswith("https://") else self._endpoint + path_or_url
        self._check_same_host(url)
        query = dict(params or {})
        if api_version is not None:
            query["api-version"] = api_version
        response = await self._request(method, url, params=query or None, json=body)
        raise_for_status(response, service="arm", what=what)
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise ServiceError(f"unreadable answer for {what}", service="arm", status=response.status_code)
        return doc


def _parsed(parse: Callable[[object], _T], doc: dict[str, Any]) -> _T:
    try:
        return parse(doc)
    except TypeError as exc:
        raise ServiceError(f"unreadable ARM body: {exc}", service="arm") from exc


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
