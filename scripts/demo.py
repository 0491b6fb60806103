"""The demo: the whole daemon on the local simulator and Azurite, start to finish, in under a minute.

1. starts Azurite and the Azure simulator (ARM, Key Vault, managed identity, TLS proxy) on 127.0.0.1;
2. seeds clusters in two subscriptions on one key, one on another key, one versionless;
3. registers them with the CLI (`python -m rotation register`);
4. creates a new key version in the simulator, which emits the Key Vault event;
5. delivers the event to the Event Grid function as the Functions host would (real trigger object);
6. runs the queue function on every queued job as the host would;
7. prints the watched-cluster table (`python -m rotation list`), a history, the log and a doctor report
   (`python -m rotation doctor`) of one cluster, and stops everything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from azsim.tls import ensure_ca  # noqa: E402 - must precede aiohttp's import (SSL_CERT_FILE is read then)

CA_DIR = Path(tempfile.mkdtemp(prefix="cmk-rotator-demo-"))
os.environ["SSL_CERT_FILE"] = str(ensure_ca(CA_DIR).cert_path)
os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"]

import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402

from azure.functions import meta  # noqa: E402
from azure.functions.eventgrid import EventGridEventInConverter  # noqa: E402

from azsim.azurite import Azurite  # noqa: E402
from azsim.host import Context, QueueHost  # noqa: E402
from azsim.simulator import Simulator  # noqa: E402

SUB_A = "11111111-1111-1111-1111-111111111111"
SUB_B = "22222222-2222-2222-2222-222222222222"


def banner(text: str) -> None:
    """Print a section heading."""
    print(f"\n=== {text}", flush=True)


def cli(*args: str) -> None:
    """Run `python -m rotation ARGS` as an operator would, echoing the command and its output."""
    print(f"$ python -m rotation {' '.join(args)}", flush=True)
    proc = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "rotation", *args],
        cwd=ROOT,
        env=os.environ.copy(),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stdout.write(proc.stderr)
        raise SystemExit(f"demo: `{' '.join(args)}` exited {proc.returncode}")


def seed(sim: Simulator) -> list[str]:
    """Create the vault, keys, identities and clusters; return the cluster ids."""
    sim.add_vault("contoso-kv", subscription=SUB_A, resource_group="rg-keys")
    v1 = sim.create_key_version("contoso-kv", "cmk-docdb", size=3072, emit_event=False)
    other = sim.create_key_version("contoso-kv", "cmk-analytics", emit_event=False)
    clusters = []
    for sub, names in (
        (SUB_A, ["orders-prod", "payments-prod", "catalog-prod"]),
        (SUB_B, ["orders-eu", "ledger-eu"]),
    ):
        uami = sim.add_identity(subscription=sub, resource_group="rg-data", name="id-docdb-cmk")
        clusters += [
            sim.add_cluster(
                subscription=sub,
                resource_group="rg-data",
                name=n,
                key_url=sim.key_url("contoso-kv", "cmk-docdb", v1),
                identity=uami,
            )
            for n in names
        ]
    uami = sim.add_identity(subscription=SUB_A, resource_group="rg-analytics", name="id-analytics")
    clusters.append(
        sim.add_cluster(
            subscription=SUB_A,
            resource_group="rg-analytics",
            name="analytics",
            key_url=sim.key_url("contoso-kv", "cmk-analytics", other),
            identity=uami,
        )
    )
    clusters.append(
        sim.add_cluster(
            subscription=SUB_B,
            resource_group="rg-data",
            name="reports-versionless",
            key_url=sim.key_url("contoso-kv", "cmk-docdb"),
            identity=uami,
        )
    )
    return clusters


async def run_functions(sim: Simulator, azurite: Azurite) -> None:
    """Deliver the event to on_key_event, then run rotate_cluster on every job, as the host does."""
    import function_app  # noqa: PLC0415 - after the settings are in the environment

    functions = {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}
    event = sim.events[-1]
    banner(f"Key Vault event {event['eventType']} for {event['data']['Id']}")
    trigger = EventGridEventInConverter.decode(
        meta.Datum(type="json", value=json.dumps(event)), trigger_metadata={}
    )
    started = time.perf_counter()
    await functions["on_key_event"](trigger, Context(function_name="on_key_event"))
    print(f"on_key_event returned in {time.perf_counter() - started:.3f} s", flush=True)
    banner("queue function rotate_cluster on each job, as the Functions host runs it")
    host = QueueHost(azurite.connection_string, "rotation-jobs", functions["rotate_cluster"], concurrency=8)
    try:
        stats = await host.drain(idle_seconds=1.0, limit_seconds=60)
    finally:
        await host.close()
        await close_services()
    counts = f"succeeded={stats.succeeded} failed={stats.failed} poisoned={stats.poisoned}"
    print(f"invocations={stats.invocations} {counts}", flush=True)


async def close_services() -> None:
    """Close the clients the functions built for this event loop."""
    from rotation.service.process import close_services as close  # noqa: PLC0415

    await close()


def main() -> None:
    """Run the demo and stop everything it started."""
    started = time.monotonic()
    logging.basicConfig(level=logging.WARNING)
    with Azurite() as azurite, Simulator(ca_dir=CA_DIR, seed=1) as sim:
        os.environ.update(sim.env)
        os.environ["AzureWebJobsStorage"] = azurite.connection_string
        sim.configure(operation_seconds=1.0, poll_interval=0.25)
        banner("simulator and Azurite up on 127.0.0.1; seeding 7 clusters in 2 subscriptions")
        clusters = seed(sim)
        banner("register every cluster for watch")
        for cluster in clusters:
            cli("register", cluster, "--owner", "team-data")
        sim.create_key_version("contoso-kv", "cmk-docdb", size=3072)

        from rotation.logs import configure_cli_logging  # noqa: PLC0415

        configure_cli_logging("text")
        handler = logging.getLogger().handlers[0]
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stdout)
        asyncio.run(run_functions(sim, azurite))
        logging.getLogger().handlers.clear()
        banner("watched clusters after the rotation")
        cli("list")
        banner("history of one cluster")
        cli("history", clusters[0])
        banner("doctor: will that cluster's key keep working, and can the rotator keep it current?")
        cli("doctor", clusters[0])
        puts = [r for r in sim.requests if r.method == "PUT"]
        banner(f"simulator saw {len(puts)} PUT(s) for {len(clusters)} registered clusters")
    banner(f"done in {time.monotonic() - started:.1f} s; Azurite and the simulator are stopped")


if __name__ == "__main__":
    main()
