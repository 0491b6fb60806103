"""A key's newest version that exists but is not usable: warned by doctor, reconcile, rotate --dry-run.

Rule 3 keeps clusters off such a version, and reconcile's target is the newest *usable* version, so a
disabled, not-yet-active or expired newest version (or one of the wrong type, or without wrap/unwrap) would
otherwise leave every cluster on the older version in silence: no rotation, no error, just a key that stops
moving forward. The reason names the version's URL, which is what on-call looks up
(``az keyvault key show --id URL``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from rotation.azure.keyvault import listed_unusable_reason, unusable_reason
from rotation.errors import ServiceError
from rotation.ids import KeyUrl

if TYPE_CHECKING:
    from rotation.azure.keyvault import KeyVaultKeys, KeyVersion

logger = logging.getLogger(__name__)

_EPOCH = datetime.min.replace(tzinfo=UTC)
# A key version expiring sooner than this is warned about (doctor, reconcile): time to create the next one.
EXPIRY_HORIZON = timedelta(days=30)


@dataclass(frozen=True)
class NewestNotUsable:
    """The key's newest version, newer than the cluster's, and why it is not usable."""

    version: KeyVersion
    why: str

    @property
    def target_key_url(self) -> str:
        """The versioned URL of the unusable version."""
        return str(self.version.url)

    @property
    def reason(self) -> str:
        """One line naming the version's URL and why it is not used."""
        return (
            f"newest version {self.target_key_url} is not usable ({self.why}): clusters stay on the newest "
            "usable version until it is fixed or a new version is created"
        )


def newest_version(versions: list[KeyVersion]) -> KeyVersion | None:
    """The most recently created version of a listing (None: an empty listing)."""
    return max(versions, key=lambda v: v.created_on or _EPOCH, default=None)


def newest_not_usable(
    versions: list[KeyVersion],
    now: datetime,
    *,
    current_version: str | None,
    full: KeyVersion | None = None,
) -> NewestNotUsable | None:
    """The newest listed version when it is newer than ``current_version`` and not usable, else None.

    ``full``: the newest version as a GET returned it (type, size, operations), when the caller read it.
    A cluster already on the newest version is not this warning's business (doctor's key checks are).
    """
    newest = newest_version(versions)
    if newest is None or (current_version is not None and newest.version == current_version.lower()):
        return None
    created = {v.version: v.created_on for v in versions}
    mine = created.get((current_version or "").lower())
    if mine is not None and newest.created_on is not None and newest.created_on <= mine:
        return None
    why = listed_unusable_reason(newest, now)
    if why is None and full is not None and full.version == newest.version:
        why = unusable_reason(full, now)
    return NewestNotUsable(newest, why) if why is not None else None


async def check_newest(
    keys: KeyVaultKeys, key: str, *, current_version: str | None, now: datetime | None = None
) -> NewestNotUsable | None:
    """`newest_not_usable` for ``key`` (``vault host/key name``), read from Key Vault; logged at WARNING.

    A read that fails is not this check's to report (the rotation itself reports it): None.
    """
    host, _, name = key.partition("/")
    url = KeyUrl(host=host, name=name, version=None)
    now = now or datetime.now(UTC)
    try:
        versions = await keys.list_versions(url)
        newest = newest_version(versions)
        # Only a version the listing does not already rule out is read (Key Vault refuses to GET a
        # disabled version: 403 "Operation get is not allowed on a disabled key").
        full = (
            await keys.get_version(newest.url)
            if newest is not None and listed_unusable_reason(newest, now) is None
            else None
        )
    except ServiceError:
        return None
    found = newest_not_usable(versions, now, current_version=current_version, full=full)
    if found is not None:
        log_newest_not_usable(found, key=key, context="rotate")
    return found


def log_newest_not_usable(found: NewestNotUsable, *, key: str, context: str) -> None:
    """``rotation.key_newest_not_usable`` at WARNING, the target URL in ``reason`` and ``target_key_url``."""
    logger.warning(
        "rotation.key_newest_not_usable",
        extra={
            "key": key,
            "to_version": found.version.version,
            "target_key_url": found.target_key_url,
            "reason": found.reason,
            "context": context,
        },
    )
