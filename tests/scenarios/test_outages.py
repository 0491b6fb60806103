"""Outages: storage down while an event arrives, ARM down for longer than the retry budget.

Storage is taken down by a loopback gate in front of Azurite's table and queue ports (connections refused
and dropped, then the same ports open again), so the data survives the outage as a real account's would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time

import pytest

from azsim.azurite import ACCOUNT, ACCOUNT_KEY
from rotation.errors import ServiceError
from rotation.ids import parse_cluster_id
from rotation.service.process import close_services
from tests.helpers.app import POISON_QUEUE, context, event_trigger
from tests.helpers.app import user_function as fn
from tests.helpers.paths import ROOT
from tests.helpers.world import make_world, puts


class Gate:
    """A TCP forwarder on a fixed loopback port that can be closed (refused, open connections cut) and reopened."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


@pytest.fixture
async def gated(app, monkeypatch):
    """AzureWebJobsStorage through gates in front of the session Azurite's table and queue ports."""
    from urllib.parse import urlsplit

    conn = dict(p.split("=", 1) for p in app.azurite.connection_string.split(";") if p)
    gates = {name: Gate(urlsplit(conn[f"{name}Endpoint"]).port) for name in ("Table", "Queue")}
    for gate in gates.values():
        await gate.up()
    monkeypatch.setenv(
        "AzureWebJobsStorage",
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint={conn['BlobEndpoint']};"
        f"TableEndpoint=http://127.0.0.1:{gates['Table'].port}/{ACCOUNT};"
        f"QueueEndpoint=http://127.0.0.1:{gates['Queue'].port}/{ACCOUNT};",
    )
    yield gates
    monkeypatch.setenv("AzureWebJobsStorage", app.azurite.connection_string)
    await close_services()  # the app fixture's teardown builds its own, straight to Azurite
    for gate in gates.values():
        if gate._server is not None:
            await gate.down()


async def test_storage_down_event_raises_writes_nothing_then_redelivery_completes(app, gated):
    """Storage down: the function raises (Event Grid redelivers) and queues nothing; back up: it completes."""
    world = make_world(app.sim, subscriptions=2, per_subscription=1, other_key=True)
    service = await app.service()
    for cluster in world.clusters:
        await service.registration.register(cluster, owner="team")
    v2, event = world.new_version_event()
    app.sim.clear_requests()

    for down in (("Table", "Queue"), ("Queue",)):  # all of storage, then only the queue (registry readable)
        for name in down:
            await gated[name].down()
        started = time.monotonic()
        with pytest.raises(ServiceError) as caught:
            await fn("on_key_event")(event_trigger(event), context("on_key_event"))
        assert caught.value.service == "storage"
        assert time.monotonic() - started < 30  # Event Grid's own timeout
        for name in down:
            await gated[name].up()
        assert await app.count() == 0
        assert await app.count(POISON_QUEUE) == 0
    assert app.sim.requests == []

    await fn("on_key_event")(event_trigger(event), context("on_key_event"))  # Event Grid's redelivery
    assert await app.count() == len(world.clusters)
    host = await app.drain()
    assert host.stats.failed == 0
    for cluster in world.clusters:
        assert world.version_of(cluster) == v2
        assert len(puts(app.sim, cluster)) == 1


async def test_arm_down_past_the_retry_budget_poisons_then_replay_finishes(
    app, sim, monkeypatch, caplog, tmp_path
):
    """ARM down past the retry budget: poisoned, with history and ERROR logs; `replay` then finishes it."""
    monkeypatch.setenv("ROTATION_RETRY_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("ROTATION_RETRY_INITIAL_WAIT", "0")
    monkeypatch.setenv("ROTATION_RETRY_MAX_WAIT", "0.01")
    caplog.set_level(logging.INFO, logger="rotation")
    world = make_world(sim, subscriptions=1, per_subscription=1, other_key=True)
    [cluster] = world.clusters
    service = await app.service()
    await service.registration.register(cluster, owner="team")
    v2, event = world.new_version_event()
    await fn("on_key_event")(event_trigger(event), context("on_key_event"))
    sim.set_fault_rates({"503": 1.0}, service="arm")  # every method: ARM is down
    host = await app.drain(max_dequeue=3, visibility_timeout=1)
    assert (host.stats.failed, host.stats.poisoned) == (3, 1)
    assert all(e.startswith("TransientFailure") for e in host.stats.errors)
    assert puts(sim) == []  # the GET never got through, so no PUT was even tried
    [poisoned] = await app.take_jobs(POISON_QUEUE)
    assert (poisoned["cluster_id"], poisoned["event_id"]) == (cluster, event["id"])
    history = await service.registry.history.recent(parse_cluster_id(cluster))
    assert [h.outcome for h in history] == ["failed"] * 3
    assert all("retries exhausted" in h.reason and h.error_code == "ServiceUnavailable" for h in history)
    exhausted = [r for r in caplog.records if r.getMessage() == "rotation.cluster_retry_exhausted"]
    assert len(exhausted) == 3
    assert all(r.levelno == logging.ERROR and r.cluster_id == cluster for r in exhausted)
    assert (await service.registry.watched.get(parse_cluster_id(cluster))).last_outcome == "failed"

    sim.set_fault_rates({})
    sim.clear_requests()
    events_file = tmp_path / "event.json"
    events_file.write_text(json.dumps([event]))
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "rotation", "replay", str(events_file)],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert world.version_of(cluster) == v2
    assert len(puts(sim, cluster)) == 1
    latest = (await service.registry.history.recent(parse_cluster_id(cluster)))[0]
    assert (latest.outcome, latest.to_version) == ("rotated", v2)
