"""`World`: the resources one test needs, created in the simulator with `Simulator.seed`, and `puts`.

Every test that needs a vault, a key and CMK clusters builds them with `make_world`, under fresh
subscriptions and a fresh vault name (the simulator and the registry tables are shared by the session), and
counts the ARM writes it caused with `puts`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from azsim.faults import Fault
from azsim.messages import RequestRecord
from azsim.simulator import Simulator

KEY = "cmk"
OTHER_KEY = "other"
MADE_SUBSCRIPTIONS: set[str] = set()  # every world's; `tests.helpers.app.forget_created` unregisters them


def cmk_url(doc: dict[str, Any]) -> str:
    """``keyEncryptionKeyUrl`` of a cluster's ARM JSON."""
    return doc["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"]


def puts(
    sim: Simulator, cluster_id: str | None = None, *, accepted: bool = False, patch: bool = False
) -> list[RequestRecord]:
    """ARM PUTs in the simulator's log: of one cluster when given, answered 2xx with ``accepted``, PATCHes too with ``patch``."""
    methods = {"PUT", "PATCH"} if patch else {"PUT"}
    return [
        r
        for r in sim.requests
        if r.service == "arm"
        and r.method in methods
        and (cluster_id is None or r.path.lower() == cluster_id.lower())
        and (not accepted or r.status < 300)
    ]


@dataclass
class World:
    """A vault with key ``cmk`` (version ``v1``) used by CMK ``clusters`` in fresh ``subscriptions``.

    Each subscription has its own key identity ``id-cmk`` (``identities``). Optional: ``other_identity``
    (in the first subscription), ``other_cluster`` on key ``other`` (version ``other_version``) of the
    same vault, and a service-managed ``plain_cluster``.
    """

    sim: Simulator
    vault: str
    vault_url: str
    subscriptions: list[str]
    v1: str
    identities: dict[str, str]
    clusters: list[str]
    other_identity: str | None = None
    other_cluster: str | None = None
    other_version: str | None = None
    plain_cluster: str | None = None

    @property
    def subscription(self) -> str:
        """The first subscription (the vault's)."""
        return self.subscriptions[0]

    @property
    def identity(self) -> str:
        """The key identity of the first subscription."""
        return self.identities[self.subscription]

    @property
    def cluster_id(self) -> str:
        """The first cluster."""
        return self.clusters[0]

    @property
    def vault_id(self) -> str:
        """The vault's ARM id."""
        return self.sim.vault_arm_id(self.vault)

    @property
    def principal(self) -> str:
        """The principal id of the first subscription's key identity."""
        return self.sim.principal_id(self.identity)

    def key_url(self, version: str | None = None, *, key: str = KEY, vault: str | None = None) -> str:
        """The URL of a version of ``key`` (versionless for None), in the world's vault unless named."""
        return self.sim.key_url(vault or self.vault, key, version)

    def new_version(self, **kw: Any) -> str:
        """A new version of ``cmk`` (attributes as `Simulator.create_key_version`), no event."""
        return self.sim.create_key_version(self.vault, KEY, emit_event=False, **kw)

    def new_version_event(self) -> tuple[str, dict[str, Any]]:
        """A new version of ``cmk`` and the Key Vault event it emitted."""
        version = self.sim.create_key_version(self.vault, KEY)
        event = self.sim.events[-1]
        assert event["data"]["Version"] == version
        return version, event

    def cluster(self, cluster_id: str | None = None) -> dict[str, Any]:
        """The ARM JSON of a cluster (the first by default)."""
        return self.sim.cluster(cluster_id or self.cluster_id)

    def key_of(self, cluster_id: str | None = None) -> str:
        """The key URL a cluster (the first by default) is encrypted with."""
        return cmk_url(self.cluster(cluster_id))

    def version_of(self, cluster_id: str | None = None) -> str:
        """The key version a cluster (the first by default) is encrypted with."""
        return self.key_of(cluster_id).rsplit("/", 1)[-1]

    def puts(self, cluster_id: str | None = None, **kw: Any) -> list[RequestRecord]:
        """`puts` on the world's simulator."""
        return puts(self.sim, cluster_id, **kw)

    def point_at(self, **version_kw: Any) -> str:
        """A new version (with these attributes) that the first cluster is then pointed at, out of band."""
        version = self.new_version(**version_kw)
        self.sim.set_cluster_key_url(self.cluster_id, self.key_url(version))
        return version

    def rbac_off(self, *permissions: str) -> None:
        """The vault uses access policies; the key identity gets ``permissions`` when any are given."""
        self.sim.set_vault_properties(self.vault, enable_rbac_authorization=False)
        if permissions:
            self.sim.add_access_policy(self.vault, self.principal, list(permissions))

    def fail(self, path_contains: str, *, service: str = "arm", times: int = 3) -> None:
        """The next ``times`` matching requests answer 503."""
        self.sim.inject(service=service, path_contains=path_contains, faults=[Fault.status(503)] * times)

    def put_body(self, key_url: str | None = None, identity: str | None = None) -> dict[str, Any]:
        """The documented PUT body for the first cluster (on ``v1`` and the key identity by default)."""
        uami = identity or self.identity
        return {
            "identity": {"type": "UserAssigned", "userAssignedIdentities": {uami: {}}},
            "location": "westeurope",
            "properties": {
                "encryption": {
                    "customerManagedKeyEncryption": {
                        "keyEncryptionKeyIdentity": {
                            "identityType": "UserAssignedIdentity",
                            "userAssignedIdentityResourceId": uami,
                        },
                        "keyEncryptionKeyUrl": key_url or self.key_url(self.v1),
                    }
                }
            },
        }


def make_world(
    sim: Simulator,
    *,
    subscriptions: int = 1,
    per_subscription: int = 1,
    name: str = "db-{i}",
    resource_group: str = "rg-data",
    tags: dict[str, str] | None = None,
    other_identity: str | None = None,
    attach_other_identity: bool = False,
    other_key: bool = False,
    plain_cluster: bool = False,
    identity_type: str = "UserAssigned",
) -> World:
    """Seed a `World` in the simulator; its request log is then emptied.

    ``name`` is formatted with ``i``, the cluster's index in its subscription. ``other_identity`` names a
    second identity in the first subscription (attached to every cluster with ``attach_other_identity``).
    """
    subs = [str(uuid.uuid4()) for _ in range(subscriptions)]
    MADE_SUBSCRIPTIONS.update(subs)
    vault = f"kv-{uuid.uuid4().hex[:12]}"
    keys = [{"vault": vault, "name": KEY}] + ([{"vault": vault, "name": OTHER_KEY}] if other_key else [])
    seeded = sim.seed({"vaults": [{"name": vault, "subscription": subs[0]}], "keys": keys})
    [v1] = seeded["keys"][f"{vault}/{KEY}"]
    other_version = seeded["keys"][f"{vault}/{OTHER_KEY}"][0] if other_key else None
    identities: dict[str, str] = {}
    clusters: list[str] = []
    extras: dict[str, str | None] = {}
    for n, sub in enumerate(subs):
        first = n == 0
        spec_identities = [{"subscription": sub, "resource_group": resource_group, "name": "id-cmk"}]
        if first and other_identity:
            spec_identities.append(
                {"subscription": sub, "resource_group": resource_group, "name": other_identity}
            )
        spec_clusters: list[dict[str, Any]] = [
            {
                "subscription": sub,
                "resource_group": resource_group,
                "name": name.format(i=i),
                "key": {"vault": vault, "name": KEY},
                "identity": "id-cmk",
                "extra_identities": [other_identity] if first and attach_other_identity else [],
                "tags": dict(tags or {}),
                "identity_type": identity_type,
            }
            for i in range(per_subscription)
        ]
        if first and other_key:
            spec_clusters.append(
                {
                    "subscription": sub,
                    "resource_group": "rg-other",
                    "name": "other-key",
                    "key": {"vault": vault, "name": OTHER_KEY},
                    "identity": "id-cmk",
                }
            )
        if first and plain_cluster:
            spec_clusters.append({"subscription": sub, "resource_group": resource_group, "name": "plain"})
        made = sim.seed({"identities": spec_identities, "clusters": spec_clusters})
        identities[sub] = made["identities"]["id-cmk"]
        clusters += [made["clusters"][name.format(i=i)] for i in range(per_subscription)]
        if first:
            extras = {
                "other_identity": made["identities"].get(other_identity) if other_identity else None,
                "other_cluster": made["clusters"].get("other-key"),
                "plain_cluster": made["clusters"].get("plain"),
            }
    sim.clear_requests()
    return World(
        sim,
        vault,
        seeded["vaults"][vault],
        subs,
        v1,
        identities,
        clusters,
        other_version=other_version,
        **extras,
    )
