"""The control API (plain http JSON on ``AZSIM_CONTROL_URL``): a thin layer over :class:`Simulator`.

It sees the simulator through `Controlled`, the calls below, so this module does not import the simulator
(which adds these routes when it starts).

| route | does |
|---|---|
| ``GET /_sim/health`` | ``{"ok": true}`` |
| ``POST /_sim/seed`` | ``Simulator.seed(body)`` |
| ``GET /_sim/keys/{vault}/{key}`` | ``key_versions``: every version, oldest first |
| ``POST /_sim/keys/{vault}/{key}/versions`` | ``create_key_version`` (body: its keyword options, e.g.
  ``{"tie": true}`` for a version created in the same second as the newest);
  answers ``{"version", "key_url", "event"}`` |
| ``PATCH /_sim/keys/{vault}/{key}/{version}`` | ``update_key_version`` (body: enabled, nbf, exp, ops) |
| ``POST /_sim/key-events`` | ``emit_key_event`` (body: vault, key, version, event_type) |
| ``GET /_sim/events`` | emitted events (``?schema=cloudevents`` for CloudEvents) |
| ``GET /_sim/requests``, ``DELETE /_sim/requests`` | the request log / clear it |
| ``POST /_sim/faults`` | ``set_fault_rates`` (body: rates, service, methods, slow_seconds, seed) |
| ``POST /_sim/inject`` | ``inject`` (body: method, service, path_contains, faults: a list of
  ``{"status": 429, "error_code", "message", "headers"}``, ``{"reset": true}``, ``{"slow": 1.5}``,
  ``{"trickle": 0.5}`` (the real answer, one byte per 0.5 s) or ``{"answer": {"status", "body",
  "headers"}}`` (this raw body instead: a tampered listing, a deep document, a hostile header)) |
| ``POST /_sim/config`` | ``configure`` (plus ``operation_failure_rate``): e.g. ``write_answer`` ("both",
  "location", "none"), ``put_resets_omitted``, ``encryption_updatable_from`` |
| ``POST /_sim/reset`` | ``reset`` |
| ``GET /_sim/cluster?id=...`` | the cluster's ARM JSON |
| ``POST /_sim/cluster-status`` | ``set_cluster_status`` (body: id, status) |
| ``POST /_sim/cluster-fail-next`` | ``fail_next_operation`` (body: id, code, message) |
| ``POST /_sim/event-subscriptions`` | ``add_event_subscription`` (body: endpoint, schema, vault, event_types,
  name, retry_delays); 400 when the endpoint fails the validation handshake |
| ``GET /_sim/event-subscriptions`` | ``{"subscriptions", "deliveries"}`` |
| ``DELETE /_sim/event-subscriptions/{name}`` | remove one |

Errors: 404 for unknown names, 400 for bad input, as ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from azsim.faults import Fault

if TYPE_CHECKING:
    from azsim.messages import RequestRecord
    from azsim.webhook import EventSubscriptions

__all__ = ["Controlled", "add_control_routes"]


class Controlled(Protocol):
    """What the control routes call on the simulator (`azsim.simulator.Simulator`), one method per route."""

    subscriptions: EventSubscriptions

    @property
    def events(self) -> list[dict[str, Any]]: ...  # noqa: D102
    @property
    def requests(self) -> list[RequestRecord]: ...  # noqa: D102
    def seed(self, spec: dict[str, Any]) -> dict[str, Any]: ...  # noqa: D102
    def create_key_version(self, vault: str, key: str, *args: Any, **kwargs: Any) -> str: ...  # noqa: ANN401, D102
    def key_url(self, vault: str, key: str, version: str | None = None) -> str: ...  # noqa: D102
    def key_versions(self, vault: str, key: str) -> list[dict[str, Any]]: ...  # noqa: D102
    def update_key_version(self, vault: str, key: str, version: str, *args: Any, **kwargs: Any) -> None: ...  # noqa: ANN401, D102
    def emit_key_event(self, vault: str, key: str, version: str, event_type: str) -> dict[str, Any]: ...  # noqa: D102
    def to_cloud_event(self, event: dict[str, Any]) -> dict[str, Any]: ...  # noqa: D102
    def clear_requests(self) -> None: ...  # noqa: D102
    def set_fault_rates(  # noqa: D102
        self,
        rates: dict[str, float],
        *,
        service: str | None = "arm",
        methods: tuple[str, ...] | None = None,
        slow_seconds: float = 5.0,
        seed: int | None = None,
    ) -> None: ...
    def inject(  # noqa: D102
        self,
        *,
        method: str | None = None,
        service: str | None = None,
        path_contains: str | None = None,
        faults: list[Fault],
    ) -> None: ...
    def configure(self, *args: Any, **kwargs: Any) -> None: ...  # noqa: ANN401, D102
    def set_operation_failure_rate(self, rate: float) -> None: ...  # noqa: D102
    def reset(self) -> None: ...  # noqa: D102
    def cluster(self, cluster_id: str) -> dict[str, Any]: ...  # noqa: D102
    def set_cluster_status(self, cluster_id: str, status: str) -> None: ...  # noqa: D102
    def fail_next_operation(self, cluster_id: str, *, code: str = ..., message: str = ...) -> None: ...  # noqa: D102


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
    if "trickle" in spec:
        return Fault.trickle(float(spec["trickle"]))
    if "answer" in spec:
        answer = spec["answer"]
        return Fault.answer(
            int(answer.get("status", 200)),
            str(answer.get("body", "")),
            headers={str(k): str(v) for k, v in (answer.get("headers") or {}).items()},
        )
    if "status" in spec:
        return Fault.status(
            int(spec["status"]),
            error_code=str(spec.get("error_code", "")),
            message=str(spec.get("message", "")),
            headers={str(k): str(v) for k, v in (spec.get("headers") or {}).items()},
        )
    raise ValueError(f"unknown fault {spec!r}")


def add_control_routes(app: web.Application, sim: Controlled) -> None:  # noqa: C901, PLR0915 - a flat route table
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

    async def versions(request: web.Request) -> web.StreamResponse:
        return _json(sim.key_versions(request.match_info["vault"], request.match_info["key"]))

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

    async def add_subscription(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        future = sim.subscriptions.add(
            str(body.get("endpoint", "")),
            schema=str(body.get("schema", "eventgrid")),
            vault=body.get("vault"),
            event_types=body.get("event_types"),
            name=body.get("name"),
            retry_delays=body.get("retry_delays"),
        )
        # The handshake runs on the delivery thread; wait for it without holding up this loop.
        return _json(await asyncio.get_running_loop().run_in_executor(None, future.result))

    async def subscriptions(_: web.Request) -> web.StreamResponse:
        return _json(
            {"subscriptions": sim.subscriptions.listing(), "deliveries": sim.subscriptions.deliveries}
        )

    async def remove_subscription(request: web.Request) -> web.StreamResponse:
        sim.subscriptions.remove(request.match_info["name"])
        return _json({"ok": True})

    routes: list[tuple[str, str, _Handler]] = [
        ("GET", "/_sim/health", health),
        ("POST", "/_sim/seed", seed),
        ("GET", "/_sim/keys/{vault}/{key}", versions),
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
        ("POST", "/_sim/event-subscriptions", add_subscription),
        ("GET", "/_sim/event-subscriptions", subscriptions),
        ("DELETE", "/_sim/event-subscriptions/{name}", remove_subscription),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _guard(handler))
