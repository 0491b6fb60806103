"""A stand-in for the Functions host's queue trigger, for the demo and tests (there is no local host here).

It does what the host does for a queue-triggered function: receive a message with a visibility timeout,
build a real ``func.QueueMessage`` (body decoded, dequeue count), call the user function, delete the message
when it returns, leave it to reappear when it raises, and move it to ``{queue}-poison`` once its dequeue count
passes ``maxDequeueCount`` from host.json.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceExistsError
from azure.functions.queue import QueueMessage as TriggerMessage
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)
HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"


def max_dequeue_count(host_json: Path = HOST_JSON) -> int:
    """``extensions.queues.maxDequeueCount`` from host.json (the host's default is 5)."""
    doc = json.loads(host_json.read_text())
    return int(doc.get("extensions", {}).get("queues", {}).get("maxDequeueCount", 5))


@dataclass
class Context:
    """The parts of ``func.Context`` the app reads."""

    invocation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_name: str = "rotate_cluster"


@dataclass
class HostStats:
    """What one drain did."""

    invocations: int = 0
    succeeded: int = 0
    failed: int = 0
    poisoned: int = 0
    errors: list[str] = field(default_factory=list)


# A failed receive is tried again within a second or two, as the Functions host's queue listener polls again
# within its maxPollingInterval (host.json: 2 s). The queue SDK's own default waits 15 s, then 18 s: the
# benchmark once saw a fan-out's first jobs start 17 and 20 s late behind it.
LISTENER_RETRY: dict[str, Any] = {
    "retry_total": 5,
    "initial_backoff": 0.5,
    "increment_base": 2,
    "random_jitter_range": 0.5,
}


class QueueHost:
    """Drive one queue-triggered function from a real (Azurite) queue."""

    def __init__(
        self,
        connection_string: str,
        queue_name: str,
        function: Callable[..., Awaitable[None]],
        *,
        visibility_timeout: int = 1,
        max_dequeue: int | None = None,
        concurrency: int = 8,
    ) -> None:
        self._queue = QueueClient.from_connection_string(
            connection_string,
            queue_name,
            message_encode_policy=TextBase64EncodePolicy(),
            message_decode_policy=TextBase64DecodePolicy(),
            **LISTENER_RETRY,
        )
        self._poison = QueueClient.from_connection_string(
            connection_string,
            f"{queue_name}-poison",
            message_encode_policy=TextBase64EncodePolicy(),
            **LISTENER_RETRY,
        )
        self._function = function
        self._visibility = visibility_timeout
        self._max_dequeue = max_dequeue or max_dequeue_count()
        self._concurrency = concurrency
        self.stats = HostStats()

    async def close(self) -> None:
        """Close the queue clients."""
        await self._queue.close()
        await self._poison.close()

    async def _one(self, message: Any) -> None:  # noqa: ANN401 - azure QueueMessage
        if message.dequeue_count > self._max_dequeue:
            with contextlib.suppress(ResourceExistsError):
                await self._poison.create_queue()
            await self._poison.send_message(message.content)
            await self._queue.delete_message(message)
            self.stats.poisoned += 1
            return
        body = message.content.encode() if isinstance(message.content, str) else message.content
        # The class the Python worker builds for a queue trigger (func.QueueMessage with dequeue_count).
        trigger = TriggerMessage(  # type: ignore[no-untyped-call]
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            insertion_time=message.inserted_on,
            expiration_time=message.expires_on,
            pop_receipt=message.pop_receipt,
        )
        self.stats.invocations += 1
        try:
            await self._function(trigger, Context())
        except Exception as exc:  # noqa: BLE001 - the host logs and lets the message reappear
            self.stats.failed += 1
            self.stats.errors.append(f"{type(exc).__name__}: {exc}")
            return
        self.stats.succeeded += 1
        await self._queue.delete_message(message)

    def _batch(self, max_invocations: int | None) -> int:
        if max_invocations is None:
            return self._concurrency
        return max(1, min(self._concurrency, max_invocations - self.stats.invocations))

    async def drain(
        self, *, idle_seconds: float = 2.0, limit_seconds: float = 120.0, max_invocations: int | None = None
    ) -> HostStats:
        """Process messages until the queue has shown nothing for ``idle_seconds``.

        Also stops after ``limit_seconds``, or once ``max_invocations`` messages were handed to the function.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_seconds
        idle_since: float | None = None
        while loop.time() < deadline:
            if max_invocations is not None and self.stats.invocations >= max_invocations:
                break
            batch = [
                m
                async for m in self._queue.receive_messages(
                    messages_per_page=self._batch(max_invocations),
                    max_messages=self._batch(max_invocations),
                    visibility_timeout=self._visibility,
                )
            ]
            if not batch:
                props = await self._queue.get_queue_properties()
                if props.approximate_message_count == 0:
                    idle_since = idle_since or loop.time()
                    if loop.time() - idle_since >= idle_seconds:
                        break
                else:
                    idle_since = None
                await asyncio.sleep(0.1)
                continue
            idle_since = None
            await asyncio.gather(*(self._one(m) for m in batch))
        return self.stats


def decode_message(content: str) -> dict[str, Any]:
    """A queue message's JSON, whether or not it is base64-encoded."""
    try:
        return dict(json.loads(content))
    except ValueError:
        return dict(json.loads(base64.b64decode(content)))
