"""Reconcile: the level-triggered safety net (timer and ``python -m rotation reconcile``).

Events get lost (a deleted subscription, a day of downtime, dead-lettering after 24 h, a poisoned job), so
every pass compares each watched cluster's *actual* key URL, read from ARM, with the newest usable version
of its key in Key Vault, and queues a job (trigger ``reconcile``) for each cluster that is behind. Key Vault
is read once per key per pass (one version listing, one GET of the newest candidate), never per cluster.

The same pass reports drift: clusters not Ready (Inaccessible at ERROR), key versions expiring within 30 days
with no newer usable version, a newest version that exists but is not usable (``key-not-usable`` at
WARNING, its URL in the detail), clusters re-pointed to another key (registry updated, ``key-mismatch``),
registered clusters that no longer exist, and ``pending`` clusters whose check job was lost (resumed).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rotation.errors import NotFoundError, ServiceError
from rotation.ids import InvalidKeyUrl, KeyUrl, parse_cluster_id, parse_key_url
from rotation.key_rules import (
    EXPIRY_HORIZON,
    newest_not_usable,
    newest_version,
    pick_newest_usable,
)
from rotation.outcomes import Outcome, Trigger
from rotation.retry import RetryPolicy
from rotation.store.jobs import Job

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from rotation.key_rules import KeyVersion
    from rotation.service.process import Service
    from rotation.store.watch import WatchedCluster

logger = logging.getLogger(__name__)

PENDING_GRACE = timedelta(minutes=10)  # a pending cluster older than this has lost its check job
# One cluster's share of a pass (its ARM read, its key's reads, its job): past this it is reported and the
# pass goes on, so an answer that never ends costs that cluster, not the pass.
CLUSTER_DEADLINE_S = 180.0


@dataclass
class ReconcileLine:
    """One cluster's line in the reconcile table."""

    cluster_id: str
    key: str
    current_version: str | None
    newest_version: str | None
    action: str  # queued | up-to-date | versionless | check-queued | skipped
    drift: str | None = (
        None  # not-ready | inaccessible | expiring | key-mismatch | cluster-not-found | not-cmk ...
    )
    detail: str = ""
    level: str = "INFO"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass
class ReconcileReport:
    """What one pass found and did."""

    dry_run: bool
    clusters: list[ReconcileLine] = field(default_factory=list)
    arm_reads: int = 0
    keyvault_reads: int = 0
    keys: int = 0
    jitter_s: float = 0.0
    duration_s: float = 0.0

    @property
    def queued(self) -> int:
        """Jobs queued (or, in a dry run, that would have been)."""
        return sum(1 for c in self.clusters if c.action in {"queued", "would-queue", "check-queued"})

    @property
    def drift(self) -> int:
        """Clusters with a drift finding."""
        return sum(1 for c in self.clusters if c.drift)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "dry_run": self.dry_run,
            "clusters": [c.to_dict() for c in self.clusters],
            "summary": {
                "clusters": len(self.clusters),
                "queued": self.queued,
                "drift": self.drift,
                "keys": self.keys,
                "arm_reads": self.arm_reads,
                "keyvault_reads": self.keyvault_reads,
                "jitter_s": round(self.jitter_s, 3),
                "duration_s": round(self.duration_s, 3),
            },
        }


@dataclass(frozen=True)
class _KeyState:
    """One key's versions as this pass saw them."""

    created: dict[str, datetime | None]
    expires: dict[str, datetime | None]
    newest: KeyVersion | None
    versions: tuple[KeyVersion, ...] = ()
    read: dict[str, KeyVersion] = field(default_factory=dict)  # versions this pass GET, by version id


class Reconciler:
    """One reconcile pass over the registry, with bounded concurrency."""

    def __init__(
        self,
        service: Service,
        *,
        dry_run: bool = False,
        jitter_s: float = 0.0,
        page_size: int = 200,
        progress: Callable[[int, int], None] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Any] = asyncio.sleep,
        doctor: bool = False,
        cluster_deadline: float = CLUSTER_DEADLINE_S,
        send: Callable[[Job], Awaitable[None]] | None = None,
    ) -> None:
        self._service = service
        self._cluster_deadline = cluster_deadline
        # Where the pass's jobs go: the job queue (the timer, `reconcile --enqueue`), or ``send`` (the CLI
        # collects them and runs them itself, with the same claims as the queue worker).
        self._send = send if send is not None else service.queue.send
        self._doctor = doctor  # also run `rotation doctor` on every cluster and log its findings
        self._dry_run = dry_run
        self._jitter_s = jitter_s
        self._page_size = page_size
        self._progress = progress
        self._now = now
        self._sleep = sleep
        self._keys: dict[str, asyncio.Task[_KeyState]] = {}
        self._report = ReconcileReport(dry_run=dry_run)
        self._gate = asyncio.Semaphore(service.settings.max_concurrency)
        # The same one retry layer as a rotation (rule 6): one 429 must not skip a cluster for a whole pass.
        self._retry = RetryPolicy("reconcile-read", service.settings.retry, sleep=sleep)

    async def run(self) -> ReconcileReport:
        """Wait the jitter, then reconcile every watched cluster; return the report."""
        started = time.perf_counter()
        if self._jitter_s > 0:
            self._report.jitter_s = random.uniform(0, self._jitter_s)  # noqa: S311 - spreading load, not security
            await self._sleep(self._report.jitter_s)
        logger.info(
            "rotation.reconcile_started", extra={"dry_run": self._dry_run, "jitter_s": self._report.jitter_s}
        )
        done = 0
        total = 0
        tasks: list[asyncio.Task[None]] = []
        async for watched in self._service.registry.watched.iterate(page_size=self._page_size):
            total += 1
            tasks.append(asyncio.create_task(self._one(watched)))
            if len(tasks) >= self._page_size:
                await asyncio.gather(*tasks)
                done += len(tasks)
                tasks = []
                self._tick(done, total)
        await asyncio.gather(*tasks)
        done += len(tasks)
        self._tick(done, total)
        if self._doctor:
            await self._run_doctor()
        self._report.keys = len(self._keys)
        self._report.duration_s = time.perf_counter() - started
        self._report.clusters.sort(key=lambda c: (c.key, c.cluster_id.lower()))
        summary = self._report.to_dict()["summary"]
        logger.info("rotation.reconcile_finished", extra={"dry_run": self._dry_run, **summary})
        return self._report

    async def _run_doctor(self) -> None:
        """The doctor's checks on every cluster of the pass, warn/fail logged as ``rotation.doctor_finding``.

        One `Doctor` per pass: each vault, identity, role list, key listing and policy is read once.
        """
        from rotation.doctor.checks import Doctor  # noqa: PLC0415 - only when asked for
        from rotation.doctor.report import log_findings  # noqa: PLC0415

        async with Doctor.for_runtime(self._service.runtime) as doctor:
            report = await doctor.check_many([c.cluster_id for c in self._report.clusters])
        for cluster in report.clusters:
            log_findings(cluster, context="reconcile")

    def _tick(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(done, total)

    async def _one(self, watched: WatchedCluster) -> None:
        async with self._gate:
            try:
                async with asyncio.timeout(self._cluster_deadline):
                    line = await self._check(watched)
            except (TimeoutError, ServiceError) as exc:
                line = ReconcileLine(
                    watched.cluster_id,
                    watched.key,
                    watched.current_version,
                    None,
                    "skipped",
                    drift="unreachable",
                    detail=str(exc)
                    if isinstance(exc, ServiceError)
                    else f"no answer within {self._cluster_deadline:g} s; the next pass tries again",
                    level="ERROR",
                )
        self._report.clusters.append(line)
        if line.drift:
            level = getattr(logging, line.level)
            logger.log(
                level,
                "rotation.drift_detected",
                extra={
                    "cluster_id": line.cluster_id,
                    "key": line.key,
                    "reason": line.drift,
                    "detail": line.detail,
                    "from_version": line.current_version,
                    "to_version": line.newest_version,
                },
            )

    async def _check(self, watched: WatchedCluster) -> ReconcileLine:
        service = self._service
        cluster_id = parse_cluster_id(watched.cluster_id)
        fields = {"cluster_id": watched.cluster_id, "trigger": Trigger.RECONCILE}
        try:
            cluster, attempts = await self._retry.call(
                lambda: service.runtime.clusters.get(cluster_id), log_fields=fields
            )
        except NotFoundError as exc:
            self._report.arm_reads += exc.attempts
            return self._skipped(
                watched, "cluster-not-found", "registered cluster no longer exists", "WARNING"
            )
        self._report.arm_reads += attempts
        if not cluster.is_cmk or cluster.key_url is None:
            return self._skipped(
                watched, Outcome.NOT_CMK.value, "cluster has no customer-managed key", "ERROR"
            )
        try:
            actual = parse_key_url(cluster.key_url, allowed_suffixes=service.settings.allowed_vault_suffixes)
        except InvalidKeyUrl as exc:
            return self._skipped(watched, Outcome.KEY_MISMATCH.value, str(exc), "ERROR")
        status = cluster.cluster_status or "unknown"
        drift: tuple[str, str, str] | None = None
        if status.lower() != "ready":
            name = "inaccessible" if status.lower() == "inaccessible" else "not-ready"
            drift = (name, f"clusterStatus is {status}", "ERROR" if name == "inaccessible" else "WARNING")
        repointed = (actual.host, actual.name.lower()) != (
            watched.vault_host.lower(),
            watched.key_name.lower(),
        )
        # The registry follows the cluster: a re-pointed key always; a version it missed (a worker stopped
        # between verifying and recording) outside dry runs.
        if repointed or ((actual.version or None) != watched.current_version and not self._dry_run):
            host, name = (actual.host, actual.name) if repointed else (watched.vault_host, watched.key_name)
            await service.registry.watched.upsert(
                cluster_id=cluster_id,
                vault_host=host,
                key_name=name,
                current_version=actual.version,
                identity=cluster.key_identity,
                owner=watched.owner,
            )
        if repointed:
            detail = (
                f"cluster was re-pointed from {watched.key} to {actual.host}/{actual.name}; registry updated"
            )
            drift = (Outcome.KEY_MISMATCH.value, detail, "WARNING")
        if actual.versionless:
            line = ReconcileLine(
                watched.cluster_id, f"{actual.host}/{actual.name}", None, None, "versionless"
            )
            return self._with_drift(line, drift)
        key = await self._key_state(actual)
        newest = key.newest
        line = ReconcileLine(
            watched.cluster_id,
            f"{actual.host}/{actual.name}",
            actual.version,
            newest.version if newest else None,
            "up-to-date",
        )
        if watched.state == "pending" and watched.operation_url and self._pending_lost(watched):
            await self._queue(
                Job.new(
                    watched.cluster_id,
                    trigger=Trigger.CHECK,
                    target_key_url=watched.target_key_url,
                    operation_url=watched.operation_url,
                )
            )
            line.action = "check-queued" if not self._dry_run else "would-queue"
            return self._with_drift(line, drift)
        found = await self._compare(watched, line, actual, key)  # queues a job even when not Ready
        drift = drift or found
        return self._with_drift(line, drift)

    async def _compare(
        self, watched: WatchedCluster, line: ReconcileLine, actual: KeyUrl, key: _KeyState
    ) -> tuple[str, str, str] | None:
        """Queue a job when a newer usable version exists; else report expiry or an unusable key."""
        newest = key.newest
        if newest is None:
            return (Outcome.KEY_NOT_USABLE.value, "the key has no usable version", "ERROR")
        if newest.version != actual.version and newest.ambiguous:
            detail = "the newest versions share a creation second: which is newer is not known; kept"
            return ("same-creation-second", detail, "WARNING")
        # Rule 2: strictly newer only. A current version missing from the listing is gone: anything is
        # forward from it; one listed without a creation time, or in the same second, is not behind.
        gone = (actual.version or "") not in key.created
        current_created = key.created.get(actual.version or "")
        forward = gone or (
            current_created is not None
            and newest.created_on is not None
            and newest.created_on > current_created
        )
        if newest.version != actual.version and forward:
            await self._queue(
                Job.new(watched.cluster_id, trigger=Trigger.RECONCILE, target_key_url=str(newest.url))
            )
            line.action = "queued" if not self._dry_run else "would-queue"
            return None
        expires = key.expires.get(actual.version or "")
        if expires is not None and expires - self._now() < EXPIRY_HORIZON:
            level = "ERROR" if expires - self._now() < timedelta(days=7) else "WARNING"
            return (
                "expiring",
                f"key version expires {expires.isoformat()}; no newer usable version exists",
                level,
            )
        latest = newest_version(list(key.versions))
        problem = newest_not_usable(
            list(key.versions),
            self._now(),
            current_version=actual.version,
            full=key.read.get(latest.version) if latest is not None else None,
        )
        if problem is not None:
            return (Outcome.KEY_NOT_USABLE.value, problem.reason, "WARNING")
        return None

    def _pending_lost(self, watched: WatchedCluster) -> bool:
        return self._now() - watched.updated_at > PENDING_GRACE

    async def _queue(self, job: Job) -> None:
        if not self._dry_run:
            await self._send(job)

    async def _key_state(self, key: KeyUrl) -> _KeyState:
        """This pass's view of one key, fetched once however many clusters use it."""
        ident = f"{key.host}/{key.name.lower()}"
        task = self._keys.get(ident)
        if task is None:
            task = asyncio.create_task(self._fetch_key(key))
            self._keys[ident] = task
        # Shielded: one cluster running out of time must not cancel the read the key's other clusters share.
        return await asyncio.shield(task)

    async def _fetch_key(self, key: KeyUrl) -> _KeyState:
        keys = self._service.runtime.keys
        fields = {"key": f"{key.host}/{key.name}", "trigger": Trigger.RECONCILE}
        versions, attempts = await self._retry.call(lambda: keys.list_versions(key), log_fields=fields)
        self._report.keyvault_reads += attempts
        read: dict[str, KeyVersion] = {}

        async def read_version(url: KeyUrl) -> KeyVersion:
            full, attempts = await self._retry.call(lambda: keys.get_version(url), log_fields=fields)
            self._report.keyvault_reads += attempts
            read[full.version] = full
            return full

        newest = await pick_newest_usable(versions, read_version, self._now())
        return _KeyState(
            created={v.version: v.created_on for v in versions},
            expires={v.version: v.expires_on for v in versions},
            newest=newest,
            versions=tuple(versions),
            read=read,
        )

    @staticmethod
    def _skipped(watched: WatchedCluster, drift: str, detail: str, level: str) -> ReconcileLine:
        return ReconcileLine(
            watched.cluster_id, watched.key, watched.current_version, None, "skipped", drift, detail, level
        )

    @staticmethod
    def _with_drift(line: ReconcileLine, drift: tuple[str, str, str] | None) -> ReconcileLine:
        if drift is not None:
            line.drift, line.detail, line.level = drift
        return line
