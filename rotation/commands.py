"""The registry-backed CLI commands: register, unregister, list, discover, replay, history.

Each builds one `Service` (clients for ARM, Key Vault and storage), does its work, prints, and returns the
exit code of DESIGN.md: 0 done, 1 a cluster failed or a request was refused, 2 malformed input.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rotation.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, format_result, still_running
from rotation.errors import ClusterBusy, Interrupted, NotFoundError, TransientFailure
from rotation.events import EventIgnored, EventKind, EventRejected, KeyVersionEvent, parse_payload
from rotation.ids import InvalidResourceId, parse_cluster_id
from rotation.outcomes import Outcome, RotationResult
from rotation.service import RegistrationRefused, Service, watched_dict
from rotation.untrusted import MAX_JSON_BYTES, JsonRefused, array_items, loads_bounded, printable

if TYPE_CHECKING:
    import argparse

    from rotation.jobs import Job
    from rotation.registry import WatchedCluster
    from rotation.settings import Settings


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
        if not await service.registry.remove(parse_cluster_id(cluster_id)):
            _err(f"error: not watched: {cluster_id}")
            return EXIT_FAILED
        _out(f"unregistered {cluster_id}")
        return EXIT_OK

    return await _with_service(settings, work)


def format_watched_table(rows: list[WatchedCluster]) -> list[str]:
    """The `list` table: one line per cluster."""
    header = f"{'CLUSTER':<24} {'KEY':<40} {'VERSION':<9} {'STATE':<9} {'LAST OUTCOME':<16} {'AT':<20} ID"
    lines = [header]
    for w in rows:
        name = w.cluster_id.rsplit("/", 1)[-1]
        at = w.last_outcome_at.strftime("%Y-%m-%d %H:%M:%S") if w.last_outcome_at else "-"
        version = (w.current_version or "versionless")[:8]
        outcome = w.last_outcome or "-"
        lines.append(
            f"{name:<24} {w.key:<40} {version:<9} {w.state:<9} {outcome:<16} {at:<20} {w.cluster_id}"
        )
    return lines


async def list_clusters(args: argparse.Namespace, settings: Settings) -> int:
    """Print the watched clusters."""

    async def work(service: Service) -> int:
        rows = [w async for w in service.registry.list()]
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

    async def work(service: Service) -> int:
        found: list[dict[str, Any]] = []
        try:
            async for cluster in service.runtime.clusters.list_clusters(subscription):
                watched = await service.registry.get(parse_cluster_id(cluster.id)) if cluster.id else None
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
        entries = await service.registry.history(parse_cluster_id(cluster_id), limit=args.limit)
        if args.json:
            _json([e.to_dict() for e in entries])
            return EXIT_OK
        for e in entries:
            versions = f"{(e.from_version or '-')[:8]} -> {(e.to_version or '-')[:8]}"
            error = f" [{e.error_code}]" if e.error_code else ""
            _out(
                f"{e.at:%Y-%m-%d %H:%M:%S}  {e.outcome:<16} {e.trigger or '-':<9} {versions}  "
                f"event={e.event_id or '-'}  {e.reason}{error}"
            )
        if not entries:
            _out(f"no history for {cluster_id}")
        return EXIT_OK

    return await _with_service(settings, work)


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
    watched = await service.registry.for_key(event.key_url.host, event.key_url.name)
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
    service: Service, jobs: list[Job], *, dry_run: bool | None, watched_only: bool = True
) -> list[RotationResult]:
    """Run jobs concurrently (bounded by ROTATION_MAX_CONCURRENCY), each to an outcome."""
    gate = asyncio.Semaphore(service.settings.max_concurrency)

    async def one(job: Job) -> RotationResult:
        async with gate:
            try:
                return await service.execute(
                    job, invocation_id="cli", dry_run=dry_run, watched_only=watched_only
                )
            except ClusterBusy as exc:
                return RotationResult(job.cluster_id, Outcome.FAILED, str(exc))
            except TransientFailure as exc:
                return RotationResult(
                    job.cluster_id,
                    Outcome.FAILED,
                    f"retries exhausted: {exc.cause}",
                    attempts=exc.attempts,
                    error_code=exc.cause.code or (str(exc.cause.status) if exc.cause.status else None),
                    error_message=exc.cause.message,
                )

    return await asyncio.gather(*(one(j) for j in jobs))


async def rotate_recorded(args: argparse.Namespace, settings: Settings, job: Job) -> RotationResult:
    """`rotate` with storage configured: the same claimed, recorded path as a queued job, on any cluster.

    Interrupted (Ctrl-C) after ARM accepted the write: the operation is recorded and handed on (see
    `Service.execute`), and `Interrupted` says what is still running.
    """
    service = Service.create(settings)
    try:
        return (await _run_all(service, [job], dry_run=True if args.dry_run else None, watched_only=False))[0]
    except asyncio.CancelledError:
        if service.handed_off:
            raise Interrupted(still_running(service.handed_off[-1].operation_url)) from None
        raise
    finally:
        await service.close()


class _ProgressBar:
    """``reconcile [#####.....] 120/200`` on stderr, redrawn in place; only on a terminal."""

    def __init__(self) -> None:
        self._on = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self._on:
            return
        width = 30
        filled = width * done // total if total else width
        sys.stderr.write(f"\rreconcile [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        sys.stderr.flush()

    def close(self) -> None:
        if self._on:
            sys.stderr.write("\n")


async def reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """One pass, waiting for completion; a table at the end (or JSON with --json)."""
    from rotation.reconcile import Reconciler  # noqa: PLC0415

    async def work(service: Service) -> int:
        bar = _ProgressBar() if not args.json else None
        try:
            report = await Reconciler(
                service, dry_run=args.dry_run or settings.dry_run, progress=bar, doctor=args.doctor
            ).run()
        finally:
            if bar is not None:
                bar.close()
        if args.json:
            _json(report.to_dict())
            return EXIT_OK
        _out(f"{'CLUSTER':<24} {'KEY':<40} {'CURRENT':<9} {'NEWEST':<9} {'ACTION':<13} {'DRIFT':<18} DETAIL")
        for c in report.clusters:
            name = c.cluster_id.rsplit("/", 1)[-1]
            current, newest = (c.current_version or "-")[:8], (c.newest_version or "-")[:8]
            drift = c.drift or "-"
            _out(f"{name:<24} {c.key:<40} {current:<9} {newest:<9} {c.action:<13} {drift:<18} {c.detail}")
        summary = report.to_dict()["summary"]
        _out(
            f"{summary['clusters']} cluster(s), {summary['queued']} queued, {summary['drift']} with drift; "
            f"{summary['arm_reads']} ARM reads, "
            f"{summary['keyvault_reads']} Key Vault reads for {summary['keys']} key(s)"
            + (" (dry run: nothing queued)" if report.dry_run else "")
        )
        return EXIT_OK

    return await _with_service(settings, work)


async def doctor(args: argparse.Namespace, settings: Settings) -> int:
    """`rotation doctor`: one line per check (or JSON); exit 1 when any check fails."""
    from rotation.doctor import Doctor, DoctorReport, format_report  # noqa: PLC0415
    from rotation.runtime import Runtime  # noqa: PLC0415

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
        _json(report.to_dict())
    else:
        for line in format_report(report):
            _out(line)
    return EXIT_FAILED if report.failed else EXIT_OK
