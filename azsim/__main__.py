"""``python -m azsim serve``: the simulator and Azurite until SIGINT/SIGTERM; ``python -m azsim key ...``.

``serve`` starts Azurite too (in memory, telemetry off; ``--no-azurite`` to skip it), prints
``export NAME=value`` for every setting a client needs, ``AzureWebJobsStorage`` included (and writes
``NAME=value`` lines to ``--env-file``), then ``azsim: ready``. With ``--webhook URL`` it also delivers
Key Vault events there as an Event Grid subscription (`azsim.webhook`), once the endpoint answers the
validation handshake. The other commands drive a running simulator through its control API (`azsim.cli`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from azsim.azurite import Azurite
from azsim.cli import add_commands, run
from azsim.tls import ensure_ca

if TYPE_CHECKING:
    from types import FrameType

    from azsim.simulator import Simulator

WEBHOOK_WAIT_S = 120.0  # --webhook: how long to wait for the endpoint to come up


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m azsim",
        description="The local Azure simulator: `serve` runs it (with Azurite); the other commands drive it.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the simulator until interrupted")
    serve.add_argument(
        "--ca-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "azsim-ca",
        help="directory of the CA (created if missing, reused if present)",
    )
    serve.add_argument("--seed-file", type=Path, help="JSON seed spec (see azsim.simulator)")
    serve.add_argument("--env-file", type=Path, help="also write NAME=value lines here")
    serve.add_argument("--seed", type=int, default=0, help="seed of the simulator's randomness")
    serve.add_argument("--no-azurite", action="store_true", help="do not start Azurite")
    serve.add_argument(
        "--webhook",
        action="append",
        default=[],
        metavar="URL",
        help="deliver Key Vault events to this webhook once it passes the validation handshake (repeatable)",
    )
    serve.add_argument("--webhook-schema", choices=("eventgrid", "cloudevents"), default="eventgrid")
    add_commands(commands)
    return parser


def serve(args: argparse.Namespace) -> int:
    """Start, print the environment, wait for a signal, stop."""
    ca = ensure_ca(args.ca_dir)
    # aiohttp reads SSL_CERT_FILE at import time; set it before importing the simulator.
    os.environ["SSL_CERT_FILE"] = str(ca.cert_path)
    from azsim.simulator import Simulator  # noqa: PLC0415 - must follow SSL_CERT_FILE

    spec = json.loads(args.seed_file.read_text()) if args.seed_file else None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    azurite = None if args.no_azurite else Azurite()
    with contextlib.ExitStack() as stack:
        if azurite is not None:
            stack.enter_context(azurite)  # --disableTelemetry: see azsim.azurite
        sim = stack.enter_context(Simulator(ca_dir=args.ca_dir, seed=args.seed))
        env = dict(sim.env)
        if azurite is not None:
            env["AzureWebJobsStorage"] = azurite.connection_string
        if spec is not None:
            seeded = sim.seed(spec)
            sys.stdout.write(f"# seeded: {json.dumps(seeded)}\n")
        for name, value in env.items():
            sys.stdout.write(f"export {name}={shlex.quote(value)}\n")
        if args.env_file:
            args.env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        sys.stdout.write("azsim: ready\n")
        sys.stdout.flush()
        for url in args.webhook:
            threading.Thread(
                target=_subscribe,
                args=(sim, url, args.webhook_schema, stop),
                name="azsim-subscribe",
                daemon=True,
            ).start()
        while not stop.wait(0.2):
            pass
    sys.stdout.write("azsim: stopped\n")
    return 0


def _subscribe(sim: Simulator, url: str, schema: str, stop: threading.Event) -> None:
    """Create the subscription once ``url`` answers the handshake (Event Grid itself tries only once)."""
    from azsim.webhook import SubscriptionError  # noqa: PLC0415 - after SSL_CERT_FILE, as the simulator

    deadline = time.monotonic() + WEBHOOK_WAIT_S
    while True:
        try:
            created = sim.add_event_subscription(url, schema=schema)
        except SubscriptionError as exc:
            if time.monotonic() > deadline or stop.wait(1.0):
                sys.stdout.write(f"azsim: no subscription for {url}: {exc}\n")
                sys.stdout.flush()
                return
            continue
        sys.stdout.write(f"azsim: subscription {created['name']} delivers Key Vault events to {url}\n")
        sys.stdout.flush()
        return


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
