"""``rotation doctor``: will a cluster's customer-managed key keep working, and can the rotator rotate it.

Each check gives ``pass``, ``warn`` or ``fail`` with a one-line reason. `Doctor` gathers the facts (ARM and
Key Vault reads, each cached for the life of the `Doctor`, so a reconcile pass reads a vault, an identity,
a key once however many clusters share it) into `Facts`; `evaluate` turns facts into findings without I/O.

A check whose prerequisite failed (no cluster, no customer-managed key, no vault) is left out rather than
reported as a second failure. A read refused with 401/403 is a ``fail`` of the rotator's own access when
rotation needs it (reading the cluster, reading the key's versions) and a ``warn`` ("could not check")
when only the doctor needs it (vault, identity, RBAC, rotation policy). Transient errors are retried by
`rotation.retry.RetryPolicy` and, when retries run out, reported as ``warn`` "could not check: ...".
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from rotation.azure.arm_reads import ArmReads, IdentityInfo, RoleAssignmentInfo, RoleDefinitionInfo, VaultInfo
from rotation.azure.key_policy import KeyPolicies, RotationPolicy, parse_duration
from rotation.doctor.fixes import fix_for
from rotation.errors import NotFoundError, ServiceError
from rotation.ids import DEFAULT_VAULT_SUFFIXES, InvalidKeyUrl, KeyUrl, parse_cluster_id, parse_key_url
from rotation.key_rules import (
    EXPIRY_HORIZON,
    RSA_SIZES,
    RSA_TYPES,
    KeyVersion,
    candidates,
    listed_unusable_reason,
    newest_not_usable,
    newest_version,
    unusable_reason,
)
from rotation.retry import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from rotation.azure.arm import Cluster, ClustersClient
    from rotation.azure.keyvault import KeyVaultKeys
    from rotation.service.runtime import Runtime
    from rotation.settings import Settings

logger = logging.getLogger(__name__)

CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
WRAP = "microsoft.keyvault/vaults/keys/wrap/action"
UNWRAP = "microsoft.keyvault/vaults/keys/unwrap/action"
POLICY_REQUIRED = ("get", "wrapkey", "unwrapkey")
POLICY_DOCUMENTED = ("list",)  # docs/design.md, Azure behaviour 2, lists it too; its absence is a warning
_BAD_STATUS = frozenset({"inaccessible", "failed", "dropping"})
_DENIED = frozenset({401, 403})
_T = TypeVar("_T")

CHECKS = (
    "cluster.exists",
    "cluster.status",
    "cluster.cmk",
    "cluster.key_url",
    "vault.exists",
    "vault.soft_delete",
    "vault.purge_protection",
    "vault.region",
    "vault.network",
    "identity.exists",
    "identity.attached",
    "identity.region",
    "identity.key_access",
    "key.exists",
    "key.type",
    "key.enabled",
    "key.active",
    "key.operations",
    "key.expiry",
    "key.newest",
    "key.rotation_policy",
    "rotator.cluster_read",
    "rotator.key_read",
)


class Status(StrEnum):
    """The result of one check."""

    PASS = "pass"  # noqa: S105 - a check result, not a password
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    """One check's result and its one-line reason."""

    check: str
    status: Status
    reason: str
    fix: str | None = None  # the command that fixes a warn/fail (rotation.doctor.fixes), when one does

    def to_dict(self) -> dict[str, str]:
        """JSON-ready (``fix`` only when there is one)."""
        out = {"check": self.check, "status": self.status.value, "reason": self.reason}
        if self.fix is not None:
            out["fix"] = self.fix
        return out


@dataclass(frozen=True)
class ClusterReport:
    """Every finding for one cluster, in `CHECKS` order."""

    cluster_id: str
    findings: tuple[Finding, ...]

    @property
    def status(self) -> Status:
        """The worst result."""
        statuses = {f.status for f in self.findings}
        return next((s for s in (Status.FAIL, Status.WARN) if s in statuses), Status.PASS)

    def by_check(self) -> dict[str, Finding]:
        """The findings keyed by check name."""
        return {f.check: f for f in self.findings}

    def problems(self) -> list[Finding]:
        """The warn and fail findings."""
        return [f for f in self.findings if f.status is not Status.PASS]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "cluster_id": self.cluster_id,
            "status": self.status.value,
            "checks": [f.to_dict() for f in self.findings],
        }


@dataclass(frozen=True)
class DoctorReport:
    """The reports of every cluster checked."""

    clusters: tuple[ClusterReport, ...]
    # The mongoClusters api-version and write method a rotation would use (ROTATION_ARM_API_VERSION,
    # ROTATION_WRITE_METHOD): whether encryption is updatable depends on both (docs/deploy.md).
    api_version: str | None = None
    write_method: str | None = None

    @property
    def failed(self) -> bool:
        """Whether any check failed (the CLI exits 1)."""
        return any(c.status is Status.FAIL for c in self.clusters)

    def summary(self) -> dict[str, int]:
        """Counts of clusters and of findings by status."""
        findings = [f for c in self.clusters for f in c.findings]
        counts = {s.value: sum(1 for f in findings if f.status is s) for s in Status}
        return {"clusters": len(self.clusters), "checks": len(findings), **counts}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "status": (Status.FAIL if self.failed else _worst(self.clusters)).value,
            "clusters": [c.to_dict() for c in self.clusters],
            "summary": self.summary(),
            "arm": {"api_version": self.api_version, "write_method": self.write_method},
        }


def _worst(clusters: Iterable[ClusterReport]) -> Status:
    return Status.WARN if any(c.status is Status.WARN for c in clusters) else Status.PASS


def format_report(report: DoctorReport, *, problems_only: bool = False) -> list[str]:
    """The CLI table: a heading per cluster, then ``PASS/WARN/FAIL  check  reason`` per check.

    Under a warn or fail, ``fix: COMMAND`` when a command fixes it. ``problems_only``: only warn and fail
    lines, and only the clusters that have one (the summary still counts every check).
    """
    lines: list[str] = []
    if report.api_version is not None:
        lines.append(f"ARM api-version {report.api_version}, write method {report.write_method}")
    for cluster in report.clusters:
        findings = cluster.problems() if problems_only else list(cluster.findings)
        if problems_only and not findings:
            continue
        lines.append(f"{cluster.cluster_id}")
        for f in findings:
            lines.append(f"  {f.status.value.upper():<4}  {f.check:<22} {f.reason}")
            if f.fix is not None:
                lines.append(f"        fix: {f.fix}")
    s = report.summary()
    lines.append(
        f"{s['clusters']} cluster(s), {s['checks']} checks: "
        f"{s['pass']} pass, {s['warn']} warn, {s['fail']} fail"
    )
    return lines


# ---- facts -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Read(Generic[_T]):
    """The answer to one read: a value, or the error that stopped it (after retries)."""

    value: _T | None = None
    error: ServiceError | None = None

    @property
    def ok(self) -> bool:
        """Whether the read succeeded."""
        return self.error is None

    @property
    def not_found(self) -> bool:
        """Whether the thing read does not exist (404)."""
        return isinstance(self.error, NotFoundError)

    @property
    def denied(self) -> bool:
        """Whether the rotator lacks the permission (401/403)."""
        return self.error is not None and self.error.status in _DENIED


@dataclass(frozen=True)
class Grant:
    """A role assignment of the key identity, with what its role allows on keys (None: unknown)."""

    role: str
    scope: str
    condition: str | None
    wraps: bool | None


@dataclass
class Facts:
    """Everything the checks look at for one cluster; None where a prerequisite was missing."""

    cluster_id: str
    now: datetime
    cluster: Read[Cluster]
    allowed_suffixes: tuple[str, ...] = DEFAULT_VAULT_SUFFIXES
    vault_id: Read[str] | None = None
    vault: Read[VaultInfo] | None = None
    identity: Read[IdentityInfo] | None = None
    grants: Read[list[Grant]] | None = None
    versions: Read[list[KeyVersion]] | None = None
    key: Read[KeyVersion] | None = None
    newest_usable: KeyVersion | None = None
    latest: KeyVersion | None = None  # the newest listed version as a GET returned it, when it was read
    policy: Read[RotationPolicy] | None = None


# ---- the checks (pure) -------------------------------------------------------------------------------


def evaluate(facts: Facts) -> ClusterReport:
    """All findings for one cluster's facts."""
    out: list[Finding] = []

    def add(check: str, status: Status, reason: str) -> None:
        out.append(Finding(check, status, reason))

    cluster_read = facts.cluster
    if cluster_read.denied:
        add("rotator.cluster_read", Status.FAIL, f"the rotator cannot read the cluster: {_err(cluster_read)}")
        return ClusterReport(facts.cluster_id, tuple(out))
    if cluster_read.not_found:
        add("cluster.exists", Status.FAIL, "cluster not found in ARM")
        return ClusterReport(facts.cluster_id, tuple(out))
    if cluster_read.value is None:
        add("cluster.exists", Status.WARN, f"could not check: {_err(cluster_read)}")
        return ClusterReport(facts.cluster_id, tuple(out))
    cluster = cluster_read.value
    add("cluster.exists", Status.PASS, f"{cluster.name} found in {cluster.location}")
    out.append(_status(cluster))
    key = _cmk(cluster, facts.allowed_suffixes, out)
    if key is not None:
        out.append(_key_url(key, facts))
        out.extend(_vault(cluster, key, facts))
        out.extend(_identity(cluster, key, facts))
        out.extend(_key(key, facts))
    add("rotator.cluster_read", Status.PASS, "the rotator can read the cluster")
    if key is not None:
        out.append(_key_read(facts))
    order = {name: i for i, name in enumerate(CHECKS)}
    out.sort(key=lambda f: order.get(f.check, len(order)))
    fixed = [f if f.status is Status.PASS else replace(f, fix=fix_for(f.check, facts)) for f in out]
    return ClusterReport(facts.cluster_id, tuple(fixed))


def _err(read: Read[Any]) -> str:
    error = read.error
    return _one_line(str(error)) if error is not None else "no answer"


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:197] + "..."  # noqa: PLR2004


def _could_not(check: str, read: Read[Any], what: str) -> Finding:
    if read.denied:
        return Finding(check, Status.WARN, f"could not check: the rotator may not read {what} ({_err(read)})")
    return Finding(check, Status.WARN, f"could not check: {_err(read)}")


def _status(cluster: Cluster) -> Finding:
    status = cluster.cluster_status or "unknown"
    if status.lower() == "ready":
        return Finding("cluster.status", Status.PASS, "clusterStatus is Ready")
    if status.lower() in _BAD_STATUS:
        return Finding("cluster.status", Status.FAIL, f"clusterStatus is {status}")
    return Finding("cluster.status", Status.WARN, f"clusterStatus is {status}, not Ready")


def _cmk(cluster: Cluster, suffixes: tuple[str, ...], out: list[Finding]) -> KeyUrl | None:
    if not cluster.is_cmk or cluster.key_url is None:
        out.append(
            Finding("cluster.cmk", Status.FAIL, "cluster is not encrypted with a customer-managed key")
        )
        return None
    if cluster.key_identity is None:
        out.append(Finding("cluster.cmk", Status.FAIL, "customer-managed key has no key encryption identity"))
        return None
    identity = cluster.key_identity.rstrip("/").rsplit("/", 1)[-1]
    out.append(Finding("cluster.cmk", Status.PASS, f"customer-managed key through identity {identity}"))
    try:
        return parse_key_url(cluster.key_url, allowed_suffixes=suffixes)
    except InvalidKeyUrl as exc:
        out.append(Finding("cluster.key_url", Status.FAIL, _one_line(str(exc))))
        return None


def _key_url(key: KeyUrl, facts: Facts) -> Finding:
    where = f"{key.host}/{key.name}"
    if key.versionless:
        return Finding("cluster.key_url", Status.PASS, f"versionless {where}: Azure follows new versions")
    newest = facts.newest_usable
    versions = facts.versions.value if facts.versions is not None else None
    if newest is not None and versions is not None and newest.version != key.version:
        created = {v.version: v.created_on for v in versions}
        mine, theirs = created.get(key.version or ""), newest.created_on
        if mine is None or (theirs is not None and theirs > mine):
            return Finding(
                "cluster.key_url",
                Status.WARN,
                f"versioned {where}/{(key.version or '')[:8]}; newer usable version {newest.version[:8]} "
                "exists (reconcile queues the rotation)",
            )
    return Finding("cluster.key_url", Status.PASS, f"versioned {where}/{(key.version or '')[:8]}")


def _same_region(a: str, b: str) -> bool:
    return a.lower().replace(" ", "") == b.lower().replace(" ", "")


def _vault(cluster: Cluster, key: KeyUrl, facts: Facts) -> list[Finding]:  # noqa: PLR0911
    if key.host.endswith(".managedhsm.azure.net"):
        return [Finding("vault.exists", Status.WARN, "Managed HSM: vault checks are not supported")]
    located = facts.vault_id
    if located is None:
        return []
    if not located.ok:
        return [_could_not("vault.exists", located, "Resource Graph")]
    if located.value is None:
        kv_gone = facts.versions is not None and facts.versions.not_found and _vault_missing(facts.versions)
        if kv_gone:
            return [Finding("vault.exists", Status.FAIL, f"vault {key.vault_name} does not exist")]
        return [
            Finding(
                "vault.exists",
                Status.WARN,
                f"vault {key.vault_name} answers but is not visible in ARM to the rotator "
                "(grant it Key Vault Reader on the vault)",
            )
        ]
    read = facts.vault
    if read is None or read.value is None:
        if read is not None and read.not_found:
            return [Finding("vault.exists", Status.FAIL, f"vault {located.value} not found in ARM")]
        names = (
            "vault.exists",
            "vault.soft_delete",
            "vault.purge_protection",
            "vault.region",
            "vault.network",
        )
        return [_could_not(n, read or Read(), "the vault") for n in names]
    vault = read.value
    out = [Finding("vault.exists", Status.PASS, f"vault {vault.name} in {vault.location}")]
    out.append(
        Finding("vault.soft_delete", Status.PASS, "soft delete is on")
        if vault.soft_delete
        else Finding("vault.soft_delete", Status.FAIL, "soft delete is off")
    )
    out.append(
        Finding("vault.purge_protection", Status.PASS, "purge protection is on")
        if vault.purge_protection
        else Finding(
            "vault.purge_protection", Status.FAIL, "purge protection is off (the service requires it)"
        )
    )
    out.append(
        Finding("vault.region", Status.PASS, f"same region as the cluster ({vault.location})")
        if _same_region(vault.location, cluster.location)
        else Finding(
            "vault.region", Status.FAIL, f"vault is in {vault.location}, the cluster in {cluster.location}"
        )
    )
    out.append(_network(vault))
    return out


def _vault_missing(read: Read[Any]) -> bool:
    code = (read.error.code or "") if read.error is not None else ""
    return code.lower() == "vaultnotfound"


def _network(vault: VaultInfo) -> Finding:
    public = vault.public_network_access.lower() != "disabled"
    trusted = "azureservices" in vault.bypass.lower()
    if public and vault.default_action.lower() == "allow":
        return Finding(
            "vault.network", Status.PASS, "public network access on; the firewall allows all networks"
        )
    if trusted:
        return Finding(
            "vault.network", Status.PASS, "firewall on; the trusted-services bypass lets the service in"
        )
    if public and (vault.ip_rules or vault.virtual_network_rules):
        return Finding(
            "vault.network",
            Status.WARN,
            f"firewall allows only {vault.ip_rules} IP and {vault.virtual_network_rules} network rule(s) and "
            "no trusted-services bypass: the service gets in only if its addresses are listed",
        )
    why = "public network access is disabled" if not public else "the firewall denies all networks"
    return Finding("vault.network", Status.FAIL, f"{why} and the trusted-services bypass is off")


def _identity(cluster: Cluster, key: KeyUrl, facts: Facts) -> list[Finding]:
    key_identity = cluster.key_identity or ""
    name = key_identity.rstrip("/").rsplit("/", 1)[-1]
    out: list[Finding] = []
    read = facts.identity
    identity: IdentityInfo | None = None
    if read is not None:
        if read.not_found:
            out.append(Finding("identity.exists", Status.FAIL, f"identity {name} does not exist"))
        elif read.value is None:
            out.append(_could_not("identity.exists", read, "the identity"))
        else:
            identity = read.value
            out.append(Finding("identity.exists", Status.PASS, f"identity {name} in {identity.location}"))
    attached = key_identity.lower() in {i.lower() for i in cluster.identity_ids}
    out.append(
        Finding("identity.attached", Status.PASS, f"{name} is attached to the cluster")
        if attached
        else Finding("identity.attached", Status.FAIL, f"{name} is not among the cluster's identities")
    )
    if identity is None:
        return out
    out.append(
        Finding("identity.region", Status.PASS, f"same region as the cluster ({identity.location})")
        if _same_region(identity.location, cluster.location)
        else Finding(
            "identity.region",
            Status.FAIL,
            f"identity is in {identity.location}, the cluster in {cluster.location}",
        )
    )
    access = _key_access(identity, key, facts)
    if access is not None:
        out.append(access)
    return out


def _key_access(  # noqa: PLR0911, C901 - one return per verdict
    identity: IdentityInfo, key: KeyUrl, facts: Facts
) -> Finding | None:
    check = "identity.key_access"
    vault_read = facts.vault
    if vault_read is None or vault_read.value is None:
        if key.host.endswith(".managedhsm.azure.net"):
            return None
        return Finding(check, Status.WARN, "could not check: the vault's ARM properties are unknown")
    vault = vault_read.value
    principal = identity.principal_id.lower()
    policy = next((p for p in vault.access_policies if p.object_id == principal), None)
    if not vault.rbac_authorization:
        if policy is None:
            return Finding(check, Status.FAIL, "vault uses access policies and none is for the identity")
        perms = set(policy.key_permissions)
        missing = [p for p in POLICY_REQUIRED if p not in perms and "all" not in perms]
        if missing:
            return Finding(check, Status.FAIL, f"the identity's access policy lacks {', '.join(missing)}")
        absent = [p for p in POLICY_DOCUMENTED if p not in perms and "all" not in perms]
        if absent:
            return Finding(
                check,
                Status.WARN,
                f"access policy grants get, wrapKey, unwrapKey but not {', '.join(absent)} (documented)",
            )
        return Finding(check, Status.PASS, "access policy grants get, wrapKey and unwrapKey")
    grants = facts.grants
    if grants is None or grants.value is None:
        return _could_not(check, grants or Read(), "role assignments")
    covering = [g for g in grants.value if _covers(g.scope, vault.id, key.name)]
    good = [g for g in covering if g.wraps]
    if any(g.condition is None for g in good):
        best = next(g for g in good if g.condition is None)
        return Finding(check, Status.PASS, f"holds {best.role} on {_scope_name(best.scope, vault.id)}")
    if good:
        return Finding(
            check, Status.WARN, f"holds {good[0].role} only under a condition the doctor cannot evaluate"
        )
    if any(g.wraps is None for g in covering):
        return Finding(check, Status.WARN, "could not check: a role definition could not be read")
    if policy is not None:
        return Finding(
            check,
            Status.FAIL,
            "vault uses Azure RBAC, where the identity's access policy has no effect; "
            "no role grants wrap/unwrap",
        )
    return Finding(check, Status.FAIL, f"no role with wrapKey and unwrapKey on the vault or key {key.name}")


def _covers(scope: str, vault_id: str, key_name: str) -> bool:
    s = scope.rstrip("/").lower()
    v = vault_id.rstrip("/").lower()
    return s in {"", v, f"{v}/keys/{key_name.lower()}"} or v.startswith(s + "/")


def _scope_name(scope: str, vault_id: str) -> str:
    s = scope.rstrip("/").lower()
    v = vault_id.rstrip("/").lower()
    if s == v:
        return "the vault"
    if s.startswith(v + "/keys/"):
        return "the key"
    return f"{scope or '/'} (above the vault)"


def role_wraps(definition: RoleDefinitionInfo) -> bool:
    """Whether a role's data actions allow both wrapKey and unwrapKey."""

    def allowed(action: str) -> bool:
        yes = any(fnmatch.fnmatchcase(action, p.lower()) for p in definition.data_actions)
        no = any(fnmatch.fnmatchcase(action, p.lower()) for p in definition.not_data_actions)
        return yes and not no

    return allowed(WRAP) and allowed(UNWRAP)


def _key(key: KeyUrl, facts: Facts) -> list[Finding]:
    read = facts.key
    if read is None or read.denied:
        return []
    if read.not_found:
        what = f"version {key.version[:8]} of key {key.name}" if key.version else f"key {key.name}"
        if facts.versions is not None and _vault_missing(facts.versions):
            return []
        return [Finding("key.exists", Status.FAIL, f"{what} does not exist")]
    if read.value is None:
        return [_could_not("key.exists", read, "the key")]
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
    missing = [op for op in ("wrapKey", "unwrapKey") if op not in version.operations]
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
        return _could_not(check, read, "the rotation policy")
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


def _key_read(facts: Facts) -> Finding:
    check = "rotator.key_read"
    reads = [r for r in (facts.versions, facts.key) if r is not None]
    denied = next((r for r in reads if r.denied), None)
    if denied is not None:
        return Finding(check, Status.FAIL, f"the rotator cannot read the key's versions: {_err(denied)}")
    listing = facts.versions or Read()
    if listing.not_found:
        return Finding(check, Status.WARN, "could not check: the key or its vault was not found")
    failed = next((r for r in reads if not r.ok and not r.not_found), None)
    if failed is not None:
        return Finding(check, Status.WARN, f"could not check: {_err(failed)}")
    count = len(listing.value or [])
    return Finding(check, Status.PASS, f"the rotator can list the key's versions ({count}) and read them")


# ---- gathering (I/O) ---------------------------------------------------------------------------------


@dataclass
class Doctor:
    """Reads the facts of clusters and evaluates them; reads are cached for the life of this object."""

    clusters: ClustersClient
    keys: KeyVaultKeys
    arm: ArmReads
    policies: KeyPolicies
    settings: Settings
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    owns: bool = False
    _cache: dict[tuple[str, ...], asyncio.Task[Any]] = field(default_factory=dict)

    @classmethod
    def for_runtime(cls, runtime: Runtime) -> Doctor:
        """A doctor on the runtime's clients, with its own ARM-reads and rotation-policy clients."""
        settings = runtime.settings
        return cls(
            clusters=runtime.clusters,
            keys=runtime.keys,
            arm=ArmReads(settings.arm_endpoint, runtime.credential, transport=runtime.http.transport()),
            policies=KeyPolicies(runtime.keys),
            settings=settings,
            owns=True,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the clients this doctor made (not the runtime's)."""
        for task in self._cache.values():
            task.cancel()
        self._cache.clear()
        if self.owns:
            await self.arm.close()
            await self.policies.close()

    async def check_many(self, cluster_ids: Iterable[str]) -> DoctorReport:
        """Reports for several clusters (concurrently, bounded by ROTATION_MAX_CONCURRENCY)."""
        gate = asyncio.Semaphore(self.settings.max_concurrency)

        async def one(cluster_id: str) -> ClusterReport:
            async with gate:
                return await self.check(cluster_id)

        return DoctorReport(
            tuple(await asyncio.gather(*(one(c) for c in cluster_ids))),
            api_version=self.settings.arm_api_version,
            write_method=self.settings.write_method,
        )

    async def check(self, cluster_id: str) -> ClusterReport:
        """Every check for one cluster."""
        facts = await self.facts(cluster_id)
        return evaluate(facts)

    async def facts(self, cluster_id: str) -> Facts:
        """Read what the checks need for one cluster (skipping reads whose prerequisite failed)."""
        parsed = parse_cluster_id(cluster_id)
        cluster = await self._read(("cluster", parsed.normalized), lambda: self.clusters.get(parsed))
        facts = Facts(
            cluster_id=str(parsed),
            now=self.now(),
            cluster=cluster,
            allowed_suffixes=self.settings.allowed_vault_suffixes,
        )
        value = cluster.value
        if value is None or value.key_url is None or value.key_identity is None:
            return facts
        try:
            key = parse_key_url(value.key_url, allowed_suffixes=self.settings.allowed_vault_suffixes)
        except InvalidKeyUrl:
            return facts
        await asyncio.gather(self._key_facts(facts, key), self._identity_facts(facts, value.key_identity))
        await self._vault_facts(facts, key)
        return facts

    async def _key_facts(self, facts: Facts, key: KeyUrl) -> None:
        ident = f"{key.host}/{key.name.lower()}"
        versions, version, policy = await asyncio.gather(
            self._read(("versions", ident), lambda: self.keys.list_versions(key)),
            self._read(("key", str(key).lower()), lambda: self.keys.get_version(key)),
            self._read(("policy", ident), lambda: self.policies.get(key)),
        )
        facts.versions, facts.key, facts.policy = versions, version, policy
        if versions.value and key.version:
            facts.newest_usable = await self._newest_usable(versions.value, facts.now)
            latest = newest_version(versions.value)
            if latest is not None and listed_unusable_reason(latest, facts.now) is None:
                # Usually already read as the first candidate above: the cache answers.
                url = latest.url
                read: Read[KeyVersion] = await self._read(
                    ("key", str(url).lower()), functools.partial(self.keys.get_version, url)
                )
                facts.latest = read.value

    async def _newest_usable(self, versions: list[KeyVersion], now: datetime) -> KeyVersion | None:
        """As `KeyVaultKeys.newest_usable`, over the listing already read and the cached GETs."""
        for listed in candidates(versions, now):
            url = listed.url
            full: Read[KeyVersion] = await self._read(
                ("key", str(url).lower()), functools.partial(self.keys.get_version, url)
            )
            if full.value is None:
                return None
            if unusable_reason(full.value, now) is None:
                return full.value
        return None

    async def _identity_facts(self, facts: Facts, identity_id: str) -> None:
        facts.identity = await self._read(
            ("identity", identity_id.lower()), lambda: self.arm.get_identity(identity_id)
        )

    async def _vault_facts(self, facts: Facts, key: KeyUrl) -> None:
        if key.host.endswith(".managedhsm.azure.net"):
            return
        name = key.vault_name
        facts.vault_id = await self._read(("vault-id", name.lower()), lambda: self.arm.find_vault(name))
        vault_id = facts.vault_id.value
        if vault_id is None:
            return
        facts.vault = await self._read(("vault", vault_id.lower()), lambda: self.arm.get_vault(vault_id))
        identity = facts.identity.value if facts.identity is not None else None
        if facts.vault.value is None or identity is None or not facts.vault.value.rbac_authorization:
            return
        principal = identity.principal_id
        facts.grants = await self._read(
            ("grants", vault_id.lower(), principal), lambda: self._grants(vault_id, principal)
        )

    async def _grants(self, vault_id: str, principal_id: str) -> list[Grant]:
        assignments = await self.arm.role_assignments(vault_id, principal_id)
        return [await self._grant(a) for a in assignments]

    async def _grant(self, assignment: RoleAssignmentInfo) -> Grant:
        guid = assignment.role_definition_id.rstrip("/").rsplit("/", 1)[-1].lower()
        if guid == CRYPTO_SERVICE_ENCRYPTION_USER:
            return Grant(
                "Key Vault Crypto Service Encryption User", assignment.scope, assignment.condition, wraps=True
            )
        definition = await self._read(
            ("role", guid), lambda: self.arm.role_definition(assignment.role_definition_id)
        )
        if definition.value is None:
            return Grant(guid, assignment.scope, assignment.condition, None)
        return Grant(
            definition.value.role_name, assignment.scope, assignment.condition, role_wraps(definition.value)
        )

    async def _read(self, cache_key: tuple[str, ...], func: Callable[[], Awaitable[Any]]) -> Read[Any]:
        """One read, retried on transient errors, shared by every caller with the same ``cache_key``."""
        task = self._cache.get(cache_key)
        if task is None:
            task = asyncio.ensure_future(self._retried(func))
            self._cache[cache_key] = task
        result: Read[Any] = await asyncio.shield(task)
        return result

    async def _retried(self, func: Callable[[], Awaitable[Any]]) -> Read[Any]:
        policy = RetryPolicy("doctor-read", self.settings.retry)
        try:
            value, _ = await policy.call(func)
        except ServiceError as exc:
            return Read(error=exc)
        return Read(value=value)


def log_findings(report: ClusterReport, *, context: str) -> None:
    """Log each warn (WARNING) and fail (ERROR) as ``rotation.doctor_finding``."""
    for finding in report.problems():
        logger.log(
            logging.ERROR if finding.status is Status.FAIL else logging.WARNING,
            "rotation.doctor_finding",
            extra={
                "cluster_id": report.cluster_id,
                "check": finding.check,
                "status": finding.status.value,
                "reason": finding.reason,
                "fix": finding.fix,
                "context": context,
            },
        )
