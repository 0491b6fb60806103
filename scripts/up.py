"""`make up`: the simulator, Azurite and `rotation serve`, wired as in Azure, until Ctrl-C.

1. `python -m azsim serve` (with Azurite) seeded with a vault, a key and three CMK clusters;
2. `python -m rotation serve` with the simulator's settings, its log shown here (and in DIR/rotation.log);
3. an Event Grid subscription from the simulator to the daemon's webhook (after the validation handshake);
4. DIR/env: the settings as `export` lines, so another shell can `. .sim/env` and run the CLIs;
5. the commands to try; then it waits for Ctrl-C (or SIGTERM) and stops the daemon, then the simulator.

README.md, "Try it by hand", walks through it (and tests/scenarios/test_try_it.py runs that section).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from azsim.cli import Control  # noqa: E402 - after the path is set

SUB_A = "11111111-1111-1111-1111-111111111111"
SUB_B = "22222222-2222-2222-2222-222222222222"
SEED = {
    "vaults": [{"name": "contoso-kv", "subscription": SUB_A, "resource_group": "rg-keys"}],
    "keys": [{"vault": "contoso-kv", "name": "cmk-docdb", "size": 3072}],
    "identities": [
        {"subscription": SUB_A, "resource_group": "rg-data", "name": "id-docdb-cmk"},
        {"subscription": SUB_B, "resource_group": "rg-data", "name": "id-docdb-cmk-eu"},
    ],
    "clusters": [
        {
            "subscription": sub,
            "resource_group": "rg-data",
            "name": name,
            "key": {"vault": "contoso-kv", "name": "cmk-docdb"},
            "identity": identity,
            "tags": {"team": "data"},
        }
        for sub, name, identity in (
            (SUB_A, "orders-prod", "id-docdb-cmk"),
            (SUB_A, "payments-prod", "id-docdb-cmk"),
            (SUB_B, "orders-eu", "id-docdb-cmk-eu"),
        )
    ],
}
READY = "up: ready"


def _pump(
    stream: IO[str], sinks: list[IO[str]], seen: list[str], ready: threading.Event, marker: str
) -> None:
    for line in stream:
        for sink in sinks:
            sink.write(line)
            sink.flush()
        seen.append(line)
        if marker in line:
            ready.set()
    ready.set()  # the process ended: stop waiting


def start_simulator(state: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`python -m azsim serve` with Azurite and the seed; return the process and its settings."""
    (state / "seed.json").write_text(json.dumps(SEED))
    proc = subprocess.Popen(  # noqa: S603 - fixed argv
        [
            sys.executable,
            "-m",
            "azsim",
            "serve",
            "--ca-dir",
            str(state / "ca"),
            "--seed-file",
            str(state / "seed.json"),
            "--env-file",
            str(state / "azsim.env"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # Ctrl-C reaches this script only; it stops the children in order
    )
    for line in proc.stdout or ():
        if line.startswith("azsim: ready"):
            break
    else:
        raise SystemExit(f"up: the simulator exited with {proc.wait()}")
    env = dict(line.split("=", 1) for line in (state / "azsim.env").read_text().splitlines() if "=" in line)
    return proc, env


def start_daemon(
    env: dict[str, str], port: int, log: IO[str]
) -> tuple[subprocess.Popen[str], int, threading.Thread]:
    """`python -m rotation serve`; its log lines go to this terminal and to ``log``."""
    proc = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "rotation", "serve", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if proc.stderr is None:  # pragma: no cover - stderr=PIPE above
        raise SystemExit("up: no pipe from rotation serve")
    seen: list[str] = []
    ready = threading.Event()
    pump = threading.Thread(
        target=_pump,
        args=(proc.stderr, [sys.stdout, log], seen, ready, "rotation.serve_started"),
        daemon=True,
    )
    pump.start()
    ready.wait(60)
    started = next((line for line in seen if "rotation.serve_started" in line), None)
    if started is None:
        raise SystemExit(f"up: rotation serve did not start:\n{''.join(seen)[-2000:]}")
    fields = dict(part.split("=", 1) for part in started.split() if "=" in part)
    return proc, int(fields["port"]), pump


def write_shell_env(state: Path, env: dict[str, str]) -> Path:
    """DIR/env: `export` lines for a shell, the virtualenv's bin first on PATH."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    lines.append(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"')
    path = state / "env"
    path.write_text("\n".join(lines) + "\n")
    return path


def stop(proc: subprocess.Popen[str], name: str) -> None:
    """SIGTERM, then wait (kill after 40 s)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(f"up: {name} stopped (exit {proc.returncode})", flush=True)


def main() -> int:
    """Bring everything up, print the commands to try, wait for Ctrl-C, stop everything."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / ".sim", help="state directory (default .sim)")
    parser.add_argument("--port", type=int, default=8080, help="rotation serve's port (0: any free one)")
    args = parser.parse_args()
    state: Path = args.dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    stopping = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())

    simulator, env = start_simulator(state)
    daemon = None
    try:
        control = Control(env["AZSIM_CONTROL_URL"])
        control.call("POST", "/_sim/config", {"operation_seconds": 2.0, "poll_interval": 0.5})
        with (state / "rotation.log").open("w") as log:
            daemon, port, pump = start_daemon(env, args.port, log)
            endpoint = f"http://127.0.0.1:{port}/api/events"
            control.call("POST", "/_sim/event-subscriptions", {"endpoint": endpoint, "vault": "contoso-kv"})
            shell_env = write_shell_env(state, env)
            orders = (
                f"/subscriptions/{SUB_A}/resourceGroups/rg-data"
                "/providers/Microsoft.DocumentDB/mongoClusters/orders-prod"
            )
            shown = os.path.relpath(shell_env, Path.cwd())
            shown = str(shell_env) if shown.startswith("..") else shown
            print(
                f"\nup: simulator, Azurite and rotation serve (http://127.0.0.1:{port}/api/) are running;"
                f" Event Grid delivers contoso-kv's key events to {endpoint}\n"
                f"up: in another terminal, in {Path.cwd()}, try:\n\n"
                f"    . {shown}\n"
                f"    python -m rotation register {orders} --owner team-data\n"
                f"    python -m azsim key new contoso-kv cmk-docdb\n"
                f"    python -m rotation history {orders}\n\n"
                f"up: the rotation shows in the log below (and in {state / 'rotation.log'});"
                " Ctrl-C stops it all\n"
                f"{READY}",
                flush=True,
            )
            while not stopping.wait(0.5):
                if daemon.poll() is not None:
                    print(f"up: rotation serve exited with {daemon.returncode}", flush=True)
                    break
            stop(daemon, "rotation serve")
            pump.join(5)
    finally:
        if daemon is not None and daemon.poll() is None:
            stop(daemon, "rotation serve")
        stop(simulator, "simulator and Azurite")
    return 0 if daemon is not None and daemon.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
