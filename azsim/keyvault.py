"""Key Vault keys data plane: get (version / latest), list keys and versions, create, rotate, update.

Requests without a valid token get the 401 challenge the SDK's ChallengeAuthPolicy expects.

Modelled on the published Key Vault data-plane REST specification, Azure/azure-rest-api-specs
``specification/keyvault/data-plane/Microsoft.KeyVault/stable/2025-06-01/keys.json`` (KeyBundle, KeyAttributes
with ``created``/``updated``/``nbf``/``exp`` in Unix seconds, ``KeyListResult`` paged by ``nextLink``,
``GetKeyRotationPolicy``) and its ``examples/``, and on azure-keyvault-keys' ``ChallengeAuthPolicy``
(azure-sdk-for-python, ``sdk/keyvault/azure-keyvault-keys/azure/keyvault/keys/_shared/
challenge_auth_policy.py``) for the 401 ``WWW-Authenticate`` challenge.
"""

from __future__ import annotations

import base64
import copy
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from azsim.messages import Incoming, Reply, error_reply

if TYPE_CHECKING:
    from azsim.state import Key, KeyVersion, State, Vault

__all__ = ["bundle", "handle_kv", "rotation_policy_json"]

_DEFAULT_MAX_RESULTS = 25


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def attributes(version: KeyVersion) -> dict[str, Any]:
    """The ``attributes`` object of a key version."""
    attrs: dict[str, Any] = {"enabled": version.enabled}
    if version.nbf is not None:
        attrs["nbf"] = version.nbf
    if version.exp is not None:
        attrs["exp"] = version.exp
    attrs.update(
        created=version.created,
        updated=version.updated,
        recoveryLevel="Recoverable",
        recoverableDays=90,
    )
    return attrs


def bundle(vault: Vault, key: Key, version: KeyVersion) -> dict[str, Any]:
    """The key bundle JSON of one version."""
    jwk: dict[str, Any] = {
        "kid": f"{vault.url}/keys/{key.name}/{version.version}",
        "kty": version.kty,
        "key_ops": list(version.ops),
    }
    if version.crv is not None:
        jwk.update(crv=version.crv, x=_b64url(version.material["x"]), y=_b64url(version.material["y"]))
    else:
        jwk.update(n=_b64url(version.material["n"]), e=_b64url(version.material["e"]))
    return {"key": jwk, "attributes": attributes(version), "tags": dict(version.tags)}


def _item(kid: str, version: KeyVersion) -> dict[str, Any]:
    return {"kid": kid, "attributes": attributes(version), "tags": dict(version.tags)}


def _challenge(state: State, vault_resource: str, message: str) -> Reply:
    header = (
        f'Bearer authorization="https://login.microsoftonline.com/{state.tenant_id}", '
        f'resource="{vault_resource}"'
    )
    return error_reply(401, "Unauthorized", message, {"WWW-Authenticate": header})


def _resource_for_host(host: str) -> str:
    if host.endswith(".managedhsm.azure.net"):
        return "https://managedhsm.azure.net"
    _, _, suffix = host.partition(".")
    return f"https://{suffix}"


def _authorized(state: State, req: Incoming, host: str) -> Reply | None:
    resource = _resource_for_host(host)
    token = req.bearer_token()
    if token is None:
        return _challenge(state, resource, "AKV10000: Request is missing a Bearer or PoP token.")
    issued_for = state.tokens.get(token)
    if issued_for is None:
        return _challenge(state, resource, "AKV10032: Invalid issuer or unknown token.")
    if issued_for.rstrip("/").lower() != resource:
        return _challenge(state, resource, f"AKV10022: Invalid audience. Expected {resource}.")
    return None


def handle_kv(state: State, req: Incoming) -> Reply:
    """Answer one Key Vault request."""
    host = req.host.lower()
    with state.lock:
        denied = _authorized(state, req, host)
        if denied is not None:
            return denied
        if not req.query.get("api-version"):
            return error_reply(
                400, "BadParameter", "The request URI contains an invalid or missing api-version."
            )
        vault = state.vaults.get(host)
        if vault is None:
            return error_reply(404, "VaultNotFound", f"The vault '{host}' does not exist.")
        if state.denied("kv", req.method, req.path) is not None:
            reply = error_reply(
                403,
                "Forbidden",
                "Caller is not authorized to perform action on resource. If role assignments, deny "
                "assignments or role definitions were changed recently, please observe propagation time.",
            )
            reply.body["error"]["innererror"] = {"code": "ForbiddenByRbac"}
            return reply
        return _dispatch(state, req, vault)


def _dispatch(state: State, req: Incoming, vault: Vault) -> Reply:  # noqa: PLR0911, C901 - a route table
    segs = [s for s in req.path.split("/") if s]
    method = req.method.upper()
    if not segs or segs[0].lower() != "keys":
        return error_reply(404, "NotFound", f"No route for {req.method} {req.path}.")
    if len(segs) == 1 and method == "GET":
        return _list_keys(state, req, vault)
    if len(segs) > 3:  # noqa: PLR2004
        return error_reply(404, "NotFound", f"No route for {req.method} {req.path}.")
    name = segs[1]
    action = segs[2] if len(segs) == 3 else None  # noqa: PLR2004
    if method == "POST" and action is not None and action.lower() in {"create", "rotate"}:
        return _create(state, req, vault, name, rotate=action.lower() == "rotate")
    key = vault.keys.get(name.lower())
    if key is None or not key.versions:
        return _key_not_found(vault, name)
    if method == "GET" and action is not None and action.lower() == "versions":
        return _list_versions(state, req, vault, key)
    if method == "GET" and action is not None and action.lower() == "rotationpolicy":
        return _rotation_policy(vault, key)
    version = key.latest if action is None else key.versions.get(action.lower())
    if version is None:
        return _key_not_found(vault, f"{name}/{action}")
    if method == "GET":
        return Reply(200, bundle(vault, key, version))
    if method == "PATCH":
        return _update(req, vault, key, version)
    return error_reply(405, "MethodNotAllowed", f"The method {method} is not supported on {req.path}.")


def rotation_policy_json(vault: Vault, key: Key) -> dict[str, Any] | None:
    """The rotation policy of a key in the Key Vault REST shape, or None when none is set."""
    if key.rotation_policy is None:
        return None
    policy = copy.deepcopy(key.rotation_policy)
    attrs = dict(policy.get("attributes") or {})
    attrs.update(created=key.policy_created, updated=key.policy_updated)
    return {
        "id": f"{vault.url}/keys/{key.name}/rotationpolicy",
        "lifetimeActions": policy.get("lifetimeActions") or [],
        "attributes": attrs,
    }


def _rotation_policy(vault: Vault, key: Key) -> Reply:
    body = rotation_policy_json(vault, key)
    if body is None:
        return error_reply(
            404, "KeyRotationPolicyNotFound", f"A rotation policy for key {key.name} was not found."
        )
    return Reply(200, body)


def _key_not_found(vault: Vault, name: str) -> Reply:
    return error_reply(
        404,
        "KeyNotFound",
        f"A key with (name/id) {name} was not found in this key vault ({vault.name}).",
    )


def _page(req: Incoming) -> tuple[int, int] | Reply:
    try:
        size = int(req.query.get("maxresults") or _DEFAULT_MAX_RESULTS)
        offset = int(req.query.get("$skiptoken") or req.query.get("$skipToken") or 0)
    except ValueError:
        return error_reply(400, "BadParameter", "maxresults and $skiptoken must be integers.")
    if not 1 <= size <= _DEFAULT_MAX_RESULTS or offset < 0:
        return error_reply(400, "BadParameter", "maxresults must be between 1 and 25.")
    return offset, size


def _paged(req: Incoming, items: list[dict[str, Any]]) -> Reply:
    page = _page(req)
    if isinstance(page, Reply):
        return page
    offset, size = page
    next_link: str | None = None
    if offset + size < len(items):
        next_link = (
            f"https://{req.host}{quote(req.path)}?api-version={quote(req.query['api-version'])}"
            f"&maxresults={size}&$skiptoken={offset + size}"
        )
    return Reply(200, {"value": items[offset : offset + size], "nextLink": next_link})


def _list_keys(state: State, req: Incoming, vault: Vault) -> Reply:
    del state
    items = [_item(f"{vault.url}/keys/{key.name}", key.latest) for key in vault.keys.values() if key.versions]
    return _paged(req, items)


def _list_versions(state: State, req: Incoming, vault: Vault, key: Key) -> Reply:
    del state
    ordered = sorted(key.versions.values(), key=lambda v: v.created)
    items = [_item(f"{vault.url}/keys/{key.name}/{v.version}", v) for v in ordered]
    return _paged(req, items)


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("must be a number")
    return int(value)


def _create(  # noqa: PLR0911 - one return per check
    state: State, req: Incoming, vault: Vault, name: str, *, rotate: bool
) -> Reply:
    try:
        body = req.json_body() or {}
    except ValueError:
        return error_reply(400, "BadParameter", "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return error_reply(400, "BadParameter", "The request body must be a JSON object.")
    existing = vault.keys.get(name.lower())
    kty: object
    size: object
    ops: object
    if rotate:
        if existing is None or not existing.versions:
            return _key_not_found(vault, name)
        latest = existing.latest
        kty, size, ops = latest.kty, latest.size, list(latest.ops)
        enabled, nbf, exp = True, None, None
        tags = dict(latest.tags)
    else:
        kty = body.get("kty")
        if not isinstance(kty, str) or not kty:
            return error_reply(400, "BadParameter", "Property 'kty' is required.")
        size = body.get("key_size") or 2048
        ops = body.get("key_ops")
        attrs = body.get("attributes") or {}
        tags = body.get("tags") or {}
        try:
            enabled = bool(attrs.get("enabled", True))
            nbf = _optional_int(attrs.get("nbf"))
            exp = _optional_int(attrs.get("exp"))
        except (TypeError, AttributeError):
            return error_reply(400, "BadParameter", "Invalid key attributes.")
    if not isinstance(size, int) or (ops is not None and not isinstance(ops, list)):
        return error_reply(400, "BadParameter", "key_size must be an integer and key_ops a list.")
    try:
        version = state.new_key_version(
            vault,
            name,
            kty=str(kty),
            size=size,
            ops=[str(op) for op in ops] if ops is not None else None,
            enabled=enabled,
            nbf=nbf,
            exp=exp,
            tags={str(k): str(v) for k, v in dict(tags).items()},
        )
    except (ValueError, TypeError) as exc:
        return error_reply(400, "BadParameter", str(exc))
    key = vault.keys[name.lower()]
    state.key_event(vault, key, version, "KeyNewVersionCreated")
    return Reply(200, bundle(vault, key, version))


def _update(req: Incoming, vault: Vault, key: Key, version: KeyVersion) -> Reply:
    try:
        body = req.json_body() or {}
    except ValueError:
        return error_reply(400, "BadParameter", "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return error_reply(400, "BadParameter", "The request body must be a JSON object.")
    attrs = body.get("attributes") or {}
    try:
        if "enabled" in attrs and attrs["enabled"] is not None:
            version.enabled = bool(attrs["enabled"])
        if "nbf" in attrs:
            version.nbf = _optional_int(attrs["nbf"])
        if "exp" in attrs:
            version.exp = _optional_int(attrs["exp"])
    except (TypeError, AttributeError):
        return error_reply(400, "BadParameter", "Invalid key attributes.")
    if isinstance(body.get("key_ops"), list):
        version.ops = [str(op) for op in body["key_ops"]]
    if isinstance(body.get("tags"), dict):
        version.tags = {str(k): str(v) for k, v in body["tags"].items()}
    version.updated = max(int(time.time()), version.created)
    return Reply(200, bundle(vault, key, version))
