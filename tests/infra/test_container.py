"""The Dockerfile: it runs `rotation serve` as the process tests run it, and refuses to start unkeyed.

It is built only where a container runtime answers; tests/app/test_serve.py covers the process itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from rotation.cli.main import build_parser
from rotation.store.jobs import QUEUE_NAME
from tests.helpers.paths import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def entrypoint() -> list[str]:
    """The Dockerfile's ENTRYPOINT as an argv list."""
    [args] = [json.loads(rest) for word, rest in instructions() if word == "ENTRYPOINT"]
    return args


def test_image_runs_serve_on_its_exposed_port_as_a_user():
    """ENTRYPOINT is `python -m rotation ... serve` on 0.0.0.0 at the EXPOSEd port; the app's host.json is beside the package; not root."""
    args = entrypoint()
    assert args[:3] == ["python", "-m", "rotation"]
    parsed = build_parser().parse_args(args[3:])
    assert (parsed.command, parsed.host, parsed.log_format) == ("serve", "0.0.0.0", "json")  # noqa: S104
    exposed = [rest for word, rest in instructions() if word == "EXPOSE"]
    assert exposed == [str(parsed.port)]
    copies = [rest for word, rest in instructions() if word == "COPY"]
    assert "host.json ./" in copies
    assert "rotation ./rotation" in copies
    assert any("requirements.txt" in rest for word, rest in instructions() if word == "RUN")
    [user] = [rest for word, rest in instructions() if word == "USER"]
    assert user not in {"0", "root"}


def test_image_command_refuses_to_start_without_a_key(tmp_path):
    """The image's own command, without ROTATION_HTTP_KEY, exits 2 with one line instead of serving unauthenticated."""
    args = entrypoint()
    proc = subprocess.run(  # noqa: S603 - the Dockerfile's argv, with this interpreter
        [sys.executable, *args[1:]],
        cwd=ROOT,
        env={"AzureWebJobsStorage": "UseDevelopmentStorage=true", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "error: ROTATION_HTTP_KEY is required to listen on 0.0.0.0 (only loopback may go without)"
    )


def test_deploy_doc_scales_on_the_job_queue():
    """docs/deploy.md's container section scales with the azure-queue rule on the queue the worker reads."""
    text = (ROOT / "docs" / "deploy.md").read_text().split("## Run as a container", 1)[1]
    assert f"queueName: '{QUEUE_NAME}'" in text
    assert "azureQueue" in text
    assert "ROTATION_HTTP_KEY" in text


def _runtime() -> str | None:
    for name in ("docker", "podman"):
        path = shutil.which(name)
        if path is None:
            continue
        info = subprocess.run([path, "info"], capture_output=True, check=False, timeout=30)  # noqa: S603
        if info.returncode == 0:
            return path
    return None


def test_image_builds_where_a_container_runtime_runs():
    """With a reachable docker or podman, the image builds and its CLI answers."""
    runtime = _runtime()
    if runtime is None:
        pytest.skip("no container runtime reachable here; the process itself is tested in test_serve.py")
    subprocess.run([runtime, "build", "-t", "cmk-rotator:test", str(ROOT)], check=True, timeout=900)  # noqa: S603
    proc = subprocess.run(  # noqa: S603
        [
            runtime,
            "run",
            "--rm",
            "--entrypoint",
            "python",
            "cmk-rotator:test",
            "-m",
            "rotation",
            "serve",
            "--help",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--grace" in proc.stdout
