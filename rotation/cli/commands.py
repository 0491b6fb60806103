"""The registry's commands: register, unregister, list, discover, history, doctor and poison.

Each builds one `Service` (clients for ARM, Key Vault and storage) for its run, does its work, prints
(`rotation.cli.output`), and returns the exit code of the README's CLI contract: 0 done, 1 a cluster failed
or a request was refused, 2 malformed input. The commands that rotate are in `rotation.cli.rotate`.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any

from rotation.cli.output import EXIT_FAILED, EXIT_OK, UsageError, err, out, out_json
from rotation.errors import NotFoundError
from rotation.ids import InvalidResourceId, parse_cluster_id
from rotation.outcomes import Outcome
from rotation.service.process import Service
from rotation.service.registration import RegistrationRefused, watched_dict
from rotation.service.runtime import Runtime

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from rotation.settings import Settings
    from rotation.store.history import HistoryEntry
    from rotation.store.watch import WatchedCluster


_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _cluster_arg(raw: str) -> str:
    try:
        return str(parse_cluster_id(raw))
    except InvalidResourceId as exc:
        raise UsageError(str(exc)) from None


async def register(args: argparse.Namespace, settings: Settings) -> int:
    """GET the cluster, refuse with a reason or record it, and print what was found."""
    cluster_id = _cluster_arg(args.cluster_id)

    async with Service.create(settings) as service:
        try:
            watched, report = await service.registration.register_and_check(cluster_id, owner=args.owner)
        except RegistrationRefused as exc:
            err(f"error: refused: {exc}")
            return EXIT_FAILED
        if args.json:
            out_json({**watched_dict(watched), "doctor": report.to_dict()})
        else:
            out(f"watching {watched.cluster_id}")
            out(f"  vault    https://{watched.vault_host}")
            out(f"  key      {watched.key_name}")
            out(f"  version  {watched.current_version or '(versionless)'}")
            out(f"  identity {watched.identity}")
            out(f"  owner    {watched.owner or '-'}")
            problems = report.problems()
            out(f"  doctor   {len(report.findings) - len(problems)} of {len(report.findings)} checks pass")
            for f in problems:
                out(f"  {f.status.value.upper():<4}     {f.check}  {f.reason}")
        return EXIT_OK


async def unregister(args: argparse.Namespace, settings: Settings) -> int:
    """Remove the cluster from the registry (history is kept)."""
    cluster_id = _cluster_arg(args.cluster_id)

    async with Service.create(settings) as service:
        if not await service.registry.watched.remove(parse_cluster_id(cluster_id)):
            err(f"error: not watched: {cluster_id}")
            return EXIT_FAILED
        out(f"unregistered {cluster_id}")
        return EXIT_OK


def format_watched_table(rows: list[WatchedCluster]) -> list[str]:
    """The `list` table: one line per cluster."""
    header = f"{'CLUSTER':<24} {'KEY':<40} {'VERSION':<11} {'STATE':<9} {'LAST OUTCOME':<16} {'AT':<20} ID"
    lines = [header]
    for w in rows:
        name = w.cluster_id.rsplit("/", 1)[-1]
        at = w.last_outcome_at.strftime("%Y-%m-%d %H:%M:%S") if w.last_outcome_at else "-"
        version = w.current_version[:8] if w.current_version else "versionless"
        outcome = w.last_outcome or "-"
        lines.append(
            f"{name:<24} {w.key:<40} {version:<11} {w.state:<9} {outcome:<16} {at:<20} {w.cluster_id}"
        )
    return lines


async def list_clusters(args: argparse.Namespace, settings: Settings) -> int:
    """Print the watched clusters."""
    async with Service.create(settings) as service:
        rows = [w async for w in service.registry.watched.iterate()]
        rows.sort(key=lambda w: (w.key, w.cluster_id.lower()))
        if args.json:
            out_json([watched_dict(w) for w in rows])
        else:
            for line in format_watched_table(rows):
                out(line)
        return EXIT_OK


async def discover(args: argparse.Namespace, settings: Settings) -> int:
    """List the subscription's CMK clusters and whether each is watched."""
    subscription = args.subscription.strip()
    if not _GUID.fullmatch(subscription):
        # ARM answers 400 InvalidSubscriptionId for such an id; say so before asking it.
        raise UsageError(f"--subscription {subscription!r} is not a subscription id (a GUID)")

    async with Service.create(settings) as service:
        found: list[dict[str, Any]] = []
        try:
            async for cluster in service.runtime.clusters.list_clusters(subscription):
                watched = (
                    await service.registry.watched.get(parse_cluster_id(cluster.id)) if cluster.id else None
                )
                found.append(
                    {
                        "cluster_id": cluster.id,
                        "cmk": cluster.is_cmk,
                        "key_url": cluster.key_url,
                        "watched": watched is not None,
                    }
                )
        except NotFoundError as exc:
            err(f"error: subscription not found: {exc}")
            return EXIT_FAILED
        cmk = [f for f in found if f["cmk"]]
        if args.json:
            out_json(cmk)
        else:
            for f in cmk:
                out(f"{'watched' if f['watched'] else 'NOT WATCHED':<12} {f['cluster_id']}  {f['key_url']}")
            out(
                f"{len(cmk)} CMK cluster(s), {sum(f['watched'] for f in cmk)} watched, "
                f"{len(found) - len(cmk)} service-managed not shown"
            )
        return EXIT_OK


async def history(args: argparse.Namespace, settings: Settings) -> int:
    """Print a cluster's history, newest first."""
    cluster_id = _cluster_arg(args.cluster_id)
    if not 1 <= args.limit <= 500:  # noqa: PLR2004
        raise UsageError("--limit must be from 1 to 500")

    async with Service.create(settings) as service:
        # Text shows what changed or failed unless --all; --json is for scripts and keeps every entry.
        everything = args.all or args.json
        fetch = args.limit if everything else HISTORY_SCAN
        read = await service.registry.history.recent(parse_cluster_id(cluster_id), limit=fetch)
        entries = read if everything else [e for e in read if e.outcome not in QUIET_OUTCOMES][: args.limit]
        if args.json:
            out_json([e.to_dict() for e in entries])
            return EXIT_OK
        for e in entries:
            out(format_history_entry(e))
        hidden = 0 if args.all else sum(1 for e in read if e.outcome in QUIET_OUTCOMES)
        if not entries:
            out(f"no history for {cluster_id}" if not read else f"nothing changed or failed for {cluster_id}")
        if hidden:
            out(f"({hidden} skip(s) and dry run(s) not shown; --all shows them)")
        return EXIT_OK


# `history` shows what changed or failed; these (nothing was changed, nothing went wrong) only with --all.
QUIET_OUTCOMES = frozenset(
    o.value
    for o in (
        Outcome.ALREADY_CURRENT,
        Outcome.STALE_EVENT,
        Outcome.VERSIONLESS,
        Outcome.DRY_RUN,
        Outcome.IGNORED,
    )
)
HISTORY_SCAN = 500  # entries read to find --limit that changed or failed


def format_history_entry(e: HistoryEntry) -> str:
    """One history line: time, outcome, trigger, versions, event, reason and the ARM error (code: message)."""
    versions = f"{(e.from_version or '-')[:8]} -> {(e.to_version or '-')[:8]}"
    error = ""
    if e.error_code or e.error_message:
        message = e.error_message if e.error_message and e.error_message not in e.reason else None
        error = " [" + ": ".join(part for part in (e.error_code, message) if part) + "]"
    return (
        f"{e.at:%Y-%m-%d %H:%M:%S}  {e.outcome:<16} {e.trigger or '-':<9} {versions}  "
        f"event={e.event_id or '-'}  {e.reason}{error}"
    )


async def doctor(args: argparse.Namespace, settings: Settings) -> int:
    """`rotation doctor`: one line per check (or JSON); exit 1 when any check fails."""
    from rotation.doctor.checks import Doctor  # noqa: PLC0415
    from rotation.doctor.report import DoctorReport, format_report  # noqa: PLC0415

    report: DoctorReport
    if args.cluster_id:
        cluster_id = _cluster_arg(args.cluster_id)
        runtime = Runtime.create(settings)
        try:
            async with Doctor.for_runtime(runtime) as checker:
                report = await checker.check_many([cluster_id])
        finally:
            await runtime.close()
    else:
        async with Service.create(settings) as service:
            report = await service.registration.doctor()
    if args.json:
        doc = report.to_dict()
        if args.problems:
            doc["clusters"] = [
                {**c, "checks": [f for f in c["checks"] if f["status"] != "pass"]}
                for c in doc["clusters"]
                if c["status"] != "pass"
            ]
        out_json(doc)
    else:
        for line in format_report(report, problems_only=args.problems):
            out(line)
    return EXIT_FAILED if report.failed else EXIT_OK


async def poison(args: argparse.Namespace, settings: Settings) -> int:
    """`poison list|retry|purge`: the jobs the queue gave up on, decoded with their last error."""
    from rotation.store.poison import PoisonQueue  # noqa: PLC0415

    ids = set(args.message_ids) or None
    if args.action == "list" and ids:
        raise UsageError("poison list takes no MESSAGE_ID")
    if args.action == "purge" and not args.yes:
        _confirm_purge(ids)

    async with Service.create(settings) as service:
        queue = PoisonQueue(
            service.queue.service_client,
            name=service.queue.name,
            allowed_suffixes=settings.allowed_vault_suffixes,
        )
        try:
            if args.action == "list":
                return await _poison_list(service, queue, as_json=args.json)
            if args.action == "retry":
                return await _poison_retry(queue, ids, as_json=args.json)
            deleted = await queue.purge(ids)
            if args.json:
                out_json({"deleted": deleted, "queue": queue.name})
            else:
                out(f"deleted {deleted} message(s) from {queue.name}")
            return EXIT_OK
        finally:
            await queue.close()


def _confirm_purge(ids: set[str] | None, *, ask: Callable[[str], str] = input) -> None:
    """Ask before deleting; without a terminal to ask on, refuse (exit 2) unless --yes was given."""
    if not sys.stdin.isatty():
        raise UsageError("poison purge deletes jobs for good: add --yes (no terminal to ask on)")
    what = f"{len(ids)} selected message(s)" if ids else "every message"
    answer = ask(f"delete {what} from rotation-jobs-poison? [y/N] ")
    if answer.strip().lower() not in {"y", "yes"}:
        raise UsageError("poison purge: not confirmed; nothing deleted")


async def _poison_list(service: Service, queue: Any, *, as_json: bool) -> int:  # noqa: ANN401
    items = await queue.peek()
    total = await queue.count()
    docs: list[dict[str, Any]] = []
    for item in items:
        doc = item.to_dict()
        doc["dequeue_count"] = None
        doc["last_error"] = None
        if item.job is not None:
            failed = await _last_failure(service, item.job.cluster_id)
            if failed is not None:
                doc["dequeue_count"] = failed.dequeue_count
                doc["last_error"] = {
                    "at": failed.at.isoformat(),
                    "error_code": failed.error_code,
                    "error_message": failed.error_message,
                    "reason": failed.reason,
                }
        docs.append(doc)
    if as_json:
        out_json({"queue": queue.name, "approximate_count": total, "jobs": docs})
        return EXIT_OK
    for doc in docs:
        out(format_poisoned(doc))
    shown = f"{len(docs)} of about {total}" if total > len(docs) else f"{len(docs)}"
    out(f"{shown} message(s) in {queue.name}" + (" (a peek shows at most 32)" if total > len(docs) else ""))
    return EXIT_OK


def format_poisoned(doc: dict[str, Any]) -> str:
    """One line per poison message: id, time, cluster, trigger, target, deliveries, last error."""
    at = (doc.get("inserted_on") or "-")[:19]
    if doc.get("job", True) is None:
        return f"{doc['message_id']}  {at}  not a job: {doc['problem']}"
    ids = doc.get("cluster_ids")
    clusters = f"{ids[0]} (+{len(ids) - 1} more)" if ids else doc.get("cluster_id")
    target = (doc.get("target_key_url") or "newest").rstrip("/").rsplit("/", 1)[-1][:8]
    error = doc.get("last_error")
    last = "-"
    if error:
        code = error.get("error_code")
        message = error.get("error_message") or error.get("reason")
        last = f"[{code}] {message}" if code else str(message)
    deliveries = doc.get("dequeue_count") if doc.get("dequeue_count") is not None else "-"
    return (
        f"{doc['message_id']}  {at}  {clusters}  trigger={doc['trigger']} target={target} "
        f"event={doc.get('event_id') or '-'} dequeue_count={deliveries}  last error: {last}"
    )


async def _last_failure(service: Service, cluster_id: str) -> HistoryEntry | None:
    entries = await service.registry.history.recent(parse_cluster_id(cluster_id), limit=20)
    return next((e for e in entries if e.outcome == Outcome.FAILED.value), None)


async def _poison_retry(queue: Any, ids: set[str] | None, *, as_json: bool) -> int:  # noqa: ANN401
    moved, left = await queue.retry(ids)
    missing = sorted((ids or set()) - {i.message_id for i in [*moved, *left]})
    if as_json:
        out_json(
            {
                "moved": [i.to_dict() for i in moved],
                "left": [i.to_dict() for i in left],
                "not_found": missing,
            }
        )
    else:
        for item in moved:
            what = (
                item.job.cluster_id
                if item.job
                else f"{len(item.batch.cluster_ids)} clusters"
                if item.batch
                else "-"
            )
            out(f"moved back  {item.message_id}  {what}")
        for item in left:
            out(f"left        {item.message_id}  not a job: {item.problem}")
        out(f"{len(moved)} job(s) moved back to {queue.jobs_name}")
    if missing:
        err(f"error: not in {queue.name}: {', '.join(missing)}")
        return EXIT_FAILED
    return EXIT_OK
