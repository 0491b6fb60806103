"""``python -m rotation serve``: the daemon without the Functions host (containers, and trying it by hand).

One process, one event loop, the same `Service` as `function_app.py`:

- an Event Grid webhook, ``POST /api/events`` (`rotation.serve.webhook`): both schemas and both validation
  handshakes; it only enqueues, so it answers well within Event Grid's 30 s;
- the queue worker on ``rotation-jobs`` (`QueueWorker`): what the Functions queue trigger does, with the
  settings of host.json's ``extensions.queues``;
- the reconcile timer on ``ROTATION_RECONCILE_SCHEDULE`` (six-field NCRONTAB, `rotation.serve.schedule`), one
  replica per occurrence (`rotation.serve.timer_lease`);
- the HTTP routes of `rotation.service.http_api` under ``/api/``.

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
import signal
from dataclasses import replace
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from rotation.engine import Rotator
from rotation.errors import RotationError
from rotation.serve.queue_worker import Drain, QueueOptions, QueueWorker
from rotation.serve.schedule import Schedule, ScheduleError
from rotation.serve.timer_lease import TABLE as TIMER_TABLE
from rotation.serve.timer_lease import TimerLease
from rotation.serve.webhook import events_route
from rotation.service.process import Service
from rotation.service.runtime import Runtime
from rotation.settings import MAX_DEQUEUE_SETTING, SettingsError
from rotation.store.clients import queue_client
from rotation.store.jobs import QUEUE_NAME

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable, Mapping

    from azure.data.tables.aio import TableClient
    from azure.storage.queue.aio import QueueClient

    from rotation.settings import Settings

logger = logging.getLogger(__name__)

KEY_SETTING = "ROTATION_HTTP_KEY"  # every route, as the deployed app's `operator` key
READ_KEY_SETTING = "ROTATION_HTTP_READ_KEY"  # the GET routes only, as the deployed app's `reader` key
_READ_METHODS = frozenset({"GET", "HEAD"})
MIN_KEY_LENGTH = 16
RECONCILE_JITTER_S = 30.0  # as function_app.py: spread replicas started by the same schedule
HTTP_SHUTDOWN_S = 5.0

# The app's host.json at the project root (rotation/serve/daemon.py -> ../../host.json; in the image,
# /app/host.json beside /app/rotation). An installed package has none there: `queue_options` says so.
HOST_JSON = Path(__file__).resolve().parents[2] / "host.json"


# ---- the reconcile timer ----------------------------------------------------------------------------


async def reconcile_timer(
    service: Service,
    schedule: Schedule,
    drain: Drain,
    lease: TimerLease,
    *,
    jitter_s: float = RECONCILE_JITTER_S,
) -> None:
    """Run a reconcile pass at each occurrence of ``schedule`` (as the timer trigger), until the drain.

    One replica runs each occurrence (`TimerLease`); a failed pass is logged and the next occurrence runs.
    """
    from rotation.service.reconcile import Reconciler  # noqa: PLC0415 - the doctor's imports, only when it runs

    while not drain.started():
        due = schedule.next_after(datetime.now(UTC))
        await drain.sleep((due - datetime.now(UTC)).total_seconds())
        if drain.started():
            return
        try:
            mine = await lease.take(due)
            logger.info("rotation.reconcile_due", extra={"occurrence": due.isoformat(), "ran": mine})
            if mine:
                await Reconciler(
                    service, dry_run=service.settings.dry_run, jitter_s=jitter_s, doctor=True
                ).run()
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


def _auth_middleware(key: str | None, read_key: str | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if key is not None:
            given = (request.query.get("code") or request.headers.get("x-functions-key") or "").encode()
            reader = read_key is not None and hmac.compare_digest(given, read_key.encode())
            if reader and (request.method not in _READ_METHODS or request.path == "/api/events"):
                logger.warning(
                    "rotation.http_forbidden",
                    extra={"path": request.path, "method": request.method, "remote": request.remote},
                )
                message = f"the read key ({READ_KEY_SETTING}) opens only the GET routes"
                return _json(403, {"error": {"code": "Forbidden", "message": message}})
            if not reader and not hmac.compare_digest(given, key.encode()):
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
    *,
    on_queued: Callable[[], None] | None = None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """One HTTP route; ``on_queued`` is called when the handler answered 202 (it queued a job)."""

    async def serve(request: web.Request) -> web.StreamResponse:
        try:
            status, doc = await handler(service, request.method, dict(request.query), await request.read())
        except RotationError as exc:
            # Storage or Azure unreachable: the Functions host would answer 500; say what failed.
            logger.error("rotation.http_failed", extra={"path": request.path, "reason": str(exc)})  # noqa: TRY400
            return _json(503, {"error": {"code": "ServiceUnavailable", "message": str(exc)}})
        if on_queued is not None and status == HTTPStatus.ACCEPTED:
            on_queued()  # the worker need not wait out its idle polling interval for the job just queued
        return _json(status, doc)

    return serve


def build_app(
    service: Service, *, key: str | None, on_queued: Callable[[], None], read_key: str | None = None
) -> web.Application:
    """The aiohttp application: the webhook and the registry's routes, behind the key (or the read key)."""
    from rotation.service import http_api  # noqa: PLC0415 - the doctor's imports, only when serving

    app = web.Application(middlewares=[_auth_middleware(key, read_key)], client_max_size=1024 * 1024 + 4096)
    app.router.add_route("*", "/api/events", events_route(service, on_queued=on_queued))
    for method in ("GET", "POST", "DELETE"):
        app.router.add_route(method, "/api/clusters", _route(service, http_api.clusters))
    app.router.add_route("GET", "/api/history", _route(service, http_api.history))
    app.router.add_route("POST", "/api/rotate", _route(service, http_api.rotate, on_queued=on_queued))
    app.router.add_route("GET", "/api/doctor", _route(service, http_api.doctor))
    app.router.add_route("GET", "/api/health", _route(service, http_api.health))
    return app


# ---- the process ------------------------------------------------------------------------------------


def http_key(env: Mapping[str, str], host: str) -> str | None:
    """``ROTATION_HTTP_KEY``, checked; None only on loopback without a key."""
    key = env.get(KEY_SETTING, "").strip() or None
    if key is None and not is_loopback(host):
        raise SettingsError(f"{KEY_SETTING} is required to listen on {host} (only loopback may go without)")
    if key is not None:
        _check_key(KEY_SETTING, key)
    return key


def http_read_key(env: Mapping[str, str], key: str | None) -> str | None:
    """``ROTATION_HTTP_READ_KEY``, checked: it needs ``ROTATION_HTTP_KEY`` beside it and differs from it."""
    read_key = env.get(READ_KEY_SETTING, "").strip() or None
    if read_key is None:
        return None
    if key is None:
        raise SettingsError(f"{READ_KEY_SETTING} needs {KEY_SETTING} too (without it every route is open)")
    _check_key(READ_KEY_SETTING, read_key)
    if hmac.compare_digest(read_key.encode(), key.encode()):
        raise SettingsError(f"{READ_KEY_SETTING} must differ from {KEY_SETTING}")
    return read_key


def _check_key(name: str, key: str) -> None:
    if len(key) < MIN_KEY_LENGTH or not key.isprintable():
        raise SettingsError(f"{name} must be at least {MIN_KEY_LENGTH} printable characters")


def build_service(settings: Settings, drain: Drain) -> tuple[Service, QueueClient, QueueClient, TableClient]:
    """`Service.create`'s service with the rotator on the drain's clock, and the queue's clients."""
    runtime = Runtime.create(settings)
    runtime.rotator = Rotator(
        clusters=runtime.clusters,
        keys=runtime.keys,
        settings=settings,
        sleep=drain.sleep,
        clock=drain.clock,
    )
    service = Service.create(settings, runtime=runtime)
    queues = service.queue.service_client
    tables = service.registry.service_client
    listener = queue_client(queues, QUEUE_NAME)
    return (
        service,
        listener,
        queue_client(queues, f"{QUEUE_NAME}-poison"),
        tables.get_table_client(TIMER_TABLE),
    )


def queue_options(
    host_json: Path | None, settings: Settings, env: Mapping[str, str]
) -> tuple[QueueOptions, Settings]:
    """The queue options as the Functions host would have them, and settings that agree on the last delivery.

    host.json first (an installed copy of the package has none beside it: the Functions defaults then, said
    in a WARNING with the way to name one); the host's own app-setting override of ``maxDequeueCount``
    wins over host.json, as on Functions; the worker and the service's "moved to the poison queue" then
    count alike.
    """
    if host_json is None or not host_json.is_file():
        logger.warning(
            "rotation.serve_host_json_missing",
            extra={
                "host_json": str(host_json) if host_json else None,
                "reason": "no host.json: the Functions defaults apply (batchSize 16, maxDequeueCount 5); "
                "name the app's with --host-json PATH",
            },
        )
    options = QueueOptions.from_host_json(host_json)
    if MAX_DEQUEUE_SETTING in env:
        options = replace(options, max_dequeue_count=settings.max_dequeue_count)
    return options, replace(settings, max_dequeue_count=options.max_dequeue_count)


async def serve(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """Run until SIGTERM/SIGINT; return the exit code (0 after a clean drain)."""
    if not settings.storage_configured:
        raise SettingsError(
            "AzureWebJobsStorage is not set: the daemon needs the registry and the queue "
            "(a connection string or AzureWebJobsStorage__accountName)"
        )
    if not 0 <= args.port <= 65535:  # noqa: PLR2004
        raise SettingsError(f"--port must be 0-65535, got {args.port}")
    key = http_key(env, args.host)
    read_key = http_read_key(env, key)
    try:
        schedule = Schedule.parse(settings.reconcile_schedule)
    except ScheduleError as exc:
        raise SettingsError(f"ROTATION_RECONCILE_SCHEDULE: {exc}") from None
    options, settings = queue_options(args.host_json, settings, env)
    from rotation.telemetry import configure_telemetry  # noqa: PLC0415

    configure_telemetry(env)
    drain = Drain()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service, listener, poison, timers = build_service(settings, drain)
    lease = TimerLease(timers, owner=service.worker.worker_id)
    worker = QueueWorker(service, listener, poison, options, drain)
    runner = web.AppRunner(
        build_app(service, key=key, read_key=read_key, on_queued=worker.wake),
        access_log=None,
        shutdown_timeout=HTTP_SHUTDOWN_S,
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
            reconcile_timer(service, schedule, drain, lease, jitter_s=args.reconcile_jitter)
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
                "host_json": str(args.host_json) if args.host_json and args.host_json.is_file() else None,
                "max_dequeue_count": options.max_dequeue_count,
                "visibility_timeout_s": options.visibility_timeout_s,
                "batch_size": options.batch_size,
                "new_batch_threshold": options.new_batch_threshold,
                "max_polling_interval_s": options.max_polling_interval_s,
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
        await timers.close()
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
