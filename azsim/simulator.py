"""The simulator's Python API: :class:`Simulator`.

Import it only after ``SSL_CERT_FILE`` points at the CA (see :mod:`azsim.tls`): it imports aiohttp.

Seed format (``Simulator.seed``, ``POST /_sim/seed``, ``python -m azsim serve --seed-file``)::

    {
      "vaults": [{"name": "contoso-kv", "subscription": "1111...", "resource_group": "rg-keys",
                  "location": "westeurope", "suffix": "vault.azure.net"}],
      "keys": [{"vault": "contoso-kv", "name": "cmk-docdb", "versions": 2,
                "kty": "RSA", "size": 2048, "ops": [...], "enabled": true, "nbf": null, "exp": null,
                "emit_event": false}],
      "identities": [{"subscription": "2222...", "resource_group": "rg-data", "name": "id-docdb-cmk",
                      "location": "westeurope"}],
      "clusters": [{"subscription": "2222...", "resource_group": "rg-data", "name": "orders-prod",
                    "location": "westeurope", "tags": {"team": "orders"},
                    "key": {"vault": "contoso-kv", "name": "cmk-docdb", "versionless": false},
                    "identity": "id-docdb-cmk", "extra_identities": [],
                    "identity_type": "UserAssigned"}]
    }

Only ``name``/``subscription``/``resource_group`` (and ``vault`` for keys) are required. A cluster takes
either ``key`` (latest version of a seeded key, or versionless) or a literal ``key_url``; neither means
service-managed. ``identity`` and ``extra_identities`` entries are identity names from the same spec or
full resource ids. Seeded keys emit no event unless ``emit_event`` is true. The result maps names to
what was created: ``{"vaults": {name: url}, "keys": {"vault/key": [versions]}, "identities": {name: id},
"clusters": {name: id}}``.
"""

from __future__ import annotations

import copy
import secrets
import time
import uuid
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from azsim.arm import WRITE_ANSWERS, cluster_json, parse_key_url
from azsim.control import add_control_routes
from azsim.faults import Fault
from azsim.identity import TOKEN_PATH
from azsim.messages import RequestRecord
from azsim.server import Ports, Runtime
from azsim.state import (
    CRYPTO_SERVICE_ENCRYPTION_USER,
    Cluster,
    Config,
    Denial,
    Identity,
    RoleDefinition,
    State,
    Vault,
)
from azsim.tls import CaFiles, ensure_ca
from azsim.webhook import TIMEOUT_S, EventSubscriptions, cloud_event

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["DEFAULT_TENANT_ID", "Fault", "RequestRecord", "Simulator"]

DEFAULT_TENANT_ID = "72f988bf-0000-4000-8000-00000000a25e"
HANDSHAKE_WAIT_S = TIMEOUT_S + 5.0


class Simulator:
    """ARM mongoClusters, Key Vault keys, managed identity and a CONNECT proxy on 127.0.0.1.

    Thread-safe: every method may be called from any thread while the servers run.
    """

    def __init__(self, *, ca_dir: Path, seed: int = 0, tenant_id: str = DEFAULT_TENANT_ID) -> None:
        self.ca: CaFiles = ensure_ca(Path(ca_dir))
        self.tenant_id = tenant_id
        self._state = State(seed=seed, tenant_id=tenant_id)
        self._identity_header = secrets.token_urlsafe(24)
        self._runtime: Runtime | None = None
        self.ports: Ports | None = None
        self.env: dict[str, str] = {}
        # Event Grid subscriptions with a webhook destination: every Key Vault event is offered to them.
        self.subscriptions = EventSubscriptions()
        self._state.event_listeners.append(self.subscriptions.publish)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the servers; fills ``env`` and ``ports``."""
        runtime = Runtime(
            self._state, self.ca, self._identity_header, lambda app: add_control_routes(app, self)
        )
        ports = runtime.start()
        self._runtime, self.ports = runtime, ports
        ca_path = str(self.ca.cert_path)
        self.env = {
            "HTTPS_PROXY": f"http://127.0.0.1:{ports.proxy}",
            "NO_PROXY": "127.0.0.1,localhost",
            "SSL_CERT_FILE": ca_path,
            "REQUESTS_CA_BUNDLE": ca_path,
            "IDENTITY_ENDPOINT": f"http://127.0.0.1:{ports.identity}{TOKEN_PATH}",
            "IDENTITY_HEADER": self._identity_header,
            "AZSIM_CONTROL_URL": f"http://127.0.0.1:{ports.control}",
        }

    def stop(self) -> None:
        """Stop the servers and their thread (idempotent)."""
        self.subscriptions.stop()
        if self._runtime is not None:
            self._runtime.stop()
            self._runtime = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- observation -----------------------------------------------------------------------------

    @property
    def tokens(self) -> set[str]:
        """Every access token the identity endpoint issued."""
        with self._state.lock:
            return set(self._state.tokens)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Key Vault events emitted so far (Event Grid schema), oldest first."""
        with self._state.lock:
            return copy.deepcopy(self._state.events)

    @property
    def requests(self) -> list[RequestRecord]:
        """Every ARM, Key Vault and identity request served, in order."""
        with self._state.lock:
            return list(self._state.requests)

    @property
    def refused_connects(self) -> list[str]:
        """``host:port`` targets of CONNECT requests the proxy refused."""
        with self._state.lock:
            return list(self._state.refused_connects)

    @property
    def operations(self) -> list[dict[str, Any]]:
        """Every accepted cluster operation, oldest first: cluster id, kind, start, end, failed, new key."""
        with self._state.lock:
            ops = sorted(self._state.operations.values(), key=lambda op: op.start)
            return [
                {
                    "id": op.id,
                    "cluster_id": op.cluster_key,
                    "kind": op.kind,
                    "start": op.start,
                    "end": op.end,
                    "failed": op.failed,
                    "new_key_url": op.new_key_url,
                }
                for op in ops
            ]

    def clear_requests(self) -> None:
        """Empty the request log and the log of refused CONNECTs (a test's traffic starts from nothing)."""
        with self._state.lock:
            self._state.requests.clear()
            self._state.refused_connects.clear()

    # -- configuration ---------------------------------------------------------------------------

    def configure(
        self,
        *,
        operation_seconds: float | None = None,
        poll_interval: float | None = None,
        latency: float | None = None,
        write_burst: int | None = None,
        write_refill_per_s: float | None = None,
        read_burst: int | None = None,
        read_refill_per_s: float | None = None,
        list_page_size: int | None = None,
        write_answer: str | None = None,
        put_resets_omitted: bool | None = None,
        encryption_updatable_from: str | None = None,
    ) -> None:
        """Change behaviour; None leaves a setting as it is. Changing a bucket refills every bucket.

        ``write_answer``: "both" (Azure-AsyncOperation and Location, as the spec's examples), "location"
        or "none" (the client follows the resource). ``put_resets_omitted``: a PUT also resets the service
        properties it leaves out. ``encryption_updatable_from``: an api-version; writes changing the key
        at an older one are refused as create-only ("" turns it off).
        """
        if write_answer is not None and write_answer not in WRITE_ANSWERS:
            raise ValueError(f"write_answer must be one of {', '.join(WRITE_ANSWERS)}, got {write_answer!r}")
        changes: dict[str, Any] = {
            "write_answer": write_answer,
            "put_resets_omitted": put_resets_omitted,
            "operation_seconds": operation_seconds,
            "poll_interval": poll_interval,
            "latency": latency,
            "write_burst": write_burst,
            "write_refill_per_s": write_refill_per_s,
            "read_burst": read_burst,
            "read_refill_per_s": read_refill_per_s,
            "list_page_size": list_page_size,
        }
        with self._state.lock:
            config = self._state.config
            for name, value in changes.items():
                if value is not None:
                    setattr(config, name, value)
            if encryption_updatable_from is not None:
                config.encryption_updatable_from = encryption_updatable_from or None
            if any(v is not None for v in (write_burst, write_refill_per_s, read_burst, read_refill_per_s)):
                self._state.reset_buckets()

    def advance(self, seconds: float) -> None:
        """Move the clock of long-running operations forward (a 10-minute operation in no time)."""
        with self._state.lock:
            self._state.clock_offset += seconds

    def reset(self) -> None:
        """Back to the default configuration with full buckets, no faults, no denials (resources are kept)."""
        with self._state.lock:
            self._state.config = Config()
            self._state.reset_buckets()
            self._state.faults.clear()
            self._state.denials.clear()

    # -- Key Vault -------------------------------------------------------------------------------

    def add_vault(
        self,
        name: str,
        *,
        subscription: str,
        resource_group: str = "rg-keys",
        location: str = "westeurope",
        suffix: str = "vault.azure.net",
    ) -> str:
        """Add a vault (idempotent); return its URL ``https://{name}.{suffix}``."""
        vault = Vault(name, subscription, resource_group, location, suffix.strip(".").lower())
        with self._state.lock:
            existing = self._state.vaults.setdefault(vault.host.lower(), vault)
            return existing.url

    def vault_arm_id(self, vault: str) -> str:
        """The vault's ARM id (the ``topic`` of its events)."""
        with self._state.lock:
            return self._state.vault(vault).arm_id

    def create_key_version(
        self,
        vault: str,
        key: str,
        *,
        kty: str = "RSA",
        size: int = 2048,
        ops: list[str] | None = None,
        enabled: bool = True,
        nbf: int | None = None,
        exp: int | None = None,
        emit_event: bool = True,
        tie: bool = False,
    ) -> str:
        """Create a new version of ``key`` (and the key if new); return the version.

        ``tie``: created in the same second as the key's newest version. Key Vault's ``created`` is whole
        seconds (KeyAttributes.created, "Creation time in UTC", an integer of Unix seconds in the REST
        spec, specification/keyvault/data-plane/.../keys.json), so two versions can share one.
        """
        with self._state.lock:
            found = self._state.vault(vault)
            version = self._state.new_key_version(
                found, key, kty=kty, size=size, ops=ops, enabled=enabled, nbf=nbf, exp=exp, tie=tie
            )
            if emit_event:
                self._state.key_event(found, found.keys[key.lower()], version, "KeyNewVersionCreated")
            return version.version

    def update_key_version(
        self,
        vault: str,
        key: str,
        version: str,
        *,
        enabled: bool | None = None,
        nbf: int | None = None,
        exp: int | None = None,
        ops: list[str] | None = None,
    ) -> None:
        """Change attributes of a version (None leaves one as it is)."""
        with self._state.lock:
            found = self._state.key(vault, key).versions.get(version.lower())
            if found is None:
                raise KeyError(f"no version {version!r} of key {key!r}")
            if enabled is not None:
                found.enabled = enabled
            if nbf is not None:
                found.nbf = nbf
            if exp is not None:
                found.exp = exp
            if ops is not None:
                found.ops = list(ops)

    def key_url(self, vault: str, key: str, version: str | None = None) -> str:
        """``https://{vault host}/keys/{key}[/{version}]`` (stored casing of the key name)."""
        with self._state.lock:
            found_vault = self._state.vault(vault)
            found = found_vault.keys.get(key.lower())
            name = found.name if found is not None else key
            url = f"{found_vault.url}/keys/{name}"
            return f"{url}/{version}" if version else url

    def latest_version(self, vault: str, key: str) -> str:
        """The most recently created version of ``key``."""
        with self._state.lock:
            return self._state.key(vault, key).latest.version

    def key_versions(self, vault: str, key: str) -> list[dict[str, Any]]:
        """Every version of ``key`` with the attributes rule 3 looks at, oldest first (no key material)."""
        with self._state.lock:
            ordered = sorted(self._state.key(vault, key).versions.values(), key=lambda v: v.created)
            return [
                {
                    "version": v.version,
                    "created": v.created,
                    "enabled": v.enabled,
                    "nbf": v.nbf,
                    "exp": v.exp,
                    "kty": v.kty,
                    "size": v.size,
                    "ops": list(v.ops),
                }
                for v in ordered
            ]

    def emit_key_event(self, vault: str, key: str, version: str, event_type: str) -> dict[str, Any]:
        """Emit a Key Vault event (e.g. ``Microsoft.KeyVault.KeyNearExpiry``) for a version; return it."""
        with self._state.lock:
            found_vault = self._state.vault(vault)
            found_key = self._state.key(vault, key)
            found = found_key.versions.get(version.lower())
            if found is None:
                raise KeyError(f"no version {version!r} of key {key!r}")
            return copy.deepcopy(self._state.key_event(found_vault, found_key, found, event_type))

    def add_event_subscription(
        self,
        endpoint: str,
        *,
        schema: str = "eventgrid",
        vault: str | None = None,
        event_types: list[str] | None = None,
        name: str | None = None,
        retry_delays: list[float] | None = None,
    ) -> dict[str, Any]:
        """Subscribe a webhook to Key Vault events after its validation handshake (see `azsim.webhook`).

        Raises `azsim.webhook.SubscriptionError` when the endpoint fails the handshake.
        """
        future = self.subscriptions.add(
            endpoint,
            schema=schema,
            vault=vault,
            event_types=event_types,
            name=name,
            retry_delays=retry_delays,
        )
        return future.result(HANDSHAKE_WAIT_S)

    @staticmethod
    def to_cloud_event(event: dict[str, Any]) -> dict[str, Any]:
        """The same event in CloudEvents 1.0 JSON."""
        return cloud_event(event)

    # -- identities and clusters -----------------------------------------------------------------

    def add_identity(
        self, *, subscription: str, resource_group: str, name: str, location: str = "westeurope"
    ) -> str:
        """Add a user-assigned identity (idempotent); return its resource id."""
        identity_id = (
            f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
        )
        identity = Identity(identity_id, name, location, str(uuid.uuid4()), str(uuid.uuid4()))
        with self._state.lock:
            return self._state.identities.setdefault(identity_id.lower(), identity).id

    def add_cluster(
        self,
        *,
        subscription: str,
        resource_group: str,
        name: str,
        location: str = "westeurope",
        key_url: str | None = None,
        identity: str | None = None,
        extra_identities: list[str] | None = None,
        tags: dict[str, str] | None = None,
        grant_key_access: bool = True,
        identity_type: str = "UserAssigned",
    ) -> str:
        """Add a cluster; ``key_url`` None makes it service-managed. Return its ARM id.

        With ``grant_key_access`` (the default) and the key's vault in the simulator, the key identity is
        given Key Vault Crypto Service Encryption User on the vault, as a correct setup has it, so a
        freshly added cluster passes every check of ``rotation doctor``.
        """
        cluster_id = (
            f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.DocumentDB/mongoClusters/{name}"
        )
        if key_url is not None and identity is None:
            raise ValueError("a customer-managed-key cluster needs its key identity")
        with self._state.lock:
            if cluster_id.lower() in self._state.clusters:
                raise ValueError(f"cluster {cluster_id} already exists")
            identities: list[str] = []
            for wanted in ([identity] if identity else []) + list(extra_identities or []):
                found = self._state.identity(wanted)
                if found is None:
                    raise KeyError(f"no identity {wanted!r}; add_identity first")
                if found.id not in identities:
                    identities.append(found.id)
            self._state.clusters[cluster_id.lower()] = Cluster(
                id=cluster_id,
                subscription=subscription,
                resource_group=resource_group,
                name=name,
                location=location,
                tags=dict(tags or {}),
                identities=identities,
                key_url=key_url,
                key_identity=identities[0] if key_url is not None else None,
                created_at=time.time(),
                identity_type=identity_type,
            )
            if key_url is not None and grant_key_access:
                self._grant_key_access(key_url, identities[0])
        return cluster_id

    def _grant_key_access(self, key_url: str, identity_id: str) -> None:
        host = parse_key_url(key_url)
        vault = self._state.vaults.get(host.host) if host is not None else None
        found = self._state.identity(identity_id)
        if vault is not None and found is not None:
            self._state.grant(vault.arm_id, found.principal_id, CRYPTO_SERVICE_ENCRYPTION_USER)

    def set_cluster_identities(
        self, cluster_id: str, identities: list[str], *, key_identity: str | None = None
    ) -> None:
        """Replace the cluster's attached identities (ids as given, even unknown ones) and key identity."""
        with self._state.lock:
            cluster = self._cluster(cluster_id)
            cluster.identities = list(identities)
            if key_identity is not None:
                cluster.key_identity = key_identity

    def set_identity_location(self, identity_id: str, location: str) -> None:
        """Move a user-assigned identity to another region."""
        with self._state.lock:
            found = self._state.identity(identity_id)
            if found is None:
                raise KeyError(f"no identity {identity_id!r}")
            found.location = location

    def remove_identity(self, identity_id: str) -> None:
        """Delete a user-assigned identity (clusters keep referring to it)."""
        with self._state.lock:
            if self._state.identities.pop(identity_id.lower(), None) is None:
                raise KeyError(f"no identity {identity_id!r}")

    def principal_id(self, identity_id: str) -> str:
        """The principal (object) id of a user-assigned identity."""
        with self._state.lock:
            found = self._state.identity(identity_id)
            if found is None:
                raise KeyError(f"no identity {identity_id!r}")
            return found.principal_id

    # -- vault properties, RBAC and access policies -----------------------------------------------

    _VAULT_PROPERTIES = frozenset(
        {
            "location",
            "enable_soft_delete",
            "soft_delete_retention_days",
            "enable_purge_protection",
            "enable_rbac_authorization",
            "public_network_access",
            "network_default_action",
            "network_bypass",
            "ip_rules",
        }
    )

    def set_vault_properties(self, vault: str, **props: Any) -> None:  # noqa: ANN401
        """Set ARM properties of a vault by their `azsim.state.Vault` field name.

        ``location``, ``enable_soft_delete``, ``soft_delete_retention_days``, ``enable_purge_protection``,
        ``enable_rbac_authorization``, ``public_network_access`` ("Enabled"/"Disabled"),
        ``network_default_action`` ("Allow"/"Deny"), ``network_bypass`` ("AzureServices"/"None"),
        ``ip_rules`` (list of CIDRs).
        """
        unknown = set(props) - self._VAULT_PROPERTIES
        if unknown:
            raise TypeError(f"unknown vault properties: {', '.join(sorted(unknown))}")
        with self._state.lock:
            found = self._state.vault(vault)
            for name, value in props.items():
                setattr(found, name, list(value) if name == "ip_rules" else value)

    def add_access_policy(self, vault: str, object_id: str, key_permissions: list[str]) -> None:
        """Add an access policy (used when the vault has ``enable_rbac_authorization=False``)."""
        with self._state.lock:
            self._state.vault(vault).access_policies.append(
                {
                    "tenantId": self.tenant_id,
                    "objectId": object_id,
                    "permissions": {"keys": list(key_permissions), "secrets": [], "certificates": []},
                }
            )

    def add_role_assignment(
        self, scope: str, principal_id: str, role_definition_id: str, *, condition: str | None = None
    ) -> str:
        """Assign a role (its GUID or full definition id) at ``scope``; return the assignment's GUID."""
        guid = role_definition_id.rstrip("/").rsplit("/", 1)[-1].lower()
        with self._state.lock:
            if guid not in self._state.role_definitions:
                raise KeyError(f"no role definition {guid!r}; add_role_definition first")
            return self._state.grant(scope, principal_id, guid, condition=condition)

    def remove_role_assignments(self, principal_id: str) -> None:
        """Remove every role assignment of a principal."""
        with self._state.lock:
            self._state.role_assignments = [
                a for a in self._state.role_assignments if a.principal_id.lower() != principal_id.lower()
            ]

    def add_role_definition(
        self,
        role_name: str,
        *,
        data_actions: list[str],
        not_data_actions: list[str] | None = None,
        guid: str | None = None,
    ) -> str:
        """Add a custom role definition; return its GUID."""
        definition = RoleDefinition(
            (guid or str(uuid.uuid4())).lower(),
            role_name,
            (),
            tuple(data_actions),
            tuple(not_data_actions or ()),
            built_in=False,
        )
        with self._state.lock:
            self._state.role_definitions[definition.guid] = definition
        return definition.guid

    def set_key_rotation_policy(self, vault: str, key: str, policy: dict[str, Any] | None) -> None:
        """Set a key's rotation policy (``{"lifetimeActions": [...], "attributes": {"expiryTime": ...}}``).

        None removes it: the rotation-policy GET then answers 404.
        """
        with self._state.lock:
            found = self._state.key(vault, key)
            found.rotation_policy = copy.deepcopy(policy)
            now = int(time.time())
            found.policy_created = found.policy_created or now
            found.policy_updated = now

    def deny(self, *, service: str, path_contains: str, method: str | None = None) -> None:
        """Refuse the rotator (403, as a missing role does) on matching ARM or Key Vault requests.

        Lasts until `reset`. Resource Graph also leaves out vaults whose ARM id matches an ARM denial.
        """
        if service not in {"arm", "kv"}:
            raise ValueError("service must be 'arm' or 'kv'")
        with self._state.lock:
            self._state.denials.append(Denial(service, path_contains, method))

    def _cluster(self, cluster_id: str) -> Cluster:
        return self._state.cluster(cluster_id)

    def cluster(self, cluster_id: str) -> dict[str, Any]:
        """The ARM GET JSON of a cluster (a copy)."""
        with self._state.lock:
            return cluster_json(self._state, self._cluster(cluster_id))

    def set_cluster_status(self, cluster_id: str, status: str) -> None:
        """Set ``properties.clusterStatus`` (e.g. ``Inaccessible``)."""
        with self._state.lock:
            self._cluster(cluster_id).cluster_status = status

    def set_cluster_key_url(self, cluster_id: str, key_url: str) -> None:
        """Change the cluster's key URL out of band."""
        with self._state.lock:
            self._cluster(cluster_id).key_url = key_url

    def remove_cluster(self, cluster_id: str) -> None:
        """Delete a cluster (its operations stay queryable)."""
        with self._state.lock:
            self._cluster(cluster_id)
            del self._state.clusters[cluster_id.lower()]

    def ignore_key_updates(self, cluster_id: str, *, ignore: bool = True) -> None:
        """Quirk: operations on this cluster succeed but leave its key URL unchanged."""
        with self._state.lock:
            self._cluster(cluster_id).ignore_key_updates = ignore

    def fail_next_operation(
        self,
        cluster_id: str,
        *,
        code: str = "InternalServerError",
        message: str = "Simulated operation failure.",
    ) -> None:
        """The next accepted PUT/PATCH on this cluster ends Failed with this error."""
        with self._state.lock:
            self._cluster(cluster_id).fail_next = {"code": code, "message": message}

    def set_operation_seconds(self, cluster_id: str, seconds: float) -> None:
        """Per-cluster operation duration (wins over ``configure(operation_seconds=...)``)."""
        with self._state.lock:
            self._cluster(cluster_id).operation_seconds = seconds

    # -- faults ----------------------------------------------------------------------------------

    def inject(
        self,
        *,
        method: str | None = None,
        service: str | None = None,
        path_contains: str | None = None,
        faults: list[Fault],
    ) -> None:
        """The next matching requests get these faults in order, then behave normally."""
        with self._state.lock:
            self._state.faults.inject(
                method=method, service=service, path_contains=path_contains, faults=list(faults)
            )

    def set_fault_rates(
        self,
        rates: dict[str, float],
        *,
        service: str | None = "arm",
        methods: tuple[str, ...] | None = None,
        slow_seconds: float = 5.0,
        seed: int | None = None,
    ) -> None:
        """Random faults by kind ("429", "409", "500", "503", "reset", "slow"); ``{}`` turns them off."""
        with self._state.lock:
            self._state.faults.set_rates(
                rates,
                service=service,
                methods=tuple(methods) if methods is not None else None,
                slow_seconds=slow_seconds,
                seed=seed,
            )

    def set_operation_failure_rate(self, rate: float) -> None:
        """Probability that an accepted cluster operation ends Failed."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        with self._state.lock:
            self._state.config.operation_failure_rate = rate

    # -- seeding ---------------------------------------------------------------------------------

    def seed(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Create the vaults, keys, identities and clusters of ``spec`` (format: module docstring)."""
        result: dict[str, Any] = {"vaults": {}, "keys": {}, "identities": {}, "clusters": {}}
        for item in spec.get("vaults", []):
            url = self.add_vault(
                item["name"],
                subscription=item["subscription"],
                resource_group=item.get("resource_group", "rg-keys"),
                location=item.get("location", "westeurope"),
                suffix=item.get("suffix", "vault.azure.net"),
            )
            result["vaults"][item["name"]] = url
        for item in spec.get("keys", []):
            versions = [
                self.create_key_version(
                    item["vault"],
                    item["name"],
                    kty=item.get("kty", "RSA"),
                    size=item.get("size", 2048),
                    ops=item.get("ops"),
                    enabled=item.get("enabled", True),
                    nbf=item.get("nbf"),
                    exp=item.get("exp"),
                    emit_event=item.get("emit_event", False),
                )
                for _ in range(int(item.get("versions", 1)))
            ]
            result["keys"][f"{item['vault']}/{item['name']}"] = versions
        for item in spec.get("identities", []):
            result["identities"][item["name"]] = self.add_identity(
                subscription=item["subscription"],
                resource_group=item["resource_group"],
                name=item["name"],
                location=item.get("location", "westeurope"),
            )
        names: dict[str, str] = result["identities"]
        for item in spec.get("clusters", []):
            key_url = item.get("key_url")
            if item.get("key"):
                key = item["key"]
                version = None if key.get("versionless") else self.latest_version(key["vault"], key["name"])
                key_url = self.key_url(key["vault"], key["name"], version)
            identity = item.get("identity")
            result["clusters"][item["name"]] = self.add_cluster(
                subscription=item["subscription"],
                resource_group=item["resource_group"],
                name=item["name"],
                location=item.get("location", "westeurope"),
                key_url=key_url,
                identity=names.get(identity, identity) if identity else None,
                extra_identities=[names.get(i, i) for i in item.get("extra_identities", [])],
                tags=item.get("tags"),
                identity_type=item.get("identity_type", "UserAssigned"),
            )
        return result


def config_fields() -> set[str]:
    """Names accepted by ``Simulator.configure``."""
    return {f.name for f in fields(Config)} - {"operation_failure_rate"}
