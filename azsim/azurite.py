"""Start and stop Azurite (the storage emulator, from ./node_modules) on free loopback ports."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

# Azurite's well-known development account (public, documented; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
REPO_ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Azurite:
    """A running Azurite process with blob, queue and table services on 127.0.0.1."""

    binary: Path = field(default_factory=lambda: REPO_ROOT / "node_modules" / ".bin" / "azurite")
    blob_port: int = field(default_factory=_free_port)
    queue_port: int = field(default_factory=_free_port)
    table_port: int = field(default_factory=_free_port)
    _proc: subprocess.Popen[bytes] | None = None
    _workdir: str | None = None

    @property
    def connection_string(self) -> str:
        """A connection string for all three services (what ``AzureWebJobsStorage`` holds)."""
        base = f"http://127.0.0.1:{{}}/{ACCOUNT}"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={base.format(self.blob_port)};QueueEndpoint={base.format(self.queue_port)};"
            f"TableEndpoint={base.format(self.table_port)};"
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start Azurite in memory, without telemetry, and wait until every port listens."""
        if not self.binary.exists():
            raise RuntimeError(f"{self.binary} is missing: run `npm install` (make setup does)")
        # Azurite writes metadata to its working directory even in memory mode: keep it out of the repo.
        self._workdir = tempfile.mkdtemp(prefix="azurite-")
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [
                str(self.binary),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.blob_port),
                "--queueHost",
                "127.0.0.1",
                "--queuePort",
                str(self.queue_port),
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
                str(self.table_port),
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--silent",
                "--skipApiVersionCheck",
            ],
            cwd=self._workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        for port in (self.blob_port, self.queue_port, self.table_port):
            while True:
                if self._proc.poll() is not None:
                    err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                    raise RuntimeError(f"azurite exited with {self._proc.returncode}: {err.strip()[:500]}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"azurite did not listen on {port} within {timeout} s")
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the process and remove its folder."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
