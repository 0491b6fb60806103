"""Rule 3 of docs/design.md: which key version a cluster may be given, and which one is newest and usable.

Pure, tested without I/O: `unusable_reason` is the one predicate of key usability; a version listing is
first filtered by the part of it a listing can answer (`listed_unusable_reason`, `candidates`), and
`pick_newest_usable` reads the candidates newest first until one passes. The Key Vault adapter
(`rotation.azure.keyvault`) only reads versions into `KeyVersion` values.

Also here: a key's newest version that exists but is not usable, warned by doctor, reconcile and
``rotate --dry-run``. Rule 3 keeps clusters off such a version, and reconcile's target is the newest
*usable* version, so a disabled, not-yet-active or expired newest version (or one of the wrong type, or
without wrap/unwrap) would otherwise leave every cluster on the older version in silence: no rotation, no
error, just a key that stops moving forward. The reason names the version's URL, which is what on-call
looks up (``az keyvault key show --id URL``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from rotation.errors import ServiceError
from rotation.ids import KeyUrl

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

RSA_TYPES = frozenset({"RSA", "RSA-HSM"})
RSA_SIZES = frozenset({2048, 3072, 4096})
REQUIRED_OPS = ("wrapKey", "unwrapKey")
# A key version expiring sooner than this is warned about (doctor, reconcile): time to create the next one.
EXPIRY_HORIZON = timedelta(days=30)
_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class KeyVersion:
    """The facts of one key version that rule 3 looks at."""

    url: KeyUrl
    enabled: bool
    created_on: datetime | None
    not_before: datetime | None = None
    expires_on: datetime | None = None
    key_type: str | None = None
    size: int | None = None
    operations: tuple[str, ...] = ()
    # Set by `pick_newest_usable`: another candidate was created in the same second (Key Vault's ``created``
    # is whole seconds), or this one has no creation time, so which of them is newest is not known (rule 2).
    ambiguous: bool = False

    @property
    def version(self) -> str:
        """The 32-hex version id."""
        return self.url.version or ""


class VersionReads(Protocol):
    """The Key Vault reads of a key's versions (`rotation.azure.keyvault.KeyVaultKeys`)."""

    async def list_versions(self, key: KeyUrl) -> list[KeyVersion]: ...  # noqa: D102
    async def get_version(self, key: KeyUrl) -> KeyVersion: ...  # noqa: D102


def listed_unusable_reason(version: KeyVersion, now: datetime) -> str | None:
    """Rule 3 on what a version listing carries (enabled, nbf, exp); type, size and operations need a GET."""
    if not version.enabled:
        return "key version is disabled"
    if version.not_before is not None and version.not_before > now:
        return f"key version is not active until {version.not_before.isoformat()}"
    if version.expires_on is not None and version.expires_on <= now:
        return f"key version expired at {version.expires_on.isoformat()}"
    return None


def unusable_reason(key: KeyVersion, now: datetime) -> str | None:
    """Rule 3: why ``key`` must not be given to a cluster, or None when it is usable."""
    reason = listed_unusable_reason(key, now)
    if reason is not None:
        return reason
    if key.key_type not in RSA_TYPES:
        reason = f"key type {key.key_type} is not RSA or RSA-HSM"
    elif key.size not in RSA_SIZES:
        reason = f"key size {key.size} is not 2048, 3072 or 4096 bits"
    else:
        missing = [op for op in REQUIRED_OPS if op not in key.operations]
        if missing:
            reason = f"key version does not allow {' and '.join(missing)}"
    return reason


def candidates(versions: list[KeyVersion], now: datetime) -> list[KeyVersion]:
    """Listed versions whose listed attributes (enabled, nbf, exp) do not already fail rule 3, newest first.

    A listing carries no key type, size or operations: each candidate still needs its GET and
    `unusable_reason` before it is used.
    """
    alive = [v for v in versions if listed_unusable_reason(v, now) is None]
    return sorted(alive, key=lambda v: v.created_on or _EPOCH, reverse=True)


def same_second(chosen: KeyVersion, listed: list[KeyVersion], now: datetime) -> bool:
    """Whether the order of ``chosen`` among the listed candidates is unknown (rule 2).

    True when it has no creation time, or another candidate (by its listed attributes) was created in the
    same second: ``created`` is whole seconds, and an equal value says nothing about which is newer.
    """
    if chosen.created_on is None:
        return True
    return any(
        v.version != chosen.version and v.created_on == chosen.created_on for v in candidates(listed, now)
    )


async def pick_newest_usable(
    versions: list[KeyVersion],
    read: Callable[[KeyUrl], Awaitable[KeyVersion | None]],
    now: datetime,
) -> KeyVersion | None:
    """The most recently created version of a listing that passes rule 3, or None.

    One ``read`` (a GET) per candidate, newest first, skipping versions whose listed attributes already rule
    them out; usually one read in all. A read answering None (the version could not be read) ends the pick
    with None: which version is the newest usable one is then not known. The version picked is marked
    ``ambiguous`` when its order among the candidates is not known (`same_second`).
    """
    for listed in candidates(versions, now):
        full = await read(listed.url)
        if full is None:
            return None
        if unusable_reason(full, now) is None:
            return replace(full, ambiguous=True) if same_second(listed, versions, now) else full
    return None


# ---- the newest version, when it is not usable ----------------------------------------------------------


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
    keys: VersionReads, key: str, *, current_version: str | None, now: datetime | None = None
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
