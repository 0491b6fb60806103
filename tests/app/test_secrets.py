"""Secrets: no token, credential header or account key in any log record or history row of a rotation.

Everything is captured at DEBUG for every logger (azure.* included) while a rotation runs end to end through
the functions, with a throttled PUT and a Key Vault challenge on the way; the chaos run scans the same way.
"""

from __future__ import annotations

import json
import logging
import re

from azsim.azurite import ACCOUNT_KEY
from azsim.host import QueueHost
from azsim.simulator import Fault
from rotation.ids import parse_cluster_id
from rotation.logs import JsonFormatter, TextFormatter
from tests.helpers.app import JOB_QUEUE, context, event_trigger
from tests.helpers.app import user_function as fn
from tests.helpers.world import make_world, puts

# "Bearer <credential>"; Key Vault's challenge header (Bearer authorization="https://login...") is not one.
BEARER = re.compile(r"Bearer (?!authorization=)")
LOGGERS = (
    "",
    "azure",
    "azure.core.pipeline.policies.http_logging_policy",
    "azure.identity",
    "aiohttp",
    "rotation",
)


async def test_no_secret_in_logs_or_history_of_a_rotation(app, caplog):
    """A full rotation logged at DEBUG everywhere: no issued token, Bearer credential, identity header or key."""
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    sim = app.sim
    world = make_world(sim, subscriptions=1, per_subscription=2, other_key=True)
    service = await app.service()
    for cluster in world.clusters:
        await service.registration.register(cluster, owner="team")
    v2, event = world.new_version_event()
    sim.inject(method="PUT", service="arm", faults=[Fault.status(429, headers={"Retry-After": "0"})])
    await fn("on_key_event")(event_trigger(event), context("on_key_event"))
    host = QueueHost(app.azurite.connection_string, JOB_QUEUE, fn("rotate_cluster"))
    try:
        await host.drain(idle_seconds=0.5, limit_seconds=30)
    finally:
        await host.close()
    assert all(world.version_of(c) == v2 for c in world.clusters)
    assert len(puts(sim)) == 3  # one throttled, then one per cluster

    texts: list[str] = []
    for record in caplog.records:
        texts += [record.getMessage(), TextFormatter().format(record), JsonFormatter().format(record)]
        texts.append(repr(vars(record)))
    for cluster in world.clusters:
        texts += [
            json.dumps(h.to_dict()) for h in await service.registry.history.recent(parse_cluster_id(cluster))
        ]
        texts.append(repr(await service.registry.watched.get(parse_cluster_id(cluster))))
    blob = "\n".join(texts)
    tokens = sim.tokens
    assert tokens, "the run must have used issued tokens"
    assert any("azure" in r.name for r in caplog.records), "azure.* records were captured"
    assert any(r.getMessage() == "rotation.retry_scheduled" for r in caplog.records)
    for token in tokens:
        assert token not in blob
    assert sim.env["IDENTITY_HEADER"] not in blob
    assert ACCOUNT_KEY not in blob
    assert not BEARER.search(blob)
