"""Per-process wiring: settings, one credential, one client per outside system, one `Rotator`, storage.

Built once per process (the Functions worker, or one CLI run) and reused for every job, so connections
and tokens are reused too. `Service` adds the registry and the job queue, and the three things the app
does with them: `fanout` (event -> jobs), `worker` (job -> engine) and `registration`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from azure.identity.aio import DefaultAzureCredential

from rotation.azure.arm import ClustersClient
from rotation.azure.keyvault import KeyVaultKeys
from rotation.azure.pacing import ArmPacer
from rotation.azure.transport import SharedHttp
from rotation.engine import Rotator
from rotation.service.fanout import Fanout
from rotation.service.registration import Registration
from rotation.service.worker import Worker
from rotation.store.clients import storage_clients, storage_credential
from rotation.store.jobs import QUEUE_NAME, JobQueue
from rotation.store.registry import HISTORY_TABLE, WATCH_TABLE, Registry

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from azure.core.credentials_async import AsyncTokenCredential

    from rotation.settings import Settings


@dataclass
class Runtime:
    """The clients of one process."""

    settings: Settings
    http: SharedHttp
    credential: AsyncTokenCredential
    clusters: ClustersClient
    keys: KeyVaultKeys
    rotator: Rotator

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        """Build the clients; nothing is contacted until the first call."""
        http = SharedHttp()  # one connection pool for every client of the process
        credential = DefaultAzureCredential(transport=http.transport())
        # One pacer for the process: every job on a subscription shares its ARM budget.
        pacer = ArmPacer(
            write_refill_per_s=settings.arm_write_refill_per_s,
            read_refill_per_s=settings.arm_read_refill_per_s,
        )
        clusters = ClustersClient(
            settings.arm_endpoint,
            credential,
            api_version=settings.arm_api_version,
            pacer=pacer,
            transport=http.transport(),
        )
        keys = KeyVaultKeys(credential, http=http)
        rotator = Rotator(clusters=clusters, keys=keys, settings=settings)
        return cls(
            settings=settings, http=http, credential=credential, clusters=clusters, keys=keys, rotator=rotator
        )

    async def close(self) -> None:
        """Close every client and the credential."""
        await self.clusters.close()
        await self.keys.close()
        await self.credential.close()
        await self.http.close()


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
        return cls(
            runtime,
            Registry(tables, watch_table=watch_table, history_table=history_table),
            JobQueue(queues, name=queue_name),
            storage_credential=own,
        )

    async def close(self) -> None:
        """Close every client (the registry and queue close their service clients)."""
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
