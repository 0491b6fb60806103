"""Helpers for the Functions-app tests: the app's functions (read once), trigger objects, storage isolation.

`function_app.app.get_functions()` may be called only once per process (a second call raises), so
`functions()` caches its answer for every test module. Trigger objects are built the way the Python worker
builds them: `EventGridEventInConverter.decode` for Event Grid and CloudEvents payloads,
`azure.functions.queue.QueueMessage` for queue messages, `func.HttpRequest` for HTTP.

Storage isolation: the registry tables and the job queue have fixed names, so each test uses its own
subscription, vault and key names (uuid) and the `app` fixture empties ``rotation-jobs`` and
``rotation-jobs-poison`` before and after the test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.functions import meta
from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.queue import QueueMessage
from azure.storage.queue.aio import QueueClient

from azsim.azurite import Azurite
from azsim.host import Context, QueueHost
from azsim.simulator import Simulator
from rotation.ids import parse_cluster_id
from rotation.service.process import Service, close_services, service_for_loop
from rotation.settings import Settings
from tests.helpers.world import MADE_SUBSCRIPTIONS

JOB_QUEUE = "rotation-jobs"
POISON_QUEUE = "rotation-jobs-poison"


@functools.cache
def functions() -> dict[str, Any]:
    """``{name: FunctionBuilder}`` of the app, read once per process."""
    import function_app

    return {f.get_function_name(): f for f in function_app.app.get_functions()}


def user_function(name: str) -> Any:
    """The decorated coroutine function of ``name``, as the worker calls it."""
    return functions()[name].get_user_function()


def bindings(name: str) -> list[dict[str, Any]]:
    """The ``bindings`` of the function.json the app generates for ``name``."""
    return json.loads(functions()[name].get_function_json())["bindings"]


def event_trigger(event: dict[str, Any]) -> func.EventGridEvent | func.CloudEvent:
    """The trigger object the worker passes for one Event Grid or CloudEvents event."""
    datum = meta.Datum(type="json", value=json.dumps(event))
    return EventGridEventInConverter.decode(datum, trigger_metadata={})


def queue_message(body: str | bytes, *, dequeue_count: int = 1) -> QueueMessage:
    """The trigger object the worker passes for one queue message (body already base64-decoded)."""
    raw = body.encode() if isinstance(body, str) else body
    return QueueMessage(id=str(uuid.uuid4()), body=raw, dequeue_count=dequeue_count)


def http_request(
    method: str, route: str, *, params: dict[str, str] | None = None, body: bytes | str | dict | None = None
) -> func.HttpRequest:
    """A ``func.HttpRequest`` for ``/api/{route}``; a dict body is sent as JSON."""
    if isinstance(body, dict):
        raw = json.dumps(body).encode()
    elif isinstance(body, str):
        raw = body.encode()
    else:
        raw = body or b""
    return func.HttpRequest(
        method=method,
        url=f"http://localhost:7071/api/{route}",
        headers={"content-type": "application/json"},
        params=params or {},
        body=raw,
    )


def context(function_name: str) -> Context:
    """A fresh invocation context."""
    return Context(function_name=function_name)


async def forget_created(service: Service) -> None:
    """Unregister every cluster of the subscriptions `make_world` created (the registry tables are shared)."""
    subs = {s.lower() for s in MADE_SUBSCRIPTIONS}
    MADE_SUBSCRIPTIONS.clear()
    rows = [w async for w in service.registry.watched.iterate() if w.subscription.lower() in subs]
    gate = asyncio.Semaphore(16)

    async def remove(cluster_id: str) -> None:
        async with gate:
            await service.registry.watched.remove(parse_cluster_id(cluster_id))

    await asyncio.gather(*(remove(row.cluster_id) for row in rows))


@dataclass
class App:
    """The function app wired to the simulator and Azurite for one test."""

    sim: Simulator
    azurite: Azurite

    async def service(self) -> Service:
        """The `Service` the functions use on this event loop (built from os.environ on first use)."""
        return await service_for_loop(lambda: Settings.from_env(os.environ))

    def queue(self, name: str = JOB_QUEUE) -> QueueClient:
        """A client of a queue on Azurite (the job queue by default)."""
        return QueueClient.from_connection_string(self.azurite.connection_string, name)

    async def take_jobs(self, name: str = JOB_QUEUE) -> list[dict[str, Any]]:
        """Receive and delete every visible message; each body base64-decoded and parsed as JSON."""
        out: list[dict[str, Any]] = []
        async with self.queue(name) as q:
            while True:
                batch = [m async for m in q.receive_messages(max_messages=32, visibility_timeout=30)]
                if not batch:
                    return out
                for m in batch:
                    out.append(json.loads(base64.b64decode(m.content, validate=True)))
                    await q.delete_message(m)

    async def wait_jobs(self, count: int, *, within: float = 5.0) -> list[dict[str, Any]]:
        """`take_jobs` until ``count`` jobs arrived (delayed ones become visible) or ``within`` seconds passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        out = await self.take_jobs()
        while len(out) < count and loop.time() < deadline:
            await asyncio.sleep(0.2)
            out += await self.take_jobs()
        return out

    async def count(self, name: str = JOB_QUEUE) -> int:
        """Messages in the queue, visible or not."""
        async with self.queue(name) as q:
            with contextlib.suppress(Exception):
                return (await q.get_queue_properties()).approximate_message_count
        return 0

    async def drain(self, **kw: Any) -> QueueHost:
        """Run the queue function on every job (as the host would) until the queue stays empty; the host's stats."""
        host = QueueHost(self.azurite.connection_string, JOB_QUEUE, user_function("rotate_cluster"), **kw)
        try:
            await host.drain(idle_seconds=0.5, limit_seconds=30)
        finally:
            await host.close()
        return host

    async def clear(self) -> None:
        """Empty the job and poison queues (creating them if missing)."""
        for name in (JOB_QUEUE, POISON_QUEUE):
            async with self.queue(name) as q:
                with contextlib.suppress(ResourceExistsError):
                    await q.create_queue()
                await q.clear_messages()


@pytest.fixture
async def app(sim: Simulator, azurite: Azurite, monkeypatch: pytest.MonkeyPatch):
    """Settings in os.environ (simulator, Azurite, fast retries), empty queues; closes the services."""
    for name in [k for k in os.environ if k.startswith("ROTATION_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("ROTATION_RETRY_INITIAL_WAIT", "0.01")
    monkeypatch.setenv("ROTATION_RETRY_MAX_WAIT", "0.05")
    harness = App(sim, azurite)
    await harness.clear()
    yield harness
    await forget_created(await harness.service())
    await close_services()
    await harness.clear()
