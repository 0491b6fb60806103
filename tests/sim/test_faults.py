"""Fault injection: scripted faults, random rates, latency, and the request log."""

from __future__ import annotations

import time

import aiohttp
import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.keyvault.keys.aio import KeyClient

from azsim.faults import Fault


async def test_scripted_faults_come_in_order_then_normal_behaviour(world, arm_client):
    """Injected faults answer only matching requests, one each in order (503, then 429 with Retry-After), then normal answers."""
    world.sim.inject(
        method="GET",
        service="arm",
        path_contains="/mongoClusters/orders",
        faults=[
            Fault.status(503),
            Fault.status(429, error_code="TooManyRequests", headers={"Retry-After": "7"}),
        ],
    )
    other = await arm_client.call("GET", world.plain_cluster)
    assert other.status == 200
    first = await arm_client.call("GET", world.cluster_id)
    assert first.status == 503
    assert first.body["error"]["code"] == "ServiceUnavailable"
    second = await arm_client.call("GET", world.cluster_id)
    assert second.status == 429
    assert second.headers["retry-after"] == "7"
    assert second.headers["x-ms-request-id"]
    assert (await arm_client.call("GET", world.cluster_id)).status == 200
    faults = [(r.status, r.fault) for r in world.sim.requests if r.service == "arm"]
    assert faults == [(200, None), (503, "503"), (429, "429"), (200, None)]


async def test_reset_closes_the_connection_without_an_answer(world, arm_client):
    """Aiohttp resends an idempotent request once after a disconnect, so two resets reach the caller."""
    world.sim.inject(service="arm", method="PUT", faults=[Fault.reset(), Fault.reset()])
    with pytest.raises(aiohttp.ClientError):
        await arm_client.call("PUT", world.cluster_id, body=world.put_body())
    records = world.sim.requests[-2:]
    assert [(r.status, r.fault, r.method) for r in records] == [(0, "reset", "PUT")] * 2
    assert records[0].body == world.put_body()
    # Nothing happened to the cluster: the next PUT is accepted.
    assert (await arm_client.call("PUT", world.cluster_id, body=world.put_body())).status == 200


async def test_slow_fault_delays_then_answers(world, arm_client):
    """A slow fault delays the answer by its time, then answers normally, and is logged as `slow`."""
    world.sim.inject(service="arm", faults=[Fault.slow(0.3)])
    started = time.monotonic()
    answer = await arm_client.call("GET", world.cluster_id)
    assert answer.status == 200
    assert time.monotonic() - started >= 0.3
    assert world.sim.requests[-1].fault == "slow"


async def test_latency_applies_to_every_request(world, arm_client):
    """Configured latency delays every request."""
    world.sim.configure(latency=0.1)
    started = time.monotonic()
    await arm_client.call("GET", world.cluster_id)
    await arm_client.call("GET", world.cluster_id)
    assert time.monotonic() - started >= 0.2


async def test_random_fault_rates_are_seeded_and_switch_off(world, arm_client):
    """Random fault rates hit only the chosen methods, repeat with the same seed, and stop when cleared."""
    sim = world.sim
    sim.set_fault_rates({"429": 0.5, "500": 0.5}, service="arm", methods=("GET",), seed=3)
    statuses = [(await arm_client.call("GET", world.cluster_id)).status for _ in range(12)]
    assert set(statuses) == {429, 500}
    throttled = next(r for r in sim.requests if r.status == 429)
    assert throttled.fault == "429"
    # Other methods are not affected.
    assert (await arm_client.call("PUT", world.cluster_id, body=world.put_body())).status == 200
    sim.set_fault_rates({"429": 0.5, "500": 0.5}, service="arm", methods=("GET",), seed=3)
    again = [(await arm_client.call("GET", world.cluster_id)).status for _ in range(12)]
    assert again == statuses
    sim.set_fault_rates({}, service="arm")
    assert (await arm_client.call("GET", world.cluster_id)).status == 200


async def test_random_reset_and_409(world, arm_client):
    """A reset rate of 1 drops the connection; a 409 rate of 1 answers Conflict."""
    world.sim.set_fault_rates({"reset": 1.0}, service="arm")
    with pytest.raises(aiohttp.ClientError):
        await arm_client.call("GET", world.cluster_id)
    world.sim.set_fault_rates({"409": 1.0}, service="arm")
    answer = await arm_client.call("GET", world.cluster_id)
    assert answer.status == 409
    assert answer.body["error"]["code"] == "Conflict"


def test_unknown_fault_kind_is_rejected(sim):
    """A fault rate for an unknown kind is refused with ValueError."""
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.set_fault_rates({"418": 0.1})


async def test_key_vault_faults_reach_the_sdk(world, credential):
    """Key Vault faults reach KeyClient as an HttpResponseError (500) and a connection error (resets), then it recovers."""
    sim = world.sim
    async with KeyClient(world.vault_url, credential, retry_total=0) as keys:
        await keys.get_key("cmk")  # the challenge is done once per client
        sim.inject(service="kv", faults=[Fault.status(500)])
        with pytest.raises(HttpResponseError) as failed:
            await keys.get_key("cmk")
        assert failed.value.status_code == 500
        sim.inject(service="kv", faults=[Fault.reset(), Fault.reset()])
        with pytest.raises((ServiceRequestError, ServiceResponseError)):
            await keys.get_key("cmk")
        assert (await keys.get_key("cmk")).properties.version == world.v1


async def test_request_log_records_every_request(world, arm_client):
    """The request log records each request's service, method, status, path, query, body and client id, in order, as a copy."""
    sim = world.sim
    sim.clear_requests()
    await arm_client.call(
        "PUT", world.cluster_id, body=world.put_body(), headers={"x-ms-client-request-id": "r-1"}
    )
    await arm_client.call("GET", world.cluster_id)
    log = sim.requests
    assert [(r.service, r.method, r.status) for r in log] == [("arm", "PUT", 200), ("arm", "GET", 200)]
    put = log[0]
    assert put.host == "management.azure.com"
    assert put.path == world.cluster_id
    assert put.query == {"api-version": "2025-07-01-preview"}
    assert put.body == world.put_body()
    assert put.client_request_id == "r-1"
    assert put.time <= log[1].time
    log.clear()
    assert len(sim.requests) == 2
    sim.clear_requests()
    assert sim.requests == []
