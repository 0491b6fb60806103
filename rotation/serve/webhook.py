"""The Event Grid webhook of ``rotation serve``: ``POST /api/events`` and both validation handshakes.

Event Grid schema: a delivery is a JSON array of events. When the subscription is created, Event Grid first
POSTs a ``Microsoft.EventGrid.SubscriptionValidationEvent`` (header ``aeg-event-type:
SubscriptionValidation``); the endpoint proves it wants the events by answering 200 with
``{"validationResponse": <data.validationCode>}`` (Microsoft docs, "Endpoint validation with Event Grid
event schema"; the data model is ``SubscriptionValidationEventData``).

CloudEvents 1.0 schema: one event per request (``application/cloudevents+json``) or a batch
(``application/cloudevents-batch+json``). Validation is CloudEvents' abuse-protection handshake instead:
an ``OPTIONS`` request carrying ``WebHook-Request-Origin`` (Event Grid sends ``eventgrid.azure.net``),
answered 200 with ``WebHook-Allowed-Origin`` naming that origin (Microsoft docs, "Endpoint validation with
CloudEvents schema"; CloudEvents HTTP 1.1 Web Hooks spec, section 4 "Abuse Protection").

Answers to deliveries: 200 once every event was queued, ignored or rejected (a malformed event is logged at
ERROR and acknowledged: retrying cannot fix it, rule 10); 400 when the body is not JSON at all (Event Grid
does not retry a 400; the event goes to dead-letter); 503 when storage failed or the work did not end
within `EVENT_DEADLINE_S`, so Event Grid redelivers (a duplicate is harmless, rule 2). The webhook only
enqueues: Event Grid waits 30 s for an answer (docs/design.md, Azure behaviour 1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from rotation.errors import RotationError
from rotation.events import parse_payload
from rotation.outcomes import Outcome
from rotation.untrusted import JsonRefused, loads_bounded

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from rotation.service.fanout import EventReport
    from rotation.service.process import Service

logger = logging.getLogger(__name__)

EVENT_DEADLINE_S = 25.0  # answer before Event Grid's 30 s, even when storage is slow
VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
_MAX_CODE = 512


class _BadValidation(Exception):
    """A validation event without a usable code."""


def validation_code(raw: object) -> str | None:
    """The ``validationCode`` when ``raw`` is Event Grid's subscription-validation delivery, else None."""
    events = raw if isinstance(raw, list) else [raw]
    if not events or not isinstance(events[0], dict):
        return None
    first = events[0]
    kind = first.get("eventType", first.get("type"))
    if not isinstance(kind, str) or kind.strip().lower() != VALIDATION_EVENT.lower():
        return None
    data = first.get("data")
    code = data.get("validationCode") if isinstance(data, dict) else None
    if not isinstance(code, str) or not code or len(code) > _MAX_CODE or not code.isprintable():
        raise _BadValidation("subscription validation event has no usable data.validationCode")
    return code


def _json(status: int, doc: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(doc, default=str), content_type="application/json", headers=headers
    )


def _handshake(request: web.Request) -> web.Response:
    """CloudEvents abuse protection: allow the origin that asks (the key already vouched for the caller)."""
    origin = request.headers.get("WebHook-Request-Origin", "").strip()
    if not origin or not origin.isprintable():
        return _json(
            400, {"error": {"code": "MissingOrigin", "message": "WebHook-Request-Origin is required"}}
        )
    logger.info("rotation.webhook_validated", extra={"schema": "cloudevents", "origin": origin})
    return web.Response(
        status=200,
        headers={"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*", "Allow": "POST, OPTIONS"},
    )


async def handle_delivery(service: Service, body: bytes, *, invocation_id: str) -> tuple[int, dict[str, Any]]:
    """One webhook POST: the validation answer, or each event handed to `Fanout.handle_event`."""
    try:
        raw = loads_bounded(body, what="webhook body")  # bounded: a deep document is refused, not recursed
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, JsonRefused
        reason = str(exc) if isinstance(exc, JsonRefused) else "webhook body is not JSON"
        logger.error(  # noqa: TRY400 - the reason is the whole story
            "rotation.event_rejected",
            extra={"invocation_id": invocation_id, "reason": reason, "outcome": Outcome.REJECTED.value},
        )
        return 400, {"error": {"code": "InvalidJson", "message": reason}}
    try:
        code = validation_code(raw)
    except _BadValidation as exc:
        return 400, {"error": {"code": "InvalidValidationEvent", "message": str(exc)}}
    if code is not None:
        logger.info(
            "rotation.webhook_validated", extra={"schema": "eventgrid", "invocation_id": invocation_id}
        )
        return 200, {"validationResponse": code}
    # One event after the other, as the Functions host invokes the trigger once per event.
    reports: list[EventReport] = [
        await service.fanout.handle_event(item, invocation_id=invocation_id)
        for item in parse_payload(raw, allowed_suffixes=service.settings.allowed_vault_suffixes)
    ]
    return 200, {"events": [r.to_dict() for r in reports]}


def events_route(
    service: Service, *, on_queued: Callable[[], None]
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of ``/api/events`` (any method: OPTIONS and POST are served, others 405)."""

    async def events(request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return _handshake(request)
        if request.method != "POST":
            return _json(
                405,
                {"error": {"code": "MethodNotAllowed", "message": f"{request.method} is not supported"}},
                headers={"Allow": "POST, OPTIONS"},
            )
        invocation_id = str(uuid.uuid4())
        body = await request.read()
        try:
            status, doc = await asyncio.wait_for(
                handle_delivery(service, body, invocation_id=invocation_id), EVENT_DEADLINE_S
            )
        except (RotationError, TimeoutError) as exc:
            reason = str(exc) or f"not done within {EVENT_DEADLINE_S:.0f} s"
            logger.error(  # noqa: TRY400 - the reason is the story; Event Grid redelivers
                "rotation.event_redelivery_requested",
                extra={"invocation_id": invocation_id, "reason": reason},
            )
            return _json(503, {"error": {"code": "ServiceUnavailable", "message": reason}})
        if any(e.get("queued") for e in doc.get("events", [])):
            on_queued()
        return _json(status, doc)

    return events
