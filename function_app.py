"""Azure Functions entry points (v2 programming model): bind triggers, delegate to `rotation.service`.

Each function parses its trigger argument, calls one method of the process's `Service` (clients built once
per process; an event goes to its `fanout`, a queued job to its `worker`), and translates the outcome into
the Functions contract: return to acknowledge, raise to have the platform redeliver (Event Grid retries,
the queue redelivers and finally moves the job to ``rotation-jobs-poison``).

Importing this module only declares the functions: the rotator and the Azure SDK are imported on the first
invocation, so the host indexes the app (and a cold start begins) without paying for them.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING

import azure.functions as func

if TYPE_CHECKING:
    from rotation.service.process import Service

app = func.FunctionApp()
logger = logging.getLogger("rotation.function_app")
JOB_QUEUE = "rotation-jobs"
RECONCILE_JITTER_S = 30.0  # spread instances and apps started by the same schedule


async def _service() -> Service:
    """The process's `Service` (built on first use, with Application Insights when it is configured)."""
    from rotation.service.process import service_for_loop  # noqa: PLC0415 - see the module docstring
    from rotation.settings import Settings  # noqa: PLC0415
    from rotation.telemetry import configure_telemetry  # noqa: PLC0415

    def settings() -> Settings:
        configure_telemetry(os.environ)  # once per process
        return Settings.from_env(os.environ)

    return await service_for_loop(settings)


def _event_dict(event: func.EventGridEvent | func.CloudEvent) -> dict[str, object]:
    """The trigger object back as the JSON event it was, for the one parser in `rotation.events`."""
    if isinstance(event, func.CloudEvent):
        return {
            "id": event.id,
            "source": event.source,
            "type": event.type,
            "specversion": event.specversion,
            "time": event.time.isoformat() if event.time else None,
            "subject": event.subject,
            "data": event.get_json(),
        }
    return {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": event.event_time.isoformat() if event.event_time else None,
        "data": event.get_json(),
        "dataVersion": event.data_version,
    }


@app.function_name("on_key_event")
@app.event_grid_trigger(arg_name="event")
async def on_key_event(event: func.EventGridEvent, context: func.Context) -> None:
    """Key Vault event -> one queued job per watched cluster of that key (returns well under 30 s)."""
    service = await _service()
    await service.fanout.handle_event(
        service.fanout.parse(_event_dict(event)), invocation_id=context.invocation_id
    )


@app.function_name("rotate_cluster")
@app.queue_trigger(arg_name="msg", queue_name=JOB_QUEUE, connection="AzureWebJobsStorage")
async def rotate_cluster(msg: func.QueueMessage, context: func.Context) -> None:
    """One job: claim, rotate, verify, record, release; raises after retries so the queue redelivers."""
    service = await _service()
    await service.worker.handle_job(
        msg.get_body(), dequeue_count=msg.dequeue_count or 1, invocation_id=context.invocation_id
    )


@app.function_name("reconcile")
@app.timer_trigger(arg_name="timer", schedule="%ROTATION_RECONCILE_SCHEDULE%", run_on_startup=False)
async def reconcile(timer: func.TimerRequest) -> None:
    """Level-triggered safety net: queue jobs for clusters behind the newest usable version, report drift."""
    from rotation.service.reconcile import Reconciler  # noqa: PLC0415 - see the module docstring

    service = await _service()
    await Reconciler(
        service, dry_run=service.settings.dry_run, jitter_s=RECONCILE_JITTER_S, doctor=True
    ).run()
    if timer.past_due:
        logger.warning("rotation.reconcile_past_due")


async def _http(route: str, req: func.HttpRequest) -> func.HttpResponse:
    from rotation.service import http_api  # noqa: PLC0415 - see the module docstring

    handler = {
        "clusters": http_api.clusters,
        "history": http_api.history,
        "rotate": http_api.rotate,
        "doctor": http_api.doctor,
        "health": http_api.health,
    }[route]
    service = await _service()
    status, doc = await handler(service, req.method, dict(req.params), req.get_body())
    return func.HttpResponse(json.dumps(doc, default=str), status_code=status, mimetype="application/json")


# Read routes and write routes are separate functions, so that a function key can open one kind and not the
# other: the postdeploy hook gives the "reader" key to clusters, history, doctor and health, and the
# "operator" key to every route (docs/deploy.md).
@app.function_name("clusters")
@app.route(route="clusters", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def clusters(req: func.HttpRequest) -> func.HttpResponse:
    """GET lists watched clusters."""
    return await _http("clusters", req)


@app.function_name("clusters_write")
@app.route(route="clusters", methods=["POST", "DELETE"], auth_level=func.AuthLevel.FUNCTION)
async def clusters_write(req: func.HttpRequest) -> func.HttpResponse:
    """POST {clusterId, owner} registers a cluster, DELETE ?clusterId= unregisters one."""
    return await _http("clusters", req)


@app.function_name("history")
@app.route(route="history", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def history(req: func.HttpRequest) -> func.HttpResponse:
    """GET ?clusterId=...: the cluster's rotation history, newest first."""
    return await _http("history", req)


@app.function_name("rotate")
@app.route(route="rotate", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def rotate(req: func.HttpRequest) -> func.HttpResponse:
    """POST {clusterId, keyUrl?}: queue a rotation of one watched cluster now."""
    return await _http("rotate", req)


@app.function_name("doctor")
@app.route(route="doctor", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def doctor(req: func.HttpRequest) -> func.HttpResponse:
    """GET [?clusterId=]: pass/warn/fail checks of one cluster, or of every watched cluster."""
    return await _http("doctor", req)


@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    """GET: storage reachable, settings valid."""
    return await _http("health", req)
