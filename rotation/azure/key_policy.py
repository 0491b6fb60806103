"""Key Vault rotation policies (``GET /keys/{name}/rotationpolicy``) for ``rotation doctor``.

Permission: ``keys/getrotationpolicy`` (access policy) or ``Microsoft.KeyVault/vaults/keyrotationpolicies/
read`` (data action; Key Vault Reader has it). The SDK's own retry is off: callers retry (rule 6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from rotation.errors import NotFoundError

if TYPE_CHECKING:
    from rotation.azure.keyvault import KeyVaultKeys
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
    """Reads rotation policies, through the same vault clients and error mapping as `KeyVaultKeys`."""

    def __init__(self, keys: KeyVaultKeys) -> None:
        self._keys = keys

    async def close(self) -> None:
        """Nothing of its own to close: the clients belong to the `KeyVaultKeys` it reads through."""

    async def get(self, key: KeyUrl) -> RotationPolicy | None:
        """The key's rotation policy, or None when it has none (404)."""
        try:
            policy = await self._keys.rotation_policy(key)
        except NotFoundError:
            return None
        actions = tuple(
            LifetimeAction(
                action=str(getattr(a.action, "value", a.action)),
                time_after_create=a.time_after_create,
                time_before_expiry=a.time_before_expiry,
            )
            for a in policy.lifetime_actions or []
        )
        return RotationPolicy(actions=actions, expires_in=policy.expires_in)
