"""Hostile input to the Event Grid function, end to end: structure-aware fuzzing and forged events.

Each generated event goes through `on_key_event` as the worker delivers it (the trigger object built by
`EventGridEventInConverter.decode`), or, when the converter itself refuses it (the host's behaviour, not
ours), through `Fanout.parse` + `handle_event`. Whatever the input, nothing raises, nothing reaches ARM or
Key Vault from the event function, and whatever was queued, run by the queue function, sends no PUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from azsim.host import QueueHost
from rotation.events import IgnoredEvent, KeyVersionEvent, RejectedEvent
from rotation.ids import DEFAULT_VAULT_SUFFIXES
from rotation.service.process import close_services, service_for_loop
from rotation.settings import Settings
from rotation.store.jobs import Job
from tests.helpers.app import JOB_QUEUE, context, event_trigger, forget_created
from tests.helpers.app import user_function as fn
from tests.helpers.world import make_world, puts

EXAMPLES = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
HEX32 = re.compile(r"[0-9a-f]{32}")
KEY_TYPES = [
    "Microsoft.KeyVault.KeyNewVersionCreated",
    "Microsoft.KeyVault.KeyNearExpiry",
    "Microsoft.KeyVault.KeyExpired",
]


class Target:
    """The simulator world the fuzzer aims at: one vault, key ``cmk`` on v1 then v2, two watched clusters."""

    def __init__(self, sim, loop: asyncio.AbstractEventLoop) -> None:
        self.sim = sim
        self.loop = loop
        self.keys = make_world(sim, subscriptions=1, per_subscription=2, other_key=True)
        self.v2 = sim.create_key_version(self.keys.vault, "cmk", emit_event=False)
        self.host = f"{self.keys.vault}.vault.azure.net"
        self.examples = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


@pytest.fixture
def world(sim, azurite, monkeypatch):
    """Settings in os.environ, an empty job queue, watched clusters; closes the services afterwards."""
    for name in [k for k in os.environ if k.startswith("ROTATION_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("ROTATION_RETRY_INITIAL_WAIT", "0.01")
    monkeypatch.setenv("ROTATION_RETRY_MAX_WAIT", "0.05")
    monkeypatch.setenv("ROTATION_DEFER_SECONDS", "0.1")  # many jobs for two clusters: defer briefly
    loop = asyncio.new_event_loop()
    w = Target(sim, loop)
    w.run(_clear(azurite.connection_string))
    service = w.run(_service())
    for cluster in w.keys.clusters:
        w.run(service.registration.register(cluster, owner="fuzz"))
    sim.set_cluster_key_url(w.keys.clusters[0], w.keys.key_url(w.v2))  # one on v2, one still on v1
    w.run(service.registration.register(w.keys.clusters[0], owner="fuzz"))
    sim.clear_requests()
    yield w
    w.run(forget_created(w.run(_service())))
    w.run(_clear(azurite.connection_string))
    w.run(close_services())
    loop.close()


async def _service():
    return await service_for_loop(lambda: Settings.from_env(os.environ))


async def _clear(connection: str) -> None:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.queue.aio import QueueClient

    for name in (JOB_QUEUE, f"{JOB_QUEUE}-poison"):
        async with QueueClient.from_connection_string(connection, name) as q:
            with contextlib.suppress(ResourceExistsError):
                await q.create_queue()
            await q.clear_messages()


# ---- generators ---------------------------------------------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
json_any = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
huge = st.builds(lambda ch, n: ch * n, st.characters(codec="utf-8"), st.integers(300, 20_000))
hostile_text = (
    st.text(max_size=40)
    | huge
    | st.sampled_from(["", " ", "\n", "\x00", "\u202e", "\x1b[31m", "%0d%0a", "../..", "\ud7ff", "é", "🔑"])
)


@st.composite
def key_urls(draw: st.DrawFn, host: str, versions: list[str]) -> str:
    """Key URLs near the real one: scheme, userinfo, host, port, path, version and suffix all varied."""
    scheme = draw(st.sampled_from(["https", "https", "HTTPS", "http", "ftp", "javascript", "file", ""]))
    userinfo = draw(st.sampled_from(["", "", "user@", "user:pass@", "@", f"{host}@"]))
    hosts = [
        host,
        host,
        host.upper(),
        f"{host}.evil.example",
        f"{host}.",
        "evil.example",
        f"evil.example#{host}",
        host.replace("a", "\u0430", 1),  # a Cyrillic lookalike
        f"{host.split('.', 1)[0]}.vault.azure.net.evil.example",
        f"xn--{host}",
        "127.0.0.1",
        "[::1]",
    ]
    chosen = draw(st.sampled_from(hosts) | hostile_text)
    port = draw(st.sampled_from(["", "", ":443", ":8443", ":0", ":abc", ":"]))
    name = draw(
        st.sampled_from(["cmk", "CMK", "other", "cmk ", "c%6dk", "cm\nk", "..", "cmk/..", ""]) | hostile_text
    )
    version = draw(
        st.sampled_from(versions)
        | st.text("0123456789abcdef", min_size=31, max_size=33)
        | st.sampled_from(["G" * 32, "0" * 32, "\u0660" * 32, versions[0].upper(), " " + versions[0], ""])
        | hostile_text
    )
    path = draw(
        st.sampled_from(
            [
                f"/keys/{name}/{version}",
                f"/keys/{name}/{version}",
                f"/keys/../keys/{name}/{version}",
                f"/keys/{name}/../other/{version}",
                f"/keys/%2e%2e/{name}/{version}",
                f"//keys/{name}/{version}",
                f"/secrets/{name}/{version}",
                f"/keys/{name}",
                f"/keys/{name}/{version}/extra",
                f"/KEYS/{name}/{version}",
            ]
        )
    )
    tail = draw(st.sampled_from(["", "", "?api-version=7.4", "#frag", "?x=1#y"]))
    sep = "://" if scheme else draw(st.sampled_from(["//", ""]))
    return f"{scheme}{sep}{userinfo}{chosen}{port}{path}{tail}"


@st.composite
def hostile_events(draw: st.DrawFn, world: Target) -> dict[str, Any]:
    """A Key Vault event in either schema, then mutated: wrong types, missing, extra and hostile fields."""
    versions = [world.keys.v1, world.v2]
    url = draw(key_urls(world.host, versions))
    cloud = draw(st.booleans())
    vault = world.keys.vault
    data: dict[str, Any] = {"Id": url}
    for field, value in (
        ("VaultName", vault),
        ("ObjectType", "Key"),
        ("ObjectName", "cmk"),
        ("Version", draw(st.sampled_from(versions))),
        ("NBF", None),
        ("EXP", draw(st.sampled_from([None, 1_900_000_000, "1900000000", -1, 10**30, "soon"]))),
    ):
        if draw(st.integers(0, 3)):
            data[field] = value  # noqa: PERF403 - one draw per field, in order
    topic = f"/subscriptions/{world.keys.subscriptions[0]}/resourceGroups/rg-keys/providers/Microsoft.KeyVault/vaults/{vault}"
    event: dict[str, Any] = {
        "id": draw(st.uuids().map(str) | hostile_text),
        "subject": "cmk",
        "data": data,
    }
    event_type = draw(
        st.sampled_from(KEY_TYPES) | st.sampled_from(["Microsoft.KeyVault.SecretNewVersionCreated"])
    )
    if cloud:
        event.update(source=topic, type=event_type, time="2026-11-20T09:14:03Z", specversion="1.0")
    else:
        event.update(topic=topic, eventType=event_type, eventTime="2026-11-20T09:14:03Z", dataVersion="1")
    for _ in range(draw(st.integers(0, 3))):
        target = event if draw(st.booleans()) else data
        action = draw(st.sampled_from(["drop", "retype", "extra", "hostile"]))
        keys = sorted(target, key=str)
        name = draw(st.sampled_from(keys)) if keys else "id"
        if action == "drop":
            target.pop(name, None)
        elif action == "retype":
            target[name] = draw(json_any)
        elif action == "extra":
            target[
                draw(st.text(max_size=12) | st.sampled_from(["Id ", " id", "ID", "data", "__proto__"]))
            ] = draw(json_any | hostile_text)
        else:
            target[name] = draw(hostile_text)
    return event


def check_parsed(parsed: object) -> None:
    """A parse result is one of the three outcomes, and a parsed event is sound."""
    assert isinstance(parsed, KeyVersionEvent | RejectedEvent | IgnoredEvent)
    if isinstance(parsed, KeyVersionEvent):
        url = str(parsed.key_url)
        assert url.startswith("https://")
        host = parsed.key_url.host
        assert host.endswith(DEFAULT_VAULT_SUFFIXES)
        assert set(host) <= set(string.ascii_lowercase + string.digits + "-.")
        assert HEX32.fullmatch(parsed.key_url.version or "")
        assert "/" not in parsed.key_url.name
        assert parsed.key_url.name not in {".", ".."}
        assert url.count("/") == 5
    else:
        assert "\n" not in parsed.reason


async def deliver(world: Target, raw: dict[str, Any]) -> None:
    """Deliver ``raw`` as the host would; a payload the converter refuses goes to the service directly."""
    service = await _service()
    check_parsed(service.fanout.parse(raw))
    try:
        trigger = event_trigger(raw)
    except Exception:  # noqa: BLE001 - the Functions library refused it: the host would not invoke us
        await service.fanout.handle_event(service.fanout.parse(raw))
        return
    await fn("on_key_event")(trigger, context("on_key_event"))


async def run_queued(connection: str) -> list[dict[str, Any]]:
    """Run every queued job through the queue function, as the host would; return the jobs."""
    jobs: list[dict[str, Any]] = []

    async def function(msg, ctx) -> None:
        jobs.append(json.loads(msg.get_body()))
        await fn("rotate_cluster")(msg, ctx)

    host = QueueHost(connection, JOB_QUEUE, function, visibility_timeout=5, concurrency=16)
    try:
        stats = await host.drain(idle_seconds=0.5, limit_seconds=60)
    finally:
        await host.close()
    assert stats.errors == []
    assert stats.poisoned == 0
    return jobs


# ---- the properties -----------------------------------------------------------------------------------


def test_hostile_events_never_raise_reach_arm_or_put(world, azurite):
    """Fuzzed events: the function never raises or calls ARM/Key Vault; the jobs it queued send no PUT."""

    @EXAMPLES
    @given(raw=hostile_events(world))
    def one(raw: dict[str, Any]) -> None:
        world.examples += 1
        before = len(world.sim.requests)
        world.run(deliver(world, raw))
        assert world.sim.requests[before:] == []  # the event function reads only the registry

    one()
    assert world.examples >= 400
    jobs = world.run(run_queued(azurite.connection_string))
    for job in jobs:
        parsed = Job.from_json(json.dumps(job))
        assert parsed.cluster_id in world.keys.clusters
        assert parsed.target_key_url.startswith(f"https://{world.host}/keys/cmk/")
    assert puts(world.sim) == []


def test_hostile_payloads_of_any_shape_are_answered(world):
    """Any JSON value as the whole event (arrays, scalars, nested junk) is rejected or ignored, never raised."""

    @EXAMPLES
    @given(
        raw=json_any
        | st.dictionaries(
            st.sampled_from(["id", "data", "eventType", "type", "specversion", "topic", "source"]), json_any
        )
    )
    def one(raw: Any) -> None:
        world.examples += 1
        service = world.run(_service())
        parsed = service.fanout.parse(raw)
        check_parsed(parsed)
        report = world.run(service.fanout.handle_event(parsed))
        assert report.outcome in {"rejected", "ignored", "queued", "warned"}

    one()
    assert world.sim.requests == []


# ---- forged but well-formed events --------------------------------------------------------------------


def forged(world: Target, *, vault: str, key: str, version: str, host: str | None = None) -> dict[str, Any]:
    """A well-formed KeyNewVersionCreated event for an arbitrary vault/key/version."""
    event = world.sim.emit_key_event(world.keys.vault, "cmk", world.v2, "KeyNewVersionCreated")
    host = host or f"{vault}.vault.azure.net"
    event["data"].update(
        Id=f"https://{host}/keys/{key}/{version}", VaultName=vault, ObjectName=key, Version=version
    )
    event["topic"] = event["topic"].rsplit("/", 1)[0] + f"/{vault}"
    event["subject"] = key
    return event


def test_forged_events_cause_no_put(world, azurite):
    """Another vault, another key, a version that does not exist or is disabled: no PUT, each says why."""
    sim = world.sim
    other_vault = f"{world.keys.vault}x"
    sim.add_vault(other_vault, subscription=world.keys.subscriptions[0])
    foreign = sim.create_key_version(other_vault, "cmk", emit_event=False)
    disabled = sim.create_key_version(world.keys.vault, "cmk", enabled=False, emit_event=False)
    missing = "0123456789abcdef" * 2
    events = [
        forged(world, vault=other_vault, key="cmk", version=foreign),  # a vault the clusters do not use
        forged(world, vault=world.keys.vault, key="other", version=world.keys.other_version),  # unwatched key
        forged(world, vault=world.keys.vault, key="other", version=world.v2),  # the version of another key
        forged(world, vault=world.keys.vault, key="cmk", version=missing),  # no such version
        forged(world, vault=world.keys.vault, key="cmk", version=disabled),  # disabled
        forged(world, vault=world.keys.vault, key="cmk", version=world.keys.v1),  # older than one cluster's
    ]
    sim.clear_requests()
    for event in events:
        world.run(deliver(world, event))
        world.run(deliver(world, sim.to_cloud_event(event)))
    jobs = world.run(run_queued(azurite.connection_string))
    assert {j["target_key_url"].rsplit("/", 1)[1] for j in jobs} == {missing, disabled, world.keys.v1}
    assert puts(sim) == []
    service = world.run(_service())
    from rotation.ids import parse_cluster_id

    outcomes = set()
    for cluster in world.keys.clusters:
        outcomes |= {h.outcome for h in world.run(service.registry.history.recent(parse_cluster_id(cluster)))}
    assert {"key-not-usable", "stale-event"} <= outcomes
    assert "rotated" not in outcomes
    assert world.keys.version_of(world.keys.clusters[0]) == world.v2
    assert world.keys.version_of(world.keys.clusters[1]) == world.keys.v1
