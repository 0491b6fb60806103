"""Event Grid subscriptions with a webhook destination: the simulator delivers its Key Vault events.

What Event Grid does, as Microsoft documents it:

- Creating a subscription validates the endpoint first ("Endpoint validation with Event Grid event schema";
  "Endpoint validation with CloudEvents schema"). Event Grid schema: a POST of a one-element array holding a
  ``Microsoft.EventGrid.SubscriptionValidationEvent`` with ``data.validationCode`` and ``data.validationUrl``,
  header ``aeg-event-type: SubscriptionValidation``; the endpoint must answer 200 with
  ``{"validationResponse": <code>}``. CloudEvents 1.0 schema: an ``OPTIONS`` request with
  ``WebHook-Request-Origin: eventgrid.azure.net``; the endpoint must answer 200 with
  ``WebHook-Allowed-Origin`` naming that origin (or ``*``). A failed handshake fails the creation.
- Delivery ("Event Grid message delivery and retry"; the message headers include file): one POST per event
  (batching is off unless configured), Event Grid schema as a JSON array, CloudEvents as one
  ``application/cloudevents+json`` object; headers ``aeg-event-type: Notification``,
  ``aeg-subscription-name``, ``aeg-delivery-count``, ``aeg-metadata-version``, ``aeg-data-version``. 200-204
  is success. No answer within 30 s is a failure. 400, 401 and 413 are not retried (the event is dropped:
  no dead-letter destination here); anything else is retried after 10 s, 30 s, 1 min, 5 min, 10 min,
  30 min, 1 h, 3 h, 6 h, then every 12 h, for at most 30 attempts or 24 h (docs/design.md, Azure behaviour 1).
  A subscription may shorten the schedule (``retry_delays``, whose last delay repeats) for local use.

Deliveries run on a thread and event loop of their own, so a slow endpoint never holds the simulator up.
Each attempt is recorded (`deliveries`).
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    import concurrent.futures

__all__ = ["EventSubscriptions", "SubscriptionError"]

VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
ORIGIN = "eventgrid.azure.net"
SCHEMAS = ("eventgrid", "cloudevents")
# Waits before each retry; the last one repeats ("then every 12 hours").
RETRY_DELAYS: tuple[float, ...] = (10, 30, 60, 300, 600, 1800, 3600, 10800, 21600, 43200)
MAX_ATTEMPTS = 30
EVENT_TTL_S = 24 * 3600.0
TIMEOUT_S = 30.0
NOT_RETRIED = frozenset({400, 401, 413})
_START_TIMEOUT_S = 10.0


class SubscriptionError(ValueError):
    """The subscription cannot be created (bad input, or the endpoint failed the validation handshake)."""


@dataclass
class Subscription:
    """One event subscription with a webhook destination."""

    name: str
    endpoint: str
    schema: str
    vault: str | None  # only events of this vault (its name), or every vault
    event_types: tuple[str, ...]  # full names; empty: every Key Vault event type
    retry_delays: tuple[float, ...] = RETRY_DELAYS
    created: float = field(default_factory=time.time)

    def wants(self, event: dict[str, Any]) -> bool:
        """Whether ``event`` passes this subscription's filters."""
        data = event.get("data") or {}
        if self.vault is not None and str(data.get("VaultName", "")).lower() != self.vault.lower():
            return False
        return not self.event_types or event.get("eventType") in self.event_types

    def delay(self, attempt: int) -> float:
        """The wait before attempt ``attempt + 1`` (``attempt`` >= 1); the last delay repeats."""
        if not self.retry_delays:
            return 0.0
        return float(self.retry_delays[min(attempt, len(self.retry_delays)) - 1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        out = asdict(self)
        out["event_types"] = list(self.event_types)
        out["retry_delays"] = list(self.retry_delays)
        return out


@dataclass(frozen=True)
class Delivery:
    """One delivery attempt of one event to one subscription."""

    subscription: str
    event_id: str
    attempt: int
    status: int | None  # None: no answer (refused, reset, timeout)
    outcome: str  # delivered | retrying | dropped
    time: float
    error: str | None = None


def cloud_event(event: dict[str, Any]) -> dict[str, Any]:
    """The same Key Vault event in CloudEvents 1.0 JSON (the mapping Event Grid applies to system events)."""
    return {
        "id": event["id"],
        "source": event["topic"],
        "subject": event["subject"],
        "type": event["eventType"],
        "time": event["eventTime"],
        "specversion": "1.0",
        "data": copy.deepcopy(event["data"]),
    }


class EventSubscriptions:
    """The simulator's event subscriptions; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: dict[str, Subscription] = {}
        self._deliveries: list[Delivery] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="azsim-eventgrid", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def stop(self) -> None:
        """Cancel pending deliveries and stop the delivery thread (idempotent)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), loop).result(_START_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_START_TIMEOUT_S)
        loop.close()

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # trust_env=False: deliveries go straight to the endpoint, never through HTTPS_PROXY.
            self._session = aiohttp.ClientSession(
                trust_env=False, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)
            )
        return self._session

    # -- subscriptions -----------------------------------------------------------------------------

    def add(
        self,
        endpoint: str,
        *,
        schema: str = "eventgrid",
        vault: str | None = None,
        event_types: list[str] | None = None,
        name: str | None = None,
        retry_delays: list[float] | None = None,
    ) -> concurrent.futures.Future[dict[str, Any]]:
        """Validate ``endpoint`` and, if it passes, subscribe it; the future holds the subscription.

        The future fails with `SubscriptionError` when the input is bad or the handshake fails.
        """
        schema = schema.lower()
        if schema not in SCHEMAS:
            raise SubscriptionError(f"schema must be one of {', '.join(SCHEMAS)}, got {schema!r}")
        if not endpoint.startswith(("http://", "https://")):
            raise SubscriptionError(f"endpoint must be an http(s) URL, got {endpoint!r}")
        types = tuple(
            t if t.startswith("Microsoft.KeyVault.") else f"Microsoft.KeyVault.{t}" for t in event_types or []
        )
        delays = tuple(float(d) for d in retry_delays) if retry_delays is not None else RETRY_DELAYS
        if any(d < 0 for d in delays):
            raise SubscriptionError("retry_delays must not be negative")
        subscription = Subscription(
            name=name or f"sub-{uuid.uuid4().hex[:8]}",
            endpoint=endpoint,
            schema=schema,
            vault=vault,
            event_types=types,
            retry_delays=delays,
        )
        return asyncio.run_coroutine_threadsafe(self._validate(subscription), self._ensure_loop())

    def remove(self, name: str) -> None:
        """Delete a subscription (``KeyError`` if unknown)."""
        with self._lock:
            del self._subscriptions[name]

    def listing(self) -> list[dict[str, Any]]:
        """Every subscription."""
        with self._lock:
            return [s.to_dict() for s in self._subscriptions.values()]

    @property
    def deliveries(self) -> list[dict[str, Any]]:
        """Every delivery attempt so far, oldest first."""
        with self._lock:
            return [asdict(d) for d in self._deliveries]

    async def _validate(self, subscription: Subscription) -> dict[str, Any]:
        session = self._http()
        try:
            if subscription.schema == "cloudevents":
                await self._validate_cloudevents(session, subscription.endpoint)
            else:
                await self._validate_eventgrid(session, subscription)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SubscriptionError(
                f"validation handshake with {subscription.endpoint} failed: {type(exc).__name__}: {exc}"
            ) from None
        with self._lock:
            self._subscriptions[subscription.name] = subscription
        return subscription.to_dict()

    @staticmethod
    async def _validate_eventgrid(session: aiohttp.ClientSession, subscription: Subscription) -> None:
        code = str(uuid.uuid4()).upper()
        event = {
            "id": str(uuid.uuid4()),
            "topic": f"/providers/Microsoft.EventGrid/eventSubscriptions/{subscription.name}",
            "subject": "",
            "data": {
                "validationCode": code,
                "validationUrl": f"https://eventgrid.azure.net/eventsubscriptions/{subscription.name}/validate?id={code}",
            },
            "eventType": VALIDATION_EVENT,
            "eventTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "metadataVersion": "1",
            "dataVersion": "2",
        }
        headers = {"aeg-event-type": "SubscriptionValidation", "aeg-subscription-name": subscription.name}
        async with session.post(subscription.endpoint, json=[event], headers=headers) as resp:
            text = await resp.text()
            if resp.status != 200:  # noqa: PLR2004
                raise SubscriptionError(
                    f"validation handshake with {subscription.endpoint} failed: "
                    f"HTTP {resp.status} {text[:200]}"
                )
            try:
                answer = await resp.json(content_type=None)
            except ValueError:
                answer = None
        if not isinstance(answer, dict) or answer.get("validationResponse") != code:
            raise SubscriptionError(
                f"validation handshake with {subscription.endpoint} failed: the answer did not echo the "
                f"validationCode ({text[:200]!r})"
            )

    @staticmethod
    async def _validate_cloudevents(session: aiohttp.ClientSession, endpoint: str) -> None:
        headers = {"WebHook-Request-Origin": ORIGIN}
        async with session.options(endpoint, headers=headers) as resp:
            allowed = resp.headers.get("WebHook-Allowed-Origin", "")
            if resp.status != 200 or allowed not in {ORIGIN, "*"}:  # noqa: PLR2004
                raise SubscriptionError(
                    f"validation handshake with {endpoint} failed: HTTP {resp.status}, "
                    f"WebHook-Allowed-Origin {allowed!r}"
                )

    # -- delivery ----------------------------------------------------------------------------------

    def publish(self, event: dict[str, Any]) -> None:
        """Deliver ``event`` to every subscription that wants it (returns at once; any thread)."""
        with self._lock:
            targets = [s for s in self._subscriptions.values() if s.wants(event)]
            loop = self._loop
        if not targets or loop is None:
            return
        for subscription in targets:
            loop.call_soon_threadsafe(self._spawn, subscription, copy.deepcopy(event))

    def _spawn(self, subscription: Subscription, event: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(subscription, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, subscription: Subscription, event: dict[str, Any]) -> None:
        first = time.monotonic()
        if subscription.schema == "cloudevents":
            body: Any = cloud_event(event)
            content_type = "application/cloudevents+json; charset=utf-8"
            versions = {"aeg-metadata-version": "1.0"}
        else:
            body = [event]
            content_type = "application/json"
            versions = {
                "aeg-metadata-version": str(event.get("metadataVersion", "1")),
                "aeg-data-version": str(event.get("dataVersion", "")),
            }
        attempt = 0
        while True:
            attempt += 1
            headers = {
                "Content-Type": content_type,
                "aeg-event-type": "Notification",
                "aeg-subscription-name": subscription.name,
                "aeg-delivery-count": str(attempt - 1),
                **versions,
            }
            status: int | None = None
            error: str | None = None
            try:
                async with self._http().post(subscription.endpoint, json=body, headers=headers) as resp:
                    status = resp.status
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            delivered = status is not None and 200 <= status <= 204  # noqa: PLR2004
            last = (
                delivered
                or status in NOT_RETRIED
                or attempt >= MAX_ATTEMPTS
                or time.monotonic() - first + subscription.delay(attempt) > EVENT_TTL_S
            )
            outcome = "delivered" if delivered else "dropped" if last else "retrying"
            with self._lock:
                self._deliveries.append(
                    Delivery(
                        subscription.name, str(event["id"]), attempt, status, outcome, time.time(), error
                    )
                )
            if last:
                return
            await asyncio.sleep(subscription.delay(attempt))
