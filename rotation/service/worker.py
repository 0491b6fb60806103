"""Job -> engine: one queued job claims its cluster, runs the rotation and records what came of it.

The second half of a rotation (docs/design.md, "The flow"): `function_app.rotate_cluster` (or the queue
worker of `rotation serve`, or the CLI) hands a job of `rotation.store.jobs` to `Worker.handle_job`, which
claims the cluster (rule 8), runs `rotation.engine.Rotator` on it, records the result in the history,
follows an accepted operation with check jobs (rule 7), defers a job whose cluster another worker holds, and
records a job whose retries ran out before the queue redelivers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from rotation.errors import ClusterBusy, ServiceError, TransientFailure
from rotation.ids import parse_cluster_id, parse_key_url
from rotation.outcomes import Outcome, RotationResult, Trigger, exhausted
from rotation.rotation_job import RotationRequest, WriteFlag
from rotation.service.batch import run_batch
from rotation.service.resume import operation_to_follow, operation_to_resume
from rotation.service.slots import JobSlots
from rotation.store.jobs import Job, JobBatch, JobRejected, parse_message

if TYPE_CHECKING:
    from rotation.ids import KeyUrl
    from rotation.service.runtime import Runtime
    from rotation.settings import Settings
    from rotation.store.claims import Claim
    from rotation.store.jobs import JobQueue
    from rotation.store.registry import Registry
    from rotation.store.watch import WatchedCluster

logger = logging.getLogger(__name__)

# Check jobs one accepted operation may chain (each follows it for ROTATION_POLL_BUDGET_SECONDS, then waits
# ROTATION_CHECK_DELAY_SECONDS): about two hours at the defaults, far past any cluster update.
MAX_CHECKS = 24
NOT_WATCHED = "not watched: the app acts only on registered clusters"
HAND_OFF_SECONDS = 10.0  # the most a cancelled job spends recording its accepted operation


class Worker:
    """Runs jobs on the process's rotator; owns no client (the `Service` closes them)."""

    def __init__(
        self, runtime: Runtime, registry: Registry, queue: JobQueue, *, worker_id: str | None = None
    ) -> None:
        self.runtime = runtime
        self.registry = registry
        self.queue = queue
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # ROTATION_MAX_CONCURRENCY: clusters at work at once in this process (`rotation.service.slots`).
        self._job_slots = JobSlots(runtime.settings.max_concurrency)
        # Jobs cancelled after ARM accepted their write, recorded `pending` and handed on (see `execute`).
        self.handed_off: list[RotationResult] = []

    @property
    def settings(self) -> Settings:
        """The process settings."""
        return self.runtime.settings

    async def handle_job(
        self, body: str | bytes, *, dequeue_count: int = 1, invocation_id: str | None = None
    ) -> RotationResult | None:
        """The queue function's work: parse the message, then `execute` it (ROTATION_MAX_CONCURRENCY at once).

        Returns None when the job was deferred (another worker holds the cluster: the job is queued again
        with a delay) or malformed (logged, acknowledged). Raises `TransientFailure` after tenacity gives up,
        so the queue redelivers and finally moves the message to the poison queue.
        """
        try:
            job = parse_message(body, allowed_suffixes=self.settings.allowed_vault_suffixes)
        except JobRejected as exc:
            logger.error(  # noqa: TRY400 - the reason is the whole story; no traceback to show
                "rotation.job_rejected",
                extra={"invocation_id": invocation_id, "reason": str(exc), "outcome": Outcome.REJECTED.value},
            )
            return None
        if isinstance(job, JobBatch):  # many clusters: each runs as its own job (rotation.service.batch)
            await run_batch(
                job,
                run=self.run_job,
                requeue=self.queue.send,
                dequeue_count=dequeue_count,
                invocation_id=invocation_id,
            )
            return None
        return await self.run_job(job, dequeue_count=dequeue_count, invocation_id=invocation_id)

    async def run_job(
        self, job: Job, *, dequeue_count: int | None, invocation_id: str | None
    ) -> RotationResult | None:
        """`handle_job` for a parsed job: `execute` it, or defer it while another worker holds the cluster."""
        try:
            async with self._job_slots.hold():
                return await self.execute(job, dequeue_count=dequeue_count, invocation_id=invocation_id)
        except ClusterBusy as exc:
            backoff, ttl = self.settings.defer_seconds, self.settings.claim_ttl_seconds
            # Defer at least until a dead worker's claim has lapsed: ROTATION_MAX_DEFERS defers of
            # ROTATION_DEFER_SECONDS alone (40 x 15 s by default) are less than the 900 s claim TTL.
            if job.backoffs >= max(self.settings.max_defers, math.ceil(ttl / max(backoff, 0.001)) + 1):
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
        claim = await self.registry.claims.take(cluster_id, owner=owner, ttl=self.settings.claim_ttl_seconds)
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
        pacer = self.runtime.clusters.pacer
        # A job that may write announces it: the shared ARM budget is reserved for a burst of jobs at once.
        announce = (
            pacer.expect_write(cluster_id.subscription)
            if pacer is not None and job.operation_url is None
            else contextlib.nullcontext()
        )
        try:
            with announce:
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
                        "wait_s": self.settings.claim_ttl_seconds,
                        "reason": "cancelled while a PUT was in flight",
                    },
                )
            raise
        finally:
            if not keep:
                try:
                    await self.registry.claims.release(claim)
                except (
                    ServiceError
                ) as exc:  # it lapses at its TTL; failing the job would run it into its claim
                    logger.warning(
                        "rotation.claim_release_failed",
                        extra={
                            "cluster_id": job.cluster_id,
                            "invocation_id": invocation_id,
                            "reason": str(exc),
                        },
                    )

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
            operation_url, refusal = operation_to_follow(
                job,
                operation_url,
                watched,
                arm_endpoint=self.settings.arm_endpoint,
                invocation_id=invocation_id,
            )
            if refusal is not None:
                return _rejected(job, refusal, invocation_id)
        operation_url, target = await operation_to_resume(
            self.registry,
            cluster_id,
            watched,
            operation_url=operation_url,
            target=target,
            allowed_suffixes=self.settings.allowed_vault_suffixes,
        )
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
            registered_version=watched.current_version if watched is not None else None,
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
        checks = job.checks + 1 if job.trigger == Trigger.CHECK else 1
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
                    trigger=Trigger.CHECK,
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
                            trigger=Trigger.CHECK,
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
