"""ARM resources around a cluster's key, read by ``rotation doctor``: vaults, identities, RBAC, ARG.

Served (GET unless noted; every handler is synchronous and runs with ``state.lock`` held):

- ``/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{name}`` (2023-07-01 shape)
- ``/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}``
- ``{scope}/providers/Microsoft.Authorization/roleAssignments[?$filter=principalId eq '{id}']``: the
  assignments at, above and below ``scope`` (as ARM answers that filter)
- ``[/subscriptions/{s}]/providers/Microsoft.Authorization/roleDefinitions/{guid}``
- POST ``/providers/Microsoft.ResourceGraph/resources``: only the query that finds a vault by name
  (``resources | where type =~ 'microsoft.keyvault/vaults' and name =~ '{name}' ...``); vaults the rotator
  is denied (`azsim.state.Denial`) are left out, as Resource Graph leaves out what the caller cannot read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from azsim.messages import Incoming, Reply, error_reply

if TYPE_CHECKING:
    from collections.abc import Callable

    from azsim.state import Identity, RoleAssignment, RoleDefinition, State, Vault

__all__ = ["ExtraRoute", "identity_json", "match", "vault_json"]

_AUTH = "/providers/microsoft.authorization/"
_VAULT_QUERY = re.compile(
    r"^\s*resources\s*\|\s*where\s+type\s*=~\s*'microsoft\.keyvault/vaults'\s+and\s+name\s*=~\s*'([^']+)'",
    re.IGNORECASE,
)
_PRINCIPAL_FILTER = re.compile(r"^\s*principalId\s+eq\s+'([0-9a-fA-F-]+)'\s*$")


@dataclass(frozen=True)
class ExtraRoute:
    """A matched request: the subscription whose read bucket it draws from, and its handler."""

    subscription: str
    handler: Callable[[State, Incoming], Reply]


def match(req: Incoming) -> ExtraRoute | None:  # noqa: PLR0911 - one return per route
    """The route of ``req`` among the resources of this module, or None."""
    path = req.path.rstrip("/")
    low = path.lower()
    segs = [s for s in path.split("/") if s]
    lsegs = [s.lower() for s in segs]
    method = req.method.upper()
    if low == "/providers/microsoft.resourcegraph/resources" and method == "POST":
        return ExtraRoute("tenant", _resource_graph)
    if method != "GET":
        return None
    sub = segs[1] if len(segs) > 1 and lsegs[0] == "subscriptions" else "tenant"
    if _AUTH + "roleassignments" in low and low.endswith("/roleassignments"):
        return ExtraRoute(sub, _role_assignments)
    if len(segs) >= 4 and lsegs[-3:-1] == ["microsoft.authorization", "roledefinitions"]:  # noqa: PLR2004
        return ExtraRoute(sub, _role_definition)
    if len(segs) == 8 and lsegs[2] == "resourcegroups" and lsegs[4] == "providers":  # noqa: PLR2004
        kind = "/".join(lsegs[5:7])
        if kind == "microsoft.keyvault/vaults":
            return ExtraRoute(sub, _vault)
        if kind == "microsoft.managedidentity/userassignedidentities":
            return ExtraRoute(sub, _identity)
    return None


# -- vaults ----------------------------------------------------------------------------------------


def vault_json(state: State, vault: Vault) -> dict[str, Any]:
    """The ARM GET JSON of a vault (``enablePurgeProtection`` is absent when off, as ARM writes it)."""
    props: dict[str, Any] = {
        "tenantId": state.tenant_id,
        "sku": {"family": "A", "name": "standard"},
        "accessPolicies": [dict(p) for p in vault.access_policies],
        "vaultUri": vault.url + "/",
        "enabledForDeployment": False,
        "enableSoftDelete": vault.enable_soft_delete,
        "softDeleteRetentionInDays": vault.soft_delete_retention_days,
        "enableRbacAuthorization": vault.enable_rbac_authorization,
        "publicNetworkAccess": vault.public_network_access,
        "networkAcls": {
            "bypass": vault.network_bypass,
            "defaultAction": vault.network_default_action,
            "ipRules": [{"value": ip} for ip in vault.ip_rules],
            "virtualNetworkRules": [],
        },
        "provisioningState": "Succeeded",
    }
    if vault.enable_purge_protection:
        props["enablePurgeProtection"] = True
    return {
        "id": vault.arm_id,
        "name": vault.name,
        "type": "Microsoft.KeyVault/vaults",
        "location": vault.location,
        "tags": {},
        "properties": props,
    }


def _vault(state: State, req: Incoming) -> Reply:
    segs = [s for s in req.path.split("/") if s]
    for vault in state.vaults.values():
        if vault.arm_id.lower() == "/" + "/".join(segs).lower():
            return Reply(200, vault_json(state, vault))
    return error_reply(
        404,
        "ResourceNotFound",
        f"The Resource 'Microsoft.KeyVault/vaults/{segs[-1]}' under resource group '{segs[3]}' "
        "was not found.",
    )


def _resource_graph(state: State, req: Incoming) -> Reply:
    try:
        body = req.json_body()
    except ValueError:
        body = None
    query = body.get("query") if isinstance(body, dict) else None
    found = _VAULT_QUERY.match(query) if isinstance(query, str) else None
    if found is None:
        return error_reply(
            400,
            "BadRequest",
            "The simulator's Resource Graph answers only "
            "\"resources | where type =~ 'microsoft.keyvault/vaults' and name =~ '{name}'\".",
        )
    name = found.group(1).lower()
    rows = [
        {
            "id": v.arm_id,
            "name": v.name,
            "type": "microsoft.keyvault/vaults",
            "location": v.location,
            "subscriptionId": v.subscription,
            "resourceGroup": v.resource_group,
        }
        for v in state.vaults.values()
        if v.name.lower() == name and state.denied("arm", "GET", v.arm_id) is None
    ]
    return Reply(
        200, {"totalRecords": len(rows), "count": len(rows), "resultTruncated": "false", "data": rows}
    )


# -- identities ------------------------------------------------------------------------------------


def identity_json(state: State, identity: Identity) -> dict[str, Any]:
    """The ARM GET JSON of a user-assigned identity."""
    return {
        "id": identity.id,
        "name": identity.name,
        "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
        "location": identity.location,
        "tags": {},
        "properties": {
            "tenantId": state.tenant_id,
            "principalId": identity.principal_id,
            "clientId": identity.client_id,
        },
    }


def _identity(state: State, req: Incoming) -> Reply:
    found = state.identity(req.path.rstrip("/"))
    if found is None:
        segs = [s for s in req.path.split("/") if s]
        return error_reply(
            404,
            "ResourceNotFound",
            f"The Resource 'Microsoft.ManagedIdentity/userAssignedIdentities/{segs[-1]}' under resource "
            f"group '{segs[3]}' was not found.",
        )
    return Reply(200, identity_json(state, found))


# -- RBAC ------------------------------------------------------------------------------------------


def _definition_id(scope_subscription: str | None, guid: str) -> str:
    prefix = f"/subscriptions/{scope_subscription}" if scope_subscription else ""
    return f"{prefix}/providers/Microsoft.Authorization/roleDefinitions/{guid}"


def _subscription_of(scope: str) -> str | None:
    segs = [s for s in scope.split("/") if s]
    return segs[1] if len(segs) > 1 and segs[0].lower() == "subscriptions" else None


def _assignment_json(assignment: RoleAssignment) -> dict[str, Any]:
    scope = assignment.scope.rstrip("/") or "/"
    prefix = "" if scope == "/" else scope
    return {
        "id": f"{prefix}/providers/Microsoft.Authorization/roleAssignments/{assignment.guid}",
        "name": assignment.guid,
        "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "roleDefinitionId": _definition_id(_subscription_of(scope), assignment.role_guid),
            "principalId": assignment.principal_id,
            "principalType": "ServicePrincipal",
            "scope": scope,
            "condition": assignment.condition,
            "conditionVersion": "2.0" if assignment.condition else None,
        },
    }


def _related(assigned: str, asked: str) -> bool:
    """At, above or below: one scope is a path prefix of the other."""
    a = assigned.rstrip("/").lower() + "/"
    b = asked.rstrip("/").lower() + "/"
    return a.startswith(b) or b.startswith(a) or a == "/"


def _role_assignments(state: State, req: Incoming) -> Reply:
    scope = req.path[: req.path.lower().rindex("/providers/microsoft.authorization/roleassignments")] or "/"
    raw_filter = req.query.get("$filter")
    principal: str | None = None
    if raw_filter:
        parsed = _PRINCIPAL_FILTER.match(raw_filter)
        if parsed is None:
            return error_reply(
                400, "InvalidFilter", "The simulator supports only $filter=principalId eq '{id}'."
            )
        principal = parsed.group(1).lower()
    rows = [
        _assignment_json(a)
        for a in state.role_assignments
        if _related(a.scope, scope) and (principal is None or a.principal_id.lower() == principal)
    ]
    return Reply(200, {"value": rows})


def _definition_json(definition: RoleDefinition, subscription: str | None) -> dict[str, Any]:
    return {
        "id": _definition_id(subscription, definition.guid),
        "name": definition.guid,
        "type": "Microsoft.Authorization/roleDefinitions",
        "properties": {
            "roleName": definition.role_name,
            "type": "BuiltInRole" if definition.built_in else "CustomRole",
            "permissions": [
                {
                    "actions": list(definition.actions),
                    "notActions": [],
                    "dataActions": list(definition.data_actions),
                    "notDataActions": list(definition.not_data_actions),
                }
            ],
            "assignableScopes": ["/"],
        },
    }


def _role_definition(state: State, req: Incoming) -> Reply:
    segs = [s for s in req.path.split("/") if s]
    guid = segs[-1].lower()
    definition = state.role_definitions.get(guid)
    if definition is None:
        return error_reply(404, "RoleDefinitionDoesNotExist", "The specified role definition does not exist.")
    return Reply(200, _definition_json(definition, _subscription_of(req.path)))
