"""A Service on tables and a queue of its own, beside the simulator: the harness of the in-process tests.

The `stack` fixture, used by the reconcile, logging and reliability tests.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError

from azsim.azurite import Azurite
from azsim.host import QueueHost
from azsim.messages import RequestRecord
from azsim.simulator import Simulator
from rotation.service.process import Service
from rotation.settings import RetrySettings, Settings
from rotation.store.clients import queue_client
from rotation.store.jobs import Job
from tests.helpers.world import cmk_url, make_world, puts


@dataclass
class Stack:
    """A Service on its own tables and queue, the simulator, and one subscription's resources."""

    sim: Simulator
    service: Service
    connection: str
    queue_name: str
    subscription: str
    vault: str
    identity: str
    tables: tuple[str, str]  # the watch and history tables

    def service_with(self, **settings: Any) -> Service:
        """Another `Service` on this stack's tables and queue, with these settings changed (caller closes)."""
        return Service.create(
            replace(self.service.settings, **settings),
            watch_table=self.tables[0],
            history_table=self.tables[1],
            queue_name=self.queue_name,
        )

    async def reconfigure(self, **settings: Any) -> None:
        """Rebuild the stack's service with these settings changed, on the same tables and queue."""
        old, self.service = self.service, self.service_with(**settings)
        await old.close()

    def new_key(self, name: str | None = None, **kw) -> tuple[str, str]:
        """A new key of the vault (a random name unless given) and its first version, no event."""
        key = name or f"k{uuid.uuid4().hex[:8]}"
        return key, self.sim.create_key_version(self.vault, key, emit_event=False, **kw)

    def add_cluster(self, key: str, version: str | None, name: str | None = None) -> str:
        """A CMK cluster of the subscription on ``key`` (versionless for None), with the identity."""
        return self.sim.add_cluster(
            subscription=self.subscription,
            resource_group="rg-data",
            name=name or f"c{uuid.uuid4().hex[:10]}",
            key_url=self.sim.key_url(self.vault, key, version),
            identity=self.identity,
        )

    async def register(self, *cluster_ids: str) -> None:
        """Watch the clusters (owner ``team``)."""
        for cid in cluster_ids:
            await self.service.registration.register(cid, owner="team")

    def key_of(self, cluster_id: str) -> str:
        """The key URL the cluster is encrypted with."""
        return cmk_url(self.sim.cluster(cluster_id))

    def puts(self) -> list[RequestRecord]:
        """Every ARM PUT in the simulator's log (`tests.helpers.world.puts`)."""
        return puts(self.sim)

    async def drain(self, *, idle: float = 0.5, max_invocations: int | None = None) -> None:
        """Run the queue function on every job (as the host would) until the queue stays empty."""

        async def function(msg, ctx) -> None:
            await self.service.worker.handle_job(
                msg.get_body(), dequeue_count=msg.dequeue_count, invocation_id=ctx.invocation_id
            )

        host = QueueHost(self.connection, self.queue_name, function, visibility_timeout=1)
        try:
            stats = await host.drain(idle_seconds=idle, limit_seconds=60, max_invocations=max_invocations)
        finally:
            await host.close()
        assert stats.errors == []

    async def queued(self) -> list[Job]:
        """The jobs waiting in the queue (peeked, not taken)."""
        async with queue_client(self.service.queue._service, self.queue_name) as client:
            try:
                msgs = await client.peek_messages(max_messages=32)
            except ResourceNotFoundError:
                return []  # nothing was ever queued
        return [Job.from_json(m.content) for m in msgs]


@pytest.fixture
async def stack(sim: Simulator, azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    """A Service with its own tables and queue on Azurite, the simulator, and a vault and identity of its own."""
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    settings = replace(
        Settings.from_env({"AzureWebJobsStorage": azurite.connection_string}),
        retry=RetrySettings(max_attempts=4, max_seconds=20, initial_wait=0.02, max_wait=0.1),
        poll_budget_seconds=20,
        check_delay_seconds=0,
        max_concurrency=4,
    )
    suffix = uuid.uuid4().hex[:10]
    queue_name = f"jobs-{suffix}"
    tables = (f"w{suffix}", f"h{suffix}")
    service = Service.create(settings, watch_table=tables[0], history_table=tables[1], queue_name=queue_name)
    world = make_world(sim, per_subscription=0)
    built = Stack(
        sim,
        service,
        azurite.connection_string,
        queue_name,
        world.subscription,
        world.vault,
        world.identity,
        tables,
    )
    yield built
    await built.service.close()
