"""Signals that tell the truth: doctor's fixes and --problems, an unusable newest version, history by default."""

from __future__ import annotations

import json
import shlex
import time

import pytest

from rotation.service.reconcile import Reconciler
from tests.helpers.cli import run_cli
from tests.helpers.world import make_world

DAY = 86400


def doctor_cli(*args: str, env: dict[str, str] | None = None):
    """`rotation doctor ARGS` with two attempts per call."""
    return run_cli("doctor", *args, env={"ROTATION_RETRY_MAX_ATTEMPTS": "2", **(env or {})})


def test_doctor_prints_the_role_assignment_that_fixes_missing_key_access(sim):
    """A cluster identity without wrap/unwrap on an RBAC vault: the fail line is followed by the exact grant."""
    world = make_world(sim, name="orders-prod")
    sim.remove_role_assignments(world.principal)
    proc = doctor_cli(world.cluster_id, "--json")
    assert proc.returncode == 1, proc.stderr
    [cluster] = json.loads(proc.stdout)["clusters"]
    access = next(c for c in cluster["checks"] if c["check"] == "identity.key_access")
    assert access["status"] == "fail"
    argv = shlex.split(access["fix"])
    assert argv[:4] == ["az", "role", "assignment", "create"]
    options = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert options == {
        "--assignee-object-id": world.principal,
        "--assignee-principal-type": "ServicePrincipal",
        "--role": "Key Vault Crypto Service Encryption User",
        "--scope": world.vault_id,
    }
    assert all("fix" not in c for c in cluster["checks"] if c["status"] == "pass")
    text = doctor_cli(world.cluster_id).stdout.splitlines()
    at = next(i for i, line in enumerate(text) if "identity.key_access" in line)
    assert text[at + 1].strip() == f"fix: {access['fix']}"


def test_doctor_fix_for_an_access_policy_vault_and_purge_protection(sim):
    """On an access-policy vault the fix is `az keyvault set-policy`; purge protection off gets its `az keyvault update`."""
    world = make_world(sim, name="orders-prod")
    world.rbac_off()
    sim.set_vault_properties(world.vault, enable_purge_protection=False)
    proc = doctor_cli(world.cluster_id, "--json")
    checks = {c["check"]: c for c in json.loads(proc.stdout)["clusters"][0]["checks"]}
    assert checks["identity.key_access"]["fix"] == (
        f"az keyvault set-policy --name {world.vault} --object-id {world.principal} "
        "--key-permissions get list wrapKey unwrapKey"
    )
    assert checks["vault.purge_protection"]["fix"] == (
        f"az keyvault update --name {world.vault} --enable-purge-protection true"
    )


def test_doctor_problems_shows_only_warn_and_fail_across_clusters(sim, azurite):
    """`doctor --problems` over every watched cluster prints only the clusters with a warn/fail, only those lines."""
    env = {"AzureWebJobsStorage": azurite.connection_string}
    healthy, broken = make_world(sim, name="orders-prod"), make_world(sim, name="orders-prod")
    for world in (healthy, broken):
        assert run_cli("register", world.cluster_id, env=env).returncode == 0
    sim.set_vault_properties(broken.vault, enable_purge_protection=False)
    proc = doctor_cli("--problems", env=env)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert healthy.cluster_id not in lines
    at = lines.index(broken.cluster_id)
    assert lines[at + 1].split()[:2] == ["FAIL", "vault.purge_protection"]
    assert lines[at + 2].strip().startswith("fix: az keyvault update")
    assert all(line.split()[0] != "PASS" for line in lines[:-1])
    assert "pass" in lines[-1]  # the summary still counts every check
    doc = json.loads(doctor_cli("--problems", "--json", env=env).stdout)
    mine = [c for c in doc["clusters"] if c["cluster_id"] in {healthy.cluster_id, broken.cluster_id}]
    assert [c["cluster_id"] for c in mine] == [broken.cluster_id]
    assert {c["status"] for c in mine[0]["checks"]} == {"fail"}


@pytest.mark.parametrize(
    ("attributes", "why"),
    [
        ({"enabled": False}, "key version is disabled"),
        ({"nbf": int(time.time()) + DAY}, "not active until"),
        ({"exp": int(time.time()) - 60}, "expired at"),
    ],
)
async def test_reconcile_warns_when_the_newest_version_is_not_usable(stack, caplog, attributes, why):
    """Reconcile reports a newest version that exists but is not usable as a WARNING naming its URL; no job."""
    key, v1 = stack.new_key()
    cluster = stack.add_cluster(key, v1)
    await stack.register(cluster)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False, **attributes)
    report = await Reconciler(stack.service).run()
    [line] = report.clusters
    url = stack.sim.key_url(stack.vault, key, v2)
    assert (line.action, line.drift, line.level) == ("up-to-date", "key-not-usable", "WARNING")
    assert url in line.detail
    assert why in line.detail
    assert await stack.queued() == []
    [logged] = [r for r in caplog.records if r.getMessage() == "rotation.drift_detected"]
    assert (logged.levelname, logged.reason) == ("WARNING", "key-not-usable")
    assert url in logged.detail


def test_rotate_dry_run_warns_about_an_unusable_newest_version(sim):
    """`rotate --dry-run` on a cluster whose key's newest version is disabled warns on stderr, naming the URL."""
    world = make_world(sim, name="orders-prod")
    v2 = sim.create_key_version(world.vault, "cmk", emit_event=False, enabled=False)
    proc = run_cli("rotate", world.cluster_id, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "already-current"
    url = sim.key_url(world.vault, "cmk", v2)
    [warning] = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warning.startswith(f"warning: newest version {url} is not usable (key version is disabled)")
    assert "rotation.key_newest_not_usable" in proc.stderr


def test_key_not_usable_reason_names_the_target_url(sim):
    """A refused target (disabled version): outcome key-not-usable, exit 1, and the reason starts with the URL."""
    world = make_world(sim, name="orders-prod")
    v2 = sim.create_key_version(world.vault, "cmk", emit_event=False, enabled=False)
    url = sim.key_url(world.vault, "cmk", v2)
    proc = run_cli("rotate", world.cluster_id, "--key-url", url, "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["outcome"] == "key-not-usable"
    assert doc["reason"] == f"{url}: key version is disabled"


def test_history_shows_changes_and_failures_with_the_arm_message(sim, azurite):
    """`history` text shows rotations and failures (ARM's code and message); skips with --all; --json keeps all."""
    env = {"AzureWebJobsStorage": azurite.connection_string}
    world = make_world(sim, name="orders-prod")
    cluster = world.cluster_id
    assert run_cli("register", cluster, env=env).returncode == 0
    assert run_cli("rotate", cluster, env=env).returncode == 0  # already-current: a skip
    sim.create_key_version(world.vault, "cmk", emit_event=False)
    assert run_cli("rotate", cluster, "--dry-run", env=env).returncode == 0
    sim.fail_next_operation(
        cluster, code="KeyVaultAccessForbidden", message="Identity cannot access the key."
    )
    assert run_cli("rotate", cluster, env=env).returncode == 1
    assert run_cli("rotate", cluster, env=env).returncode == 0

    text = run_cli("history", cluster, env=env).stdout.splitlines()
    assert [line.split()[2] for line in text[:-1]] == ["rotated", "failed"]
    assert text[1].endswith("operation Failed [KeyVaultAccessForbidden: Identity cannot access the key.]")
    assert text[-1] == "(2 skip(s) and dry run(s) not shown; --all shows them)"
    every = run_cli("history", cluster, "--all", env=env).stdout.splitlines()
    assert [line.split()[2] for line in every] == ["rotated", "failed", "dry-run", "already-current"]
    # --json is what scripts read: every entry, as before the text view learnt to hide skips.
    entries = json.loads(run_cli("history", cluster, "--json", env=env).stdout)
    assert [e["outcome"] for e in entries] == ["rotated", "failed", "dry-run", "already-current"]
    assert entries[1]["error_message"] == "Identity cannot access the key."


def test_history_of_only_skips_says_so(sim, azurite):
    """A cluster with only skips in its history says nothing changed, and how to see the skips."""
    env = {"AzureWebJobsStorage": azurite.connection_string}
    world = make_world(sim, name="orders-prod")
    assert run_cli("register", world.cluster_id, env=env).returncode == 0
    assert run_cli("rotate", world.cluster_id, env=env).returncode == 0
    text = run_cli("history", world.cluster_id, env=env).stdout.splitlines()
    assert text == [
        f"nothing changed or failed for {world.cluster_id}",
        "(1 skip(s) and dry run(s) not shown; --all shows them)",
    ]
