"""The one retry layer (rule 6): named tenacity policies with their predicates written out.

Retried: 429 (waiting the server's ``Retry-After``), 409 and ``RetryableErrorDueToAnotherOperation``, 408,
5xx, and no response at all (connection refused or reset, timeout). Never retried: 400, 401, 403, 404 and
anything that is not a `ServiceError`. Attempts and total time are both bounded; the last real exception
reaches the caller (``reraise=True``), never a tenacity wrapper.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
)
from tenacity.stop import (
    stop_base,
)

from rotation.errors import ServiceError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from rotation.settings import RetrySettings

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


def is_retryable(exc: BaseException) -> bool:
    """The retry predicate: a `ServiceError` whose status says the same call may succeed later."""
    return isinstance(exc, ServiceError) and exc.transient


@dataclass(frozen=True)
class RetryAfterWait:
    """Wait what the server asked for (``Retry-After``), else full-jitter exponential backoff."""

    initial: float
    maximum: float
    rng: random.Random

    def __call__(self, state: RetryCallState) -> float:
        """Seconds to wait before the next attempt."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ServiceError) and exc.retry_after is not None:
            # The server's word wins, capped so one odd header cannot park a worker for an hour.
            return min(max(exc.retry_after, 0.0), max(self.maximum, 60.0))
        ceiling = min(self.maximum, self.initial * (2 ** (state.attempt_number - 1)))
        return self.rng.uniform(0, ceiling)


class RetryPolicy:
    """A named retry policy for one kind of call (ARM write, ARM read, Key Vault read)."""

    def __init__(
        self,
        name: str,
        settings: RetrySettings,
        *,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self._settings = settings
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security

    async def call(
        self,
        func: Callable[[], Awaitable[_T]],
        *,
        log_fields: Mapping[str, Any] | None = None,
    ) -> tuple[_T, int]:
        """Run ``func`` under this policy; return its result and the number of attempts it took."""
        fields = dict(log_fields or {})
        started = self._clock()
        budget = self._settings.max_seconds

        clock = self._clock

        class OutOfTime(stop_base):
            """Stop rather than start a wait that would end past the total budget."""

            def __call__(self, state: RetryCallState) -> bool:
                return clock() - started + (state.upcoming_sleep or 0.0) > budget

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            extra = {
                **fields,
                "policy": self.name,
                "attempt": state.attempt_number,
                "wait_s": round(wait, 3),
                "reason": str(exc),
            }
            if isinstance(exc, ServiceError):
                extra.update(
                    status=exc.status,
                    error_code=exc.code,
                    request_id=exc.request_id,
                    correlation_id=exc.correlation_id,
                )
            logger.warning("rotation.retry_scheduled", extra=extra)

        kwargs: dict[str, Any] = {
            "retry": retry_if_exception(is_retryable),
            "stop": stop_any(stop_after_attempt(self._settings.max_attempts), OutOfTime()),
            "wait": RetryAfterWait(self._settings.initial_wait, self._settings.max_wait, self._rng),
            "reraise": True,
            "before_sleep": before_sleep,
        }
        if self._sleep is not None:
            kwargs["sleep"] = self._sleep
        retrying = AsyncRetrying(**kwargs)
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    result = await func()
        except ServiceError as exc:
            exc.attempts = attempts
            raise
        return result, attempts
