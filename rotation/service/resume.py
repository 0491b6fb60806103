"""Which operation a job follows: rule 7 (resume, don't repeat) and rule 11 (only the app's own operations).

`rotation.service.worker` asks here before it runs the rotator: a redelivered job whose write ARM already
accepted resumes that operation instead of writing again; a check job follows the operation it names only
when it is the one recorded for its cluster.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rotation.ids import InvalidKeyUrl, parse_cluster_id, parse_key_url
from rotation.outcomes import Outcome
from rotation.url_guard import UnsafeUrl, check_operation_path, check_same_origin

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rotation.ids import KeyUrl, ResourceId
    from rotation.store.jobs import Job
    from rotation.store.registry import Registry
    from rotation.store.watch import WatchedCluster

logger = logging.getLogger(__name__)


async def operation_to_resume(
    registry: Registry,
    cluster_id: ResourceId,
    watched: WatchedCluster | None,
    *,
    operation_url: str | None,
    target: KeyUrl | None,
    allowed_suffixes: Sequence[str],
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
        return await _pending_in_history(registry, cluster_id, allowed_suffixes)
    return None, target


def operation_to_follow(
    job: Job,
    operation_url: str,
    watched: WatchedCluster | None,
    *,
    arm_endpoint: str,
    invocation_id: str | None,
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
        check_operation_path(check_same_origin(operation_url, arm_endpoint), parse_cluster_id(job.cluster_id))
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


async def _pending_in_history(
    registry: Registry, cluster_id: ResourceId, allowed_suffixes: Sequence[str]
) -> tuple[str | None, KeyUrl | None]:
    """The operation the last history entry left `pending` (an interrupted CLI `rotate`), if any."""
    entries = await registry.history.recent(cluster_id, limit=1)
    if not entries or entries[0].outcome != Outcome.PENDING.value:
        return None, None
    entry = entries[0]
    if not entry.operation_url or not entry.key or not entry.to_version:
        return None, None
    try:
        host, _, name = entry.key.partition("/")  # `RotationResult.key`: "{vault host}/{key name}"
        target = parse_key_url(
            f"https://{host}/keys/{name}/{entry.to_version}",
            allowed_suffixes=allowed_suffixes,
            require_version=True,
        )
    except InvalidKeyUrl:
        return None, None
    return entry.operation_url, target
