"""The process's `Service`: the runtime's clients, storage, and the three things the app does with them.

`fanout` (event -> jobs, `rotation.service.fanout`), `worker` (job -> engine, `rotation.service.worker`)
and `registration` (`rotation.service.registration`) share one `Runtime`, one registry and one job queue;
the `Service` owns their clients and closes them. The Functions worker keeps one per process and event loop
(`service_for_loop`); a CLI run, a test or a chaos run uses ``async with Service.create(...)``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Self

from rotation.service.fanout import Fanout
from rotation.service.registration import Registration
from rotation.service.runtime import Runtime
from rotation.service.worker import Worker
from rotation.store.budget import TableBudget
from rotation.store.clients import storage_clients, storage_credential
from rotation.store.jobs import QUEUE_NAME, JobQueue
from rotation.store.registry import Registry
from rotation.store.tables import HISTORY_TABLE, WATCH_TABLE

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from azure.core.credentials_async import AsyncTokenCredential
    from azure.data.tables.aio import TableClient

    from rotation.settings import Settings


class Service:
    """The app over one runtime, one registry and one job queue: it owns and closes their clients.

    ``async with Service.create(settings) as service:`` for a run that ends; the Functions worker keeps one
    per process (`service_for_loop`).
    """

    def __init__(
        self,
        runtime: Runtime,
        registry: Registry,
        queue: JobQueue,
        *,
        worker_id: str | None = None,
        storage_credential: AsyncTokenCredential | None = None,
    ) -> None:
        self.runtime = runtime
        self.registry = registry
        self.queue = queue
        self._storage_credential = storage_credential
        self._budget_table: TableClient | None = None  # the shared ARM budget's rows (`share_arm_budget`)
        self.fanout = Fanout(runtime.settings, registry, queue)
        self.worker = Worker(runtime, registry, queue, worker_id=worker_id)
        self.registration = Registration(runtime, registry)

    @property
    def settings(self) -> Settings:
        """The process settings."""
        return self.runtime.settings

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        runtime: Runtime | None = None,
        watch_table: str = WATCH_TABLE,
        history_table: str = HISTORY_TABLE,
        queue_name: str = QUEUE_NAME,
    ) -> Service:
        """Build every client for ``settings`` (no I/O until the first call).

        ``runtime``: ARM and Key Vault clients built by the caller (`Runtime.create` otherwise); the service
        closes it. The table and queue names are the app's unless a caller (a test, a chaos run) isolates its
        own.
        """
        runtime = runtime if runtime is not None else Runtime.create(settings)
        credential = (
            None
            if settings.storage_connection
            else storage_credential(settings, runtime.credential, http=runtime.http)
        )
        tables, queues = storage_clients(settings, credential, http=runtime.http)
        own = credential if credential is not None and credential is not runtime.credential else None
        service = cls(
            runtime,
            Registry(tables, watch_table=watch_table, history_table=history_table),
            JobQueue(queues, name=queue_name),
            storage_credential=own,
        )
        service.share_arm_budget(watch_table)
        return service

    def share_arm_budget(self, table: str = WATCH_TABLE) -> None:
        """Pace ARM writes with every other process of the app, through a ledger in ``table``.

        Every instance of the app spends the same per-subscription ARM bucket (`rotation.store.budget`).
        """
        if self.runtime.clusters.pacer is None:
            return
        self._budget_table = self.registry.service_client.get_table_client(table)
        self.runtime.clusters.pacer.share_through(TableBudget(self._budget_table))

    async def close(self) -> None:
        """Close every client (the registry and queue close their service clients)."""
        if self._budget_table is not None:
            await self._budget_table.close()
        await self.registry.close()
        await self.queue.close()
        if self._storage_credential is not None:
            await self._storage_credential.close()
        await self.runtime.close()

    async def __aenter__(self) -> Self:
        """The service itself; `close` on the way out."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close every client."""
        await self.close()


_services: dict[int, Service] = {}


async def service_for_loop(settings_factory: Callable[[], Settings]) -> Service:
    """The process's `Service` for the running event loop, built on first use.

    aiohttp sessions belong to one loop; the Functions worker runs one loop for the process, so this builds
    the clients once. A test or CLI that runs a new loop gets clients of its own.
    """
    loop_id = id(asyncio.get_running_loop())
    service = _services.get(loop_id)
    if service is None:
        service = Service.create(settings_factory())
        _services.clear()
        _services[loop_id] = service
    return service


async def close_services() -> None:
    """Close every `Service` built by `service_for_loop` (for hosts that shut down, the demo and tests)."""
    services = list(_services.values())
    _services.clear()
    for service in services:
        await service.close()
