"""Per-process wiring: settings, one credential, one client per outside system, one `Rotator`.

Built once per process (the Functions worker, or one CLI run) and reused for every job, so connections
and tokens are reused too. `rotation.service.process.Service` adds storage and what the app does with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from azure.identity.aio import DefaultAzureCredential

from rotation.azure.arm import ClustersClient
from rotation.azure.keyvault import KeyVaultKeys
from rotation.azure.pacing import ArmPacer
from rotation.azure.transport import SharedHttp
from rotation.engine import Rotator
from rotation.service import slots

if TYPE_CHECKING:
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
            write_burst=settings.arm_write_burst,
            read_burst=settings.arm_read_burst,
        )  # its waits keep the job's place: they happen under a lock (`rotation.service.slots`)
        clusters = ClustersClient(
            settings.arm_endpoint,
            credential,
            api_version=settings.arm_api_version,
            pacer=pacer,
            transport=http.transport(),
        )
        keys = KeyVaultKeys(credential, http=http)
        # Waiting for an operation or between retries, a job gives its place up (`rotation.service.slots`).
        rotator = Rotator(clusters=clusters, keys=keys, settings=settings, sleep=slots.sleep)
        return cls(
            settings=settings, http=http, credential=credential, clusters=clusters, keys=keys, rotator=rotator
        )

    async def close(self) -> None:
        """Close every client and the credential."""
        await self.clusters.close()
        await self.keys.close()
        await self.credential.close()
        await self.http.close()
