"""The App Service managed-identity token endpoint (``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``).

Modelled on Microsoft Learn, "How to use managed identities for App Service and Azure Functions", section
"REST endpoint reference" (``GET {IDENTITY_ENDPOINT}?resource=...&api-version=2019-08-01`` with header
``X-IDENTITY-HEADER``; answer ``access_token``, ``expires_on``, ``resource``, ``token_type``; ``client_id``
picks a user-assigned identity), as azure-identity's ``AppServiceCredential`` calls it.
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import TYPE_CHECKING

from azsim.messages import Incoming, Reply, error_reply

if TYPE_CHECKING:
    from azsim.state import State

__all__ = ["TOKEN_PATH", "handle_identity"]

TOKEN_PATH = "/msi/token"  # noqa: S105 - a URL path, not a secret
TOKEN_LIFETIME_S = 3600
SYSTEM_CLIENT_ID = "5a1d0000-0000-4000-8000-00000000a5e0"


def handle_identity(state: State, req: Incoming, identity_header: str) -> Reply:
    """Issue a new random access token for the requested resource."""
    if req.path.rstrip("/") != TOKEN_PATH:
        return error_reply(404, "NotFound", f"No route for {req.path}.")
    if req.method.upper() != "GET":
        return error_reply(405, "MethodNotAllowed", "Use GET.")
    presented = req.headers.get("x-identity-header", "")
    if not hmac.compare_digest(presented.encode(), identity_header.encode()):
        return error_reply(401, "Unauthorized", "The X-IDENTITY-HEADER header is missing or wrong.")
    resource = req.query.get("resource", "").strip()
    if not req.query.get("api-version") or not resource:
        return error_reply(400, "BadRequest", "api-version and resource are required.")
    client_id = req.query.get("client_id") or SYSTEM_CLIENT_ID
    token = secrets.token_urlsafe(32)
    with state.lock:
        state.tokens[token] = resource.removesuffix("/.default")
    return Reply(
        200,
        {
            "access_token": token,
            "expires_on": str(int(time.time()) + TOKEN_LIFETIME_S),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": client_id,
        },
    )
