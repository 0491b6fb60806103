"""The rotation of one cluster to a key version: rules 1-7 and 9 of docs/design.md.

`Rotator.rotate` runs one job (`rotation.rotation_job`): it decides (rotate, or skip with a reason), builds
the body (rule 5, `rotation.write_body`), PUTs through the write retry policy, follows the long-running
operation, verifies, and returns a `RotationResult`. Its collaborators are `Protocol`s, so every rule is
tested with in-memory fakes as well as against the simulator.

Each step checks whether its work is already done before doing it, so any delivery of the same job can run
twice safely: a duplicate finds the cluster ``already-current``; a resumed job polls the recorded
operation instead of PUTting again (rule 7).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rotation.azure.lro import DEFAULT_POLL_SECONDS, is_terminal
from rotation.collateral import changed_paths
from rotation.errors import ClusterBusy, NotFoundError, ServiceError, TransientFailure
from rotation.ids import InvalidKeyUrl, KeyUrl, parse_key_url
from rotation.key_rules import unusable_reason
from rotation.outcomes import Outcome, RotationResult
from rotation.retry import RetryPolicy
from rotation.rotation_job import (
    ClustersPort,
    JobState,
    KeysPort,
    RotationRequest,
    WriteFlag,
    versions_to_read_ahead,
)
from rotation.write_body import NOT_UPDATABLE_NEXT_STEP, build_body, build_patch_body, not_updatable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from rotation.azure.arm import AcceptedOperation, Cluster
    from rotation.azure.lro import OperationKind
    from rotation.ids import ResourceId
    from rotation.key_rules import KeyVersion
    from rotation.settings import Settings

logger = logging.getLogger(__name__)


class _Done(Exception):  # internal control flow: a decision was reached early
    def __init__(self, outcome: Outcome, reason: str, **fields: Any) -> None:  # noqa: ANN401
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.fields = fields


class Rotator:
    """Rotates one cluster at a time; share one instance (and its clients) across a process."""

    def __init__(
        self,
        *,
        clusters: ClustersPort,
        keys: KeysPort,
        settings: Settings,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._clusters = clusters
        self._keys = keys
        self._settings = settings
        self._sleep = sleep
        self._clock = clock
        self._now = now
        self._arm_read = RetryPolicy("arm-read", settings.retry, sleep=sleep, clock=clock)
        self._arm_write = RetryPolicy("arm-write", settings.retry, sleep=sleep, clock=clock)
        self._kv_read = RetryPolicy("keyvault-read", settings.retry, sleep=sleep, clock=clock)

    async def rotate(
        self,
        request: RotationRequest,
        *,
        on_accepted: Callable[[str, KeyUrl], Awaitable[None]] | None = None,
        write_flag: WriteFlag | None = None,
    ) -> RotationResult:
        """Run one job to an outcome; raise `TransientFailure` when retries are exhausted (redeliver it).

        ``on_accepted`` gets the operation URL before polling starts (rule 7); ``write_flag`` is up while a
        PUT may be on its way to ARM, so a caller cancelled then knows a write could still land.
        """
        started = self._clock()
        state = JobState(request)
        try:
            await self._run(request, state, on_accepted, write_flag or WriteFlag())
        except _Done as done:
            result = state.result(done.outcome, done.reason, self._clock() - started, **done.fields)
        except ServiceError as exc:
            state.attempts += exc.attempts
            if exc.transient:
                _log_result(
                    state.result(
                        Outcome.FAILED, f"retries exhausted: {exc}", self._clock() - started, error=exc
                    ),
                    request,
                    transient=True,
                )
                raise TransientFailure(str(request.cluster_id), exc, state.attempts) from exc
            result = state.result(Outcome.FAILED, str(exc), self._clock() - started, error=exc)
        _log_result(result, request)
        return result

    async def _run(
        self,
        request: RotationRequest,
        state: JobState,
        on_accepted: Callable[[str, KeyUrl], Awaitable[None]] | None,
        write_flag: WriteFlag,
    ) -> None:
        self._keys.read_ahead(versions_to_read_ahead(request, self._settings.allowed_vault_suffixes))
        cluster = await self._get_cluster(request.cluster_id, state)
        state.before = cluster
        current = self._current_key(cluster)
        state.key = f"{current.host}/{current.name}"
        state.from_version = current.version
        if request.operation_url is not None:
            if request.target is None:
                raise ValueError("resuming an operation needs its target key URL")
            state.target = request.target
            state.operation_url = request.operation_url
            # The kind is the one its recorded URL names (`lro.operation_kind`), checked again here.
            await self._follow(request, state, request.operation_url, request.target, kind=None)
            return
        _raise_if_operation_running(request.cluster_id, cluster)
        target = await self._decide_target(request, current, state)
        method = self._settings.write_method
        body = build_patch_body(cluster, target) if method == "patch" else build_body(cluster, target)
        if request.dry_run:
            raise _Done(Outcome.DRY_RUN, f"dry run: {method.upper()} not sent", body=body)
        accepted, attempts = await self._write(request, state, cluster, body, write_flag)
        state.attempts += attempts
        state.request_id = accepted.request_id
        state.correlation_id = accepted.correlation_id
        logger.info(
            "rotation.put_accepted",
            extra={
                **state.log_fields(),
                "operation_url": accepted.url,
                "operation_kind": accepted.kind.value,
                "write_method": method,
                "status_code": accepted.status_code,
                "request_id": accepted.request_id,
                "correlation_id": accepted.correlation_id,
                "attempt": attempts,
            },
        )
        if accepted.done:  # no header and a terminal provisioning state in the answer itself
            if not accepted.url or accepted.status.lower() == "succeeded":
                await self._verify(request, state, target)
            raise _Done(Outcome.FAILED, f"write answered provisioningState {accepted.status}")
        assert accepted.url is not None  # noqa: S101 - not done means an operation to follow
        state.operation_url = accepted.url
        if on_accepted is not None:
            await on_accepted(accepted.url, target)
        await self._follow(
            request, state, accepted.url, target, kind=accepted.kind, first_wait=accepted.retry_after
        )

    async def _write(
        self,
        request: RotationRequest,
        state: JobState,
        cluster: Cluster,
        body: dict[str, Any],
        write_flag: WriteFlag,
    ) -> tuple[AcceptedOperation, int]:
        """PUT or PATCH ``body`` through the write retry policy; a not-updatable 400 says the next step."""
        method = self._settings.write_method
        write = self._clusters.patch if method == "patch" else self._clusters.put
        tries = 0

        async def put() -> AcceptedOperation:
            nonlocal tries
            tries += 1
            if tries > 1:
                # The last attempt failed: 409 (another operation), or 5xx or no answer (ours may have
                # started). Retrying the same body is only safe on the cluster the decision was made on;
                # else an operation that ended meanwhile could be followed by this older version (rule 2).
                now = await self._clusters.get(request.cluster_id)
                _raise_if_operation_running(request.cluster_id, now)
                if (now.key_url or "").lower() != (cluster.key_url or "").lower():
                    raise ClusterBusy(
                        f"{request.cluster_id}: the cluster moved to {now.key_url} while its PUT was retried"
                    )
            if write_flag.guard is not None:
                await write_flag.guard()
            return await write(request.cluster_id, body)

        write_flag.in_flight = True
        try:
            return await self._arm_write.call(put, log_fields=state.log_fields())
        except ServiceError as exc:
            if not not_updatable(exc):
                raise
            state.attempts += exc.attempts
            raise _Done(
                Outcome.FAILED,
                f"ARM refused to update the encryption at api-version {self._settings.arm_api_version} "
                f"({method.upper()}): {exc.message}; {NOT_UPDATABLE_NEXT_STEP}",
                error=exc,
            ) from exc
        finally:
            # An answer (or an error) came back: nothing of ours is on the wire. Cancelled: it may be.
            write_flag.in_flight = _cancelling()

    async def _get_cluster(self, cluster_id: ResourceId, state: JobState) -> Cluster:
        try:
            cluster, _ = await self._arm_read.call(
                lambda: self._clusters.get(cluster_id), log_fields=state.log_fields()
            )
        except NotFoundError as exc:
            raise _Done(Outcome.CLUSTER_NOT_FOUND, "cluster does not exist", error=exc) from exc
        return cluster

    def _current_key(self, cluster: Cluster) -> KeyUrl:
        if not cluster.is_cmk or cluster.key_url is None:
            raise _Done(Outcome.NOT_CMK, "cluster is not encrypted with a customer-managed key")
        if cluster.key_identity is None:
            raise _Done(Outcome.NOT_CMK, "cluster has a key URL but no key identity")
        try:
            current = parse_key_url(cluster.key_url, allowed_suffixes=self._settings.allowed_vault_suffixes)
        except InvalidKeyUrl as exc:
            raise _Done(Outcome.KEY_MISMATCH, f"cluster key URL is not usable here: {exc}") from exc
        if current.versionless:
            raise _Done(
                Outcome.VERSIONLESS, "cluster uses a versionless key URL; the service follows new versions"
            )
        return current

    async def _decide_target(self, request: RotationRequest, current: KeyUrl, state: JobState) -> KeyUrl:
        now = self._now()
        target_info: KeyVersion | None = None
        if request.target is None:
            target_info, _ = await self._kv_read.call(
                lambda: self._keys.newest_usable(current, now), log_fields=state.log_fields()
            )
            if target_info is None:
                raise _Done(Outcome.KEY_NOT_USABLE, "the key has no usable version")
            target = target_info.url
        else:
            target = request.target
            if not target.same_key(current):
                state.target = target
                raise _Done(
                    Outcome.KEY_MISMATCH,
                    f"cluster uses {current.host}/{current.name}, not {target.host}/{target.name}",
                )
        state.target = target
        if target.version == current.version:
            raise _Done(Outcome.ALREADY_CURRENT, "cluster already uses this version")
        if target_info is None:
            target_info = await self._target_version(target, state)
        elif target_info.ambiguous:
            raise _Done(
                Outcome.STALE_EVENT,
                "same creation second: the newest versions share one, so which is newer is not known; "
                "the cluster keeps its version",
            )
        # Rule 2 before rule 3: a job for an older version is stale whatever that version's state now.
        await self._raise_if_not_newer(current, target_info, state)
        reason = unusable_reason(target_info, now)
        if reason is not None:  # the URL first: on-call looks it up (`az keyvault key show --id URL`)
            raise _Done(Outcome.KEY_NOT_USABLE, f"{target}: {reason}")
        return target

    async def _raise_if_not_newer(self, current: KeyUrl, target: KeyVersion, state: JobState) -> None:
        """Rule 2: `stale-event` unless ``target`` was created strictly after the cluster's current version.

        Key Vault's ``created`` is whole seconds: an equal value, or a missing one, says nothing about which
        version is newer, so the cluster keeps the one it has. A current version that no longer exists
        cannot be newer than one that does.
        """
        try:
            current_info, _ = await self._kv_read.call(
                lambda: self._keys.get_version(current), log_fields=state.log_fields()
            )
        except NotFoundError:
            return  # the current version is gone: moving to an existing one is forward
        before, after = current_info.created_on, target.created_on
        if before is None or after is None:
            raise _Done(Outcome.STALE_EVENT, "creation order unknown: a version has no creation time")
        if before == after:
            raise _Done(
                Outcome.STALE_EVENT,
                f"same creation second ({after.isoformat()}): which version is newer is not known; "
                "the cluster keeps its version",
            )
        if before > after:
            raise _Done(Outcome.STALE_EVENT, f"cluster uses a newer version (created {before.isoformat()})")

    async def _target_version(self, target: KeyUrl, state: JobState) -> KeyVersion:
        try:
            info, _ = await self._kv_read.call(
                lambda: self._keys.get_version(target), log_fields=state.log_fields()
            )
        except NotFoundError as exc:
            raise _Done(Outcome.KEY_NOT_USABLE, f"{target}: target key version does not exist") from exc
        return info

    async def _follow(
        self,
        request: RotationRequest,
        state: JobState,
        url: str,
        target: KeyUrl,
        *,
        kind: OperationKind | None,
        first_wait: float | None = None,
    ) -> None:
        """Poll the operation at the server's pace until it ends or the polling budget runs out.

        ``kind`` None: resuming a recorded URL, followed the way its path names (`rotation.azure.lro`).
        """
        deadline = self._clock() + self._settings.poll_budget_seconds
        wait = first_wait
        pace = first_wait if first_wait is not None else DEFAULT_POLL_SECONDS
        while True:
            if wait is not None:
                if self._clock() + wait > deadline:
                    raise _Done(Outcome.PENDING, "operation still running; polling resumes later")
                await self._sleep(wait)
            try:
                status, _ = await self._arm_read.call(
                    lambda: self._clusters.operation_status(url, cluster_id=request.cluster_id, kind=kind),
                    log_fields=state.log_fields(),
                )
            except NotFoundError:
                break  # the operation record is gone: the cluster itself tells the result
            if status.done:
                if not status.succeeded:
                    raise _Done(
                        Outcome.FAILED,
                        f"operation {status.status}",
                        error_code=status.error_code,
                        error_message=status.error_message,
                    )
                break
            # Retry-After of this answer; else the last one the server named (a resource GET names none).
            if status.retry_after is not None:
                pace = status.retry_after
            wait = pace
        await self._verify(request, state, target)

    async def _verify(self, request: RotationRequest, state: JobState, target: KeyUrl) -> None:
        """Rule 9: GET the cluster; its key URL must be the target and provisioning Succeeded.

        Anything else that differs from the GET before the write is a collateral change: logged at ERROR
        with its paths and kept in the result (and so in the history); the outcome still says whether the
        key moved.
        """
        cluster, _ = await self._arm_read.call(
            lambda: self._clusters.get(request.cluster_id), log_fields=state.log_fields()
        )
        if state.before is not None:
            state.collateral = tuple(changed_paths(state.before.doc, cluster.doc))
        if state.collateral:
            logger.error(
                "rotation.collateral_change",
                extra={
                    **state.log_fields(),
                    "changed_paths": list(state.collateral),
                    "write_method": self._settings.write_method,
                    "api_version": self._settings.arm_api_version,
                    "operation_url": state.operation_url,
                },
            )
        actual: KeyUrl | None
        try:
            actual = parse_key_url(
                cluster.key_url or "", allowed_suffixes=self._settings.allowed_vault_suffixes
            )
        except InvalidKeyUrl:
            actual = None
        if actual != target:
            raise _Done(
                Outcome.FAILED, f"verification: cluster key URL is {cluster.key_url!r}, expected {target}"
            )
        if (cluster.provisioning_state or "").lower() != "succeeded":
            raise _Done(Outcome.FAILED, f"verification: provisioningState is {cluster.provisioning_state}")
        raise _Done(Outcome.ROTATED, "cluster verified on the target version")


def _raise_if_operation_running(cluster_id: ResourceId, cluster: Cluster) -> None:
    """`ClusterBusy` while an operation runs on the cluster (``provisioningState`` Updating, InProgress...).

    That operation was not found in the registry to resume (rule 7), so it is another job's or another
    tool's: deciding now, on the key it is about to replace, could move the cluster back (rule 2).
    """
    state = cluster.provisioning_state or ""
    if state and not is_terminal(state):  # no state at all: nothing is known to be running
        raise ClusterBusy(
            f"{cluster_id}: an operation is running on the cluster (provisioningState "
            f"{cluster.provisioning_state}); the job decides again once it ends"
        )


def _cancelling() -> bool:
    """Whether the running task is being cancelled (then a PUT may still be on its way to ARM)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


_EVENT_NAMES = {
    Outcome.ROTATED: ("rotation.cluster_rotated", logging.INFO),
    Outcome.FAILED: ("rotation.cluster_failed", logging.ERROR),
    Outcome.KEY_NOT_USABLE: ("rotation.cluster_skipped", logging.ERROR),
    Outcome.CLUSTER_NOT_FOUND: ("rotation.cluster_skipped", logging.WARNING),
    Outcome.NOT_CMK: ("rotation.cluster_skipped", logging.WARNING),
    Outcome.KEY_MISMATCH: ("rotation.cluster_skipped", logging.WARNING),
    Outcome.PENDING: ("rotation.cluster_pending", logging.INFO),
    Outcome.DRY_RUN: ("rotation.cluster_dry_run", logging.INFO),
}


def _log_result(result: RotationResult, request: RotationRequest, *, transient: bool = False) -> None:
    name, level = _EVENT_NAMES.get(result.outcome, ("rotation.cluster_skipped", logging.INFO))
    if transient:
        name, level = "rotation.cluster_retry_exhausted", logging.ERROR
    fields = result.to_dict()
    fields.pop("body", None)
    extra = {
        **fields,
        "subscription": request.cluster_id.subscription,
        "event_id": request.event_id,
        "invocation_id": request.invocation_id,
        "trigger": request.trigger,
        "dequeue_count": request.dequeue_count,
    }
    if result.outcome is Outcome.DRY_RUN:
        extra["body"] = result.body
    logger.log(level, name, extra=extra)
