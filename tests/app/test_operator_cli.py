"""Commands that finish what they start: reconcile in-process, the poison queue, register, exit codes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import QueueClient

from azsim.simulator import Simulator
from rotation.store.jobs import QUEUE_NAME, Job
from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT
from tests.helpers.world import cmk_url, make_world

POISON = f"{QUEUE_NAME}-poison"


@pytest.fixture
def world(sim: Simulator, azurite):
    """A vault, a key with one version, an identity and one CMK cluster on it; the storage env."""
    made = make_world(sim, resource_group="rg")
    env = {"AzureWebJobsStorage": azurite.connection_string}
    return {
        "sim": sim,
        "vault": made.vault,
        "v1": made.v1,
        "cluster": made.cluster_id,
        "env": env,
        "sub": made.subscription,
    }


@pytest.fixture
def only_this_world(world, azurite):
    """The world, with the CLI's shared registry emptied first: a whole-registry pass sees this test's clusters only."""
    from azure.data.tables import TableClient

    from rotation.store.tables import WATCH_TABLE

    with (
        TableClient.from_connection_string(azurite.connection_string, WATCH_TABLE) as table,
        contextlib.suppress(ResourceNotFoundError),
    ):
        for entity in table.list_entities(select=["PartitionKey", "RowKey"]):
            table.delete_entity(entity["PartitionKey"], entity["RowKey"])
    return world


def kek(sim: Simulator, cluster: str) -> str:
    """The key URL the cluster is encrypted with."""
    return cmk_url(sim.cluster(cluster))


def queue(azurite, name: str) -> QueueClient:
    """A client of a queue in Azurite."""
    return QueueClient.from_connection_string(azurite.connection_string, name)


def queued_jobs_for(azurite, cluster: str) -> list[Job]:
    """Jobs for ``cluster`` now in rotation-jobs (peeked: the queue is left as it is)."""
    with queue(azurite, QUEUE_NAME) as client:
        try:
            messages = client.peek_messages(max_messages=32)
        except ResourceNotFoundError:
            return []
    jobs = [Job.from_json(base64.b64decode(m.content)) for m in messages]
    return [j for j in jobs if j.cluster_id.lower() == cluster.lower()]


def drop_jobs_for(azurite, cluster: str) -> None:
    """Delete ``cluster``'s jobs from rotation-jobs (other tests share the queue)."""
    with queue(azurite, QUEUE_NAME) as client:
        for message in client.receive_messages(max_messages=32, visibility_timeout=5):
            job = Job.from_json(base64.b64decode(message.content))
            if job.cluster_id.lower() == cluster.lower():
                client.delete_message(message)
            else:
                client.update_message(message, visibility_timeout=0)


# ---- reconcile ---------------------------------------------------------------------------------------


def test_reconcile_runs_the_jobs_itself_and_waits(only_this_world, azurite):
    """`reconcile` rotates the clusters behind in this process, queues nothing, and exits 0 when all rotated."""
    world = only_this_world
    sim, cluster, env = world["sim"], world["cluster"], world["env"]
    assert run_cli("register", cluster, env=env).returncode == 0
    v2 = sim.create_key_version(world["vault"], "cmk", emit_event=False)
    proc = run_cli("reconcile", env=env)
    assert proc.returncode == 0, proc.stderr
    assert kek(sim, cluster) == sim.key_url(world["vault"], "cmk", v2)
    row = next(line for line in proc.stdout.splitlines() if cluster.rsplit("/", 1)[-1] in line)
    assert row.split()[4] == "rotated"
    assert proc.stdout.splitlines()[-1].startswith("1 cluster(s), 1 run here (1 rotated), 0 with drift;")
    assert queued_jobs_for(azurite, cluster) == []
    assert "rotate   [" not in proc.stderr  # no progress bar: stderr is not a terminal


def test_reconcile_exits_1_when_a_cluster_fails(only_this_world):
    """A cluster whose operation fails makes `reconcile` exit 1, with the ARM error on its line."""
    world = only_this_world
    sim, cluster, env = world["sim"], world["cluster"], world["env"]
    assert run_cli("register", cluster, env=env).returncode == 0
    sim.create_key_version(world["vault"], "cmk", emit_event=False)
    sim.fail_next_operation(
        cluster, code="KeyVaultAccessForbidden", message="The identity cannot reach the key."
    )
    proc = run_cli("reconcile", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    row = next(line for line in proc.stdout.splitlines() if cluster.rsplit("/", 1)[-1] in line)
    assert row.split()[4] == "failed"
    assert "KeyVaultAccessForbidden" in row
    assert proc.stdout.splitlines()[-1].startswith("1 cluster(s), 1 run here (1 failed), 0 with drift;")


def test_reconcile_enqueue_hands_the_jobs_to_the_queue(world, azurite):
    """`reconcile --enqueue` queues one job per cluster behind for the deployed app and changes no cluster."""
    sim, cluster, env = world["sim"], world["cluster"], world["env"]
    assert run_cli("register", cluster, env=env).returncode == 0
    v2 = sim.create_key_version(world["vault"], "cmk", emit_event=False)
    try:
        proc = run_cli("reconcile", "--enqueue", "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["mode"] == "enqueue"
        assert kek(sim, cluster) == sim.key_url(world["vault"], "cmk", world["v1"])
        [job] = queued_jobs_for(azurite, cluster)
        assert (job.trigger, job.target_key_url) == ("reconcile", sim.key_url(world["vault"], "cmk", v2))
    finally:
        drop_jobs_for(azurite, cluster)


def test_reconcile_dry_run_says_what_it_would_do(only_this_world):
    """`reconcile --dry-run` counts the clusters it would rotate, and says nothing was queued or rotated."""
    world = only_this_world
    sim, cluster, env = world["sim"], world["cluster"], world["env"]
    assert run_cli("register", cluster, env=env).returncode == 0
    sim.create_key_version(world["vault"], "cmk", emit_event=False)
    proc = run_cli("reconcile", "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.splitlines()[-1]
    assert last.startswith("1 cluster(s), 1 would be rotated, 0 with drift;")
    assert "queued" not in last.split("(")[0]
    assert last.endswith("(dry run: nothing rotated, nothing queued)")
    assert kek(sim, cluster) == sim.key_url(world["vault"], "cmk", world["v1"])


def test_progress_bar_only_on_a_terminal():
    """The bar draws `label [###...] done/total` on a terminal and writes nothing to a pipe or file."""
    import io

    from rotation.cli.output import ProgressBar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = ProgressBar("rotate", stream)
        bar(1, 4)
        bar(4, 4)
        bar.close()
    assert "\rrotate [" + "#" * 7 + "." * 23 + "] 1/4" in tty.getvalue()
    assert tty.getvalue().endswith("] 4/4\n")
    assert pipe.getvalue() == ""


# ---- poison ------------------------------------------------------------------------------------------


@pytest.fixture
def poison_queue(azurite):
    """rotation-jobs-poison, emptied before and after (every CLI test shares the account)."""
    with queue(azurite, POISON) as client:
        with contextlib.suppress(ResourceExistsError):
            client.create_queue()
        client.clear_messages()
        yield client
        client.clear_messages()


def poisoned(client: QueueClient, text: str) -> str:
    """Put ``text`` in the poison queue as the host does (base64, the trigger's encoding); its message id."""
    return client.send_message(base64.b64encode(text.encode()).decode()).id


async def record_failure(env: dict[str, str], cluster: str, dequeue_count: int) -> None:
    """A failed delivery in the cluster's history, as the queue worker writes it."""
    from rotation.outcomes import Outcome, RotationResult
    from rotation.service.process import Service
    from rotation.settings import Settings

    service = Service.create(Settings.from_env(env))
    try:
        await service.registry.record(
            RotationResult(
                cluster,
                Outcome.FAILED,
                "retries exhausted (delivery 5 of 5); moved to rotation-jobs-poison: arm 503 ServiceUnavailable",
                error_code="ServiceUnavailable",
                error_message="The service is busy.",
            ),
            trigger="event",
            event_id="ev-1",
            invocation_id="inv",
            dequeue_count=dequeue_count,
        )
    finally:
        await service.close()


async def test_poison_list_retry_and_purge(world, azurite, poison_queue):
    """`poison list` decodes each job with its last error and delivery count; `retry` moves one back; `purge --yes` empties."""
    cluster, env = world["cluster"], world["env"]
    assert run_cli("register", cluster, env=env).returncode == 0
    await record_failure(env, cluster, dequeue_count=5)
    job = Job.new(cluster, trigger="event", target_key_url=None, event_id="ev-1")
    good = poisoned(poison_queue, job.to_json())
    bad = poisoned(poison_queue, "{not json")

    proc = run_cli("poison", "list", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    entries = {e["message_id"]: e for e in doc["jobs"]}
    assert entries[good]["cluster_id"] == cluster
    assert entries[good]["trigger"] == "event"
    assert entries[good]["dequeue_count"] == 5
    assert entries[good]["last_error"]["error_code"] == "ServiceUnavailable"
    assert entries[good]["last_error"]["error_message"] == "The service is busy."
    assert entries[bad]["job"] is None
    assert "not JSON" in entries[bad]["problem"]
    text = run_cli("poison", "list", env=env).stdout
    assert good in text
    assert "dequeue_count=5  last error: [ServiceUnavailable] The service is busy." in text
    assert "2 message(s) in rotation-jobs-poison" in text

    try:
        proc = run_cli("poison", "retry", good, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "1 job(s) moved back to rotation-jobs" in proc.stdout
        [back] = queued_jobs_for(azurite, cluster)
        assert (back.trigger, back.event_id) == ("event", "ev-1")
    finally:
        drop_jobs_for(azurite, cluster)
    left = [m.id for m in poison_queue.peek_messages(max_messages=32)]
    assert left == [bad]

    refused = run_cli("poison", "purge", env=env)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert "--yes" in refused.stderr
    assert [m.id for m in poison_queue.peek_messages(max_messages=32)] == [bad]
    proc = run_cli("poison", "purge", "--yes", env=env)
    assert proc.returncode == 0, proc.stderr
    assert poison_queue.peek_messages(max_messages=32) == []


def test_poison_retry_of_an_unknown_message_exits_1(world, poison_queue):
    """Retrying a message id that is not in the poison queue is a refused request (exit 1), nothing moves."""
    proc = run_cli("poison", "retry", "no-such-message", env=world["env"])
    assert proc.returncode == 1
    assert "not in rotation-jobs-poison: no-such-message" in proc.stderr


def test_purge_asks_on_a_terminal(monkeypatch):
    """On a terminal, purge asks; anything but yes deletes nothing (usage error), yes goes ahead."""
    from rotation.cli import commands
    from rotation.cli.output import UsageError

    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty())
    asked: list[str] = []
    with pytest.raises(UsageError, match="not confirmed"):
        commands._confirm_purge(None, ask=lambda q: asked.append(q) or "n")
    commands._confirm_purge({"a"}, ask=lambda q: asked.append(q) or "yes")
    assert asked[0].startswith("delete every message from rotation-jobs-poison?")
    assert asked[1].startswith("delete 1 selected message(s)")


# ---- register ----------------------------------------------------------------------------------------


def test_register_again_keeps_owner_and_arm_casing(world):
    """Re-registering without --owner keeps the owner; an id typed in another casing is stored as ARM spells it."""
    cluster, env = world["cluster"], world["env"]
    assert run_cli("register", cluster, "--owner", "team-orders", env=env).returncode == 0
    shouted = cluster.replace("/resourceGroups/rg/", "/RESOURCEGROUPS/RG/").replace(
        "/mongoClusters/", "/MONGOCLUSTERS/"
    )
    assert shouted != cluster
    proc = run_cli("register", shouted, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["owner"] == "team-orders"
    assert doc["cluster_id"] == cluster
    mine = [
        w
        for w in json.loads(run_cli("list", "--json", env=env).stdout)
        if w["cluster_id"].lower() == cluster.lower()
    ]
    assert [(w["cluster_id"], w["owner"]) for w in mine] == [(cluster, "team-orders")]


# ---- exit codes and errors ---------------------------------------------------------------------------


def test_refused_rotate_requests_exit_1(world):
    """`rotate` refused for another key, a vault outside the allowed suffixes, or an older version: exit 1."""
    sim, cluster, vault = world["sim"], world["cluster"], world["vault"]
    other = sim.create_key_version(vault, "other", emit_event=False)
    proc = run_cli("rotate", cluster, "--key-url", sim.key_url(vault, "other", other))
    assert (proc.returncode, proc.stdout.split()[0]) == (1, "key-mismatch"), proc.stderr

    foreign = f"https://kv-evil.vault.example.com/keys/cmk/{uuid.uuid4().hex}"
    proc = run_cli("rotate", cluster, "--key-url", foreign)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: refused: key URL host")
    assert "allowed vault domain" in proc.stderr

    v2 = sim.create_key_version(vault, "cmk", emit_event=False)
    assert run_cli("rotate", cluster).returncode == 0
    proc = run_cli("rotate", cluster, "--key-url", sim.key_url(vault, "cmk", world["v1"]))
    assert (proc.returncode, proc.stdout.split()[0]) == (1, "stale-event"), proc.stderr
    assert kek(sim, cluster) == sim.key_url(vault, "cmk", v2)

    malformed = run_cli("rotate", cluster, "--key-url", "https://kv.vault.azure.net/keys/cmk/not-a-version")
    assert malformed.returncode == 2


def test_malformed_storage_setting_is_a_usage_error():
    """A malformed AzureWebJobsStorage is a one-line usage error (exit 2) that does not echo the value."""
    proc = run_cli("list", env={"AzureWebJobsStorage": "AccountName=acct;AccountKey=c2VjcmV0LXZhbHVl;oops"})
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: AzureWebJobsStorage is not a usable connection string")
    assert "c2VjcmV0LXZhbHVl" not in proc.stderr


def test_unreachable_storage_names_the_endpoint():
    """Storage that does not answer: one line naming the endpoint and what to check, exit 1."""
    conn = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
        + base64.b64encode(b"k" * 64).decode()
        + ";TableEndpoint=http://127.0.0.1:9/devstoreaccount1;QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    )
    proc = run_cli("list", env={"AzureWebJobsStorage": conn}, timeout=120)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot reach storage at http://127.0.0.1:9/devstoreaccount1" in proc.stderr
    assert "check AzureWebJobsStorage" in proc.stderr


def test_log_format_after_the_command(world):
    """`--log-format json` works after the command as before it: every log line on stderr is JSON."""
    cluster = world["cluster"]
    for args in (
        ("rotate", cluster, "--dry-run", "--log-format", "json"),
        ("--log-format", "json", "rotate", cluster, "--dry-run"),
    ):
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
        lines = [json.loads(line) for line in proc.stderr.strip().splitlines()]
        assert any(line["event"].startswith("rotation.cluster_") for line in lines), proc.stderr


def test_discover_rejects_a_subscription_that_is_not_a_guid(world):
    """`discover --subscription nope` is a usage error (exit 2), not an empty subscription."""
    proc = run_cli("discover", "--subscription", "nope", env=world["env"])
    assert proc.returncode == 2
    assert "is not a subscription id" in proc.stderr


def test_list_shows_versionless_in_full():
    """The `list` table prints "versionless" whole, not cut to the width of a version."""
    from rotation.cli.commands import format_watched_table
    from rotation.store.watch import WatchedCluster

    now = datetime.now(UTC)
    row = WatchedCluster(
        cluster_id="/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.DocumentDB/mongoClusters/c1",
        subscription="00000000-0000-0000-0000-000000000000",
        vault_host="kv.vault.azure.net",
        key_name="cmk",
        current_version=None,
        identity=None,
        owner=None,
        state="watching",
        last_outcome=None,
        last_reason=None,
        last_outcome_at=None,
        registered_at=now,
        updated_at=now,
        operation_url=None,
        target_key_url=None,
    )
    [_, line] = format_watched_table([row])
    assert line.split()[2] == "versionless"


def test_readme_cli_table_matches_the_parser():
    """Every command and option in the README's CLI table exists in the parser, and every command is listed."""
    from rotation.cli.main import build_parser

    readme = (ROOT / "README.md").read_text()
    table = readme.split("| command | does |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE)
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    listed = {row.split()[0] for row in rows}
    assert listed <= set(commands)
    assert set(commands) - {"serve"} <= listed  # `serve` may be documented with the daemon instead
    for row in rows:
        name, *rest = row.split()
        options = {o for action in commands[name]._actions for o in action.option_strings}
        for word in re.findall(r"--[a-z-]+", " ".join(rest)):
            assert word in options, (name, word)


def test_cli_points_at_documents_that_exist():
    """The CLI module's docstring and help name documents that are in the repository (README, docs/)."""
    from rotation.cli import main as cli

    named = re.findall(r"[\w/.-]+\.md", cli.__doc__ or "")
    assert named
    for name in named:
        assert (ROOT / name).exists() or (ROOT / "docs" / name).exists(), name
    assert "DESIGN.md" not in (cli.__doc__ or "")


async def test_a_poisoned_job_moved_back_rotates_its_cluster(stack, caplog):
    """A job that fails every delivery lands in the poison queue; `retry` moves it back and it rotates the cluster."""
    from azsim.host import QueueHost
    from rotation.store.poison import PoisonQueue

    key, v1 = stack.new_key()
    cluster = stack.add_cluster(key, v1)
    await stack.register(cluster)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False)
    await stack.service.queue.send(
        Job.new(cluster, trigger="event", target_key_url=stack.sim.key_url(stack.vault, key, v2))
    )
    stack.sim.set_fault_rates({"503": 1.0}, service="arm", methods=("PUT",))

    async def function(msg, ctx) -> None:
        await stack.service.worker.handle_job(
            msg.get_body(), dequeue_count=msg.dequeue_count, invocation_id=ctx.invocation_id
        )

    host = QueueHost(stack.connection, stack.queue_name, function, visibility_timeout=1, max_dequeue=2)
    try:
        await host.drain(idle_seconds=0.5, limit_seconds=60)
    finally:
        await host.close()
    assert host.stats.poisoned == 1
    stack.sim.set_fault_rates({})
    poison = PoisonQueue(stack.service.queue.service_client, name=stack.queue_name)
    try:
        [item] = await poison.peek()
        assert (item.job.cluster_id, item.job.trigger) == (cluster, "event")
        moved, left = await poison.retry()
        assert ([m.message_id for m in moved], left) == ([item.message_id], [])
        assert await poison.peek() == []
    finally:
        await poison.close()
    await stack.drain()
    assert stack.key_of(cluster) == stack.sim.key_url(stack.vault, key, v2)
    exhausted = [r for r in caplog.records if r.getMessage() == "rotation.cluster_retry_exhausted"]
    assert sorted(r.dequeue_count for r in exhausted) == [1, 2]


async def test_reconcile_beside_a_worker_holding_the_cluster_reports_pending(only_this_world):
    """A cluster another worker holds (the deployed app) is `pending` in the table, not a failure: exit 0."""
    from rotation.ids import parse_cluster_id
    from rotation.service.process import Service
    from rotation.settings import Settings

    world = only_this_world
    sim, cluster, env = world["sim"], world["cluster"], world["env"]
    assert run_cli("register", cluster, env=env).returncode == 0
    sim.create_key_version(world["vault"], "cmk", emit_event=False)
    service = Service.create(Settings.from_env(env))
    try:
        claim = await service.registry.claims.take(parse_cluster_id(cluster), owner="the-app", ttl=120)
        assert claim is not None
        proc = await asyncio.to_thread(run_cli, "reconcile", env=env)
        await service.registry.claims.release(claim)
    finally:
        await service.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = next(line for line in proc.stdout.splitlines() if cluster.rsplit("/", 1)[-1] in line)
    assert row.split()[4] == "pending"
    assert kek(sim, cluster) == sim.key_url(world["vault"], "cmk", world["v1"])


def test_reconcile_draws_its_progress_on_a_terminal(only_this_world):
    """With stderr on a terminal (a pty), `reconcile` draws its bars; the table still goes to stdout."""
    import pty

    world = only_this_world
    sim, cluster, env = world["sim"], world["cluster"], world["env"]
    assert run_cli("register", cluster, env=env).returncode == 0
    sim.create_key_version(world["vault"], "cmk", emit_event=False)
    controller, terminal = pty.openpty()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATION_")}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rotation", "reconcile"],
            cwd=ROOT,
            env={**full_env, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            timeout=90,
            check=False,
        )
        os.close(terminal)
        drawn = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's other end is closed and drained
            while chunk := os.read(controller, 65536):
                drawn += chunk
    finally:
        os.close(controller)
    assert proc.returncode == 0
    text = drawn.decode(errors="replace")
    assert "reconcile [" + "#" * 30 + "] 1/1" in text
    assert "rotate    [" + "#" * 30 + "] 1/1" in text
    assert "rotated" in proc.stdout
