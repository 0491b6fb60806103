"""The doctor's checks of the key version a cluster uses: ``key.*`` and ``rotator.key_read``.

Pure: they judge `rotation.doctor.facts.Facts` (the version as Key Vault returned it, the key's versions,
its rotation policy) against rule 3 of docs/design.md and the key's dates. Called by
`rotation.doctor.checks.evaluate`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from rotation.azure.key_policy import parse_duration
from rotation.doctor.facts import Read
from rotation.doctor.report import Finding, Status, could_not, read_error
from rotation.key_rules import (
    EXPIRY_HORIZON,
    REQUIRED_OPS,
    RSA_SIZES,
    RSA_TYPES,
    newest_not_usable,
    newest_version,
)

if TYPE_CHECKING:
    from rotation.azure.key_policy import RotationPolicy
    from rotation.doctor.facts import Facts
    from rotation.ids import KeyUrl
    from rotation.key_rules import KeyVersion


def key_findings(key: KeyUrl, facts: Facts) -> list[Finding]:
    """The ``key.*`` findings of the version the cluster uses (none when the key could not be read)."""
    read = facts.key
    if read is None or read.denied:
        return []
    if read.not_found:
        what = f"version {key.version[:8]} of key {key.name}" if key.version else f"key {key.name}"
        if facts.versions is not None and facts.versions.vault_missing:
            return []
        return [Finding("key.exists", Status.FAIL, f"{what} does not exist")]
    if read.value is None:
        return [could_not("key.exists", read, "the key")]
    version = read.value
    now = facts.now
    label = "in use" if key.version else "latest, followed by the versionless URL"
    out = [Finding("key.exists", Status.PASS, f"version {version.version[:8]} ({label})")]
    out.append(
        Finding("key.type", Status.PASS, f"{version.key_type} {version.size}")
        if version.key_type in RSA_TYPES and version.size in RSA_SIZES
        else Finding(
            "key.type",
            Status.FAIL,
            f"{version.key_type} {version.size}: must be RSA or RSA-HSM of 2048, 3072 or 4096 bits",
        )
    )
    out.append(
        Finding("key.enabled", Status.PASS, "enabled")
        if version.enabled
        else Finding("key.enabled", Status.FAIL, "disabled: the cluster becomes Inaccessible")
    )
    if version.not_before is not None and version.not_before > now:
        out.append(Finding("key.active", Status.FAIL, f"not active until {_day(version.not_before)}"))
    else:
        since = f"active since {_day(version.not_before)}" if version.not_before else "no activation date"
        out.append(Finding("key.active", Status.PASS, since))
    missing = [op for op in REQUIRED_OPS if op not in version.operations]
    out.append(
        Finding("key.operations", Status.FAIL, f"does not allow {' and '.join(missing)}")
        if missing
        else Finding("key.operations", Status.PASS, "wrapKey and unwrapKey allowed")
    )
    out.append(_expiry(version, now))
    newest = _newest(key, facts)
    if newest is not None:
        out.append(newest)
    out.append(_rotation_policy(facts))
    return out


def _newest(key: KeyUrl, facts: Facts) -> Finding | None:
    """A newest version that exists but is not usable (a warning; the cluster stays where it is)."""
    versions = facts.versions.value if facts.versions is not None else None
    if not versions or not key.version:
        return None
    problem = newest_not_usable(versions, facts.now, current_version=key.version, full=facts.latest)
    if problem is not None:
        return Finding("key.newest", Status.WARN, problem.reason)
    latest = newest_version(versions)
    if latest is None or latest.version == key.version:
        return Finding("key.newest", Status.PASS, "the newest version is the one in use")
    return Finding("key.newest", Status.PASS, f"the newest version {latest.version[:8]} is usable")


def _day(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "-"


def _expiry(version: KeyVersion, now: datetime) -> Finding:
    exp = version.expires_on
    if exp is None:
        return Finding("key.expiry", Status.PASS, "no expiry date")
    left = exp - now
    if left <= timedelta(0):
        return Finding("key.expiry", Status.FAIL, f"expired {_day(exp)}")
    if left < EXPIRY_HORIZON:
        return Finding("key.expiry", Status.WARN, f"expires {_day(exp)}, in {left.days} day(s)")
    return Finding("key.expiry", Status.PASS, f"expires {_day(exp)}, in {left.days} days")


def _rotation_policy(facts: Facts) -> Finding:  # noqa: PLR0911, C901 - one return per verdict
    check = "key.rotation_policy"
    read = facts.policy
    if read is None:
        return Finding(check, Status.WARN, "could not check: no policy read")
    if not read.ok:
        return could_not(check, read, "the rotation policy")
    policy = read.value
    if policy is None:
        return Finding(
            check, Status.WARN, "no rotation policy: new versions only when someone rotates by hand"
        )
    if not policy.rotate:
        return Finding(check, Status.WARN, "rotation policy only notifies: no automatic rotation")
    versions = facts.versions.value if facts.versions is not None else None
    latest = newest_version(versions or [])
    if latest is None or latest.created_on is None:
        return Finding(check, Status.PASS, f"rotates ({_trigger(policy)}); next rotation unknown")
    candidates: list[datetime] = []
    for action in policy.rotate:
        after = parse_duration(action.time_after_create or "")
        before = parse_duration(action.time_before_expiry or "")
        if after is not None:
            candidates.append(latest.created_on + after)
        if before is not None and latest.expires_on is not None:
            candidates.append(latest.expires_on - before)
    if not candidates:
        return Finding(
            check,
            Status.WARN,
            f"rotates {_trigger(policy)}, but the newest version has no expiry: it never rotates",
        )
    upcoming = min(candidates)
    if latest.expires_on is not None and upcoming >= latest.expires_on:
        return Finding(
            check,
            Status.FAIL,
            f"next rotation {_day(upcoming)} comes after the newest version expires "
            f"{_day(latest.expires_on)}",
        )
    when = "due now" if upcoming <= facts.now else f"next rotation {_day(upcoming)}"
    return Finding(check, Status.PASS, f"rotates {_trigger(policy)}; {when}")


def _trigger(policy: RotationPolicy) -> str:
    parts = []
    for action in policy.rotate:
        if action.time_after_create:
            parts.append(f"{action.time_after_create} after creation")
        if action.time_before_expiry:
            parts.append(f"{action.time_before_expiry} before expiry")
    return " or ".join(parts) or "with no trigger"


def key_read(facts: Facts) -> Finding:
    """``rotator.key_read``: whether the rotator itself may list and read the key's versions."""
    check = "rotator.key_read"
    reads = [r for r in (facts.versions, facts.key) if r is not None]
    denied = next((r for r in reads if r.denied), None)
    if denied is not None:
        return Finding(
            check, Status.FAIL, f"the rotator cannot read the key's versions: {read_error(denied)}"
        )
    listing = facts.versions or Read()
    if listing.not_found:
        return Finding(check, Status.WARN, "could not check: the key or its vault was not found")
    failed = next((r for r in reads if not r.ok and not r.not_found), None)
    if failed is not None:
        return Finding(check, Status.WARN, f"could not check: {read_error(failed)}")
    count = len(listing.value or [])
    return Finding(check, Status.PASS, f"the rotator can list the key's versions ({count}) and read them")
