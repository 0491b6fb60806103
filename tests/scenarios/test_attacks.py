"""Attacks that once broke the rotator, each kept as the test that it holds now.

The attacker can put messages on the job queue, call the HTTP routes with the function key, or control what
a Key Vault or an ARM-like endpoint answers. Each test is the attack itself: the tied ``created``, the
forged check job, the job for an unwatched cluster, the looping ``nextLink``, the deep document, the hostile
port, the trickled answer. What was sent is read from the simulator's request log.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace

import pytest
from azure.identity.aio import DefaultAzureCredential

from azsim.faults import Fault
from rotation.azure.arm import ClustersClient
from rotation.azure.transport import SharedHttp
from rotation.engine import Rotator
from rotation.errors import ServiceError
from rotation.ids import parse_cluster_id, parse_key_url
from rotation.outcomes import Outcome
from rotation.serve import webhook
from rotation.service import http_api
from rotation.service.reconcile import Reconciler
from rotation.service.worker import MAX_CHECKS
from rotation.store.jobs import Job
from rotation.url_guard import UnsafeUrl, check_operation_path, check_same_origin
from tests.helpers.fakes import (
    FakeClusters,
    FakeKeys,
    cluster,
    key_url,
    key_version,
    make_rotator,
    rotate,
)
from tests.helpers.world import puts

ARM = "https://management.azure.com"
DEEP = "[" * 20_000 + "]" * 20_000  # 40 KB, 20,000 deep
SUB = "aaaaaaaa-0000-0000-0000-00000000000a"
CLUSTER = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.DocumentDB/mongoClusters/db-1"


def arm_requests(sim) -> list:
    """The ARM requests in the simulator's log."""
    return [r for r in sim.requests if r.service == "arm"]


def forged(cluster_id: str, **fields) -> str:
    """A queue message as an attacker writes it."""
    return json.dumps({"cluster_id": cluster_id, "enqueued_at": "2026-11-29T00:00:00Z", **fields})


# -- 1. a tie in Key Vault's `created` (whole seconds) -------------------------------------------------


async def test_late_job_for_a_version_of_the_same_second_does_not_move_the_cluster_back(stack):
    """Rule 2: v1 and v2 share a creation second; a late job for v1 leaves a cluster on v2 (stale-event)."""
    key, v1 = stack.new_key()
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False, tie=True)
    versions = {v["version"]: v for v in stack.sim.key_versions(stack.vault, key)}
    assert versions[v1]["created"] == versions[v2]["created"]  # the simulator really tied them
    cid = stack.add_cluster(key, v2)
    await stack.register(cid)
    stack.sim.clear_requests()
    job = Job.new(cid, trigger="event", target_key_url=stack.sim.key_url(stack.vault, key, v1))
    result = await stack.service.worker.handle_job(job.to_json())
    assert result is not None
    assert result.outcome is Outcome.STALE_EVENT
    assert "same creation second" in result.reason
    assert stack.puts() == []
    assert stack.key_of(cid) == stack.sim.key_url(stack.vault, key, v2)


async def test_ambiguous_newest_versions_keep_the_current_one(stack):
    """Two newest versions created in one second: a rotation to "the newest" keeps the cluster (no PUT)."""
    key, v1 = stack.new_key()
    cid = stack.add_cluster(key, v1)
    await stack.register(cid)
    stack.sim.create_key_version(stack.vault, key, emit_event=False)
    stack.sim.create_key_version(stack.vault, key, emit_event=False, tie=True)
    stack.sim.clear_requests()
    result = await stack.service.worker.handle_job(Job.new(cid, trigger="manual").to_json())
    assert result is not None
    assert (result.outcome, "same creation second" in result.reason) == (Outcome.STALE_EVENT, True)
    report = await Reconciler(stack.service, dry_run=True).run()
    [line] = report.clusters
    assert (line.action, line.drift) == ("up-to-date", "same-creation-second")
    assert stack.puts() == []


async def test_equal_or_missing_creation_time_is_not_newer(fake_time):
    """Rule 2 on the rules alone: an equal or a missing `created` is never "newer"."""
    arm = FakeClusters()
    base = key_version(2)
    tied = replace(key_version(1), created_on=base.created_on)
    kv = FakeKeys(base, tied)
    cid = arm.add(cluster(key=key_url(2)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(1))
    assert (result.outcome, "same creation second" in result.reason) == (Outcome.STALE_EVENT, True)
    kv.add(replace(key_version(3), created_on=None))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(3))
    assert result.outcome is Outcome.STALE_EVENT
    assert arm.puts == []


async def test_job_for_an_older_version_is_stale_whatever_its_state(fake_time):
    """A job for a version older than the cluster's is stale-event even once that version is disabled."""
    arm = FakeClusters()
    kv = FakeKeys(replace(key_version(1), enabled=False), key_version(2))
    cid = arm.add(cluster(key=key_url(2)))
    result = await rotate(make_rotator(arm, kv, fake_time), cid, key_url(1))
    assert result.outcome is Outcome.STALE_EVENT
    assert arm.puts == []


# -- 2. forged check jobs -----------------------------------------------------------------------------


async def test_forged_check_job_cannot_make_the_worker_read_another_resource(stack):
    """A check job whose operation URL is an identity resource is rejected; that path is never read."""
    key, v1 = stack.new_key()
    cid = stack.add_cluster(key, v1)
    await stack.register(cid)
    stack.sim.clear_requests()
    current = stack.sim.key_url(stack.vault, key, v1)
    for url in (
        f"{ARM}{stack.identity}",
        (
            f"{ARM}/subscriptions/{uuid.uuid4()}/providers/Microsoft.DocumentDB/locations/westeurope"
            "/mongoClusterAzureAsyncOperation/victim"
        ),
        (
            f"{ARM}/subscriptions/{stack.subscription}/providers/Microsoft.Storage/locations/westeurope"
            "/operationsStatus/x"
        ),
        "https://evil.example/subscriptions/x",
    ):
        result = await stack.service.worker.handle_job(
            forged(cid, trigger="check", operation_url=url, target_key_url=current)
        )
        assert result is not None, url
        assert (result.outcome, "operation URL refused" in result.reason) == (Outcome.REJECTED, True), url
    assert arm_requests(stack.sim) == []
    [row] = [w async for w in stack.service.registry.watched.iterate() if w.cluster_id == cid]
    assert row.state == "watching"  # no victim left pending


async def test_forged_check_job_with_another_clusters_operation_is_not_followed(stack):
    """A check job naming another cluster's operation (same subscription) never reads it nor records `rotated`."""
    key, v1 = stack.new_key()
    victim = stack.add_cluster(key, v1)
    other = stack.add_cluster(key, v1)
    await stack.register(victim)
    await stack.register(other)
    v2_url = stack.sim.key_url(
        stack.vault, key, stack.sim.create_key_version(stack.vault, key, emit_event=False)
    )
    done = await stack.service.worker.handle_job(
        Job.new(other, trigger="manual", target_key_url=v2_url).to_json()
    )
    assert done is not None
    assert done.outcome is Outcome.ROTATED
    assert done.operation_url
    stack.sim.clear_requests()
    current = stack.sim.key_url(stack.vault, key, v1)
    result = await stack.service.worker.handle_job(
        forged(victim, trigger="check", operation_url=done.operation_url, target_key_url=current)
    )
    assert result is not None
    assert result.outcome is Outcome.ALREADY_CURRENT  # decided afresh for its own target: nothing to do
    op_path = done.operation_url.removeprefix(ARM).split("?")[0]
    assert [r for r in arm_requests(stack.sim) if r.path.split("?")[0] == op_path] == []
    assert puts(stack.sim) == []
    [entry, *_] = await stack.service.registry.history.recent(parse_cluster_id(victim), limit=1) or [None]
    assert entry is None or entry.outcome != Outcome.ROTATED.value


async def test_check_jobs_of_one_operation_are_bounded(stack):
    """A check job past the chain's bound ends `failed` when its operation still runs, and queues no more."""
    key, v1 = stack.new_key()
    cid = stack.add_cluster(key, v1)
    await stack.register(cid)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False)
    stack.sim.set_operation_seconds(cid, 30)
    runtime = stack.service.runtime
    short = replace(runtime.settings, poll_budget_seconds=0.3)
    runtime.rotator = Rotator(clusters=runtime.clusters, keys=runtime.keys, settings=short)
    first = await stack.service.worker.handle_job(
        Job.new(cid, trigger="manual", target_key_url=stack.sim.key_url(stack.vault, key, v2)).to_json()
    )
    assert first is not None
    assert first.outcome is Outcome.PENDING
    [check] = await stack.queued()
    assert (check.trigger, check.checks) == ("check", 1)
    last = replace(check, checks=MAX_CHECKS)
    result = await stack.service.worker.handle_job(last.to_json())
    assert result is not None
    assert result.outcome is Outcome.FAILED
    assert f"after {MAX_CHECKS} check jobs" in result.reason
    assert len(await stack.queued()) == 1  # only the first check job, never consumed here
    assert len(stack.puts()) == 1


async def test_operation_answer_without_a_status_is_not_succeeded(sim):
    """An Azure-AsyncOperation answer with no `status` is refused, never taken for Succeeded."""
    sub = str(uuid.uuid4())
    cluster_id = parse_cluster_id(
        f"/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.DocumentDB/mongoClusters/db-1"
    )
    path = f"/subscriptions/{sub}/providers/Microsoft.DocumentDB/locations/westeurope/mongoClusterAzureAsyncOperation/op1"
    sim.inject(service="arm", path_contains=path, faults=[Fault.answer(200, json.dumps({"id": path}))])
    async with (
        DefaultAzureCredential() as credential,
        ClustersClient(ARM, credential, api_version="x") as arm,
    ):
        with pytest.raises(ServiceError) as caught:
            await arm.operation_status(ARM + path, cluster_id=cluster_id)
    assert (caught.value.code, caught.value.transient) == ("NoStatus", False)


# -- 3. unwatched clusters ----------------------------------------------------------------------------


async def test_queue_job_for_an_unwatched_cluster_is_rejected_without_any_arm_call(stack):
    """Rule 11: a job for a cluster nobody registered is acknowledged `rejected` ("not watched"), no PUT."""
    key, v1 = stack.new_key()
    cid = stack.add_cluster(key, v1)
    v2 = stack.sim.create_key_version(stack.vault, key, emit_event=False)
    stack.sim.clear_requests()
    for body in (
        Job.new(cid, trigger="manual", target_key_url=stack.sim.key_url(stack.vault, key, v2)).to_json(),
        forged(cid, trigger="reconcile"),
    ):
        result = await stack.service.worker.handle_job(body)
        assert result is not None
        assert (result.outcome, result.reason.startswith("not watched")) == (Outcome.REJECTED, True)
    assert arm_requests(stack.sim) == []
    assert await stack.service.registry.history.recent(parse_cluster_id(cid)) == []


# -- 4. endless paging, and a deadline per reconcile cluster ---------------------------------------------


async def test_key_vault_listing_whose_next_link_loops_is_refused(stack):
    """A version listing whose nextLink leads back to itself is refused after the page cap, not followed on."""
    key, v1 = stack.new_key()
    base = f"https://{stack.vault}.vault.azure.net/keys/{key}/versions"
    page = json.dumps({"value": [], "nextLink": f"{base}?api-version=7.5&maxresults=25&$skiptoken=0"})
    stack.sim.inject(service="kv", path_contains="/versions", faults=[Fault.answer(200, page)] * 40)
    keys = stack.service.runtime.keys
    keys._max_pages = 12  # the cap is a constructor option; a small one keeps the test short
    started = time.monotonic()
    with pytest.raises(ServiceError) as caught:
        await keys.list_versions(parse_key_url(stack.sim.key_url(stack.vault, key, v1)))
    assert caught.value.code == "TooManyPages"
    assert caught.value.transient is False
    assert time.monotonic() - started < 10
    assert len([r for r in stack.sim.requests if r.path.endswith("/versions")]) <= 14


async def test_reconcile_pass_survives_a_cluster_whose_answer_never_ends(stack):
    """A cluster whose GET trickles forever costs that cluster (skipped, unreachable), not the whole pass."""
    key, v1 = stack.new_key()
    stuck, fine = stack.add_cluster(key, v1), stack.add_cluster(key, v1)
    await stack.register(stuck, fine)
    stack.sim.create_key_version(stack.vault, key, emit_event=False)
    stack.sim.inject(method="GET", service="arm", path_contains=stuck, faults=[Fault.trickle(0.5)] * 4)
    started = time.monotonic()
    # 4 s: room for the healthy cluster's first token, Key Vault challenge and TLS on a loaded machine.
    report = await Reconciler(stack.service, cluster_deadline=4.0).run()
    assert time.monotonic() - started < 12
    lines = {line.cluster_id: line for line in report.clusters}
    assert (lines[stuck].action, lines[stuck].drift) == ("skipped", "unreachable")
    assert lines[fine].action == "queued"


async def test_arm_listing_whose_next_link_loops_is_refused(sim, monkeypatch):
    """A mongoClusters listing whose nextLink points back at itself stops at the page cap with an error."""
    monkeypatch.setattr("rotation.azure.arm.MAX_LIST_PAGES", 5)
    sub = str(uuid.uuid4())
    url = f"{ARM}/subscriptions/{sub}/providers/Microsoft.DocumentDB/mongoClusters?api-version=x"
    page = json.dumps({"value": [], "nextLink": url})
    sim.inject(service="arm", path_contains=sub, faults=[Fault.answer(200, page)] * 10)
    async with (
        DefaultAzureCredential() as credential,
        ClustersClient(ARM, credential, api_version="x") as arm,
    ):
        with pytest.raises(ServiceError) as caught:
            _ = [c async for c in arm.list_clusters(sub)]
    assert caught.value.code == "TooManyPages"
    assert len(arm_requests(sim)) == 5


# -- 5. deep JSON -------------------------------------------------------------------------------------


async def test_deep_http_body_is_a_one_line_400(stack):
    """A 20,000-deep body (40 KB) is a 400 with a one-line reason, not a RecursionError (500)."""
    body = ('{"clusterId": ' + DEEP + "}").encode()
    for route in (http_api.rotate, http_api.clusters):
        status, doc = await route(stack.service, "POST", {}, body)
        assert status == 400
        assert doc["error"]["code"] == "InvalidJson"
        assert "nested 20001 deep" in doc["error"]["message"]
        assert "\n" not in doc["error"]["message"]


async def test_deep_webhook_body_is_a_one_line_400(stack):
    """The serve daemon's Event Grid webhook answers a 20,000-deep body with a one-line 400, queues nothing."""
    status, doc = await webhook.handle_delivery(stack.service, DEEP.encode(), invocation_id="inv")
    assert (status, doc["error"]["code"]) == (400, "InvalidJson")
    assert doc["error"]["message"] == "webhook body is nested 20000 deep; the limit is 64"
    assert await stack.queued() == []


async def test_deep_arm_answer_costs_one_cluster_not_the_reconcile_pass(stack):
    """A cluster GET answered with a 20,000-deep document is refused; the pass reports it and goes on."""
    key, v1 = stack.new_key()
    deep, fine = stack.add_cluster(key, v1), stack.add_cluster(key, v1)
    await stack.register(deep, fine)
    stack.sim.create_key_version(stack.vault, key, emit_event=False)
    stack.sim.inject(method="GET", service="arm", path_contains=deep, faults=[Fault.answer(200, DEEP)] * 2)
    report = await Reconciler(stack.service).run()
    lines = {line.cluster_id: line for line in report.clusters}
    assert (lines[deep].action, lines[deep].drift) == ("skipped", "unreachable")
    assert "nested 20000 deep" in lines[deep].detail
    assert lines[fine].action == "queued"


async def test_deep_event_is_rejected_with_a_reason(stack):
    """An event whose data nests 20,000 deep is rejected (one line), never a RecursionError."""
    nested: object = []
    for _ in range(20_000):
        nested = [nested]
    event = {"id": "e1", "eventType": "Microsoft.KeyVault.KeyNewVersionCreated", "data": {"Id": nested}}
    report = await stack.service.fanout.handle_event(stack.service.fanout.parse(event))
    assert report.outcome == Outcome.REJECTED.value
    assert "nested more than 64 deep" in report.reason


# -- 6. the ARM host check ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://management.azure.com:8443/subscriptions/x",
        "https://evil.example\\@management.azure.com/subscriptions/x",
        "https://evil.example@management.azure.com/subscriptions/x",
        "https://management.azure.com.evil.example/subscriptions/x",
        "https://management.azure.com./subscriptions/x",
        "http://management.azure.com/subscriptions/x",
        "https://management.azure.com:/subscriptions/x",
        "https://management.azure.com/subscriptions/x#frag",
        "https://management.azure.com/subscriptions/../x",
        "https://management.azure.com/subscriptions/x\n",
    ],
)
def test_operation_urls_off_the_arm_origin_are_refused(url):
    """One strict parse, then scheme, host and port compared: userinfo, backslashes, other ports refused."""
    with pytest.raises(UnsafeUrl):
        check_same_origin(url, ARM)


def test_the_arm_origin_itself_passes_with_or_without_port_443():
    """The endpoint's own host passes, with the default port written out or not; the path comes back."""
    assert check_same_origin(f"{ARM}/a/b?x=1", ARM) == "/a/b"
    assert check_same_origin("https://MANAGEMENT.azure.com:443/a", ARM) == "/a"
    sub, other = "aaaaaaaa-0000-0000-0000-000000000001", "aaaaaaaa-0000-0000-0000-000000000002"
    cid = parse_cluster_id(
        f"/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.DocumentDB/mongoClusters/cluster-1"
    )
    for kind in ("mongoClusterAzureAsyncOperation", "mongoClusterOperationResults"):
        ops = f"/providers/Microsoft.DocumentDB/locations/westeurope/{kind}/1"
        check_operation_path(f"/subscriptions/{sub.upper()}{ops}", cid)
        with pytest.raises(UnsafeUrl):
            check_operation_path(f"/subscriptions/{other}{ops}", cid)


@pytest.mark.parametrize(
    "url",
    [
        (
            f"https://management.azure.com:8443/subscriptions/{SUB}/providers/Microsoft.DocumentDB/locations/x"
            "/mongoClusterAzureAsyncOperation/1"
        ),
        (
            f"https://evil.example\\@management.azure.com/subscriptions/{SUB}/providers/Microsoft.DocumentDB"
            "/locations/x/mongoClusterAzureAsyncOperation/1"
        ),
    ],
    ids=["port-8443", "backslash-userinfo"],
)
async def test_hostile_operation_url_never_leaves_the_process(sim, url):
    """The adapter refuses the URL itself: no CONNECT is attempted, so no token goes anywhere."""
    async with (
        DefaultAzureCredential() as credential,
        ClustersClient(ARM, credential, api_version="x") as arm,
    ):
        with pytest.raises(ServiceError) as caught:
            await arm.operation_status(url, cluster_id=parse_cluster_id(CLUSTER))
    assert (caught.value.code, caught.value.transient) == ("UnsafeUrl", False)
    assert (sim.refused_connects, sim.requests) == ([], [])


# -- 7. a trickled answer, an oversized one -----------------------------------------------------------


async def test_trickled_answer_is_cut_by_the_request_deadline(stack):
    """An answer sent one byte per 0.3 s cannot keep a 1 s read timeout busy: the request ends at its deadline."""
    key, v1 = stack.new_key()
    cid = stack.add_cluster(key, v1)
    stack.sim.inject(method="GET", service="arm", path_contains=cid, faults=[Fault.trickle(0.3)])
    http = SharedHttp()
    async with (
        DefaultAzureCredential() as credential,
        ClustersClient(
            ARM,
            credential,
            api_version="2025-07-01-preview",
            read_timeout=1,
            deadline=2,
            transport=http.transport(),
        ) as arm,
    ):
        started = time.monotonic()
        with pytest.raises(ServiceError) as caught:
            await arm.get(parse_cluster_id(cid))
        elapsed = time.monotonic() - started
    await http.close()
    assert "no complete answer within 2 s" in str(caught.value)
    assert elapsed < 4


async def test_oversized_answer_is_refused_before_it_is_read(sim):
    """An answer declaring more than the size cap is refused from its headers (one-line error)."""
    sub = str(uuid.uuid4())
    body = json.dumps({"value": [], "pad": "x" * (9 * 1024 * 1024)})
    sim.inject(service="arm", path_contains=sub, faults=[Fault.answer(200, body)])
    http = SharedHttp()
    async with (
        DefaultAzureCredential() as credential,
        ClustersClient(ARM, credential, api_version="x", transport=http.transport()) as arm,
    ):
        with pytest.raises(ServiceError) as caught:
            _ = [c async for c in arm.list_clusters(sub)]
    await http.close()
    causes = []
    error: BaseException | None = caught.value
    while error is not None:
        causes.append(type(error).__name__)
        error = error.__cause__ or getattr(error, "inner_exception", None)
    assert "ResponseTooLarge" in causes, causes


async def test_deep_key_vault_answer_is_refused_with_a_reason(stack):
    """A Key Vault answer nested 20,000 deep is a permanent one-line error, not a RecursionError."""
    key, v1 = stack.new_key()
    stack.sim.inject(service="kv", path_contains=f"/keys/{key}/{v1}", faults=[Fault.answer(200, DEEP)] * 2)
    with pytest.raises(ServiceError) as caught:
        await stack.service.runtime.keys.get_version(parse_key_url(stack.sim.key_url(stack.vault, key, v1)))
    assert caught.value.transient is False
    assert "nested too deeply" in str(caught.value)
