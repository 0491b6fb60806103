"""`python -m rotation serve` as a real subprocess, its JSON log lines collected as they come."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from tests.helpers.paths import ROOT


class Daemon:
    """One `rotation serve` process on a free loopback port."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("ROTATION_")}
        full.update(env)
        full.setdefault("ROTATION_RETRY_INITIAL_WAIT", "0.05")
        full.setdefault("ROTATION_RETRY_MAX_WAIT", "0.2")
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "rotation", "--log-format", "json", "serve", "--port", "0", *args],
            cwd=ROOT,
            env=full,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = 0

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.raw.append(line.rstrip("\n"))
                with contextlib.suppress(ValueError):  # a line that is not JSON stays in `raw`
                    self.lines.append(json.loads(line))

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [d for d in self.lines if d.get("event") == name]

    def wait_for(self, name: str, timeout: float = 30.0, count: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name)
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader finish
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.stderr()[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {name} within {timeout} s; log: {self.stderr()[-3000:]}")

    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self.raw)

    def start(self) -> Daemon:
        started = self.wait_for("rotation.serve_started")[0]
        self.port = int(started["port"])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def terminate(self, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
