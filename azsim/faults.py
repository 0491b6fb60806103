"""Fault injection (scripted and random) and the ARM token-bucket throttle."""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass, field

from azsim.messages import Reply, error_reply

__all__ = ["Fault", "FaultPlan", "TokenBucket"]

_STATUS_CODES = {
    400: "BadRequest",
    404: "NotFound",
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}

RANDOM_KINDS = ("429", "409", "500", "503", "reset", "slow")


@dataclass(frozen=True)
class Fault:
    """One injected behaviour: an error status, a connection reset, or a delay before the normal answer."""

    kind: str  # "status" | "reset" | "slow" | "answer" | "trickle"
    status_code: int = 0
    error_code: str = ""
    message: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    body: str | None = None  # "answer": the raw body text sent instead of the real answer

    @classmethod
    def status(
        cls,
        code: int,
        *,
        error_code: str = "",
        message: str = "",
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Answer with this HTTP status and an Azure error body instead of the real answer."""
        return cls(
            kind="status",
            status_code=code,
            error_code=error_code or _STATUS_CODES.get(code, f"Http{code}"),
            message=message or f"Injected fault: HTTP {code}.",
            headers=tuple((headers or {}).items()),
        )

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection without answering."""
        return cls(kind="reset")

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Wait this long, then answer normally."""
        return cls(kind="slow", seconds=seconds)

    @classmethod
    def answer(cls, code: int, body: str = "", *, headers: dict[str, str] | None = None) -> Fault:
        """Answer with exactly this status, raw body text and headers: a tampered or hostile answer."""
        return cls(kind="answer", status_code=code, body=body, headers=tuple((headers or {}).items()))

    @classmethod
    def trickle(cls, seconds_per_byte: float) -> Fault:
        """Answer normally, but send the body one byte at a time, ``seconds_per_byte`` apart."""
        return cls(kind="trickle", seconds=seconds_per_byte)

    @property
    def label(self) -> str:
        """The value recorded in ``RequestRecord.fault``."""
        return str(self.status_code) if self.kind == "status" else self.kind

    def reply(self) -> Reply:
        """The error reply of a status fault."""
        reply = error_reply(self.status_code, self.error_code, self.message, dict(self.headers))
        reply.fault = self.label
        return reply


def random_fault(kind: str, slow_seconds: float) -> Fault:
    """The fault a random draw of ``kind`` produces."""
    if kind == "429":
        return Fault.status(
            429,
            error_code="TooManyRequests",
            message="Injected throttling.",
            headers={"Retry-After": "1"},
        )
    if kind == "409":
        return Fault.status(409, error_code="Conflict", message="Injected conflict.")
    if kind in {"500", "503"}:
        return Fault.status(int(kind))
    if kind == "reset":
        return Fault.reset()
    if kind == "slow":
        return Fault.slow(slow_seconds)
    raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(RANDOM_KINDS)}")


@dataclass
class _Script:
    method: str | None
    service: str | None
    path_contains: str | None
    faults: deque[Fault]

    def matches(self, service: str, method: str, path: str) -> bool:
        return (
            bool(self.faults)
            and (self.service is None or self.service == service)
            and (self.method is None or self.method.upper() == method.upper())
            and (self.path_contains is None or self.path_contains.lower() in path.lower())
        )


@dataclass
class _Rates:
    rates: dict[str, float]
    methods: tuple[str, ...] | None
    slow_seconds: float
    rng: random.Random


@dataclass
class FaultPlan:
    """Scripted faults (consumed in order) and random fault rates per service. Not thread-safe by itself."""

    seed: int = 0
    _scripts: list[_Script] = field(default_factory=list)
    _rates: dict[str | None, _Rates] = field(default_factory=dict)

    def inject(
        self,
        *,
        method: str | None,
        service: str | None,
        path_contains: str | None,
        faults: list[Fault],
    ) -> None:
        """Give the next matching requests these faults, in order."""
        self._scripts.append(_Script(method, service, path_contains, deque(faults)))

    def set_rates(
        self,
        rates: dict[str, float],
        *,
        service: str | None,
        methods: tuple[str, ...] | None,
        slow_seconds: float,
        seed: int | None,
    ) -> None:
        """Set (or with ``{}`` clear) random fault rates for one service, or all when service is None."""
        for kind, rate in rates.items():
            random_fault(kind, slow_seconds)  # validates the kind
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"rate of {kind!r} must be between 0 and 1, got {rate}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError("fault rates add up to more than 1")
        if service is None:
            self._rates.clear()
        if not rates:
            self._rates.pop(service, None)
            return
        rng = random.Random(self.seed if seed is None else seed)
        upper = tuple(m.upper() for m in methods) if methods is not None else None
        self._rates[service] = _Rates(dict(rates), upper, slow_seconds, rng)

    def clear(self) -> None:
        """Drop every scripted fault and rate."""
        self._scripts.clear()
        self._rates.clear()

    def draw(self, service: str, method: str, path: str) -> Fault | None:
        """Return the fault for this request, if any (scripted faults first)."""
        for script in self._scripts:
            if script.matches(service, method, path):
                fault = script.faults.popleft()
                self._scripts = [s for s in self._scripts if s.faults]
                return fault
        config = self._rates.get(service) or self._rates.get(None)
        if config is None or (config.methods is not None and method.upper() not in config.methods):
            return None
        roll = config.rng.random()
        cumulative = 0.0
        for kind, rate in config.rates.items():
            cumulative += rate
            if roll < cumulative:
                return random_fault(kind, config.slow_seconds)
        return None


class TokenBucket:
    """ARM-style token bucket: ``burst`` tokens, refilled at ``refill_per_s``."""

    def __init__(self, burst: int, refill_per_s: float) -> None:
        self.burst = burst
        self.refill_per_s = refill_per_s
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.refill_per_s)
        self._stamp = now

    def take(self) -> tuple[bool, int, int]:
        """Take one token: (granted, remaining whole tokens, seconds until a token is available)."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True, int(self._tokens), 0
        if self.refill_per_s <= 0:
            return False, 0, 3600
        wait = math.ceil((1.0 - self._tokens) / self.refill_per_s)
        return False, 0, max(1, wait)
