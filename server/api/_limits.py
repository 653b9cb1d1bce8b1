"""Admission limits of one HTTP process: a token bucket per API token (``RateLimiter``) and the
bound on batch requests (``BatchGate``). Both count in this process only: with ``--workers N``
each worker has its own (ADR 0006), so N workers allow up to N times the configured rate.
Runs in every HTTP worker, and in the one process of ``--workers 0``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from server._errors import overloaded

# Batch requests handled at once: each may hold a 16 MiB body and what it decodes to (several
# times that for bodies of many small values), so they get their own bound below --max-in-flight.
BATCHES_IN_FLIGHT_MAX = 16


class RateLimiter:
    """A token bucket per API token: ``rate`` requests/s refill, ``burst`` at most. Buckets are
    keyed by the token's hash, so memory is bounded by the number of tokens that exist."""

    def __init__(self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        assert rate > 0 and burst >= 1
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._buckets: dict[bytes, tuple[float, float]] = {}

    def check(self, key: bytes) -> float:
        """0 when the request may go; else the seconds until it could."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - last) * self._rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self._rate
        self._buckets[key] = (tokens - 1, now)
        return 0.0


class BatchGate:
    """How many batch requests are handled at once (``in_flight``, at most ``in_flight_max``),
    and how many bodies each caller is still sending (half that, per caller scope): each caller
    has its own share of the second, so one caller's slow uploads cannot take everyone's slots."""

    def __init__(self, in_flight_max: int = BATCHES_IN_FLIGHT_MAX) -> None:
        assert in_flight_max >= 1
        self.in_flight = 0
        self.in_flight_max = in_flight_max
        self._receiving: dict[str, int] = {}
        self._receiving_max = max(1, in_flight_max // 2)

    @contextmanager
    def receiving(self, scope: str) -> Iterator[None]:
        """While a body of the caller ``scope`` arrives; 503 overloaded when it already sends
        its share."""
        receiving = self._receiving.get(scope, 0)
        if receiving >= self._receiving_max:
            raise overloaded(f"this caller already sends {receiving} batch requests; retry shortly")
        self._receiving[scope] = receiving + 1
        try:
            yield
        finally:
            left = self._receiving[scope] - 1
            if left:
                self._receiving[scope] = left
            else:
                del self._receiving[scope]

    @contextmanager
    def handling(self) -> Iterator[None]:
        """While a batch is decoded and posted; 503 overloaded when ``in_flight_max`` are."""
        if self.in_flight >= self.in_flight_max:
            raise overloaded(f"{self.in_flight} batch requests are being handled; retry shortly")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
