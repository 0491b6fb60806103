"""HTTP surface beyond tests/app/test_http.py: fuzzing, other resource types, oversized bodies, escaped logs.

Fuzzed bodies and parameters on every route, ids of other resource types, oversized bodies on every POST,
and no caller text in a log line unescaped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rotation.logs import JsonFormatter, TextFormatter
from rotation.service.process import close_services, service_for_loop
from rotation.settings import Settings
from tests.helpers.app import forget_created, functions, http_request
from tests.helpers.app import user_function as fn
from tests.helpers.world import puts

EXAMPLES = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ROUTES = {"clusters": ["GET", "POST", "DELETE", "PATCH"], "history": ["GET"], "rotate": ["POST"]}
ALLOWED = {200, 202, 400, 404, 405, 413, 422}
SUB = "11111111-1111-1111-1111-111111111111"
NASTY = ["\n", "\r\n", "\x1b[2J", "\x00", "\u2028", "\u202e", '"', "\\", "%0a", "=", "🔑"]


@pytest.fixture
def loop(sim, azurite, monkeypatch):
    """An event loop with the app's settings in os.environ; closes the services afterwards."""
    for name in [k for k in os.environ if k.startswith("ROTATION_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    event_loop = asyncio.new_event_loop()
    yield event_loop
    service = event_loop.run_until_complete(service_for_loop(lambda: Settings.from_env(os.environ)))
    event_loop.run_until_complete(forget_created(service))
    event_loop.run_until_complete(close_services())
    event_loop.close()


def call(loop, route: str, method: str, *, params=None, body=b"") -> tuple[int, dict]:
    """Call an HTTP function on ``loop``; its status and JSON body (the content type must be JSON)."""
    response = loop.run_until_complete(fn(route)(http_request(method, route, params=params, body=body)))
    assert response.mimetype == "application/json"
    return response.status_code, json.loads(response.get_body())


def check_answer(status: int, doc: dict) -> None:
    """The status is one an HTTP function may answer, and an error has exactly a code and a message."""
    assert status in ALLOWED, (status, doc)
    if status >= 400:
        assert set(doc) == {"error"}
        assert isinstance(doc["error"]["code"], str)
        assert doc["error"]["message"]


def check_logs(records: list[logging.LogRecord], sent: list[str]) -> None:
    """Every record formats to one line, and no caller text with a control character appears raw in it."""
    hostile = [s for s in sent if any(not ch.isprintable() for ch in s)]
    for record in records:
        for line in (TextFormatter().format(record), JsonFormatter().format(record)):
            assert "\n" not in line
            assert "\r" not in line
            assert all(s not in line for s in hostile)


texts = (
    st.text(max_size=60)
    | st.sampled_from(NASTY)
    | st.builds(lambda a, b: a + b, st.sampled_from(NASTY), st.text(max_size=20))
)
cluster_ids = texts | st.builds(
    lambda name, tail: (
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.DocumentDB/mongoClusters/{name}{tail}"
    ),
    st.text(max_size=20),
    st.sampled_from(["", "\n", "/..", "/firewallRules/x", "?a=b"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
bodies = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.fixed_dictionaries(
        {},
        optional={
            "clusterId": cluster_ids | json_values,
            "owner": texts | json_values,
            "keyUrl": texts | json_values,
        },
    ).map(lambda d: json.dumps(d).encode())
)
params = st.fixed_dictionaries({}, optional={"clusterId": cluster_ids, "limit": texts})


def test_fuzzed_requests_get_json_answers_and_escaped_logs(loop, sim, caplog):
    """Any body and parameters on any route: a JSON answer (never 500), no PUT, every log line escaped."""
    caplog.set_level(logging.DEBUG, logger="rotation")
    count = 0

    @EXAMPLES
    @given(route=st.sampled_from(sorted(ROUTES)), data=st.data())
    def one(route: str, data: st.DataObject) -> None:
        nonlocal count
        count += 1
        method = data.draw(st.sampled_from(ROUTES[route]))
        body, query = data.draw(bodies), data.draw(params)
        caplog.clear()
        status, doc = call(loop, route, method, params=query, body=body)
        check_answer(status, doc)
        sent = [body.decode("utf-8", "replace"), *query.values()]
        try:
            doc_sent = json.loads(body)
        except ValueError:
            doc_sent = None
        if isinstance(doc_sent, dict):
            sent += [v for v in doc_sent.values() if isinstance(v, str)]
        check_logs(caplog.records, sent)

    one()
    assert count >= 300
    assert puts(sim) == []


OTHER_TYPES = [
    "Microsoft.Storage/storageAccounts/abc",
    "Microsoft.DocumentDB/databaseAccounts/abc",
    "Microsoft.DocumentDB/mongoClusters/abc/firewallRules/r",
    "Microsoft.DocumentDB/mongoClusters",
    "Microsoft.DocumentDB/mongoClusters/..",
    "Microsoft.DocumentDB/mongoClusters/a b",
    "Microsoft.KeyVault/vaults/contoso-kv",
]


@pytest.mark.parametrize("tail", OTHER_TYPES)
def test_ids_that_are_not_mongo_clusters_are_400_on_every_route(loop, sim, tail):
    """A resource id of another type (or a child, or a traversal) is a 400 InvalidClusterId on every route."""
    cluster_id = f"/subscriptions/{SUB}/resourceGroups/rg/providers/{tail}"
    answers = [
        call(loop, "clusters", "POST", body=json.dumps({"clusterId": cluster_id}).encode()),
        call(loop, "clusters", "DELETE", params={"clusterId": cluster_id}),
        call(loop, "history", "GET", params={"clusterId": cluster_id}),
        call(loop, "rotate", "POST", body=json.dumps({"clusterId": cluster_id}).encode()),
    ]
    for status, doc in answers:
        assert (status, doc["error"]["code"]) == (400, "InvalidClusterId"), doc
    assert sim.requests == []


@pytest.mark.parametrize("route", ["clusters", "rotate"])
def test_oversized_and_malformed_bodies_on_every_post(loop, sim, route):
    """Every POST route answers 413 to a body over 64 KiB and 400 to one that is not a JSON object."""
    big = json.dumps({"clusterId": "x", "pad": "y" * (64 * 1024)}).encode()
    status, doc = call(loop, route, "POST", body=big)
    assert (status, doc["error"]["code"]) == (413, "BodyTooLarge")
    for body, code in (
        (b"{", "InvalidJson"),
        (b"\xc3\x28", "InvalidJson"),
        (b"[]", "InvalidBody"),
        (b"7", "InvalidBody"),
    ):
        status, doc = call(loop, route, "POST", body=body)
        assert (status, doc["error"]["code"]) == (400, code)
    assert sim.requests == []


def test_no_route_is_anonymous():
    """The generated function.json of every HTTP function asks for a function (or admin) key."""
    http = [
        json.loads(f.get_function_json())["bindings"][0]
        for f in functions().values()
        if json.loads(f.get_function_json())["bindings"][0]["type"] == "httpTrigger"
    ]
    assert len(http) >= 4
    assert {b["authLevel"].lower() for b in http} <= {"function", "admin"}


def test_registered_owner_with_control_characters_is_refused(loop, sim, caplog):
    """An owner carrying a newline or an escape sequence is a 400 and never reaches a log line."""
    caplog.set_level(logging.DEBUG, logger="rotation")
    cluster_id = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.DocumentDB/mongoClusters/c{uuid.uuid4().hex[:8]}"
    for owner in ("a\nrotation.cluster_rotated outcome=rotated", "\x1b[31mred", "x\u2028y"):
        status, doc = call(
            loop, "clusters", "POST", body=json.dumps({"clusterId": cluster_id, "owner": owner}).encode()
        )
        assert (status, doc["error"]["code"]) == (400, "InvalidBody")
        check_logs(caplog.records, [owner])
    assert sim.requests == []
