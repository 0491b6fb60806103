"""`python -m rotation` as an operator runs it: a subprocess with only the standard settings."""

from __future__ import annotations

import json

import pytest

from azsim.simulator import Simulator
from tests.helpers.cli import run_cli
from tests.helpers.world import make_world


@pytest.fixture
def cmk_cluster(sim: Simulator) -> tuple[str, str, str]:
    """A CMK cluster ``orders`` on v1 of key ``cmk``, whose newest version is v2: (cluster, vault, v2)."""
    world = make_world(sim, name="orders", resource_group="rg")
    return world.cluster_id, world.vault, world.new_version()


def test_rotate_prints_one_line_and_exits_0(sim, cmk_cluster):
    """`rotate CLUSTER_ID` moves the cluster to the newest version, prints one line, exits 0."""
    cluster, vault, v2 = cmk_cluster
    proc = run_cli("rotate", cluster)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("rotated")
    assert v2[:8] in lines[0]
    assert sim.cluster(cluster)["properties"]["encryption"]["customerManagedKeyEncryption"][
        "keyEncryptionKeyUrl"
    ] == sim.key_url(vault, "cmk", v2)
    assert "rotation.cluster_rotated" in proc.stderr


def test_rotate_json_and_explicit_key_url(sim, cmk_cluster):
    """`--json --key-url` prints the outcome record as JSON."""
    cluster, vault, v2 = cmk_cluster
    proc = run_cli("rotate", cluster, "--key-url", sim.key_url(vault, "cmk", v2), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["outcome"] == "rotated"
    assert doc["to_version"] == v2
    assert doc["cluster_id"] == cluster


def test_rotate_dry_run_sends_no_put(sim, cmk_cluster):
    """`--dry-run` prints the body it would send and sends no PUT."""
    cluster, _, v2 = cmk_cluster
    proc = run_cli("rotate", cluster, "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["outcome"] == "dry-run"
    assert doc["body"]["properties"]["encryption"]["customerManagedKeyEncryption"][
        "keyEncryptionKeyUrl"
    ].endswith(v2)
    assert not [r for r in sim.requests if r.method == "PUT"]


def test_missing_cluster_exits_1(sim, cmk_cluster):
    """A cluster that does not exist is refused: exit 1, outcome cluster-not-found."""
    cluster, _, _ = cmk_cluster
    proc = run_cli("rotate", cluster.replace("orders", "nothere"))
    assert proc.returncode == 1
    assert proc.stdout.startswith("cluster-not-found")


@pytest.mark.parametrize(
    "args",
    [
        ("rotate", "/subscriptions/nope"),
        (
            "rotate",
            "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/x",
        ),
        (
            "rotate",
            "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg/providers/Microsoft.DocumentDB/mongoClusters/x1",
            "--key-url",
            "https://evil.example/keys/k/0123456789abcdef0123456789abcdef",
        ),
        ("frobnicate",),
        (),
    ],
    ids=["bad-id", "other-type", "key-url-outside-allowed-vaults", "unknown-command", "no-command"],
)
def test_usage_errors_exit_2_with_one_line(sim, args):
    """Malformed input exits 2 with exactly one line on stderr and no traceback."""
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_bad_setting_exits_2(sim, cmk_cluster):
    """A malformed setting is a usage error naming the setting."""
    cluster, _, _ = cmk_cluster
    proc = run_cli("rotate", cluster, env={"ROTATION_MAX_CONCURRENCY": "many"})
    assert proc.returncode == 2
    assert "ROTATION_MAX_CONCURRENCY" in proc.stderr


def test_json_log_format(sim, cmk_cluster):
    """`--log-format json` writes one JSON object per log line on stderr."""
    cluster, _, _ = cmk_cluster
    proc = run_cli("--log-format", "json", "rotate", cluster)
    assert proc.returncode == 0
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    rotated = [r for r in records if r["event"] == "rotation.cluster_rotated"]
    assert rotated
    assert rotated[0]["cluster_id"] == cluster
    assert rotated[0]["outcome"] == "rotated"
