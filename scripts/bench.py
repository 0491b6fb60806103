"""Benchmark of the real path: Event Grid function -> Azurite queue -> queue function -> simulator (TLS).

Scenarios (sizes and the simulator's scale are parameters; `--help`):

- fan-out: N clusters on one key over S subscriptions; makespan from the Event Grid function call to the last
  verifying GET (from the simulator's request log), against the lower bound that the write bucket, the
  operation time and the request latency impose; a stress fan-out with a short operation;
- scale-out: N clusters over 20 subscriptions run by W = 1, 2, 4 worker processes on one queue, sharing each
  subscription's ARM budget;
- naive baseline: the same rotation one cluster after another (GET, PUT, poll to the end, next);
- throttle: 429s as a share of writes, and requests sent inside a ``Retry-After`` window;
- requests per rotated cluster (ARM reads, writes, polls) and Key Vault reads per key;
- per job, counted in the workers: CPU time and storage requests by kind; and the CPU the whole machine spent;
- event handling: Event Grid function call to all jobs enqueued, for 100, 1000 and 10,000 watched clusters;
- reconcile: one pass (`rotation reconcile --enqueue`, its own process) over 10,000 clusters on 50 keys,
  against the read bucket's bound, and Key Vault reads per key;
- footprint: cold ``import function_app`` and cold start of ``rotation serve`` in fresh processes, and the
  queue workers' peak RSS.

The queue function runs in child processes (``bench.py --worker``), fed from Azurite like the Functions host
feeds it (a message is received, handed to ``rotate_cluster`` as a ``func.QueueMessage``, deleted on return),
keeping up to ``--concurrency`` invocations in flight. Prints a table, writes JSON and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
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
from azure.core.exceptions import (  # noqa: E402 - after the repository is on the path
    ResourceExistsError,
    ServiceRequestError,
)

SUBSCRIPTIONS = [f"{i:08d}-0000-4000-8000-{i:012d}" for i in range(1, 65)]
VAULT = "bench-kv"
QUEUE = "rotation-jobs"
# The per-job cost before issue 18's changes, measured by this script's stress fan-out (N=100, 1 s operation,
# a warm worker) on the code it started from (6a21cd1), with the same counting: 11.3 ms of worker CPU per job
# on a first run and 9.2 ms on a second, 8.04 storage requests per job (docs/benchmarks.md). The CPU target is
# half of the lower figure; storage requests must be fewer.
CPU_MS_PER_JOB_BEFORE = 9.2
CPU_MS_PER_JOB_TARGET = CPU_MS_PER_JOB_BEFORE / 2
STORAGE_PER_JOB_BEFORE = 8.04
IMPORT_PROBE = "import time; t = time.perf_counter(); import function_app; print(time.perf_counter() - t)"


def host_concurrency() -> int:
    """Invocations of the queue function one instance runs at once: host.json's batchSize + newBatchThreshold.

    (The Functions host keeps fetching batches while fewer than newBatchThreshold messages are in work.)
    """
    queues = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    return int(queues["batchSize"]) + int(queues["newBatchThreshold"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The bench's parameters (defaults: the `make bench` run, about 5 minutes on 2 cores)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--sizes", default="100", help="fan-out cluster counts (the scale-out runs go larger)")
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
    p.add_argument("--naive-size", type=int, default=1, help="clusters the sequential baseline rotates")
    p.add_argument(
        "--scale-workers", default="1,2,4", help="worker processes of the scale-out runs (one run per count)"
    )
    p.add_argument("--scale-size", type=int, default=2000, help="clusters of each scale-out fan-out")
    p.add_argument("--scale-subscriptions", type=int, default=20, help="subscriptions of the scale-out runs")
    p.add_argument(
        "--event-sizes", default="100,1000,10000", help="watched clusters for the event-handling runs"
    )
    p.add_argument("--reconcile-size", type=int, default=10000, help="watched clusters of the reconcile pass")
    p.add_argument("--reconcile-keys", type=int, default=50, help="keys the reconcile pass's clusters use")
    p.add_argument(
        "--reconcile-subscriptions",
        type=int,
        default=20,
        help="subscriptions of the reconcile pass's clusters",
    )
    p.add_argument("--serve-runs", type=int, default=3, help="cold starts of `rotation serve` timed")
    p.add_argument("--event-repeats", type=int, default=5, help="timed Event Grid calls per size")
    p.add_argument("--import-runs", type=int, default=5, help="fresh processes timing the cold import")
    p.add_argument("--timeout", type=float, default=120.0, help="give up on one fan-out after this long")
    p.add_argument("--json", default="docs/benchmarks.json", help="where the JSON goes")
    p.add_argument("--markdown", default="docs/benchmarks.md", help="where the report goes ('' for none)")
    p.add_argument("--profile", default="", help="cProfile each worker into PATH.<pid> (for finding CPU)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cost-probe", default="", help=argparse.SUPPRESS)  # a cluster id: `request_cost_main`
    p.add_argument("--cost-requests", type=int, default=600, help="requests timed per kind by the cost probe")
    return p.parse_args(argv)


# ---- the worker process ------------------------------------------------------------------------------


def worker_main(args: argparse.Namespace) -> None:  # noqa: C901, PLR0915 - one process's whole life
    """Run rotate_cluster from the queue until stdin says stop; answer "stats" with counters as JSON.

    Counted here, in the worker, per kind: every request the rotator sends through its shared transport
    (Table, Queue, ARM, Key Vault, identity) and the host's own queue requests (receives, deletes); CPU time
    of the process since it was ready. The bench takes a snapshot before and after each fan-out.
    """
    import asyncio  # noqa: PLC0415
    import collections  # noqa: PLC0415
    import logging  # noqa: PLC0415
    import resource  # noqa: PLC0415

    import function_app  # noqa: PLC0415
    from azsim.host import QueueHost  # noqa: PLC0415
    from rotation.azure import transport as transport_module  # noqa: PLC0415
    from rotation.service import process as service_module  # noqa: PLC0415

    functions = {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}
    logging.basicConfig(level=logging.WARNING, format="worker: %(message)s %(details)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_details)

    counts: collections.Counter[str] = collections.Counter()
    original_send = transport_module.SharedTransport.send

    async def counting_send(self: Any, request: Any, **config: Any) -> Any:  # noqa: ANN401
        counts[f"{request_kind(request.url)} {request.method}"] += 1
        return await original_send(self, request, **config)

    transport_module.SharedTransport.send = counting_send  # type: ignore[method-assign]
    profiler = None
    if args.profile:
        import cProfile  # noqa: PLC0415

        profiler = cProfile.Profile()

    class FeedingHost(QueueHost):
        """QueueHost that keeps up to ``concurrency`` invocations in flight instead of batch by batch."""

        slowest_receive_s = 0.0  # the longest receive call (Azurite's answer, or the SDK's retries)

        finished = 0  # invocations whose message was deleted (or left to reappear)

        async def _one(self, message: Any) -> None:  # noqa: ANN401 - azure QueueMessage
            failed = self.stats.failed
            await super()._one(message)
            if self.stats.failed == failed:
                counts["host queue DELETE"] += 1
            self.finished += 1

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
                    counts["host queue GET (empty)"] += 1
                    await asyncio.sleep(0.1)  # QueueHost's polling interval while the queue is empty
                    continue
                counts["host queue GET"] += 1
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

    ready_cpu = 0.0

    def snapshot(host: FeedingHost) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "invocations": host.stats.invocations,
            "succeeded": host.stats.succeeded,
            "failed": host.stats.failed,
            "finished": host.finished,
            "cpu_s": round(usage.ru_utime + usage.ru_stime - ready_cpu, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "requests": dict(counts),
        }

    async def run() -> dict[str, Any]:
        nonlocal ready_cpu
        host = FeedingHost(
            os.environ["AzureWebJobsStorage"],
            QUEUE,
            functions["rotate_cluster"],
            concurrency=args.concurrency,
        )
        stop = asyncio.Event()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        ready_cpu = usage.ru_utime + usage.ru_stime
        if profiler is not None:
            profiler.enable()
        print("READY", flush=True)

        async def commands() -> None:
            while True:
                line = (await asyncio.to_thread(sys.stdin.readline)).strip()
                if line == "stats":
                    print("STATS " + json.dumps(snapshot(host)), flush=True)
                    continue
                stop.set()
                return

        watcher = asyncio.create_task(commands())
        try:
            await host.feed(stop, args.concurrency)
        finally:
            await watcher
            await host.close()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{args.profile}.{os.getpid()}")
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
                "ledger_reservations": stats.reservations,
                "ledger_slots": stats.reserved,
                "ledger_failures": stats.ledger_failures,
                "ledger_dropped": stats.dropped,
                "ledger_requests": getattr(svc.runtime.clusters.pacer.ledger, "requests", 0),
                "ledger_races": getattr(svc.runtime.clusters.pacer.ledger, "races", 0),
            }
        await service_module.close_services()
        return {
            **snapshot(host),
            "errors": host.stats.errors[:5],
            "slowest_receive_s": round(host.slowest_receive_s, 3),
            "pacer": pacer,
        }

    result = asyncio.run(run())
    print("RESULT " + json.dumps(result), flush=True)


def request_cost_main(args: argparse.Namespace) -> None:
    """Worker CPU of one request, through the Azure SDK as the rotator sends it and through aiohttp alone.

    Runs in a process of its own (the simulator shares the bench's), on the clients a worker builds: a Table
    entity read by the Tables SDK, and an ARM GET of a cluster by the rotator's ARM client (its pipeline,
    pacing and retry layer, TLS through the proxy). The "aiohttp alone" rows send the same URL on the same
    connection pool, unsigned (the service answers 403 / 401 with a body of similar size): what the SDK
    adds to a request is the difference.
    """
    import asyncio  # noqa: PLC0415

    from azure.core.exceptions import ResourceExistsError as Exists  # noqa: PLC0415
    from azure.data.tables import UpdateMode  # noqa: PLC0415

    from rotation.ids import parse_cluster_id  # noqa: PLC0415
    from rotation.service.runtime import Runtime  # noqa: PLC0415
    from rotation.settings import Settings  # noqa: PLC0415
    from rotation.store.clients import storage_clients  # noqa: PLC0415

    async def per_call(call: Any, n: int) -> float:  # noqa: ANN401
        """CPU milliseconds per call, ``n`` calls 16 at a time (after 50 to warm the pool up)."""
        gate = asyncio.Semaphore(16)

        async def one() -> None:
            async with gate:
                await call()

        await asyncio.gather(*(one() for _ in range(50)))
        started = _cpu()
        await asyncio.gather(*(one() for _ in range(n)))
        return round((_cpu() - started) / n * 1000, 3)

    async def run() -> dict[str, float]:
        settings = Settings.from_env(os.environ)
        runtime = Runtime.create(settings)
        http = runtime.http
        tables, queues = storage_clients(settings, http=http)
        table = tables.get_table_client("benchcost")
        with contextlib.suppress(Exists):
            await table.create_table()
        await table.upsert_entity({"PartitionKey": "p", "RowKey": "r", "Owner": "x" * 40, "Count": 3})
        entity_url = f"{table.url.rstrip('/')}/benchcost(PartitionKey='p',RowKey='r')"
        cluster = parse_cluster_id(args.cost_probe)
        arm_url = (
            f"{settings.arm_endpoint.rstrip('/')}{args.cost_probe}?api-version={settings.arm_api_version}"
        )
        arm_proxy = http.proxies.for_url(arm_url)

        async def table_sdk() -> None:
            await table.get_entity("p", "r")

        async def table_write() -> None:
            await table.update_entity({"PartitionKey": "p", "RowKey": "r", "Count": 4}, mode=UpdateMode.MERGE)

        async def table_raw() -> None:
            async with http.session().get(entity_url, headers={"Accept": "application/json"}) as answer:
                await answer.read()

        async def arm_sdk() -> None:
            await runtime.clusters.get(cluster)

        async def arm_raw() -> None:
            async with http.session().get(arm_url, proxy=arm_proxy) as answer:
                await answer.read()

        n = args.cost_requests
        out = {
            "table_sdk_ms": await per_call(table_sdk, n),
            "table_write_sdk_ms": await per_call(table_write, n),
            "table_aiohttp_ms": await per_call(table_raw, n),
            "arm_sdk_ms": await per_call(arm_sdk, min(n, 150)),  # within the read bucket's burst
            "arm_aiohttp_ms": await per_call(arm_raw, n),
        }
        await table.delete_table()
        await table.close()
        await tables.close()
        await queues.close()
        await runtime.close()
        return out

    print("RESULT " + json.dumps(asyncio.run(run())), flush=True)


def request_cost(sim: Any, args: argparse.Namespace) -> dict[str, float]:  # noqa: ANN401
    """`request_cost_main` in a process of its own, on a cluster of a subscription no scenario uses."""
    sub = SUBSCRIPTIONS[-1]
    identity = sim.add_identity(subscription=sub, resource_group="rg-cost", name="id-cmk")
    version = sim.create_key_version(VAULT, "cost", emit_event=False)
    cluster = sim.add_cluster(
        subscription=sub,
        resource_group="rg-cost",
        name="cost-probe",
        key_url=sim.key_url(VAULT, "cost", version),
        identity=identity,
    )
    proc = subprocess.run(  # noqa: S603 - this script, with the bench's own arguments
        [sys.executable, __file__, "--cost-probe", cluster, "--cost-requests", str(args.cost_requests)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    result: dict[str, float] | None = result_line(proc.stdout)
    if result is None:
        raise RuntimeError(f"cost probe exited {proc.returncode}: {proc.stderr[-2000:]}")
    return result


def result_line(out: str) -> Any:  # noqa: ANN401 - the JSON a subprocess of this script reported
    """The JSON of the ``RESULT`` line a worker or probe process printed last, or None."""
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return None


def request_kind(url: str) -> str:
    """What a request of the rotator talks to: table, queue, blob (storage endpoints), arm, kv, identity."""
    from urllib.parse import urlsplit  # noqa: PLC0415

    parts = urlsplit(url)
    origin = f"{parts.hostname}:{parts.port}".lower()
    storage = _storage_origins()
    if origin in storage:
        return storage[origin]
    host = (parts.hostname or "").lower()
    if host == "management.azure.com":
        return "arm"
    if ".vault." in host or host.endswith(".managedhsm.azure.net"):
        return "kv"
    return "identity"


@functools.cache
def _storage_origins() -> dict[str, str]:
    """``host:port`` -> table/queue/blob, from the AzureWebJobsStorage connection string's endpoints."""
    from urllib.parse import urlsplit  # noqa: PLC0415

    out = {}
    for part in os.environ.get("AzureWebJobsStorage", "").split(";"):
        name, _, value = part.partition("=")
        if name.lower().endswith("endpoint") and value:
            endpoint = urlsplit(value)
            out[f"{endpoint.hostname}:{endpoint.port}".lower()] = name.lower().removesuffix("endpoint")
    return out


def _details(record: Any) -> bool:  # noqa: ANN401 - a logging.LogRecord
    """Put the fields that say why (reason, status, error code) on the worker's log lines."""
    names = ("cluster_id", "policy", "status", "error_code", "reason", "wait_s", "outcome")
    found = [(n, getattr(record, n, None)) for n in names]
    record.details = " ".join(f"{n}={v}" for n, v in found if v is not None)
    return True


class Worker:
    """A queue worker child process."""

    def __init__(self, concurrency: int, profile: str = "") -> None:
        argv = [sys.executable, __file__, "--worker", "--concurrency", str(concurrency)]
        if profile:
            argv += ["--profile", profile]
        self.proc = subprocess.Popen(  # noqa: S603 - this script, fixed argv
            argv,
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

    def snapshot(self) -> dict[str, Any]:
        """The worker's counters now (invocations, CPU since ready, requests by kind)."""
        assert self.proc.stdin is not None  # noqa: S101
        assert self.proc.stdout is not None  # noqa: S101
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker exited {self.proc.poll()} without stats")
            if line.startswith("STATS "):
                stats: dict[str, Any] = json.loads(line[len("STATS ") :])
                return stats

    def stop(self) -> dict[str, Any]:
        """Ask the worker to finish its invocations and exit; return what it reported."""
        try:
            out, _ = self.proc.communicate("stop\n", timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        result: dict[str, Any] | None = result_line(out)
        if result is None:
            raise RuntimeError(f"worker exited {self.proc.returncode} without a result")
        return result


def snapshots(workers: list[Worker]) -> list[dict[str, Any]]:
    """Every worker's counters now."""
    return [w.snapshot() for w in workers]


def cost(before: list[dict[str, Any]], after: list[dict[str, Any]], jobs: int) -> dict[str, Any]:
    """What the workers spent between two snapshots: CPU and requests by kind, in total and per job."""
    cpu = sum(a["cpu_s"] - b["cpu_s"] for b, a in zip(before, after, strict=True))
    requests: dict[str, int] = {}
    for b, a in zip(before, after, strict=True):
        for kind, count in a["requests"].items():
            requests[kind] = requests.get(kind, 0) + count - b["requests"].get(kind, 0)
    invocations = sum(a["invocations"] - b["invocations"] for b, a in zip(before, after, strict=True))
    failed = sum(a["failed"] - b["failed"] for b, a in zip(before, after, strict=True))
    storage = {k: v for k, v in requests.items() if k.split()[0] in {"table", "queue", "blob", "host"}}
    storage = {k: v for k, v in storage.items() if "(empty)" not in k}
    per = max(1, jobs)
    return {
        "jobs": jobs,
        "invocations": invocations,
        "failed": failed,
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_job": round(cpu * 1000 / per, 2),
        "requests": dict(sorted(requests.items())),
        "storage_per_job": round(sum(storage.values()) / per, 2),
        "storage_per_job_by_kind": {k: round(v / per, 2) for k, v in sorted(storage.items())},
        "peak_rss_mb": max(a["peak_rss_mb"] for a in after),
    }


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


def serve_cold_start(runs: int) -> list[dict[str, float]]:
    """Seconds from starting `python -m rotation serve` to its start line, and to a first healthy answer.

    The health route reads the registry (one Table query), so the second figure includes the first storage
    connection. Needs the simulator's and Azurite's environment; each process is stopped with SIGTERM.
    """
    import signal  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    out = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "rotation", "--log-format", "json", "serve", "--port", "0"],
            cwd=ROOT,
            env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None  # noqa: S101
        port = 0
        for line in proc.stderr:
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if doc.get("event") == "rotation.serve_started":
                    port = int(doc["port"])
                    break
        if not port:
            proc.kill()
            raise RuntimeError("rotation serve did not start")
        listening = time.perf_counter() - started
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10) as answer:
                    if answer.status == 200:  # noqa: PLR2004
                        break
            except OSError:
                time.sleep(0.01)
        healthy = time.perf_counter() - started
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        out.append({"listening_s": round(listening, 3), "healthy_s": round(healthy, 3)})
    return out


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
    # Accepted writes in each second from the event (the first 20): how soon the budget is put to use.
    puts_per_second = [0] * 20
    for r in writes:
        second = int(r.time - t0)
        if 200 <= r.status < 300 and 0 <= second < len(puts_per_second):  # noqa: PLR2004
            puts_per_second[second] += 1
    return {
        "puts_per_second": puts_per_second,
        "timeline_s": {
            "first_arm_request": round(first_arm - t0, 3),
            "first_keyvault_request": round(min((r.time for r in kv), default=t0) - t0, 3),
            "median_put": round(statistics.median(put_ok.values()) - t0, 3) if put_ok else 0.0,
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
        self.workers: list[Worker] = []
        self.registered: list[tuple[str, str]] = []  # (PartitionKey, RowKey) of rows `register` wrote

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

    def seed(
        self,
        key: str,
        n: int,
        *,
        in_simulator: bool = True,
        subscriptions: int | None = None,
        offset: int = 0,
    ) -> tuple[str, list[str]]:
        """A key with one version and ``n`` clusters on it, round-robin over the subscriptions."""
        version = self.sim.create_key_version(VAULT, key, emit_event=False)
        url = self.sim.key_url(VAULT, key, version)
        ids = []
        subs = SUBSCRIPTIONS[: subscriptions or self.args.subscriptions]
        for i in range(offset, offset + n):
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
        """Registry rows for the clusters: what `register` stores, without its GET, written in batches.

        The rows are the registry's own entities; one entity-group transaction writes up to 100 of one
        partition (the key's watch rows, or the cluster rows), so seeding 10,000 takes seconds, not minutes.
        """
        import asyncio  # noqa: PLC0415
        from datetime import UTC, datetime  # noqa: PLC0415

        from azure.data.tables.aio import TableServiceClient  # noqa: PLC0415

        from rotation.ids import parse_cluster_id  # noqa: PLC0415
        from rotation.store import tables as layout  # noqa: PLC0415
        from rotation.store import watch  # noqa: PLC0415

        host = f"{VAULT}.vault.azure.net"
        now = datetime.now(UTC)
        watch_rows: list[dict[str, Any]] = []
        pointers: list[dict[str, Any]] = []
        for cluster_id in ids:
            rid = parse_cluster_id(cluster_id)
            row = watch._watch_entity(  # noqa: SLF001 - the registry's own row, written in bulk
                watch.WatchedCluster(
                    cluster_id=str(rid),
                    subscription=rid.subscription,
                    vault_host=host,
                    key_name=key,
                    current_version=version,
                    identity=self.identities.get(subscription_of(cluster_id)),
                    owner="bench",
                    state=watch.WatchState.WATCHING,
                    last_outcome=None,
                    last_reason=None,
                    last_outcome_at=None,
                    registered_at=now,
                    updated_at=now,
                    operation_url=None,
                    target_key_url=None,
                )
            )
            watch_rows.append({k: v for k, v in row.items() if v is not None})
            pointers.append(
                {
                    "PartitionKey": layout.CLUSTER_PARTITION,
                    "RowKey": row["RowKey"],
                    "ClusterId": str(rid),
                    layout.POINTER: row["PartitionKey"],
                }
            )
        async with TableServiceClient.from_connection_string(self.azurite.connection_string) as tables:
            table = tables.get_table_client(layout.WATCH_TABLE)
            with contextlib.suppress(ResourceExistsError):
                await tables.create_table(layout.WATCH_TABLE)
            gate = asyncio.Semaphore(8)

            async def batch(entities: list[dict[str, Any]]) -> None:
                async with gate:
                    for attempt in range(3):  # upserts: sending one again is harmless
                        try:
                            await table.submit_transaction([("upsert", e) for e in entities])
                        except ServiceRequestError:
                            if attempt == 2:  # noqa: PLR2004
                                raise
                            await asyncio.sleep(0.5)
                        else:
                            return

            chunks = [rows[i : i + 100] for rows in (watch_rows, pointers) for i in range(0, len(rows), 100)]
            await asyncio.gather(*(batch(c) for c in chunks))
        self.registered += [(e["PartitionKey"], e["RowKey"]) for e in (*watch_rows, *pointers)]

    async def forget(self) -> None:
        """Delete the registry rows `register` wrote since the last call (a scenario's own clusters).

        Azurite keeps everything in one Node.js process's memory: with the reconcile and event scenarios'
        20,000 rows kept, its CPU per request grew (a whole default run once spent 60 s of Azurite CPU on
        the 4-worker scale-out that takes 12 s alone), which Azure's Table storage would not show.
        """
        import asyncio  # noqa: PLC0415

        from azure.data.tables.aio import TableServiceClient  # noqa: PLC0415

        from rotation.store import tables as layout  # noqa: PLC0415

        rows, self.registered = self.registered, []
        by_partition: dict[str, list[str]] = {}
        for partition, row in rows:
            by_partition.setdefault(partition, []).append(row)
        chunks = [
            (partition, keys[i : i + 100])
            for partition, keys in by_partition.items()
            for i in range(0, len(keys), 100)
        ]
        async with TableServiceClient.from_connection_string(self.azurite.connection_string) as tables:
            table = tables.get_table_client(layout.WATCH_TABLE)
            gate = asyncio.Semaphore(8)

            async def batch(partition: str, keys: list[str]) -> None:
                async with gate:
                    ops = [("delete", {"PartitionKey": partition, "RowKey": k}) for k in keys]
                    with contextlib.suppress(Exception):  # cleaning up: a row already gone is fine
                        await table.submit_transaction(ops)

            await asyncio.gather(*(batch(p, k) for p, k in chunks))

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
        await self.forget()
        return {
            "clusters": n,
            "first_call_s": round(first, 4),
            "calls": len(samples),
            "p50_s": round(percentile(samples, 50), 4),
            "p99_s": round(percentile(samples, 99), 4),
            "max_s": round(max(samples), 4),
        }

    async def fanout(
        self,
        n: int,
        label: str = "",
        timing: tuple[float, float] | None = None,
        subscriptions: int | None = None,
    ) -> dict[str, Any]:
        """One event for ``n`` clusters, rotated by the worker processes; measured from the request log.

        ``timing``: (operation seconds, Retry-After) of this fan-out, the arguments' by default. The workers'
        CPU and requests are the difference of their counters from the event to the end of the last job.
        """
        import asyncio  # noqa: PLC0415

        timing = timing or (self.args.operation, self.args.poll_interval)
        key = f"fan{n}{label}"
        version, ids = self.seed(key, n, subscriptions=subscriptions)
        await self.register(key, version, ids)
        await asyncio.sleep(1.0)  # let the worker's mirror of the ARM budget refill, as after any idle second
        self.configure(timing)  # full buckets at the start
        self.sim.clear_requests()
        cpu = _cpu()
        azurite_pid = self.azurite._proc.pid if self.azurite._proc else 0  # noqa: SLF001 - measuring it
        azurite_cpu = tree_cpu(azurite_pid)
        before = snapshots(self.workers)
        t0, enqueue_s, _ = await self.fire(key)
        deadline = time.monotonic() + self.args.timeout
        progress = Progress(ids, timing[0])
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            if progress.verified(self.sim.requests) == n:
                break
        result = analyse(self.sim.requests, t0, ids, self.args, timing)
        # The jobs record and release after their verifying GET: wait for every invocation to return.
        done_by = time.monotonic() + 15
        while True:
            after = snapshots(self.workers)
            # Every cluster was verified, so every message was received: wait until each invocation returned.
            received = sum(a["invocations"] - b["invocations"] for b, a in zip(before, after, strict=True))
            ended = sum(a["finished"] - b["finished"] for b, a in zip(before, after, strict=True))
            if (received and ended >= received) or time.monotonic() > done_by:
                break
            await asyncio.sleep(0.2)
        result["operation_s"], result["poll_interval_s"] = timing
        result["event_to_enqueued_s"] = round(enqueue_s, 4)
        result["simulator_process_cpu_s"] = round(_cpu() - cpu, 2)
        result["workers"] = len(self.workers)
        result["worker_cost"] = cost(before, after, n)
        # Where the machine's CPU went from the event to the last job's end (the workers, this process with
        # the simulator and the Event Grid function, Azurite), against what its cores had in that time.
        spent = {
            "workers_s": result["worker_cost"]["cpu_s"],
            "bench_and_simulator_s": result["simulator_process_cpu_s"],
            "azurite_s": round(tree_cpu(azurite_pid) - azurite_cpu, 2),
        }
        wall = time.time() - t0
        result["cpu_budget"] = {
            **spent,
            "total_s": round(sum(spent.values()), 2),
            "cores": os.cpu_count(),
            "wall_s": round(wall, 2),
            "available_s": round((os.cpu_count() or 1) * wall, 2),
        }
        return result

    async def scale_out(self, n: int, workers: int) -> dict[str, Any]:
        """A fan-out of ``n`` clusters over the scale-out subscriptions, by ``workers`` fresh processes."""
        previous = self.workers
        await self.clear_queue()  # each run starts from an empty queue (no job deferred by an earlier run)
        self.workers = [Worker(self.args.concurrency, self.args.profile) for _ in range(workers)]
        try:
            result = await self.fanout(n, label=f"w{workers}", subscriptions=self.args.scale_subscriptions)
        finally:
            stopped = [w.stop() for w in self.workers]
            self.workers = previous
            await self.forget()
        result["scale_out"] = True
        result["worker_results"] = merge_workers(stopped)
        return result

    async def reconcile(self, n: int, keys: int, subscriptions: int) -> dict[str, Any]:
        """One reconcile pass (`rotation reconcile --enqueue`, its own process) over ``n`` watched clusters.

        The clusters are up to date, so the pass is what every timer tick costs: one ARM read per cluster,
        Key Vault read per key, nothing queued. Timed by the pass's own report (process start excluded) and,
        from the simulator's log, from its first ARM request to its last.
        """
        per_key = [n // keys + (1 if i < n % keys else 0) for i in range(keys)]
        offset = 0
        for i, count in enumerate(per_key):
            key = f"rec{i:03d}"
            version, ids = self.seed(key, count, subscriptions=subscriptions, offset=offset)
            offset += count
            await self.register(key, version, ids)
        self.configure()
        self.sim.clear_requests()
        env = {**os.environ, "ROTATION_MAX_CONCURRENCY": str(self.args.concurrency)}
        started = time.time()
        # Blocking on purpose: the pass is timed alone (the simulator serves from its own threads).
        proc = subprocess.run(  # noqa: ASYNC221
            [sys.executable, "-m", "rotation", "reconcile", "--enqueue", "--json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        wall = time.time() - started
        if proc.returncode != 0:
            raise RuntimeError(f"reconcile exited {proc.returncode}: {proc.stderr[-2000:]}")
        summary = json.loads(proc.stdout)["summary"]
        await self.forget()
        arm = [r for r in self.sim.requests if r.service == "arm" and r.time >= started]
        kv = [r for r in self.sim.requests if r.service == "kv" and r.time >= started]
        per_sub: dict[str, int] = {}
        for r in arm:
            if r.method == "GET":
                per_sub[subscription_of(r.path)] = per_sub.get(subscription_of(r.path), 0) + 1
        reads_min: dict[str, int] = {}
        for i in range(n):
            sub = SUBSCRIPTIONS[i % subscriptions]
            reads_min[sub] = reads_min.get(sub, 0) + 1
        a = self.args
        bound = max(max(0, r - a.read_burst) / a.read_refill for r in reads_min.values()) + 2 * a.latency
        span = (max(r.time for r in arm) - min(r.time for r in arm)) if arm else 0.0
        kv_challenges = sum(1 for r in kv if r.status == 401)  # noqa: PLR2004
        return {
            "clusters": n,
            "keys": keys,
            "subscriptions": subscriptions,
            "pass_s": summary["duration_s"],
            "arm_span_s": round(span, 3),
            "process_wall_s": round(wall, 3),
            "lower_bound_s": round(bound, 3),
            "ratio": round(summary["duration_s"] / bound, 3) if bound > 0 else None,
            "arm_reads": len([r for r in arm if r.method == "GET"]),
            "arm_reads_429": len([r for r in arm if r.status == 429]),  # noqa: PLR2004
            "arm_writes": len([r for r in arm if r.method != "GET"]),
            "keyvault_reads": len(kv) - kv_challenges,
            "keyvault_reads_per_key": round((len(kv) - kv_challenges) / keys, 2),
            "queued": summary["queued"],
            "drift": summary["drift"],
        }

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


def tree_cpu(root: int) -> float:
    """CPU seconds of process ``root`` and its descendants so far (Linux /proc; 0 elsewhere)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.parent.name)
        parents[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])  # utime, stime
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


async def run_all(args: argparse.Namespace, sim: Any, azurite: Any) -> dict[str, Any]:  # noqa: ANN401
    """Every scenario, in an order that keeps them from disturbing each other."""
    from rotation.service.process import close_services  # noqa: PLC0415

    bench = Bench(args, sim, azurite)
    bench.configure()
    sim.add_vault(VAULT, subscription=SUBSCRIPTIONS[0], resource_group="rg-keys")
    out: dict[str, Any] = {}
    try:
        # First, on an empty registry: a reconcile pass reads every watched cluster there is.
        if args.reconcile_size > 0:
            print(
                f"bench: reconcile pass over {args.reconcile_size} clusters ...", file=sys.stderr, flush=True
            )
            out["reconcile"] = await bench.reconcile(
                args.reconcile_size, args.reconcile_keys, args.reconcile_subscriptions
            )
        out["serve_cold_start"] = [] if args.serve_runs <= 0 else serve_cold_start(args.serve_runs)
        # Before any worker runs: each call's jobs are cleared from the queue before the next.
        out["events"] = []
        for n in sizes(args.event_sizes):
            print(f"bench: event handling, {n} watched ...", file=sys.stderr, flush=True)
            out["events"].append(await bench.events(n))
        if args.cost_requests > 0:  # before any worker runs: alone on the machine
            print("bench: CPU per request ...", file=sys.stderr, flush=True)
            out["request_cost"] = request_cost(sim, args)
        out["fanout"] = []
        await bench.clear_queue()
        bench.workers = [Worker(args.concurrency, args.profile) for _ in range(args.workers)]
        try:
            # The first event a fresh worker sees pays for its token and TLS connections: shown apart.
            out["warmup"] = await bench.fanout(args.subscriptions, label="w")
            for n in sizes(args.sizes):
                print(f"bench: fan-out of {n} clusters ...", file=sys.stderr, flush=True)
                out["fanout"].append(await bench.fanout(n))
            stress = (args.stress_operation, args.stress_poll_interval)
            for i, n in enumerate(sizes(args.stress_sizes)):
                print(f"bench: stress fan-out of {n} clusters ...", file=sys.stderr, flush=True)
                out["fanout"].append({**await bench.fanout(n, label=f"s{i}", timing=stress), "stress": True})
        finally:
            out["worker"] = merge_workers([w.stop() for w in bench.workers])
            bench.workers = []
        out["scale_out"] = []
        for w in sizes(args.scale_workers):
            print(
                f"bench: scale-out, {args.scale_size} clusters, {w} workers ...", file=sys.stderr, flush=True
            )
            out["scale_out"].append(await bench.scale_out(args.scale_size, w))
        out["naive"] = await bench.naive(args.naive_size) if args.naive_size > 0 else None
    finally:
        await close_services()
    return out


# ---- report ------------------------------------------------------------------------------------------


def rows(  # noqa: C901, PLR0915 - one table, row by row
    result: dict[str, Any], args: argparse.Namespace
) -> list[tuple[str, str, str, str]]:
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
        limit = 1.5 if f.get("stress") else 1.25
        add(f"{tag}: ratio makespan / bound", f"{f['ratio']:.2f}", f"<= {limit}", met=f["ratio"] <= limit)
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
        add_cost(add, tag, f["worker_cost"], stress=bool(f.get("stress")), unit=result.get("request_cost"))
        add_cpu_budget(add, tag, f)
    for f in result.get("scale_out", []):
        add_scale_out(add, f, args)
    unit = result.get("request_cost")
    if unit:
        add(
            "worker CPU per request: a Table entity read / MERGE through the Tables SDK; the same GET "
            "through aiohttp alone",
            f"{unit['table_sdk_ms']:.3f} / {unit['table_write_sdk_ms']:.3f} ms; "
            f"{unit['table_aiohttp_ms']:.3f} ms",
        )
        add(
            "worker CPU per request: an ARM GET through the rotator's ARM client (azure-core pipeline, "
            "pacing, retry layer; TLS through the proxy) / the same GET through aiohttp alone",
            f"{unit['arm_sdk_ms']:.3f} / {unit['arm_aiohttp_ms']:.3f} ms",
        )
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
    targets = {100: 0.3, 1000: 2.0, 10000: 5.0}
    for e in result["events"]:
        target = targets.get(e["clusters"])
        add(
            f"event handling, {e['clusters']} watched: p50 / p99 / max of {e['calls']} calls (first call)",
            f"{e['p50_s']:.3f} / {e['p99_s']:.3f} / {e['max_s']:.3f} s ({e['first_call_s']:.3f} s)",
            f"p99 < {target} s" if target else "",
            met=e["p99_s"] < target if target else None,
        )
    rec = result.get("reconcile")
    if rec:
        tag = f"reconcile pass, {rec['clusters']} watched on {rec['keys']} keys ({rec['subscriptions']} subs)"
        add(
            f"{tag}: pass (its report) / ARM span / process wall",
            f"{rec['pass_s']:.2f} / {rec['arm_span_s']:.2f} / {rec['process_wall_s']:.2f} s",
        )
        add(f"{tag}: lower bound (read bucket + latency)", f"{rec['lower_bound_s']:.2f} s")
        add(f"{tag}: ratio pass / bound", f"{rec['ratio']:.2f}", "<= 1.25", met=rec["ratio"] <= 1.25)  # noqa: PLR2004
        add(
            f"{tag}: ARM reads per cluster (429s)",
            f"{rec['arm_reads'] / rec['clusters']:.2f} ({rec['arm_reads_429']})",
            "1",
            met=rec["arm_reads"] == rec["clusters"],
        )
        add(
            f"{tag}: Key Vault reads per key",
            f"{rec['keyvault_reads_per_key']:.2f} ({rec['keyvault_reads']} for {rec['keys']} keys)",
            "<= 2 (a listing, a GET)",
            met=rec["keyvault_reads_per_key"] <= 2,  # noqa: PLR2004
        )
    for run in result.get("serve_cold_start", [])[:1]:
        del run
        starts = result["serve_cold_start"]
        add(
            f"cold start of `rotation serve`: listening / first healthy answer (median of {len(starts)})",
            f"{statistics.median(r['listening_s'] for r in starts):.2f} / "
            f"{statistics.median(r['healthy_s'] for r in starts):.2f} s",
            "< 2 s to healthy",
            met=statistics.median(r["healthy_s"] for r in starts) < 2.0,  # noqa: PLR2004
        )
    fp = result["footprint"]
    if fp["import_s"]:
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
    return out


def request_floor_ms(c: dict[str, Any], unit: dict[str, float]) -> tuple[float, float, float, float]:
    """Storage reads, storage writes, ARM and Key Vault requests per job, and what they cost through the SDK.

    A storage GET (table or queue) costs what the probe's entity read did, any other storage request what its
    MERGE did; an ARM or Key Vault request what the probe's ARM GET did.
    """
    by_kind = c["storage_per_job_by_kind"]
    reads = sum(v for k, v in by_kind.items() if k.endswith(" GET"))
    writes = c["storage_per_job"] - reads
    jobs = max(1, c["jobs"])
    azure = sum(v for k, v in c["requests"].items() if k.split()[0] in {"arm", "kv", "identity"}) / jobs
    floor = reads * unit["table_sdk_ms"] + writes * unit["table_write_sdk_ms"] + azure * unit["arm_sdk_ms"]
    return reads, writes, azure, floor


def add_cost(add: Any, tag: str, c: dict[str, Any], *, stress: bool, unit: dict[str, float] | None) -> None:  # noqa: ANN401
    """Rows of what the workers spent per job in one fan-out."""
    target = f"<= {CPU_MS_PER_JOB_TARGET:g} ms (half of {CPU_MS_PER_JOB_BEFORE:g})" if stress else ""
    add(
        f"{tag}: worker CPU per job",
        f"{c['cpu_ms_per_job']:.1f} ms ({c['cpu_s']:.2f} s / {c['jobs']} jobs)",
        target,
        met=c["cpu_ms_per_job"] <= CPU_MS_PER_JOB_TARGET if stress else None,
    )
    kinds = ", ".join(f"{k} {v:g}" for k, v in c["storage_per_job_by_kind"].items())
    add(
        f"{tag}: storage requests per job ({kinds})",
        f"{c['storage_per_job']:.2f}",
        f"< {STORAGE_PER_JOB_BEFORE:g} (before)" if stress else "",
        met=c["storage_per_job"] < STORAGE_PER_JOB_BEFORE if stress else None,
    )
    if stress and unit:
        reads, writes, azure, floor = request_floor_ms(c, unit)
        add(
            f"{tag}: CPU of the job's requests alone, at the SDK's cost of each measured alone "
            f"({reads:.2f} storage reads x {unit['table_sdk_ms']:.3f} ms + {writes:.2f} writes x "
            f"{unit['table_write_sdk_ms']:.3f} ms + {azure:.2f} ARM/Key Vault x {unit['arm_sdk_ms']:.3f} ms)",
            f"{floor:.1f} ms ({floor / max(c['cpu_ms_per_job'], 1e-9) * 100:.0f}% of the job's CPU)",
        )


def add_cpu_budget(add: Any, tag: str, f: dict[str, Any]) -> None:  # noqa: ANN401
    """The row that says whether the machine's cores, not ARM, set the pace."""
    b = f.get("cpu_budget")
    if not b:
        return
    add(
        f"{tag}: CPU spent (workers + this process with the simulator + Azurite) / cores x wall",
        f"{b['workers_s']:.1f} + {b['bench_and_simulator_s']:.1f} + {b['azurite_s']:.1f} "
        f"= {b['total_s']:.1f} s / {b['available_s']:.1f} s "
        f"({b['total_s'] / max(b['available_s'], 1e-9) * 100:.0f}%)",
    )


def add_scale_out(add: Any, f: dict[str, Any], args: argparse.Namespace) -> None:  # noqa: ANN401
    """Rows of one scale-out run; the targets hold at 4 workers."""
    w = f["workers"]
    tag = f"scale-out N={f['clusters']} ({f['subscriptions']} subs), {w} worker process(es)"
    judged = w >= 4  # noqa: PLR2004 - the issue's targets are set at W = 4
    if f["makespan_s"] is None:
        add(
            f"{tag}: makespan",
            f"incomplete: {f['verified']}/{f['clusters']} verified",
            "all verified",
            met=False,
        )
        return
    parts = f["lower_bound_parts"]
    add(
        f"{tag}: makespan / bound (bucket {parts['write_bucket_s']:.2f} + op {parts['operation_s']:.2f} "
        f"+ latency {parts['latency_chain_s']:.2f}; reads {parts['read_bucket_s']:.2f})",
        f"{f['makespan_s']:.2f} s / {f['lower_bound_s']:.2f} s = {f['ratio']:.2f}",
        "<= 1.25" if judged else "",
        met=f["ratio"] <= 1.25 if judged else None,  # noqa: PLR2004
    )
    add(
        f"{tag}: 429 share of writes",
        f"{f['write_429_share'] * 100:.1f}% ({f['writes_429']}/{f['writes']}; read 429s {f['reads_429']})",
        "<= 2%" if judged else "",
        met=f["write_429_share"] <= 0.02 if judged else None,  # noqa: PLR2004
    )
    add(
        f"{tag}: requests sent inside a Retry-After window",
        str(f["sent_inside_retry_after"]),
        "0" if judged else "",
        met=f["sent_inside_retry_after"] == 0 if judged else None,
    )
    pc = f["per_cluster"]
    add(
        f"{tag}: ARM requests per cluster (GET / PUT / polls)",
        f"{pc['gets']:.2f} / {pc['puts']:.2f} / {pc['polls']:.2f}",
    )
    rate = f["puts_per_second"]
    last = max((i for i, n in enumerate(rate) if n), default=0)
    add(
        f"{tag}: accepted PUTs in each second from the event (ARM's buckets allow "
        f"{f['subscriptions'] * (args.burst + args.refill):.0f} in the first, then "
        f"{f['subscriptions'] * args.refill:.0f})",
        " ".join(str(n) for n in rate[: last + 1]),
    )
    ledger = f.get("worker_results", {}).get("pacer", {})
    if ledger.get("ledger_reservations"):
        add(
            f"{tag}: shared write budget: reservations (slots, of them dropped unused) / storage requests / "
            "races lost to another process",
            f"{ledger['ledger_reservations']:g} ({ledger['ledger_slots']:g}, "
            f"{ledger.get('ledger_dropped', 0):g}) / "
            f"{ledger.get('ledger_requests', 0):g} / {ledger.get('ledger_races', 0):g}",
        )
    c = f["worker_cost"]
    kinds = ", ".join(f"{k} {v:g}" for k, v in c["storage_per_job_by_kind"].items())
    add(
        f"{tag}: worker CPU per job; storage requests per job ({kinds})",
        f"{c['cpu_ms_per_job']:.1f} ms; {c['storage_per_job']:.2f}",
    )
    add_cpu_budget(add, tag, f)
    add(
        f"{tag}: peak RSS of a worker",
        f"{c['peak_rss_mb']:.0f} MB",
        "< 200 MB" if f["clusters"] >= 2000 else "",  # noqa: PLR2004
        met=c["peak_rss_mb"] < 200 if f["clusters"] >= 2000 else None,  # noqa: PLR2004
    )


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


def write_markdown(
    path: Path, command: str, result: dict[str, Any], text: str, lines: list[tuple[str, str, str, str]]
) -> None:
    """docs/benchmarks.md: command, environment, scale, how to read it, the table, what was not met."""
    env = result["environment"]
    body = f"""# Benchmarks

Produced by `make bench` (`scripts/bench.py`), which drives the real path: the Event Grid function
(`on_key_event`) enqueues jobs in Azurite, separate worker processes run the queue function
(`rotate_cluster`) on them as Functions host instances would (one queue, each process its own clients and
pacer), and every ARM, Key Vault and identity request goes over TLS through the proxy to the local Azure
simulator. Makespans and request counts come from the simulator's request log, not from the rotator's own
records; CPU time and storage requests per job are counted in the worker processes (every request the
rotator sends through its shared transport, plus the host's own receive and delete of each message). One
run; the figures below are all from it.

Command (sizes and the simulator's scale are parameters: `python scripts/bench.py --help`):

```
{command}
```

Environment: {env["cpus"]} CPUs, Python {env["python"]}, {env["platform"]}. Everything (workers, simulator,
Azurite, this script) shares those CPUs.

Scale: {scale_text_from(result)}.

Lower bound of a fan-out: per subscription `max(0, writes - burst) / refill` (the last PUT cannot be granted
earlier), then the operation as the client can see it end (`ceil(operation / Retry-After) * Retry-After`),
plus the simulator's latency on the requests that must follow each other (GET, PUT, last poll, verifying
GET); or, when larger, the read bucket's `max(0, reads - burst) / refill` for the minimum reads. TLS, proxy,
queue, storage and CPU time are not in the bound: they are part of what the ratio measures. A reconcile
pass's bound is the read bucket's alone: `max(0, clusters per subscription - 250) / 25`.

Why a 10 s operation: a cluster's key update is an ARM long-running operation that takes minutes
(docs/design.md, Azure behaviour 1); the bench shortens it, and the write bucket's burst, to finish in
minutes. The rotator's own work is not shortened: its CPU per job is measured, on the same cores as the
simulator and Azurite. The stress rows run a fan-out again with a 1 s operation, where that CPU time is no
longer small beside the operation: they show what it costs, not what ARM allows.

## How the workers share one subscription's ARM budget

ARM throttles per subscription and principal, with a token bucket per kind of request (writes: 200 burst,
10/s; reads: 250, 25/s; learn.microsoft.com/azure/azure-resource-manager/management/request-limits-and-
throttling). Every instance of the app runs as the same identity, so all of them spend one bucket. Each
process already paces itself from the `x-ms-ratelimit-remaining-subscription-writes` header, and that header
does count everyone's writes; but it tells a process what the others spent only after the fact. Started
together, W processes each see the same full bucket and each spend it, then each take the whole refill
(`tests/unit/test_pacing_shared.py`, on a fake clock: 100 writes from 4 processes against a 20/10 bucket drew
52 429s). Three ways were weighed:

- *Adaptive pacing from the headers alone* (each process estimates what the others spend and takes the
  rest): free, but the shares it converges to are the ones it started from, not equal ones, and the start
  is blind. A prototype (not kept) on the fake clock: 2 processes took 119 s for an 8 s bound (one
  starved), 4 processes still drew 46 429s. It cannot promise "no request inside a `Retry-After`"
  either, since a 429 one process gets is not seen by the others.
- *A lease per subscription in Table storage* (one writer at a time): exact, but every other process waits
  for the lease and polls it, and a dead holder stalls the subscription for the lease's length.
- *A shared ledger in Table storage* (chosen, `rotation/store/budget.py`): one row per subscription holds
  the bucket's theoretical arrival time of the generic cell rate algorithm, the virtual-scheduling form of
  the same token bucket. A process reserves slots with one ETag-conditional write (a process that lost the
  race reads the row and reserves after the winner: never the same token twice) and sends each write at its
  slot. Reservations follow demand: the writes waiting now and, once the bucket is spent (the slots lie in
  the future), those the process's running jobs announced when they started (`ArmPacer.expect_write`), at
  most 32 at once; so a burst of jobs costs one storage request per few writes, and no process holds budget
  others wait for.
  A slot may reach ARM late (a job slower than its slot, a loaded event loop, a slow storage write): the
  bucket may meanwhile have sat at its cap and lost refill the ledger counted as spent. So the ledger keeps
  a second of refill as slack (10 of ARM's 200 writes; 10 of this bench's 20), a process drops a slot older
  than half a second, checked again after the reservation's own storage round trip and after any wait for
  a Retry-After (a token nobody spends), and the other half second covers the way from the pacer to ARM.
  The slack is needed only once the bucket has sat at its cap: when every slot handed out before has been
  used or dropped and the row's time lies a second in the past, ARM's bucket is full, and the ledger hands
  the whole burst to the writes as they come; the slot after it comes a second later than the refill alone
  would allow. So a fan-out within the burst goes out as fast as its jobs reach their PUT, and a larger one
  pays the second once. A property test (`test_no_slot_sent_within_its_window_draws_a_429`) sends every
  slot anywhere in its window against ARM's bucket (bursts 20 and 200, wall-clock times near 1.7e9 s), and
  fails if the hand-out skips the fullness check or the window is widened; a reviewer's worst-case search
  over several thousand multi-process schedules found no rejection. Measured on the way: a quarter of the
  burst as slack held back 5 of the stress run's 20 writes per subscription for half a second; giving the
  window's slots to jobs still reading spent budget on slots dropped unused (in a simulated 400-job fan-out
  on ARM's burst, 30 s against 22 s); a window of half a second dropped a sixth of the W=4 run's slots.
  The newest header is a floor for the ledger, and a write holding a slot still needs a token of the
  header mirror (spenders outside the app show up only there). A ledger that cannot be reached within 30 s,
  or whose slots come back too old four times over, is passed by: the mirror alone paces that write;
  rotations never wait on it.
  Reads are not shared this way: a rotation spends one write and four reads, the read bucket is larger and
  refills 2.5 times faster, and the scale-out rows show no read 429s.

On the fake clock (`tests/unit/test_pacing_shared.py`) 4 processes sharing the ledger finish 100 writes in
9 s (ARM's own bound is 8 s; the slack's second once) with no 429, for fewer than 60 storage requests; a
trickle of jobs costs more per write, and the scale-out rows below count it.

## What one job costs

Counted per job in the worker processes (the table rows below give each run's counts by kind):

- Table: read the cluster row and write its claim (rule 8: one writer per cluster), read the watch row (the
  registered state and the ETag every later write is conditional on; rule 11: only watched clusters), write
  the accepted operation before polling (rule 7), append the history entry and write the outcome to the
  watch row (what on-call reads), release the claim; and the shared ARM budget's reservations, a fraction of
  a request per write.
- Queue: the host's delete of the message when the function returns (a receive serves up to 32 messages).
  A fan-out past 32 clusters is sent as messages of several clusters (`rotation.store.jobs.JobBatch`: 4 or
  more each, at most 256 messages), split in the worker: one send, receive and delete per message instead of
  per cluster, and the event is answered within Event Grid's 30 s however many clusters the key has.
- ARM: GET, PUT, the polls the operation's `Retry-After` asks for, the verifying GET (rules 5, 7, 9).

Before these changes (commit 6a21cd1, measured with this script's counting, two stress fan-outs of N=100 in
one run): 11.3 and 9.2 ms of worker CPU per job, 8.04 storage requests per job (7 Table, 1 delete, 0.04
receive), makespan / bound 1.91 and 1.70. The targets below use the lower CPU figure. (The issue's "about
20 ms" and 2.30x came from an earlier, coarser measure on older code; counted from the event to the last
job's end in a warm worker, the code this work started from spends the figures above.)

What a request costs is measured alone, before any worker runs, in a process of its own on the clients a
worker builds (`request_cost_main`; rows "worker CPU per request"): a Table read or MERGE through the
Tables SDK, and an ARM GET through the rotator's ARM client, each against the same GET sent through
aiohttp alone on the same connection pool. The SDK's pipeline, serialization and signing make a request
about three times as costly as aiohttp's part of it. The stress rows then price a job's requests at those
costs beside the job's whole CPU: the rest is the event loop juggling a hundred jobs at once (more, smaller
reads per iteration), the rotator's own code (under a tenth of the worker's CPU in a profile: `python
scripts/bench.py --profile PATH`), tenacity, and the host's receive and delete.

{text}

{not_met_section(lines, result)}
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)


def not_met_section(lines: list[tuple[str, str, str, str]], result: dict[str, Any]) -> str:
    """The targets this run did not meet, each with the figure that says why."""
    missed = [figure for figure, _, _, verdict in lines if verdict == "NOT MET"]
    if not missed:
        return "## Targets\n\nEvery target in the table is met in this run."
    out = ["## Targets not met in this run", ""]
    out.extend(f"- {figure}" for figure in missed)
    out.append("")
    budgets = [
        (f"stress N={f['clusters']}" if f.get("stress") else f"N={f['clusters']}", f)
        for f in result["fanout"]
        if f.get("cpu_budget")
    ]
    budgets += [
        (f"scale-out W={f['workers']}", f) for f in result.get("scale_out", []) if f.get("cpu_budget")
    ]
    if budgets:
        out.append(
            "Why, measured in the same run: the CPU the machine spent from each event to its last job's "
            "end (workers, this process with the simulator, Azurite) against what its cores had in that "
            "time, and the worker CPU per job:"
        )
        out.append("")
        for name, f in budgets:
            b, c = f["cpu_budget"], f["worker_cost"]
            share = b["total_s"] / max(b["available_s"], 1e-9) * 100
            makespan = f["makespan_s"] if f["makespan_s"] is not None else "-"
            out.append(
                f"- {name}: {b['total_s']:.1f} s of {b['available_s']:.1f} s ({share:.0f}%); workers "
                f"{b['workers_s']:.1f} s over {f['workers']} process(es), {c['cpu_ms_per_job']:.1f} ms per "
                f"job; makespan {makespan} s against a {f['lower_bound_s']} s bound."
            )
        out.append("")
        out.append(
            "A worker process runs on one core: a fan-out of N jobs costs it N times the CPU per job, which "
            "the bound does not contain. Where the machine's cores are near full, or one worker's CPU time "
            "approaches the makespan, the cores set the pace, not ARM's buckets. The scale-out rows' PUTs "
            "per second show where the time goes: the bound assumes the burst is spent in the first second, "
            "but every job first claims its cluster and reads its watch row (three storage requests) and "
            f"the ARM GET, and {result['args']['scale_size']} jobs do that against one Azurite process (a "
            "single Node.js thread; its "
            "CPU is in the CPU row) before most PUTs can go; once they flow, they flow at the refill rate "
            "of every subscription, with no 429. Jobs queued again or deferred by the workers (their queue "
            "sends) per run: "
            + ", ".join(
                f"W={f['workers']} {f['worker_cost']['requests'].get('queue POST', 0)}"
                for f in result.get("scale_out", [])
            )
            + ". (Before the pool gave up idle connections after 2 s, below Azurite's 5 s keep-alive, "
            "Azurite reset writes sent on connections it was closing, azure-core does not retry a POST or "
            "PATCH without an answer, and each such job was queued again: a tail of about 10 s at W=4.)"
        )
    for f in result["fanout"]:
        if f.get("stress") and f.get("makespan_s") is not None and f["ratio"] > 1.5:  # noqa: PLR2004
            t = f["timeline_s"]
            out.append("")
            out.append(
                f"Stress fan-out N={f['clusters']}: its first ARM request left {t['first_arm_request']} s "
                f"after the event, half its PUTs by {t.get('median_put', '-')} s, its last PUT "
                f"{t['last_put']} s after it; the bound counts every PUT at once. One worker process does "
                "each job's claim, watch-row read, GET and PUT on one core before the last PUT can go, and "
                "the operation (then the polls its Retry-After spaces) starts only then. Reading the watch "
                "row while the claim is written (two storage rounds before the GET instead of three) did not "
                "move the ratio, measured apart: 1.82 and 1.81 against 1.79 and 1.86 without; the jobs' "
                "storage requests wait for Azurite's one thread, not for each other."
            )
    if any("worker CPU per job" in figure for figure in missed):
        out.append("")
        unit = result.get("request_cost")
        floors = [
            request_floor_ms(f["worker_cost"], unit)[3] for f in result["fanout"] if f.get("stress") and unit
        ]
        priced = (
            f"come to {min(floors):.1f} ms (the stress rows), against a {CPU_MS_PER_JOB_TARGET:g} ms target"
            if floors
            else "are most of it"
        )
        out.append(
            f"CPU per job: {CPU_MS_PER_JOB_BEFORE:g} ms before, measured the same way. A job's requests "
            f"alone, each at the cost the probe measured, {priced}: 5 ARM requests (GET, PUT, the polls, "
            "the verifying GET: rules 5, 7, 9) and about "
            "7 storage requests (claim, watch row, recorded operation, history, outcome, release: rules 7, "
            "8, 11). Halving the CPU means halving those requests or leaving the SDK clients, which the "
            "project does not do. The next storage request to go is the claim's read (a claim row of its "
            "own, taken with one insert instead of a read and a conditional write), not done here: it "
            "changes rule 8's storage, and claims held by a running older version during an upgrade would "
            "not be seen."
        )
    if any("peak RSS" in figure for figure in missed):
        out.append("")
        out.append(
            "Peak RSS per scale-out run (largest worker): "
            + ", ".join(
                f"W={f['workers']} {f['worker_cost']['peak_rss_mb']:.0f} MB"
                for f in result.get("scale_out", [])
            )
            + ". A worker holds the jobs of every message it received at once (up to "
            f"{result['args']['concurrency']} messages, each of several clusters), and each open TLS "
            "connection about 130 KB in asyncio's TLS layer alone (up to 128 per host). Measured apart: the "
            "4-worker run alone (`--scale-workers 4`, the other scenarios off) peaks at 140-144 MB per "
            "worker, and at 179 MB when the reconcile and event scenarios run first and fill Azurite, whose "
            "slower answers keep more jobs and connections open at once. A tracemalloc snapshot at each "
            "worker's peak (in the run alone) put the largest Python heap at 48 MB, 34 MB of it the TLS "
            "buffers of 256 connections; a worker that ran almost no job held 76-84 MB. With 64 connections "
            "per host instead of 128 the peak fell by about 20 MB, but more writes' ledger slots aged out "
            "before their PUT went (one worker: 855 and 946 slots dropped, against 384 and 132 at 128), so "
            "it was not kept."
        )
    return "\n".join(out)


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
    if args.cost_probe:
        request_cost_main(args)
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
        os.environ["ROTATION_ARM_WRITE_BURST"] = str(args.burst)
        os.environ["ROTATION_ARM_READ_BURST"] = str(args.read_burst)
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
    lines = rows(result, args)
    text = table(lines)
    print(f"\nscale: {result['scale']}\n")
    print(text)
    print(f"\nbench finished in {result['seconds']} s")
    json_path = ROOT / args.json if not Path(args.json).is_absolute() else Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2, default=str))
    if args.markdown:
        md_path = ROOT / args.markdown if not Path(args.markdown).is_absolute() else Path(args.markdown)
        write_markdown(md_path, command, result, text, lines)
    return result


if __name__ == "__main__":
    main()
