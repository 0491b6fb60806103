"""`rotation doctor` against the simulator (real ARM pipeline, KeyClient and credential over TLS).

Every check has a pass, warn and fail case below, except those with no warn state: `cluster.cmk`,
`identity.attached`, `identity.region`, `key.type`, `key.enabled`, `key.active`, `key.operations` (pure
facts of one read already reported elsewhere when it fails) and `rotator.cluster_read` (a transient cluster
read is reported as `cluster.exists` warn). `cluster.exists`, `vault.soft_delete`, `vault.purge_protection`,
`vault.region`, `identity.exists` and `key.exists` warn only when they could not be checked.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable

import pytest

from azsim.simulator import Simulator
from rotation.doctor.checks import CHECKS, Doctor
from rotation.doctor.report import Status, format_report
from rotation.service import http_api
from rotation.service.runtime import Runtime
from rotation.settings import RetrySettings, Settings
from tests.helpers.world import World, make_world

FAST_RETRY = RetrySettings(max_attempts=3, max_seconds=10, initial_wait=0.01, max_wait=0.05)
DAY = 86400
CRYPTO_OFFICER = "14b46e9e-c2b7-41b4-b07b-48a6ebf60603"
KV_READER = "21090545-7ca7-4776-b22c-e363652d74d2"
SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"


@pytest.fixture
def world(sim: Simulator) -> World:
    """A vault with key ``cmk``, the key identity and the CMK cluster ``orders-prod`` on v1."""
    return make_world(sim, name="orders-prod")


@pytest.fixture
async def doctor(sim: Simulator):
    """A Doctor on a runtime with fast retries."""
    runtime = Runtime.create(Settings(retry=FAST_RETRY))
    async with Doctor.for_runtime(runtime) as doc:
        yield doc
    await runtime.close()


# ---- setups: each changes the world and returns the cluster to check (None: the world's cluster) ----


def unchanged(_w: World) -> None:
    """Leave the world as it is."""


def policy_on_rbac_vault(w: World) -> None:
    """Access policies for the key identity on a vault that uses RBAC, and no role."""
    w.sim.remove_role_assignments(w.principal)
    w.sim.add_access_policy(w.vault, w.principal, ["get", "wrapKey", "unwrapKey"])


def policy_with_expiring_key(rotation: dict, days: int) -> Callable[[World], None]:
    """A setup: the key gets this rotation policy and the cluster a version expiring in ``days``."""

    def setup(w: World) -> None:
        w.sim.set_key_rotation_policy(w.vault, "cmk", policy(rotation))
        w.point_at(exp=int(time.time()) + days * DAY)

    return setup


def plain_cluster(w: World) -> str:
    """A service-managed cluster beside the world's, to check instead."""
    return w.sim.add_cluster(subscription=w.subscription, resource_group="rg-data", name="plain-db")


def other_key_identity(w: World) -> None:
    """The cluster's only identity becomes one that is not its key identity."""
    other = w.sim.add_identity(subscription=w.subscription, resource_group="rg-data", name="id-other")
    w.sim.set_cluster_identities(w.cluster_id, [other])


def custom_role(w: World, data: list[str], not_data: list[str] | None = None) -> None:
    """The key identity's only role is a custom one with these data actions."""
    w.sim.remove_role_assignments(w.principal)
    role = w.sim.add_role_definition("custom", data_actions=data, not_data_actions=not_data)
    w.sim.add_role_assignment(w.vault_id, w.principal, role)


def only_role_at(
    w: World, scope: str, role: str = SERVICE_ENCRYPTION_USER, condition: str | None = None
) -> None:
    """The key identity's only role assignment is ``role`` at ``scope`` (with a condition when given)."""
    w.sim.remove_role_assignments(w.principal)
    w.sim.add_role_assignment(scope, w.principal, role, condition=condition)


def policy(*actions: dict) -> dict:
    """A key rotation policy with these lifetime actions and a one-year expiry."""
    return {"lifetimeActions": list(actions), "attributes": {"expiryTime": "P1Y"}}


ROTATE_90 = {"trigger": {"timeAfterCreate": "P90D"}, "action": {"type": "Rotate"}}
ROTATE_400 = {"trigger": {"timeAfterCreate": "P400D"}, "action": {"type": "Rotate"}}
ROTATE_BEFORE = {"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Rotate"}}
NOTIFY = {"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}


Setup = Callable[[World], "str | None"]
CASES: list[tuple[str, Setup, str, Status, str]] = [
    # cluster.exists
    ("cluster-found", unchanged, "cluster.exists", Status.PASS, "orders-prod found in westeurope"),
    ("cluster-503", lambda w: w.fail("mongoClusters/orders-prod"), "cluster.exists", Status.WARN, "could not check: arm 503"),
    ("cluster-gone", lambda w: w.sim.remove_cluster(w.cluster_id), "cluster.exists", Status.FAIL, "not found"),
    # cluster.status
    ("status-ready", unchanged, "cluster.status", Status.PASS, "Ready"),
    ("status-updating", lambda w: w.sim.set_cluster_status(w.cluster_id, "Updating"), "cluster.status", Status.WARN, "Updating, not Ready"),
    ("status-inaccessible", lambda w: w.sim.set_cluster_status(w.cluster_id, "Inaccessible"), "cluster.status", Status.FAIL, "Inaccessible"),
    # cluster.cmk (no warn state)
    ("cmk", unchanged, "cluster.cmk", Status.PASS, "through identity id-cmk"),
    ("not-cmk", plain_cluster, "cluster.cmk", Status.FAIL, "not encrypted with a customer-managed key"),
    # cluster.key_url
    ("key-url-versioned", unchanged, "cluster.key_url", Status.PASS, "versioned"),
    ("key-url-versionless", lambda w: w.sim.set_cluster_key_url(w.cluster_id, w.sim.key_url(w.vault, "cmk")), "cluster.key_url", Status.PASS, "versionless"),
    ("key-url-behind", lambda w: w.sim.create_key_version(w.vault, "cmk", emit_event=False) and None, "cluster.key_url", Status.WARN, "newer usable version"),
    ("key-url-foreign", lambda w: w.sim.set_cluster_key_url(w.cluster_id, f"https://kv.evil.example/keys/cmk/{w.v1}"), "cluster.key_url", Status.FAIL, "allowed"),
    # vault.exists
    ("vault-found", unchanged, "vault.exists", Status.PASS, "in westeurope"),
    ("vault-hidden", lambda w: w.sim.deny(service="arm", path_contains=f"vaults/{w.vault}"), "vault.exists", Status.WARN, "not visible in ARM"),
    ("vault-503", lambda w: w.fail(f"vaults/{w.vault}"), "vault.exists", Status.WARN, "could not check"),
    ("vault-gone", lambda w: w.sim.set_cluster_key_url(w.cluster_id, f"https://kv-gone-{w.vault[3:]}.vault.azure.net/keys/cmk/{w.v1}"), "vault.exists", Status.FAIL, "does not exist"),
    # vault.soft_delete
    ("soft-delete-on", unchanged, "vault.soft_delete", Status.PASS, "on"),
    ("soft-delete-503", lambda w: w.fail(f"vaults/{w.vault}"), "vault.soft_delete", Status.WARN, "could not check"),
    ("soft-delete-off", lambda w: w.sim.set_vault_properties(w.vault, enable_soft_delete=False), "vault.soft_delete", Status.FAIL, "off"),
    # vault.purge_protection
    ("purge-on", unchanged, "vault.purge_protection", Status.PASS, "on"),
    ("purge-503", lambda w: w.fail(f"vaults/{w.vault}"), "vault.purge_protection", Status.WARN, "could not check"),
    ("purge-off", lambda w: w.sim.set_vault_properties(w.vault, enable_purge_protection=False), "vault.purge_protection", Status.FAIL, "off"),
    # vault.region
    ("vault-region-same", unchanged, "vault.region", Status.PASS, "westeurope"),
    ("vault-region-503", lambda w: w.fail(f"vaults/{w.vault}"), "vault.region", Status.WARN, "could not check"),
    ("vault-region-other", lambda w: w.sim.set_vault_properties(w.vault, location="northeurope"), "vault.region", Status.FAIL, "northeurope"),
    # vault.network
    ("network-open", unchanged, "vault.network", Status.PASS, "allows all networks"),
    ("network-trusted", lambda w: w.sim.set_vault_properties(w.vault, network_default_action="Deny", public_network_access="Disabled"), "vault.network", Status.PASS, "trusted-services bypass"),
    ("network-ip-rules", lambda w: w.sim.set_vault_properties(w.vault, network_default_action="Deny", network_bypass="None", ip_rules=["203.0.113.0/24"]), "vault.network", Status.WARN, "1 IP"),
    ("network-closed", lambda w: w.sim.set_vault_properties(w.vault, public_network_access="Disabled", network_bypass="None"), "vault.network", Status.FAIL, "public network access is disabled"),
    # identity.exists
    ("identity-found", unchanged, "identity.exists", Status.PASS, "id-cmk"),
    ("identity-denied", lambda w: w.sim.deny(service="arm", path_contains="userAssignedIdentities/"), "identity.exists", Status.WARN, "may not read the identity"),
    ("identity-gone", lambda w: w.sim.remove_identity(w.identity), "identity.exists", Status.FAIL, "does not exist"),
    # identity.attached (no warn state)
    ("identity-attached", unchanged, "identity.attached", Status.PASS, "attached"),
    ("identity-detached", other_key_identity, "identity.attached", Status.FAIL, "not among"),
    # identity.region (no warn state)
    ("identity-region-same", unchanged, "identity.region", Status.PASS, "westeurope"),
    ("identity-region-other", lambda w: w.sim.set_identity_location(w.identity, "eastus"), "identity.region", Status.FAIL, "eastus"),
    # identity.key_access
    ("access-rbac", unchanged, "identity.key_access", Status.PASS, "Crypto Service Encryption User on the vault"),
    ("access-rbac-key-scope", lambda w: only_role_at(w, w.vault_id + "/keys/cmk"), "identity.key_access", Status.PASS, "on the key"),
    ("access-broader-role", lambda w: only_role_at(w, f"/subscriptions/{w.subscription}", CRYPTO_OFFICER), "identity.key_access", Status.PASS, "Key Vault Crypto Officer"),
    ("access-policy", lambda w: w.rbac_off("get", "list", "wrapKey", "unwrapKey"), "identity.key_access", Status.PASS, "access policy grants"),
    ("access-condition", lambda w: only_role_at(w, w.vault_id, condition="@Resource[name] StringEquals 'x'"), "identity.key_access", Status.WARN, "condition"),
    ("access-policy-no-list", lambda w: w.rbac_off("get", "wrapKey", "unwrapKey"), "identity.key_access", Status.WARN, "not list"),
    ("access-rbac-denied", lambda w: w.sim.deny(service="arm", path_contains="roleAssignments"), "identity.key_access", Status.WARN, "may not read role assignments"),
    ("access-none", lambda w: w.sim.remove_role_assignments(w.principal), "identity.key_access", Status.FAIL, "no role with wrapKey and unwrapKey"),
    ("access-other-key", lambda w: only_role_at(w, w.vault_id + "/keys/other"), "identity.key_access", Status.FAIL, "no role"),
    ("access-reader-only", lambda w: only_role_at(w, w.vault_id, KV_READER), "identity.key_access", Status.FAIL, "no role"),
    ("access-not-data-action", lambda w: custom_role(w, ["Microsoft.KeyVault/vaults/keys/*"], ["Microsoft.KeyVault/vaults/keys/unwrap/action"]), "identity.key_access", Status.FAIL, "no role"),
    ("access-policy-no-wrap", lambda w: w.rbac_off("get", "list", "unwrapKey"), "identity.key_access", Status.FAIL, "lacks wrapkey"),
    ("access-policy-on-rbac-vault", policy_on_rbac_vault, "identity.key_access", Status.FAIL, "has no effect"),
    # key.exists
    ("key-found", unchanged, "key.exists", Status.PASS, "(in use)"),
    ("key-503", lambda w: w.fail(f"/keys/cmk/{w.v1}", service="kv"), "key.exists", Status.WARN, "could not check"),
    ("key-version-gone", lambda w: w.sim.set_cluster_key_url(w.cluster_id, w.sim.key_url(w.vault, "cmk", "0" * 32)), "key.exists", Status.FAIL, "does not exist"),
    # key.type (no warn state)
    ("key-rsa-3072", lambda w: w.point_at(size=3072) and None, "key.type", Status.PASS, "RSA 3072"),
    ("key-rsa-1024", lambda w: w.point_at(size=1024) and None, "key.type", Status.FAIL, "RSA 1024"),
    ("key-ec", lambda w: w.point_at(kty="EC") and None, "key.type", Status.FAIL, "EC"),
    # key.enabled (no warn state)
    ("key-enabled", unchanged, "key.enabled", Status.PASS, "enabled"),
    ("key-disabled", lambda w: w.sim.update_key_version(w.vault, "cmk", w.v1, enabled=False), "key.enabled", Status.FAIL, "disabled"),
    # key.active (no warn state)
    ("key-active-since", lambda w: w.point_at(nbf=int(time.time()) - DAY) and None, "key.active", Status.PASS, "active since"),
    ("key-not-yet-active", lambda w: w.point_at(nbf=int(time.time()) + DAY) and None, "key.active", Status.FAIL, "not active until"),
    # key.operations (no warn state)
    ("key-wraps", unchanged, "key.operations", Status.PASS, "wrapKey and unwrapKey allowed"),
    ("key-no-wrap", lambda w: w.point_at(ops=["encrypt", "decrypt", "unwrapKey"]) and None, "key.operations", Status.FAIL, "does not allow wrapKey"),
    # key.expiry
    ("expiry-far", lambda w: w.point_at(exp=int(time.time()) + 200 * DAY) and None, "key.expiry", Status.PASS, "in 199 days"),
    ("expiry-soon", lambda w: w.point_at(exp=int(time.time()) + 10 * DAY) and None, "key.expiry", Status.WARN, "in 9 day(s)"),
    ("expired", lambda w: w.point_at(exp=int(time.time()) - DAY) and None, "key.expiry", Status.FAIL, "expired"),
    # key.newest: a newest version that exists but is not usable (warn; rule 3 keeps the cluster where it is)
    ("newest-in-use", unchanged, "key.newest", Status.PASS, "is the one in use"),
    ("newest-usable-not-yet-used", lambda w: w.sim.create_key_version(w.vault, "cmk", emit_event=False) and None, "key.newest", Status.PASS, "is usable"),
    ("newest-disabled", lambda w: w.sim.create_key_version(w.vault, "cmk", emit_event=False, enabled=False) and None, "key.newest", Status.WARN, "is not usable (key version is disabled)"),
    ("newest-not-active", lambda w: w.sim.create_key_version(w.vault, "cmk", emit_event=False, nbf=int(time.time()) + DAY) and None, "key.newest", Status.WARN, "not active until"),
    ("newest-expired", lambda w: w.sim.create_key_version(w.vault, "cmk", emit_event=False, exp=int(time.time()) - 60) and None, "key.newest", Status.WARN, "expired at"),
    ("newest-no-unwrap", lambda w: w.sim.create_key_version(w.vault, "cmk", emit_event=False, ops=["wrapKey"]) and None, "key.newest", Status.WARN, "does not allow unwrapKey"),
    # key.rotation_policy
    ("policy-rotates", unchanged, "key.rotation_policy", Status.PASS, "rotates P90D after creation; next rotation"),
    ("policy-before-expiry", policy_with_expiring_key(ROTATE_BEFORE, 200), "key.rotation_policy", Status.PASS, "P30D before expiry; next rotation"),
    ("policy-none", lambda w: w.sim.set_key_rotation_policy(w.vault, "cmk", None), "key.rotation_policy", Status.WARN, "no rotation policy"),
    ("policy-notify-only", lambda w: w.sim.set_key_rotation_policy(w.vault, "cmk", policy(NOTIFY)), "key.rotation_policy", Status.WARN, "only notifies"),
    ("policy-never-triggers", lambda w: w.sim.set_key_rotation_policy(w.vault, "cmk", policy(ROTATE_BEFORE)), "key.rotation_policy", Status.WARN, "never rotates"),
    ("policy-denied", lambda w: w.sim.deny(service="kv", path_contains="/rotationpolicy"), "key.rotation_policy", Status.WARN, "may not read the rotation policy"),
    ("policy-too-late", policy_with_expiring_key(ROTATE_400, 100), "key.rotation_policy", Status.FAIL, "after the newest version expires"),
    # rotator.cluster_read (no warn state: a transient read is cluster.exists warn)
    ("rotator-reads-cluster", unchanged, "rotator.cluster_read", Status.PASS, "can read the cluster"),
    ("rotator-cluster-denied", lambda w: w.sim.deny(service="arm", path_contains="mongoClusters/orders-prod"), "rotator.cluster_read", Status.FAIL, "AuthorizationFailed"),
    # rotator.key_read
    ("rotator-reads-key", unchanged, "rotator.key_read", Status.PASS, "can list the key's versions (1)"),
    ("rotator-key-503", lambda w: w.fail("/keys/cmk/versions", service="kv"), "rotator.key_read", Status.WARN, "could not check"),
    ("rotator-key-denied", lambda w: w.sim.deny(service="kv", path_contains="/keys/cmk"), "rotator.key_read", Status.FAIL, "keyvault 403 Forbidden"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_check_states(world, doctor, case):
    """Each check reports the expected pass/warn/fail state with a one-line reason naming why."""
    _, setup, check, status, words = case
    cluster_id = setup(world) or world.cluster_id
    report = await doctor.check(cluster_id)
    found = report.by_check()
    assert check in found, format_report_for(report)
    assert found[check].status is status, found[check]
    assert words.lower() in found[check].reason.lower(), found[check]
    assert "\n" not in found[check].reason


def format_report_for(report) -> str:
    """The findings of a report, one `status check reason` line each."""
    return "\n".join(f"{f.status} {f.check} {f.reason}" for f in report.findings)


def test_every_check_has_pass_and_fail_cases_and_warn_where_one_exists():
    """The table above covers every check in each of its states."""
    no_warn = {"cluster.cmk", "identity.attached", "identity.region", "key.type", "key.enabled", "key.active",
               "key.operations", "rotator.cluster_read"}  # fmt: skip
    no_fail = {"key.newest"}  # a warning by design: the cluster itself is fine
    covered = {(c[2], c[3]) for c in CASES}
    for check in CHECKS:
        expected = {Status.PASS} | (set() if check in no_fail else {Status.FAIL})
        expected |= set() if check in no_warn else {Status.WARN}
        assert {s for name, s in covered if name == check} == expected, check


async def test_fresh_cluster_passes_every_check(world, doctor):
    """A freshly seeded vault, key, identity and cluster pass every check, in the documented order."""
    report = await doctor.check(world.cluster_id)
    assert [f.check for f in report.findings] == list(CHECKS)
    assert {f.status for f in report.findings} == {Status.PASS}, format_report_for(report)
    assert report.status is Status.PASS


async def test_missing_prerequisites_leave_dependent_checks_out(world, doctor):
    """A missing cluster is one failure, not twenty: the checks that depend on it are left out."""
    world.sim.remove_cluster(world.cluster_id)
    report = await doctor.check(world.cluster_id)
    assert [(f.check, f.status) for f in report.findings] == [("cluster.exists", Status.FAIL)]


async def test_transient_errors_are_retried(world, doctor):
    """One 503 on the vault GET is retried and the vault checks pass."""
    world.fail(f"vaults/{world.vault}", times=1)
    report = await doctor.check(world.cluster_id)
    assert report.by_check()["vault.soft_delete"].status is Status.PASS
    vault_gets = [
        r for r in world.sim.requests if r.method == "GET" and r.path.endswith(f"vaults/{world.vault}")
    ]
    assert [r.status for r in vault_gets] == [503, 200]


async def test_reads_are_cached_per_vault_identity_and_key(sim, doctor):
    """Three clusters on one vault, identity and key: the vault, identity, roles, versions and policy are read once."""
    w = make_world(sim, name="orders-prod")
    others = [
        sim.add_cluster(subscription=w.subscription, resource_group="rg-data", name=f"db-{i}",
                        key_url=sim.key_url(w.vault, "cmk", w.v1), identity=w.identity)
        for i in range(2)
    ]  # fmt: skip
    sim.clear_requests()
    report = await doctor.check_many([w.cluster_id, *others])
    assert not report.failed
    reqs = [r for r in sim.requests if r.status != 401]

    def count(pred) -> int:
        return sum(1 for r in reqs if pred(r))

    assert count(lambda r: "ResourceGraph" in r.path) == 1
    assert count(lambda r: r.path.endswith(f"vaults/{w.vault}")) == 1
    assert count(lambda r: "userAssignedIdentities" in r.path) == 1
    assert count(lambda r: "roleAssignments" in r.path) == 1
    assert count(lambda r: r.path.endswith("/versions")) == 1
    assert count(lambda r: r.path.endswith("/rotationpolicy")) == 1
    assert count(lambda r: "mongoClusters" in r.path) == 3


def test_report_table_and_json_shapes():
    """The table has a line per check and a summary; JSON carries status, checks and counts."""
    from rotation.doctor.report import ClusterDiagnosis, DoctorReport, Finding

    report = DoctorReport((ClusterDiagnosis("/c1", (Finding("cluster.exists", Status.PASS, "ok"),
                                                 Finding("key.expiry", Status.WARN, "soon"))),))  # fmt: skip
    lines = format_report(report)
    assert lines[0] == "/c1"
    assert lines[1].split() == ["PASS", "cluster.exists", "ok"]
    assert lines[2].split() == ["WARN", "key.expiry", "soon"]
    assert lines[-1] == "1 cluster(s), 2 checks: 1 pass, 1 warn, 0 fail"
    doc = report.to_dict()
    assert doc["status"] == "warn"
    assert doc["clusters"][0]["checks"][1] == {"check": "key.expiry", "status": "warn", "reason": "soon"}
    assert not report.failed


# ---- the simulator's new endpoints ------------------------------------------------------------------


async def test_rotation_policy_404_when_none(world):
    """The simulator answers GET rotationpolicy with the policy, and 404 when the key has none."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.identity.aio import DefaultAzureCredential
    from azure.keyvault.keys.aio import KeyClient

    async with (
        DefaultAzureCredential() as cred,
        KeyClient(f"https://{world.vault}.vault.azure.net", cred) as kc,
    ):
        got = await kc.get_key_rotation_policy("cmk")
        assert got.expires_in == "P2Y"
        assert next((a.action, a.time_after_create) for a in got.lifetime_actions) == ("Rotate", "P90D")
        assert got.created_on is not None
        world.sim.set_key_rotation_policy(world.vault, "cmk", None)
        with pytest.raises(ResourceNotFoundError):
            await kc.get_key_rotation_policy("cmk")


async def test_arm_reads_shapes(world):
    """Vault (purge protection absent when off), identity, role assignments and definitions in ARM shape."""
    from azure.identity.aio import DefaultAzureCredential

    from rotation.azure.arm_reads import ArmReads

    world.sim.set_vault_properties(world.vault, enable_purge_protection=False)
    async with DefaultAzureCredential() as cred, ArmReads("https://management.azure.com", cred) as arm:
        vault_id = await arm.find_vault(world.vault)
        assert vault_id == world.vault_id
        vault = await arm.get_vault(vault_id)
        assert (vault.soft_delete, vault.purge_protection, vault.rbac_authorization) == (True, False, True)
        identity = await arm.get_identity(world.identity)
        assert identity.principal_id == world.principal
        [assignment] = await arm.role_assignments(vault_id, identity.principal_id)
        assert assignment.scope == vault_id
        definition = await arm.role_definition(assignment.role_definition_id)
        assert definition.role_name == "Key Vault Crypto Service Encryption User"
        assert await arm.find_vault("kv-nothere") is None
        assert await arm.role_assignments(vault_id, str(uuid.uuid4())) == []
    body = next(r for r in world.sim.requests if r.method == "POST").body
    assert "microsoft.keyvault/vaults" in body["query"]


# ---- CLI, HTTP, register and reconcile -------------------------------------------------------------


def run_doctor_cli(*args: str):
    """`rotation doctor ARGS` with JSON logs and two attempts per call."""
    from tests.helpers.cli import run_cli

    return run_cli("--log-format", "json", "doctor", *args, env={"ROTATION_RETRY_MAX_ATTEMPTS": "2"})


def test_cli_table_exit_0(world):
    """`doctor CLUSTER_ID` prints one line per check and exits 0 when nothing fails."""
    proc = run_doctor_cli(world.cluster_id)
    assert proc.returncode == 0, proc.stderr
    arm_line, *lines = proc.stdout.splitlines()
    assert arm_line == "ARM api-version 2025-07-01-preview, write method put"
    assert lines[0] == world.cluster_id
    assert [line.split()[1] for line in lines[1:-1]] == list(CHECKS)
    assert all(line.split()[0] == "PASS" for line in lines[1:-1])
    assert lines[-1] == f"1 cluster(s), {len(CHECKS)} checks: {len(CHECKS)} pass, 0 warn, 0 fail"


def test_cli_json_exit_1_on_fail(world):
    """`doctor --json` exits 1 when a check fails and reports it."""
    world.sim.set_vault_properties(world.vault, enable_purge_protection=False)
    proc = run_doctor_cli(world.cluster_id, "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["arm"] == {"api_version": "2025-07-01-preview", "write_method": "put"}
    assert doc["status"] == "fail"
    [cluster] = doc["clusters"]
    failed = [c for c in cluster["checks"] if c["status"] == "fail"]
    assert [c["check"] for c in failed] == ["vault.purge_protection"]
    assert "Traceback" not in proc.stderr


def test_cli_warn_only_exits_0(world):
    """Warnings alone exit 0."""
    world.sim.set_key_rotation_policy(world.vault, "cmk", None)
    proc = run_doctor_cli(world.cluster_id)
    assert proc.returncode == 0, proc.stderr
    assert any(line.split()[:2] == ["WARN", "key.rotation_policy"] for line in proc.stdout.splitlines())


async def test_http_route_and_register_and_reconcile(world, azurite, sim, caplog):
    """The HTTP route reports one cluster or every watched one; register and reconcile log the findings."""
    from rotation.service.process import Service
    from rotation.service.reconcile import Reconciler

    settings = Settings(storage_connection=azurite.connection_string, retry=FAST_RETRY)
    suffix = uuid.uuid4().hex[:8]
    service = Service.create(
        settings, watch_table=f"w{suffix}", history_table=f"h{suffix}", queue_name=f"jobs-{suffix}"
    )
    try:
        world.sim.set_key_rotation_policy(world.vault, "cmk", None)
        with caplog.at_level(logging.WARNING, logger="rotation"):
            watched, report = await service.registration.register_and_check(world.cluster_id, owner="team")
        assert watched.cluster_id == world.cluster_id
        assert [f.check for f in report.problems()] == ["key.rotation_policy"]
        assert [r.check for r in caplog.records if r.getMessage() == "rotation.doctor_finding"] == [
            "key.rotation_policy"
        ]

        status, doc = await http_api.doctor(service, "GET", {"clusterId": world.cluster_id}, b"")
        assert status == 200
        assert doc["status"] == "warn"
        assert doc["summary"]["warn"] == 1
        status, doc = await http_api.doctor(service, "GET", {}, b"")
        assert (status, [c["cluster_id"] for c in doc["clusters"]]) == (200, [world.cluster_id])
        status, doc = await http_api.doctor(service, "GET", {"clusterId": "/subscriptions/nope"}, b"")
        assert (status, doc["error"]["code"]) == (400, "InvalidClusterId")

        world.sim.set_vault_properties(world.vault, enable_soft_delete=False)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="rotation"):
            await Reconciler(service, doctor=True).run()
        findings = {
            (r.check, r.levelname) for r in caplog.records if r.getMessage() == "rotation.doctor_finding"
        }
        assert findings == {("key.rotation_policy", "WARNING"), ("vault.soft_delete", "ERROR")}
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="rotation"):
            await Reconciler(service).run()
        assert not [r for r in caplog.records if r.getMessage() == "rotation.doctor_finding"]
    finally:
        await service.close()
