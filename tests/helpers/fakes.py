"""In-memory stand-ins for the ARM and Key Vault ports, for testing the rules without I/O."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rotation.azure.arm import AcceptedOperation, Cluster, OperationStatus
from rotation.azure.lro import OperationKind
from rotation.engine import Rotator
from rotation.errors import NotFoundError, ServiceError
from rotation.ids import KeyUrl, ResourceId, parse_key_url
from rotation.key_rules import KeyVersion
from rotation.outcomes import RotationResult
from rotation.rotation_job import RotationRequest
from rotation.settings import RetrySettings, Settings

SUB = "22222222-2222-2222-2222-222222222222"
VAULT = "https://contoso-kv.vault.azure.net"
UAMI = f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-docdb-cmk"
OTHER_UAMI = f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-app"
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def version_id(n: int) -> str:
    """Version ``n`` as Key Vault writes versions: 32 hex digits."""
    return f"{n:032x}"


def key_url(n: int | None, *, name: str = "cmk-docdb", vault: str = VAULT) -> KeyUrl:
    """The URL of version ``n`` of a key (versionless for None) in the fake vault."""
    url = f"{vault}/keys/{name}" + (f"/{version_id(n)}" if n is not None else "")
    return parse_key_url(url)


def key_version(n: int, **overrides: Any) -> KeyVersion:
    """A usable RSA 2048 version ``n``, created ``n`` days after T0; ``overrides`` change fields."""
    base = KeyVersion(
        url=key_url(n),
        enabled=True,
        created_on=T0 + timedelta(days=n),
        key_type="RSA",
        size=2048,
        operations=("encrypt", "decrypt", "wrapKey", "unwrapKey"),
    )
    return replace(base, **overrides)


def cluster(name: str = "orders-prod", *, key: KeyUrl | str | None = None, **overrides: Any) -> Cluster:
    """A ready CMK cluster with its key identity and another identity, on ``key`` (version 1 by default)."""
    base = Cluster(
        id=f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/Microsoft.DocumentDB/mongoClusters/{name}",
        name=name,
        location="westeurope",
        identity_type="UserAssigned",
        identity_ids=(UAMI, OTHER_UAMI),
        key_url=str(key) if key is not None else str(key_url(1)),
        key_identity=UAMI,
        provisioning_state="Succeeded",
        cluster_status="Ready",
    )
    return replace(base, **overrides)


class FakeClusters:
    """ARM port: clusters by normalized id; PUTs recorded; operations finish after ``op_polls`` polls."""

    def __init__(self) -> None:
        self.clusters: dict[str, Cluster] = {}
        self.puts: list[tuple[str, dict[str, Any]]] = []
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.gets = 0
        self.polls = 0
        self.op_polls = 1
        self.op_result = OperationStatus(status="Succeeded", retry_after=0.0)
        self.ignore_key_update = False
        self.errors: dict[str, deque[BaseException]] = {"get": deque(), "put": deque(), "poll": deque()}
        self._ops: dict[str, tuple[str, str, int]] = {}

    def add(self, c: Cluster) -> ResourceId:
        from rotation.ids import parse_cluster_id

        rid = parse_cluster_id(c.id)
        self.clusters[rid.normalized] = c
        return rid

    def _raise_scripted(self, method: str) -> None:
        if self.errors[method]:
            raise self.errors[method].popleft()

    async def get(self, cluster_id: ResourceId) -> Cluster:
        self.gets += 1
        self._raise_scripted("get")
        try:
            return self.clusters[cluster_id.normalized]
        except KeyError:
            raise NotFoundError("not found", service="arm", status=404, code="ResourceNotFound") from None

    async def put(self, cluster_id: ResourceId, body: dict[str, Any]) -> AcceptedOperation:
        self._raise_scripted("put")
        self.puts.append((str(cluster_id), body))
        return self._accept(cluster_id, body)

    async def patch(self, cluster_id: ResourceId, body: dict[str, Any]) -> AcceptedOperation:
        self._raise_scripted("put")
        self.patches.append((str(cluster_id), body))
        return self._accept(cluster_id, body)

    def _accept(self, cluster_id: ResourceId, body: dict[str, Any]) -> AcceptedOperation:
        url = f"https://management.azure.com/operationsStatus/{len(self.puts) + len(self.patches)}"
        new_key = body["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"]
        self._ops[url] = (cluster_id.normalized, new_key, 0)
        return AcceptedOperation(
            url=url, retry_after=0.0, request_id=f"req-{len(self.puts)}", correlation_id=None
        )

    async def operation_status(
        self, url: str, *, cluster_id: ResourceId, kind: OperationKind | None = None
    ) -> OperationStatus:
        del cluster_id, kind
        self.polls += 1
        self._raise_scripted("poll")
        cid, new_key, polls = self._ops[url]
        polls += 1
        self._ops[url] = (cid, new_key, polls)
        if polls < self.op_polls:
            return OperationStatus(status="InProgress", retry_after=1.0)
        if self.op_result.succeeded and not self.ignore_key_update:
            self.clusters[cid] = replace(self.clusters[cid], key_url=new_key)
        return self.op_result


class FakeKeys:
    """Key Vault port: versions by (host, key name)."""

    def __init__(self, *versions: KeyVersion) -> None:
        self.versions: dict[str, KeyVersion] = {}
        self.reads = 0
        self.ahead: list[KeyUrl] = []  # what jobs asked `read_ahead` for
        self.errors: deque[BaseException] = deque()
        for v in versions:
            self.add(v)

    def add(self, v: KeyVersion) -> None:
        self.versions[str(v.url).lower()] = v

    async def get_version(self, key: KeyUrl) -> KeyVersion:
        self.reads += 1
        if self.errors:
            raise self.errors.popleft()
        try:
            return self.versions[str(key).lower()]
        except KeyError:
            raise NotFoundError("no such version", service="keyvault", status=404) from None

    def read_ahead(self, keys: Iterable[KeyUrl]) -> None:
        """Recorded, not read: a job's reads are counted where it makes them."""
        self.ahead.extend(keys)

    async def newest_usable(self, key: KeyUrl, now: datetime | None = None) -> KeyVersion | None:
        from rotation.key_rules import unusable_reason

        self.reads += 1
        now = now or datetime.now(UTC)
        mine = [v for v in self.versions.values() if v.url.same_key(key)]
        mine.sort(key=lambda v: v.created_on or T0, reverse=True)
        return next((v for v in mine if unusable_reason(v, now) is None), None)


def transient(status: int = 503, retry_after: float | None = None, code: str | None = None) -> ServiceError:
    """A retryable ARM error (503 by default)."""
    return ServiceError("transient", service="arm", status=status, code=code, retry_after=retry_after)


NOW = datetime(2026, 11, 28, tzinfo=UTC)


class FakeTime:
    """A clock that moves only when the rotator sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        """The fake monotonic time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Record the sleep and move the clock on, at once."""
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    """A clock that moves only when the code under test sleeps."""
    return FakeTime()


def make_rotator(arm: FakeClusters, kv: FakeKeys, fake_time: FakeTime, **settings: object) -> Rotator:
    """A `Rotator` on the fakes and the fake time (``NOW`` for dates); ``settings`` override fast defaults."""
    base = Settings(retry=RetrySettings(max_attempts=4, max_seconds=600, initial_wait=0.5, max_wait=4))
    return Rotator(
        clusters=arm,
        keys=kv,
        settings=replace(base, **settings),  # type: ignore[arg-type]
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        now=lambda: NOW,
    )


async def rotate(
    rotator: Rotator, cid: ResourceId, target: KeyUrl | None = None, **kw: Any
) -> RotationResult:
    """One `RotationRequest` through ``rotator``."""
    return await rotator.rotate(RotationRequest(cluster_id=cid, target=target, **kw))
