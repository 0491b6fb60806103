"""``rotation doctor``: will a cluster's customer-managed key keep working, and can the rotator rotate it.

Each check gives ``pass``, ``warn`` or ``fail`` with a one-line reason (`rotation.doctor.report`). `Doctor`
reads the facts (`rotation.doctor.facts`) and `evaluate` turns them into findings without I/O: the cluster,
vault and identity checks here, the key's in `rotation.doctor.key_checks`, and under each warn or fail the
command that fixes it (`rotation.doctor.fixes`).

A check whose prerequisite failed (no cluster, no customer-managed key, no vault) is left out rather than
reported as a second failure. A read refused with 401/403 is a ``fail`` of the rotator's own access when
rotation needs it (reading the cluster, reading the key's versions) and a ``warn`` ("could not check")
when only the doctor needs it (vault, identity, RBAC, rotation policy). Transient errors are retried by
`rotation.retry.RetryPolicy` and, when retries run out, reported as ``warn`` "could not check: ...".
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Self

from rotation.doctor.facts import FactReader, Read
from rotation.doctor.fixes import fix_for
from rotation.doctor.key_checks import key_findings, key_read
from rotation.doctor.report import (
    ClusterDiagnosis,
    DoctorReport,
    Finding,
    Status,
    could_not,
    one_line,
    read_error,
)
from rotation.ids import InvalidKeyUrl, KeyUrl, parse_key_url

if TYPE_CHECKING:
    from collections.abc import Iterable

    from rotation.azure.arm import Cluster
    from rotation.azure.arm_reads import IdentityInfo, VaultInfo
    from rotation.doctor.facts import Facts
    from rotation.service.runtime import Runtime

POLICY_REQUIRED = ("get", "wrapkey", "unwrapkey")
POLICY_DOCUMENTED = ("list",)  # docs/design.md, Azure behaviour 2, lists it too; its absence is a warning
_BAD_STATUS = frozenset({"inaccessible", "failed", "dropping"})

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


def evaluate(facts: Facts) -> ClusterDiagnosis:
    """All findings for one cluster's facts."""
    out: list[Finding] = []

    def add(check: str, status: Status, reason: str) -> None:
        out.append(Finding(check, status, reason))

    cluster_read = facts.cluster
    if cluster_read.denied:
        add(
            "rotator.cluster_read",
            Status.FAIL,
            f"the rotator cannot read the cluster: {read_error(cluster_read)}",
        )
        return ClusterDiagnosis(facts.cluster_id, tuple(out))
    if cluster_read.not_found:
        add("cluster.exists", Status.FAIL, "cluster not found in ARM")
        return ClusterDiagnosis(facts.cluster_id, tuple(out))
    if cluster_read.value is None:
        add("cluster.exists", Status.WARN, f"could not check: {read_error(cluster_read)}")
        return ClusterDiagnosis(facts.cluster_id, tuple(out))
    cluster = cluster_read.value
    add("cluster.exists", Status.PASS, f"{cluster.name} found in {cluster.location}")
    out.append(_status(cluster))
    key = _cmk(cluster, facts.allowed_suffixes, out)
    if key is not None:
        out.append(_key_url(key, facts))
        out.extend(_vault(cluster, key, facts))
        out.extend(_identity(cluster, key, facts))
        out.extend(key_findings(key, facts))
    add("rotator.cluster_read", Status.PASS, "the rotator can read the cluster")
    if key is not None:
        out.append(key_read(facts))
    order = {name: i for i, name in enumerate(CHECKS)}
    out.sort(key=lambda f: order.get(f.check, len(order)))
    fixed = [f if f.status is Status.PASS else replace(f, fix=fix_for(f.check, facts)) for f in out]
    return ClusterDiagnosis(facts.cluster_id, tuple(fixed))


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
        out.append(Finding("cluster.key_url", Status.FAIL, one_line(str(exc))))
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
        return [could_not("vault.exists", located, "Resource Graph")]
    if located.value is None:
        kv_gone = facts.versions is not None and facts.versions.not_found and facts.versions.vault_missing
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
        return [could_not(n, read or Read(), "the vault") for n in names]
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
            out.append(could_not("identity.exists", read, "the identity"))
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
        return could_not(check, grants or Read(), "role assignments")
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


class Doctor:
    """Reads the facts of clusters (`FactReader`, each read cached for the doctor's life) and judges them."""

    def __init__(self, reader: FactReader) -> None:
        self.reader = reader

    @classmethod
    def for_runtime(cls, runtime: Runtime) -> Doctor:
        """A doctor on the runtime's clients, with its own ARM-reads and rotation-policy clients."""
        return cls(FactReader.for_runtime(runtime))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the clients this doctor made (not the runtime's)."""
        await self.reader.close()

    async def check_many(self, cluster_ids: Iterable[str]) -> DoctorReport:
        """Reports for several clusters (concurrently, bounded by ROTATION_MAX_CONCURRENCY)."""
        settings = self.reader.settings
        gate = asyncio.Semaphore(settings.max_concurrency)

        async def one(cluster_id: str) -> ClusterDiagnosis:
            async with gate:
                return await self.check(cluster_id)

        return DoctorReport(
            tuple(await asyncio.gather(*(one(c) for c in cluster_ids))),
            api_version=settings.arm_api_version,
            write_method=settings.write_method,
        )

    async def check(self, cluster_id: str) -> ClusterDiagnosis:
        """Every check for one cluster."""
        facts = await self.reader.facts(cluster_id)
        return evaluate(facts)
