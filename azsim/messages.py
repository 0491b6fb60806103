"""Framework-free request and reply types shared by the ARM, Key Vault and identity handlers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Incoming", "Reply", "RequestRecord", "error_reply"]


@dataclass(frozen=True)
class RequestRecord:
    """One request the simulator served (ARM, Key Vault or managed identity), as the tests see it.

    ``status`` is 0 when the connection was reset instead of answered. ``fault`` names the injected
    behaviour ("429", "409", "500", "503", "reset", "slow", "op-failed", or a status code of a scripted
    fault), or is None. ``received`` is when the request arrived and ``time`` when it was answered: a "slow"
    request is handled after its delay, so a write the client gave up on is applied late, at ``time``.
    Tokens never appear here: ``body`` of an identity request is always None.
    """

    time: float
    service: str
    method: str
    host: str
    path: str
    query: dict[str, str]
    status: int
    fault: str | None
    body: Any
    client_request_id: str | None
    received: float = 0.0  # when the request arrived; ``time`` is when it was answered (after any delay)


@dataclass(frozen=True)
class Incoming:
    """The parts of an HTTP request a handler looks at (header names lower-case)."""

    method: str
    host: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw_body: bytes = b""

    def json_body(self) -> Any:  # noqa: ANN401 - JSON is untyped until a handler checks it
        """Return the parsed JSON body, None when empty; raise ValueError when it is not JSON."""
        if not self.raw_body.strip():
            return None
        return json.loads(self.raw_body)

    def bearer_token(self) -> str | None:
        """Return the bearer token of the Authorization header, if any."""
        value = self.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()


@dataclass
class Reply:
    """What a handler answers: status, JSON body (None for no body) and extra headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    fault: str | None = None


def error_reply(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    """Return an Azure-style error: ``{"error": {"code": ..., "message": ...}}``."""
    return Reply(status, {"error": {"code": code, "message": message}}, dict(headers or {}))
