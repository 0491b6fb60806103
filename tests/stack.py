"""A Service on tables and a queue of its own, beside the simulator: the harness of the in-process tests.

Used as the `stack` fixture (tests/conftest.py) by the reconcile, logging and reliability tests.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from azsim.host import QueueHost
from azsim.simulator import Simulator
from rotation.service.process import Service
from rotation.store.clients import queue_client
from rotation.store.jobs import Job


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
        key = name or f"k{uuid.uuid4().hex[:8]}"
        return key, self.sim.create_key_version(self.vault, key, emit_event=False, **kw)

    def add_cluster(self, key: str, version: str | None, name: str | None = None) -> str:
        return self.sim.add_cluster(
            subscription=self.subscription,
            resource_group="rg-data",
            name=name or f"c{uuid.uuid4().hex[:10]}",
            key_url=self.sim.key_url(self.vault, key, version),
            identity=self.identity,
        )

    async def register(self, *cluster_ids: str) -> None:
        for cid in cluster_ids:
            await self.service.registration.register(cid, owner="team")

    def key_of(self, cluster_id: str) -> str:
        enc = self.sim.cluster(cluster_id)["properties"]["encryption"]["customerManagedKeyEncryption"]
        return enc["keyEncryptionKeyUrl"]

    def puts(self) -> list:
        return [r for r in self.sim.requests if r.service == "arm" and r.method == "PUT"]

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
        async with queue_client(self.service.queue._service, self.queue_name) as client:
            try:
                msgs = await client.peek_messages(max_messages=32)
            except ResourceNotFoundError:
                return []  # nothing was ever queued
        return [Job.from_json(m.content) for m in msgs]
