"""The registry-backed CLI commands: register, unregister, list, discover, replay, history, reconcile, poison.

Each builds one `Service` (clients for ARM, Key Vault and storage), does its work, prints, and returns the
exit code of the README's CLI contract: 0 done, 1 a cluster failed or a request was refused, 2 malformed
input.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rotation.cli.main import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    format_result,
    still_running,
    warn_newest_not_usable,
)
from rotation.errors import ClusterBusy, Interrupted, NotFoundError, TransientFailure
from rotation.events import EventIgnored, EventKind, EventRejected, KeyVersionEvent, parse_payload
from rotation.ids import InvalidResourceId, parse_cluster_id
from rotation.outcomes import Outcome, RotationResult, exhausted
from rotation.service.app import RegistrationRefused, Service, watched_dict
from rotation.untrusted import MAX_JSON_BYTES, JsonRefused, array_items, loads_bounded, printable

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from rotation.settings import Settings
    from rotation.store.history import HistoryEntry
    from rotation.store.jobs import Job
    from rotation.store.watch import WatchedCluster


_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _out(line: str = "") -> None:
    print(printable(line))  # noqa: T201 - answers and stored text may hold terminal escapes: never raw


def _err(line: str) -> None:
    print(printable(line), file=sys.stderr)  # noqa: T201


def _json(doc: object) -> None:
    print(json.dumps(doc, indent=2, default=str))  # noqa: T201 - ASCII-only: control characters are escaped


def _cluster_arg(raw: str) -> str:
    try:
        return str(parse_cluster_id(raw))
    except InvalidResourceId as exc:
        raise UsageError(str(exc)) from None


async def _with_service(settings: Settings, work: Any) -> int:  # noqa: ANN401
    service = Service.create(settings)
    try:
        code: int = await work(service)
        return code
    finally:
        await service.close()


async def register(args: argparse.Namespace, settings: Settings) -> int:
    """GET the cluster, refuse with a reason or record it, and print what was found."""
    cluster_id = _cluster_arg(args.cluster_id)

    async def work(service: Service) -> int:
        try:
            watched, report = await service.register_and_check(cluster_id, owner=args.owner)
        except RegistrationRefused as exc:
            _err(f"error: refused: {exc}")
            return EXIT_FAILED
        if args.json:
            _json({**watched_dict(watched), "doctor": report.to_dict()})
        else:
            _out(f"watching {watched.cluster_id}")
            _out(f"  vault    https://{watched.vault_host}")
            _out(f"  key      {watched.key_name}")
            _out(f"  version  {watched.current_version or '(versionless)'}")
            _out(f"  identity {watched.identity}")
            _out(f"  owner    {watched.owner or '-'}")
            problems = report.problems()
            _out(f"  doctor   {len(report.findings) - len(problems)} of {len(report.findings)} checks pass")
            for f in problems:
                _out(f"  {f.status.value.upper():<4}     {f.check}  {f.reason}")
        return EXIT_OK

    return await _with_service(settings, work)


async def unregister(args: argparse.Namespace, settings: Settings) -> int:
    """Remove the cluster from the registry (history is kept)."""
    cluster_id = _cluster_arg(args.cluster_id)

    async def work(service: Service) -> int:
        if not await service.registry.watched.remove(parse_cluster_id(cluster_id)):
            _err(f"error: not watched: {cluster_id}")
            return EXIT_FAILED
        _out(f"unregistered {cluster_id}")
        return EXIT_OK

    return await _with_service(settings, work)


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

    async def work(service: Service) -> int:
        rows = [w async for w in service.registry.watched.iterate()]
        rows.sort(key=lambda w: (w.key, w.cluster_id.lower()))
        if args.json:
            _json([watched_dict(w) for w in rows])
        else:
            for line in format_watched_table(rows):
                _out(line)
        return EXIT_OK

    return await _with_service(settings, work)


async def discover(args: argparse.Namespace, settings: Settings) -> int:
    """List the subscription's CMK clusters and whether each is watched."""
    subscription = args.subscription.strip()
    if not _GUID.fullmatch(subscription):
        # ARM answers 400 InvalidSubscriptionId for such an id; say so before asking it.
        raise UsageError(f"--subscription {subscription!r} is not a subscription id (a GUID)")

    async def work(service: Service) -> int:
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
            _err(f"error: subscription not found: {exc}")
            return EXIT_FAILED
        cmk = [f for f in found if f["cmk"]]
        if args.json:
            _json(cmk)
        else:
            for f in cmk:
                _out(f"{'watched' if f['watched'] else 'NOT WATCHED':<12} {f['cluster_id']}  {f['key_url']}")
            _out(
                f"{len(cmk)} CMK cluster(s), {sum(f['watched'] for f in cmk)} watched, "
                f"{len(found) - len(cmk)} service-managed not shown"
            )
        return EXIT_OK

    return await _with_service(settings, work)


async def history(args: argparse.Namespace, settings: Settings) -> int:
    """Print a cluster's history, newest first."""
    cluster_id = _cluster_arg(args.cluster_id)
    if not 1 <= args.limit <= 500:  # noqa: PLR2004
        raise UsageError("--limit must be from 1 to 500")

    async def work(service: Service) -> int:
        # Text shows what changed or failed unless --all; --json is for scripts and keeps every entry.
        everything = args.all or args.json
        fetch = args.limit if everything else HISTORY_SCAN
        read = await service.registry.history.recent(parse_cluster_id(cluster_id), limit=fetch)
        entries = read if everything else [e for e in read if e.outcome not in QUIET_OUTCOMES][: args.limit]
        if args.json:
            _json([e.to_dict() for e in entries])
            return EXIT_OK
        for e in entries:
            _out(format_history_entry(e))
        hidden = 0 if args.all else sum(1 for e in read if e.outcome in QUIET_OUTCOMES)
        if not entries:
            _out(
                f"no history for {cluster_id}" if not read else f"nothing changed or failed for {cluster_id}"
            )
        if hidden:
            _out(f"({hidden} skip(s) and dry run(s) not shown; --all shows them)")
        return EXIT_OK

    return await _with_service(settings, work)


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


def load_events(path: str) -> list[KeyVersionEvent | EventRejected | EventIgnored]:
    """Read FILE (an event, an array, or dead-letter records); UsageError if it is not JSON."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        payload = loads_bounded(raw, what=path)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    except JsonRefused as exc:
        items = array_items(raw) if len(raw) <= MAX_JSON_BYTES else None
        if items is None:
            raise UsageError(str(exc)) from None
        return _load_items(path, items)  # one event too deep: refuse it, keep the others
    return parse_payload(payload)


def _load_items(path: str, items: list[bytes]) -> list[KeyVersionEvent | EventRejected | EventIgnored]:
    """Each element of a top-level array parsed on its own; one that cannot be read is rejected in place."""
    events: list[KeyVersionEvent | EventRejected | EventIgnored] = []
    for number, item in enumerate(items, start=1):
        try:
            value = loads_bounded(item, what=f"{path} element {number}")
        except ValueError as exc:
            events.append(EventRejected(str(exc).splitlines()[0]))
            continue
        events.extend(parse_payload(value) if isinstance(value, dict) else parse_payload([value]))
    return events


async def replay(args: argparse.Namespace, settings: Settings) -> int:
    """Handle FILE's events exactly as the functions do, waiting for every cluster's outcome."""
    events = load_events(args.file)

    async def work(service: Service) -> int:
        lines: list[dict[str, Any]] = []
        for event in events:
            lines.extend(await _replay_one(service, event, dry_run=True if args.dry_run else None))
        code = EXIT_OK
        if any(line["outcome"] == Outcome.REJECTED for line in lines):
            code = EXIT_USAGE
        elif any(line["outcome"] in _ATTENTION for line in lines):
            code = EXIT_FAILED
        if args.json:
            _json(lines)
        else:
            for line in lines:
                if "cluster_id" in line:
                    _out(f"event={line['event_id']} " + format_result(RotationResult(**_result_fields(line))))
                else:
                    _out(f"event={line['event_id']} {line['outcome']}: {line['reason']}")
        return code

    return await _with_service(settings, work)


_ATTENTION = frozenset(o.value for o in Outcome if o.needs_attention)


async def _replay_one(
    service: Service, event: KeyVersionEvent | EventRejected | EventIgnored, *, dry_run: bool | None
) -> list[dict[str, Any]]:
    """One event: rejected/ignored/warned as the function answers it, or every watched cluster rotated."""
    if not isinstance(event, KeyVersionEvent) or event.kind is not EventKind.NEW_VERSION:
        report = await service.handle_event(event, invocation_id="replay")
        return [{"event_id": report.event_id, "outcome": report.outcome, "reason": report.reason}]
    watched = await service.registry.watched.for_key(event.key_url.host, event.key_url.name)
    if not watched:
        reason = f"no watched cluster uses {event.key_url.host}/{event.key_url.name}"
        return [{"event_id": event.event_id, "outcome": "no-clusters", "reason": reason}]
    jobs = [_replay_job(j) for j in service.resolve_jobs(event, watched)]
    results = await _run_all(service, jobs, dry_run=dry_run)
    return [{"event_id": event.event_id, **r.to_dict()} for r in results]


def _replay_job(job: Job) -> Job:
    return replace(job, trigger="replay")


def _result_fields(line: dict[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in line.items() if k in RotationResult.__dataclass_fields__}
    fields["outcome"] = Outcome(fields["outcome"])
    return fields


async def _run_all(
    service: Service,
    jobs: list[Job],
    *,
    dry_run: bool | None,
    on_result: Callable[[RotationResult], None] | None = None,
    busy: Outcome = Outcome.FAILED,
    watched_only: bool = True,
) -> list[RotationResult]:
    """Run jobs concurrently (bounded by ROTATION_MAX_CONCURRENCY), each to an outcome.

    ``busy``: the outcome of a job whose cluster another worker holds (or runs an operation on).
    ``watched_only`` False only for `rotate`, which an operator may run on any cluster (rule 11).
    """
    gate = asyncio.Semaphore(service.settings.max_concurrency)

    async def one(job: Job) -> RotationResult:
        async with gate:
            result = await _run_one(service, job, dry_run=dry_run, busy=busy, watched_only=watched_only)
        if on_result is not None:
            on_result(result)
        return result

    return await asyncio.gather(*(one(j) for j in jobs))


async def _run_one(
    service: Service, job: Job, *, dry_run: bool | None, busy: Outcome, watched_only: bool
) -> RotationResult:
    try:
        return await service.execute(job, invocation_id="cli", dry_run=dry_run, watched_only=watched_only)
    except ClusterBusy as exc:
        return RotationResult(job.cluster_id, busy, str(exc))
    except TransientFailure as exc:
        return exhausted(job.cluster_id, exc)


async def rotate_recorded(args: argparse.Namespace, settings: Settings, job: Job) -> RotationResult:
    """`rotate` with storage configured: the same claimed, recorded path as a queued job, on any cluster.

    Interrupted (Ctrl-C) after ARM accepted the write: the operation is recorded and handed on (see
    `Service.execute`), and `Interrupted` says what is still running.
    """
    service = Service.create(settings)
    try:
        result = (await _run_all(service, [job], dry_run=True if args.dry_run else None, watched_only=False))[
            0
        ]
        if args.dry_run and job.target_key_url is None:
            await warn_newest_not_usable(service.runtime.keys, result)
    except asyncio.CancelledError:
        if service.handed_off:
            raise Interrupted(still_running(service.handed_off[-1].operation_url)) from None
        raise
    else:
        return result
    finally:
        await service.close()


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


async def reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """One pass, then its jobs run here (claimed as the queue worker claims them) and waited for.

    ``--enqueue`` hands the jobs to the deployed app's queue instead; ``--dry-run`` runs and queues nothing.
    Exit 1 when a cluster's job ended in an outcome that needs attention (failed, key not usable, ...).
    """
    from rotation.service.reconcile import Reconciler  # noqa: PLC0415

    dry_run = args.dry_run or settings.dry_run
    in_process = not args.enqueue and not dry_run

    async def work(service: Service) -> int:
        jobs: list[Job] = []

        async def collect(job: Job) -> None:
            jobs.append(job)

        bar = ProgressBar("reconcile") if not args.json else None
        try:
            report = await Reconciler(
                service,
                dry_run=dry_run,
                progress=bar,
                doctor=args.doctor,
                send=collect if in_process else None,
            ).run()
        finally:
            if bar is not None:
                bar.close()
        results = await _run_with_progress(service, jobs, show=not args.json) if jobs else []
        by_cluster = {r.cluster_id.lower(): r for r in results}
        for line in report.clusters:
            result = by_cluster.get(line.cluster_id.lower())
            if result is not None:
                line.action = result.outcome.value
                if result.outcome.needs_attention and not line.drift:
                    error = f" [{result.error_code}]" if result.error_code else ""
                    line.detail = f"{result.reason}{error}"
        code = EXIT_FAILED if any(r.outcome.needs_attention for r in results) else EXIT_OK
        if args.json:
            _json(
                {**report.to_dict(), "mode": _mode(args, dry_run), "results": [r.to_dict() for r in results]}
            )
            return code
        _out(f"{'CLUSTER':<24} {'KEY':<40} {'CURRENT':<9} {'NEWEST':<9} {'ACTION':<16} {'DRIFT':<18} DETAIL")
        for c in report.clusters:
            name = c.cluster_id.rsplit("/", 1)[-1]
            current, newest = (c.current_version or "-")[:8], (c.newest_version or "-")[:8]
            drift = c.drift or "-"
            _out(f"{name:<24} {c.key:<40} {current:<9} {newest:<9} {c.action:<16} {drift:<18} {c.detail}")
        _out(reconcile_summary(report.to_dict()["summary"], results, mode=_mode(args, dry_run)))
        return code

    return await _with_service(settings, work)


def _mode(args: argparse.Namespace, dry_run: bool) -> str:  # noqa: FBT001
    return "dry-run" if dry_run else "enqueue" if args.enqueue else "in-process"


def reconcile_summary(summary: dict[str, Any], results: list[RotationResult], *, mode: str) -> str:
    """The last line of `reconcile`: what the pass found and what became of it, in the mode's own words."""
    behind = summary["queued"]
    if mode == "dry-run":
        action = f"{behind} would be rotated"
    elif mode == "enqueue":
        action = f"{behind} queued for the deployed app"
    else:
        counts: dict[str, int] = {}
        for r in results:
            counts[r.outcome.value] = counts.get(r.outcome.value, 0) + 1
        detail = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        action = f"{len(results)} run here" + (f" ({detail})" if detail else "")
    line = (
        f"{summary['clusters']} cluster(s), {action}, {summary['drift']} with drift; "
        f"{summary['arm_reads']} ARM reads, "
        f"{summary['keyvault_reads']} Key Vault reads for {summary['keys']} key(s)"
    )
    return line + (" (dry run: nothing rotated, nothing queued)" if mode == "dry-run" else "")


async def _run_with_progress(service: Service, jobs: list[Job], *, show: bool) -> list[RotationResult]:
    """Run the pass's jobs here, as `replay` does, with a progress bar on a terminal."""
    bar = ProgressBar("rotate   ") if show else None
    done = 0

    def tick(_: RotationResult) -> None:
        nonlocal done
        done += 1
        if bar is not None:
            bar(done, len(jobs))

    try:
        if bar is not None:
            bar(0, len(jobs))
        # A cluster another worker holds (the deployed app, beside this pass) is being handled there, or
        # is caught by the next pass: pending, not a failure of this command.
        return await _run_all(service, jobs, dry_run=None, on_result=tick, busy=Outcome.PENDING)
    finally:
        if bar is not None:
            bar.close()


async def doctor(args: argparse.Namespace, settings: Settings) -> int:
    """`rotation doctor`: one line per check (or JSON); exit 1 when any check fails."""
    from rotation.doctor.checks import Doctor  # noqa: PLC0415
    from rotation.doctor.report import DoctorReport, format_report  # noqa: PLC0415
    from rotation.service.runtime import Runtime  # noqa: PLC0415

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

        async def work(service: Service) -> int:
            nonlocal report
            report = await service.doctor()
            return EXIT_OK

        await _with_service(settings, work)
    if args.json:
        doc = report.to_dict()
        if args.problems:
            doc["clusters"] = [
                {**c, "checks": [f for f in c["checks"] if f["status"] != "pass"]}
                for c in doc["clusters"]
                if c["status"] != "pass"
            ]
        _json(doc)
    else:
        for line in format_report(report, problems_only=args.problems):
            _out(line)
    return EXIT_FAILED if report.failed else EXIT_OK


async def poison(args: argparse.Namespace, settings: Settings) -> int:
    """`poison list|retry|purge`: the jobs the queue gave up on, decoded with their last error."""
    from rotation.store.poison import PoisonQueue  # noqa: PLC0415

    ids = set(args.message_ids) or None
    if args.action == "list" and ids:
        raise UsageError("poison list takes no MESSAGE_ID")
    if args.action == "purge" and not args.yes:
        _confirm_purge(ids)

    async def work(service: Service) -> int:
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
                _json({"deleted": deleted, "queue": queue.name})
            else:
                _out(f"deleted {deleted} message(s) from {queue.name}")
            return EXIT_OK
        finally:
            await queue.close()

    return await _with_service(settings, work)


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
        _json({"queue": queue.name, "approximate_count": total, "jobs": docs})
        return EXIT_OK
    for doc in docs:
        _out(format_poisoned(doc))
    shown = f"{len(docs)} of about {total}" if total > len(docs) else f"{len(docs)}"
    _out(f"{shown} message(s) in {queue.name}" + (" (a peek shows at most 32)" if total > len(docs) else ""))
    return EXIT_OK


def format_poisoned(doc: dict[str, Any]) -> str:
    """One line per poison message: id, time, cluster, trigger, target, deliveries, last error."""
    at = (doc.get("inserted_on") or "-")[:19]
    if doc.get("job", True) is None:
        return f"{doc['message_id']}  {at}  not a job: {doc['problem']}"
    target = (doc.get("target_key_url") or "newest").rstrip("/").rsplit("/", 1)[-1][:8]
    error = doc.get("last_error")
    last = "-"
    if error:
        code = error.get("error_code")
        message = error.get("error_message") or error.get("reason")
        last = f"[{code}] {message}" if code else str(message)
    deliveries = doc.get("dequeue_count") if doc.get("dequeue_count") is not None else "-"
    return (
        f"{doc['message_id']}  {at}  {doc['cluster_id']}  trigger={doc['trigger']} target={target} "
        f"event={doc.get('event_id') or '-'} dequeue_count={deliveries}  last error: {last}"
    )


async def _last_failure(service: Service, cluster_id: str) -> HistoryEntry | None:
    entries = await service.registry.history.recent(parse_cluster_id(cluster_id), limit=20)
    return next((e for e in entries if e.outcome == Outcome.FAILED.value), None)


async def _poison_retry(queue: Any, ids: set[str] | None, *, as_json: bool) -> int:  # noqa: ANN401
    moved, left = await queue.retry(ids)
    missing = sorted((ids or set()) - {i.message_id for i in [*moved, *left]})
    if as_json:
        _json(
            {
                "moved": [i.to_dict() for i in moved],
                "left": [i.to_dict() for i in left],
                "not_found": missing,
            }
        )
    else:
        for item in moved:
            _out(f"moved back  {item.message_id}  {item.job.cluster_id if item.job else '-'}")
        for item in left:
            _out(f"left        {item.message_id}  not a job: {item.problem}")
        _out(f"{len(moved)} job(s) moved back to {queue.jobs_name}")
    if missing:
        _err(f"error: not in {queue.name}: {', '.join(missing)}")
        return EXIT_FAILED
    return EXIT_OK
