"""Key Vault rotation policies (``GET /keys/{name}/rotationpolicy``) for ``rotation doctor``.

Permission: ``keys/getrotationpolicy`` (access policy) or ``Microsoft.KeyVault/vaults/keyrotationpolicies/
read`` (data action; Key Vault Reader has it). The SDK's own retry is off: callers retry (rule 6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.keys.aio import KeyClient

from rotation.arm import retry_after_seconds
from rotation.errors import ServiceError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from azure.core.credentials_async import AsyncTokenCredential

    from rotation.ids import KeyUrl

_DURATION = re.compile(
    r"^P(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+)S)?)?$"
)


def parse_duration(text: str) -> timedelta | None:
    """An ISO 8601 duration as Key Vault writes it (``P90D``, ``P1Y``, ``P2M``); a year is 365 days."""
    found = _DURATION.match(text.strip().upper()) if text else None
    if found is None or text.strip().upper() in {"P", "PT"}:
        return None
    n = {k: int(v) if v else 0 for k, v in found.groupdict().items()}
    return timedelta(
        days=n["y"] * 365 + n["mo"] * 30 + n["w"] * 7 + n["d"], hours=n["h"], minutes=n["mi"], seconds=n["s"]
    )


@dataclass(frozen=True)
class LifetimeAction:
    """One action of a rotation policy: ``Rotate`` or ``Notify``, after creation or before expiry."""

    action: str
    time_after_create: str | None
    time_before_expiry: str | None


@dataclass(frozen=True)
class RotationPolicy:
    """A key's rotation policy; ``expires_in`` is the expiry given to versions it creates."""

    actions: tuple[LifetimeAction, ...]
    expires_in: str | None

    @property
    def rotate(self) -> tuple[LifetimeAction, ...]:
        """The ``Rotate`` actions."""
        return tuple(a for a in self.actions if a.action.lower() == "rotate")


class KeyPolicies:
    """Reads rotation policies from any number of vaults; one `KeyClient` per vault."""

    def __init__(self, credential: AsyncTokenCredential, *, read_timeout: float = 30.0) -> None:
        self._credential = credential
        self._read_timeout = read_timeout
        self._clients: dict[str, KeyClient] = {}

    async def close(self) -> None:
        """Close every vault client."""
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()

    async def get(self, key: KeyUrl) -> RotationPolicy | None:
        """The key's rotation policy, or None when it has none (404)."""
        client = self._clients.get(key.vault_url)
        if client is None:
            client = KeyClient(
                key.vault_url,
                self._credential,
                retry_total=0,
                connection_timeout=10,
                read_timeout=self._read_timeout,
            )
            self._clients[key.vault_url] = client
        try:
            policy = await client.get_key_rotation_policy(key.name)
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            headers: Mapping[str, str] = getattr(exc.response, "headers", None) or {}
            error = getattr(exc, "error", None)
            code = getattr(error, "code", None)
            raise ServiceError(
                f"{key.host}/{key.name} rotation policy: {exc.reason or 'error'}",
                service="keyvault",
                status=exc.status_code,
                code=code if isinstance(code, str) else None,
                retry_after=retry_after_seconds(headers),
            ) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise ServiceError(f"{key.host}: {type(exc).__name__}", service="keyvault") from exc
        actions = tuple(
            LifetimeAction(
                action=str(getattr(a.action, "value", a.action)),
                time_after_create=a.time_after_create,
                time_before_expiry=a.time_before_expiry,
            )
            for a in policy.lifetime_actions or []
        )
        return RotationPolicy(actions=actions, expires_in=policy.expires_in)
