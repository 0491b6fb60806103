"""``python -m rotation COMMAND``: the operator's interface (README.md, "Operate"; docs/runbook.md).

Exit codes: 0 done (every cluster rotated or skipped by a rule), 1 a cluster failed or a request was
refused, 2 usage error or malformed input. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from rotation.cli.output import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Refused,
    UsageError,
    error,
)
from rotation.errors import Interrupted, RotationError, ServiceError, TransientFailure
from rotation.logs import configure_cli_logging
from rotation.settings import STORAGE_SETTING, Settings, SettingsError

if TYPE_CHECKING:
    from collections.abc import Sequence

STORAGE_SERVICE = "storage"  # ServiceError.service of the registry and queue (rotation.store.clients.SERVICE)

logger = logging.getLogger(__name__)


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
        error(str(exc))
        return EXIT_USAGE
    configure_cli_logging(args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    settings: Settings | None = None
    try:
        settings = Settings.from_env(env)
        return _run(args, settings, env)
    except (UsageError, SettingsError) as exc:
        error(str(exc))
        return EXIT_USAGE
    except Refused as exc:
        error(str(exc))
        return EXIT_FAILED
    except TransientFailure as exc:
        error(f"failed: {exc}")
        return EXIT_FAILED
    except Interrupted as exc:
        error(str(exc))
        return EXIT_INTERRUPTED
    except ServiceError as exc:
        error(_storage_hint(exc, settings) if exc.service == STORAGE_SERVICE else str(exc))
        return EXIT_FAILED
    except RotationError as exc:
        error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the contract is one line, never a traceback
        error(f"unexpected error: {type(exc).__name__}: {exc}")
        return EXIT_FAILED


def _run(args: argparse.Namespace, settings: Settings, env: dict[str, str]) -> int:
    """Run the command in its own event loop; `serve` runs until it is stopped."""
    if args.command == "serve":
        from rotation.serve import daemon  # noqa: PLC0415 - aiohttp's server only for the daemon

        args.host_json = args.host_json or daemon.HOST_JSON
        return asyncio.run(daemon.serve(args, settings, env))
    return asyncio.run(_dispatch(args, settings))


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    # The commands' modules import the Azure SDK clients: only once a command runs (`--help` stays fast).
    from rotation.cli import commands, rotate  # noqa: PLC0415

    if args.command == "rotate":
        return await rotate.rotate(args, settings)  # a cluster, watched or not: storage is optional
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
        "replay": rotate.replay,
        "history": commands.history,
        "reconcile": rotate.reconcile,
        "doctor": commands.doctor,
        "poison": commands.poison,
    }
    return await handlers[args.command](args, settings)


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
