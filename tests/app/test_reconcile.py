"""Reconcile (the level-triggered safety net) and operations that outlive an invocation, on Azurite and the simulator."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from azsim.host import Context
from azsim.simulator import Simulator
from rotation.ids import parse_cluster_id
from rotation.service.reconcile import Reconciler
from rotation.store.clients import queue_client
from rotation.store.jobs import Job
from tests.helpers.world import make_world, puts


def kv_reads(sim: Simulator) -> list:
    """Key Vault requests that carried a token (the SDK's first, unauthenticated challenge probe excluded)."""
    return [r for r in sim.requests if r.service == "kv" and r.status != 401]


async def test_missed_event_is_caught_by_one_pass(stack):
    """A key rotated with no event delivered: one pass queues a job per cluster; the jobs rotate them."""
    key, v1 = stack.new_key()
    clusters = [stack.add_cluster(key, v1) for _ in range(3)]
    await stack.register(*clusters)
    _, v2 = key, stack.sim.create_key_version(stack.vault, key, emit_event=False)
    stack.sim.clear_requests()
    report = await Reconciler(stack.service).run()
    assert report.queued == 3
    assert {c.action for c in report.clusters} == {"queued"}
    jobs = await stack.queued()
    assert sorted(j.cluster_id for j in jobs) == sorted(clusters)
    assert {j.trigger for j in jobs} == {"reconcile"}
    assert {j.target_key_url for j in jobs} == {stack.sim.key_url(stack.vault, key, v2)}
    await stack.drain()
    assert len(stack.puts()) == 3
    assert all(stack.key_of(c) == stack.sim.key_url(stack.vault, key, v2) for c in clusters)


async def test_nothing_behind_sends_no_put_and_reads_each_key_once(stack):
    """With every cluster current: no PUT, nothing queued, one ARM GET per cluster, Key Vault read per key not per cluster."""
    keys = [stack.new_key() for _ in range(2)]
    clusters = [stack.add_cluster(k, v) for k, v in keys for _ in range(3)]
    await stack.register(*clusters)
    stack.sim.clear_requests()
    report = await Reconciler(stack.service).run()
    assert report.queued == 0
    assert stack.puts() == []
    assert await stack.queued() == []
    arm_gets = [r for r in stack.sim.requests if r.service == "arm" and r.method == "GET"]
    assert len(arm_gets) == 6 == report.arm_reads
    reads = kv_reads(stack.sim)
    lists = [r for r in reads if r.path.endswith("/versions")]
    assert len(lists) == 2  # one version listing per key
    assert len(reads) == 4 == report.keyvault_reads  # plus one GET of each key's newest candidate


async def test_two_hundred_clusters_on_five_keys(stack):
    """200 clusters on 5 keys: 200 ARM reads and 10 Key Vault reads (a listing and a GET per key) in one pass."""
    keys = [stack.new_key() for _ in range(5)]
    clusters = [stack.add_cluster(k, v) for k, v in keys for _ in range(40)]
    registry = stack.service.registry
    for cid in clusters:
        parsed = parse_cluster_id(cid)
        key_url = stack.key_of(cid)
        host, rest = key_url.removeprefix("https://").split("/keys/")
        name, version = rest.split("/")
        await registry.watched.upsert(
            cluster_id=parsed,
            vault_host=host,
            key_name=name,
            current_version=version,
            identity=stack.identity,
            owner=None,
        )
    stack.sim.create_key_version(stack.vault, keys[0][0], emit_event=False)
    stack.sim.clear_requests()
    started = time.perf_counter()
    report = await Reconciler(stack.service).run()
    elapsed = time.perf_counter() - started
    arm = [r for r in stack.sim.requests if r.service == "arm"]
    assert len(arm) == 200 == report.arm_reads
    assert len(kv_reads(stack.sim)) == 10 == report.keyvault_reads
    assert report.queued == 40
    assert elapsed < 60


async def test_dry_run_queues_and_writes_nothing(stack):
    """A dry-run pass reports what it would queue and sends no write."""
    key, v1 = stack.new_key()
    cluster = stack.add_cluster(key, v1)
    await stack.register(cluster)
    stack.sim.create_key_version(stack.vault, key, emit_event=False)
    stack.sim.clear_requests()
    report = await Reconciler(stack.service, dry_run=True).run()
    assert [c.action for c in report.clusters] == ["would-queue"]
    assert await stack.queued() == []
    assert [r for r in stack.sim.requests if r.method != "GET"] == []


async def test_jitter_delays_the_start_within_its_bound(stack):
    """The pass starts after a random delay no longer than the jitter bound, before any request."""
    slept: list[float] = []
    requests_at_sleep: list[int] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        requests_at_sleep.append(len(stack.sim.requests))

    key, v1 = stack.new_key()
    await stack.register(stack.add_cluster(key, v1))
    stack.sim.clear_requests()
    report = await Reconciler(stack.service, jitter_s=30, sleep=fake_sleep).run()
    assert len(slept) == 1
    assert 0 <= slept[0] <= 30
    assert report.jitter_s == slept[0]
    assert requests_at_sleep == [0]


async def test_concurrency_is_bounded(stack):
    """No more than ROTATION_MAX_CONCURRENCY clusters are read from ARM at once."""
    key, v1 = stack.new_key()
    await stack.register(*[stack.add_cluster(key, v1) for _ in range(12)])
    clusters = stack.service.runtime.clusters
    original = clusters.get
    in_flight = 0
    peak = 0

    async def counting_get(cluster_id):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.05)
            return await original(cluster_id)
        finally:
            in_flight -= 1

    clusters.get = counting_get  # type: ignore[method-assign]
    await Reconciler(stack.service).run()
    assert peak == stack.service.settings.max_concurrency == 4


async def test_drift_is_reported_with_levels(stack, caplog):
    """Not Ready (Inaccessible at ERROR), expiring soon, re-pointed to another key, and gone are each reported."""
    key, v1 = stack.new_key()
    soon = int((datetime.now(UTC) + timedelta(days=10)).timestamp())
    exp_key, exp_v = stack.new_key(exp=soon)
    other_key, other_v = stack.new_key()
    inaccessible = stack.add_cluster(key, v1)
    expiring = stack.add_cluster(exp_key, exp_v)
    repointed = stack.add_cluster(key, v1)
    gone = stack.add_cluster(key, v1)
    await stack.register(inaccessible, expiring, repointed, gone)
    stack.sim.set_cluster_status(inaccessible, "Inaccessible")
    stack.sim.set_cluster_key_url(repointed, stack.sim.key_url(stack.vault, other_key, other_v))
    stack.sim.remove_cluster(gone)
    with caplog.at_level(logging.INFO, logger="rotation.service.reconcile"):
        report = await Reconciler(stack.service).run()
    drift = {c.cluster_id: c for c in report.clusters}
    assert (drift[inaccessible].drift, drift[inaccessible].level) == ("inaccessible", "ERROR")
    assert (drift[expiring].drift, drift[expiring].level) == ("expiring", "WARNING")
    assert drift[repointed].drift == "key-mismatch"
    assert drift[gone].drift == "cluster-not-found"
    records = [r for r in caplog.records if r.getMessage() == "rotation.drift_detected"]
    by_cluster = {r.cluster_id: r for r in records}
    assert by_cluster[inaccessible].levelno == logging.ERROR
    assert by_cluster[expiring].levelno == logging.WARNING
    assert by_cluster[gone].reason == "cluster-not-found"
    watched = await stack.service.registry.watched.get(parse_cluster_id(repointed))
    assert watched is not None
    assert (watched.key_name, watched.current_version) == (other_key, other_v)


async def test_long_operation_ends_rotated_through_check_messages_with_one_put(stack):
    """A 10-minute operation with a short polling budget: pending, check jobs, then rotated; exactly one PUT."""
    stack.service.runtime.rotator._settings = replace(stack.service.settings, poll_budget_seconds=0.3)
    key, v1 = stack.new_key()
    cluster = stack.add_cluster(key, v1)
    await stack.register(cluster)
    stack.sim.set_operation_seconds(cluster, 600)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False)
    target = stack.sim.key_url(stack.vault, key, v2)
    first = await stack.service.worker.handle_job(
        Job.new(cluster, trigger="event", target_key_url=target).to_json()
    )
    assert first is not None
    assert first.outcome.value == "pending"
    watched = await stack.service.registry.watched.get(parse_cluster_id(cluster))
    assert watched.state == "pending"
    assert watched.operation_url == first.operation_url
    checks = await stack.queued()
    assert [(j.trigger, j.operation_url) for j in checks] == [("check", first.operation_url)]
    stack.sim.advance(300)  # half-way: the check finds it still running and queues another
    await stack.drain(max_invocations=1)
    assert stack.key_of(cluster).endswith(v1)
    assert [j.trigger for j in await stack.queued()] == ["check"]
    stack.sim.advance(300)
    await stack.drain(idle=0.3)
    assert stack.key_of(cluster) == target
    assert len(stack.puts()) == 1
    history = await stack.service.registry.history.recent(parse_cluster_id(cluster))
    assert [h.outcome for h in history][:1] == ["rotated"]
    assert [h.outcome for h in history].count("pending") >= 2
    watched = await stack.service.registry.watched.get(parse_cluster_id(cluster))
    assert (watched.state, watched.operation_url, watched.current_version) == ("watching", None, v2)


async def test_worker_cancelled_mid_poll_is_resumed_without_second_put(stack):
    """A worker cancelled while polling: the redelivered job resumes the recorded operation; one PUT in all."""
    key, v1 = stack.new_key()
    cluster = stack.add_cluster(key, v1)
    await stack.register(cluster)
    stack.sim.set_operation_seconds(cluster, 3)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False)
    body = Job.new(cluster, trigger="event", target_key_url=stack.sim.key_url(stack.vault, key, v2)).to_json()
    worker = asyncio.create_task(stack.service.worker.handle_job(body))
    for _ in range(200):
        watched = await stack.service.registry.watched.get(parse_cluster_id(cluster))
        if watched.operation_url:
            break
        await asyncio.sleep(0.02)
    assert watched.operation_url, "the operation URL is recorded before polling"
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    result = await stack.service.worker.handle_job(body, dequeue_count=2)
    assert result is not None
    assert result.outcome.value == "rotated"
    assert len(stack.puts()) == 1
    assert stack.key_of(cluster).endswith(v2)


async def test_reconcile_resumes_a_pending_cluster_whose_check_was_lost(stack):
    """A pending cluster with no check job left is resumed by reconcile (a check job), never PUT again."""
    stack.service.runtime.rotator._settings = replace(stack.service.settings, poll_budget_seconds=0.2)
    key, v1 = stack.new_key()
    cluster = stack.add_cluster(key, v1)
    await stack.register(cluster)
    stack.sim.set_operation_seconds(cluster, 600)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False)
    job = Job.new(cluster, trigger="event", target_key_url=stack.sim.key_url(stack.vault, key, v2))
    assert (await stack.service.worker.handle_job(job.to_json())).outcome.value == "pending"
    async with queue_client(stack.service.queue._service, stack.queue_name) as client:
        await client.clear_messages()  # the check job is lost
    stack.sim.advance(600)
    later = datetime.now(UTC) + timedelta(minutes=11)
    report = await Reconciler(stack.service, now=lambda: later).run()
    assert [c.action for c in report.clusters] == ["check-queued"]
    await stack.drain(idle=0.3)
    assert stack.key_of(cluster).endswith(v2)
    assert len(stack.puts()) == 1


def test_timer_binding_uses_the_schedule_setting():
    """The reconcile function is a timer on %ROTATION_RECONCILE_SCHEDULE%."""
    import json

    from tests.helpers.app import functions

    bindings = json.loads(functions()["reconcile"].get_function_json())["bindings"]
    assert bindings[0]["type"] == "timerTrigger"
    assert bindings[0]["schedule"] == "%ROTATION_RECONCILE_SCHEDULE%"


def test_context_is_what_the_app_reads():
    """The host stand-in's context carries an invocation id, as func.Context does."""
    assert Context().invocation_id


def test_cli_reconcile_json_and_table(sim, azurite, monkeypatch):
    """`reconcile --json` prints machine output only; without it a table and a summary line; exit 0."""
    import json

    from tests.helpers.cli import run_cli

    world = make_world(sim, name="recon", resource_group="rg")
    vault, v1, cluster = world.vault, world.v1, world.cluster_id
    env = {"AzureWebJobsStorage": azurite.connection_string}
    assert run_cli("register", cluster, env=env).returncode == 0
    v2 = sim.create_key_version(vault, "cmk", emit_event=False)
    proc = run_cli("reconcile", "--dry-run", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    mine = [c for c in doc["clusters"] if c["cluster_id"] == cluster]
    assert mine == [{**mine[0], "action": "would-queue", "current_version": v1, "newest_version": v2}]
    proc = run_cli("reconcile", "--dry-run", env=env)
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0].split()[:3] == ["CLUSTER", "KEY", "CURRENT"]
    assert "(dry run: nothing rotated, nothing queued)" in proc.stdout.splitlines()[-1]
    assert "reconcile [" not in proc.stderr  # no progress bar when stderr is not a terminal


def test_progress_bar_draws_counts_on_a_terminal(monkeypatch, capsys):
    """On a terminal the progress bar redraws `done/total` in place."""
    import io
    import sys

    from rotation.cli.output import ProgressBar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    fake = Tty()
    monkeypatch.setattr(sys, "stderr", fake)
    bar = ProgressBar("reconcile")
    bar(5, 10)
    bar(10, 10)
    bar.close()
    out = fake.getvalue()
    assert "\rreconcile [" + "#" * 15 + "." * 15 + "] 5/10" in out
    assert out.endswith("] 10/10\n")


async def test_worker_cancelled_during_put_keeps_its_claim(stack):
    """Cancelled while its PUT may still reach ARM, a worker keeps the claim: no other worker PUTs meanwhile."""
    from azsim.faults import Fault

    key, v1 = stack.new_key()
    cluster = stack.add_cluster(key, v1)
    await stack.register(cluster)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False)
    stack.sim.inject(method="PUT", service="arm", faults=[Fault.slow(3.0)])
    body = Job.new(cluster, trigger="event", target_key_url=stack.sim.key_url(stack.vault, key, v2)).to_json()
    stack.sim.clear_requests()
    worker = asyncio.create_task(stack.service.worker.handle_job(body))
    for _ in range(250):  # the decision reads both versions from Key Vault just before the PUT
        if len([r for r in stack.sim.requests if r.service == "kv" and r.status == 200]) >= 2:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)  # the PUT is on the wire, its answer held back for 3 s
    assert not worker.done()
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    # deferred: the claim is still held
    assert await stack.service.worker.handle_job(body, dequeue_count=2) is None
    async with queue_client(stack.service.queue._service, stack.queue_name) as client:
        assert (
            await client.get_queue_properties()
        ).approximate_message_count == 1  # back later, invisible now
    assert not [r for r in stack.sim.requests if r.method == "PUT" and r.status == 201 and r.fault is None][
        1:
    ]
    assert (
        await stack.service.registry.claims.take(parse_cluster_id(cluster), owner="someone-else", ttl=5)
        is None
    )


async def test_job_that_outlives_its_claim_does_not_put_over_the_new_holder(stack):
    """Rule 8: a job whose claim lapsed and was taken by another worker is deferred before its PUT."""
    from azsim.faults import Fault

    await stack.reconfigure(claim_ttl_seconds=1.0)
    key, v1 = stack.new_key()
    cluster = stack.add_cluster(key, v1)
    await stack.register(cluster)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False)
    stack.sim.inject(method="GET", service="kv", path_contains=v2, faults=[Fault.slow(2.5)])
    body = Job.new(cluster, trigger="event", target_key_url=stack.sim.key_url(stack.vault, key, v2)).to_json()
    worker = asyncio.create_task(stack.service.worker.handle_job(body))
    await asyncio.sleep(1.5)  # past the 1 s claim, while the job still reads Key Vault
    assert await stack.service.registry.claims.take(parse_cluster_id(cluster), owner="another-worker", ttl=60)
    assert await worker is None  # deferred, not rotated
    assert puts(stack.sim, cluster) == []


async def test_a_stale_job_waits_for_an_operation_running_on_the_cluster(stack, caplog):
    """Rule 2 under concurrency: a late job for v2 waits for a running operation to v3.

    The operation is another tool's, or a job's past its polling budget: the job is deferred instead of
    PUTting, and the cluster ends on v3, never back on v2.
    """
    from rotation.ids import parse_key_url
    from rotation.write_body import build_body

    key, v1 = stack.new_key()
    cluster = stack.add_cluster(key, v1)
    await stack.register(cluster)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False)
    v3 = stack.sim.create_key_version(stack.vault, key, emit_event=False)
    # Long enough to be still running when the job reads the cluster on any machine; ended by `advance`.
    stack.sim.configure(operation_seconds=600.0, poll_interval=0.5)
    await stack.reconfigure(defer_seconds=0.2)
    clusters = stack.service.runtime.clusters
    rid = parse_cluster_id(cluster)
    await clusters.put(
        rid, build_body(await clusters.get(rid), parse_key_url(stack.sim.key_url(stack.vault, key, v3)))
    )
    stack.sim.clear_requests()
    body = Job.new(cluster, trigger="event", target_key_url=stack.sim.key_url(stack.vault, key, v2)).to_json()
    with caplog.at_level(logging.INFO, logger="rotation"):
        assert await stack.service.worker.handle_job(body) is None  # deferred
    [deferred] = [r for r in caplog.records if r.getMessage() == "rotation.job_deferred"]
    assert "provisioningState Updating" in deferred.reason
    assert stack.puts() == []
    stack.sim.advance(605.0)
    assert stack.key_of(cluster).lower().endswith(v3.lower())
    # The deferred job comes back once the operation ended and finds the cluster past its version.
    await stack.drain(idle=1.0)
    assert stack.puts() == []
    assert stack.key_of(cluster).lower().endswith(v3.lower())
    [latest, *_] = await stack.service.registry.history.recent(rid)
    assert latest.outcome == "stale-event"


async def test_queued_jobs_rotate_at_most_max_concurrency_at_once(stack, monkeypatch):
    """ROTATION_MAX_CONCURRENCY bounds the clusters at work in one process, queued jobs included."""
    service = stack.service_with(max_concurrency=2)
    running = 0
    most = 0

    async def execute(job, **_kw):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1

    monkeypatch.setattr(service.worker, "execute", execute)
    key, v1 = stack.new_key()
    bodies = [
        Job.new(
            stack.add_cluster(key, v1),
            trigger="event",
            target_key_url=stack.sim.key_url(stack.vault, key, v1),
        ).to_json()
        for _ in range(7)
    ]
    async with service:
        await asyncio.gather(*(service.worker.handle_job(b) for b in bodies))
    assert most == 2
