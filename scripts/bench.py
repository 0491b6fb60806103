"""Benchmark of the real path: Event Grid function -> Azurite queue -> queue function -> simulator (TLS).

Scenarios (sizes and the simulator's scale are parameters; `--help`):

- fan-out: N clusters on one key over S subscriptions; makespan from the Event Grid function call to the last
  verifying GET (from the simulator's request log), against the lower bound that the write bucket, the
  operation time and the request latency impose;
- naive baseline: the same rotation one cluster after another (GET, PUT, poll to the end, next);
- throttle: 429s as a share of writes, and requests sent inside a ``Retry-After`` window;
- requests per rotated cluster (ARM reads, writes, polls) and Key Vault reads per key;
- event handling: Event Grid function call to all jobs enqueued, for 100 and 1000 watched clusters;
- footprint: cold ``import function_app`` in a fresh process, and the queue worker's peak RSS.

The queue function runs in a child process (``bench.py --worker``), fed from Azurite like the Functions host
feeds it (a message is received, handed to ``rotate_cluster`` as a ``func.QueueMessage``, deleted on return),
keeping up to ``--concurrency`` invocations in flight. Prints a table, writes JSON and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SUBSCRIPTIONS = [f"{i:08d}-0000-4000-8000-{i:012d}" for i in range(1, 65)]
VAULT = "bench-kv"
QUEUE = "rotation-jobs"
IMPORT_PROBE = "import time; t = time.perf_counter(); import function_app; print(time.perf_counter() - t)"


def host_concurrency() -> int:
    """Invocations of the queue function one instance runs at once: host.json's batchSize + newBatchThreshold.

    (The Functions host keeps fetching batches while fewer than newBatchThreshold messages are in work.)
    """
    queues = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    return int(queues["batchSize"]) + int(queues["newBatchThreshold"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The bench's parameters (defaults: the `make bench` run, under 3 minutes on 2 cores)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--sizes", default="10,100,500", help="fan-out cluster counts")
    p.add_argument("--subscriptions", type=int, default=5, help="subscriptions the clusters are spread over")
    p.add_argument("--burst", type=int, default=20, help="write bucket burst per subscription (ARM: 200)")
    p.add_argument("--refill", type=float, default=10.0, help="write refill per second (ARM: 10)")
    p.add_argument("--read-burst", type=int, default=250, help="read bucket burst (ARM: 250)")
    p.add_argument("--read-refill", type=float, default=25.0, help="read refill per second (ARM: 25)")
    p.add_argument("--operation", type=float, default=10.0, help="seconds one cluster update runs")
    p.add_argument("--poll-interval", type=float, default=5.0, help="the operation's Retry-After (s)")
    p.add_argument(
        "--stress-sizes",
        default="100",
        help="fan-outs run again with --stress-operation: the rotator's own CPU time made visible",
    )
    p.add_argument("--stress-operation", type=float, default=1.0, help="operation seconds of the stress runs")
    p.add_argument("--stress-poll-interval", type=float, default=0.5, help="Retry-After of the stress runs")
    p.add_argument("--latency", type=float, default=0.02, help="simulator latency per ARM/KV request (s)")
    p.add_argument("--workers", type=int, default=1, help="queue worker processes (host instances)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=host_concurrency(),
        help="queue invocations in flight per worker (default: host.json's batchSize + newBatchThreshold)",
    )
    p.add_argument("--naive-size", type=int, default=3, help="clusters the sequential baseline rotates")
    p.add_argument("--event-sizes", default="100,1000", help="watched clusters for the event-handling runs")
    p.add_argument("--event-repeats", type=int, default=5, help="timed Event Grid calls per size")
    p.add_argument("--import-runs", type=int, default=5, help="fresh processes timing the cold import")
    p.add_argument("--timeout", type=float, default=120.0, help="give up on one fan-out after this long")
    p.add_argument("--json", default="docs/benchmarks.json", help="where the JSON goes")
    p.add_argument("--markdown", default="docs/benchmarks.md", help="where the report goes ('' for none)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- the worker process ------------------------------------------------------------------------------


def worker_main(args: argparse.Namespace) -> None:  # noqa: C901 - one process's whole life
    """Run rotate_cluster from the queue until stdin says stop; print stats and peak RSS as JSON."""
    import asyncio  # noqa: PLC0415
    import logging  # noqa: PLC0415
    import resource  # noqa: PLC0415

    import function_app  # noqa: PLC0415
    from azsim.host import QueueHost  # noqa: PLC0415
    from rotation.service import process as service_module  # noqa: PLC0415

    functions = {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}
    logging.basicConfig(level=logging.WARNING, format="worker: %(message)s %(details)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_details)

    class FeedingHost(QueueHost):
        """QueueHost that keeps up to ``concurrency`` invocations in flight instead of batch by batch."""

        slowest_receive_s = 0.0  # the longest receive call (Azurite's answer, or the SDK's retries)

        async def feed(self, stop: asyncio.Event, concurrency: int) -> None:
            running: set[asyncio.Task[None]] = set()
            while not stop.is_set():
                room = concurrency - len(running)
                if room <= 0:
                    await asyncio.wait(running, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                    continue
                started = time.monotonic()
                batch = [
                    m
                    async for m in self._queue.receive_messages(
                        messages_per_page=min(32, room), max_messages=min(32, room), visibility_timeout=600
                    )
                ]
                self.slowest_receive_s = max(self.slowest_receive_s, time.monotonic() - started)
                if not batch:
                    await asyncio.sleep(0.1)  # QueueHost's polling interval while the queue is empty
                    continue
                for message in batch:
                    task = asyncio.create_task(self._one(message))
                    running.add(task)
                    task.add_done_callback(running.discard)
            if running:
                _, stuck = await asyncio.wait(running, timeout=30)
                self.stats.errors.extend(f"stuck: {t.get_stack(limit=3)}" for t in list(stuck)[:3])
                for task in stuck:
                    task.print_stack(limit=12, file=sys.stderr)
                    task.cancel()

    async def run() -> dict[str, Any]:
        host = FeedingHost(
            os.environ["AzureWebJobsStorage"],
            QUEUE,
            functions["rotate_cluster"],
            concurrency=args.concurrency,
        )
        stop = asyncio.Event()
        print("READY", flush=True)

        async def wait_for_stop() -> None:
            await asyncio.to_thread(sys.stdin.readline)
            stop.set()

        watcher = asyncio.create_task(wait_for_stop())
        try:
            await host.feed(stop, args.concurrency)
        finally:
            await watcher
            await host.close()
        pacer: dict[str, Any] = {}
        for svc in service_module._services.values():  # noqa: SLF001 - the process's one Service
            if svc.runtime.clusters.pacer is None:  # the default runtime always has one
                continue
            stats = svc.runtime.clusters.pacer.stats
            pacer = {
                "admitted": stats.admitted,
                "waited": stats.waited,
                "wait_seconds": round(stats.wait_seconds, 3),
                "throttled": stats.throttled,
            }
        await service_module.close_services()
        return {
            "invocations": host.stats.invocations,
            "succeeded": host.stats.succeeded,
            "failed": host.stats.failed,
            "errors": host.stats.errors[:5],
            "slowest_receive_s": round(host.slowest_receive_s, 3),
            "pacer": pacer,
        }

    result = asyncio.run(run())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    result["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    print("RESULT " + json.dumps(result), flush=True)


def _details(record: Any) -> bool:  # noqa: ANN401 - a logging.LogRecord
    """Put the fields that say why (reason, status, error code) on the worker's log lines."""
    names = ("cluster_id", "policy", "status", "error_code", "reason", "wait_s", "outcome")
    found = [(n, getattr(record, n, None)) for n in names]
    record.details = " ".join(f"{n}={v}" for n, v in found if v is not None)
    return True


class Worker:
    """A queue worker child process."""

    def __init__(self, concurrency: int) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - this script, fixed argv
            [sys.executable, __file__, "--worker", "--concurrency", str(concurrency)],
            cwd=ROOT,
            # as deployed: the app setting lets every invocation the host hands over rotate at once
            env={**os.environ, "ROTATION_MAX_CONCURRENCY": str(concurrency)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None  # noqa: S101
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            self.proc.kill()
            raise RuntimeError(f"worker did not start: {line!r}")

    def stop(self) -> dict[str, Any]:
        """Ask the worker to finish its invocations and exit; return what it reported."""
        try:
            out, _ = self.proc.communicate("stop\n", timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        for line in out.splitlines():
            if line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line[len("RESULT ") :])
                return result
        raise RuntimeError(f"worker exited {self.proc.returncode} without a result")


def merge_workers(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of every worker process: counts summed, peak RSS the largest, CPU per process."""
    pacer: dict[str, Any] = {}
    for r in results:
        for name, value in r.get("pacer", {}).items():
            pacer[name] = round(pacer.get(name, 0) + value, 3)
    return {
        "processes": len(results),
        "invocations": sum(r["invocations"] for r in results),
        "succeeded": sum(r["succeeded"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "errors": [e for r in results for e in r["errors"]][:5],
        "slowest_receive_s": max(r["slowest_receive_s"] for r in results),
        "pacer": pacer,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "cpu_s": [r["cpu_s"] for r in results],
    }


# ---- measuring ---------------------------------------------------------------------------------------


def cold_import(runs: int) -> list[float]:
    """Seconds `import function_app` takes in fresh processes."""
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "SSL_CERT_FILE"}}
    times = []
    for _ in range(runs):
        out = subprocess.run(  # noqa: S603 - fixed argv
            [sys.executable, "-c", IMPORT_PROBE],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return times


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def is_poll(path: str) -> bool:
    """Whether an ARM path is a long-running operation's status or result."""
    from rotation.url_guard import OPERATION_TYPES  # noqa: PLC0415 - the rotator is imported where it is used

    low = path.lower()  # the spec's operation types, the ones the rotator follows
    return any(f"/{kind}/" in low for kind in OPERATION_TYPES)


def subscription_of(path: str) -> str:
    """The subscription of an ARM path (the pacer's reading of it), or "" when it names none."""
    from rotation.azure import pacing  # noqa: PLC0415 - the rotator is imported where it is used, as above

    return pacing.subscription_of(path) or ""


def analyse(
    records: list[Any],
    t0: float,
    cluster_ids: list[str],
    args: argparse.Namespace,
    timing: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Makespan, lower bound, throttling and request counts of one fan-out, from the request log.

    ``timing``: (operation seconds, operation Retry-After) of this fan-out; the arguments' by default.
    """
    operation, poll_interval = timing or (args.operation, args.poll_interval)
    paths = {c.lower() for c in cluster_ids}
    arm = [r for r in records if r.service == "arm" and r.time >= t0]
    kv = [r for r in records if r.service == "kv" and r.time >= t0]
    identity = [r for r in records if r.service == "identity" and r.time >= t0]
    progress = Progress(cluster_ids, operation)
    progress.verified(arm)
    put_ok, verify = progress.put_ok, progress.verified_at
    gets: dict[str, int] = dict.fromkeys(paths, 0)
    puts: dict[str, int] = dict.fromkeys(paths, 0)
    for r in arm:
        path = r.path.lower()
        if path in paths and r.method == "PUT":
            puts[path] += 1
        elif path in paths and r.method == "GET":
            gets[path] += 1
    polls = [r for r in arm if r.method == "GET" and is_poll(r.path)]
    writes = [r for r in arm if r.method in {"PUT", "PATCH"}]
    reads = [r for r in arm if r.method == "GET"]
    throttled_writes = [r for r in writes if r.status == 429]  # noqa: PLR2004
    throttled_reads = [r for r in reads if r.status == 429]  # noqa: PLR2004
    inside = 0
    for t in throttled_writes + throttled_reads:
        write = t.method != "GET"
        refill = args.refill if write else args.read_refill
        window = max(1.0, float(int(-(-1.0 // refill))))  # the simulator's Retry-After: ceil, at least 1 s
        sub = subscription_of(t.path)
        for r in arm:
            sent = r.time - args.latency
            if (
                (r.method != "GET") == write
                and subscription_of(r.path) == sub
                and t.time < sent < t.time + window
            ):
                inside += 1
    n = len(cluster_ids)
    per_sub: dict[str, int] = {}
    for c in cluster_ids:
        per_sub[subscription_of(c)] = per_sub.get(subscription_of(c), 0) + 1
    polls_min = max(1, -(-operation // poll_interval))
    t_bucket = max(max(0, w - args.burst) / args.refill for w in per_sub.values())
    reads_min = 2 + polls_min
    t_reads = max(max(0.0, w * reads_min - args.read_burst) / args.read_refill for w in per_sub.values())
    t_op = polls_min * poll_interval
    lat = args.latency
    lower = max(max(t_bucket, 2 * lat) + t_op + 2 * lat, t_reads)
    done = len(verify)
    makespan = (max(verify.values()) - t0) if done == n else None
    kv_challenges = sum(1 for r in kv if r.status == 401)  # noqa: PLR2004
    first_arm = min((r.time for r in arm), default=t0)
    return {
        "timeline_s": {
            "first_arm_request": round(first_arm - t0, 3),
            "first_put": round(min(put_ok.values(), default=t0) - t0, 3),
            "last_put": round(max(put_ok.values(), default=t0) - t0, 3),
        },
        "clusters": n,
        "subscriptions": len(per_sub),
        "verified": done,
        "makespan_s": round(makespan, 3) if makespan is not None else None,
        "lower_bound_s": round(lower, 3),
        "lower_bound_parts": {
            "write_bucket_s": round(t_bucket, 3),
            "read_bucket_s": round(t_reads, 3),
            "operation_s": t_op,
            "latency_chain_s": round(4 * lat, 3),
        },
        "ratio": round(makespan / lower, 3) if makespan is not None else None,
        "writes": len(writes),
        "writes_429": len(throttled_writes),
        "write_429_share": round(len(throttled_writes) / len(writes), 4) if writes else 0.0,
        "reads_429": len(throttled_reads),
        "sent_inside_retry_after": inside,
        "per_cluster": {
            "gets": round(sum(gets.values()) / n, 3),
            "puts": round(sum(puts.values()) / n, 3),
            "polls": round(len(polls) / n, 3),
            "min_gets": 2,
            "min_puts": 1,
            "min_polls": int(polls_min),
        },
        "keyvault_requests": len(kv),
        "keyvault_challenges": kv_challenges,
        "keyvault_reads_per_key": len(kv) - kv_challenges,
        "identity_requests": len(identity),
    }


class Progress:
    """Each cluster's last accepted PUT and verifying GET, read incrementally off the request log.

    The fan-out polls it every half second while the simulator runs in this process (re-reading the whole log
    would take CPU from it); `analyse` reads the whole log through it once.
    """

    def __init__(self, cluster_ids: list[str], operation: float) -> None:
        self._paths = {c.lower() for c in cluster_ids}
        self._operation = operation
        self._seen = 0
        self.put_ok: dict[str, float] = {}  # cluster path -> time of its last 2xx PUT
        self.verified_at: dict[str, float] = {}  # -> its last 200 GET at least one operation after that

    def verified(self, records: list[Any]) -> int:
        """Clusters verified so far, reading the records not seen yet (the list only grows)."""
        for r in records[self._seen :]:
            path = r.path.lower()
            if path not in self._paths or r.service != "arm":
                continue
            if r.method == "PUT" and 200 <= r.status < 300:  # noqa: PLR2004
                self.put_ok[path] = r.time
            elif (
                r.method == "GET"
                and r.status == 200  # noqa: PLR2004
                and r.time >= self.put_ok.get(path, float("inf")) + self._operation
            ):
                self.verified_at[path] = r.time
        self._seen = len(records)
        return len(self.verified_at)


# ---- the scenarios -----------------------------------------------------------------------------------


class Bench:
    """Azurite, the simulator, and the app's functions in this process."""

    def __init__(self, args: argparse.Namespace, sim: Any, azurite: Any) -> None:  # noqa: ANN401
        self.args = args
        self.sim = sim
        self.azurite = azurite
        import function_app  # noqa: PLC0415 - after the settings are in the environment

        self.functions = {
            f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()
        }
        self.identities: dict[str, str] = {}

    def configure(self, timing: tuple[float, float] | None = None) -> None:
        """The scaled ARM limits and timings (refills every bucket); ``timing``: (operation, Retry-After)."""
        a = self.args
        operation, poll_interval = timing or (a.operation, a.poll_interval)
        self.sim.configure(
            operation_seconds=operation,
            poll_interval=poll_interval,
            latency=a.latency,
            write_burst=a.burst,
            write_refill_per_s=a.refill,
            read_burst=a.read_burst,
            read_refill_per_s=a.read_refill,
        )

    def seed(self, key: str, n: int, *, in_simulator: bool = True) -> tuple[str, list[str]]:
        """A key with one version and ``n`` clusters on it, round-robin over the subscriptions."""
        version = self.sim.create_key_version(VAULT, key, emit_event=False)
        url = self.sim.key_url(VAULT, key, version)
        ids = []
        subs = SUBSCRIPTIONS[: self.args.subscriptions]
        for i in range(n):
            sub = subs[i % len(subs)]
            rg = "rg-bench"
            name = f"{key}-{i:05d}"
            if not in_simulator:
                ids.append(
                    f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DocumentDB/mongoClusters/{name}"
                )
                continue
            if sub not in self.identities:
                self.identities[sub] = self.sim.add_identity(
                    subscription=sub, resource_group=rg, name="id-cmk"
                )
            ids.append(
                self.sim.add_cluster(
                    subscription=sub, resource_group=rg, name=name, key_url=url, identity=self.identities[sub]
                )
            )
        return version, ids

    async def register(self, key: str, version: str, ids: list[str]) -> None:
        """Registry rows for the clusters (what `register` stores, without its GET)."""
        import asyncio  # noqa: PLC0415

        from rotation.ids import parse_cluster_id  # noqa: PLC0415

        service = await self.service()
        host = f"{VAULT}.vault.azure.net"
        gate = asyncio.Semaphore(32)

        async def one(cluster_id: str) -> None:
            async with gate:
                await service.registry.watched.upsert(
                    cluster_id=parse_cluster_id(cluster_id),
                    vault_host=host,
                    key_name=key,
                    current_version=version,
                    identity=self.identities.get(subscription_of(cluster_id)),
                    owner="bench",
                )

        await asyncio.gather(*(one(c) for c in ids))

    async def service(self) -> Any:  # noqa: ANN401
        """The Service the functions use in this process."""
        from rotation.service.process import service_for_loop  # noqa: PLC0415
        from rotation.settings import Settings  # noqa: PLC0415

        return await service_for_loop(lambda: Settings.from_env(os.environ))

    async def fire(self, key: str) -> tuple[float, float, str]:
        """New key version -> its Key Vault event -> on_key_event; return (t0 wall, seconds, version)."""
        from azure.functions import meta  # noqa: PLC0415
        from azure.functions.eventgrid import EventGridEventInConverter  # noqa: PLC0415

        from azsim.host import Context  # noqa: PLC0415

        version = self.sim.create_key_version(VAULT, key, emit_event=True)
        event = self.sim.events[-1]
        trigger = EventGridEventInConverter.decode(
            meta.Datum(type="json", value=json.dumps(event)), trigger_metadata={}
        )
        t0 = time.time()
        started = time.perf_counter()
        await self.functions["on_key_event"](trigger, Context(function_name="on_key_event"))
        return t0, time.perf_counter() - started, version

    async def clear_queue(self) -> None:
        """Drop every queued job (between event-handling runs)."""
        from azure.core.exceptions import ResourceExistsError  # noqa: PLC0415
        from azure.storage.queue.aio import QueueClient  # noqa: PLC0415

        async with QueueClient.from_connection_string(self.azurite.connection_string, QUEUE) as queue:
            try:
                await queue.create_queue()
            except ResourceExistsError:
                await queue.clear_messages()

    async def events(self, n: int) -> dict[str, Any]:
        """Event Grid call to all jobs enqueued, ``n`` watched clusters, repeated."""
        key = f"evt{n}"
        version, ids = self.seed(key, n, in_simulator=False)
        await self.register(key, version, ids)
        await self.clear_queue()
        _, first, _ = await self.fire(key)
        await self.clear_queue()
        samples = []
        for _ in range(self.args.event_repeats):
            _, seconds, _ = await self.fire(key)
            samples.append(seconds)
            await self.clear_queue()
        return {
            "clusters": n,
            "first_call_s": round(first, 4),
            "calls": len(samples),
            "p50_s": round(percentile(samples, 50), 4),
            "p99_s": round(percentile(samples, 99), 4),
            "max_s": round(max(samples), 4),
        }

    async def fanout(
        self, n: int, label: str = "", timing: tuple[float, float] | None = None
    ) -> dict[str, Any]:
        """One event for ``n`` clusters, rotated by the worker process; measured from the request log.

        ``timing``: (operation seconds, Retry-After) of this fan-out, the arguments' by default.
        """
        import asyncio  # noqa: PLC0415

        timing = timing or (self.args.operation, self.args.poll_interval)
        key = f"fan{n}{label}"
        version, ids = self.seed(key, n)
        await self.register(key, version, ids)
        await asyncio.sleep(1.0)  # let the worker's mirror of the ARM budget refill, as after any idle second
        self.configure(timing)  # full buckets at the start
        self.sim.clear_requests()
        cpu = _cpu()
        t0, enqueue_s, _ = await self.fire(key)
        deadline = time.monotonic() + self.args.timeout
        progress = Progress(ids, timing[0])
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            if progress.verified(self.sim.requests) == n:
                break
        result = analyse(self.sim.requests, t0, ids, self.args, timing)
        result["operation_s"], result["poll_interval_s"] = timing
        result["event_to_enqueued_s"] = round(enqueue_s, 4)
        result["simulator_process_cpu_s"] = round(_cpu() - cpu, 2)
        return result

    async def naive(self, n: int) -> dict[str, Any]:
        """The sample functions' way: one cluster after another, PUT, wait for the operation, next."""
        import asyncio  # noqa: PLC0415

        from azure.identity.aio import DefaultAzureCredential  # noqa: PLC0415

        from rotation.azure.arm import ClustersClient  # noqa: PLC0415
        from rotation.ids import parse_cluster_id, parse_key_url  # noqa: PLC0415
        from rotation.write_body import build_body  # noqa: PLC0415

        key = "naive"
        _, ids = self.seed(key, n)
        target = self.sim.create_key_version(VAULT, key, emit_event=False)
        url = parse_key_url(self.sim.key_url(VAULT, key, target))
        self.configure()
        async with (
            DefaultAzureCredential() as credential,
            ClustersClient(
                "https://management.azure.com", credential, api_version="2025-07-01-preview"
            ) as arm,
        ):
            await arm.get(parse_cluster_id(ids[0]))  # token and connection, outside the timing
            started = time.perf_counter()
            for cluster_id in ids:
                rid = parse_cluster_id(cluster_id)
                accepted = await arm.put(rid, build_body(await arm.get(rid), url))
                while not accepted.done and accepted.url is not None:
                    await asyncio.sleep(accepted.retry_after)
                    status = await arm.operation_status(accepted.url, cluster_id=rid, kind=accepted.kind)
                    if status.done:
                        break
            seconds = time.perf_counter() - started
        return {"clusters": n, "seconds": round(seconds, 3), "per_cluster_s": round(seconds / n, 3)}


def sizes(text: str) -> list[int]:
    """Cluster counts from a comma-separated argument ("" for none)."""
    return [int(part) for part in text.split(",") if part.strip()]


def _cpu() -> float:
    import resource  # noqa: PLC0415

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_all(args: argparse.Namespace, sim: Any, azurite: Any) -> dict[str, Any]:  # noqa: ANN401
    """Every scenario, in an order that keeps them from disturbing each other."""
    from rotation.service.process import close_services  # noqa: PLC0415

    bench = Bench(args, sim, azurite)
    bench.configure()
    sim.add_vault(VAULT, subscription=SUBSCRIPTIONS[0], resource_group="rg-keys")
    out: dict[str, Any] = {}
    try:
        out["fanout"] = []
        await bench.clear_queue()
        workers = [Worker(args.concurrency) for _ in range(args.workers)]
        try:
            # The first event a fresh worker sees pays for its token and TLS connections: shown apart.
            out["warmup"] = await bench.fanout(args.subscriptions, label="w")
            for n in sizes(args.sizes):
                print(f"bench: fan-out of {n} clusters ...", file=sys.stderr, flush=True)
                out["fanout"].append(await bench.fanout(n))
            stress = (args.stress_operation, args.stress_poll_interval)
            for n in sizes(args.stress_sizes):
                print(f"bench: stress fan-out of {n} clusters ...", file=sys.stderr, flush=True)
                out["fanout"].append({**await bench.fanout(n, label="s", timing=stress), "stress": True})
        finally:
            out["worker"] = merge_workers([w.stop() for w in workers])
        # After the fan-outs: thousands of queued-then-cleared jobs would otherwise sit in the worker's queue.
        out["events"] = [await bench.events(int(n)) for n in args.event_sizes.split(",") if n.strip()]
        out["naive"] = await bench.naive(args.naive_size) if args.naive_size > 0 else None
    finally:
        await close_services()
    return out


# ---- report ------------------------------------------------------------------------------------------


def rows(result: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """(figure, measured, target, verdict) rows of the table."""
    out: list[tuple[str, str, str, str]] = []

    def add(figure: str, measured: str, target: str = "", *, met: bool | None = None) -> None:
        out.append((figure, measured, target, "" if met is None else ("met" if met else "NOT MET")))

    naive = result.get("naive")
    for f in result["fanout"]:
        n = f["clusters"]
        tag = f"fan-out N={n} ({f['subscriptions']} subs)"
        if f.get("stress"):
            tag = f"stress fan-out N={n}, operation {f['operation_s']:g} s"
        if f["makespan_s"] is None:
            add(f"{tag}: makespan", f"incomplete: {f['verified']}/{n} verified", "all verified", met=False)
            continue
        parts = f["lower_bound_parts"]
        add(f"{tag}: makespan (event -> last verifying GET)", f"{f['makespan_s']:.2f} s")
        add(
            f"{tag}: lower bound (bucket {parts['write_bucket_s']:.2f} + op {parts['operation_s']:.2f} "
            f"+ latency {parts['latency_chain_s']:.2f}; reads {parts['read_bucket_s']:.2f})",
            f"{f['lower_bound_s']:.2f} s",
        )
        add(f"{tag}: ratio makespan / bound", f"{f['ratio']:.2f}", "<= 1.25", met=f["ratio"] <= 1.25)  # noqa: PLR2004
        if naive and not f.get("stress"):
            naive_s = naive["per_cluster_s"] * n
            how = "measured" if n == naive["clusters"] else f"est. {naive['per_cluster_s']:.2f} s x {n}"
            add(
                f"{tag}: naive sequential ({how})",
                f"{naive_s:.1f} s; speed-up {naive_s / f['makespan_s']:.1f}x",
            )
        add(
            f"{tag}: 429 share of writes",
            f"{f['write_429_share'] * 100:.1f}% ({f['writes_429']}/{f['writes']}; "
            f"read 429s {f['reads_429']})",
            "<= 2%",
            met=f["write_429_share"] <= 0.02,  # noqa: PLR2004
        )
        add(
            f"{tag}: requests sent inside a Retry-After window",
            str(f["sent_inside_retry_after"]),
            "0",
            met=f["sent_inside_retry_after"] == 0,
        )
        pc = f["per_cluster"]
        add(
            f"{tag}: ARM requests per cluster (GET / PUT / polls)",
            f"{pc['gets']:.2f} / {pc['puts']:.2f} / {pc['polls']:.2f}",
            f"{pc['min_gets']} / {pc['min_puts']} / {pc['min_polls']}",
            met=pc["gets"] <= pc["min_gets"] + 0.01
            and pc["puts"] <= pc["min_puts"] + 0.01
            and pc["polls"] <= pc["min_polls"] + 0.5,
        )
        add(
            f"{tag}: Key Vault reads for the 1 key (+ 401 challenges)",
            f"{f['keyvault_reads_per_key']} (+{f['keyvault_challenges']})",
            "per key, not per cluster",
            met=f["keyvault_reads_per_key"] <= 4,  # noqa: PLR2004
        )
        add(f"{tag}: event function -> jobs enqueued", f"{f['event_to_enqueued_s']:.3f} s")
    warm = result.get("warmup")
    if warm and warm.get("makespan_s") is not None:
        add(
            f"first event on a fresh worker, N={warm['clusters']}: makespan / bound (token, TLS setup)",
            f"{warm['makespan_s']:.2f} s / {warm['lower_bound_s']:.2f} s",
        )
    w = result["worker"]
    add(
        "worker: invocations ok / failed; pacer waits (all fan-outs); slowest queue receive",
        f"{w['succeeded']} / {w['failed']}; "
        f"{w['pacer'].get('waited', 0)} waited {w['pacer'].get('wait_seconds', 0)} s; "
        f"{w['slowest_receive_s']:.2f} s",
    )
    targets = {100: 0.3, 1000: 2.0}
    for e in result["events"]:
        target = targets.get(e["clusters"])
        add(
            f"event handling, {e['clusters']} watched: p50 / p99 / max of {e['calls']} calls (first call)",
            f"{e['p50_s']:.3f} / {e['p99_s']:.3f} / {e['max_s']:.3f} s ({e['first_call_s']:.3f} s)",
            f"p99 < {target} s" if target else "",
            met=e["p99_s"] < target if target else None,
        )
    fp = result["footprint"]
    add(
        f"cold `import function_app` (median / max of {len(fp['import_s'])} fresh processes)",
        f"{statistics.median(fp['import_s']):.3f} / {max(fp['import_s']):.3f} s",
        "< 0.8 s",
        met=statistics.median(fp["import_s"]) < 0.8,  # noqa: PLR2004
    )
    if fp.get("worker_peak_rss_mb") is not None:
        add(
            f"queue worker peak RSS (fan-out N={fp['worker_rss_at']})",
            f"{fp['worker_peak_rss_mb']:.0f} MB",
            "< 200 MB",
            met=fp["worker_peak_rss_mb"] < 200,  # noqa: PLR2004
        )
    del args
    return out


def table(lines: list[tuple[str, str, str, str]]) -> str:
    """A Markdown table (also readable as plain text)."""
    head = ("figure", "measured", "target", "")
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(4)]
    fmt = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt.format(*head), sep, *(fmt.format(*r) for r in lines)])


def environment() -> dict[str, Any]:
    """Where the figures were measured."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def scale_text(args: argparse.Namespace) -> str:
    """The simulator's scale, in one paragraph."""
    return (
        f"write bucket {args.burst} burst / {args.refill:g} per s per subscription (ARM: 200 / 10), "
        f"read bucket {args.read_burst} / {args.read_refill:g} per s (ARM: 250 / 25), "
        f"operation {args.operation:g} s, operation Retry-After {args.poll_interval:g} s, "
        f"latency {args.latency * 1000:g} ms per ARM/Key Vault request, {args.subscriptions} subscriptions, "
        f"{args.workers} queue worker process(es), {args.concurrency} invocations in flight in each; "
        f"stress runs (N={args.stress_sizes or 'none'}): operation {args.stress_operation:g} s, "
        f"Retry-After {args.stress_poll_interval:g} s"
    )


def write_markdown(path: Path, command: str, result: dict[str, Any], text: str) -> None:
    """docs/benchmarks.md: command, environment, scale, table."""
    env = result["environment"]
    body = f"""# Benchmarks

Produced by `make bench` (`scripts/bench.py`), which drives the real path: the Event Grid function
(`on_key_event`) enqueues jobs in Azurite, a separate worker process runs the queue function
(`rotate_cluster`) on them as the Functions host would, and every ARM, Key Vault and identity request goes
over TLS through the proxy to the local Azure simulator. Makespans and request counts come from the
simulator's request log, not from the rotator's own records. One run; the machine is noisy.

Command:

```
{command}
```

Environment: {env["cpus"]} CPUs, Python {env["python"]}, {env["platform"]}.

Scale: {scale_text_from(result)}.

Lower bound of a fan-out: per subscription `max(0, writes - burst) / refill` (the last PUT cannot be granted
earlier), then the operation as the client can see it end (`ceil(operation / Retry-After) * Retry-After`),
plus the simulator's latency on the requests that must follow each other (GET, PUT, last poll, verifying
GET); or, when larger, the read bucket's `max(0, reads - burst) / refill` for the minimum reads. TLS, proxy,
queue and storage time are not in the bound: they are part of what the ratio measures.

Why a 10 s operation: a cluster's key update is an ARM long-running operation that takes minutes
(docs/design.md, Azure behaviour 1); the bench shortens it, and the write bucket's burst, to finish in about
two minutes. The rotator's own work is not shortened: about 20 ms of CPU per job in the worker process (its
storage and ARM requests through the Azure SDK, TLS included), on the same 2 cores as the simulator and
Azurite. The stress rows run a fan-out again with a 1 s operation, where that CPU time is no longer small
beside the operation: they show what it costs, not what ARM allows.

{text}
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)


def scale_text_from(result: dict[str, Any]) -> str:
    """The scale paragraph from a result's recorded arguments."""
    return str(result["scale"])


# ---- main --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the bench; return the result written to JSON."""
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return {}
    started = time.monotonic()
    from azsim.tls import ensure_ca  # noqa: PLC0415

    ca_dir = Path(tempfile.mkdtemp(prefix="cmk-rotator-bench-"))
    os.environ["SSL_CERT_FILE"] = str(ensure_ca(ca_dir).cert_path)
    os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"]
    import_s = cold_import(args.import_runs)  # before anything else loads the machine

    import asyncio  # noqa: PLC0415
    import logging  # noqa: PLC0415

    from azsim.azurite import Azurite  # noqa: PLC0415 - imports aiohttp: after SSL_CERT_FILE
    from azsim.simulator import Simulator  # noqa: PLC0415

    logging.basicConfig(level=logging.ERROR)
    for name in ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "MSI_ENDPOINT", "HTTP_PROXY"):
        os.environ.pop(name, None)
    with Azurite() as azurite, Simulator(ca_dir=ca_dir, seed=7) as sim:
        os.environ.update(sim.env)
        os.environ["AzureWebJobsStorage"] = azurite.connection_string
        os.environ["ROTATION_ARM_WRITE_REFILL_PER_S"] = str(args.refill)
        os.environ["ROTATION_ARM_READ_REFILL_PER_S"] = str(args.read_refill)
        result = asyncio.run(run_all(args, sim, azurite))
    largest = max(result["fanout"], key=lambda f: f["clusters"], default=None)
    result["footprint"] = {
        "import_s": [round(t, 4) for t in import_s],
        "worker_peak_rss_mb": result["worker"]["peak_rss_mb"],
        "worker_rss_at": largest["clusters"] if largest else None,
    }
    result["environment"] = environment()
    result["scale"] = scale_text(args)
    result["args"] = {k: v for k, v in vars(args).items() if k != "worker"}
    command = (
        "make bench"
        if argv is None and not sys.argv[1:]
        else "python scripts/bench.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    result["command"] = command
    result["seconds"] = round(time.monotonic() - started, 1)
    text = table(rows(result, args))
    print(f"\nscale: {result['scale']}\n")
    print(text)
    print(f"\nbench finished in {result['seconds']} s")
    json_path = ROOT / args.json if not Path(args.json).is_absolute() else Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2, default=str))
    if args.markdown:
        md_path = ROOT / args.markdown if not Path(args.markdown).is_absolute() else Path(args.markdown)
        write_markdown(md_path, command, result, text)
    return result


if __name__ == "__main__":
    main()
