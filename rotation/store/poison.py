"""``rotation-jobs-poison``: the jobs the queue gave up on, read decoded, moved back, or deleted.

The Functions host moves a message to ``{queue}-poison`` after ``maxDequeueCount`` failed deliveries
(host.json); it copies the body with the queue's message encoding (base64, the trigger's default) into a new
message, so the copy's own dequeue count says nothing about the deliveries: the delivery count and the last
error come from the cluster's history, where every failed delivery is recorded.

Reading is a peek (nothing changes, at most 32 messages: the queue service's limit per peek). Moving back and
deleting selected messages receive them (hidden for `SCAN_VISIBILITY_S`), act on the selected ones, and make
the others visible again at once. A job moved back is sent before its poison copy is deleted: a failure in
between leaves a duplicate, which the rotation rules make harmless (rule 2), never a lost job.
Permission: Storage Queue Data Contributor (or a connection string).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
)

from rotation.ids import DEFAULT_VAULT_SUFFIXES
from rotation.store.clients import queue_client, storage_errors
from rotation.store.jobs import QUEUE_NAME, Job, JobBatch, JobRejected, parse_message

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence
    from datetime import datetime

    from azure.storage.queue import QueueMessage
    from azure.storage.queue.aio import QueueServiceClient

PEEK_LIMIT = 32  # the queue service's maximum per peek
SCAN_VISIBILITY_S = 30  # how long a scanned message stays hidden if this process dies mid-scan


@dataclass(frozen=True)
class PoisonedJob:
    """One poison message, decoded: the job (or the batch of clusters), or why it is not one."""

    message_id: str
    inserted_on: datetime | None
    text: str
    job: Job | None
    problem: str | None = None
    batch: JobBatch | None = None  # a message of many clusters (then ``job`` is None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the message and its job's fields (or the reason it is not a job)."""
        out: dict[str, Any] = {
            "message_id": self.message_id,
            "inserted_on": self.inserted_on.isoformat() if self.inserted_on else None,
        }
        if self.batch is not None:
            return {
                **out,
                "cluster_ids": list(self.batch.cluster_ids),
                "trigger": self.batch.trigger,
                "target_key_url": self.batch.target_key_url,
                "event_id": self.batch.event_id,
                "enqueued_at": self.batch.enqueued_at.isoformat(),
            }
        if self.job is None:
            return {**out, "job": None, "problem": self.problem}
        return {
            **out,
            "cluster_id": self.job.cluster_id,
            "trigger": self.job.trigger,
            "target_key_url": self.job.target_key_url,
            "event_id": self.job.event_id,
            "enqueued_at": self.job.enqueued_at.isoformat(),
            "operation_url": self.job.operation_url,
        }


def decode_body(content: str) -> str:
    """The message text: base64 (the Functions trigger's encoding) decoded, or the content as it is."""
    try:
        return base64.b64decode(content, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return content


def poisoned_job(
    message: QueueMessage, *, allowed_suffixes: Sequence[str] = DEFAULT_VAULT_SUFFIXES
) -> PoisonedJob:
    """Decode one poison message (never raises: a message that is no job says why)."""
    text = decode_body(str(message.content or ""))
    try:
        parsed = parse_message(text, allowed_suffixes=allowed_suffixes)
    except JobRejected as exc:
        return PoisonedJob(str(message.id), message.inserted_on, text, None, str(exc))
    if isinstance(parsed, JobBatch):
        return PoisonedJob(str(message.id), message.inserted_on, text, None, batch=parsed)
    return PoisonedJob(str(message.id), message.inserted_on, text, parsed)


class PoisonQueue:
    """The poison queue of ``name`` and the way back to ``name``. Does not own ``queues``."""

    def __init__(
        self,
        queues: QueueServiceClient,
        *,
        name: str = QUEUE_NAME,
        allowed_suffixes: Sequence[str] = DEFAULT_VAULT_SUFFIXES,
    ) -> None:
        self.name = f"{name}-poison"
        self.jobs_name = name
        self._allowed = allowed_suffixes
        # Raw content: the body is decoded here, so a message that is not base64 is still shown.
        self._poison = queues.get_queue_client(self.name)
        self._jobs = queue_client(queues, name)

    async def close(self) -> None:
        """Close the two queue clients."""
        await self._poison.close()
        await self._jobs.close()

    async def count(self) -> int:
        """The service's approximate message count (0 when the queue does not exist)."""
        with storage_errors(f"read {self.name}"):
            try:
                props = await self._poison.get_queue_properties()
            except ResourceNotFoundError:
                return 0
        return int(props.approximate_message_count or 0)

    async def peek(self, limit: int = PEEK_LIMIT) -> list[PoisonedJob]:
        """The first ``limit`` (at most 32) messages, decoded; nothing changes in the queue."""
        with storage_errors(f"peek {self.name}"):
            try:
                messages = await self._poison.peek_messages(max_messages=min(limit, PEEK_LIMIT))
            except ResourceNotFoundError:
                return []
        return [poisoned_job(m, allowed_suffixes=self._allowed) for m in messages]

    async def retry(self, ids: Collection[str] | None = None) -> tuple[list[PoisonedJob], list[PoisonedJob]]:
        """Move the selected jobs (default: all) back to the job queue; return (moved, left as not jobs)."""
        moved: list[PoisonedJob] = []
        left: list[PoisonedJob] = []
        with storage_errors(f"create queue {self.jobs_name}"), contextlib.suppress(ResourceExistsError):
            await self._jobs.create_queue()

        async def act(_message: QueueMessage, item: PoisonedJob) -> bool:
            job = item.job or item.batch
            if job is None:
                left.append(item)
                return False
            what = (
                item.job.cluster_id
                if item.job
                else f"{len(item.batch.cluster_ids) if item.batch else 0} clusters"
            )
            with storage_errors(f"send job for {what} to {self.jobs_name}"):
                await self._jobs.send_message(job.to_json())
            moved.append(item)
            return True

        await self._scan(ids, act)
        return moved, left

    async def purge(self, ids: Collection[str] | None = None) -> int:
        """Delete the selected messages (default: all); return how many were deleted."""
        if ids is None:
            count = await self.count()
            with storage_errors(f"clear {self.name}"):
                try:
                    await self._poison.clear_messages()
                except ResourceNotFoundError:
                    return 0
            return count
        deleted = 0

        async def act(_message: QueueMessage, _item: PoisonedJob) -> bool:
            nonlocal deleted
            deleted += 1
            return True

        await self._scan(ids, act)
        return deleted

    async def _scan(self, ids: Collection[str] | None, act: Any) -> None:  # noqa: ANN401
        """Receive every message once; `act` on the selected ones (True: delete it), release the rest."""
        release: list[QueueMessage] = []
        seen: set[str] = set()
        try:
            while True:
                with storage_errors(f"receive from {self.name}"):
                    try:
                        batch = [
                            m
                            async for m in self._poison.receive_messages(
                                messages_per_page=PEEK_LIMIT,
                                max_messages=PEEK_LIMIT,
                                visibility_timeout=SCAN_VISIBILITY_S,
                            )
                        ]
                    except ResourceNotFoundError:
                        return
                fresh = [m for m in batch if m.id not in seen]
                if not fresh:
                    release.extend(batch)
                    return
                for message in fresh:
                    seen.add(message.id)
                    item = poisoned_job(message, allowed_suffixes=self._allowed)
                    if ids is not None and message.id not in ids:
                        release.append(message)
                    elif await act(message, item):
                        with storage_errors(f"delete a message of {self.name}"):
                            await self._poison.delete_message(message)
                    else:
                        release.append(message)
        finally:
            for message in release:
                # A release that fails (the message was received again meanwhile: another pop receipt) only
                # delays it: it reappears by itself after SCAN_VISIBILITY_S.
                with contextlib.suppress(HttpResponseError, ServiceRequestError):
                    await self._poison.update_message(message, visibility_timeout=0)
