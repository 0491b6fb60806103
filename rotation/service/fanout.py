"""Event -> jobs: a Key Vault event becomes one queued job per watched cluster of its key.

The first step of a rotation (docs/design.md, "The flow"): `function_app.on_key_event` (or the webhook of
`rotation serve`, or `replay`) parses the event here and `Fanout.handle_event` queues the jobs that
`rotation.service.worker` runs. Storage failures propagate as `ServiceError` so Event Grid redelivers
(rule 10); an event that cannot be acted on is answered with an `EventOutcome` and a reason.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rotation.events import EventKind, IgnoredEvent, ParsedEvent, RejectedEvent, parse
from rotation.outcomes import EventOutcome, Outcome, Trigger
from rotation.store.jobs import MAX_BATCH, Job, batches
from rotation.untrusted import JsonRefused, bounded_value

if TYPE_CHECKING:
    from rotation.settings import Settings
    from rotation.store.jobs import JobQueue
    from rotation.store.registry import Registry
    from rotation.store.watch import KeyMember

logger = logging.getLogger(__name__)

ENQUEUE_CONCURRENCY = 64  # queue sends in flight while fanning an event out (one connection each)
# How an event's jobs are put in messages (`fanout_batch_size`): one cluster per message up to
# SINGLE_JOB_FANOUT clusters; past that at least MIN_BATCH per message (a send, a receive and a delete serve
# several clusters), and at most FANOUT_MESSAGES messages (until a message holds `MAX_BATCH` clusters): enough
# for every instance the host scales out to to get some, few enough to be sent in well under a second.
SINGLE_JOB_FANOUT = 32
MIN_BATCH = 4
FANOUT_MESSAGES = 256
# A delivery of a key version fanned out less than this long ago queues nothing again (Event Grid delivers
# at least once; reconcile catches what a skipped duplicate could have reached).
FANOUT_WINDOW = timedelta(minutes=15)


@dataclass(frozen=True)
class EventReport:
    """What one event led to: the outcome for the event itself and the clusters it reached."""

    event_id: str | None
    outcome: EventOutcome
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


class Fanout:
    """Parses events and queues their jobs; owns no client (the `Service` closes them)."""

    def __init__(self, settings: Settings, registry: Registry, queue: JobQueue) -> None:
        self.settings = settings
        self.registry = registry
        self.queue = queue

    def parse(self, raw: object) -> ParsedEvent:
        """Parse one raw event; a value too large or deep to read is a `RejectedEvent`, as a malformed one."""
        try:
            bounded_value(raw, what="event")
        except JsonRefused as exc:
            return RejectedEvent(str(exc))
        return parse(raw, allowed_suffixes=self.settings.allowed_vault_suffixes)

    async def handle_event(self, event: ParsedEvent, *, invocation_id: str | None = None) -> EventReport:
        """Resolve the watched clusters of the event's key and queue one job per cluster.

        Malformed events are answered ``rejected`` (logged at ERROR, acknowledged: retrying cannot fix them);
        other types ``ignored``. Storage failures raise, so Event Grid redelivers the event.
        """
        started = time.perf_counter()
        if isinstance(event, RejectedEvent):
            logger.error(
                "rotation.event_rejected",
                extra={
                    "event_id": event.event_id,
                    "invocation_id": invocation_id,
                    "reason": event.reason,
                    "outcome": Outcome.REJECTED.value,
                },
            )
            return EventReport(event.event_id, EventOutcome.REJECTED, event.reason)
        if isinstance(event, IgnoredEvent):
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
                event.event_id, EventOutcome.IGNORED, event.reason, event_type=event.event_type
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
                    EventOutcome.DUPLICATE,
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
                EventOutcome.WARNED,
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
                trigger=Trigger.EVENT,
                event_id=event.event_id,
                enqueued_at=now,
            )
            for w in _by_subscription_round_robin(watched)
        ]
        # A small fan-out is one job per message as ever, a larger one batches that the workers split (Queue
        # storage has no batch send; Event Grid waits 30 s at most).
        await self.queue.send_many(
            batches(jobs, fanout_batch_size(len(jobs))), concurrency=ENQUEUE_CONCURRENCY
        )
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
            event.event_id,
            EventOutcome.QUEUED,
            f"{len(jobs)} job(s) queued",
            event.event_type,
            key,
            ids,
            jobs,
            duration,
        )


def fanout_batch_size(clusters: int) -> int:
    """Clusters per message when one event reaches ``clusters`` watched clusters."""
    if clusters <= SINGLE_JOB_FANOUT:
        return 1
    return min(MAX_BATCH, max(MIN_BATCH, math.ceil(clusters / FANOUT_MESSAGES)))


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
