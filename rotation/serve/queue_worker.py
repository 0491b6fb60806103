"""The queue worker of ``rotation serve``: what the Functions host does for the queue trigger, and the drain.

`QueueWorker` receives ``rotation-jobs`` messages and runs `Worker.handle_job` on each, with the settings
of host.json's ``extensions.queues`` (`QueueOptions`) and the semantics of the host's QueueListener and
QueueProcessor. `Drain` is the clock and sleep the daemon's rotator runs on, so that SIGTERM ends every
time budget at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from rotation.errors import RotationError
from rotation.outcomes import Outcome
from rotation.service import slots
from rotation.settings import SettingsError
from rotation.store.clients import storage_errors

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from azure.storage.queue.aio import QueueClient

    from rotation.service.process import Service

logger = logging.getLogger(__name__)

# The Functions queue listener receives with a 10-minute visibility timeout and renews it at half of that
# while the function runs (azure-sdk-for-net, sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Common/
# src/Shared/Queues/QueueListener.cs: `_visibilityTimeout = TimeSpan.FromMinutes(10)`,
# `CreateUpdateMessageVisibilityTimer`).
LISTENER_VISIBILITY_S = 600
MIN_POLLING_INTERVAL_S = 0.1  # QueuePollingIntervals.Minimum
_SPENT_S = 1e6  # a drain's jump of the clock: longer than any budget of the rotator


# ---- host.json --------------------------------------------------------------------------------------


def _timespan(value: object, name: str) -> float:
    """Seconds from a host.json TimeSpan (``"00:00:30"``, ``"1.00:00:00"``) or a number of milliseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1000.0  # Functions 1.x wrote maxPollingInterval in milliseconds
    if isinstance(value, str):
        text, days = value.strip(), 0
        head, dot, rest = text.partition(".")
        if dot and ":" not in head and head.isdigit():  # "d.hh:mm:ss"
            text, days = rest, int(head)
        parts = text.split(":")
        if len(parts) == 3 and all(p.replace(".", "", 1).isdigit() for p in parts):  # noqa: PLR2004
            return days * 86400 + int(parts[0]) * 3600 + int(parts[1]) * 60 + float(parts[2])
    raise SettingsError(f"host.json extensions.queues.{name}: {value!r} is not a TimeSpan (hh:mm:ss)")


def _count(doc: Mapping[str, Any], name: str, default: int, *, low: int, high: int) -> int:
    value = doc.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SettingsError(f"host.json extensions.queues.{name}: {value!r} is not an integer {low}-{high}")
    return value


@dataclass(frozen=True)
class QueueOptions:
    """host.json ``extensions.queues``, with the Functions defaults for what it leaves out.

    Defaults (Microsoft docs, "Azure Queue storage trigger and bindings for Azure Functions", host.json
    settings): maxDequeueCount 5, visibilityTimeout 0, batchSize 16, newBatchThreshold N*batchSize/2
    (N: vCPUs), maxPollingInterval 1 minute.
    """

    max_dequeue_count: int = 5
    visibility_timeout_s: float = 0.0  # how long a failed message stays invisible before its next try
    batch_size: int = 16
    new_batch_threshold: int = field(default_factory=lambda: (os.cpu_count() or 1) * 16 // 2)
    max_polling_interval_s: float = 60.0

    @classmethod
    def from_host_json(cls, path: Path | None) -> QueueOptions:
        """Read ``path`` (None or missing: the defaults); raise `SettingsError` on a bad value."""
        if path is None or not path.is_file():
            return cls()
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SettingsError(f"{path}: not readable JSON: {exc}") from None
        queues = doc.get("extensions", {}).get("queues", {}) if isinstance(doc, dict) else {}
        if not isinstance(queues, dict):
            raise SettingsError(f"{path}: extensions.queues is not an object")
        batch = _count(queues, "batchSize", 16, low=1, high=32)
        return cls(
            max_dequeue_count=_count(queues, "maxDequeueCount", 5, low=1, high=10_000),
            visibility_timeout_s=_timespan(queues.get("visibilityTimeout", "00:00:00"), "visibilityTimeout"),
            batch_size=batch,
            new_batch_threshold=_count(
                queues, "newBatchThreshold", (os.cpu_count() or 1) * batch // 2, low=0, high=100_000
            ),
            max_polling_interval_s=max(
                MIN_POLLING_INTERVAL_S,
                _timespan(queues.get("maxPollingInterval", "00:01:00"), "maxPollingInterval"),
            ),
        )


# ---- drain ------------------------------------------------------------------------------------------


class Drain:
    """Set on SIGTERM: from then on, every time budget of the rotator is spent.

    The daemon's `Rotator` reads this clock and sleeps this sleep. Before the drain they are
    ``time.monotonic`` and ``asyncio.sleep``. After it, each reading of the clock is ``_SPENT_S`` later than
    the one before, so a retry policy stops instead of waiting and an operation being followed is left
    ``pending`` (handed to a check job), and a sleep in progress ends at once.
    """

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._jump = 0.0

    def started(self) -> bool:
        """Whether the drain has begun (a method: its answer changes under the caller's feet)."""
        return self.event.is_set()

    def start(self) -> None:
        """Begin draining (idempotent)."""
        self.event.set()

    def clock(self) -> float:
        """``time.monotonic``, jumping past every budget once draining."""
        now = time.monotonic()
        if self.event.is_set():
            self._jump += _SPENT_S
        return now + self._jump

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep``, ending when the drain begins; the job's place is free meanwhile (slots.away)."""
        if seconds <= 0 or self.event.is_set():
            await asyncio.sleep(0)
            return
        async with slots.away():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), seconds)


# ---- the queue worker -------------------------------------------------------------------------------


@dataclass
class WorkerStats:
    """What the worker did (logged when it stops)."""

    received: int = 0
    succeeded: int = 0
    failed: int = 0
    poisoned: int = 0
    handed_over: int = 0  # jobs that ended `pending` with a check job queued
    released: int = 0  # messages handed back unfinished (failure before maxDequeueCount, or cancelled)


class QueueWorker:
    """The Functions queue trigger's behaviour on ``rotation-jobs``, for `Worker.handle_job`.

    As the host's QueueListener and QueueProcessor do (azure-sdk-for-net,
    sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Common/src/Shared/Queues/QueueListener.cs and
    QueueProcessor.cs): receive up to ``batchSize`` messages while no more than ``newBatchThreshold`` run;
    a message whose dequeue count already exceeds ``maxDequeueCount`` goes to ``{queue}-poison`` unrun; the
    message stays invisible while its job runs (renewed at half the timeout); success deletes it; failure
    moves it to the poison queue once the dequeue count reached ``maxDequeueCount``, else makes it visible
    again after ``visibilityTimeout``; an empty queue is polled with randomized exponential backoff up to
    ``maxPollingInterval``, and immediately when this process queued a job (`wake`).
    """

    def __init__(
        self,
        service: Service,
        listener: QueueClient,
        poison: QueueClient,
        options: QueueOptions,
        drain: Drain,
    ) -> None:
        self._service = service
        self._listener = listener
        self._poison = poison
        self._options = options
        self._drain = drain
        self._wake = asyncio.Event()
        self.processing: set[asyncio.Task[None]] = set()
        self.stats = WorkerStats()

    def wake(self) -> None:
        """Poll now (this process just queued jobs)."""
        self._wake.set()

    async def run(self) -> None:
        """Receive and dispatch until the drain begins."""
        delay = MIN_POLLING_INTERVAL_S
        draining = asyncio.ensure_future(self._drain.event.wait())
        try:
            await self._loop(draining, delay)
        finally:
            draining.cancel()

    async def _loop(self, draining: asyncio.Future[Any], delay: float) -> None:
        while not self._drain.started():
            while len(self.processing) > self._options.new_batch_threshold and not self._drain.started():
                await asyncio.wait([*self.processing, draining], return_when=asyncio.FIRST_COMPLETED)
            if self._drain.started():
                break
            self._wake.clear()  # a job queued from now on is found by this receive or ends the idle wait
            try:
                batch = await self._receive()
            except RotationError as exc:
                logger.warning("rotation.queue_receive_failed", extra={"reason": str(exc), "wait_s": delay})
                batch = []
            if batch:
                delay = MIN_POLLING_INTERVAL_S
                for message in batch:
                    task = asyncio.create_task(self._process(message))
                    self.processing.add(task)
                    task.add_done_callback(self.processing.discard)
                continue
            await self._idle(delay)
            delay = min(self._options.max_polling_interval_s, delay * 2 * random.uniform(0.8, 1.2))  # noqa: S311

    async def _idle(self, delay: float) -> None:
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._drain.event.wait())]
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _receive(self) -> list[Any]:
        with storage_errors(f"receive from {self._listener.queue_name}"):
            try:
                return [
                    m
                    async for m in self._listener.receive_messages(
                        messages_per_page=self._options.batch_size,
                        max_messages=self._options.batch_size,
                        visibility_timeout=LISTENER_VISIBILITY_S,
                    )
                ]
            except ResourceNotFoundError:
                # No queue yet (the first job sent creates it): back off and look again, as the host does.
                return []

    async def _process(self, message: Any) -> None:  # noqa: ANN401 - azure.storage.queue.QueueMessage
        self.stats.received += 1
        held = [message]  # the message with its newest pop receipt
        invocation_id = str(uuid.uuid4())
        fields = {
            "message_id": message.id,
            "dequeue_count": message.dequeue_count,
            "invocation_id": invocation_id,
        }
        if message.dequeue_count > self._options.max_dequeue_count:
            await self._to_poison(held[0], message.content, fields)
            return
        renewer = asyncio.create_task(self._renew(held))
        try:
            result = await self._service.worker.handle_job(
                message.content, dequeue_count=message.dequeue_count, invocation_id=invocation_id
            )
        except asyncio.CancelledError:
            renewer.cancel()
            await asyncio.shield(self._release(held[0], 0.0, {**fields, "reason": "shutdown"}))
            raise
        except Exception as exc:  # noqa: BLE001 - as the host: any failure of the function is a failed try
            renewer.cancel()
            self.stats.failed += 1
            reason = f"{type(exc).__name__}: {exc}"
            if message.dequeue_count >= self._options.max_dequeue_count:
                await self._to_poison(held[0], message.content, {**fields, "reason": reason})
            else:
                await self._release(held[0], self._options.visibility_timeout_s, {**fields, "reason": reason})
            return
        renewer.cancel()
        self.stats.succeeded += 1
        if result is not None and result.outcome is Outcome.PENDING and self._drain.started():
            self.stats.handed_over += 1
        await self._delete(held[0], fields)

    async def _renew(self, held: list[Any]) -> None:
        while True:
            await asyncio.sleep(LISTENER_VISIBILITY_S / 2)
            try:
                held[0] = await self._listener.update_message(
                    held[0], visibility_timeout=LISTENER_VISIBILITY_S
                )
            except Exception as exc:  # noqa: BLE001 - as the host: the job goes on; the claim guards the cluster
                logger.warning(
                    "rotation.queue_renew_failed", extra={"message_id": held[0].id, "reason": str(exc)}
                )

    async def _delete(self, message: Any, fields: dict[str, Any]) -> None:  # noqa: ANN401
        try:
            with storage_errors(f"delete message from {self._listener.queue_name}"):
                await self._listener.delete_message(message)
        except RotationError as exc:
            # The job is done; the message reappears after its visibility timeout and the job finds its
            # work done (already-current). As the host, which logs and carries on.
            logger.warning("rotation.queue_delete_failed", extra={**fields, "reason": str(exc)})

    async def _release(self, message: Any, after_s: float, fields: dict[str, Any]) -> None:  # noqa: ANN401
        self.stats.released += 1
        try:
            with storage_errors(f"release message to {self._listener.queue_name}"):
                await self._listener.update_message(message, visibility_timeout=int(after_s))
        except RotationError as exc:
            fields = {**fields, "update_error": str(exc)}  # it reappears when its visibility lapses
        logger.info("rotation.job_released", extra={**fields, "wait_s": after_s})

    async def _to_poison(self, message: Any, content: str, fields: dict[str, Any]) -> None:  # noqa: ANN401
        try:
            with storage_errors(f"move message to {self._poison.queue_name}"):
                with contextlib.suppress(ResourceExistsError):
                    await self._poison.create_queue()
                await self._poison.send_message(content)  # the text as received, as the host copies it
                await self._listener.delete_message(message)
        except RotationError as exc:
            logger.error("rotation.job_poison_failed", extra={**fields, "reason": str(exc)})  # noqa: TRY400
            return
        self.stats.poisoned += 1
        logger.error(
            "rotation.job_poisoned",
            extra={
                **fields,
                "queue": self._poison.queue_name,
                "max_dequeue_count": self._options.max_dequeue_count,
            },
        )
