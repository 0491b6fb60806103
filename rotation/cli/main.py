"""``python -m rotation COMMAND``: the operator's interface (README.md, "Operate"; docs/runbook.md).

Exit codes: 0 done (every cluster rotated or skipped by a rule), 1 a cluster failed or a request was
refused, 2 usage error or malformed input. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from rotation.errors import ClusterBusy, Interrupted, RotationError, ServiceError, TransientFailure
from rotation.ids import InvalidKeyUrl, InvalidResourceId, parse_cluster_id, parse_key_url
from rotation.logs import configure_cli_logging
from rotation.outcomes import Outcome, RotationResult, exhausted
from rotation.settings import STORAGE_SETTING, Settings, SettingsError
from rotation.untrusted import printable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rotation.azure.keyvault import KeyVaultKeys
    from rotation.ids import KeyUrl
    from rotation.rotation_job import RotationRequest
    from rotation.service.runtime import Runtime

STORAGE_SERVICE = "storage"  # ServiceError.service of the registry and queue (rotation.store.clients.SERVICE)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for SIGINT

logger = logging.getLogger(__name__)


class UsageError(Exception):
    """Bad arguments or malformed input: exit 2 with a one-line message."""


class Refused(Exception):
    """A well-formed request the rotator will not carry out: exit 1 with a one-line message."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _common_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """``--log-format`` and ``-v``, on the main parser (defaults) and on every command (no defaults).

    A command's copy has no default, so an option given before the command is not reset by it, and one given
    after the command (``list --log-format json``) wins.
    """
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text" if defaults else argparse.SUPPRESS,
        help="log lines on stderr",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="log at DEBUG",
    )


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = _Parser(
        prog="python -m rotation",
        description="Keep CMK-encrypted DocumentDB clusters on the newest key version.",
    )
    _common_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    register = sub.add_parser("register", help="watch a cluster (GET it first; refuse with a reason)")
    register.add_argument("cluster_id", metavar="CLUSTER_ID")
    register.add_argument("--owner", help="team or contact recorded with the cluster")
    register.add_argument("--json", action="store_true", help="machine output")

    unregister = sub.add_parser("unregister", help="stop watching a cluster")
    unregister.add_argument("cluster_id", metavar="CLUSTER_ID")

    listing = sub.add_parser("list", help="watched clusters with their key, version, state and last outcome")
    listing.add_argument("--json", action="store_true", help="machine output")

    discover = sub.add_parser(
        "discover", help="every CMK cluster of a subscription and whether it is watched"
    )
    discover.add_argument("--subscription", required=True, metavar="SUB")
    discover.add_argument("--json", action="store_true", help="machine output")

    replay = sub.add_parser("replay", help="handle the events in FILE as the functions would, and wait")
    replay.add_argument(
        "file", metavar="FILE", help="JSON: an event, an array of events, or dead-letter records"
    )
    replay.add_argument("--dry-run", action="store_true", help="decide and report; send no PUT")
    replay.add_argument("--json", action="store_true", help="machine output")

    reconcile = sub.add_parser(
        "reconcile",
        help="one reconcile pass: rotate the clusters behind, here, and wait (exit 1 if one failed)",
    )
    reconcile.add_argument("--dry-run", action="store_true", help="report only; rotate and queue nothing")
    reconcile.add_argument(
        "--enqueue",
        action="store_true",
        help="hand the jobs to the deployed app's queue instead of running them",
    )
    reconcile.add_argument("--json", action="store_true", help="machine output only")
    reconcile.add_argument(
        "--doctor", action="store_true", help="also run the doctor's checks and log warn/fail findings"
    )

    history = sub.add_parser("history", help="a cluster's rotation history, newest first")
    history.add_argument("cluster_id", metavar="CLUSTER_ID")
    history.add_argument("--limit", type=int, default=50)
    history.add_argument(
        "--all",
        action="store_true",
        help="also skips and dry runs in the text (default: what changed or failed; --json has all)",
    )
    history.add_argument("--json", action="store_true", help="machine output")

    doctor = sub.add_parser(
        "doctor",
        help="check a cluster (or every watched one): key, vault, identity, access; exit 1 on a fail",
    )
    doctor.add_argument("cluster_id", metavar="CLUSTER_ID", nargs="?", help="default: every watched cluster")
    doctor.add_argument("--problems", action="store_true", help="only the warn and fail lines")
    doctor.add_argument("--json", action="store_true", help="machine output")

    poison = sub.add_parser("poison", help="jobs in rotation-jobs-poison: list, retry (move back) or purge")
    poison.add_argument("action", choices=("list", "retry", "purge"))
    poison.add_argument(
        "message_ids", metavar="MESSAGE_ID", nargs="*", help="retry/purge only these (default: all)"
    )
    poison.add_argument("--yes", action="store_true", help="purge without asking")
    poison.add_argument("--json", action="store_true", help="machine output")

    rotate = sub.add_parser("rotate", help="rotate one cluster, watched or not")
    rotate.add_argument("cluster_id", metavar="CLUSTER_ID")
    rotate.add_argument(
        "--key-url", help="versioned key URL to move to (default: newest usable version of its key)"
    )
    rotate.add_argument("--dry-run", action="store_true", help="decide and print the body; send no PUT")
    rotate.add_argument("--json", action="store_true", help="machine output")

    serve = sub.add_parser(
        "serve", help="run the daemon without the Functions host: webhook, queue worker, timer, HTTP routes"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default: 8080; 0 picks a free one)")
    serve.add_argument(
        "--grace",
        type=float,
        default=25.0,  # under Container Apps' default terminationGracePeriodSeconds (30 s)
        metavar="SECONDS",
        help="on SIGTERM, wait this long for jobs",
    )
    serve.add_argument(
        "--host-json", type=Path, default=None, metavar="PATH", help="queue settings (default: the app's)"
    )
    serve.add_argument(
        "--reconcile-jitter",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="random wait before each reconcile pass, spreading replicas (default: 30, as the function)",
    )
    for command in sub.choices.values():
        _common_options(command, defaults=False)
    return parser


def main(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> int:  # noqa: PLR0911
    """Run one command; return the exit code."""
    env = dict(os.environ) if env is None else env
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    configure_cli_logging(args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    settings: Settings | None = None
    try:
        settings = Settings.from_env(env)
        return _run(args, settings, env)
    except (UsageError, SettingsError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except Refused as exc:
        _error(str(exc))
        return EXIT_FAILED
    except TransientFailure as exc:
        _error(f"failed: {exc}")
        return EXIT_FAILED
    except Interrupted as exc:
        _error(str(exc))
        return EXIT_INTERRUPTED
    except ServiceError as exc:
        _error(_storage_hint(exc, settings) if exc.service == STORAGE_SERVICE else str(exc))
        return EXIT_FAILED
    except RotationError as exc:
        _error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the contract is one line, never a traceback
        _error(f"unexpected error: {type(exc).__name__}: {exc}")
        return EXIT_FAILED


def _run(args: argparse.Namespace, settings: Settings, env: dict[str, str]) -> int:
    """Run the command in its own event loop; `serve` runs until it is stopped."""
    if args.command == "serve":
        from rotation.serve import daemon  # noqa: PLC0415 - aiohttp's server only for the daemon

        args.host_json = args.host_json or daemon.HOST_JSON
        return asyncio.run(daemon.serve(args, settings, env))
    return asyncio.run(_dispatch(args, settings))


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "rotate":
        return await _rotate(args, settings)
    from rotation.cli import commands  # noqa: PLC0415 - storage clients only for the commands that need them

    if args.command == "doctor" and args.cluster_id:
        return await commands.doctor(args, settings)  # one named cluster: no registry needed
    if not settings.storage_configured:
        raise UsageError(
            "AzureWebJobsStorage is not set: the registry needs a connection string or "
            "AzureWebJobsStorage__accountName (identity-based)"
        )
    handlers = {
        "register": commands.register,
        "unregister": commands.unregister,
        "list": commands.list_clusters,
        "discover": commands.discover,
        "replay": commands.replay,
        "history": commands.history,
        "reconcile": commands.reconcile,
        "doctor": commands.doctor,
        "poison": commands.poison,
    }
    return await handlers[args.command](args, settings)


async def _rotate(args: argparse.Namespace, settings: Settings) -> int:
    from rotation.rotation_job import RotationRequest  # noqa: PLC0415 - keep `--help` fast
    from rotation.service.runtime import Runtime  # noqa: PLC0415

    dry_run = args.dry_run or settings.dry_run

    try:
        cluster_id = parse_cluster_id(args.cluster_id)
    except InvalidResourceId as exc:
        raise UsageError(str(exc)) from exc
    target = _target_arg(args.key_url, settings) if args.key_url else None
    if settings.storage_configured:
        from rotation.cli.commands import rotate_recorded  # noqa: PLC0415
        from rotation.store.jobs import Job  # noqa: PLC0415

        job = Job.new(str(cluster_id), trigger="manual", target_key_url=str(target) if target else None)
        result = await rotate_recorded(args, settings, job)
        _print_results([result], as_json=args.json)
        return rotate_exit_code(result)
    runtime = Runtime.create(settings)
    try:
        result = await _rotate_once(runtime, RotationRequest(cluster_id, target, dry_run=dry_run))
        if args.dry_run and target is None:
            await warn_newest_not_usable(runtime.keys, result)
    finally:
        await runtime.close()
    _print_results([result], as_json=args.json)
    return rotate_exit_code(result)


async def _rotate_once(runtime: Runtime, request: RotationRequest) -> RotationResult:
    accepted: list[str] = []

    async def on_accepted(url: str, _target: object) -> None:
        accepted.append(url)

    try:
        return await runtime.rotator.rotate(request, on_accepted=on_accepted)
    except asyncio.CancelledError:
        if accepted:  # nothing to record it in without storage: say what is still running
            raise Interrupted(still_running(accepted[-1])) from None
        raise
    except ClusterBusy as exc:
        return RotationResult(cluster_id=str(request.cluster_id), outcome=Outcome.FAILED, reason=str(exc))
    except TransientFailure as exc:
        return exhausted(str(request.cluster_id), exc)


# A `rotate` that was told what to do and refused it is a refused request (exit 1), not a rule skip.
_ROTATE_REFUSED = frozenset({Outcome.KEY_MISMATCH, Outcome.STALE_EVENT})


def _storage_hint(exc: ServiceError, settings: Settings | None) -> str:
    """A storage error, naming the endpoint and what to check when the account could not be reached."""
    if exc.status is not None or settings is None:
        return str(exc)
    from rotation.store.clients import storage_endpoints  # noqa: PLC0415

    try:
        endpoints = storage_endpoints(settings)
    except SettingsError:
        return str(exc)
    return (
        f"cannot reach storage at {endpoints.table_url} / {endpoints.queue_url} ({exc.message}): check "
        f"{STORAGE_SETTING} (account name, endpoints), that the account exists, and that this machine's "
        "network and the account's firewall allow it (locally: is Azurite running?)"
    )


def rotate_exit_code(result: RotationResult) -> int:
    """`rotate`'s exit code: 1 when the cluster failed or the request was refused, else 0.

    Refused: the cluster uses another key, or the target is older than the cluster's version.
    """
    refused = result.outcome.needs_attention or result.outcome in _ROTATE_REFUSED
    return EXIT_FAILED if refused else EXIT_OK


def _target_arg(raw: str, settings: Settings) -> KeyUrl:
    """``--key-url``: malformed is a usage error (exit 2); a vault not allowed is a refusal (exit 1)."""
    try:
        return parse_key_url(raw, allowed_suffixes=settings.allowed_vault_suffixes, require_version=True)
    except InvalidKeyUrl as exc:
        if _OUTSIDE_ALLOWED in exc.detail:
            raise Refused(f"refused: {exc}") from exc
        raise UsageError(str(exc)) from exc


_OUTSIDE_ALLOWED = "is not in an allowed vault domain"  # rotation.ids' reason for a foreign vault host


async def warn_newest_not_usable(keys: KeyVaultKeys, result: RotationResult) -> None:
    """After a dry run: warn when the key's newest version exists but is not usable.

    That version is not the target (the newest *usable* one is), so the dry run alone would not mention it.
    """
    from rotation.key_rules import check_newest  # noqa: PLC0415

    if result.key is None:
        return
    finding = await check_newest(keys, result.key, current_version=result.from_version)
    if finding is not None:
        _error(f"warning: {finding.reason}", prefix="")


def still_running(operation_url: str | None) -> str:
    """What an interrupted ``rotate`` says when ARM had accepted its write."""
    return f"operation {operation_url} is still running; `rotate` again resumes it"


def _print_results(results: list[RotationResult], *, as_json: bool) -> None:
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
    error = f" [{r.error_code}]" if r.error_code else ""
    return (
        f"{r.outcome.value:<17} {r.cluster_id}  key={r.key or '-'}  {versions}  "
        f"attempts={r.attempts} {r.duration_s:.2f}s  {r.reason}{error}"
    )


def _short(version: str | None) -> str:
    return version[:8] if version else "-"


def _error(message: str, *, prefix: str = "error: ") -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"{prefix}{printable(first)}", file=sys.stderr)  # noqa: T201
