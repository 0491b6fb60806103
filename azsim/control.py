"""The control API (plain http JSON on ``AZSIM_CONTROL_URL``): a thin layer over :class:`Simulator`.

| route | does |
|---|---|
| ``GET /_sim/health`` | ``{"ok": true}`` |
| ``POST /_sim/seed`` | ``Simulator.seed(body)`` |
| ``POST /_sim/keys/{vault}/{key}/versions`` | ``create_key_version`` (body: its keyword options);
  answers ``{"version", "key_url", "event"}`` |
| ``PATCH /_sim/keys/{vault}/{key}/{version}`` | ``update_key_version`` (body: enabled, nbf, exp, ops) |
| ``POST /_sim/key-events`` | ``emit_key_event`` (body: vault, key, version, event_type) |
| ``GET /_sim/events`` | emitted events (``?schema=cloudevents`` for CloudEvents) |
| ``GET /_sim/requests``, ``DELETE /_sim/requests`` | the request log / clear it |
| ``POST /_sim/faults`` | ``set_fault_rates`` (body: rates, service, methods, slow_seconds, seed) |
| ``POST /_sim/inject`` | ``inject`` (body: method, service, path_contains, faults: a list of
  ``{"status": 429, "error_code", "message", "headers"}``, ``{"reset": true}`` or ``{"slow": 1.5}``) |
| ``POST /_sim/config`` | ``configure`` (plus ``operation_failure_rate``): e.g. ``write_answer`` ("both",
  "location", "none"), ``put_resets_omitted``, ``encryption_updatable_from`` |
| ``POST /_sim/reset`` | ``reset`` |
| ``GET /_sim/cluster?id=...`` | the cluster's ARM JSON |
| ``POST /_sim/cluster-status`` | ``set_cluster_status`` (body: id, status) |
| ``POST /_sim/cluster-fail-next`` | ``fail_next_operation`` (body: id, code, message) |

Errors: 404 for unknown names, 400 for bad input, as ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from azsim.faults import Fault

if TYPE_CHECKING:
    from azsim.simulator import Simulator

__all__ = ["add_control_routes"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise TypeError("the body must be a JSON object")
    return data


def _guard(handler: _Handler) -> _Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except KeyError as exc:
            return _error(404, "NotFound", str(exc))
        except (ValueError, TypeError) as exc:
            return _error(400, "BadRequest", str(exc))

    return wrapped


def _fault(spec: dict[str, Any]) -> Fault:
    if spec.get("reset"):
        return Fault.reset()
    if "slow" in spec:
        return Fault.slow(float(spec["slow"]))
    if "status" in spec:
        return Fault.status(
            int(spec["status"]),
            error_code=str(spec.get("error_code", "")),
            message=str(spec.get("message", "")),
            headers={str(k): str(v) for k, v in (spec.get("headers") or {}).items()},
        )
    raise ValueError(f"unknown fault {spec!r}")


def add_control_routes(app: web.Application, sim: Simulator) -> None:  # noqa: C901 - a flat route table
    """Register the ``/_sim`` routes on ``app``."""

    async def health(_: web.Request) -> web.StreamResponse:
        return _json({"ok": True})

    async def seed(request: web.Request) -> web.StreamResponse:
        return _json(sim.seed(await _body(request)))

    async def create_version(request: web.Request) -> web.StreamResponse:
        vault, key = request.match_info["vault"], request.match_info["key"]
        before = len(sim.events)
        version = sim.create_key_version(vault, key, **await _body(request))
        events = sim.events
        event = events[-1] if len(events) > before else None
        return _json({"version": version, "key_url": sim.key_url(vault, key, version), "event": event})

    async def update_version(request: web.Request) -> web.StreamResponse:
        info = request.match_info
        sim.update_key_version(info["vault"], info["key"], info["version"], **await _body(request))
        return _json({"ok": True})

    async def key_event(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        event = sim.emit_key_event(body["vault"], body["key"], body["version"], body["event_type"])
        return _json(event)

    async def events(request: web.Request) -> web.StreamResponse:
        found = sim.events
        if request.query.get("schema", "").lower() == "cloudevents":
            found = [sim.to_cloud_event(e) for e in found]
        return _json(found)

    async def requests(_: web.Request) -> web.StreamResponse:
        return _json([dataclasses.asdict(r) for r in sim.requests])

    async def clear_requests(_: web.Request) -> web.StreamResponse:
        sim.clear_requests()
        return _json({"ok": True})

    async def faults(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        methods = body.get("methods")
        sim.set_fault_rates(
            {str(k): float(v) for k, v in (body.get("rates") or {}).items()},
            service=body.get("service", "arm"),
            methods=tuple(methods) if methods is not None else None,
            slow_seconds=float(body.get("slow_seconds", 5.0)),
            seed=body.get("seed"),
        )
        return _json({"ok": True})

    async def inject(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        sim.inject(
            method=body.get("method"),
            service=body.get("service"),
            path_contains=body.get("path_contains"),
            faults=[_fault(f) for f in body.get("faults", [])],
        )
        return _json({"ok": True})

    async def config(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        rate = body.pop("operation_failure_rate", None)
        sim.configure(**body)
        if rate is not None:
            sim.set_operation_failure_rate(float(rate))
        return _json({"ok": True})

    async def reset(_: web.Request) -> web.StreamResponse:
        sim.reset()
        return _json({"ok": True})

    async def cluster(request: web.Request) -> web.StreamResponse:
        return _json(sim.cluster(request.query["id"]))

    async def cluster_status(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        sim.set_cluster_status(body["id"], body["status"])
        return _json({"ok": True})

    async def cluster_fail_next(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        sim.fail_next_operation(
            body["id"],
            code=body.get("code", "InternalServerError"),
            message=body.get("message", "Simulated operation failure."),
        )
        return _json({"ok": True})

    routes: list[tuple[str, str, _Handler]] = [
        ("GET", "/_sim/health", health),
        ("POST", "/_sim/seed", seed),
        ("POST", "/_sim/keys/{vault}/{key}/versions", create_version),
        ("PATCH", "/_sim/keys/{vault}/{key}/{version}", update_version),
        ("POST", "/_sim/key-events", key_event),
        ("GET", "/_sim/events", events),
        ("GET", "/_sim/requests", requests),
        ("DELETE", "/_sim/requests", clear_requests),
        ("POST", "/_sim/faults", faults),
        ("POST", "/_sim/inject", inject),
        ("POST", "/_sim/config", config),
        ("POST", "/_sim/reset", reset),
        ("GET", "/_sim/cluster", cluster),
        ("POST", "/_sim/cluster-status", cluster_status),
        ("POST", "/_sim/cluster-fail-next", cluster_fail_next),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _guard(handler))
