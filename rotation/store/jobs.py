"""The job queue ``rotation-jobs``: the clusters to rotate, on Azure Queue storage (aio).

Messages are compact JSON, base64-encoded on the wire (the Functions queue trigger's default). A message
is one `Job` (one cluster), or a `JobBatch`: the clusters of one event or reconcile pass that go to one
target, split into one job each by the worker (Queue storage has no batch send, so fanning 10,000 clusters
out one message each takes longer than Event Grid waits). A message that cannot be a job (not JSON, wrong
types, a cluster id that is not a mongoClusters id, a bad key URL, a batch too large or with a cluster
twice) is rejected by `parse_message` with a one-line reason, so a poison message is explained, not a
KeyError. Permission: Storage Queue Data Contributor (or a connection string).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceExistsError

from rotation.ids import (
    DEFAULT_VAULT_SUFFIXES,
    InvalidKeyUrl,
    InvalidResourceId,
    parse_cluster_id,
    parse_key_url,
)
from rotation.outcomes import Trigger
from rotation.store.clients import queue_client, storage_errors
from rotation.untrusted import JsonRefused, json_type, loads_bounded, quote

if TYPE_CHECKING:
    from collections.abc import Sequence

    from azure.storage.queue.aio import QueueServiceClient

QUEUE_NAME = "rotation-jobs"
MAX_DELAY_SECONDS = 7 * 24 * 3600  # the queue's limit on a message's initial invisibility
MAX_MESSAGE_BYTES = 64 * 1024  # Azure Queue storage's own limit on a message
# Clusters one message carries at most: ids are at most ~200 characters, so 100 stay well inside 64 KB once
# base64-encoded; and one worker runs a message's clusters at once.
MAX_BATCH = 100
# A check job follows one operation: never in a batch.
BATCH_TRIGGERS = frozenset({Trigger.EVENT, Trigger.RECONCILE, Trigger.REPLAY, Trigger.MANUAL})


class JobRejected(ValueError):
    """A queue message is not a valid job; the message says why in one line."""


@dataclass(frozen=True)
class Job:
    """Rotate one cluster (or, with ``operation_url``, resume following its accepted operation)."""

    cluster_id: str
    target_key_url: str | None  # None = the newest usable version of the cluster's key
    trigger: Trigger
    event_id: str | None
    enqueued_at: datetime
    operation_url: str | None = None  # set on "check" jobs: resume polling this operation (rule 7), never PUT
    backoffs: int = 0  # times this job was re-queued because another worker held the cluster
    checks: int = 0  # on "check" jobs: how many check jobs of this operation came before this one

    @classmethod
    def new(
        cls,
        cluster_id: str,
        *,
        trigger: Trigger,
        target_key_url: str | None = None,
        event_id: str | None = None,
        operation_url: str | None = None,
    ) -> Job:
        """A job enqueued now."""
        return cls(
            cluster_id=cluster_id,
            target_key_url=target_key_url,
            trigger=trigger,
            event_id=event_id,
            enqueued_at=datetime.now(UTC),
            operation_url=operation_url,
        )

    def to_json(self) -> str:
        """The message body: compact JSON, ``enqueued_at`` in ISO 8601 UTC."""
        return json.dumps(
            {
                "cluster_id": self.cluster_id,
                "target_key_url": self.target_key_url,
                "trigger": self.trigger,
                "event_id": self.event_id,
                "enqueued_at": self.enqueued_at.astimezone(UTC).isoformat(),
                "operation_url": self.operation_url,
                "backoffs": self.backoffs,
                "checks": self.checks,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes, *, allowed_suffixes: Sequence[str] = DEFAULT_VAULT_SUFFIXES) -> Job:
        """Parse a message body; raise `JobRejected` with a one-line reason when it is not a valid job.

        A target key URL must name a version (no target means the newest usable one). Unknown fields are
        ignored (a newer sender may add some).
        """
        job = parse_message(text, allowed_suffixes=allowed_suffixes)
        if isinstance(job, JobBatch):
            raise JobRejected(f"job message carries {len(job.cluster_ids)} clusters, expected one")
        return job

    @classmethod
    def _from_object(cls, data: dict[str, Any], *, allowed_suffixes: Sequence[str]) -> Job:
        cluster_id = _cluster_id(_required_str(data, "cluster_id"), "cluster_id")
        target = _target(data, allowed_suffixes)
        trigger, operation_url = _trigger_and_operation(data)
        return cls(
            cluster_id=cluster_id,
            target_key_url=target,
            trigger=trigger,
            event_id=_optional_str(data, "event_id"),
            enqueued_at=_enqueued_at(data),
            operation_url=operation_url,
            backoffs=_count(data, "backoffs"),
            checks=_count(data, "checks"),
        )


@dataclass(frozen=True)
class JobBatch:
    """The clusters of one event or reconcile pass, to one target, in one message; each becomes a `Job`."""

    cluster_ids: tuple[str, ...]
    target_key_url: str | None
    trigger: Trigger  # one of BATCH_TRIGGERS
    event_id: str | None
    enqueued_at: datetime

    @classmethod
    def of(cls, jobs: Sequence[Job]) -> JobBatch:
        """The batch of ``jobs``, which share their target, trigger and event and follow no operation."""
        first = jobs[0]
        for job in jobs:
            same = (job.target_key_url, job.trigger, job.event_id) == (
                first.target_key_url,
                first.trigger,
                first.event_id,
            )
            if not same or job.operation_url is not None or job.backoffs or job.checks:
                raise ValueError("a batch holds jobs of one target, trigger and event, without operation")
        if len(jobs) > MAX_BATCH or first.trigger not in BATCH_TRIGGERS:
            raise ValueError(
                f"a batch holds 1 to {MAX_BATCH} jobs of trigger {', '.join(sorted(BATCH_TRIGGERS))}"
            )
        return cls(
            cluster_ids=tuple(j.cluster_id for j in jobs),
            target_key_url=first.target_key_url,
            trigger=first.trigger,
            event_id=first.event_id,
            enqueued_at=first.enqueued_at,
        )

    def jobs(self) -> list[Job]:
        """One job per cluster, as a single message would have carried it."""
        return [
            Job(
                cluster_id=cluster_id,
                target_key_url=self.target_key_url,
                trigger=self.trigger,
                event_id=self.event_id,
                enqueued_at=self.enqueued_at,
            )
            for cluster_id in self.cluster_ids
        ]

    def to_json(self) -> str:
        """The message body: compact JSON, ``cluster_ids`` in place of a job's ``cluster_id``."""
        return json.dumps(
            {
                "cluster_ids": list(self.cluster_ids),
                "target_key_url": self.target_key_url,
                "trigger": self.trigger,
                "event_id": self.event_id,
                "enqueued_at": self.enqueued_at.astimezone(UTC).isoformat(),
            },
            separators=(",", ":"),
        )

    @classmethod
    def _from_object(cls, data: dict[str, Any], *, allowed_suffixes: Sequence[str]) -> JobBatch:
        if "cluster_id" in data:
            raise JobRejected("job message has both cluster_id and cluster_ids")
        raw = data["cluster_ids"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_BATCH:
            what = f"{len(raw)} entries" if isinstance(raw, list) else f"a JSON {json_type(raw)}"
            raise JobRejected(f"job cluster_ids must be a list of 1 to {MAX_BATCH} ids, got {what}")
        ids: list[str] = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            if not isinstance(item, str) or not item.strip():
                raise JobRejected(
                    f"job cluster_ids[{i}] must be a non-empty string, got a JSON {json_type(item)}"
                )
            cluster_id = _cluster_id(item.strip(), f"cluster_ids[{i}]")
            normalized = parse_cluster_id(cluster_id).normalized
            if normalized in seen:
                raise JobRejected(f"job cluster_ids[{i}] repeats a cluster: {quote(cluster_id)}")
            seen.add(normalized)
            ids.append(cluster_id)
        trigger, operation_url = _trigger_and_operation(data)
        if (
            trigger not in BATCH_TRIGGERS
            or operation_url is not None
            or data.get("backoffs")
            or data.get("checks")
        ):
            raise JobRejected(
                f"a job message with cluster_ids cannot be a {quote(trigger)} job following an operation"
            )
        return cls(
            cluster_ids=tuple(ids),
            target_key_url=_target(data, allowed_suffixes),
            trigger=trigger,
            event_id=_optional_str(data, "event_id"),
            enqueued_at=_enqueued_at(data),
        )


def parse_message(
    text: str | bytes, *, allowed_suffixes: Sequence[str] = DEFAULT_VAULT_SUFFIXES
) -> Job | JobBatch:
    """Parse a queue message: one job, or a batch (``cluster_ids``); `JobRejected` says why it is neither."""
    data = _load_object(text)
    if "cluster_ids" in data:
        return JobBatch._from_object(data, allowed_suffixes=allowed_suffixes)  # noqa: SLF001 - its own parser
    return Job._from_object(data, allowed_suffixes=allowed_suffixes)  # noqa: SLF001 - its own parser


def batches(jobs: Sequence[Job], size: int) -> list[Job | JobBatch]:
    """``jobs`` in messages of at most ``size`` clusters, in order; a message of one cluster stays a `Job`."""
    size = max(1, min(size, MAX_BATCH))
    out: list[Job | JobBatch] = []
    for start in range(0, len(jobs), size):
        chunk = jobs[start : start + size]
        out.append(chunk[0] if len(chunk) == 1 else JobBatch.of(chunk))
    return out


def _cluster_id(value: str, name: str) -> str:
    try:
        parse_cluster_id(value)
    except InvalidResourceId as exc:
        raise JobRejected(f"job {name}: {exc}") from None
    return value


def _target(data: dict[str, Any], allowed_suffixes: Sequence[str]) -> str | None:
    target = _optional_str(data, "target_key_url")
    if target is not None:
        try:
            parse_key_url(target, allowed_suffixes=allowed_suffixes, require_version=True)
        except InvalidKeyUrl as exc:
            raise JobRejected(f"job target_key_url: {exc}") from None
    return target


def _load_object(text: str | bytes) -> dict[str, Any]:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise JobRejected("job message is not UTF-8 text") from None
    try:
        data = loads_bounded(text, what="job message", max_bytes=MAX_MESSAGE_BYTES)
    except json.JSONDecodeError as exc:
        raise JobRejected(f"job message is not JSON: {exc.msg} at position {exc.pos}") from None
    except JsonRefused as exc:
        raise JobRejected(str(exc)) from None
    if not isinstance(data, dict):
        raise JobRejected(f"job message is a JSON {json_type(data)}, expected an object")
    return data


def _trigger_and_operation(data: dict[str, Any]) -> tuple[Trigger, str | None]:
    raw = _required_str(data, "trigger")
    try:
        trigger = Trigger(raw)
    except ValueError:
        names = ", ".join(sorted(Trigger))
        raise JobRejected(f"job trigger {quote(raw)} is not one of {names}") from None
    operation_url = _optional_str(data, "operation_url")
    if operation_url is not None and not operation_url.startswith("https://"):
        raise JobRejected(f"job operation_url is not an https URL: {quote(operation_url)}")
    if trigger is Trigger.CHECK and operation_url is None:
        raise JobRejected("job with trigger 'check' has no operation_url")
    return trigger, operation_url


def _count(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise JobRejected(f"job {name} must be a non-negative integer, got {quote(json.dumps(value))}")
    return value


def _required_str(data: dict[str, Any], name: str) -> str:
    if name not in data or data[name] is None:
        raise JobRejected(f"job message has no {name}")
    value = data[name]
    if not isinstance(value, str) or not value.strip():
        raise JobRejected(f"job {name} must be a non-empty string, got a JSON {json_type(value)}")
    return value.strip()


def _optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise JobRejected(f"job {name} must be a string or null, got a JSON {json_type(value)}")
    return value.strip() or None


def _enqueued_at(data: dict[str, Any]) -> datetime:
    raw = _required_str(data, "enqueued_at")
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise JobRejected(f"job enqueued_at is not an ISO 8601 time: {quote(raw)}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JobQueue:
    """Sends jobs to the rotation queue. Takes ownership of ``queues`` (`close` closes it).

    The queue is created on first use, once per instance.
    """

    def __init__(self, queues: QueueServiceClient, *, name: str = QUEUE_NAME) -> None:
        self._service = queues
        self._name = name
        self._queue = queue_client(queues, name)
        self._ready = False
        self._ready_lock = asyncio.Lock()

    @property
    def name(self) -> str:
        """The queue's name."""
        return self._name

    @property
    def service_client(self) -> QueueServiceClient:
        """The queue service client (for the poison queue's commands; still owned by this queue)."""
        return self._service

    @property
    def poison_name(self) -> str:
        """The queue the Functions host moves a message to after ``maxDequeueCount`` failures."""
        return f"{self._name}-poison"

    async def close(self) -> None:
        """Close the queue client and the service client."""
        await self._queue.close()
        await self._service.close()

    async def _ensure(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                with storage_errors(f"create queue {self._name}"), contextlib.suppress(ResourceExistsError):
                    await self._queue.create_queue()
                self._ready = True

    async def send(self, job: Job | JobBatch, *, delay: float = 0.0) -> None:
        """Enqueue ``job`` (or a batch), invisible for ``delay`` seconds (rounded up; at most 7 days)."""
        await self._ensure()
        visibility = min(math.ceil(delay), MAX_DELAY_SECONDS) if delay > 0 else None
        what = job.cluster_id if isinstance(job, Job) else f"{len(job.cluster_ids)} clusters"
        with storage_errors(f"send job for {what} to {self._name}"):
            await self._queue.send_message(job.to_json(), visibility_timeout=visibility)

    async def send_many(self, jobs: Sequence[Job | JobBatch], *, concurrency: int = 32) -> int:
        """Enqueue every message (job or batch), ``concurrency`` at a time; return how many were sent.

        Every send is attempted; if any failed, the first failure is raised after the others finish
        (the jobs that went out stay queued: a duplicate later is harmless, rule 2).
        """
        if not jobs:
            return 0
        await self._ensure()
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(job: Job | JobBatch) -> None:
            async with gate:
                await self.send(job)

        results = await asyncio.gather(*(one(job) for job in jobs), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return len(results)
