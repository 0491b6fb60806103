"""The facts the doctor's checks judge, and their reading from ARM and Key Vault.

`FactReader` gathers one cluster's `Facts` (ARM and Key Vault reads, each cached for the life of the reader,
so a reconcile pass reads a vault, an identity, a key once however many clusters share it), skipping the
reads whose prerequisite failed. Each read is a `Read`: its value, or the error that stopped it after
`rotation.retry.RetryPolicy` retried the transient ones. The checks (`rotation.doctor.checks`) judge the
facts without I/O.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rotation.azure.arm_reads import ArmReads, IdentityInfo, RoleAssignmentInfo, RoleDefinitionInfo, VaultInfo
from rotation.azure.key_policy import KeyPolicies, RotationPolicy
from rotation.errors import NotFoundError, ServiceError
from rotation.ids import DEFAULT_VAULT_SUFFIXES, InvalidKeyUrl, KeyUrl, parse_cluster_id, parse_key_url
from rotation.key_rules import KeyVersion, listed_unusable_reason, newest_version, pick_newest_usable
from rotation.retry import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from rotation.azure.arm import Cluster, ClustersClient
    from rotation.azure.keyvault import KeyVaultKeys
    from rotation.service.runtime import Runtime
    from rotation.settings import Settings

CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
WRAP = "microsoft.keyvault/vaults/keys/wrap/action"
UNWRAP = "microsoft.keyvault/vaults/keys/unwrap/action"
_DENIED = frozenset({401, 403})
_T = TypeVar("_T")


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

    @property
    def vault_missing(self) -> bool:
        """Whether Key Vault answered that the vault itself does not exist (``VaultNotFound``)."""
        code = (self.error.code or "") if self.error is not None else ""
        return code.lower() == "vaultnotfound"


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


def role_wraps(definition: RoleDefinitionInfo) -> bool:
    """Whether a role's data actions allow both wrapKey and unwrapKey."""

    def allowed(action: str) -> bool:
        yes = any(fnmatch.fnmatchcase(action, p.lower()) for p in definition.data_actions)
        no = any(fnmatch.fnmatchcase(action, p.lower()) for p in definition.not_data_actions)
        return yes and not no

    return allowed(WRAP) and allowed(UNWRAP)


@dataclass
class FactReader:
    """Reads the facts of clusters; reads are cached for the life of this object."""

    clusters: ClustersClient
    keys: KeyVaultKeys
    arm: ArmReads
    policies: KeyPolicies
    settings: Settings
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    owns: bool = False
    _cache: dict[tuple[str, ...], asyncio.Task[Any]] = field(default_factory=dict)

    @classmethod
    def for_runtime(cls, runtime: Runtime) -> FactReader:
        """A reader on the runtime's clients, with its own ARM-reads and rotation-policy clients."""
        settings = runtime.settings
        return cls(
            clusters=runtime.clusters,
            keys=runtime.keys,
            arm=ArmReads(settings.arm_endpoint, runtime.credential, transport=runtime.http.transport()),
            policies=KeyPolicies(runtime.keys),
            settings=settings,
            owns=True,
        )

    async def close(self) -> None:
        """Close the clients this reader made (not the runtime's)."""
        for task in self._cache.values():
            task.cancel()
        self._cache.clear()
        if self.owns:
            await self.arm.close()
            await self.policies.close()

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

        async def read(url: KeyUrl) -> KeyVersion | None:
            full: Read[KeyVersion] = await self._read(
                ("key", str(url).lower()), functools.partial(self.keys.get_version, url)
            )
            return full.value

        return await pick_newest_usable(versions, read, now)

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
