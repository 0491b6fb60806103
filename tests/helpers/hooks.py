"""Run the azd hook scripts with stand-in `az` and `azd` programs that record every call.

The stand-ins answer from rules given by the test (the first rule whose words all occur in the call
wins; anything else succeeds with no output), so a test states what Azure says and reads back what the
hook asked for. Nothing reaches Azure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HOOKS = Path(__file__).resolve().parents[2] / "infra" / "hooks"

STAND_IN = """#!{python}
import json, os, sys
program = os.path.basename(sys.argv[0])
args = sys.argv[1:]
with open(os.environ["FAKE_CLI_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps([program, *args]) + "\\n")
with open(os.environ["FAKE_CLI_RULES"], encoding="utf-8") as f:
    rules = json.load(f)
for rule in rules:
    if rule["program"] == program and all(word in args for word in rule["words"]):
        sys.stdout.write(rule["stdout"])
        sys.exit(rule["rc"])
"""


@dataclass
class Cli:
    """Stand-in `az`/`azd` on PATH, their rules and their call log."""

    root: Path
    rules: list[dict[str, object]] = field(default_factory=list)

    def answer(self, program: str, *words: str, stdout: str = "", rc: int = 0) -> None:
        """When `program` is called with all of `words`, print `stdout` and exit with `rc`."""
        self.rules.append({"program": program, "words": list(words), "stdout": stdout, "rc": rc})

    def run(self, hook: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """Run infra/hooks/`hook` with exactly `env` (plus PATH to the stand-ins) and return the result."""
        bin_dir = self.root / "bin"
        bin_dir.mkdir(exist_ok=True)
        for program in ("az", "azd"):
            path = bin_dir / program
            path.write_text(STAND_IN.format(python=sys.executable), encoding="utf-8")
            path.chmod(0o755)
        rules = self.root / "rules.json"
        rules.write_text(json.dumps(self.rules), encoding="utf-8")
        self.log.write_text("", encoding="utf-8")
        full_env = {
            "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin",
            "FAKE_CLI_LOG": str(self.log),
            "FAKE_CLI_RULES": str(rules),
            **env,
        }
        return subprocess.run(  # noqa: S603 - a script of this repository
            ["/bin/sh", str(HOOKS / hook)],
            env=full_env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    @property
    def log(self) -> Path:
        return self.root / "calls.jsonl"

    def calls(self, program: str | None = None) -> list[list[str]]:
        """Every recorded call (program name first), optionally of one program only."""
        lines = self.log.read_text(encoding="utf-8").splitlines()
        calls = [json.loads(line) for line in lines if line]
        return [call for call in calls if program is None or call[0] == program]

    def calls_with(self, *words: str) -> list[list[str]]:
        """The recorded calls containing all of `words`."""
        return [call for call in self.calls() if all(word in call for word in words)]


def shell_function(function_call: str) -> str:
    """Source infra/hooks/lib.sh and run one of its functions; return its standard output."""
    script = f'. "{HOOKS / "lib.sh"}"; {function_call}'
    result = subprocess.run(  # noqa: S603 - a script of this repository
        ["/bin/sh", "-c", script], capture_output=True, text=True, check=True, timeout=10
    )
    return result.stdout
