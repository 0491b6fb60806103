"""The simulated world: vaults, keys, identities, clusters, operations, events, tokens and the request log.

Everything lives in one :class:`State` guarded by one re-entrant lock (``State.lock``): the handlers run
on the simulator's event-loop thread, tests call in from theirs. No method awaits while holding it.
"""

from __future__ import annotations

import copy
import datetime as dt
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from azsim.faults import FaultPlan, TokenBucket

if TYPE_CHECKING:
    from azsim.messages import RequestRecord

__all__ = [
    "BUILTIN_ROLES",
    "DEFAULT_CLUSTER_PROPERTIES",
    "DEFAULT_OPS",
    "DEFAULT_ROTATION_POLICY",
    "SERVICE_DEFAULTS",
    "Cluster",
    "Config",
    "Denial",
    "Identity",
    "Key",
    "KeyVersion",
    "Operation",
    "RoleAssignment",
    "RoleDefinition",
    "State",
    "Vault",
    "iso_z",
]

DEFAULT_OPS = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey")
KEY_EVENT_PREFIX = "Microsoft.KeyVault."
# What a new key gets unless a test says otherwise: rotate 90 days after creation, notify 30 days before
# expiry, new versions expire after 2 years (the Key Vault REST shape, without id and timestamps).
DEFAULT_ROTATION_POLICY: dict[str, Any] = {
    "lifetimeActions": [
        {"trigger": {"timeAfterCreate": "P90D"}, "action": {"type": "Rotate"}},
        {"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}},
    ],
    "attributes": {"expiryTime": "P2Y"},
}


# What a cluster has unless a test says otherwise; what a resetting PUT sets the omitted ones back to is
# SERVICE_DEFAULTS (the spec's defaults where it names one: highAvailability Disabled, publicNetworkAccess
# Enabled, dataApi Disabled, authConfig NativeAuth).
DEFAULT_CLUSTER_PROPERTIES: dict[str, Any] = {
    "serverVersion": "7.0",
    "compute": {"tier": "M30"},
    "storage": {"sizeGb": 128},
    "highAvailability": {"targetMode": "ZoneRedundantPreferred"},
    "sharding": {"shardCount": 1},
    "publicNetworkAccess": "Disabled",
    "dataApi": {"mode": "Disabled"},
    "authConfig": {"allowedModes": ["NativeAuth", "MicrosoftEntraID"]},
}
SERVICE_DEFAULTS: dict[str, Any] = {
    "highAvailability": {"targetMode": "Disabled"},
    "publicNetworkAccess": "Enabled",
    "dataApi": {"mode": "Disabled"},
    "authConfig": {"allowedModes": ["NativeAuth"]},
}


def iso_z(epoch: float) -> str:
    """ISO 8601 UTC with a Z suffix and 7 fractional digits, like Azure writes it."""
    moment = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


@dataclass
class Config:
    """Tunable behaviour (see ``Simulator.configure``)."""

    operation_seconds: float = 0.2
    poll_interval: float = 0.1
    latency: float = 0.0
    write_burst: int = 200
    write_refill_per_s: float = 10.0
    read_burst: int = 250
    read_refill_per_s: float = 25.0
    list_page_size: int = 50
    operation_failure_rate: float = 0.0
    # How a write is answered (see azsim.arm): "both" headers as the spec's examples (Azure-AsyncOperation
    # and Location), "location" only, or "none" (the client follows the resource's provisioningState).
    write_answer: str = "both"
    # A PUT also resets the properties it leaves out to the service's defaults (a PUT "overwrites all
    # properties for the resource", the spec says): the worst case the rotator's collateral check catches.
    put_resets_omitted: bool = False
    # Refuse to update properties.encryption at api-versions dated before this one (None: never), as the
    # 2025-07-01-preview swagger marks it create-only (x-ms-mutability: read, create).
    encryption_updatable_from: str | None = None


@dataclass
class KeyVersion:
    """One version of a Key Vault key."""

    version: str
    kty: str
    size: int
    crv: str | None
    ops: list[str]
    enabled: bool
    nbf: int | None
    exp: int | None
    created: int
    updated: int
    material: dict[str, bytes]
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Key:
    """A Key Vault key: its versions in creation order, and its rotation policy (None: never set)."""

    name: str
    versions: dict[str, KeyVersion] = field(default_factory=dict)
    rotation_policy: dict[str, Any] | None = None
    policy_created: int | None = None
    policy_updated: int | None = None

    @property
    def latest(self) -> KeyVersion:
        """The most recently created version."""
        return max(self.versions.values(), key=lambda v: v.created)


@dataclass
class Vault:
    """A Key Vault (or Managed HSM) and its keys (keyed by lower-case name)."""

    name: str
    subscription: str
    resource_group: str
    location: str
    suffix: str
    keys: dict[str, Key] = field(default_factory=dict)
    # ARM properties (Microsoft.KeyVault/vaults); the defaults pass every check of `rotation doctor`.
    enable_soft_delete: bool = True
    soft_delete_retention_days: int = 90
    enable_purge_protection: bool = True
    enable_rbac_authorization: bool = True
    public_network_access: str = "Enabled"
    network_default_action: str = "Allow"
    network_bypass: str = "AzureServices"
    ip_rules: list[str] = field(default_factory=list)
    access_policies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def host(self) -> str:
        """``{name}.{suffix}``."""
        return f"{self.name}.{self.suffix}"

    @property
    def url(self) -> str:
        """``https://{name}.{suffix}``."""
        return f"https://{self.host}"

    @property
    def arm_id(self) -> str:
        """The vault's ARM resource id (the Event Grid topic)."""
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.KeyVault/vaults/{self.name}"
        )

    @property
    def resource(self) -> str:
        """The token audience Key Vault names in its 401 challenge."""
        if self.suffix.endswith("managedhsm.azure.net"):
            return "https://managedhsm.azure.net"
        return f"https://{self.suffix}"


@dataclass
class Identity:
    """A user-assigned managed identity."""

    id: str
    name: str
    location: str
    principal_id: str
    client_id: str


@dataclass(frozen=True)
class RoleDefinition:
    """An Azure RBAC role definition (built-in or custom), by its GUID."""

    guid: str
    role_name: str
    actions: tuple[str, ...] = ()
    data_actions: tuple[str, ...] = ()
    not_data_actions: tuple[str, ...] = ()
    built_in: bool = True


@dataclass(frozen=True)
class RoleAssignment:
    """A role assignment: ``principal_id`` holds ``role_guid`` at ``scope``."""

    guid: str
    scope: str
    principal_id: str
    role_guid: str
    condition: str | None = None


CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
BUILTIN_ROLES: dict[str, RoleDefinition] = {
    role.guid: role
    for role in (
        RoleDefinition(
            CRYPTO_SERVICE_ENCRYPTION_USER,
            "Key Vault Crypto Service Encryption User",
            ("Microsoft.EventGrid/eventSubscriptions/write", "Microsoft.EventGrid/eventSubscriptions/read"),
            (
                "Microsoft.KeyVault/vaults/keys/read",
                "Microsoft.KeyVault/vaults/keys/wrap/action",
                "Microsoft.KeyVault/vaults/keys/unwrap/action",
            ),
        ),
        RoleDefinition(
            "14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
            "Key Vault Crypto Officer",
            ("Microsoft.Authorization/*/read", "Microsoft.KeyVault/*/read"),
            ("Microsoft.KeyVault/vaults/keys/*", "Microsoft.KeyVault/vaults/keyrotationpolicies/*"),
        ),
        RoleDefinition(
            "00482a5a-887f-4fb3-b363-3b7fe8e74483",
            "Key Vault Administrator",
            ("Microsoft.Authorization/*/read", "Microsoft.KeyVault/*/read"),
            ("Microsoft.KeyVault/vaults/*",),
        ),
        RoleDefinition(
            "21090545-7ca7-4776-b22c-e363652d74d2",
            "Key Vault Reader",
            ("Microsoft.Authorization/*/read", "Microsoft.KeyVault/vaults/*/read"),
            ("Microsoft.KeyVault/vaults/*/read", "Microsoft.KeyVault/vaults/secrets/readMetadata/action"),
        ),
    )
}


@dataclass(frozen=True)
class Denial:
    """The rotator's own identity is refused (403) on requests of ``service`` whose path contains this."""

    service: str
    path_contains: str
    method: str | None = None

    def matches(self, service: str, method: str, path: str) -> bool:
        """Whether a request is refused by this denial."""
        return (
            self.service == service
            and (self.method is None or self.method.upper() == method.upper())
            and self.path_contains.lower() in path.lower()
        )


@dataclass
class Operation:
    """A long-running cluster operation; its end is computed from timestamps (no timers)."""

    id: str
    cluster_key: str
    subscription: str
    location: str
    kind: str
    start: float
    end: float
    failed: bool
    error: dict[str, str] | None
    new_key_url: str | None
    new_key_identity: str | None
    new_identities: list[str] | None
    settled: bool = False
    new_tags: dict[str, str] | None = None  # the tags once the operation succeeds (None: unchanged)
    new_properties: dict[str, Any] | None = None  # service properties set by the write
    new_identity_type: str | None = None

    def status(self, now: float) -> str:
        """InProgress, Succeeded or Failed at ``now``."""
        if now < self.end:
            return "InProgress"
        return "Failed" if self.failed else "Succeeded"


@dataclass
class Cluster:
    """A mongoClusters resource."""

    id: str
    subscription: str
    resource_group: str
    name: str
    location: str
    tags: dict[str, str]
    identities: list[str]
    key_url: str | None
    key_identity: str | None
    created_at: float
    provisioning_state: str = "Succeeded"
    cluster_status: str = "Ready"
    operation: Operation | None = None
    ignore_key_updates: bool = False
    fail_next: dict[str, str] | None = None
    operation_seconds: float | None = None
    identity_type: str = "UserAssigned"
    # The service properties a GET returns besides status and encryption (the shape of the spec's
    # examples, e.g. examples/2025-09-01/MongoClusters_Create_CMK.json, response 200).
    properties: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_CLUSTER_PROPERTIES))

    @property
    def cmk(self) -> bool:
        """Whether the cluster is encrypted with a customer-managed key."""
        return self.key_url is not None


class State:
    """All simulated resources and bookkeeping, guarded by ``lock``."""

    def __init__(self, *, seed: int, tenant_id: str) -> None:
        self.lock = threading.RLock()
        self.seed = seed
        self.tenant_id = tenant_id
        self.rng = random.Random(seed)
        self.config = Config()
        self.vaults: dict[str, Vault] = {}  # by lower-case host
        self.identities: dict[str, Identity] = {}  # by lower-case id
        self.clusters: dict[str, Cluster] = {}  # by lower-case id
        self.operations: dict[str, Operation] = {}  # by id
        self.events: list[dict[str, Any]] = []
        self.tokens: dict[str, str] = {}  # token -> resource it was issued for
        self.requests: list[RequestRecord] = []
        self.refused_connects: list[str] = []
        self.faults = FaultPlan(seed=seed)
        self.role_definitions: dict[str, RoleDefinition] = dict(BUILTIN_ROLES)  # by lower-case GUID
        self.role_assignments: list[RoleAssignment] = []
        self.denials: list[Denial] = []
        self.clock_offset = 0.0  # seconds operations are ahead of the wall clock (Simulator.advance)
        self._write_buckets: dict[str, TokenBucket] = {}
        self._read_buckets: dict[str, TokenBucket] = {}

    # -- throttling ---------------------------------------------------------------------------------

    def bucket(self, subscription: str, *, write: bool) -> TokenBucket:
        """The read or write token bucket of a subscription."""
        buckets = self._write_buckets if write else self._read_buckets
        key = subscription.lower()
        if key not in buckets:
            if write:
                buckets[key] = TokenBucket(self.config.write_burst, self.config.write_refill_per_s)
            else:
                buckets[key] = TokenBucket(self.config.read_burst, self.config.read_refill_per_s)
        return buckets[key]

    def reset_buckets(self) -> None:
        """Forget every bucket (they are re-created full with the current configuration)."""
        self._write_buckets.clear()
        self._read_buckets.clear()

    # -- Key Vault ---------------------------------------------------------------------------------

    def vault(self, name_or_host: str) -> Vault:
        """The vault by host (``kv.vault.azure.net``) or by bare name when that is unambiguous."""
        lowered = name_or_host.lower()
        if lowered in self.vaults:
            return self.vaults[lowered]
        matches = [v for v in self.vaults.values() if v.name.lower() == lowered]
        if len(matches) != 1:
            raise KeyError(f"no vault {name_or_host!r}")
        return matches[0]

    def key(self, vault: str, key: str) -> Key:
        """The key of a vault, or KeyError."""
        found = self.vault(vault).keys.get(key.lower())
        if found is None:
            raise KeyError(f"no key {key!r} in vault {vault!r}")
        return found

    def new_key_version(
        self,
        vault: Vault,
        name: str,
        *,
        kty: str,
        size: int,
        ops: list[str] | None,
        enabled: bool,
        nbf: int | None,
        exp: int | None,
        tags: dict[str, str] | None = None,
    ) -> KeyVersion:
        """Create a version (and the key when new); ``created`` strictly increases per key."""
        key = vault.keys.get(name.lower())
        now = int(time.time())
        if key is None:
            key = vault.keys.setdefault(name.lower(), Key(name=name))
            key.rotation_policy = copy.deepcopy(DEFAULT_ROTATION_POLICY)
            key.policy_created = key.policy_updated = now
        created = max([now] + [v.created + 1 for v in key.versions.values()])
        kty_upper = kty.upper()
        material: dict[str, bytes]
        crv: str | None = None
        if kty_upper.startswith("EC"):
            crv = "P-256"
            size = 256
            material = {"x": self.rng.randbytes(32), "y": self.rng.randbytes(32)}
        else:
            if size % 8 or size < 512:  # noqa: PLR2004 - sanity bound, not a Key Vault rule
                raise ValueError(f"unsupported RSA key size {size}")
            modulus = bytearray(self.rng.randbytes(size // 8))
            modulus[0] |= 0x80
            modulus[-1] |= 0x01
            material = {"n": bytes(modulus), "e": b"\x01\x00\x01"}
        version = KeyVersion(
            version=uuid.uuid4().hex,
            kty=kty_upper,
            size=size,
            crv=crv,
            ops=list(ops) if ops is not None else list(DEFAULT_OPS),
            enabled=enabled,
            nbf=nbf,
            exp=exp,
            created=created,
            updated=created,
            material=material,
            tags=dict(tags or {}),
        )
        key.versions[version.version] = version
        return version

    def key_event(self, vault: Vault, key: Key, version: KeyVersion, event_type: str) -> dict[str, Any]:
        """Build and record a Key Vault event in Event Grid schema."""
        full_type = event_type if event_type.startswith(KEY_EVENT_PREFIX) else KEY_EVENT_PREFIX + event_type
        event = {
            "id": str(uuid.uuid4()),
            "topic": vault.arm_id,
            "subject": key.name,
            "eventType": full_type,
            "eventTime": iso_z(time.time()),
            "data": {
                "Id": f"{vault.url}/keys/{key.name}/{version.version}",
                "VaultName": vault.name,
                "ObjectType": "Key",
                "ObjectName": key.name,
                "Version": version.version,
                "NBF": version.nbf,
                "EXP": version.exp,
            },
            "dataVersion": "1",
            "metadataVersion": "1",
        }
        self.events.append(event)
        return event

    # -- clusters and operations ------------------------------------------------------------------

    def now(self) -> float:
        """The simulator's clock for long-running operations: wall time plus what `advance` added."""
        return time.time() + self.clock_offset

    def settle(self, cluster: Cluster, now: float | None = None) -> None:
        """Apply the result of the cluster's operation if it has ended."""
        op = cluster.operation
        moment = self.now() if now is None else now
        if op is None or moment < op.end:
            return
        op.settled = True
        cluster.operation = None
        cluster.provisioning_state = "Succeeded"
        if op.kind == "create":
            cluster.provisioning_state = "Failed" if op.failed else "Succeeded"
            cluster.cluster_status = "Ready"
        if op.failed:
            return
        if op.new_identities is not None:
            cluster.identities = list(op.new_identities)
        if op.new_identity_type is not None:
            cluster.identity_type = op.new_identity_type
        if op.new_tags is not None:
            cluster.tags = dict(op.new_tags)
        if op.new_properties is not None:
            cluster.properties.update(copy.deepcopy(op.new_properties))
        if op.new_key_identity is not None:
            cluster.key_identity = op.new_key_identity
        if op.new_key_url is not None and not cluster.ignore_key_updates:
            cluster.key_url = op.new_key_url

    def settle_all(self) -> None:
        """Settle every cluster whose operation has ended."""
        now = self.now()
        for cluster in self.clusters.values():
            self.settle(cluster, now)

    def cluster(self, cluster_id: str) -> Cluster:
        """The cluster by id (case-insensitive), settled; KeyError when absent."""
        found = self.clusters.get(cluster_id.lower())
        if found is None:
            raise KeyError(f"no cluster {cluster_id!r}")
        self.settle(found)
        return found

    def identity(self, identity_id: str) -> Identity | None:
        """The identity by id (case-insensitive), or None."""
        return self.identities.get(identity_id.lower())

    def denied(self, service: str, method: str, path: str) -> Denial | None:
        """The denial that refuses this request of the rotator, if any."""
        return next((d for d in self.denials if d.matches(service, method, path)), None)

    def grant(self, scope: str, principal_id: str, role_guid: str, *, condition: str | None = None) -> str:
        """Add a role assignment (idempotent per scope, principal and role); return its GUID."""
        for existing in self.role_assignments:
            if (existing.scope.lower(), existing.principal_id, existing.role_guid) == (
                scope.lower(),
                principal_id,
                role_guid.lower(),
            ) and existing.condition == condition:
                return existing.guid
        assignment = RoleAssignment(str(uuid.uuid4()), scope, principal_id, role_guid.lower(), condition)
        self.role_assignments.append(assignment)
        return assignment.guid

    def record(self, record: RequestRecord) -> None:
        """Append to the request log."""
        self.requests.append(record)
