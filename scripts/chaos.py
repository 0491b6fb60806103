"""Chaos run: many clusters, rotations in quick succession, duplicated shuffled events, faults, dead workers.

The rotator runs as the Functions host runs it (``on_key_event`` per event delivery, ``rotate_cluster`` per
queue message through `azsim.host.QueueHost`, several hosts at once) on a `Service` with its own tables and
queue, a short claim TTL, short client timeouts and a short retry budget, while the simulator injects faults
on a share of ARM and Key Vault requests and fails some operations, and workers are cancelled mid-operation.
Reconcile passes (the design's safety net) follow, as the timer would run them.

Every invariant is checked from the simulator's state and request log, the registry and the queues, never
from the rotator's own report:

- every watched cluster ends on the newest usable version of its key (computed from the simulator's keys),
  and the registry agrees; unwatched clusters get no PUT;
- no PUT names another vault or key, a version older than the cluster had when the PUT arrived, or an
  unusable version;
- never two operations in flight on one cluster, and never two PUTs in flight from the rotator on one cluster;
- every job ends with an outcome (a history row or a deferral for every completed invocation) or in the
  poison queue with its reason (a ``failed`` history row); the job queue ends empty;
- no unhandled exception (anything other than exhausted retries or a killed worker);
- no token, ``Bearer`` credential or identity header in any log record, history row, registry row or
  poison message;
- ties: some versions are created in the same second as the one before (Key Vault's ``created`` is whole
  seconds); no PUT names a version created in the same second as the cluster's version when it arrived;
- forged queue messages (check jobs pointing at an identity, at another subscription's operation, at another
  port; jobs for unwatched clusters; a 20,000-deep document; garbage) are each answered ``rejected``; a check
  job naming an operation of the victim's own subscription that the rotator did not record is logged
  ``rotation.check_not_recorded`` and decides afresh; no ARM request ever goes to a path a forged message
  named;
- interrupted CLI rotations (cancelled once ARM accepted the PUT) leave their operation in the history as
  ``pending`` and the cluster converges like every other.

Usage: ``python scripts/chaos.py --clusters 200 --keys 100 --rotations 5 --seed 7`` (exit 1 on a violation).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":  # the simulator's CA must be trusted before aiohttp is first imported
    sys.path.insert(0, str(ROOT))
    from azsim.tls import ensure_ca

    _CA_DIR = Path(tempfile.mkdtemp(prefix="cmk-rotator-chaos-"))
    os.environ["SSL_CERT_FILE"] = str(ensure_ca(_CA_DIR).cert_path)
    os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError  # noqa: E402
from azure.functions import meta  # noqa: E402
from azure.functions.eventgrid import EventGridEventInConverter  # noqa: E402
from azure.identity.aio import DefaultAzureCredential  # noqa: E402
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy  # noqa: E402
from azure.storage.queue.aio import QueueClient  # noqa: E402

from azsim.azurite import ACCOUNT_KEY, Azurite  # noqa: E402
from azsim.host import Context, QueueHost  # noqa: E402
from azsim.simulator import Simulator  # noqa: E402
from rotation.azure.arm import ClustersClient  # noqa: E402
from rotation.azure.keyvault import KeyVaultKeys  # noqa: E402
from rotation.azure.transport import SharedHttp  # noqa: E402
from rotation.engine import Rotator  # noqa: E402
from rotation.errors import ServiceError  # noqa: E402
from rotation.ids import InvalidKeyUrl, parse_cluster_id, parse_key_url  # noqa: E402
from rotation.key_rules import RSA_SIZES, KeyVersion, unusable_reason  # noqa: E402
from rotation.logs import JsonFormatter, TextFormatter  # noqa: E402
from rotation.outcomes import Trigger  # noqa: E402
from rotation.service import process as service_module  # noqa: E402
from rotation.service.process import Service  # noqa: E402
from rotation.service.reconcile import Reconciler  # noqa: E402
from rotation.service.runtime import Runtime  # noqa: E402
from rotation.settings import RetrySettings, Settings  # noqa: E402
from rotation.store.jobs import Job  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from azsim.messages import RequestRecord

ARM_FAULTS = {"429": 0.04, "409": 0.03, "500": 0.03, "503": 0.03, "reset": 0.03, "slow": 0.02}
KV_FAULTS = {"429": 0.02, "500": 0.02, "503": 0.02, "reset": 0.02}
READ_TIMEOUT_S = 1.0  # the clients' read timeout in the run; a "slow" fault answers after SLOW_S
SLOW_S = 1.5
CLAIM_TTL_S = (
    15.0  # longer than the longest job under this retry budget, so a dead worker's claim lapses soon
)
DEFER_S = 0.5
VISIBILITY_S = 5  # the hosts' message lease: a killed worker's message reappears after this long
EXPECTED_ERRORS = ("TransientFailure", "WorkerKilled", "ClusterBusy")
# A credential in a header or log line: "Bearer <token>". Key Vault's 401 challenge header
# (``WWW-Authenticate: Bearer authorization="https://login..."``) names no credential and is allowed.
BEARER = re.compile(r"Bearer (?!authorization=)")
_SECONDS_PER_DAY = 86400


class WorkerKilled(Exception):
    """The chaos run cancelled this invocation mid-operation (a worker that died)."""


@dataclass
class ChaosReport:
    """The figures of one run and the invariant violations found (must be empty)."""

    seed: int
    clusters: int = 0
    unwatched: int = 0
    subscriptions: int = 0
    keys: int = 0
    events: int = 0
    unusable_versions: int = 0
    tied_versions: int = 0
    forged_messages: int = 0
    rejected_jobs: int = 0
    forged_unrecorded: int = 0  # check jobs naming a real-looking operation the rotator did not record
    not_followed: int = 0
    interrupted_rotations: int = 0
    handed_off: int = 0
    deliveries: int = 0
    cloud_event_deliveries: int = 0
    job_invocations: int = 0
    workers: int = 0
    cancelled: int = 0
    stale_claims: int = 0
    leases_lost: int = 0
    poisoned: int = 0
    reconcile_rounds: int = 0
    retries: int = 0
    requests: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    puts_per_cluster: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    log_records: int = 0
    history_rows: int = 0
    tokens_scanned: int = 0
    duration_s: float = 0.0
    late_writes: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def put_stats(self) -> dict[str, float]:
        """Total, min, median and max PUTs per watched cluster."""
        counts = list(self.puts_per_cluster.values()) or [0]
        return {
            "total": sum(counts),
            "min": min(counts),
            "median": statistics.median(counts),
            "max": max(counts),
        }

    def summary(self) -> str:
        """The figures, one per line, for a person."""
        puts = self.put_stats()
        histogram = Counter(self.puts_per_cluster.values())
        lines = [
            f"seed                 {self.seed}",
            (
                f"clusters             {self.clusters} watched + {self.unwatched} unwatched, "
                f"{self.subscriptions} subscriptions, {self.keys} keys"
            ),
            (
                f"events               {self.events} key versions ({self.unusable_versions} not usable, "
                f"{self.tied_versions} in the same second as the one before)"
            ),
            (
                f"forged messages      {self.forged_messages} sent, "
                f"{self.rejected_jobs} job rejections logged; {self.forged_unrecorded} naming an "
                f"unrecorded operation, {self.not_followed} not followed"
            ),
            (
                f"interrupted rotates  {self.interrupted_rotations} cancelled after the PUT, "
                f"{self.handed_off} handed on"
            ),
            (
                f"deliveries           {self.deliveries} event deliveries ({self.cloud_event_deliveries} as "
                f"CloudEvents), {self.job_invocations} job invocations on {self.workers} workers"
            ),
            f"faults injected      {_kinds(self.faults)} (of {self.requests} requests)",
            f"retries              {self.retries}",
            (
                f"workers cancelled    {self.cancelled} ({self.stale_claims} left their claim behind), "
                f"{self.leases_lost} leases lost"
            ),
            f"poisoned jobs        {self.poisoned}",
            f"reconcile rounds     {self.reconcile_rounds}",
            f"outcomes             {_kinds(self.outcomes)}",
            (
                f"PUTs per cluster     total {puts['total']}, min {puts['min']}, median {puts['median']}, "
                f"max {puts['max']}; histogram {dict(sorted(histogram.items()))}"
            ),
            f"invocation errors    {_kinds(self.errors) or 'none'}",
            (
                f"secrets scan         {self.log_records} log records, {self.history_rows} history rows, "
                f"{self.tokens_scanned} tokens"
            ),
            f"duration             {self.duration_s:.1f} s",
            f"late writes          {len(self.late_writes)} (a PUT applied after a newer version landed)",
            f"violations           {len(self.violations)}",
        ]
        lines += [f"  late: {v}" for v in self.late_writes[:10]]
        lines += [f"  - {v}" for v in self.violations[:50]]
        return "\n".join(lines)


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


class _Capture(logging.Handler):
    """Keeps every log record of the run, formatted, for the secrets scan and the invariant checks."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.retries = 0
        self.deferred_invocations: set[str] = set()
        self.rejected_invocations: set[str] = set()
        self.rejected = 0
        self.not_recorded = 0
        self.unhandled: list[str] = []
        self._text = TextFormatter()
        self._json = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        """Format and keep the record; note the ones the checks need."""
        try:
            message = record.getMessage()
            self.lines.append(message)
            self.lines.append(self._text.format(record))
            self.lines.append(self._json.format(record))
        except Exception as exc:  # noqa: BLE001 - a record that cannot be formatted is itself a finding
            self.unhandled.append(f"log record {record.name} could not be formatted: {exc!r}")
            return
        if message == "rotation.retry_scheduled":
            self.retries += 1
        elif message == "rotation.job_deferred":
            self.deferred_invocations.add(str(getattr(record, "invocation_id", "")))
        elif message == "rotation.check_not_recorded":
            self.not_recorded += 1
        elif message == "rotation.job_rejected":
            self.rejected += 1
            self.rejected_invocations.add(str(getattr(record, "invocation_id", "")))
        if record.name.startswith("asyncio") and record.levelno >= logging.ERROR:
            self.unhandled.append(f"asyncio: {message[:200]}")


class _ChaosHost(QueueHost):
    """`QueueHost` that survives losing a message lease (it became visible again and was re-received)."""

    lost = 0

    async def _one(self, message: Any) -> None:  # noqa: ANN401 - azure QueueMessage
        try:
            await super()._one(message)
        except (ResourceNotFoundError, HttpResponseError):
            type(self).lost += 1


@dataclass
class _Cluster:
    id: str
    vault: str
    key: str
    watched: bool


@dataclass
class _World:
    subscriptions: list[str]
    vaults: list[str]
    keys: list[tuple[str, str]]  # (vault, key)
    clusters: list[_Cluster]


def _build_world(sim: Simulator, rng: random.Random, size: int, keys: int) -> _World:
    subs = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(max(2, -(-size // 40)))]
    tag = uuid.UUID(int=rng.getrandbits(128)).hex[:8]
    vaults = [f"kv{tag}{i}" for i in range(max(1, -(-keys // 8)))]
    for i, vault in enumerate(vaults):
        sim.add_vault(vault, subscription=subs[i % len(subs)], resource_group="rg-keys")
    key_list = [(vaults[i % len(vaults)], f"cmk-{i}") for i in range(keys)]
    for vault, key in key_list:
        sim.create_key_version(vault, key, size=rng.choice(sorted(RSA_SIZES)), emit_event=False)
    identities = {
        sub: sim.add_identity(subscription=sub, resource_group="rg-data", name="id-cmk") for sub in subs
    }
    clusters: list[_Cluster] = []
    unwatched = max(1, size // 20)
    for i in range(size + unwatched):
        sub = subs[i % len(subs)]
        vault, key = key_list[i % len(key_list)] if i < len(key_list) else rng.choice(key_list)
        cluster_id = sim.add_cluster(
            subscription=sub,
            resource_group=f"rg-{i % 3}",
            name=f"db-{tag}-{i}",
            key_url=sim.key_url(vault, key, sim.latest_version(vault, key)),
            identity=identities[sub],
        )
        if rng.random() < 0.06:  # noqa: PLR2004 - a few long operations: pending, then check jobs
            sim.set_operation_seconds(cluster_id, rng.uniform(3.0, 5.0))
        clusters.append(_Cluster(cluster_id, vault, key, watched=i < size))
    return _World(subs, vaults, key_list, clusters)


def _usable(url: str, version: dict[str, Any], now: float) -> bool:
    """Rule 3 (the rotator's own `unusable_reason`) on the simulator's attributes of version ``url``."""

    def when(stamp: float | None) -> datetime | None:
        return None if stamp is None else datetime.fromtimestamp(stamp, UTC)

    facts = KeyVersion(
        url=parse_key_url(url),
        enabled=bool(version["enabled"]),
        created_on=when(version["created"]),
        not_before=when(version["nbf"]),
        expires_on=when(version["exp"]),
        key_type=version["kty"],
        size=version["size"],
        operations=tuple(version["ops"]),
    )
    return unusable_reason(facts, datetime.fromtimestamp(now, UTC)) is None


def _split_url(url: str) -> tuple[str, str, str | None] | None:
    """Host, key name and version of a key URL, or None when the rotator would not accept it either."""
    try:
        key = parse_key_url(url)
    except InvalidKeyUrl:
        return None
    return key.host, key.name.lower(), key.version  # Key Vault key names are case-insensitive


def _trigger(event: dict[str, Any]) -> Any:  # noqa: ANN401 - func.EventGridEvent or func.CloudEvent
    return EventGridEventInConverter.decode(
        meta.Datum(type="json", value=json.dumps(event)), trigger_metadata={}
    )


def _make_service(connection: str, suffix: str) -> Service:
    """A `Service` on its own tables and queue, short timeouts, a short retry and polling budget."""
    settings = replace(
        Settings.from_env({"AzureWebJobsStorage": connection}),
        retry=RetrySettings(max_attempts=5, max_seconds=3.0, initial_wait=0.05, max_wait=0.3),
        poll_budget_seconds=2.0,
        check_delay_seconds=0.5,
        max_concurrency=16,
        claim_ttl_seconds=CLAIM_TTL_S,
        defer_seconds=DEFER_S,
    )
    http = SharedHttp()  # one connection pool per worker, as `Runtime.create` builds it
    credential = DefaultAzureCredential(transport=http.transport())
    clusters = ClustersClient(
        settings.arm_endpoint,
        credential,
        api_version=settings.arm_api_version,
        connection_timeout=2.0,
        read_timeout=READ_TIMEOUT_S,
        transport=http.transport(),
    )
    keys = KeyVaultKeys(credential, read_timeout=READ_TIMEOUT_S, http=http)
    rotator = Rotator(clusters=clusters, keys=keys, settings=settings)
    runtime = Runtime(
        settings=settings, http=http, credential=credential, clusters=clusters, keys=keys, rotator=rotator
    )
    return Service.create(
        settings,
        runtime=runtime,
        watch_table=f"chaosw{suffix}",
        history_table=f"chaosh{suffix}",
        queue_name=f"chaos-{suffix}",
    )


class _Run:
    """One chaos run over a simulator and an Azurite already running."""

    def __init__(
        self,
        *,
        sim: Simulator,
        connection: str,
        functions: dict[str, Callable[..., Awaitable[None]]],
        size: int,
        seed: int,
        keys: int,
        rotations: int,
        workers: int,
        cancel_rate: float,
    ) -> None:
        self.sim = sim
        self.connection = connection
        self.functions = functions
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible plan, not security
        self.size = size
        self.keys = keys
        self.rotations = rotations
        self.workers = workers
        self.cancel_rate = cancel_rate
        self.report = ChaosReport(seed=seed)
        self.capture = _Capture()
        self.completed_invocations: set[str] = set()
        self.event_errors: list[str] = []
        self.put_in_flight: Counter[str] = Counter()
        self.put_overlaps: list[str] = []
        self.suffix = uuid.UUID(int=self.rng.getrandbits(128)).hex[:10]
        self._poison_lines: list[str] = []
        self.late_writes: list[str] = []
        self.forged_paths: set[str] = set()  # ARM paths named by forged messages: never to be requested
        self.interrupts: list[asyncio.Task[None]] = []

    # -- the workers ---------------------------------------------------------------------------------

    def _instrument_puts(self, service: Service) -> None:
        """Count PUTs in flight per cluster at the client boundary (one writer per cluster, rule 8)."""
        clusters = service.runtime.clusters
        original = clusters.put

        async def put(cluster_id: Any, body: dict[str, Any]) -> Any:  # noqa: ANN401
            key = str(cluster_id).lower()
            self.put_in_flight[key] += 1
            if self.put_in_flight[key] > 1:
                self.put_overlaps.append(f"two PUTs in flight at once on {cluster_id}")
            try:
                return await original(cluster_id, body)
            finally:
                self.put_in_flight[key] -= 1

        clusters.put = put  # type: ignore[method-assign]

    async def _job(self, msg: Any, ctx: Context) -> None:  # noqa: ANN401 - func.QueueMessage
        """The queue function, killed mid-operation at random: its message reappears, as a dead worker's."""
        task = asyncio.ensure_future(self.functions["rotate_cluster"](msg, ctx))
        if self.rng.random() < self.cancel_rate:
            done, _ = await asyncio.wait({task}, timeout=self.rng.uniform(0.0, 1.2))
            if not done:
                task.cancel()
                if self.rng.random() < 0.3:  # noqa: PLR2004 - die during the release too: the claim stays
                    await asyncio.sleep(0)
                    task.cancel()
                    self.report.stale_claims += 1
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                self.report.cancelled += 1
                raise WorkerKilled("cancelled mid-operation")
        await task
        self.completed_invocations.add(ctx.invocation_id)

    async def _queue_count(self, name: str) -> int:
        async with QueueClient.from_connection_string(self.connection, name) as q:
            try:
                return (await q.get_queue_properties()).approximate_message_count or 0
            except ResourceNotFoundError:
                return 0

    async def _run_hosts(self, hosts: list[_ChaosHost], until: Callable[[], bool], queue: str) -> None:
        async def one(host: _ChaosHost) -> None:
            while True:
                await host.drain(idle_seconds=1.0, limit_seconds=600)
                if until() and await self._queue_count(queue) == 0:
                    return

        await asyncio.gather(*(one(h) for h in hosts))

    # -- the events ----------------------------------------------------------------------------------

    async def _deliver(self, event: dict[str, Any]) -> None:
        """One Event Grid delivery; a storage error is redelivered (as Event Grid would), others are bugs."""
        for _attempt in range(5):
            trigger = _trigger(event)
            try:
                await self.functions["on_key_event"](trigger, Context(function_name="on_key_event"))
            except ServiceError:
                await asyncio.sleep(0.2)
                continue
            except Exception as exc:  # noqa: BLE001 - recorded as a violation
                self.event_errors.append(f"on_key_event raised {type(exc).__name__}: {exc}")
                return
            self.report.deliveries += 1
            return
        self.event_errors.append(f"event {event['id']} not accepted after 5 deliveries")

    async def _feed(self, world: _World) -> None:
        """Rotate every key ``rotations`` times in waves; deliver each event 1-3 times, shuffled and late."""
        held: list[dict[str, Any]] = []
        gate = asyncio.Semaphore(8)

        async def deliver(event: dict[str, Any]) -> None:
            async with gate:
                await self._deliver(event)

        for wave in range(self.rotations):
            before = len(self.sim.events)
            for i, (vault, key) in enumerate(self.rng.sample(world.keys, len(world.keys))):
                # a few versions are created disabled (one at least, in the last wave): never a target
                last = wave == self.rotations - 1 and i == 0
                usable = not last and self.rng.random() >= 0.05  # noqa: PLR2004
                self.sim.create_key_version(vault, key, enabled=usable)
                self.report.unusable_versions += not usable
                # Ties only before the last two waves: the newest usable version must be unambiguous at the
                # end, or rule 2 rightly keeps clusters where they are.
                if wave < self.rotations - 2 and (i == 0 or self.rng.random() < 0.4):  # noqa: PLR2004
                    self.sim.create_key_version(vault, key, tie=True)
                    self.report.tied_versions += 1
            events = self.sim.events[before:]
            self.report.events += len(events)
            for event in events:
                for _ in range(self.rng.randint(1, 3)):
                    cloud = self.rng.random() < 0.3  # noqa: PLR2004
                    self.report.cloud_event_deliveries += cloud
                    held.append(self.sim.to_cloud_event(event) if cloud else event)
            self.rng.shuffle(held)
            cut = int(len(held) * self.rng.uniform(0.5, 0.8))
            now, held = held[:cut], held[cut:]
            self._interrupt(world)  # before the wave's jobs: the operator's rotate usually claims first
            await asyncio.gather(*(deliver(e) for e in now))
            await self._forge(world)
            await asyncio.sleep(self.rng.uniform(0.1, 0.6))
        self.rng.shuffle(held)
        await asyncio.gather(*(deliver(e) for e in held))
        await asyncio.gather(*self.interrupts)

    # -- the attacks ---------------------------------------------------------------------------------

    async def _forge(self, world: _World) -> None:
        """Put forged messages on the job queue, as someone with write access to it could."""
        service = self._service
        watched = [c for c in world.clusters if c.watched]
        unwatched = [c for c in world.clusters if not c.watched]
        victim = self.rng.choice(watched)
        sub = parse_cluster_id(victim.id).subscription
        other = next(s for s in world.subscriptions if s.lower() != sub.lower())
        arm = service.settings.arm_endpoint
        identity = (
            f"/subscriptions/{sub}/resourceGroups/rg-data/providers/Microsoft.ManagedIdentity"
            "/userAssignedIdentities/id-cmk"
        )
        foreign_op = (
            f"/subscriptions/{other}/providers/Microsoft.DocumentDB/locations/westeurope"
            f"/mongoClusterAzureAsyncOperation/{uuid.uuid4().hex}"
        )
        target = self.sim.key_url(victim.vault, victim.key, self.sim.latest_version(victim.vault, victim.key))
        stamp = "2026-11-29T00:00:00+00:00"
        messages: list[str] = [
            json.dumps(
                {"cluster_id": victim.id, "trigger": "check", "operation_url": arm + path,
                 "target_key_url": target, "enqueued_at": stamp}
            )
            for path in (identity, foreign_op)
        ]  # fmt: skip
        other_port = arm.replace("management.azure.com", "management.azure.com:8443")
        messages.append(
            json.dumps(
                {"cluster_id": victim.id, "trigger": "check", "target_key_url": target, "enqueued_at": stamp,
                 "operation_url": other_port + foreign_op}
            )
        )  # fmt: skip
        # Same subscription, plausible path, but not the operation recorded for the victim: never followed.
        unrecorded_op = foreign_op.replace(f"/subscriptions/{other}/", f"/subscriptions/{sub}/")
        unrecorded = json.dumps(
            {"cluster_id": victim.id, "trigger": "check", "operation_url": arm + unrecorded_op,
             "target_key_url": target, "enqueued_at": stamp}
        )  # fmt: skip
        self.forged_paths |= {identity.lower(), foreign_op.lower(), unrecorded_op.lower()}
        if unwatched:
            stranger = self.rng.choice(unwatched)
            messages.append(Job.new(stranger.id, trigger=Trigger.MANUAL).to_json())
        messages += ['{"cluster_id": ' + "[" * 20_000 + "]" * 20_000 + "}", "\x00 not a job"]
        async with QueueClient.from_connection_string(
            self.connection, service.queue.name, message_encode_policy=TextBase64EncodePolicy()
        ) as queue:
            for message in messages:
                await queue.send_message(message)
            await queue.send_message(unrecorded)
        self.report.forged_messages += len(messages)
        self.report.forged_unrecorded += 1

    def _interrupt(self, world: _World) -> None:
        """Start CLI-style `rotate`s of watched clusters; cancel the first one whose PUT ARM accepted."""
        clusters = self.rng.sample([c for c in world.clusters if c.watched], 3)

        async def until_one_interrupted() -> None:
            for cluster in clusters:
                if await self._interrupted_rotate(cluster):
                    return

        self.interrupts.append(asyncio.create_task(until_one_interrupted()))

    async def _interrupted_rotate(self, cluster: _Cluster) -> bool:
        """`rotate` the cluster, Ctrl-C once ARM accepted the PUT; False when it ended or stalled before."""
        service = self._service
        started = time.time()
        job = Job.new(cluster.id, trigger=Trigger.MANUAL)
        task = asyncio.ensure_future(service.worker.execute(job, invocation_id="cli", watched_only=False))
        deadline = time.monotonic() + 5
        while not task.done() and time.monotonic() < deadline:
            accepted = [
                r
                for r in self.sim.requests
                if r.method == "PUT" and r.path.lower() == cluster.id.lower() and r.received >= started
                and r.status in {200, 201, 202}
            ]  # fmt: skip
            if accepted:
                await asyncio.sleep(0.05)  # the answer reaches the client: it records and polls
                task.cancel()
                self.report.interrupted_rotations += 1
                break
            await asyncio.sleep(0.02)
        interrupted = task.cancelled() or not task.done()
        if not task.done():
            task.cancel()  # stalled (faults): an interruption all the same
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return interrupted

    # -- the run -------------------------------------------------------------------------------------

    async def run(self) -> ChaosReport:
        started = time.monotonic()
        world = _build_world(self.sim, self.rng, self.size, self.keys)
        service = _make_service(self.connection, self.suffix)
        self._service = service
        self._instrument_puts(service)
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: self.capture.unhandled.append(str(ctx.get("message"))))
        previous = dict(service_module._services)  # noqa: SLF001 - the functions use this Service
        service_module._services.clear()  # noqa: SLF001
        service_module._services[id(loop)] = service  # noqa: SLF001
        try:
            for cluster in world.clusters:
                if cluster.watched:
                    await service.registration.register(cluster.id, owner="chaos")
            self.sim.clear_requests()
            await self._chaos(world, service)
            await self._check(world, service)
        finally:
            self.sim.set_fault_rates({}, service=None)
            self.sim.set_operation_failure_rate(0.0)
            service_module._services.clear()  # noqa: SLF001
            service_module._services.update(previous)  # noqa: SLF001
            await service.close()
            loop.set_exception_handler(None)
        self.report.duration_s = time.monotonic() - started
        return self.report

    async def _chaos(self, world: _World, service: Service) -> None:
        seed = self.report.seed
        self.sim.set_fault_rates(ARM_FAULTS, service="arm", slow_seconds=SLOW_S, seed=seed)
        self.sim.set_fault_rates(KV_FAULTS, service="kv", slow_seconds=SLOW_S, seed=seed + 1)
        self.sim.set_operation_failure_rate(0.05)
        queue = service.queue.name
        async with QueueClient.from_connection_string(self.connection, queue) as client:
            await client.create_queue()  # the hosts listen before the first event creates it
        hosts = [
            _ChaosHost(self.connection, queue, self._job, visibility_timeout=VISIBILITY_S, concurrency=8)
            for _ in range(self.workers)
        ]
        self.report.workers = len(hosts)
        try:
            feeder = asyncio.create_task(self._feed(world))
            await self._run_hosts(hosts, feeder.done, queue)
            await feeder
            # The timer's safety net: passes until every watched cluster is up to date (faults stay on).
            # A pass skips the clusters it could not read (faults stay on): stop once every watched cluster
            # was seen up to date in passes that queued nothing.
            seen: set[str] = set()
            for _round in range(20):
                self.report.reconcile_rounds += 1
                report = await Reconciler(service).run()
                if report.queued:
                    seen.clear()
                    await self._run_hosts(hosts, lambda: True, queue)
                    continue
                seen |= {c.cluster_id for c in report.clusters if c.action == "up-to-date"}
                if len(seen) >= len(report.clusters):
                    break
        finally:
            for host in hosts:
                self.report.job_invocations += host.stats.invocations
                self.report.poisoned += host.stats.poisoned
                for error in host.stats.errors:
                    self.report.errors[error.split(":", 1)[0]] = (
                        self.report.errors.get(error.split(":")[0], 0) + 1
                    )
                await host.close()
            self.report.leases_lost = _ChaosHost.lost

    # -- the invariants ------------------------------------------------------------------------------

    async def _check(self, world: _World, service: Service) -> None:
        self.sim.set_fault_rates({}, service=None)
        violations = self.report.violations
        requests = self.sim.requests
        self.report.requests = len([r for r in requests if r.service in {"arm", "kv"}])
        faults = Counter(r.fault for r in requests if r.fault)
        self.report.faults = dict(faults)
        self.report.retries = self.capture.retries
        self.report.clusters = sum(c.watched for c in world.clusters)
        self.report.unwatched = len(world.clusters) - self.report.clusters
        self.report.subscriptions = len(world.subscriptions)
        self.report.keys = len(world.keys)
        violations += self._check_convergence(world)
        violations += await self._check_registry(world, service)
        violations += self._check_puts(world, requests)
        violations += self.put_overlaps
        violations += await self._check_jobs(world, service)
        violations += self.event_errors
        violations += self.capture.unhandled
        violations += [
            f"unhandled exception in an invocation: {kind} x{n}"
            for kind, n in self.report.errors.items()
            if kind not in EXPECTED_ERRORS
        ]
        violations += await self._check_secrets(world, service)
        violations += await self._check_attacks(service, requests)
        self.report.late_writes = self.late_writes

    def _newest_usable(self, vault: str, key: str) -> str | None:
        now = time.time()
        usable = [
            v
            for v in self.sim.key_versions(vault, key)
            if _usable(self.sim.key_url(vault, key, v["version"]), v, now)
        ]
        return usable[-1]["version"] if usable else None

    def _check_convergence(self, world: _World) -> list[str]:
        out = []
        for cluster in world.clusters:
            if not cluster.watched:
                continue
            doc = self.sim.cluster(cluster.id)
            url = doc["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"]
            newest = self._newest_usable(cluster.vault, cluster.key)
            expected = self.sim.key_url(cluster.vault, cluster.key, newest).lower()
            if url.lower() != expected:
                out.append(f"{cluster.id} ends on {url}, not the newest usable {expected}")
            if doc["properties"]["provisioningState"] != "Succeeded":
                out.append(f"{cluster.id} ends {doc['properties']['provisioningState']}")
        return out

    async def _check_registry(self, world: _World, service: Service) -> list[str]:
        out = []
        for cluster in world.clusters:
            row = await service.registry.watched.get(parse_cluster_id(cluster.id))
            if not cluster.watched:
                if row is not None:
                    out.append(f"unwatched {cluster.id} is in the registry")
                continue
            newest = self._newest_usable(cluster.vault, cluster.key)
            if row is None:
                out.append(f"watched {cluster.id} vanished from the registry")
            elif (row.current_version, row.state, row.operation_url) != (newest, "watching", None):
                out.append(
                    f"registry row of {cluster.id}: version {row.current_version} state {row.state} "
                    f"operation {row.operation_url}; expected {newest}, watching, none"
                )
        return out

    def _check_puts(self, world: _World, requests: list[RequestRecord]) -> list[str]:  # noqa: C901
        out: list[str] = []
        by_id = {c.id.lower(): c for c in world.clusters}
        versions = {(v, k): self.sim.key_versions(v, k) for v, k in world.keys}
        order = {vk: {x["version"]: i for i, x in enumerate(vs)} for vk, vs in versions.items()}
        ops: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for op in self.sim.operations:
            ops[op["cluster_id"]].append(op)
        puts: Counter[str] = Counter()
        accepted: Counter[str] = Counter()
        for record in requests:
            if record.service != "arm" or record.method != "PUT":
                continue
            cid = record.path.lower()
            cluster = by_id.get(cid)
            if cluster is None:
                out.append(f"PUT to a cluster the run does not know: {record.path}")
                continue
            puts[cid] += 1
            accepted[cid] += 200 <= record.status < 300  # noqa: PLR2004 - 200 update, 201 create (the spec)
            if not cluster.watched:
                out.append(f"PUT to unwatched cluster {cluster.id}")
            out += self._check_put(cluster, record, ops[cid], versions, order)
        for cluster in world.clusters:
            if cluster.watched:
                self.report.puts_per_cluster[cluster.id] = puts[cluster.id.lower()]
        for cid, cluster_ops in ops.items():
            if cid not in by_id:
                continue
            for earlier, later in itertools.pairwise(cluster_ops):
                if later["start"] < earlier["end"]:
                    out.append(f"two operations in flight on {cid} at {later['start']:.3f}")
            if len(cluster_ops) != accepted[cid]:
                out.append(f"{cid}: {len(cluster_ops)} operations but {accepted[cid]} accepted PUTs")
        return out

    def _check_put(
        self,
        cluster: _Cluster,
        record: RequestRecord,
        ops: list[dict[str, Any]],
        versions: dict[tuple[str, str], list[dict[str, Any]]],
        order: dict[tuple[str, str], dict[str, int]],
    ) -> list[str]:
        body = record.body if isinstance(record.body, dict) else {}
        cmk = body.get("properties", {}).get("encryption", {}).get("customerManagedKeyEncryption", {})
        url = cmk.get("keyEncryptionKeyUrl")
        if not isinstance(url, str):
            return [f"PUT to {cluster.id} without a key URL"]
        named = _split_url(url)
        own = _split_url(self.sim.key_url(cluster.vault, cluster.key))
        if named is None or own is None or named[:2] != own[:2]:
            return [f"PUT to {cluster.id} names another vault or key: {url}"]
        index = order[(cluster.vault, cluster.key)].get(named[2] or "")
        if index is None:
            return [f"PUT to {cluster.id} names a version that does not exist: {url}"]
        info = versions[(cluster.vault, cluster.key)][index]
        if not _usable(url, info, record.time):
            return [f"PUT to {cluster.id} names an unusable version: {url}"]
        # the cluster's version when the PUT reached ARM, and when ARM applied it (later, for a slow one)
        sent, applied = (
            self._version_at(ops, order[(cluster.vault, cluster.key)], moment)
            for moment in (record.received, record.time)
        )
        if index < applied and index >= sent and 200 <= record.status < 300:  # noqa: PLR2004 - accepted
            self.late_writes.append(
                f"{cluster.id}: a PUT of version #{index} sent when the cluster had #{sent} was applied "
                f"{record.time - record.received:.1f} s later, over #{applied}"
            )
        # Older (by order of creation), or created in the same second: never "newer" (rule 2).
        had = versions[(cluster.vault, cluster.key)][sent]
        if index < sent or (index != sent and info["created"] <= had["created"]):
            return [f"PUT to {cluster.id} names version #{index}, not newer than its #{sent}: {url}"]
        return []

    @staticmethod
    def _version_at(ops: list[dict[str, Any]], order: dict[str, int], moment: float) -> int:
        """Index of the cluster's key version at ``moment``: its last successful operation ended by then."""
        current = 0
        for op in ops:
            if op["end"] <= moment and op["start"] < moment and not op["failed"] and op["new_key_url"]:
                named = _split_url(op["new_key_url"])
                current = order.get((named[2] if named else None) or "", 0)
        return current

    async def _check_jobs(self, world: _World, service: Service) -> list[str]:
        out = []
        queue = service.queue.name
        if (left := await self._queue_count(queue)) != 0:
            out.append(f"{left} job(s) left in the queue")
        history: dict[str, list[Any]] = {}
        for cluster in world.clusters:
            history[cluster.id.lower()] = await service.registry.history.recent(
                parse_cluster_id(cluster.id), limit=500
            )
        rows = [h for entries in history.values() for h in entries]
        self.report.history_rows = len(rows)
        self.report.outcomes = dict(Counter(h.outcome for h in rows))
        with_rows = {h.invocation_id for h in rows}
        ended = with_rows | self.capture.deferred_invocations | self.capture.rejected_invocations
        missing = self.completed_invocations - ended
        if missing:
            out.append(f"{len(missing)} completed invocation(s) left no outcome and no deferral")
        async with QueueClient.from_connection_string(
            self.connection, service.queue.poison_name, message_decode_policy=TextBase64DecodePolicy()
        ) as poison:
            with contextlib.suppress(ResourceNotFoundError):
                async for message in poison.receive_messages(max_messages=32):
                    self._poison_lines.append(message.content)
                    try:
                        job = Job.from_json(message.content)
                    except ValueError:
                        out.append(f"a message that is not a job was poisoned: {message.content[:60]!r}")
                        continue
                    reasons = [
                        h
                        for h in history.get(job.cluster_id.lower(), [])
                        if h.outcome == "failed"
                        and "retries exhausted" in h.reason
                        and h.event_id == job.event_id
                    ]
                    if not reasons:
                        out.append(
                            f"poisoned job of {job.cluster_id} has no failed history row with its reason"
                        )
        return out

    async def _check_attacks(self, service: Service, requests: list[RequestRecord]) -> list[str]:
        """Forged messages: each rejected, none reached ARM. Interrupted rotations: their operation kept."""
        out: list[str] = []
        self.report.rejected_jobs = self.capture.rejected
        if self.capture.rejected < self.report.forged_messages:
            out.append(
                f"{self.report.forged_messages} forged messages but {self.capture.rejected} job rejections"
            )
        self.report.not_followed = self.capture.not_recorded
        if self.capture.not_recorded < self.report.forged_unrecorded:
            out.append(
                f"{self.report.forged_unrecorded} check jobs named an unrecorded operation but "
                f"{self.capture.not_recorded} were logged as not followed"
            )
        out += [
            f"{r.method} {r.path}: a path only a forged message named"
            for r in requests
            if r.service == "arm" and r.path.lower() in self.forged_paths
        ]
        self.report.handed_off = len(service.worker.handed_off)
        for result in service.worker.handed_off:
            history = await service.registry.history.recent(parse_cluster_id(result.cluster_id), limit=500)
            if not any(h.outcome == "pending" and h.operation_url == result.operation_url for h in history):
                out.append(
                    f"interrupted rotation of {result.cluster_id} left no pending row for its operation"
                )
        return out

    async def _check_secrets(self, world: _World, service: Service) -> list[str]:
        tokens = self.sim.tokens
        self.report.tokens_scanned = len(tokens)
        self.report.log_records = len(self.capture.lines) // 3
        needles = [*tokens, self.sim.env["IDENTITY_HEADER"], ACCOUNT_KEY]
        texts = list(self.capture.lines)
        for cluster in world.clusters:
            cid = parse_cluster_id(cluster.id)
            texts += [json.dumps(h.to_dict()) for h in await service.registry.history.recent(cid, limit=500)]
            row = await service.registry.watched.get(cid)
            if row is not None:
                texts.append(repr(row))
        texts += self._poison_lines
        blob = "\n".join(texts)
        found = [
            f"secret in logs or history: {needle[:6]}..." for needle in needles if needle and needle in blob
        ]
        if BEARER.search(blob):
            found.append("a 'Bearer <credential>' in logs or history")
        return found


async def chaos(
    size: int,
    seed: int,
    *,
    sim: Simulator,
    connection: str,
    functions: dict[str, Callable[..., Awaitable[None]]],
    keys: int | None = None,
    rotations: int = 3,
    workers: int = 3,
    cancel_rate: float = 0.05,
) -> ChaosReport:
    """Run the chaos scenario on a running simulator and storage account; return the report."""
    _ChaosHost.lost = 0
    run = _Run(
        sim=sim,
        connection=connection,
        functions=functions,
        size=size,
        seed=seed,
        keys=keys or max(2, size // 4),
        rotations=rotations,
        workers=workers,
        cancel_rate=cancel_rate,
    )
    root = logging.getLogger()
    level = root.level
    root.addHandler(run.capture)
    root.setLevel(logging.DEBUG)
    quiet = {name: logging.getLogger(name).level for name in ("azure", "aiohttp", "azsim")}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        return await run.run()
    finally:
        root.removeHandler(run.capture)
        root.setLevel(level)
        for name, old in quiet.items():
            logging.getLogger(name).setLevel(old)


def run_chaos(
    size: int,
    seed: int,
    *,
    sim: Simulator,
    connection: str,
    functions: dict[str, Callable[..., Awaitable[None]]],
    **options: Any,  # noqa: ANN401 - keys, rotations, workers, cancel_rate
) -> ChaosReport:
    """`chaos` in a new event loop (the simulator's settings must already be in os.environ)."""
    return asyncio.run(chaos(size, seed, sim=sim, connection=connection, functions=functions, **options))


def main(argv: list[str] | None = None) -> int:
    """Start a simulator and Azurite, run the chaos scenario, print the figures; 1 on any violation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=40, help="watched clusters (default 40)")
    parser.add_argument("--keys", type=int, default=None, help="keys (default clusters/4)")
    parser.add_argument("--rotations", type=int, default=3, help="new versions per key (default 3)")
    parser.add_argument("--workers", type=int, default=3, help="queue hosts at once, 8 invocations each")
    parser.add_argument("--cancel-rate", type=float, default=0.05, help="share of invocations killed")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: random, printed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    for name in (
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_TENANT_ID",
        "MSI_ENDPOINT",
        "AzureWebJobsStorage",
    ):
        os.environ.pop(name, None)
    import function_app  # noqa: PLC0415 - imported once the simulator's CA is trusted

    functions = {
        function_name: f.get_user_function()
        for f in function_app.app.get_functions()
        if (function_name := f.get_function_name()) is not None
    }
    print(f"chaos: seed {seed}, {args.clusters} clusters; starting Azurite and the simulator", flush=True)
    with Azurite() as azurite, Simulator(ca_dir=_CA_DIR, seed=seed) as sim:
        os.environ.update(sim.env)
        os.environ["AzureWebJobsStorage"] = azurite.connection_string
        sim.configure(operation_seconds=0.3, poll_interval=0.1)
        report = run_chaos(
            args.clusters,
            seed,
            sim=sim,
            connection=azurite.connection_string,
            functions=functions,
            keys=args.keys,
            rotations=args.rotations,
            workers=args.workers,
            cancel_rate=args.cancel_rate,
        )
    print(report.summary(), flush=True)
    keys = args.keys or max(2, args.clusters // 4)
    print(
        f"reproduce: python scripts/chaos.py --clusters {args.clusters} --keys {keys} "
        f"--rotations {args.rotations} --workers {args.workers} --seed {seed}",
        flush=True,
    )
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
