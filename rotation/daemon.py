"""``python -m rotation serve``: the daemon without the Functions host (containers, and trying it by hand).

One process, one event loop, the same `Service` as `function_app.py`:

- an Event Grid webhook, ``POST /api/events`` (`rotation.webhook`): both schemas and both validation
  handshakes; it only enqueues, so it answers well within Event Grid's 30 s;
- the queue worker on ``rotation-jobs`` (`QueueWorker`): what the Functions queue trigger does, with the
  settings of host.json's ``extensions.queues``;
- the reconcile timer on ``ROTATION_RECONCILE_SCHEDULE`` (six-field NCRONTAB, `rotation.schedule`);
- the HTTP routes of `rotation.http_api` under ``/api/``.

A key (``ROTATION_HTTP_KEY``, sent as ``?code=`` or ``x-functions-key`` as for a function key) is required
on every route unless the daemon listens on loopback only and no key is set.

SIGTERM (and SIGINT) drain: the listener stops taking messages and the HTTP site closes, then every running
job's time budgets are declared spent (`Drain`), so a job that is following an accepted operation returns
``pending`` at once and the `Service` hands the operation to a ``check`` job on the queue, exactly as when
an invocation's polling budget runs out. A job still running after the grace period is cancelled and its
message handed back to the queue. Nothing is acknowledged that was not finished or handed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import random
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from azure.core.exceptions import ResourceExistsError

from rotation.engine import Rotator
from rotation.errors import RotationError
from rotation.jobs import QUEUE_NAME, JobQueue
from rotation.outcomes import Outcome
from rotation.registry import Registry
from rotation.runtime import Runtime
from rotation.schedule import Schedule, ScheduleError
from rotation.service import Service
from rotation.settings import SettingsError
from rotation.storage import queue_client, storage_clients, storage_credential, storage_errors
from rotation.webhook import events_route

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable, Mapping

    from azure.storage.queue.aio import QueueClient

    from rotation.settings import Settings

logger = logging.getLogger(__name__)

KEY_SETTING = "ROTATION_HTTP_KEY"
MIN_KEY_LENGTH = 16
RECONCILE_JITTER_S = 30.0  # as function_app.py: spread replicas started by the same schedule
DEFAULT_GRACE_S = 25.0  # Container Apps' terminationGracePeriodSeconds defaults to 30 s
HTTP_SHUTDOWN_S = 5.0
# The Functions queue listener receives with a 10-minute visibility timeout and renews it at half of that
# while the function runs (azure-sdk-for-net, sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Common/
# src/Shared/Queues/QueueListener.cs: `_visibilityTimeout = TimeSpan.FromMinutes(10)`,
# `CreateUpdateMessageVisibilityTimer`).
LISTENER_VISIBILITY_S = 600
MIN_POLLING_INTERVAL_S = 0.1  # QueuePollingIntervals.Minimum
_SPENT_S = 1e6  # a drain's jump of the clock: longer than any budget of the rotator

HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"


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
        """``asyncio.sleep``, ending when the drain begins."""
        if seconds <= 0 or self.event.is_set():
            await asyncio.sleep(0)
            return
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
    """The Functions queue trigger's behaviour on ``rotation-jobs``, for `Service.handle_job`.

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
        self._wake.clear()
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
            except Exception as exc:
                if getattr(exc, "status_code", None) == 404:  # noqa: PLR2004 - the queue does not exist yet
                    with contextlib.suppress(ResourceExistsError):
                        await self._listener.create_queue()
                    return []
                raise

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
            result = await self._service.handle_job(
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


# ---- the reconcile timer ----------------------------------------------------------------------------


async def reconcile_timer(
    service: Service, schedule: Schedule, drain: Drain, *, jitter_s: float = RECONCILE_JITTER_S
) -> None:
    """Run a reconcile pass at each occurrence of ``schedule`` (as the timer trigger), until the drain."""
    from rotation.reconcile import Reconciler  # noqa: PLC0415 - the doctor's imports, only when it runs

    while not drain.started():
        due = schedule.next_after(datetime.now(UTC))
        await drain.sleep((due - datetime.now(UTC)).total_seconds())
        if drain.started():
            return
        try:
            await Reconciler(service, dry_run=service.settings.dry_run, jitter_s=jitter_s, doctor=True).run()
        except RotationError as exc:
            # The timer trigger logs a failed run and fires again at the next occurrence.
            logger.error("rotation.reconcile_failed", extra={"reason": str(exc)})  # noqa: TRY400


# ---- HTTP -------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _json(status: int, doc: object) -> web.Response:
    return web.Response(status=status, text=json.dumps(doc, default=str), content_type="application/json")


def _auth_middleware(key: str | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if key is not None:
            given = request.query.get("code") or request.headers.get("x-functions-key") or ""
            if not hmac.compare_digest(given.encode(), key.encode()):
                logger.warning(
                    "rotation.http_unauthorized",
                    extra={"path": request.path, "method": request.method, "remote": request.remote},
                )
                return _json(401, {"error": {"code": "Unauthorized", "message": "a valid key is required"}})
        return await handler(request)

    return check


def _route(
    service: Service,
    handler: Callable[[Service, str, Mapping[str, str], bytes], Awaitable[tuple[int, Any]]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request) -> web.StreamResponse:
        try:
            status, doc = await handler(service, request.method, dict(request.query), await request.read())
        except RotationError as exc:
            # Storage or Azure unreachable: the Functions host would answer 500; say what failed.
            logger.error("rotation.http_failed", extra={"path": request.path, "reason": str(exc)})  # noqa: TRY400
            return _json(503, {"error": {"code": "ServiceUnavailable", "message": str(exc)}})
        return _json(status, doc)

    return serve


def build_app(service: Service, *, key: str | None, on_queued: Callable[[], None]) -> web.Application:
    """The aiohttp application: the webhook and the registry's routes, behind the key."""
    from rotation import http_api  # noqa: PLC0415 - the doctor's imports, only when serving

    app = web.Application(middlewares=[_auth_middleware(key)], client_max_size=1024 * 1024 + 4096)
    app.router.add_route("*", "/api/events", events_route(service, on_queued=on_queued))
    for method in ("GET", "POST", "DELETE"):
        app.router.add_route(method, "/api/clusters", _route(service, http_api.clusters))
    app.router.add_route("GET", "/api/history", _route(service, http_api.history))
    app.router.add_route("POST", "/api/rotate", _route(service, http_api.rotate))
    app.router.add_route("GET", "/api/doctor", _route(service, http_api.doctor))
    app.router.add_route("GET", "/api/health", _route(service, http_api.health))
    return app


# ---- the process ------------------------------------------------------------------------------------


def http_key(env: Mapping[str, str], host: str) -> str | None:
    """``ROTATION_HTTP_KEY``, checked; None only on loopback without a key."""
    key = env.get(KEY_SETTING, "").strip() or None
    if key is None and not is_loopback(host):
        raise SettingsError(f"{KEY_SETTING} is required to listen on {host} (only loopback may go without)")
    if key is not None and (len(key) < MIN_KEY_LENGTH or not key.isprintable()):
        raise SettingsError(f"{KEY_SETTING} must be at least {MIN_KEY_LENGTH} printable characters")
    return key


def build_service(settings: Settings, drain: Drain) -> tuple[Service, QueueClient, QueueClient]:
    """`Service.create`'s service with the rotator on the drain's clock, and the queue's clients."""
    runtime = Runtime.create(settings)
    runtime.rotator = Rotator(
        clusters=runtime.clusters,
        keys=runtime.keys,
        settings=settings,
        sleep=drain.sleep,
        clock=drain.clock,
    )
    credential = (
        None
        if settings.storage_connection
        else storage_credential(settings, runtime.credential, http=runtime.http)
    )
    tables, queues = storage_clients(settings, credential, http=runtime.http)
    own = credential if credential is not None and credential is not runtime.credential else None
    service = Service(runtime, Registry(tables), JobQueue(queues), storage_credential=own)
    return service, queue_client(queues, QUEUE_NAME), queue_client(queues, f"{QUEUE_NAME}-poison")


async def serve(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """Run until SIGTERM/SIGINT; return the exit code (0 after a clean drain)."""
    if not settings.storage_configured:
        raise SettingsError(
            "AzureWebJobsStorage is not set: the daemon needs the registry and the queue "
            "(a connection string or AzureWebJobsStorage__accountName)"
        )
    key = http_key(env, args.host)
    try:
        schedule = Schedule.parse(settings.reconcile_schedule)
    except ScheduleError as exc:
        raise SettingsError(f"ROTATION_RECONCILE_SCHEDULE: {exc}") from None
    options = QueueOptions.from_host_json(args.host_json)
    from rotation.telemetry import configure_telemetry  # noqa: PLC0415

    configure_telemetry(env)
    drain = Drain()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service, listener, poison = build_service(settings, drain)
    worker = QueueWorker(service, listener, poison, options, drain)
    runner = web.AppRunner(
        build_app(service, key=key, on_queued=worker.wake), access_log=None, shutdown_timeout=HTTP_SHUTDOWN_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        try:
            await site.start()
        except OSError as exc:
            raise SettingsError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
        port = runner.addresses[0][1] if runner.addresses else args.port
        worker_task = asyncio.create_task(worker.run())
        timer_task = asyncio.create_task(
            reconcile_timer(service, schedule, drain, jitter_s=args.reconcile_jitter)
        )
        logger.info(
            "rotation.serve_started",
            extra={
                "host": args.host,
                "port": port,
                "url": f"http://{args.host}:{port}/api/",
                "key_required": key is not None,
                "schedule": schedule.expression,
                "next_reconcile": schedule.next_after(datetime.now(UTC)).isoformat(),
                "max_dequeue_count": options.max_dequeue_count,
                "visibility_timeout_s": options.visibility_timeout_s,
                "batch_size": options.batch_size,
                "new_batch_threshold": options.new_batch_threshold,
                "dry_run": settings.dry_run,
            },
        )
        await stop.wait()
        await _drain(
            worker,
            worker_task=worker_task,
            timer_task=timer_task,
            runner=runner,
            drain=drain,
            grace=args.grace,
        )
    finally:
        await runner.cleanup()
        await listener.close()
        await poison.close()
        await service.close()
    stats = worker.stats
    logger.info(
        "rotation.serve_stopped",
        extra={
            "received": stats.received,
            "succeeded": stats.succeeded,
            "failed": stats.failed,
            "poisoned": stats.poisoned,
            "handed_over": stats.handed_over,
            "released": stats.released,
        },
    )
    return 0


async def _drain(
    worker: QueueWorker,
    *,
    worker_task: asyncio.Task[None],
    timer_task: asyncio.Task[None],
    runner: web.AppRunner,
    drain: Drain,
    grace: float,
) -> None:
    """SIGTERM: stop taking work, let running jobs end or hand over, cancel what outlives ``grace``."""
    logger.info("rotation.serve_draining", extra={"running": len(worker.processing), "grace_s": grace})
    drain.start()
    timer_task.cancel()
    await runner.cleanup()  # no new events or requests; those in progress finish
    await worker_task
    running = set(worker.processing)
    if running:
        _, late = await asyncio.wait(running, timeout=grace)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
    with contextlib.suppress(asyncio.CancelledError):
        await timer_task
