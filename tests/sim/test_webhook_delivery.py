"""The simulator's Event Grid subscriptions: validation handshakes, delivery, retry and filters."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Self

import pytest
from aiohttp import web

from azsim.webhook import SubscriptionError


class Endpoint:
    """A webhook that records what Event Grid sends and answers from a script."""

    def __init__(self, answers: list[int] | None = None, *, echo: bool = True) -> None:
        self.answers = list(answers or [])
        self.echo = echo
        self.received: list[tuple[str, dict[str, str], object]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        doc = json.loads(body) if body else None
        self.received.append((request.method, dict(request.headers), doc))
        if request.method == "OPTIONS":
            origin = request.headers.get("WebHook-Request-Origin", "")
            return web.Response(headers={"WebHook-Allowed-Origin": origin} if self.echo else {})
        if request.headers.get("aeg-event-type") == "SubscriptionValidation":
            code = doc[0]["data"]["validationCode"] if self.echo else "wrong"
            return web.json_response({"validationResponse": code})
        return web.Response(status=self.answers.pop(0) if self.answers else 200)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/api/events", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/api/events"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def notifications(self) -> list[tuple[str, dict[str, str], object]]:
        return [r for r in self.received if r[1].get("aeg-event-type") == "Notification"]


async def _until(check) -> None:
    async with asyncio.timeout(10):
        while not check():  # noqa: ASYNC110 - the deliveries happen on the simulator's own thread
            await asyncio.sleep(0.05)


async def test_event_grid_schema_delivery_is_retried_until_accepted(world):
    """After the handshake, a new key version is POSTed as a one-event array; a 503 is retried on the schedule."""
    async with Endpoint([503]) as endpoint:
        sub = await asyncio.to_thread(
            world.sim.add_event_subscription, endpoint.url, vault=world.vault, retry_delays=[0.1]
        )
        method, headers, validation = endpoint.received[0]
        assert (method, headers["aeg-event-type"]) == ("POST", "SubscriptionValidation")
        assert validation[0]["eventType"] == "Microsoft.EventGrid.SubscriptionValidationEvent"
        version = world.sim.create_key_version(world.vault, "cmk")
        await _until(lambda: len(endpoint.notifications()) == 2)
        (_, first, body), (_, second, _) = endpoint.notifications()
        assert body == [world.sim.events[-1]]
        assert body[0]["data"]["Version"] == version
        assert (first["aeg-delivery-count"], second["aeg-delivery-count"]) == ("0", "1")
        assert first["aeg-subscription-name"] == sub["name"]

        # The endpoint has the second POST before the simulator has read its answer: wait for this
        # subscription's own record of it (the log is the whole session's).
        def mine_now() -> list[dict]:
            return [d for d in world.sim.subscriptions.deliveries if d["subscription"] == sub["name"]]

        await _until(lambda: len(mine_now()) >= 2)
        mine = mine_now()
        assert [(d["status"], d["outcome"]) for d in mine] == [(503, "retrying"), (200, "delivered")]
        world.sim.subscriptions.remove(sub["name"])


async def test_cloudevents_delivery_and_handshake(world):
    """A CloudEvents subscription is validated with OPTIONS and gets one application/cloudevents+json object per event."""
    async with Endpoint() as endpoint:
        sub = await asyncio.to_thread(
            world.sim.add_event_subscription, endpoint.url, schema="cloudevents", vault=world.vault
        )
        method, headers, _ = endpoint.received[0]
        assert (method, headers["WebHook-Request-Origin"]) == ("OPTIONS", "eventgrid.azure.net")
        world.sim.create_key_version(world.vault, "cmk")
        await _until(lambda: len(endpoint.notifications()) == 1)
        _, headers, body = endpoint.notifications()[0]
        assert headers["Content-Type"].startswith("application/cloudevents+json")
        assert body == world.sim.to_cloud_event(world.sim.events[-1])
        world.sim.subscriptions.remove(sub["name"])


async def test_not_retried_answers_drop_the_event_and_filters_apply(world):
    """A 400 is not retried (dropped after one attempt); events of another vault are not delivered."""
    async with Endpoint([400]) as endpoint:
        sub = await asyncio.to_thread(
            world.sim.add_event_subscription, endpoint.url, vault=world.vault, retry_delays=[0.05]
        )
        other = f"kv-{uuid.uuid4().hex[:8]}"
        world.sim.add_vault(other, subscription=world.subscription)
        world.sim.create_key_version(other, "cmk")  # not this subscription's vault
        world.sim.create_key_version(world.vault, "cmk")
        await _until(
            lambda: any(d["subscription"] == sub["name"] for d in world.sim.subscriptions.deliveries)
        )
        await asyncio.sleep(0.3)  # a retry would have come by now
        mine = [d for d in world.sim.subscriptions.deliveries if d["subscription"] == sub["name"]]
        assert [(d["status"], d["outcome"]) for d in mine] == [(400, "dropped")]
        assert len(endpoint.notifications()) == 1
        world.sim.subscriptions.remove(sub["name"])


@pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
async def test_endpoint_that_does_not_prove_ownership_is_refused(world, schema):
    """An endpoint that answers the handshake wrongly gets no subscription."""
    async with Endpoint(echo=False) as endpoint:
        with pytest.raises(SubscriptionError, match="validation handshake"):
            await asyncio.to_thread(world.sim.add_event_subscription, endpoint.url, schema=schema)
    assert all(s["endpoint"] != endpoint.url for s in world.sim.subscriptions.listing())
