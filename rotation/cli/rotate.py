"""The commands that rotate clusters here and wait: `rotate`, `replay` and `reconcile`.

With storage configured each runs its jobs as the queue worker does (`Worker.execute`: claimed, recorded,
released); `rotate` without storage calls the rotator alone. Exit 1 when a cluster's job ended in an
outcome that needs attention or the request was refused (README.md, "Operate").
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rotation.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ProgressBar,
    Refused,
    UsageError,
    error,
    format_result,
    out,
    out_json,
    print_results,
)
from rotation.errors import ClusterBusy, Interrupted, TransientFailure
from rotation.events import EventKind, KeyVersionEvent, ParsedEvent, RejectedEvent, parse_payload
from rotation.ids import InvalidKeyUrl, InvalidResourceId, parse_cluster_id, parse_key_url
from rotation.outcomes import EventOutcome, Outcome, RotationResult, Trigger, exhausted
from rotation.rotation_job import RotationRequest
from rotation.service.process import Service
from rotation.service.runtime import Runtime
from rotation.store.jobs import Job
from rotation.untrusted import MAX_JSON_BYTES, JsonRefused, array_items, loads_bounded

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from rotation.azure.keyvault import KeyVaultKeys
    from rotation.ids import KeyUrl
    from rotation.settings import Settings


# ---- rotate ------------------------------------------------------------------------------------------


async def rotate(args: argparse.Namespace, settings: Settings) -> int:
    """`rotate`: one cluster, watched or not, to ``--key-url`` or the newest usable version of its key."""
    dry_run = args.dry_run or settings.dry_run

    try:
        cluster_id = parse_cluster_id(args.cluster_id)
    except InvalidResourceId as exc:
        raise UsageError(str(exc)) from exc
    target = _target_arg(args.key_url, settings) if args.key_url else None
    if settings.storage_configured:
        job = Job.new(str(cluster_id), trigger=Trigger.MANUAL, target_key_url=str(target) if target else None)
        result = await _rotate_recorded(args, settings, job)
        print_results([result], as_json=args.json)
        return rotate_exit_code(result)
    runtime = Runtime.create(settings)
    try:
        result = await _rotate_once(runtime, RotationRequest(cluster_id, target, dry_run=dry_run))
        if args.dry_run and target is None:
            await warn_newest_not_usable(runtime.keys, result)
    finally:
        await runtime.close()
    print_results([result], as_json=args.json)
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


async def _rotate_recorded(args: argparse.Namespace, settings: Settings, job: Job) -> RotationResult:
    """`rotate` with storage configured: the same claimed, recorded path as a queued job, on any cluster.

    Interrupted (Ctrl-C) after ARM accepted the write: the operation is recorded and handed on (see
    `Worker.execute`), and `Interrupted` says what is still running.
    """
    async with Service.create(settings) as service:
        try:
            [result] = await _run_all(
                service, [job], dry_run=True if args.dry_run else None, watched_only=False
            )
            if args.dry_run and job.target_key_url is None:
                await warn_newest_not_usable(service.runtime.keys, result)
        except asyncio.CancelledError:
            if service.worker.handed_off:
                raise Interrupted(still_running(service.worker.handed_off[-1].operation_url)) from None
            raise
        return result


# A `rotate` that was told what to do and refused it is a refused request (exit 1), not a rule skip.
_ROTATE_REFUSED = frozenset({Outcome.KEY_MISMATCH, Outcome.STALE_EVENT})


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
        error(f"warning: {finding.reason}", prefix="")


def still_running(operation_url: str | None) -> str:
    """What an interrupted ``rotate`` says when ARM had accepted its write."""
    return f"operation {operation_url} is still running; `rotate` again resumes it"


# ---- replay ------------------------------------------------------------------------------------------


def load_events(path: str) -> list[ParsedEvent]:
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


def _load_items(path: str, items: list[bytes]) -> list[ParsedEvent]:
    """Each element of a top-level array parsed on its own; one that cannot be read is rejected in place."""
    events: list[ParsedEvent] = []
    for number, item in enumerate(items, start=1):
        try:
            value = loads_bounded(item, what=f"{path} element {number}")
        except ValueError as exc:
            events.append(RejectedEvent(str(exc).splitlines()[0]))
            continue
        events.extend(parse_payload(value) if isinstance(value, dict) else parse_payload([value]))
    return events


async def replay(args: argparse.Namespace, settings: Settings) -> int:
    """Handle FILE's events exactly as the functions do, waiting for every cluster's outcome."""
    events = load_events(args.file)

    async with Service.create(settings) as service:
        lines: list[dict[str, Any]] = []
        for event in events:
            lines.extend(await _replay_one(service, event, dry_run=True if args.dry_run else None))
        code = EXIT_OK
        if any(line["outcome"] == Outcome.REJECTED for line in lines):
            code = EXIT_USAGE
        elif any(line["outcome"] in _ATTENTION for line in lines):
            code = EXIT_FAILED
        if args.json:
            out_json(lines)
        else:
            for line in lines:
                if "cluster_id" in line:
                    out(f"event={line['event_id']} " + format_result(RotationResult(**_result_fields(line))))
                else:
                    out(f"event={line['event_id']} {line['outcome']}: {line['reason']}")
        return code


_ATTENTION = frozenset(o.value for o in Outcome if o.needs_attention)


async def _replay_one(service: Service, event: ParsedEvent, *, dry_run: bool | None) -> list[dict[str, Any]]:
    """One event: rejected/ignored/warned as the function answers it, or every watched cluster rotated."""
    if not isinstance(event, KeyVersionEvent) or event.kind is not EventKind.NEW_VERSION:
        report = await service.fanout.handle_event(event, invocation_id="replay")
        return [{"event_id": report.event_id, "outcome": report.outcome, "reason": report.reason}]
    watched = await service.registry.watched.for_key(event.key_url.host, event.key_url.name)
    if not watched:
        reason = f"no watched cluster uses {event.key_url.host}/{event.key_url.name}"
        return [{"event_id": event.event_id, "outcome": EventOutcome.NO_CLUSTERS, "reason": reason}]
    jobs = [
        Job.new(
            w.cluster_id, trigger=Trigger.REPLAY, target_key_url=str(event.key_url), event_id=event.event_id
        )
        for w in watched
    ]
    results = await _run_all(service, jobs, dry_run=dry_run)
    return [{"event_id": event.event_id, **r.to_dict()} for r in results]


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
        return await service.worker.execute(
            job, invocation_id="cli", dry_run=dry_run, watched_only=watched_only
        )
    except ClusterBusy as exc:
        return RotationResult(job.cluster_id, busy, str(exc))
    except TransientFailure as exc:
        return exhausted(job.cluster_id, exc)


# ---- reconcile ---------------------------------------------------------------------------------------


async def reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """One pass, then its jobs run here (claimed as the queue worker claims them) and waited for.

    ``--enqueue`` hands the jobs to the deployed app's queue instead; ``--dry-run`` runs and queues nothing.
    Exit 1 when a cluster's job ended in an outcome that needs attention (failed, key not usable, ...).
    """
    from rotation.service.reconcile import Reconciler  # noqa: PLC0415

    dry_run = args.dry_run or settings.dry_run
    in_process = not args.enqueue and not dry_run

    async with Service.create(settings) as service:
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
                    error_code = f" [{result.error_code}]" if result.error_code else ""
                    line.detail = f"{result.reason}{error_code}"
        code = EXIT_FAILED if any(r.outcome.needs_attention for r in results) else EXIT_OK
        if args.json:
            out_json(
                {**report.to_dict(), "mode": _mode(args, dry_run), "results": [r.to_dict() for r in results]}
            )
            return code
        out(f"{'CLUSTER':<24} {'KEY':<40} {'CURRENT':<9} {'NEWEST':<9} {'ACTION':<16} {'DRIFT':<18} DETAIL")
        for c in report.clusters:
            name = c.cluster_id.rsplit("/", 1)[-1]
            current, newest = (c.current_version or "-")[:8], (c.newest_version or "-")[:8]
            drift = c.drift or "-"
            out(f"{name:<24} {c.key:<40} {current:<9} {newest:<9} {c.action:<16} {drift:<18} {c.detail}")
        out(reconcile_summary(report.to_dict()["summary"], results, mode=_mode(args, dry_run)))
        return code


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
