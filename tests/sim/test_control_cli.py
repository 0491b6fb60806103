"""The control API and ``python -m azsim serve``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]


async def _call(method: str, url: str, body=None):
    async with (
        aiohttp.ClientSession(trust_env=True) as session,
        session.request(method, url, json=body) as resp,
    ):
        return resp.status, await resp.json()


async def test_control_api_seeds_and_creates_versions(sim):
    """The control API seeds resources, creates and updates key versions, lists events and reads and changes clusters."""
    base = os.environ["AZSIM_CONTROL_URL"]
    spec = {
        "vaults": [{"name": "ctl-kv", "subscription": "ctl-sub"}],
        "keys": [{"vault": "ctl-kv", "name": "cmk", "versions": 2}],
        "identities": [{"subscription": "ctl-sub", "resource_group": "rg", "name": "id-ctl"}],
        "clusters": [
            {
                "subscription": "ctl-sub",
                "resource_group": "rg",
                "name": "ctl-cluster",
                "key": {"vault": "ctl-kv", "name": "cmk"},
                "identity": "id-ctl",
            },
            {"subscription": "ctl-sub", "resource_group": "rg", "name": "ctl-plain"},
        ],
    }
    status, seeded = await _call("POST", f"{base}/_sim/seed", spec)
    assert status == 200
    versions = seeded["keys"]["ctl-kv/cmk"]
    assert len(versions) == 2
    cluster_id = seeded["clusters"]["ctl-cluster"]
    cluster = sim.cluster(cluster_id)
    cmk = cluster["properties"]["encryption"]["customerManagedKeyEncryption"]
    assert cmk["keyEncryptionKeyUrl"] == f"https://ctl-kv.vault.azure.net/keys/cmk/{versions[-1]}"
    assert "encryption" not in sim.cluster(seeded["clusters"]["ctl-plain"])["properties"]

    status, created = await _call("POST", f"{base}/_sim/keys/ctl-kv/cmk/versions", {"size": 3072})
    assert status == 200
    assert created["event"]["data"]["Version"] == created["version"]
    status, _ = await _call("PATCH", f"{base}/_sim/keys/ctl-kv/cmk/{created['version']}", {"enabled": False})
    assert status == 200
    status, events = await _call("GET", f"{base}/_sim/events?schema=cloudevents")
    assert events[-1]["specversion"] == "1.0"

    status, got = await _call("GET", f"{base}/_sim/cluster?id={cluster_id}")
    assert got["id"] == cluster_id
    await _call("POST", f"{base}/_sim/cluster-status", {"id": cluster_id, "status": "Inaccessible"})
    assert sim.cluster(cluster_id)["properties"]["clusterStatus"] == "Inaccessible"
    status, missing = await _call("GET", f"{base}/_sim/cluster?id=/subscriptions/x/nope")
    assert status == 404
    assert missing["error"]["code"] == "NotFound"


async def test_control_api_faults_config_and_requests(world, arm_client):
    """The control API configures, injects faults and fault rates, refuses unknown kinds and lists the requests."""
    base = os.environ["AZSIM_CONTROL_URL"]
    status, _ = await _call("POST", f"{base}/_sim/config", {"operation_seconds": 0, "list_page_size": 1})
    assert status == 200
    inject = {"service": "arm", "faults": [{"status": 500}, {"slow": 0.01}]}
    assert (await _call("POST", f"{base}/_sim/inject", inject))[0] == 200
    assert (await arm_client.call("GET", world.cluster_id)).status == 500
    assert (await arm_client.call("GET", world.cluster_id)).status == 200
    assert (await _call("POST", f"{base}/_sim/faults", {"rates": {"503": 1.0}}))[0] == 200
    assert (await arm_client.call("GET", world.cluster_id)).status == 503
    assert (await _call("POST", f"{base}/_sim/faults", {"rates": {}}))[0] == 200
    status, log = await _call("GET", f"{base}/_sim/requests")
    assert [r["fault"] for r in log if r["service"] == "arm"] == ["500", "slow", "503"]
    status, _ = await _call("POST", f"{base}/_sim/faults", {"rates": {"nope": 1}})
    assert status == 400


def test_cli_serve_prints_env_and_answers(tmp_path):
    """`azsim serve` with a seed file prints and writes the settings to export, and the served simulator answers."""
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps({"vaults": [{"name": "cli-kv", "subscription": "s"}]}))
    env_file = tmp_path / "azsim.env"
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env.pop("SSL_CERT_FILE", None)
    proc = subprocess.Popen(  # noqa: S603 - fixed argv
        [
            sys.executable,
            "-m",
            "azsim",
            "serve",
            "--ca-dir",
            str(tmp_path / "ca"),
            "--seed-file",
            str(seed_file),
            "--env-file",
            str(env_file),
        ],
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
            lines.append(line.rstrip("\n"))
            if line.startswith("azsim: ready"):
                break
        exported = dict(
            line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export ")
        )
        assert set(exported) >= {
            "HTTPS_PROXY",
            "NO_PROXY",
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "IDENTITY_ENDPOINT",
            "IDENTITY_HEADER",
            "AZSIM_CONTROL_URL",
        }
        assert exported["SSL_CERT_FILE"] == str(tmp_path / "ca" / "ca.pem")
        written = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        assert written["HTTPS_PROXY"] == exported["HTTPS_PROXY"]
        probe = (
            "import json, os, urllib.error, urllib.request\n"
            "url = os.environ['AZSIM_CONTROL_URL'] + '/_sim/health'\n"
            "print(json.load(urllib.request.urlopen(url, timeout=5))['ok'])\n"
            "try:\n"
            "    urllib.request.urlopen('https://cli-kv.vault.azure.net/keys?api-version=7.5', timeout=5)\n"
            "except urllib.error.HTTPError as exc:\n"
            "    print(exc.code, exc.headers['WWW-Authenticate'].split(',')[1].strip())\n"
        )
        answer = subprocess.run(  # noqa: S603 - fixed argv
            [sys.executable, "-c", probe],
            env={**env, **written},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert answer.stdout.splitlines() == ["True", '401 resource="https://vault.azure.net"']
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "azsim: stopped" in out


async def test_control_api_ties_versions_tampers_answers_and_trickles(world, arm_client):
    """Through the control API: a version in the same second, a raw hostile answer, a trickled answer."""
    base = os.environ["AZSIM_CONTROL_URL"]
    status, tied = await _call("POST", f"{base}/_sim/keys/{world.vault}/cmk/versions", {"tie": True})
    assert status == 200
    created = {v["version"]: v["created"] for v in world.sim.key_versions(world.vault, "cmk")}
    assert len(set(created.values())) == 1  # the new version shares the first one's second
    assert tied["version"] in created

    hostile = {"Azure-AsyncOperation": "https://management.azure.com:8443/x"}
    faults = [
        {"answer": {"status": 200, "body": '{"nextLink": "loop"}', "headers": hostile}},
        {"trickle": 0.02},
    ]
    assert (await _call("POST", f"{base}/_sim/inject", {"service": "arm", "faults": faults}))[0] == 200
    answer = await arm_client.call("GET", world.cluster_id)
    assert (answer.status, answer.body) == (200, {"nextLink": "loop"})
    assert answer.headers["azure-asyncoperation"] == hostile["Azure-AsyncOperation"]
    missing = world.cluster_id.replace("/orders", "/gone")
    started = time.monotonic()
    slow = await arm_client.call("GET", missing)  # a short real answer (404), byte by byte
    assert slow.status == 404
    assert slow.body["error"]["code"] == "ResourceNotFound"
    assert time.monotonic() - started >= 0.01 * len(json.dumps(slow.body)) * 0.9
    assert [r.fault for r in world.sim.requests if r.service == "arm"] == ["answer", "trickle"]
