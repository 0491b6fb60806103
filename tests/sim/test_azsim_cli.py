"""`python -m azsim key|fault|cluster|subscribe|...` against a running simulator, and `serve` with Azurite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def azsim(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m azsim ARGS` in a subprocess, its output captured."""
    return subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "azsim", *args],
        cwd=REPO,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_key_commands_create_disable_and_enable_versions(world):
    """`key new` creates a version and its event; `key disable`/`enable` act on the newest or the named version."""
    sim = world.sim
    proc = azsim("key", "new", world.vault, "cmk", "--size", "3072")
    assert proc.returncode == 0, proc.stderr
    newest = sim.latest_version(world.vault, "cmk")
    assert proc.stdout.startswith(f"created {world.key_url(newest)} (event ")
    assert sim.events[-1]["data"]["Version"] == newest
    assert sim.key_versions(world.vault, "cmk")[-1]["size"] == 3072
    assert azsim("key", "disable", world.vault, "cmk").returncode == 0
    assert sim.key_versions(world.vault, "cmk")[-1]["enabled"] is False
    assert azsim("key", "enable", world.vault, "cmk", newest).returncode == 0
    assert sim.key_versions(world.vault, "cmk")[-1]["enabled"] is True
    events = len(sim.events)
    assert azsim("key", "new", world.vault, "cmk", "--no-event").stdout.endswith("(no event)\n")
    assert len(sim.events) == events
    listed = json.loads(azsim("key", "list", world.vault, "cmk").stdout)
    assert [v["version"] for v in listed][-2] == newest


async def test_fault_inject_and_rate_reach_arm(world, arm_client):
    """The next two GETs answer 503, then 200; a 100 % 429 rate answers 429 until `fault clear`."""
    assert azsim("fault", "inject", "--fault", "503", "--count", "2", "--method", "GET").returncode == 0
    assert [(await arm_client.call("GET", world.cluster_id)).status for _ in range(3)] == [503, 503, 200]
    assert azsim("fault", "rate", "429=1.0").returncode == 0
    assert (await arm_client.call("GET", world.cluster_id)).status == 429
    assert azsim("fault", "clear").returncode == 0
    assert (await arm_client.call("GET", world.cluster_id)).status == 200
    bad = azsim("fault", "rate", "429=lots")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: fault rate '429=lots'")


def test_cluster_commands(world):
    """`cluster show` prints the ARM JSON, `cluster status` sets clusterStatus, `cluster fail-next` fails the next operation."""
    shown = json.loads(azsim("cluster", "show", world.cluster_id).stdout)
    assert shown["id"] == world.cluster_id
    assert azsim("cluster", "status", world.cluster_id, "Inaccessible").returncode == 0
    assert world.sim.cluster(world.cluster_id)["properties"]["clusterStatus"] == "Inaccessible"
    assert azsim("cluster", "fail-next", world.cluster_id, "--code", "KeyVaultAccessDenied").returncode == 0
    missing = azsim("cluster", "show", world.cluster_id + "-nope")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: simulator answered 404")
    assert len(missing.stderr.strip().splitlines()) == 1


def test_subscribe_refuses_an_endpoint_that_fails_the_handshake(world):
    """`subscribe` to an endpoint that does not answer the validation handshake exits 1 with the reason."""
    proc = azsim("subscribe", "http://127.0.0.1:9/api/events")
    assert proc.returncode == 1
    assert "validation handshake with http://127.0.0.1:9/api/events failed" in proc.stderr


def test_control_commands_without_a_simulator_say_how_to_start_one():
    """No AZSIM_CONTROL_URL, or nothing listening there: exit 2 with a one-line hint."""
    env = {k: v for k, v in os.environ.items() if k != "AZSIM_CONTROL_URL"}
    proc = azsim("key", "new", "kv", "k", env=env)
    assert proc.returncode == 2
    assert "AZSIM_CONTROL_URL is not set" in proc.stderr
    proc = azsim("events", env={**env, "AZSIM_CONTROL_URL": "http://127.0.0.1:9"})
    assert proc.returncode == 2
    assert "start one with `python -m azsim serve`" in proc.stderr


def test_serve_starts_azurite_without_telemetry(tmp_path):
    """`azsim serve` also starts Azurite (--disableTelemetry) and prints AzureWebJobsStorage; Azurite answers."""
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    proc = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "azsim", "serve", "--ca-dir", str(tmp_path / "ca")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("azsim: ready"):
                break
        exported = dict(
            line.removeprefix("export ").rstrip("\n").split("=", 1)
            for line in lines
            if line.startswith("export ")
        )
        conn = exported["AzureWebJobsStorage"].strip("'")
        queue = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)["QueueEndpoint"]
        port = queue.split(":")[2].split("/")[0]
        cmdlines = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--queuePort" in args and port.encode() in args:
                cmdlines.append(args)
        assert cmdlines, "no Azurite process on the printed port"
        assert all(b"--disableTelemetry" in args for args in cmdlines)
        from azure.storage.queue import QueueServiceClient

        with QueueServiceClient.from_connection_string(conn) as queues:
            queues.create_queue("answers")  # Azurite answers, with the printed connection string
            assert [q.name for q in queues.list_queues()] == ["answers"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "azsim: stopped" in out


def test_serve_webhook_subscribes_once_the_endpoint_is_up(tmp_path):
    """`azsim serve --webhook URL` waits for the endpoint, validates it, then delivers each new key version there."""
    import http.server
    import socket
    import threading

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    received: list[tuple[str, object]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            kind = self.headers["aeg-event-type"]
            received.append((kind, body))
            answer = (
                json.dumps({"validationResponse": body[0]["data"]["validationCode"]})
                if kind == "SubscriptionValidation"
                else ""
            )
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer.encode())

        def log_message(self, *args) -> None:
            pass

    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {
                "vaults": [{"name": "hook-kv", "subscription": "s"}],
                "keys": [{"vault": "hook-kv", "name": "cmk"}],
            }
        )
    )
    env = {
        k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and k != "AZSIM_CONTROL_URL"
    }
    proc = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "azsim", "serve", "--no-azurite", "--ca-dir", str(tmp_path / "ca"), "--seed-file", str(seed),
         "--webhook", f"http://127.0.0.1:{port}/api/events"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    server = None
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("azsim: ready"):
                break
        control = next(line for line in lines if line.startswith("export AZSIM_CONTROL_URL="))
        env["AZSIM_CONTROL_URL"] = control.split("=", 1)[1].strip().strip("'")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Hook)  # up only now
        threading.Thread(target=server.serve_forever, daemon=True).start()
        subscribed = proc.stdout.readline()
        assert subscribed.startswith("azsim: subscription "), subscribed
        assert azsim("key", "new", "hook-kv", "cmk", env=env).returncode == 0
        deadline = time.monotonic() + 10
        while not any(kind == "Notification" for kind, _ in received) and time.monotonic() < deadline:
            time.sleep(0.05)
        kinds = [kind for kind, _ in received]
        assert kinds == ["SubscriptionValidation", "Notification"]
        assert received[1][1][0]["eventType"] == "Microsoft.KeyVault.KeyNewVersionCreated"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        if server is not None:
            server.shutdown()
            server.server_close()
    assert proc.returncode == 0
