"""Attacks on the operator's side: terminal escapes in answers, a deep replay file, Ctrl-C during `rotate`.

Run as the operator runs them: `python -m rotation` in a subprocess with the simulator's settings and
Azurite as storage (the `cli` fixture, tests/helpers/cli.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
from datetime import UTC, datetime

from azure.storage.queue.aio import QueueClient

from rotation.ids import parse_cluster_id
from rotation.outcomes import Outcome, RotationResult
from rotation.service.process import Service
from rotation.settings import Settings
from tests.helpers.cli import Cli, one_error_line
from tests.helpers.paths import ROOT
from tests.helpers.world import cmk_url, make_world, puts

ESCAPES = "\x1b[2K\r\x1b[32mrotated\x1b[0m  everything is fine\x07"


async def in_process(cli: Cli, work):
    """Run ``work`` with a Service on the CLI's settings, closed after."""
    service = Service.create(Settings.from_env(cli.env))
    try:
        return await work(service)
    finally:
        await service.close()


async def test_terminal_escapes_in_an_answer_are_printed_escaped(sim, cli):
    """ARM error text with escape sequences is shown escaped by `history` and `list`: no forged lines."""
    world = make_world(sim, subscriptions=1, per_subscription=1, other_key=True)
    [cluster] = world.clusters
    await cli.register(cluster)
    failed = RotationResult(
        cluster_id=cluster,
        outcome=Outcome.FAILED,
        reason=f"operation Failed: {ESCAPES}",
        error_code="Bad\x1b]0;title\x07Code",
        error_message=ESCAPES,
    )

    async def record(service: Service) -> None:
        await service.registry.record(failed, trigger="event", event_id="e\x1b[1A", invocation_id=None)

    await in_process(cli, record)
    history, listing = await asyncio.gather(cli("history", cluster), cli("list"))
    for proc in (history, listing):
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout
        assert "\r" not in proc.stdout
        assert "\x07" not in proc.stdout
    assert "\\x1b[32mrotated" in history.stdout
    [line] = history.stdout.splitlines()
    assert line.split()[2] == "failed"


async def test_replay_file_with_a_deep_event_still_handles_the_good_one(sim, cli, tmp_path):
    """A replay file whose first event nests 20,000 deep: that one is rejected, the good one rotates."""
    world = make_world(sim, subscriptions=1, per_subscription=1, other_key=True)
    [cluster] = world.clusters
    await cli.register(cluster)
    v2, event = world.new_version_event()
    path = tmp_path / "deep.json"
    deep = '{"id": "deep", "data": ' + "[" * 20_000 + "]" * 20_000 + "}"
    path.write_text(f"[{deep}, {json.dumps(event)}]", encoding="utf-8")
    proc = await cli("replay", str(path))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    assert "rejected" in lines[0]
    assert "nested" in lines[0]
    assert lines[1].startswith(f"event={event['id']} rotated")
    assert cmk_url(sim.cluster(cluster)) == world.key_url(v2)


class Interruptible(Cli):
    """`python -m rotation rotate` started, then sent SIGINT once ARM accepted its PUT."""

    async def rotate_then_interrupt(self, sim, cluster: str) -> subprocess.CompletedProcess[str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rotation",
            "rotate",
            cluster,
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not (accepted := [p for p in puts(sim, cluster) if p.status in {200, 201, 202}]):
            assert loop.time() < deadline, "the PUT never came"
            await asyncio.sleep(0.05)
        # The client has the PUT's answer (and has recorded the operation) once it polls: the next ARM
        # GET of this cluster's subscription after the PUT.
        subscription = f"/subscriptions/{parse_cluster_id(cluster).subscription}/".lower()
        while not [
            r
            for r in sim.requests
            if r.service == "arm"
            and r.method == "GET"
            and r.time > accepted[0].time
            and r.path.lower().startswith(subscription)
        ]:
            assert loop.time() < deadline, "the operation was never polled"
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode is not None
        return subprocess.CompletedProcess(["rotate", cluster], proc.returncode, out.decode(), err.decode())


async def check_jobs(connection: str, cluster: str) -> list[dict]:
    """Check jobs for ``cluster`` in ``rotation-jobs`` (peeked; other tests' jobs are left alone)."""
    async with QueueClient.from_connection_string(connection, "rotation-jobs") as queue:
        found = [
            json.loads(base64.b64decode(m.content)) async for m in queue.receive_messages(max_messages=32)
        ]
    return [j for j in found if j["cluster_id"] == cluster and j["trigger"] == "check"]


async def interrupted_rotation(sim, cli, *, watched: bool) -> None:
    """Start `rotate` on a fresh cluster (watched or not) and interrupt it with Ctrl-C during the operation."""
    world = make_world(sim, subscriptions=1, per_subscription=1, other_key=True)
    [cluster] = world.clusters
    if watched:
        await cli.register(cluster)
    v2 = sim.create_key_version(world.vault, "cmk", emit_event=False)
    sim.set_operation_seconds(cluster, 600)
    proc = await Interruptible(cli.env).rotate_then_interrupt(sim, cluster)
    assert proc.returncode == 130, proc.stderr
    line = one_error_line(proc)
    [put] = puts(sim, cluster)
    assert line.startswith("error: operation https://management.azure.com/")
    assert line.endswith("is still running; `rotate` again resumes it")

    async def state(service: Service):
        cid = parse_cluster_id(cluster)
        return await service.registry.history.recent(cid), await service.registry.claims.holder(cid)

    history, holder = await in_process(cli, state)
    assert holder == (None, None)  # the dead run's claim was released
    assert (history[0].outcome, history[0].to_version) == ("pending", v2)
    assert history[0].operation_url
    assert history[0].operation_url in line
    checks = await check_jobs(cli.env["AzureWebJobsStorage"], cluster)
    assert len(checks) == (1 if watched else 0)  # an unwatched cluster's check job would be refused

    sim.advance(900)  # the operation ends
    again = await cli("rotate", cluster)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("rotated")
    assert puts(sim, cluster) == [put]  # resumed, not PUT again
    assert cmk_url(sim.cluster(cluster)) == world.key_url(v2)


async def test_ctrl_c_after_the_put_hands_the_operation_on(sim, cli):
    """Ctrl-C once ARM accepted the PUT: history keeps it, the claim is released, `rotate` resumes it."""
    await interrupted_rotation(sim, cli, watched=True)


async def test_ctrl_c_on_an_unwatched_cluster_is_resumed_from_history(sim, cli):
    """The CLI rotates any cluster; interrupted, its operation is found again in the history."""
    await interrupted_rotation(sim, cli, watched=False)


async def test_busy_cluster_names_its_holder_and_when_the_claim_ends(sim, cli):
    """A `rotate` on a claimed cluster says who holds it and until when, instead of "another worker"."""
    world = make_world(sim, subscriptions=1, per_subscription=1, other_key=True)
    [cluster] = world.clusters
    await cli.register(cluster)
    sim.create_key_version(world.vault, "cmk", emit_event=False)

    async def take(service: Service):
        return await service.registry.claims.take(parse_cluster_id(cluster), owner="ops-laptop:4242", ttl=120)

    claim = await in_process(cli, take)
    assert claim is not None
    proc = await cli("rotate", cluster)
    assert proc.returncode == 1
    assert "being rotated by ops-laptop:4242 (its claim ends " in proc.stdout
    until = proc.stdout.split("its claim ends ", 1)[1][:19]
    ends = datetime.strptime(until, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert 0 < (ends - datetime.now(UTC)).total_seconds() <= 121
    assert puts(sim, cluster) == []

    async def release(service: Service) -> None:
        await service.registry.claims.release(claim)

    await in_process(cli, release)
