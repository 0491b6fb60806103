"""The registry commands of `python -m rotation` as an operator runs them, in a subprocess.

The subprocess gets only the standard settings: the simulator through HTTPS_PROXY, Azurite through
AzureWebJobsStorage.

Effects are read from the simulator's request log and from the CLI's own `list`/`history` output.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from rotation.store.jobs import Job
from tests.helpers.cli import one_error_line
from tests.helpers.world import cmk_url, make_world, puts


async def listed(cli) -> dict[str, dict]:
    """`list --json` (it must exit 0) by cluster id."""
    proc = await cli("list", "--json")
    assert proc.returncode == 0, proc.stderr
    return {row["cluster_id"]: row for row in json.loads(proc.stdout)}


def write(tmp_path: Path, name: str, doc: object) -> str:
    """Write ``doc`` as JSON to a file in ``tmp_path``; its path."""
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


async def test_register_prints_what_it_found_and_reregister_updates_owner(sim, cli):
    """`register` prints vault, key, version and identity; registering again is idempotent and updates owner."""
    world = make_world(sim, subscriptions=1, per_subscription=1, other_key=True)
    [cluster] = world.clusters
    proc = await cli("register", cluster, "--owner", "team-a")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.splitlines()[0] == f"watching {cluster}"
    assert f"https://{world.vault}.vault.azure.net" in out
    assert "key      cmk" in out
    assert f"version  {world.v1}" in out
    assert world.identities[world.subscriptions[0]] in out
    assert "owner    team-a" in out

    proc = await cli("register", cluster, "--owner", "team-b", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["owner"] == "team-b"
    rows = await listed(cli)
    assert rows[cluster]["owner"] == "team-b"
    assert rows[cluster]["current_version"] == world.v1
    assert [r for r in rows.values() if r["key"] == f"{world.vault}.vault.azure.net/cmk"] == [rows[cluster]]
    assert puts(sim) == []


async def test_register_refuses_with_one_line(sim, cli):
    """A missing or service-managed cluster is refused: exit 1, one error line, nothing recorded."""
    world = make_world(sim, subscriptions=1, per_subscription=1, other_key=True)
    plain = sim.add_cluster(subscription=world.subscriptions[0], resource_group="rg-data", name="plain-db")
    missing = plain.replace("plain-db", "gone-db")
    refused = await asyncio.gather(cli("register", missing), cli("register", plain))
    for proc, words in zip(refused, ("cluster not found", "not-cmk"), strict=True):
        assert proc.returncode == 1
        line = one_error_line(proc)
        assert line.startswith("error: refused: ")
        assert words in line
        assert proc.stdout == ""
    rows = await cli.rows()
    assert plain not in rows
    assert missing not in rows


async def test_list_table_unregister_and_discover(sim, cli):
    """`list` shows a watched row, `discover` marks watched and not watched, `unregister` removes it."""
    world = make_world(sim, subscriptions=1, per_subscription=2, other_key=True)
    watched, unwatched = world.clusters
    sim.add_cluster(subscription=world.subscriptions[0], resource_group="rg-data", name="plain-db")
    await cli.register(watched)

    proc, discovered = await asyncio.gather(
        cli("list"), cli("discover", "--subscription", world.subscriptions[0])
    )
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split()[:6] == ["CLUSTER", "KEY", "VERSION", "STATE", "LAST", "OUTCOME"]
    [row] = [r for r in rows if r.endswith(watched)]
    assert row.split()[:4] == ["db-0", f"{world.vault}.vault.azure.net/cmk", world.v1[:8], "watching"]
    assert not [r for r in rows if r.endswith(unwatched)]

    assert discovered.returncode == 0, discovered.stderr
    lines = discovered.stdout.splitlines()
    assert any(line.startswith("watched") and watched in line for line in lines)
    assert any(line.startswith("NOT WATCHED") and unwatched in line for line in lines)
    assert not any(world.other_cluster in line and line.startswith("watched") for line in lines)
    assert lines[-1] == "3 CMK cluster(s), 1 watched, 1 service-managed not shown"

    proc = await cli("unregister", watched)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"unregistered {watched}")
    assert watched not in await cli.rows()


def _deadletter(event: dict) -> dict:
    return {
        **event,
        "deadLetterReason": "MaxDeliveryAttemptsExceeded",
        "deliveryAttempts": 30,
        "lastDeliveryOutcome": "Probation",
        "lastHttpStatusCode": 500,
        "publishTime": event["eventTime"],
        "lastDeliveryAttemptTime": event["eventTime"],
    }


@pytest.mark.parametrize("schema", ["eventgrid", "cloudevents", "deadletter"])
async def test_replay_rotates_every_watched_cluster(sim, cli, tmp_path, schema):
    """`replay FILE` (any schema, dead-letter records) rotates each watched cluster: one line per cluster."""
    world = make_world(sim, subscriptions=2, per_subscription=1, other_key=True)
    await cli.register(*world.clusters, world.other_cluster)
    v2, event = world.new_version_event()
    doc = {"eventgrid": [event], "cloudevents": sim.to_cloud_event(event), "deadletter": [_deadletter(event)]}
    sim.clear_requests()
    proc = await cli("replay", write(tmp_path, "events.json", doc[schema]))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(world.clusters)
    for cluster in world.clusters:
        [line] = [line for line in lines if f" {cluster} " in line]
        assert line.startswith(f"event={event['id']} rotated")
        assert v2[:8] in line
        assert cmk_url(sim.cluster(cluster)) == world.key_url(v2)
        assert len(puts(sim, cluster)) == 1
    assert puts(sim, world.other_cluster) == []

    for cluster in world.clusters:
        [entry] = await cli.history(cluster)
        assert (entry.outcome, entry.trigger, entry.event_id) == ("rotated", "replay", event["id"])


async def test_replay_dry_run_sends_no_put(sim, cli, tmp_path):
    """`replay --dry-run` reports dry-run for each cluster and sends no PUT."""
    world = make_world(sim, subscriptions=1, per_subscription=2, other_key=True)
    await cli.register(*world.clusters)
    _, event = world.new_version_event()
    sim.clear_requests()
    proc = await cli("replay", "--dry-run", "--json", write(tmp_path, "e.json", event))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert sorted(r["cluster_id"] for r in results) == sorted(world.clusters)
    assert {r["outcome"] for r in results} == {"dry-run"}
    assert puts(sim) == []
    assert all(cmk_url(sim.cluster(c)) == world.key_url(world.v1) for c in world.clusters)


async def test_replay_with_a_rejected_event_still_handles_the_good_one(sim, cli, tmp_path):
    """A file with a malformed event and a good one: the good one is rotated, the bad one reported; exit 2."""
    world = make_world(sim, subscriptions=1, per_subscription=1, other_key=True)
    [cluster] = world.clusters
    await cli.register(cluster)
    v2, event = world.new_version_event()
    bad = json.loads(json.dumps(event))
    bad["id"] = str(uuid.uuid4())
    bad["data"]["Id"] = bad["data"]["Id"].replace(".vault.azure.net", ".vault.evil.example")
    proc = await cli("replay", write(tmp_path, "mixed.json", [bad, event]))
    assert proc.returncode == 2
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"event={bad['id']} rejected: ")
    assert lines[1].startswith(f"event={event['id']} rotated")
    assert cmk_url(sim.cluster(cluster)) == world.key_url(v2)
    assert [r.host for r in sim.requests if r.service == "kv" and "evil" in r.host] == []


async def test_replay_of_a_file_that_is_not_json_exits_2(sim, cli, tmp_path):
    """`replay` of a file that is not JSON exits 2 with one error line and touches nothing."""
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    proc = await cli("replay", str(path))
    assert proc.returncode == 2
    assert "is not JSON" in one_error_line(proc)
    assert proc.stdout == ""
    assert sim.requests == []


async def test_rotate_records_history_newest_first(sim, cli):
    """`rotate` with storage configured records history; `history --json` lists it newest first."""
    world = make_world(sim, subscriptions=1, per_subscription=1, other_key=True)
    [cluster] = world.clusters
    await cli.register(cluster)
    await cli.execute(Job.new(cluster, trigger="reconcile"))  # an older entry: already-current on v1
    v2 = sim.create_key_version(world.vault, "cmk", emit_event=False)
    proc = await cli("rotate", cluster)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("rotated")
    assert len(puts(sim, cluster)) == 1

    proc, text_proc = await asyncio.gather(
        cli("history", cluster, "--json", "--all"), cli("history", cluster, "--all")
    )
    row = (await cli.rows())[cluster]
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)
    assert [e["outcome"] for e in entries] == ["rotated", "already-current"]
    assert [e["trigger"] for e in entries] == ["manual", "reconcile"]
    assert entries[0]["at"] >= entries[1]["at"]
    assert (entries[0]["from_version"], entries[0]["to_version"]) == (world.v1, v2)
    assert (row.last_outcome, row.current_version) == ("rotated", v2)
    text = text_proc.stdout.splitlines()
    assert text[0].split()[2:4] == ["rotated", "manual"]
    assert text[1].split()[2:4] == ["already-current", "reconcile"]
