"""A queue message of many clusters (`rotation.store.jobs.JobBatch`), split in the worker.

Each cluster runs as the job a message of its own would have carried (claim, rotate, record, release), all of
them at once within ROTATION_MAX_CONCURRENCY. A cluster whose job failed after its retries (or for any other
reason) is queued again as a job of its own, so the queue retries it, and finally moves it to the poison
queue, without running the others again; the batch's message is then done. Only when that cannot be queued
(storage down) does the invocation raise, and the whole message comes back: the clusters that were done
are found current (rule 2) and cost one read each, nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from rotation.store.jobs import Job, JobBatch

    RunJob = Callable[..., Awaitable[object]]  # `Service.run_job`

logger = logging.getLogger(__name__)


async def run_batch(
    batch: JobBatch,
    *,
    run: RunJob,
    requeue: Callable[[Job], Awaitable[None]],
    dequeue_count: int | None,
    invocation_id: str | None,
) -> None:
    """Run every cluster of ``batch`` with ``run``; ``requeue`` each one that failed (raise if that fails)."""
    jobs = batch.jobs()
    logger.info(
        "rotation.job_batch_started",
        extra={
            "event_id": batch.event_id,
            "invocation_id": invocation_id,
            "trigger": batch.trigger,
            "cluster_count": len(jobs),
            "dequeue_count": dequeue_count,
        },
    )
    # dequeue_count None: a cluster's failure is not this message's delivery; it is queued on its own below.
    results = await asyncio.gather(
        *(run(job, dequeue_count=None, invocation_id=invocation_id) for job in jobs),
        return_exceptions=True,
    )
    failed = []
    for job, result in zip(jobs, results, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result  # cancelled (host shutdown): the message comes back; claims were handed on per job
        if isinstance(result, Exception):
            failed.append((job, result))
    for job, exc in failed:
        await requeue(job)  # a storage failure raises: the whole message is redelivered
        logger.warning(
            "rotation.job_requeued",
            extra={
                "cluster_id": job.cluster_id,
                "event_id": job.event_id,
                "invocation_id": invocation_id,
                "trigger": job.trigger,
                "reason": f"{type(exc).__name__}: {exc}",
            },
        )
