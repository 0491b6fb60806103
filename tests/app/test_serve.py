"""`python -m rotation serve` as a real process against the simulator and an Azurite of its own.

The pieces of `make up`: the simulator delivers Key Vault events to the daemon's webhook as an Event Grid
subscription would (after the validation handshake), the daemon queues one job per watched cluster, its
queue worker rotates them; SIGTERM in the middle of an operation hands it to a check job that a later
process finishes, without a second PUT.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from azsim.azurite import Azurite
from azsim.faults import Fault
from azsim.webhook import SubscriptionError
from tests.helpers.cli import run_cli
from tests.helpers.daemon import Daemon
from tests.helpers.paths import ROOT
from tests.helpers.world import World, make_world

KEY = "k" * 32


@pytest.fixture(scope="module")
def storage() -> Iterator[Azurite]:
    """An Azurite of this module's own: the daemons share the fixed queue and table names."""
    with Azurite() as server:
        yield server


def wait_until(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Wait for ``check`` to hold (the test fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s")


def http(method: str, url: str, body: object = None, headers: dict[str, str] | None = None):
    """One HTTP request to the daemon; its status and JSON body."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - loopback
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _on(world: World, version: str) -> bool:
    """Every cluster of the world is on ``version`` of ``cmk``."""
    return all(world.key_of(c) == world.key_url(version) for c in world.clusters)


def test_webhook_event_rotates_every_watched_cluster(sim, storage):
    """The simulator delivers the Key Vault event to `rotation serve` (Event Grid schema, handshake first); every watched cluster is rotated, once."""
    world = make_world(sim, subscriptions=3, resource_group="rg")  # one cluster in each
    env = {"AzureWebJobsStorage": storage.connection_string}
    daemon = Daemon(env).start()
    try:
        for cluster in world.clusters[:2]:  # the third is not watched
            status, doc = http("POST", f"{daemon.url}/api/clusters", {"clusterId": cluster, "owner": "team"})
            assert status == 200, doc
        subscription = sim.add_event_subscription(
            f"{daemon.url}/api/events", vault=world.vault, retry_delays=[0.2]
        )
        # The answer can reach the simulator before the log reader has parsed the line: wait for it.
        assert daemon.wait_for("rotation.webhook_validated")[0]["schema"] == "eventgrid"
        v2 = sim.create_key_version(world.vault, "cmk")
        url = sim.key_url(world.vault, "cmk", v2)
        wait_until(lambda: all(world.key_of(c) == url for c in world.clusters[:2]), what="rotation")
        assert world.key_of(world.clusters[2]) == sim.key_url(world.vault, "cmk", world.v1)
        event_id = sim.events[-1]["id"]
        delivered = [d for d in sim.subscriptions.deliveries if d["event_id"] == event_id]
        assert [(d["status"], d["outcome"]) for d in delivered] == [(200, "delivered")]
        daemon.wait_for("rotation.cluster_rotated", count=2)
        assert [len(world.puts(c, accepted=True)) for c in world.clusters] == [1, 1, 0]

        def recorded() -> bool:  # the history row is written just after the log line
            status, doc = http("GET", f"{daemon.url}/api/history?clusterId={world.clusters[0]}")
            assert status == 200
            return bool(doc["history"]) and doc["history"][0]["outcome"] == "rotated"

        wait_until(recorded, timeout=10, what="history row")
        sim.subscriptions.remove(subscription["name"])
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.stderr()[-2000:]
    stopped = daemon.events("rotation.serve_stopped")[0]
    assert (stopped["succeeded"], stopped["failed"], stopped["poisoned"]) == (2, 0, 0)
    started = daemon.events("rotation.serve_started")[0]  # no --host-json: the app's own
    assert (started["host_json"], started["batch_size"]) == (str(ROOT / "host.json"), 32)
    assert started["max_polling_interval_s"] == 2.0
    assert not daemon.events("rotation.serve_host_json_missing")


def test_cloudevents_subscription_needs_the_key_and_rotates(sim, storage):
    """With ROTATION_HTTP_KEY set, the CloudEvents handshake and deliveries need `code=`; with it, the event rotates the cluster."""
    world = make_world(sim, resource_group="rg")
    env = {"AzureWebJobsStorage": storage.connection_string, "ROTATION_HTTP_KEY": KEY}
    assert run_cli("register", world.clusters[0], env=env).returncode == 0
    daemon = Daemon(env).start()
    try:
        with pytest.raises(SubscriptionError, match="HTTP 401"):
            sim.add_event_subscription(f"{daemon.url}/api/events", schema="cloudevents")
        assert http("GET", f"{daemon.url}/api/health")[0] == 401
        assert http("GET", f"{daemon.url}/api/health", headers={"x-functions-key": KEY})[0] == 200
        subscription = sim.add_event_subscription(
            f"{daemon.url}/api/events?code={KEY}", schema="cloudevents", vault=world.vault
        )
        assert daemon.wait_for("rotation.webhook_validated")[0]["origin"] == "eventgrid.azure.net"
        v2 = sim.create_key_version(world.vault, "cmk")
        wait_until(lambda: _on(world, v2), what="rotation")
        sim.subscriptions.remove(subscription["name"])
    finally:
        assert daemon.terminate() == 0


def test_sigterm_mid_operation_hands_over_to_a_check_job(sim, storage):
    """SIGTERM while an operation runs: the daemon exits 0 at once, a check job carries it, and the next daemon finishes it without a second PUT."""
    world = make_world(sim, resource_group="rg")
    cluster = world.clusters[0]
    sim.set_operation_seconds(cluster, 3600)  # runs until the test moves the clock
    env = {
        "AzureWebJobsStorage": storage.connection_string,
        "ROTATION_CHECK_DELAY_SECONDS": "1",
        "ROTATION_POLL_BUDGET_SECONDS": "600",
    }
    assert run_cli("register", cluster, env=env).returncode == 0
    first = Daemon(env).start()
    try:
        v2 = sim.create_key_version(world.vault, "cmk", emit_event=False)
        target = sim.key_url(world.vault, "cmk", v2)
        status, _ = http("POST", f"{first.url}/api/rotate", {"clusterId": cluster, "keyUrl": target})
        assert status == 202
        first.wait_for("rotation.put_accepted")
        started = time.monotonic()
    finally:
        assert first.terminate() == 0, first.stderr()[-2000:]
    assert time.monotonic() - started < 10  # it did not wait for the hour-long operation
    assert first.events("rotation.check_scheduled")
    stopped = first.events("rotation.serve_stopped")[0]
    assert (stopped["handed_over"], stopped["failed"]) == (1, 0)
    assert world.key_of(cluster) != target  # the operation is still running
    sim.advance(3600)  # ... and now it has ended
    second = Daemon(env).start()
    try:
        wait_until(lambda: world.key_of(cluster) == target, what="resumed rotation")
        rotated = second.wait_for("rotation.cluster_rotated")[0]
        assert rotated["trigger"] == "check"
    finally:
        assert second.terminate() == 0
    assert len(world.puts(cluster, accepted=True)) == 1  # resumed, not repeated (rule 7)
    history = json.loads(run_cli("history", cluster, "--json", env=env).stdout)
    entries = history if isinstance(history, list) else history["history"]
    assert [e["outcome"] for e in entries[:2]] == ["rotated", "pending"]


def test_job_outliving_the_grace_goes_back_to_the_queue(sim, storage):
    """A job stuck in a slow call when the grace ends is cancelled and its message handed back; the next daemon rotates."""
    world = make_world(sim, resource_group="rg")
    cluster = world.clusters[0]
    env = {"AzureWebJobsStorage": storage.connection_string}
    assert run_cli("register", cluster, env=env).returncode == 0
    v2 = sim.create_key_version(world.vault, "cmk", emit_event=False)
    sim.inject(service="arm", method="GET", path_contains=cluster.rsplit("/", 1)[1], faults=[Fault.slow(20)])
    first = Daemon(env, "--grace", "0.5").start()
    try:
        assert http("POST", f"{first.url}/api/rotate", {"clusterId": cluster})[0] == 202
        # The route wakes the worker, which receives the job at once (not after its idle polling interval);
        # 1.5 s covers the claim and watch-row reads: the job is now inside the 20 s GET (the simulator
        # records a slow request only when it answers, so there is nothing earlier to wait for).
        time.sleep(1.5)
        stopping = time.monotonic()
    finally:
        assert first.terminate() == 0, first.stderr()[-2000:]
    assert time.monotonic() - stopping < 12  # it did not wait the slow call out
    assert [r["reason"] for r in first.events("rotation.job_released")] == ["shutdown"]
    assert world.key_of(cluster) != sim.key_url(world.vault, "cmk", v2)
    second = Daemon(env).start()
    try:
        wait_until(lambda: _on(world, v2), what="rotation by the next daemon")
    finally:
        assert second.terminate() == 0


def test_failing_job_goes_to_poison_after_max_dequeue_count(sim, storage, tmp_path):
    """A job that fails on every delivery is retried maxDequeueCount times (read from host.json), then moved to rotation-jobs-poison."""
    world = make_world(sim, resource_group="rg")
    cluster = world.clusters[0]
    env = {
        "AzureWebJobsStorage": storage.connection_string,
        "ROTATION_RETRY_MAX_ATTEMPTS": "1",
    }
    assert run_cli("register", cluster, env=env).returncode == 0
    host_json = tmp_path / "host.json"
    host_json.write_text(
        json.dumps({"extensions": {"queues": {"maxDequeueCount": 2, "visibilityTimeout": "00:00:00"}}})
    )
    sim.set_fault_rates({"503": 1.0}, service="arm", methods=("GET",))
    daemon = Daemon(env, "--host-json", str(host_json)).start()
    try:
        status, _ = http("POST", f"{daemon.url}/api/rotate", {"clusterId": cluster})
        assert status == 202
        poisoned = daemon.wait_for("rotation.job_poisoned")[0]
        assert poisoned["dequeue_count"] == 2
        assert poisoned["queue"] == "rotation-jobs-poison"
        assert len(daemon.events("rotation.job_released")) == 1  # the first failure, made visible again
    finally:
        sim.set_fault_rates({})
        assert daemon.terminate() == 0
    started = daemon.events("rotation.serve_started")[0]
    assert (started["host_json"], started["max_dequeue_count"]) == (str(host_json), 2)


def test_reconcile_timer_runs_each_occurrence_once_across_replicas(sim, storage):
    """Two daemons on one storage: each NCRONTAB occurrence runs one reconcile pass, and the cluster whose event was lost is rotated."""
    world = make_world(sim, resource_group="rg")
    env = {"AzureWebJobsStorage": storage.connection_string, "ROTATION_RECONCILE_SCHEDULE": "*/2 * * * * *"}
    assert run_cli("register", world.clusters[0], env=env).returncode == 0
    v2 = sim.create_key_version(world.vault, "cmk", emit_event=False)  # no event: only reconcile sees it
    daemons = [Daemon(env, "--reconcile-jitter", "0").start() for _ in range(2)]
    try:
        assert daemons[0].events("rotation.serve_started")[0]["schedule"] == "*/2 * * * * *"
        wait_until(lambda: _on(world, v2), what="reconciled rotation")

        def rotated() -> list[dict]:  # this test's cluster (the module's storage keeps earlier tests' rows)
            return [
                r
                for d in daemons
                for r in d.events("rotation.cluster_rotated")
                if r["cluster_id"] == world.clusters[0]
            ]

        wait_until(lambda: bool(rotated()), what="its log line")
        assert [r["trigger"] for r in rotated()] == ["reconcile"]

        def both() -> dict[str, list[bool]]:  # the occurrences each daemon has logged, when both did
            seen: dict[str, list[bool]] = {}
            for daemon in daemons:
                for due in daemon.events("rotation.reconcile_due"):
                    seen.setdefault(due["occurrence"], []).append(due["ran"])
            return {occurrence: ran for occurrence, ran in seen.items() if len(ran) == 2}

        # A daemon still in its pass when the next occurrence comes skips it: wait for two seen by both.
        wait_until(lambda: len(both()) >= 2, what="two occurrences seen by both daemons")
    finally:
        for daemon in daemons:
            assert daemon.terminate() == 0
    assert [r["trigger"] for r in rotated()] == ["reconcile"]
    assert all(sorted(ran) == [False, True] for ran in both().values()), both()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--host", "192.0.2.1"], {}, "ROTATION_HTTP_KEY is required to listen on 192.0.2.1"),
        ([], {"ROTATION_HTTP_KEY": "short"}, "ROTATION_HTTP_KEY must be at least 16"),
        ([], {"ROTATION_RECONCILE_SCHEDULE": "0 */15 * * *"}, "has 5 fields; NCRONTAB needs six"),
        ([], {"ROTATION_RECONCILE_SCHEDULE": "0 61 * * * *"}, "minute field: 61 is outside 0-59"),
    ],
)
def test_serve_refuses_bad_settings_with_one_line(storage, args, env, message, tmp_path: Path):
    """A non-loopback address without a key, a short key or a bad schedule: exit 2 with a one-line error, nothing served."""
    proc = run_cli(
        "serve", "--port", "0", *args, env={"AzureWebJobsStorage": storage.connection_string, **env}
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
