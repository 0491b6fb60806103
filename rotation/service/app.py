"""What the functions and the CLI do: fan an event out to jobs, run one job, register clusters.

One `Service` per process (and event loop) holds the clients; `function_app.py` and `rotation.cli.main` only
translate their inputs and outputs. Storage failures propagate as `ServiceError` so the platform redelivers
(rule 10); everything the caller sent that cannot be acted on is answered with an outcome and a reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rotation.doctor.checks import Doctor
from rotation.doctor.report import ClusterDiagnosis, DoctorReport, log_findings
from rotation.errors import ClusterBusy, NotFoundError, ServiceError, TransientFailure
from rotation.events import EventIgnored, EventKind, EventRejected, KeyVersionEvent, parse_event
from rotation.ids import (
    InvalidKeyUrl,
    InvalidResourceId,
    parse_cluster_id,
    parse_key_url,
)
from rotation.outcomes import Outcome, RotationResult, exhausted
from rotation.rotation_job import RotationRequest, WriteFlag
from rotation.service.runtime import Runtime
from rotation.store.clients import storage_clients, storage_credential
from rotation.store.jobs import Job, JobQueue, JobRejected
from rotation.store.registry import Registry
from rotation.untrusted import JsonRefused, bounded_value
from rotation.url_guard import UnsafeUrl, check_operation_path, check_same_origin

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

    from rotation.azure.arm import Cluster
    from rotation.ids import KeyUrl, ResourceId
    from rotation.settings import Settings
    from rotation.store.claims import Claim
    from rotation.store.watch import KeyMember, WatchedCluster

logger = logging.getLogger(__name__)

CLAIM_TTL_S = 900.0  # longer than one invocation's polling budget, shorter than an on-call's patience
BACKOFF_S = 15.0  # a job whose cluster another worker holds comes back after this long
MAX_BACKOFFS = 40  # a claim lapses after CLAIM_TTL_S, so this is never reached by a healthy system
ENQUEUE_CONCURRENCY = 64  # queue sends in flight while fanning an event out (one connection each)
# A delivery of a key version fanned out less than this long ago queues nothing again (Event Grid delivers
# at least once; reconcile catches what a skipped duplicate could have reached).
FANOUT_WINDOW = timedelta(minutes=15)
# Check jobs one accepted operation may chain (each follows it for ROTATION_POLL_BUDGET_SECONDS, then waits
# ROTATION_CHECK_DELAY_SECONDS): about two hours at the defaults, far past any cluster update.
MAX_CHECKS = 24
NOT_WATCHED = "not watched: the app acts only on registered clusters"
HAND_OFF_SECONDS = 10.0  # the most a cancelled job spends recording its accepted operation


class RegistrationRefused(Exception):
    """The cluster cannot be watched; the message is the one-line reason."""


@dataclass(frozen=True)
class EventReport:
    """What one event led to: the outcome for the event itself and the clusters it reached."""

    event_id: str | None
    outcome: str  # "queued", Outcome.IGNORED, Outcome.REJECTED, "warned", "duplicate"
    reason: str
    event_type: str | None = None
    key: str | None = None
    clusters: list[str] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (jobs are summarised by their count)."""
        return {
            "event_id": self.event_id,
            "outcome": self.outcome,
            "reason": self.reason,
            "event_type": self.event_type,
            "key": self.key,
            "clusters": self.clusters,
            "queued": len(self.jobs),
            "duration_s": round(self.duration_s, 4),
        }


class Service:
    """The daemon's behaviour over one runtime, one registry and one job queue."""

    def __init__(
        self,
        runtime: Runtime,
        registry: Registry,
        queue: JobQueue,
        *,
        worker_id: str | None = None,
        storage_credential: AsyncTokenCredential | None = None,
        claim_ttl: float | None = None,
        backoff_s: float | None = None,
    ) -> None:
        self.runtime = runtime
        self.registry = registry
        self.queue = queue
        # None: the module defaults, read at call time (a short TTL/backoff is for chaos runs and tests)
        self.claim_ttl = claim_ttl
        self.backoff_s = backoff_s
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._storage_credential = storage_credential
        # ROTATION_MAX_CONCURRENCY: clusters in flight in this process; queued jobs past it wait here
        # (the host may hand over more at once: host.json's batchSize + newBatchThreshold).
        self._job_slots = asyncio.Semaphore(runtime.settings.max_concurrency)
        # Jobs cancelled after ARM accepted their write, recorded `pending` and handed on (see `execute`).
        self.handed_off: list[RotationResult] = []

    @property
    def settings(self) -> Settings:
        """The process settings."""
        return self.runtime.settings

    @classmethod
    def create(cls, settings: Settings) -> Service:
        """Build every client for ``settings`` (no I/O until the first call)."""
        return cls.with_storage(Runtime.create(settings), settings)

    @classmethod
    def with_storage(cls, runtime: Runtime, settings: Settings) -> Service:
        """The service on ``runtime`` with the storage clients ``settings`` name (no I/O until first used)."""
        credential = (
            None
            if settings.storage_connection
            else storage_credential(settings, runtime.credential, http=runtime.http)
        )
        tables, queues = storage_clients(settings, credential, http=runtime.http)
        own = credential if credential is not None and credential is not runtime.credential else None
        return cls(runtime, Registry(tables), JobQueue(queues), storage_credential=own)

    async def close(self) -> None:
        """Close every client (the registry and queue close their service clients)."""
        await self.registry.close()
        await self.queue.close()
        if self._storage_credential is not None:
            await self._storage_credential.close()
        await self.runtime.close()

    # ---- events -------------------------------------------------------------------------------------

    def parse(self, raw: object) -> KeyVersionEvent | EventRejected | EventIgnored:
        """Parse one raw event, returning the rejection or ignore reason instead of raising it."""
        try:
            bounded_value(raw, what="event")
            return parse_event(raw, allowed_suffixes=self.settings.allowed_vault_suffixes)
        except JsonRefused as exc:
            return EventRejected(str(exc))
        except (EventRejected, EventIgnored) as exc:
            return exc

    async def handle_event(
        self, event: KeyVersionEvent | EventRejected | EventIgnored, *, invocation_id: str | None = None
    ) -> EventReport:
        """Resolve the watched clusters of the event's key and queue one job per cluster.

        Malformed events are answered ``rejected`` (logged at ERROR, acknowledged: retrying cannot fix them);
        other types ``ignored``. Storage failures raise, so Event Grid redelivers the event.
        """
        started = time.perf_counter()
        if isinstance(event, EventRejected):
            logger.error(
                "rotation.event_rejected",
                extra={
                    "event_id": event.event_id,
                    "invocation_id": invocation_id,
                    "reason": event.reason,
                    "outcome": Outcome.REJECTED.value,
                },
            )
            return EventReport(event.event_id, Outcome.REJECTED.value, event.reason)
        if isinstance(event, EventIgnored):
            logger.info(
                "rotation.event_ignored",
                extra={
                    "event_id": event.event_id,
                    "invocation_id": invocation_id,
                    "reason": event.reason,
                    "event_type": event.event_type,
                    "outcome": Outcome.IGNORED.value,
                },
            )
            return EventReport(
                event.event_id, Outcome.IGNORED.value, event.reason, event_type=event.event_type
            )
        key = f"{event.key_url.host}/{event.key_url.name}"
        base = {
            "event_id": event.event_id,
            "invocation_id": invocation_id,
            "event_type": event.event_type,
            "key": key,
            "to_version": event.key_url.version,
        }
        logger.info("rotation.event_received", extra=base)
        host, name, version = event.key_url.host, event.key_url.name, event.key_url.version or ""
        if event.kind is EventKind.NEW_VERSION:
            last = await self.registry.watched.fanned_out_at(host, name, version)
            if last is not None and datetime.now(UTC) - last < FANOUT_WINDOW:
                reason = f"jobs for this version were queued at {last.isoformat()}; a duplicate delivery"
                logger.info("rotation.event_duplicate", extra={**base, "reason": reason})
                return EventReport(
                    event.event_id,
                    "duplicate",
                    reason,
                    event.event_type,
                    key,
                    duration_s=time.perf_counter() - started,
                )
        watched = await self.registry.watched.for_key(host, name)
        ids = [w.cluster_id for w in watched]
        if event.kind is not EventKind.NEW_VERSION:
            level = logging.WARNING if event.kind is EventKind.NEAR_EXPIRY else logging.ERROR
            name = (
                "rotation.key_near_expiry" if event.kind is EventKind.NEAR_EXPIRY else "rotation.key_expired"
            )
            logger.log(
                level,
                name,
                extra={
                    **base,
                    "clusters": ids,
                    "cluster_count": len(ids),
                    "expires_on": event.expires_on.isoformat() if event.expires_on else None,
                },
            )
            return EventReport(
                event.event_id,
                "warned",
                name,
                event.event_type,
                key,
                ids,
                duration_s=time.perf_counter() - started,
            )
        now = datetime.now(UTC)
        jobs = [
            Job(
                cluster_id=w.cluster_id,
                target_key_url=str(event.key_url),
                trigger="event",
                event_id=event.event_id,
                enqueued_at=now,
            )
            for w in _by_subscription_round_robin(watched)
        ]
        await self.queue.send_many(jobs, concurrency=ENQUEUE_CONCURRENCY)
        # Only once every job is queued: a delivery that failed before this is redelivered in full.
        await self.registry.watched.remember_fanout(host, name, version)
        duration = time.perf_counter() - started
        logger.info(
            "rotation.jobs_enqueued",
            extra={
                **base,
                "clusters_found": len(watched),
                "queued": len(jobs),
                "duration_s": round(duration, 4),
            },
        )
        return EventReport(
            event.event_id, "queued", f"{len(jobs)} job(s) queued", event.event_type, key, ids, jobs, duration
        )

    # ---- jobs ---------------------------------------------------------------------------------------

    async def handle_job(
        self, body: str | bytes, *, dequeue_count: int = 1, invocation_id: str | None = None
    ) -> RotationResult | None:
        """The queue function's work: parse the message, then `execute` it (ROTATION_MAX_CONCURRENCY at once).

        Returns None when the job was deferred (another worker holds the cluster: the job is queued again
        with a delay) or malformed (logged, acknowledged). Raises `TransientFailure` after tenacity gives up,
        so the queue redelivers and finally moves the message to the poison queue.
        """
        try:
            job = Job.from_json(body, allowed_suffixes=self.settings.allowed_vault_suffixes)
        except JobRejected as exc:
            logger.error(  # noqa: TRY400 - the reason is the whole story; no traceback to show
                "rotation.job_rejected",
                extra={"invocation_id": invocation_id, "reason": str(exc), "outcome": Outcome.REJECTED.value},
            )
            return None
        try:
            async with self._job_slots:
                return await self.execute(job, dequeue_count=dequeue_count, invocation_id=invocation_id)
        except ClusterBusy as exc:
            backoff = BACKOFF_S if self.backoff_s is None else self.backoff_s
            ttl = CLAIM_TTL_S if self.claim_ttl is None else self.claim_ttl
            # Defer at least until a dead worker's claim has lapsed (40 x 15 s alone is less than 900 s).
            if job.backoffs >= max(MAX_BACKOFFS, math.ceil(ttl / max(backoff, 0.001)) + 1):
                raise
            await self.queue.send(replace(job, backoffs=job.backoffs + 1), delay=backoff)
            logger.info(
                "rotation.job_deferred",
                extra={
                    "cluster_id": job.cluster_id,
                    "event_id": job.event_id,
                    "invocation_id": invocation_id,
                    "trigger": job.trigger,
                    "wait_s": backoff,
                    "attempt": job.backoffs + 1,
                    "reason": str(exc),
                },
            )
            return None

    async def execute(
        self,
        job: Job,
        *,
        dequeue_count: int | None = None,
        invocation_id: str | None = None,
        dry_run: bool | None = None,
        watched_only: bool = True,
    ) -> RotationResult:
        """Claim the cluster (rule 8), rotate, record, release; `ClusterBusy` when another worker holds it.

        ``watched_only`` (rule 11): a cluster that is not registered is answered `rejected`, with no ARM
        call; only the CLI's ``rotate`` (an operator's own credentials) passes False.
        Cancelled after ARM accepted the write: the operation is recorded `pending` in the history (and the
        watch row), a check job takes it over, the claim is released, and the result is kept in
        `handed_off` for the caller to report; the cancellation then goes on.
        """
        cluster_id = parse_cluster_id(job.cluster_id)
        # One owner per execution, not per process: the host runs many invocations of one process at once,
        # and a claim is re-entrant for its owner, so a process-wide owner would let two of them in.
        owner = f"{self.worker_id}:{uuid.uuid4().hex[:8]}"
        ttl = CLAIM_TTL_S if self.claim_ttl is None else self.claim_ttl
        claim = await self.registry.claims.take(cluster_id, owner=owner, ttl=ttl)
        if claim is None:
            holder, until = await self.registry.claims.holder(cluster_id)
            if holder is None or until is None:
                raise ClusterBusy(f"{job.cluster_id} is being rotated by another worker")
            raise ClusterBusy(
                f"{job.cluster_id} is being rotated by {holder} (its claim ends "
                f"{until.strftime('%Y-%m-%d %H:%M:%S')} UTC, or when that run finishes)"
            )

        async def still_ours() -> None:
            # Before each PUT, a claim that is no longer fresh is renewed: a job that ran past its claim's
            # expiry must not PUT over the worker that took the cluster since (it could move the cluster
            # back a version). A fresh claim cannot have been taken (see `Claim.fresh`).
            if not claim.fresh() and not await self.registry.claims.renew(claim):
                raise ClusterBusy(f"{job.cluster_id}: the claim lapsed and another worker holds the cluster")

        writing = WriteFlag(guard=still_ours)  # in_flight: up while the rotator's PUT may be on its way
        keep = False
        run = _JobRun()
        try:
            return await self._run_job(
                job,
                claim,
                invocation_id=invocation_id,
                dequeue_count=dequeue_count,
                dry_run=dry_run,
                write_flag=writing,
                watched_only=watched_only,
                run=run,
            )
        except asyncio.CancelledError:
            # Cancelled with a PUT possibly still on its way to ARM: keep the claim, so that no other worker
            # PUTs before it lands (a late arrival could take the cluster back a version); it lapses at TTL.
            keep = writing.in_flight
            if not keep and run.accepted is not None:
                await self._hand_off(job, run, invocation_id=invocation_id)
            if keep:
                logger.warning(
                    "rotation.claim_kept",
                    extra={
                        "cluster_id": job.cluster_id,
                        "event_id": job.event_id,
                        "invocation_id": invocation_id,
                        "wait_s": ttl,
                        "reason": "cancelled while a PUT was in flight",
                    },
                )
            raise
        finally:
            if not keep:
                await self.registry.claims.release(claim)

    def resolve_jobs(self, event: KeyVersionEvent, watched: list[KeyMember]) -> list[Job]:
        """One job per watched cluster of the event's key."""
        return [
            Job.new(w.cluster_id, trigger="event", target_key_url=str(event.key_url), event_id=event.event_id)
            for w in watched
        ]

    async def _record_exhausted(
        self,
        job: Job,
        exc: TransientFailure,
        *,
        target: KeyUrl | None,
        invocation_id: str | None,
        dequeue_count: int | None,
        watched: WatchedCluster | None,
    ) -> None:
        """Record a job whose retries ran out (the caller raises, so the queue redelivers or poisons it)."""
        # What the queue does with the message once this invocation raises (None: not from the queue).
        last = dequeue_count is not None and dequeue_count >= self.settings.max_dequeue_count
        then = f"moved to {self.queue.poison_name}" if last else "the queue redelivers"
        delivery = f" (delivery {dequeue_count} of {self.settings.max_dequeue_count}); {then}"
        failed = exhausted(
            job.cluster_id,
            exc,
            note=delivery if dequeue_count is not None else "",
            to_version=target.version if target else None,
        )
        await self.registry.record(
            failed,
            trigger=job.trigger,
            event_id=job.event_id,
            invocation_id=invocation_id,
            known=watched,
            dequeue_count=dequeue_count,
        )
        if last:
            logger.error(
                "rotation.job_poisoned",
                extra={
                    "cluster_id": job.cluster_id,
                    "event_id": job.event_id,
                    "invocation_id": invocation_id,
                    "trigger": job.trigger,
                    "dequeue_count": dequeue_count,
                    "queue": self.queue.poison_name,
                    "reason": failed.reason,
                    "error_code": failed.error_code,
                    "error_message": failed.error_message,
                },
            )

    async def _run_job(
        self,
        job: Job,
        claim: Claim,
        *,
        invocation_id: str | None,
        dequeue_count: int | None,
        dry_run: bool | None,
        write_flag: WriteFlag,
        watched_only: bool = True,
        run: _JobRun | None = None,
    ) -> RotationResult:
        cluster_id = claim.cluster_id
        run = run if run is not None else _JobRun()
        target = parse_key_url(job.target_key_url, require_version=True) if job.target_key_url else None
        operation_url = job.operation_url
        # The watch row as last read or written: its ETag makes each later registry write a single request.
        watched = await self.registry.watched.get_claimed(claim)
        if watched is None and claim.key_partition is not None:
            watched = await self.registry.watched.get(cluster_id)  # re-registered since the claim was taken
        run.watched = watched
        if watched is None and watched_only:
            return _rejected(job, NOT_WATCHED, invocation_id)  # rule 11: no ARM call, nothing recorded
        if operation_url is not None:
            operation_url, refusal = self._operation_to_follow(job, operation_url, watched, invocation_id)
            if refusal is not None:
                return _rejected(job, refusal, invocation_id)
        operation_url, target = await self._to_resume(cluster_id, operation_url, target, watched)
        if operation_url is not None and target is not None:
            run.accepted = (operation_url, target)  # resuming: an interruption hands it on again
        request = RotationRequest(
            cluster_id=cluster_id,
            target=target,
            trigger=job.trigger,
            event_id=job.event_id,
            dry_run=self.settings.dry_run if dry_run is None else dry_run,
            operation_url=operation_url,
            invocation_id=invocation_id,
            dequeue_count=dequeue_count,
        )

        async def on_accepted(url: str, accepted_target: KeyUrl) -> None:
            nonlocal watched
            run.accepted = (url, accepted_target)
            watched = await self.registry.watched.set_operation(
                cluster_id, operation_url=url, target_key_url=str(accepted_target), known=watched
            )

        try:
            result = await self.runtime.rotator.rotate(
                request, on_accepted=on_accepted, write_flag=write_flag
            )
        except TransientFailure as exc:
            await self._record_exhausted(
                job,
                exc,
                target=target,
                invocation_id=invocation_id,
                dequeue_count=dequeue_count,
                watched=watched,
            )
            raise
        checks = job.checks + 1 if job.trigger == "check" else 1
        if result.outcome is Outcome.PENDING and checks > MAX_CHECKS:
            result = replace(
                result,
                outcome=Outcome.FAILED,
                reason=f"operation still running after {MAX_CHECKS} check jobs; no more are queued: "
                "reconcile or `rotate` decides again once it ends",
            )
        run.accepted = None  # recorded below: nothing left to hand off
        await self.registry.record(
            result, trigger=job.trigger, event_id=job.event_id, invocation_id=invocation_id, known=watched
        )
        if result.outcome is Outcome.PENDING and result.operation_url:
            check = replace(
                Job.new(
                    job.cluster_id,
                    trigger="check",
                    target_key_url=result.target_key_url,
                    event_id=job.event_id,
                    operation_url=result.operation_url,
                ),
                checks=checks,
            )
            await self.queue.send(check, delay=self.settings.check_delay_seconds)
            logger.info(
                "rotation.check_scheduled",
                extra={
                    "cluster_id": job.cluster_id,
                    "event_id": job.event_id,
                    "operation_url": result.operation_url,
                    "wait_s": self.settings.check_delay_seconds,
                },
            )
        return result

    async def _to_resume(
        self,
        cluster_id: ResourceId,
        operation_url: str | None,
        target: KeyUrl | None,
        watched: WatchedCluster | None,
    ) -> tuple[str | None, KeyUrl | None]:
        """The operation to resume (rule 7) and its target, or ``(None, target)`` to decide afresh."""
        recorded = (
            parse_key_url(watched.target_key_url, require_version=True)
            if watched is not None and watched.operation_url and watched.target_key_url
            else None
        )
        if operation_url is not None:
            # A check job: its own target, else the one recorded with the operation.
            return operation_url, target or (
                recorded if watched and watched.operation_url == operation_url else None
            )
        # A redelivered job whose operation was already accepted resumes it, never PUTs again.
        if watched is not None and recorded is not None and (target is None or recorded == target):
            return watched.operation_url, recorded
        if watched is None and target is None:
            # An unwatched cluster (CLI `rotate`) has no watch row: an interrupted operation is in history.
            return await self._pending_in_history(cluster_id)
        return None, target

    def _operation_to_follow(
        self, job: Job, operation_url: str, watched: WatchedCluster | None, invocation_id: str | None
    ) -> tuple[str | None, str | None]:
        """A check job's operation URL (rule 11): follow it, reject the job, or decide afresh.

        ``(url, None)``: the operation the rotator recorded for this cluster (its watch row), followed.
        ``(None, reason)``: a URL off the ARM origin or outside the cluster's subscription's DocumentDB
        operations, an attack: the job is rejected. ``(None, None)``: any other URL (even another cluster's
        operation in the same subscription, whose success says nothing about this cluster) is never read;
        the job decides afresh for its target, as any job does.
        """
        if watched is not None and watched.operation_url == operation_url:
            return operation_url, None
        try:
            check_operation_path(
                check_same_origin(operation_url, self.settings.arm_endpoint), parse_cluster_id(job.cluster_id)
            )
        except UnsafeUrl as exc:
            return None, f"operation URL refused: {exc}"
        logger.warning(
            "rotation.check_not_recorded",
            extra={
                "cluster_id": job.cluster_id,
                "event_id": job.event_id,
                "invocation_id": invocation_id,
                "operation_url": operation_url,
                "reason": "not the operation recorded for this cluster: not followed; the job decides afresh",
            },
        )
        return None, None

    async def _pending_in_history(self, cluster_id: ResourceId) -> tuple[str | None, KeyUrl | None]:
        """The operation the last history entry left `pending` (an interrupted CLI `rotate`), if any."""
        entries = await self.registry.history.recent(cluster_id, limit=1)
        if not entries or entries[0].outcome != Outcome.PENDING.value:
            return None, None
        entry = entries[0]
        if not entry.operation_url or not entry.key or not entry.to_version:
            return None, None
        try:
            host, _, name = entry.key.partition("/")  # `RotationResult.key`: "{vault host}/{key name}"
            target = parse_key_url(
                f"https://{host}/keys/{name}/{entry.to_version}",
                allowed_suffixes=self.settings.allowed_vault_suffixes,
                require_version=True,
            )
        except InvalidKeyUrl:
            return None, None
        return entry.operation_url, target

    async def _hand_off(self, job: Job, run: _JobRun, *, invocation_id: str | None) -> None:
        """Record an accepted operation whose job was cancelled, and queue a check job to follow it.

        Runs while the cancellation unwinds; bounded in time, and a failure here leaves the watch row's
        operation (written before polling began) for reconcile to find.
        """
        assert run.accepted is not None  # noqa: S101 - the caller checked
        url, target = run.accepted
        watched = run.watched
        result = RotationResult(
            cluster_id=job.cluster_id,
            outcome=Outcome.PENDING,
            reason="interrupted while the operation ran; a check job or `rotate` resumes it",
            from_version=watched.current_version if watched is not None else None,
            to_version=target.version,
            key=f"{target.host}/{target.name}",
            target_key_url=str(target),
            operation_url=url,
        )
        try:
            async with asyncio.timeout(HAND_OFF_SECONDS):
                await self.registry.record(
                    result, trigger=job.trigger, event_id=job.event_id, invocation_id=invocation_id
                )
                if watched is not None:
                    await self.queue.send(
                        Job.new(
                            job.cluster_id,
                            trigger="check",
                            target_key_url=str(target),
                            event_id=job.event_id,
                            operation_url=url,
                        )
                    )
        except (TimeoutError, ServiceError) as exc:
            logger.warning(
                "rotation.hand_off_failed",
                extra={"cluster_id": job.cluster_id, "operation_url": url, "reason": str(exc)},
            )
            return
        self.handed_off.append(result)
        logger.warning(
            "rotation.operation_handed_off",
            extra={
                "cluster_id": job.cluster_id,
                "event_id": job.event_id,
                "invocation_id": invocation_id,
                "operation_url": url,
                "to_version": target.version,
                "reason": "cancelled after ARM accepted the write",
            },
        )

    # ---- registry -----------------------------------------------------------------------------------

    async def register(self, raw_cluster_id: str, *, owner: str | None) -> WatchedCluster:
        """GET the cluster and record it for watch; `RegistrationRefused` says why not."""
        cluster_id = parse_cluster_id(raw_cluster_id)
        try:
            cluster = await self.runtime.clusters.get(cluster_id)
        except NotFoundError as exc:
            raise RegistrationRefused(f"cluster not found: {cluster_id}") from exc
        cluster_id = _as_arm_spells_it(cluster_id, cluster.id)
        key = self._cmk_key(cluster)
        watched = await self.registry.watched.upsert(
            cluster_id=cluster_id,
            vault_host=key.host,
            key_name=key.name,
            current_version=key.version,
            identity=cluster.key_identity,
            owner=owner,
        )
        logger.info(
            "rotation.cluster_registered",
            extra={
                "cluster_id": str(cluster_id),
                "key": f"{key.host}/{key.name}",
                "from_version": key.version,
                "owner": owner,
            },
        )
        return watched

    async def register_and_check(
        self, raw_cluster_id: str, *, owner: str | None
    ) -> tuple[WatchedCluster, ClusterDiagnosis]:
        """`register`, then the doctor's checks on the cluster; findings are logged, never a refusal."""
        watched = await self.register(raw_cluster_id, owner=owner)
        [report] = (await self.doctor([watched.cluster_id])).clusters
        log_findings(report, context="register")
        return watched, report

    async def doctor(self, cluster_ids: list[str] | None = None) -> DoctorReport:
        """`rotation doctor` on these clusters (watched or not), or on every watched cluster."""
        if cluster_ids is None:
            cluster_ids = [w.cluster_id async for w in self.registry.watched.iterate()]
        async with Doctor.for_runtime(self.runtime) as doctor:
            return await doctor.check_many(cluster_ids)

    def _cmk_key(self, cluster: Cluster) -> KeyUrl:
        if not cluster.is_cmk or cluster.key_url is None:
            raise RegistrationRefused("cluster is not encrypted with a customer-managed key (not-cmk)")
        if cluster.key_identity is None:
            raise RegistrationRefused("cluster has no key encryption identity")
        try:
            return parse_key_url(cluster.key_url, allowed_suffixes=self.settings.allowed_vault_suffixes)
        except InvalidKeyUrl as exc:
            raise RegistrationRefused(f"cluster key is outside the allowed vaults: {exc}") from exc


@dataclass
class _JobRun:
    """What one execution learnt that its cancellation handler needs: the row, the accepted operation."""

    watched: WatchedCluster | None = None
    accepted: tuple[str, KeyUrl] | None = None  # (operation URL, target) once ARM accepted the write


def _rejected(job: Job, reason: str, invocation_id: str | None) -> RotationResult:
    """A job the app must not act on (rule 11): logged at ERROR, acknowledged, nothing recorded."""
    logger.error(
        "rotation.job_rejected",
        extra={
            "cluster_id": job.cluster_id,
            "event_id": job.event_id,
            "invocation_id": invocation_id,
            "trigger": job.trigger,
            "reason": reason,
            "outcome": Outcome.REJECTED.value,
        },
    )
    return RotationResult(cluster_id=job.cluster_id, outcome=Outcome.REJECTED, reason=reason)


def _as_arm_spells_it(given: ResourceId, arm_id: str) -> ResourceId:
    """The cluster id in the casing of ARM's answer (ids are case-insensitive; the registry shows ARM's)."""
    try:
        answered = parse_cluster_id(arm_id)
    except InvalidResourceId:
        return given
    return answered if answered.normalized == given.normalized else given


def _by_subscription_round_robin(watched: list[KeyMember]) -> list[KeyMember]:
    """One cluster of each subscription in turn.

    The registry returns a key's clusters sorted by id, so grouped by subscription; each subscription has its
    own ARM write budget, and workers take jobs roughly in queue order, so interleaving keeps every
    subscription's budget in use from the start instead of draining one subscription after another.
    """
    groups: dict[str, list[KeyMember]] = {}
    for w in watched:
        groups.setdefault(w.subscription.lower(), []).append(w)
    queues = list(groups.values())
    out: list[KeyMember] = []
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def watched_dict(w: WatchedCluster) -> dict[str, Any]:
    """A watched cluster as JSON (no ETag)."""
    out = asdict(w)
    out.pop("etag", None)
    for name, value in out.items():
        if isinstance(value, datetime):
            out[name] = value.isoformat()
    out["key"] = w.key
    return out


_services: dict[int, Service] = {}


async def service_for_loop(settings_factory: Any) -> Service:  # noqa: ANN401
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
