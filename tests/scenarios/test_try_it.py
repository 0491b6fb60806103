"""README.md, "Try it by hand": `make up`'s script is started and every command of the section is run.

The commands run verbatim in a shell that sourced the env file `make up` wrote (only the `.sim/` directory is
a temporary one, and `make up` itself is the script it runs); after each new key version the test watches
the daemon's log for the rotations, as the reader watches the first terminal.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.paths import ROOT

README = ROOT / "README.md"
SHELL = shutil.which("bash") or "/bin/sh"  # `. FILE` sources it in either


def try_it_commands() -> list[str]:
    """The shell lines of the README's "Try it by hand" section, in order."""
    text = README.read_text()
    section = text.split("## Try it by hand\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_try_it_names_make_up_and_the_three_steps():
    """The section tells a newcomer to run `make up`, register a cluster, create a key version and read history."""
    text = README.read_text().split("## Try it by hand\n", 1)[1].split("\n## ", 1)[0]
    assert "`make up`" in text
    commands = try_it_commands()
    assert commands[0] == ". .sim/env"
    assert any(c.startswith("python -m rotation register ") for c in commands)
    assert any(c.startswith("python -m azsim key new ") for c in commands)
    assert any(c.startswith("python -m rotation history ") for c in commands)


def run(shell: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """One README line in a shell that sourced `make up`'s env file."""
    return subprocess.run(  # noqa: S603 - the README's own line
        [SHELL, "-c", f". {tmp_path / '.sim' / 'env'} && {shell}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _rotated(log: Path) -> int:
    return log.read_text().count("rotation.cluster_rotated") if log.exists() else 0


def test_try_it_by_hand_runs_as_written(tmp_path):
    """Each command of the section exits 0 against `make up`'s processes, and the log shows the rotations and retries."""
    up = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "scripts/up.py", "--dir", str(tmp_path / ".sim"), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out: list[str] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            out.append(line)
            if line.startswith("up: ready"):
                break
        assert up.poll() is None, "".join(out)
        log = tmp_path / ".sim" / "rotation.log"
        registered = 0
        for command in try_it_commands():
            shell = command.replace(".sim/", f"{tmp_path / '.sim'}/")
            before = _rotated(log)
            proc = run(shell, tmp_path)
            if command.startswith("python -m rotation history "):
                # The history row is written just after the log line: a reader who looks that fast runs it again.
                deadline = time.monotonic() + 10
                while "rotated" not in proc.stdout and time.monotonic() < deadline:
                    time.sleep(0.2)
                    proc = run(shell, tmp_path)
            assert proc.returncode == 0, f"{command}: exit {proc.returncode}: {proc.stderr.strip()}"
            assert "Traceback" not in proc.stderr
            if " register " in command:
                registered += 1
            if " key new " in command:
                deadline = time.monotonic() + 60
                while _rotated(log) < before + registered and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert _rotated(log) == before + registered, log.read_text()[-3000:]
            if command.startswith("python -m rotation history "):
                assert "rotated" in proc.stdout
        text = log.read_text()
        assert "rotation.retry_scheduled" in text  # the injected 429s, waited out
        assert "rotation.event_received" in text
    finally:
        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=90)
    assert up.returncode == 0, "".join(out) + rest
    assert "up: simulator and Azurite stopped (exit 0)" in rest
