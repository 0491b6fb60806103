"""The operator's CLI, `python -m rotation`, as a subprocess: `run_cli` (blocking) and the `cli` fixture (async)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from azsim.azurite import Azurite
from azsim.simulator import Simulator
from rotation.ids import parse_cluster_id
from rotation.service.process import Service
from rotation.settings import Settings
from rotation.store.jobs import Job
from tests.helpers.app import forget_created
from tests.helpers.paths import ROOT


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """`python -m rotation ARGS` as a script runs it: no stdin, os.environ less ROTATION_*, plus ``env``.

    Fast retries; stdin closed, so there is no terminal to ask on.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATION_")}
    full_env.update(env or {})
    full_env.setdefault("ROTATION_RETRY_INITIAL_WAIT", "0.05")
    full_env.setdefault("ROTATION_RETRY_MAX_WAIT", "0.2")
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "rotation", *args],
        cwd=ROOT,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Cli:
    """`python -m rotation ARGS` in a subprocess with the simulator's settings and Azurite as storage."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    async def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the CLI with ``args``; its exit code and output."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rotation",
            *args,
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode is not None
        return subprocess.CompletedProcess(list(args), proc.returncode, out.decode(), err.decode())

    async def register(self, *cluster_ids: str) -> None:
        """Register clusters in-process (the `register` command itself is tested below)."""
        service = Service.create(Settings.from_env(self.env))
        try:
            for cluster_id in cluster_ids:
                await service.registration.register(cluster_id, owner=None)
        finally:
            await service.close()

    async def rows(self) -> dict[str, Any]:
        """Every watched cluster by id, read in-process (the `list` command itself is tested below)."""
        service = Service.create(Settings.from_env(self.env))
        try:
            return {w.cluster_id: w async for w in service.registry.watched.iterate()}
        finally:
            await service.close()

    async def execute(self, job: Job) -> None:
        """Run one job in-process, as the queue function would."""
        service = Service.create(Settings.from_env(self.env))
        try:
            await service.worker.execute(job)
        finally:
            await service.close()

    async def history(self, cluster_id: str) -> list:
        """The cluster's history, read in-process (the `history` command itself is tested elsewhere)."""
        service = Service.create(Settings.from_env(self.env))
        try:
            return await service.registry.history.recent(parse_cluster_id(cluster_id))
        finally:
            await service.close()


@pytest.fixture
async def cli(sim: Simulator, azurite: Azurite) -> AsyncIterator[Cli]:
    """The CLI with the simulator's settings and Azurite as storage; the test's registrations removed after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATION_")}
    env["AzureWebJobsStorage"] = azurite.connection_string
    env["ROTATION_RETRY_INITIAL_WAIT"] = "0.01"
    env["ROTATION_RETRY_MAX_WAIT"] = "0.05"
    yield Cli(env)
    service = Service.create(Settings.from_env(env))
    try:
        await forget_created(service)  # the registry tables are shared with other modules
    finally:
        await service.close()


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused command (log lines go to stderr too: take the error line)."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]
