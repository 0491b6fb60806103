"""ARM ``Microsoft.DocumentDB/mongoClusters``: GET, list, PUT, PATCH and long-running operations.

Handlers are synchronous functions of (State, Incoming) -> Reply; they hold ``state.lock`` while they
touch the state and never await.

Published sources this follows (Azure/azure-rest-api-specs, ``specification/mongocluster/resource-manager/
Microsoft.DocumentDB/MongoCluster/``): ``MongoCluster.tsp`` (PUT "overwrites all properties for the
resource", answers 200 on update and 201 on create; PATCH answers 200 or 202), the examples of 2025-09-01
(``MongoClusters_Create_CMK.json``: the GET/PUT body shape; ``MongoClusters_Update.json``, response 202: the
operation URLs ``locations/{loc}/mongoClusterAzureAsyncOperation/{id}`` and
``locations/{loc}/mongoClusterOperationResults/{id}``; ``MongoClusters_PatchCMK.json``: identity + encryption
PATCH answered 202). The operation-status body is ARM's (``id``, ``name``, ``status``, ``startTime``,
``endTime``, ``error``), as azure-mgmt-core's ``AzureAsyncOperationPolling`` reads it.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from azsim import resources
from azsim.messages import Incoming, Reply, error_reply
from azsim.state import DEFAULT_CLUSTER_PROPERTIES, SERVICE_DEFAULTS, Cluster, Operation, State, iso_z

__all__ = ["WRITE_ANSWERS", "cluster_json", "handle_arm", "parse_key_url"]

PROVIDER = "microsoft.documentdb"
CLUSTERS = "mongoclusters"
CLUSTER_TYPE = "Microsoft.DocumentDB/mongoClusters"
# The operation types of the spec's examples (examples/2025-09-01/MongoClusters_Update.json, response 202).
ASYNC_OPERATION_TYPE = "mongoClusterAzureAsyncOperation"
OPERATION_RESULTS_TYPE = "mongoClusterOperationResults"
WRITE_ANSWERS = ("both", "location", "none")


def cluster_json(state: State, cluster: Cluster) -> dict[str, Any]:
    """The ARM GET JSON of a cluster (the shape of examples/2025-09-01/MongoClusters_Create_CMK.json, 200)."""
    body: dict[str, Any] = {
        "id": cluster.id,
        "name": cluster.name,
        "type": CLUSTER_TYPE,
        "location": cluster.location,
        "tags": dict(cluster.tags),
    }
    if cluster.identities:
        assigned: dict[str, Any] = {}
        for identity_id in cluster.identities:
            identity = state.identity(identity_id)
            if identity is not None:
                assigned[identity.id] = {
                    "principalId": identity.principal_id,
                    "clientId": identity.client_id,
                }
        body["identity"] = {"type": cluster.identity_type, "userAssignedIdentities": assigned}
    body["systemData"] = {
        "createdBy": "azsim@example.com",
        "createdByType": "User",
        "createdAt": iso_z(cluster.created_at),
    }
    properties: dict[str, Any] = {
        "provisioningState": cluster.provisioning_state,
        "clusterStatus": cluster.cluster_status,
        **copy.deepcopy(cluster.properties),
    }
    if cluster.key_url is not None:
        properties["encryption"] = {
            "customerManagedKeyEncryption": {
                "keyEncryptionKeyIdentity": {
                    "identityType": "UserAssignedIdentity",
                    "userAssignedIdentityResourceId": cluster.key_identity,
                },
                "keyEncryptionKeyUrl": cluster.key_url,
            }
        }
    body["properties"] = properties
    return copy.deepcopy(body)


@dataclass(frozen=True)
class KeyUrl:
    """The parts of a Key Vault key URL."""

    host: str
    name: str
    version: str | None


def parse_key_url(url: str) -> KeyUrl | None:
    """Parse ``https://{host}/keys/{name}[/{version}]``; None when it is not such a URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    segments = [s for s in parts.path.split("/") if s]
    if (
        parts.scheme.lower() != "https"
        or not parts.hostname
        or len(segments) not in {2, 3}
        or segments[0].lower() != "keys"
    ):
        return None
    return KeyUrl(parts.hostname.lower(), segments[1], segments[2] if len(segments) == 3 else None)  # noqa: PLR2004


# -- routing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Route:
    kind: str  # "cluster" | "list" | "operation-status" | "operation-result"
    subscription: str
    resource_group: str | None = None
    name: str | None = None
    operation_id: str | None = None


def _route(path: str) -> _Route | None:  # noqa: PLR0911 - one return per route
    segs = [s for s in path.split("/") if s]
    low = [s.lower() for s in segs]
    n = len(segs)
    if n < 2 or low[0] != "subscriptions":  # noqa: PLR2004
        return None
    sub = segs[1]
    if n == 8 and low[2] == "resourcegroups" and low[4:7] == ["providers", PROVIDER, CLUSTERS]:  # noqa: PLR2004
        return _Route("cluster", sub, segs[3], segs[7])
    if n == 7 and low[2] == "resourcegroups" and low[4:7] == ["providers", PROVIDER, CLUSTERS]:  # noqa: PLR2004
        return _Route("list", sub, segs[3])
    if n == 5 and low[2:5] == ["providers", PROVIDER, CLUSTERS]:  # noqa: PLR2004
        return _Route("list", sub)
    if n == 8 and low[2:5] == ["providers", PROVIDER, "locations"]:  # noqa: PLR2004
        if low[6] == ASYNC_OPERATION_TYPE.lower():
            return _Route("operation-status", sub, operation_id=segs[7])
        if low[6] == OPERATION_RESULTS_TYPE.lower():
            return _Route("operation-result", sub, operation_id=segs[7])
    return None


def _cluster_id(route: _Route) -> str:
    return (
        f"/subscriptions/{route.subscription}/resourceGroups/{route.resource_group}"
        f"/providers/Microsoft.DocumentDB/mongoClusters/{route.name}"
    )


# -- entry point -----------------------------------------------------------------------------------


def _authorized(state: State, req: Incoming) -> Reply | None:
    token = req.bearer_token()
    if token is None:
        return error_reply(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        )
    resource = state.tokens.get(token)
    if resource is None:
        return error_reply(
            401,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        )
    if not resource.lower().startswith(("https://management.", "management.")):
        return error_reply(
            401,
            "InvalidAuthenticationTokenAudience",
            f"The access token has been obtained for the wrong audience or resource '{resource}'.",
        )
    return None


def handle_arm(state: State, req: Incoming) -> Reply:
    """Answer one ARM request."""
    with state.lock:
        denied = _authorized(state, req)
        if denied is not None:
            return denied
        api_version = req.query.get("api-version")
        if not api_version:
            return error_reply(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        method = req.method.upper()
        denial = state.denied("arm", method, req.path)
        if denial is not None:
            return _forbidden(state, req, denial.path_contains)
        route = _route(req.path)
        extra = resources.match(req) if route is None else None
        if route is None and extra is None:
            return error_reply(404, "NotFound", f"No route for {req.method} {req.path}.")
        write = method in {"PUT", "PATCH", "DELETE", "POST"} and extra is None  # Resource Graph reads
        subscription = route.subscription if route is not None else extra.subscription if extra else ""
        granted, remaining, wait = state.bucket(subscription, write=write).take()
        header = "x-ms-ratelimit-remaining-subscription-" + ("writes" if write else "reads")
        if not granted:
            reply = error_reply(
                429,
                "TooManyRequests",
                f"Number of {'write' if write else 'read'} requests for subscription "
                f"'{subscription}' exceeded the limit. Please try again after {wait} seconds.",
                {"Retry-After": str(wait)},
            )
        elif route is not None:
            reply = _dispatch(state, req, route, method, api_version)
        else:
            assert extra is not None  # noqa: S101 - narrowed above
            reply = extra.handler(state, req)
        reply.headers[header] = str(remaining)
        return reply


def _forbidden(state: State, req: Incoming, what: str) -> Reply:
    """ARM's answer to a caller without the permission (see ``Simulator.deny``)."""
    del state
    return error_reply(
        403,
        "AuthorizationFailed",
        f"The client does not have authorization to perform action '{req.method.upper()} {what}' over "
        f"scope '{req.path}' or the scope is invalid. If access was recently granted, please refresh "
        "your credentials.",
    )


def _dispatch(state: State, req: Incoming, route: _Route, method: str, api_version: str) -> Reply:
    base = f"https://{req.host}"
    if route.kind == "list" and method == "GET":
        return _list(state, req, route, api_version)
    if route.kind == "operation-status" and method == "GET":
        return _operation_status(state, route, base, api_version)
    if route.kind == "operation-result" and method == "GET":
        return _operation_result(state, route, base, api_version)
    if route.kind == "cluster":
        if method == "GET":
            return _get(state, route)
        if method in {"PUT", "PATCH"}:
            return _write(state, req, route, method=method, base=base, api_version=api_version)
    return error_reply(405, "MethodNotAllowed", f"The method {method} is not supported on {req.path}.")


def _not_found(route: _Route) -> Reply:
    return error_reply(
        404,
        "ResourceNotFound",
        f"The Resource '{CLUSTER_TYPE}/{route.name}' under resource group "
        f"'{route.resource_group}' was not found.",
    )


def _get(state: State, route: _Route) -> Reply:
    try:
        cluster = state.cluster(_cluster_id(route))
    except KeyError:
        return _not_found(route)
    return Reply(200, cluster_json(state, cluster))


def _list(state: State, req: Incoming, route: _Route, api_version: str) -> Reply:
    state.settle_all()
    matching = [
        c
        for c in state.clusters.values()
        if c.subscription.lower() == route.subscription.lower()
        and (route.resource_group is None or c.resource_group.lower() == route.resource_group.lower())
    ]
    try:
        offset = max(0, int(req.query.get("$skipToken") or req.query.get("$skiptoken") or 0))
    except ValueError:
        return error_reply(400, "InvalidSkipToken", "The $skipToken is not valid.")
    size = max(1, state.config.list_page_size)
    page = matching[offset : offset + size]
    body: dict[str, Any] = {"value": [cluster_json(state, c) for c in page]}
    if offset + size < len(matching):
        body["nextLink"] = (
            f"https://{req.host}{quote(req.path)}?api-version={quote(api_version)}&$skipToken={offset + size}"
        )
    return Reply(200, body)


# -- operations ------------------------------------------------------------------------------------


def _poll_headers(state: State) -> dict[str, str]:
    interval = state.config.poll_interval
    return {
        "Retry-After": str(max(1, math.ceil(interval))),
        "retry-after-ms": str(max(0, round(interval * 1000))),
    }


def _operation_urls(op: Operation, base: str, api_version: str) -> tuple[str, str]:
    prefix = f"{base}/subscriptions/{op.subscription}/providers/Microsoft.DocumentDB/locations/{op.location}"
    query = f"?api-version={quote(api_version)}"
    return (
        f"{prefix}/{ASYNC_OPERATION_TYPE}/{op.id}{query}",
        f"{prefix}/{OPERATION_RESULTS_TYPE}/{op.id}{query}",
    )


def _find_operation(state: State, route: _Route) -> Operation | None:
    op = state.operations.get((route.operation_id or "").lower())
    if op is None or op.subscription.lower() != route.subscription.lower():
        return None
    cluster = state.clusters.get(op.cluster_key)
    if cluster is not None:
        state.settle(cluster)
    return op


def _operation_missing(route: _Route) -> Reply:
    return error_reply(404, "OperationNotFound", f"The operation '{route.operation_id}' was not found.")


def _operation_status(state: State, route: _Route, base: str, api_version: str) -> Reply:
    op = _find_operation(state, route)
    if op is None:
        return _operation_missing(route)
    status = op.status(state.now())
    status_url, _ = _operation_urls(op, base, api_version)
    body: dict[str, Any] = {
        "id": urlsplit(status_url).path,
        "name": op.id,
        "status": status,
        "startTime": iso_z(op.start),
    }
    headers: dict[str, str] = {}
    if status == "InProgress":
        headers = _poll_headers(state)
    else:
        body["endTime"] = iso_z(op.end)
    if status == "Failed" and op.error is not None:
        body["error"] = dict(op.error)
    return Reply(200, body, headers)


def _operation_result(state: State, route: _Route, base: str, api_version: str) -> Reply:
    op = _find_operation(state, route)
    if op is None:
        return _operation_missing(route)
    status = op.status(state.now())
    if status == "InProgress":
        _, result_url = _operation_urls(op, base, api_version)
        return Reply(202, None, {"Location": result_url, **_poll_headers(state)})
    if status == "Failed" and op.error is not None:
        return error_reply(400, op.error["code"], op.error["message"])
    cluster = state.clusters.get(op.cluster_key)
    if cluster is None:
        return Reply(204)
    return Reply(200, cluster_json(state, cluster))


# -- writes ----------------------------------------------------------------------------------------


@dataclass
class _Plan:
    new_identities: list[str] | None = None
    new_identity_type: str | None = None
    new_key_url: str | None = None
    new_key_identity: str | None = None
    new_tags: dict[str, str] | None = None
    new_properties: dict[str, Any] | None = None
    failure: dict[str, str] | None = None  # the operation is accepted, then fails with this error


def _bad(code: str, message: str) -> Reply:
    return error_reply(400, code, message)


def _norm_location(value: str) -> str:
    return value.lower().replace(" ", "")


def _write(  # noqa: PLR0911 - one return per check, in ARM's order
    state: State, req: Incoming, route: _Route, *, method: str, base: str, api_version: str
) -> Reply:
    cluster = state.clusters.get(_cluster_id(route).lower())
    if cluster is not None:
        state.settle(cluster)
        if cluster.operation is not None:
            return error_reply(
                409,
                "Conflict",
                f"Another operation is in progress on the resource '{cluster.id}'. "
                "Retry after the current operation completes.",
            )
    try:
        body = req.json_body()
    except ValueError:
        return _bad("InvalidRequestContent", "The request content is not valid JSON.")
    if cluster is None and method == "PATCH":
        return _not_found(route)
    if not isinstance(body, dict):
        return _bad("InvalidRequestContent", "The request content must be a JSON object.")
    if cluster is None:
        return _create(state, route, body, base=base, api_version=api_version)
    outcome = _validate(state, cluster, body, partial=method == "PATCH", api_version=api_version)
    if isinstance(outcome, Reply):
        return outcome
    op = _start_operation(state, cluster, outcome, kind=method)
    headers = _write_headers(state, op, base, api_version)
    fault = "op-failed" if op.failed else None
    if method == "PATCH":  # MongoClusters_PatchCMK.json: 202 with the operation headers, no body
        return Reply(202, None, headers, fault)
    return Reply(200, cluster_json(state, cluster), headers, fault)  # the spec: 200 on update


def _write_headers(state: State, op: Operation, base: str, api_version: str) -> dict[str, str]:
    """The operation headers of a write's answer, as `Config.write_answer` selects; Retry-After always."""
    status_url, result_url = _operation_urls(op, base, api_version)
    mode = state.config.write_answer
    headers = dict(_poll_headers(state))
    if mode == "both":
        headers["Azure-AsyncOperation"] = status_url
    if mode in {"both", "location"}:
        headers["Location"] = result_url
    return headers


def _create(state: State, route: _Route, body: dict[str, Any], *, base: str, api_version: str) -> Reply:
    """PUT of a new cluster: 201, provisioning (examples/2025-09-01/MongoClusters_Create_CMK.json)."""
    location = body.get("location")
    if not isinstance(location, str) or not location.strip():
        return _bad("LocationRequired", "The location property is required for this definition.")
    cluster = Cluster(
        id=_cluster_id(route),
        subscription=route.subscription,
        resource_group=route.resource_group or "",
        name=route.name or "",
        location=location,
        tags={},
        identities=[],
        key_url=None,
        key_identity=None,
        created_at=state.now(),
        provisioning_state="InProgress",
        cluster_status="Provisioning",
    )
    plan = _validate(state, cluster, body, partial=False, api_version=api_version, creating=True)
    if isinstance(plan, Reply):
        return plan
    cluster.key_url, cluster.key_identity = plan.new_key_url, plan.new_key_identity
    cluster.identities = list(plan.new_identities or [])
    cluster.identity_type = plan.new_identity_type or cluster.identity_type
    cluster.tags = dict(plan.new_tags or {})
    cluster.properties.update(copy.deepcopy(plan.new_properties or {}))
    plan = _Plan(failure=plan.failure)
    state.clusters[cluster.id.lower()] = cluster
    op = _start_operation(state, cluster, plan, kind="create")
    cluster.provisioning_state = "InProgress"
    return Reply(201, cluster_json(state, cluster), _write_headers(state, op, base, api_version))


def _dig_cmk(properties: object) -> object:
    encryption = properties.get("encryption") if isinstance(properties, dict) else None
    return encryption.get("customerManagedKeyEncryption") if isinstance(encryption, dict) else None


def _start_operation(state: State, cluster: Cluster, plan: _Plan, *, kind: str) -> Operation:
    now = state.now()
    seconds = cluster.operation_seconds
    if seconds is None:
        seconds = state.config.operation_seconds
    error: dict[str, str] | None = plan.failure
    if error is not None:
        pass
    elif cluster.fail_next is not None:
        error, cluster.fail_next = cluster.fail_next, None
    elif state.config.operation_failure_rate > 0 and state.rng.random() < state.config.operation_failure_rate:
        error = {"code": "InternalServerError", "message": "Simulated operation failure."}
    op = Operation(
        id=str(uuid.uuid4()),
        cluster_key=cluster.id.lower(),
        subscription=cluster.subscription,
        location=cluster.location,
        kind=kind,
        start=now,
        end=now + max(0.0, seconds),
        failed=error is not None,
        error=error,
        new_key_url=plan.new_key_url,
        new_key_identity=plan.new_key_identity,
        new_identities=plan.new_identities,
        new_tags=plan.new_tags,
        new_properties=plan.new_properties,
        new_identity_type=plan.new_identity_type,
    )
    state.operations[op.id] = op
    cluster.operation = op
    cluster.provisioning_state = "Updating"
    return op


def _validate(  # noqa: PLR0911 - one return per rule
    state: State,
    cluster: Cluster,
    body: dict[str, Any],
    *,
    partial: bool,
    api_version: str,
    creating: bool = False,
) -> Reply | _Plan:
    plan = _Plan()
    location = body.get("location")
    if location is None and not partial:
        return _bad("LocationRequired", "The location property is required for this definition.")
    if location is not None and (
        not isinstance(location, str) or _norm_location(location) != _norm_location(cluster.location)
    ):
        return _bad(
            "InvalidResourceLocation",
            f"The resource '{cluster.name}' already exists in location '{cluster.location}'. "
            f"A resource with the same name cannot be created in location '{location}'.",
        )
    tags = _plan_tags(cluster, body, partial=partial)
    if isinstance(tags, Reply):
        return tags
    plan.new_tags = tags

    body_identities = _plan_identities(state, cluster, body, plan, partial=partial)
    if isinstance(body_identities, Reply):
        return body_identities
    properties = body.get("properties")
    plan.new_properties = _plan_properties(state, properties, partial=partial or creating)
    cmk = _dig_cmk(properties)
    if cmk is not None and not cluster.cmk and not creating:
        return _bad(
            "EncryptionModeChangeNotSupported",
            "The cluster uses service-managed keys; the encryption mode cannot be changed after creation.",
        )
    if cmk is None:
        if cluster.cmk and not partial and not creating:
            return _bad(
                "EncryptionModeChangeNotSupported",
                "The cluster uses a customer-managed key; the request must keep "
                "properties.encryption.customerManagedKeyEncryption.",
            )
        return plan
    if body_identities is None and not partial:
        return _bad(
            "InvalidIdentity",
            "Customer-managed key encryption requires a user-assigned identity in 'identity'.",
        )
    refused = None if creating else _encryption_not_updatable(state, cluster, cmk, api_version)
    if refused is not None:
        return refused
    failure = _check_cmk(state, cluster, cmk, body_identities or [], plan)
    return failure if failure is not None else plan


def _plan_identities(
    state: State, cluster: Cluster, body: dict[str, Any], plan: _Plan, *, partial: bool
) -> Reply | list[str] | None:
    """The body's identities into ``plan`` (attached at once, as the real service does); their ids."""
    body_identities = _check_identities(state, cluster, body.get("identity"), partial=partial)
    if isinstance(body_identities, Reply) or body_identities is None:
        return body_identities
    plan.new_identity_type = str(body["identity"]["type"])
    # Real service behaviour: identities passed are attached even when a later check fails.
    known = {i.lower() for i in cluster.identities}
    cluster.identities.extend(i for i in body_identities if i.lower() not in known)
    plan.new_identities = list(cluster.identities) if partial else body_identities
    return body_identities


def _plan_tags(cluster: Cluster, body: dict[str, Any], *, partial: bool) -> Reply | dict[str, str] | None:
    """A PUT replaces the tags (none given: none kept); a PATCH merges them (merge patch: null removes)."""
    tags = body.get("tags")
    if tags is None:
        return None if partial else {}
    if not isinstance(tags, dict) or not all(isinstance(v, str | None) for v in tags.values()):
        return _bad("InvalidTagFormat", "The 'tags' property must be an object of string values.")
    if not partial:
        return {str(k): str(v) for k, v in tags.items() if v is not None}
    merged = dict(cluster.tags)
    for key, value in tags.items():
        if value is None:
            merged.pop(str(key), None)
        else:
            merged[str(key)] = str(value)
    return merged


def _plan_properties(state: State, properties: object, *, partial: bool) -> dict[str, Any] | None:
    """The service properties the write sets; a resetting PUT also sets every omitted one to its default."""
    given = properties if isinstance(properties, dict) else {}
    out = {k: copy.deepcopy(v) for k, v in given.items() if k in DEFAULT_CLUSTER_PROPERTIES}
    if not partial and state.config.put_resets_omitted:
        for key, value in SERVICE_DEFAULTS.items():
            out.setdefault(key, copy.deepcopy(value))
    return out or None


def _encryption_not_updatable(state: State, cluster: Cluster, cmk: object, api_version: str) -> Reply | None:
    """The 400 of an api-version whose spec marks ``properties.encryption`` create-only (opt-in mode).

    In the 2025-07-01-preview swagger (``specification/mongocluster/resource-manager/Microsoft.DocumentDB/
    MongoCluster/preview/2025-07-01-preview/mongoCluster.json``, ``MongoClusterProperties.encryption``) it has
    ``x-ms-mutability: [read, create]`` and ``MongoClusterUpdateProperties`` has no ``encryption``; from
    2025-08-01-preview on it is updatable. The wording of the real refusal is not published: this one says
    "cannot be updated", ARM's usual phrasing for a create-only property.
    """
    threshold = state.config.encryption_updatable_from
    if threshold is None or not isinstance(cmk, dict):
        return None
    if cmk.get("keyEncryptionKeyUrl") == cluster.key_url:
        return None
    if api_version.lower()[:10] >= threshold.lower()[:10]:
        return None
    return _bad(
        "BadRequest",
        f"The property 'properties.encryption' cannot be updated with api-version '{api_version}'; "
        "it can only be set when the resource is created.",
    )


def _check_identities(
    state: State, cluster: Cluster, identity: object, *, partial: bool
) -> Reply | list[str] | None:
    """Return the identity ids of the body (stored casing), None when absent, or a 400."""
    del cluster, partial
    if identity is None:
        return None
    if not isinstance(identity, dict):
        return _bad("InvalidIdentity", "The 'identity' property must be an object.")
    kind = identity.get("type")
    if not isinstance(kind, str) or "userassigned" not in kind.lower().replace(" ", ""):
        return _bad(
            "InvalidIdentity",
            f"Identity type '{kind}' is not supported; only 'UserAssigned' identities are supported.",
        )
    assigned = identity.get("userAssignedIdentities")
    if not isinstance(assigned, dict) or not assigned:
        return _bad(
            "InvalidIdentity",
            "The 'identity.userAssignedIdentities' property must name at least one identity.",
        )
    ids: list[str] = []
    for identity_id in assigned:
        found = state.identity(str(identity_id))
        if found is None:
            return _bad(
                "InvalidIdentity",
                f"The user-assigned identity '{identity_id}' was not found.",
            )
        ids.append(found.id)
    return ids


def _check_cmk(  # noqa: PLR0911 - one return per rule
    state: State, cluster: Cluster, cmk: object, body_identities: list[str], plan: _Plan
) -> Reply | None:
    if not isinstance(cmk, dict):
        return _bad("MissingEncryptionProperty", "customerManagedKeyEncryption must be an object.")
    key_identity = cmk.get("keyEncryptionKeyIdentity")
    if not isinstance(key_identity, dict):
        return _missing("keyEncryptionKeyIdentity")
    identity_type = key_identity.get("identityType")
    identity_id = key_identity.get("userAssignedIdentityResourceId")
    url = cmk.get("keyEncryptionKeyUrl")
    for field_name, value in (
        ("keyEncryptionKeyIdentity.identityType", identity_type),
        ("keyEncryptionKeyIdentity.userAssignedIdentityResourceId", identity_id),
        ("keyEncryptionKeyUrl", url),
    ):
        if not isinstance(value, str) or not value.strip():
            return _missing(field_name)
    assert isinstance(identity_type, str)  # noqa: S101 - narrowed by the loop above
    assert isinstance(identity_id, str)  # noqa: S101
    assert isinstance(url, str)  # noqa: S101
    if identity_type != "UserAssignedIdentity":
        return _bad(
            "InvalidKeyEncryptionKeyIdentity",
            f"keyEncryptionKeyIdentity.identityType '{identity_type}' is not supported; "
            "use 'UserAssignedIdentity'.",
        )
    attached = {i.lower() for i in cluster.identities} | {i.lower() for i in body_identities}
    if identity_id.lower() not in attached:
        return _bad(
            "InvalidKeyEncryptionKeyIdentity",
            f"The key encryption identity '{identity_id}' is not assigned to the cluster.",
        )
    failure = _check_key(state, url)
    if failure is not None:
        return failure
    found = state.identity(identity_id)
    plan.new_key_identity = found.id if found is not None else identity_id
    plan.new_key_url = url
    plan.failure = _key_access_failure(state, url, identity_id)
    return None


def _policy_wraps(policy: dict[str, Any]) -> bool:
    """Whether an access policy grants wrapKey and unwrapKey (or all key permissions)."""
    granted = {str(p).lower() for p in policy.get("permissions", {}).get("keys", [])}
    return {"wrapkey", "unwrapkey"} <= granted or "all" in granted


_WRAP = "microsoft.keyvault/vaults/keys/wrap/action"
_UNWRAP = "microsoft.keyvault/vaults/keys/unwrap/action"


def _key_access_failure(state: State, url: str, identity_id: str) -> dict[str, str] | None:
    """The operation's error when the key identity cannot wrap and unwrap with the key, else None.

    The service accepts the write and the operation fails (the product's requirement: the identity needs
    Key Vault Crypto Service Encryption User, or access policies get, wrapKey, unwrapKey; Microsoft Learn,
    "Configure customer-managed key ... for an Azure Cosmos DB for MongoDB vCore cluster"). The message
    follows the Cosmos DB CMK troubleshooting guide ("The default identity is unauthorized to access the
    Azure Key Vault key"); the vCore service's exact code is not published.
    """
    parsed = parse_key_url(url)
    vault = state.vaults.get(parsed.host) if parsed is not None else None
    identity = state.identity(identity_id)
    if parsed is None or vault is None or identity is None:
        return None
    if vault.enable_rbac_authorization:
        key_scope = f"{vault.arm_id}/keys/{parsed.name}".lower()
        granted: set[str] = set()
        for assignment in state.role_assignments:
            scope = assignment.scope.lower().rstrip("/")
            if assignment.principal_id != identity.principal_id:
                continue
            if key_scope != scope and not key_scope.startswith(scope + "/"):
                continue
            role = state.role_definitions.get(assignment.role_guid.lower())
            if role is None:
                continue
            for action in (_WRAP, _UNWRAP):
                if any(fnmatch.fnmatchcase(action, p.lower()) for p in role.data_actions) and not any(
                    fnmatch.fnmatchcase(action, p.lower()) for p in role.not_data_actions
                ):
                    granted.add(action)
        allowed = granted == {_WRAP, _UNWRAP}
    else:
        allowed = any(
            policy.get("objectId") == identity.principal_id
            and (
                {"wrapkey", "unwrapkey"}
                <= {str(p).lower() for p in policy.get("permissions", {}).get("keys", [])}
                or "all" in {str(p).lower() for p in policy.get("permissions", {}).get("keys", [])}
            )
            for policy in vault.access_policies
        )
    if allowed:
        return None
    return {
        "code": "KeyVaultAccessForbidden",
        "message": (
            f"The identity '{identity.id}' is unauthorized to access the Azure Key Vault key "
            f"'{parsed.name}': it needs the wrapKey and unwrapKey permissions on the key."
        ),
    }


def _missing(field_name: str) -> Reply:
    return _bad(
        "MissingEncryptionProperty",
        f"properties.encryption.customerManagedKeyEncryption.{field_name} is required.",
    )


def _check_key(state: State, url: str) -> Reply | None:  # noqa: PLR0911 - one return per rule
    parsed = parse_key_url(url)
    if parsed is None:
        return _bad("InvalidKeyVaultKeyUrl", f"'{url}' is not a valid Key Vault key URL.")
    vault = state.vaults.get(parsed.host)
    if vault is None:
        return _bad("InvalidKeyVaultKeyUrl", f"The Key Vault '{parsed.host}' was not found.")
    key = vault.keys.get(parsed.name.lower())
    if key is None or not key.versions:
        return _bad("KeyVaultKeyNotFound", f"The key '{parsed.name}' was not found in '{vault.name}'.")
    if parsed.version is None:
        version = key.latest
    else:
        found = key.versions.get(parsed.version.lower())
        if found is None:
            return _bad(
                "KeyVaultKeyNotFound",
                f"The key version '{parsed.name}/{parsed.version}' was not found in '{vault.name}'.",
            )
        version = found
    now = time.time()
    if not version.enabled:
        return _bad("KeyVaultKeyDisabled", f"The key '{parsed.name}/{version.version}' is disabled.")
    if version.nbf is not None and version.nbf > now:
        return _bad("KeyVaultKeyNotYetValid", f"The key '{parsed.name}/{version.version}' is not active yet.")
    if version.exp is not None and version.exp <= now:
        return _bad("KeyVaultKeyExpired", f"The key '{parsed.name}/{version.version}' has expired.")
    return None
