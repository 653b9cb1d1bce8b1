"""The event loop's lag, measured in every process of the server (``wallet_event_loop_lag_seconds``).

A task asks to sleep ``LOOP_LAG_INTERVAL_S`` and observes how much later than that it woke up:
the time the loop spent on other work (a long callback, a garbage collection, a blocking call)
before it came back to its timers. It is anyio, so it runs on trio, asyncio and uvloop alike.
The target the issue sets is no stall over 20 ms in any process under any load, hence the
``0.02`` bucket. It never decides anything; it only counts.

What it costs: one wake-up per interval (100 a second) and one histogram observation each,
a file write in the multi-process mode (``server._scrape``). A shorter interval would see
shorter stalls, but a stall shorter than the interval is seen anyway (whenever it overlaps a
sleep, the wake-up is late by the part that overlaps); a longer one would see fewer samples.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from prometheus_client import CollectorRegistry, Histogram

log = logging.getLogger("server.loop")

LOOP_LAG_INTERVAL_S = 0.010
LOOP_STALL_S = 0.020  # the limit: a wake-up later than this is a stall
LOOP_LAG_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
assert LOOP_STALL_S in LOOP_LAG_BUCKETS_S
ROLES = frozenset({"one", "ledger", "http", "webhooks"})


def loop_lag_histogram(registry: CollectorRegistry | None) -> Histogram:
    """The histogram, labelled by the process's role (``one``: ``--workers 0``; ``ledger`` and
    ``http``: the children of ``--workers N``)."""
    return Histogram(
        "wallet_event_loop_lag_seconds",
        f"How late the event loop woke a task that slept {LOOP_LAG_INTERVAL_S} s, by process role",
        ["role"], buckets=LOOP_LAG_BUCKETS_S, registry=registry,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopLagStatistics:
    samples: int
    stalls: int  # samples over LOOP_STALL_S
    lag_s_max: float


class LoopLag:
    """``run`` measures until cancelled; ``observe`` takes one measurement (the time is an
    input: tests drive it with a mock clock)."""

    def __init__(self, observe: Callable[[float], None], *, interval_s: float = LOOP_LAG_INTERVAL_S,
                 clock: Callable[[], float] = anyio.current_time,
                 sleep: Callable[[float], Awaitable[None]] = anyio.sleep) -> None:
        assert interval_s > 0
        self._observe = observe
        self._interval_s = interval_s
        self._clock = clock
        self._sleep = sleep
        self._samples = 0
        self._stalls = 0
        self._lag_s_max = 0.0

    def record(self, asked_s: float, slept_s: float) -> float:
        """Records a sleep of ``asked_s`` that took ``slept_s``; returns the lag."""
        lag_s = max(slept_s - asked_s, 0.0)  # a clock's rounding can wake a hair early
        self._samples += 1
        if lag_s > LOOP_STALL_S:
            self._stalls += 1
        self._lag_s_max = max(self._lag_s_max, lag_s)
        self._observe(lag_s)
        return lag_s

    async def run(self) -> None:
        while True:
            started = self._clock()
            await self._sleep(self._interval_s)
            self.record(self._interval_s, self._clock() - started)

    def statistics(self) -> LoopLagStatistics:
        return LoopLagStatistics(samples=self._samples, stalls=self._stalls, lag_s_max=self._lag_s_max)

    def log_summary(self, role: str) -> None:
        stats = self.statistics()
        log.info("event loop lag (%s): %d samples, max %.1f ms, %d over %d ms", role, stats.samples,
                 1000 * stats.lag_s_max, stats.stalls, round(1000 * LOOP_STALL_S))


def loop_lag(histogram: Histogram, role: str) -> LoopLag:
    assert role in ROLES, role
    return LoopLag(histogram.labels(role).observe)
