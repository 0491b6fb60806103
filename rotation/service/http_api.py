"""HTTP routes of the registry, independent of the Functions types: (method, params, body) -> (status, JSON).

Input is validated before anything is called: a bad cluster id, key URL or body is a 400 with
``{"error": {"code", "message"}}``, never a 500. Bodies over 64 KiB are refused with 413.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from rotation.ids import InvalidKeyUrl, InvalidResourceId, parse_cluster_id, parse_key_url
from rotation.outcomes import Trigger
from rotation.service.registration import RegistrationRefused, watched_dict
from rotation.store.jobs import Job
from rotation.untrusted import JsonRefused, loads_bounded

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from rotation.ids import ResourceId
    from rotation.service.process import Service

    Handler = Callable[[Service, str, Mapping[str, str], bytes], Awaitable["Response"]]

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
Response = tuple[int, Any]


class BadRequest(Exception):
    """Input the route cannot act on: answered with ``status`` and a JSON error."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _guarded(handler: Handler) -> Handler:
    """Answer a `BadRequest` raised by ``handler`` with its status and JSON error."""

    async def run(service: Service, method: str, params: Mapping[str, str], body: bytes) -> Response:
        try:
            return await handler(service, method, params, body)
        except BadRequest as exc:
            return exc.status, {"error": {"code": exc.code, "message": exc.message}}

    run.__doc__ = handler.__doc__
    return run


def _body(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise BadRequest("BodyTooLarge", f"body is {len(body)} bytes; the limit is {MAX_BODY}", 413)
    try:
        doc = loads_bounded(body or b"{}", what="body", max_bytes=MAX_BODY)
    except JsonRefused as exc:
        raise BadRequest("InvalidJson", str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest("InvalidJson", "body is not valid UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("InvalidBody", "body must be a JSON object")
    return doc


def _cluster_id(value: object) -> ResourceId:
    if not isinstance(value, str) or not value:
        raise BadRequest("MissingClusterId", "clusterId is required (a mongoClusters resource id)")
    try:
        return parse_cluster_id(value)
    except InvalidResourceId as exc:
        raise BadRequest("InvalidClusterId", str(exc)) from None


def _optional_str(doc: Mapping[str, Any], name: str, limit: int = 256) -> str | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise BadRequest("InvalidBody", f"{name} must be a printable string of at most {limit} characters")
    return value


@_guarded
async def clusters(service: Service, method: str, params: Mapping[str, str], body: bytes) -> Response:
    """GET: list; POST {clusterId, owner?}: register; DELETE ?clusterId=: unregister."""
    if method == "GET":
        rows = [watched_dict(w) async for w in service.registry.watched.iterate()]
        return 200, {"clusters": rows, "count": len(rows)}
    if method == "POST":
        doc = _body(body)
        cluster_id = _cluster_id(doc.get("clusterId"))
        owner = _optional_str(doc, "owner")
        try:
            watched = await service.registration.register(str(cluster_id), owner=owner)
        except RegistrationRefused as exc:
            raise BadRequest("RegistrationRefused", str(exc), 422) from None
        return 200, watched_dict(watched)
    if method == "DELETE":
        cluster_id = _cluster_id(params.get("clusterId"))
        if not await service.registry.watched.remove(cluster_id):
            raise BadRequest("NotWatched", "cluster is not watched", 404)
        return 200, {"removed": str(cluster_id)}
    raise BadRequest("MethodNotAllowed", f"{method} is not supported", 405)


@_guarded
async def history(service: Service, method: str, params: Mapping[str, str], body: bytes) -> Response:
    """GET ?clusterId=...[&limit=N]: history newest first."""
    del method, body
    cluster_id = _cluster_id(params.get("clusterId"))
    raw_limit = params.get("limit", "50")
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= 500:  # noqa: PLR2004
        raise BadRequest("InvalidLimit", "limit must be an integer from 1 to 500")
    entries = await service.registry.history.recent(cluster_id, limit=int(raw_limit))
    return 200, {"clusterId": str(cluster_id), "history": [e.to_dict() for e in entries]}


@_guarded
async def rotate(service: Service, method: str, params: Mapping[str, str], body: bytes) -> Response:
    """POST {clusterId, keyUrl?}: queue a rotation of one watched cluster; 202 with the job, else 404."""
    del method, params
    doc = _body(body)
    cluster_id = _cluster_id(doc.get("clusterId"))
    key_url = _optional_str(doc, "keyUrl", 2048)
    if key_url is not None:
        suffixes = service.settings.allowed_vault_suffixes
        try:
            key_url = str(parse_key_url(key_url, allowed_suffixes=suffixes, require_version=True))
        except InvalidKeyUrl as exc:
            raise BadRequest("InvalidKeyUrl", str(exc)) from None
    if await service.registry.watched.get(cluster_id) is None:  # rule 11: acts only on watched clusters
        raise BadRequest("NotWatched", "cluster is not watched: register it first", 404)
    job = Job.new(str(cluster_id), trigger=Trigger.MANUAL, target_key_url=key_url)
    await service.queue.send(job)
    logger.info(
        "rotation.jobs_enqueued", extra={"cluster_id": str(cluster_id), "trigger": job.trigger, "queued": 1}
    )
    return 202, {"queued": json.loads(job.to_json())}


@_guarded
async def doctor(service: Service, method: str, params: Mapping[str, str], body: bytes) -> Response:
    """GET [?clusterId=]: the doctor's report for one cluster (watched or not) or every watched cluster."""
    del method, body
    raw = params.get("clusterId")
    ids = None if raw is None else [str(_cluster_id(raw))]
    report = await service.registration.doctor(ids)
    return 200, report.to_dict()


async def health(service: Service, method: str, params: Mapping[str, str], body: bytes) -> Response:
    """GET: the registry answers; reports dry-run mode."""
    del method, params, body
    async for _ in service.registry.watched.iterate(page_size=1):
        break
    return 200, {"status": "ok", "dryRun": service.settings.dry_run}
