"""Registration: a cluster is GOT from ARM, refused with a reason or recorded for watch, then checked.

What `register` (CLI), POST /api/clusters and the doctor's entry points do; the registry row written here is
what `rotation.service.fanout` finds for a key and `rotation.service.worker` claims.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rotation.doctor.checks import Doctor
from rotation.doctor.report import ClusterDiagnosis, DoctorReport, log_findings
from rotation.errors import NotFoundError
from rotation.ids import InvalidKeyUrl, InvalidResourceId, parse_cluster_id, parse_key_url

if TYPE_CHECKING:
    from rotation.azure.arm import Cluster
    from rotation.ids import KeyUrl, ResourceId
    from rotation.service.runtime import Runtime
    from rotation.settings import Settings
    from rotation.store.registry import Registry
    from rotation.store.watch import WatchedCluster

logger = logging.getLogger(__name__)


class RegistrationRefused(Exception):
    """The cluster cannot be watched; the message is the one-line reason."""


class Registration:
    """Registers clusters and runs the doctor on them; owns no client (the `Service` closes them)."""

    def __init__(self, runtime: Runtime, registry: Registry) -> None:
        self.runtime = runtime
        self.registry = registry

    @property
    def settings(self) -> Settings:
        """The process settings."""
        return self.runtime.settings

    async def register(self, raw_cluster_id: str, *, owner: str | None) -> WatchedCluster:
        """GET the cluster and record it for watch; `RegistrationRefused` says why not."""
        cluster_id = parse_cluster_id(raw_cluster_id)
        try:
            cluster = await self.runtime.clusters.get(cluster_id)
        except NotFoundError as exc:
            raise RegistrationRefused(f"cluster not found: {cluster_id}") from exc
        cluster_id = _as_arm_spells_it(cluster_id, cluster.id)
        key = self._cmk_key(cluster)
        watched = await self.registry.watched.upsert(
            cluster_id=cluster_id,
            vault_host=key.host,
            key_name=key.name,
            current_version=key.version,
            identity=cluster.key_identity,
            owner=owner,
        )
        logger.info(
            "rotation.cluster_registered",
            extra={
                "cluster_id": str(cluster_id),
                "key": f"{key.host}/{key.name}",
                "from_version": key.version,
                "owner": owner,
            },
        )
        return watched

    async def register_and_check(
        self, raw_cluster_id: str, *, owner: str | None
    ) -> tuple[WatchedCluster, ClusterDiagnosis]:
        """`register`, then the doctor's checks on the cluster; findings are logged, never a refusal."""
        watched = await self.register(raw_cluster_id, owner=owner)
        [report] = (await self.doctor([watched.cluster_id])).clusters
        log_findings(report, context="register")
        return watched, report

    async def doctor(self, cluster_ids: list[str] | None = None) -> DoctorReport:
        """`rotation doctor` on these clusters (watched or not), or on every watched cluster."""
        if cluster_ids is None:
            cluster_ids = [w.cluster_id async for w in self.registry.watched.iterate()]
        async with Doctor.for_runtime(self.runtime) as doctor:
            return await doctor.check_many(cluster_ids)

    def _cmk_key(self, cluster: Cluster) -> KeyUrl:
        if not cluster.is_cmk or cluster.key_url is None:
            raise RegistrationRefused("cluster is not encrypted with a customer-managed key (not-cmk)")
        if cluster.key_identity is None:
            raise RegistrationRefused("cluster has no key encryption identity")
        try:
            return parse_key_url(cluster.key_url, allowed_suffixes=self.settings.allowed_vault_suffixes)
        except InvalidKeyUrl as exc:
            raise RegistrationRefused(f"cluster key is outside the allowed vaults: {exc}") from exc


def _as_arm_spells_it(given: ResourceId, arm_id: str) -> ResourceId:
    """The cluster id in the casing of ARM's answer (ids are case-insensitive; the registry shows ARM's)."""
    try:
        answered = parse_cluster_id(arm_id)
    except InvalidResourceId:
        return given
    return answered if answered.normalized == given.normalized else given


def watched_dict(w: WatchedCluster) -> dict[str, Any]:
    """A watched cluster as JSON (no ETag)."""
    out = asdict(w)
    out.pop("etag", None)
    for name, value in out.items():
        if isinstance(value, datetime):
            out[name] = value.isoformat()
    out["key"] = w.key
    return out
