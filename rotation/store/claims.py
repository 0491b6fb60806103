"""Claims (rule 8): one writer per cluster, held on the cluster's row of the watch table.

The claim is two columns of the cluster row (``ClaimOwner``, ``ClaimExpires``; layout in
`rotation.store.tables`), written with ETag conditions, so of two racing claimants exactly one wins.
Watched and unwatched clusters claim the same way; registration writes only the row's pointer column.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from rotation.store.clients import storage_errors
from rotation.store.tables import (
    CLUSTER_PARTITION,
    EPOCH,
    POINTER,
    WRITE_ATTEMPTS,
    cluster_row_key,
    conflict,
    etag,
    meta_etag,
    now,
    read_row,
    text,
    utc,
)

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

    from rotation.ids import ResourceId
    from rotation.store.tables import Tables


@dataclass
class Claim:
    """A claim this process holds on one cluster (rule 8), and what taking it told about the cluster.

    Kept by the job that took it: with the ETag of its last write, renewing and releasing the claim are
    one conditional write each, and ``key_partition`` (the cluster row's pointer) finds the watch row
    without reading the cluster row again. A write that finds the row changed falls back to reading it.
    """

    cluster_id: ResourceId
    owner: str
    ttl: float
    etag: str | None  # None: not written by this process (release then reads the row first)
    key_partition: str | None  # the watch partition the cluster row pointed at; None when unwatched
    asserted_at: float  # time.monotonic() just before the claim was last written

    def fresh(self, now: float | None = None) -> bool:
        """Whether the claim was written less than a quarter of its TTL ago.

        No other worker can take a claim before it expires, so a fresh claim needs no renewal before a
        PUT; the other three quarters of the TTL cover the request itself and the clocks of other workers
        running ahead of this one.
        """
        elapsed = (time.monotonic() if now is None else now) - self.asserted_at
        return 0 <= elapsed < self.ttl / 4


class Claims:
    """Take, renew and release claims on clusters, and tell who holds one."""

    def __init__(self, tables: Tables) -> None:
        self._tables = tables

    async def holder(self, cluster_id: ResourceId) -> tuple[str | None, datetime | None]:
        """Who holds the cluster's claim and until when (``(None, None)`` when nobody does)."""
        watch = await self._tables.watch()
        current = await read_row(watch, CLUSTER_PARTITION, cluster_row_key(cluster_id))
        if current is None:
            return None, None
        owner = text(current.get("ClaimOwner"))
        expires = utc(current.get("ClaimExpires"))
        if owner is None or expires is None or expires <= now():
            return None, None
        return owner, expires

    async def take(self, cluster_id: ResourceId, *, owner: str, ttl: float = 600.0) -> Claim | None:
        """Claim the cluster for ``owner`` for ``ttl`` seconds; None when another owner holds it.

        Succeeds when the cluster is unclaimed, its claim expired, or it is already ``owner``'s. The write
        is ETag-conditional (or an insert), so of two racing claimants exactly one wins. Works the same
        for unwatched clusters (their cluster row holds only the claim). One read of the cluster row and
        one conditional write (or insert); the `Claim` renews and releases it.
        """
        row = cluster_row_key(cluster_id)
        watch = await self._tables.watch()
        asserted = time.monotonic()
        at = now()
        expires_at = at + timedelta(seconds=ttl)
        current = await read_row(watch, CLUSTER_PARTITION, row)
        with storage_errors(f"claim {cluster_id}"):
            if current is None:
                try:
                    meta = await watch.create_entity(
                        {**_claim_entity(row, owner, expires_at), "ClusterId": str(cluster_id), POINTER: ""}
                    )
                except ResourceExistsError:
                    return None
                return Claim(cluster_id, owner, ttl, meta_etag(meta), None, asserted)
            holder = text(current.get("ClaimOwner"))
            expires = utc(current.get("ClaimExpires"))
            if holder is not None and holder != owner and expires is not None and expires > at:
                return None
            try:
                new_etag = await _merge_claim(watch, row, owner, expires_at, etag=etag(current))
            except (ResourceModifiedError, ResourceNotFoundError):
                return None
        return Claim(cluster_id, owner, ttl, new_etag, text(current.get(POINTER)), asserted)

    async def renew(self, claim: Claim) -> bool:
        """Write ``claim`` again for another TTL; False when another owner took the cluster meanwhile.

        One conditional write while the row is as this claim last wrote it; otherwise (a registration
        changed the pointer, or the claim lapsed) the row is read and claimed again as `take` does.
        """
        if claim.etag is not None:
            watch = await self._tables.watch()
            asserted = time.monotonic()
            expires_at = now() + timedelta(seconds=claim.ttl)
            with storage_errors(f"claim {claim.cluster_id}"):
                try:
                    new_etag = await _merge_claim(
                        watch, cluster_row_key(claim.cluster_id), claim.owner, expires_at, etag=claim.etag
                    )
                except (ResourceModifiedError, ResourceNotFoundError):
                    pass
                else:
                    claim.etag, claim.asserted_at = new_etag, asserted
                    return True
        again = await self.take(claim.cluster_id, owner=claim.owner, ttl=claim.ttl)
        if again is None:
            return False
        claim.etag, claim.asserted_at = again.etag, again.asserted_at
        claim.key_partition = again.key_partition
        return True

    async def release(self, claim: Claim) -> None:
        """Drop ``claim``; a claim someone else holds on the cluster meanwhile is left alone.

        One conditional write while the row is as this claim last wrote it; otherwise (or with no ETag)
        the row is read and the claim cleared only if it is still ``claim.owner``'s.
        """
        watch = await self._tables.watch()
        row = cluster_row_key(claim.cluster_id)
        action = f"release {claim.cluster_id}"
        if claim.etag is not None:
            with storage_errors(action):
                try:
                    await _merge_claim(watch, row, "", EPOCH, etag=claim.etag)
                except ResourceModifiedError:
                    pass  # changed since our write: read it and clear the claim only if still ours
                except ResourceNotFoundError:
                    return
                else:
                    claim.etag = None
                    return
        for _attempt in range(WRITE_ATTEMPTS):
            current = await read_row(watch, CLUSTER_PARTITION, row)
            if current is None or text(current.get("ClaimOwner")) != claim.owner:
                return
            with storage_errors(action):
                try:
                    await _merge_claim(watch, row, "", EPOCH, etag=etag(current))
                except ResourceModifiedError:
                    continue  # the row changed (a pointer write?): read again, still only ours to clear
                except ResourceNotFoundError:
                    return
            return
        raise conflict(action)


async def _merge_claim(
    watch: TableClient, row: str, owner: str, expires_at: datetime, *, etag: str | None
) -> str | None:
    """MERGE the claim fields into the cluster row if it is unchanged since ``etag``; the new ETag.

    ``owner=""`` clears the claim. The caller handles `ResourceModifiedError` and `ResourceNotFoundError`.
    """
    meta = await watch.update_entity(
        _claim_entity(row, owner, expires_at),
        mode=UpdateMode.MERGE,
        etag=etag,
        match_condition=MatchConditions.IfNotModified,
    )
    return meta_etag(meta)


def _claim_entity(row: str, owner: str, expires_at: datetime) -> dict[str, Any]:
    """The claim fields of a cluster row (``owner=""`` with the epoch: no claim)."""
    return {"PartitionKey": CLUSTER_PARTITION, "RowKey": row, "ClaimOwner": owner, "ClaimExpires": expires_at}
