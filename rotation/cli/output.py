"""What the CLI says and how it ends: exit codes, the errors that choose them, text and JSON output.

Exit codes (README.md, "Operate"): 0 done, 1 a cluster failed or a request was refused, 2 usage error or
malformed input, 130 interrupted. Everything printed goes through `printable` (answers and stored text may
hold terminal escapes) or `json.dumps` (ASCII-only); an error is one line on stderr.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from rotation.untrusted import printable

if TYPE_CHECKING:
    from rotation.outcomes import RotationResult

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for SIGINT


class UsageError(Exception):
    """Bad arguments or malformed input: exit 2 with a one-line message."""


class Refused(Exception):
    """A well-formed request the rotator will not carry out: exit 1 with a one-line message."""


def out(line: str = "") -> None:
    """One line on stdout, escaped."""
    print(printable(line))  # noqa: T201 - answers and stored text may hold terminal escapes: never raw


def err(line: str) -> None:
    """One line on stderr, escaped."""
    print(printable(line), file=sys.stderr)  # noqa: T201


def out_json(doc: object) -> None:
    """``doc`` as indented JSON on stdout."""
    print(json.dumps(doc, indent=2, default=str))  # noqa: T201 - ASCII-only: control characters are escaped


def error(message: str, *, prefix: str = "error: ") -> None:
    """The first line of ``message`` on stderr, after ``prefix``: the contract is one line."""
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"{prefix}{printable(first)}", file=sys.stderr)  # noqa: T201


def print_results(results: list[RotationResult], *, as_json: bool) -> None:
    """Each result as `format_result`'s line (and a dry run's body), or as JSON."""
    if as_json:
        docs: Any = [r.to_dict() for r in results]
        print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))  # noqa: T201
        return
    for r in results:
        print(printable(format_result(r)))  # noqa: T201
        if r.body is not None:
            print(json.dumps(r.body, indent=2))  # noqa: T201


def format_result(r: RotationResult) -> str:
    """One human line per cluster: outcome, cluster, key and versions, attempts, time, reason."""
    versions = f"{_short(r.from_version)} -> {_short(r.to_version)}"
    error_code = f" [{r.error_code}]" if r.error_code else ""
    return (
        f"{r.outcome.value:<17} {r.cluster_id}  key={r.key or '-'}  {versions}  "
        f"attempts={r.attempts} {r.duration_s:.2f}s  {r.reason}{error_code}"
    )


def _short(version: str | None) -> str:
    return version[:8] if version else "-"


class ProgressBar:
    """``reconcile [#####.....] 120/200`` on ``stream`` (stderr), redrawn in place; only on a terminal."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._label = label
        self._on = self._stream.isatty()
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        """Draw ``done`` of ``total``."""
        if not self._on:
            return
        width = 30
        filled = width * done // total if total else width
        self._stream.write(f"\r{self._label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line (when one was drawn)."""
        if self._on and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
