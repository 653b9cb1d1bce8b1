"""How requests are issued and timed: the closed loop, the open loop, and the recorder.

- **Closed loop**: each of C clients sends, waits for the answer, sends again. Latency is
  measured from the actual send. The offered load adapts to the server (that is the point of
  a closed loop, and also why it hides queueing).
- **Open loop** (``Schedule``): requests have fixed intended send times (``rate`` per second,
  spread over the generator processes by phase), taken by whichever of the C clients is free.
  Latency is measured **from the intended send time**, so when the server (or the generator)
  falls behind, the waiting shows up in the figures instead of being silently skipped
  (coordinated omission). Sending stops at the end of the run; intended sends that never went
  out are counted as ``missed_sends``.

A request belongs to the measured window when its start (intended time in the open loop, send
time in the closed loop) falls in ``[window_start, window_end)``; warm-up requests are
executed but not recorded. The clock and the sleep are injected, so tests drive both with
trio's ``MockClock``; a generator process uses ``time.monotonic`` (system-wide on Linux, so
processes agree on the window).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from bench._histogram import Histogram
from bench._scenario import Op

Now = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True, kw_only=True)
class Outcome:
    """What one request did: transfers committed out of those it carried, and why the others
    failed (``"422 insufficient_funds"``, ``"item 409 wallet_frozen"``, ``"connection"``...)."""

    status: str  # the HTTP status ("201", "200", "503"...) or "core", or "connection"
    transfers: int = 0
    transfers_ok: int = 0
    read: bool = False
    errors: Counter[str] | None = None


Execute = Callable[[Op], Awaitable[Outcome]]


@dataclass(slots=True)
class Second:
    requests: int = 0
    transfers_ok: int = 0
    histogram: Histogram = field(default_factory=Histogram)


class Recorder:
    """Figures of the measured window; mergeable across generator processes."""

    def __init__(self, window_start: float, window_end: float) -> None:
        assert window_end >= window_start
        self.window_start = window_start
        self.window_end = window_end
        self.histogram = Histogram()
        self.seconds: dict[int, Second] = {}
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.requests = 0
        self.reads = 0
        self.transfers = 0
        self.transfers_ok = 0
        self.missed_sends = 0
        self.warmup_requests = 0

    def in_window(self, started: float) -> bool:
        return self.window_start <= started < self.window_end

    def record(self, started: float, finished: float, outcome: Outcome) -> None:
        if not self.in_window(started):
            if started < self.window_start:
                self.warmup_requests += 1
            return
        latency_s = finished - started
        self.histogram.record_seconds(latency_s)
        second = self.seconds.setdefault(int(started - self.window_start), Second())
        second.requests += 1
        second.transfers_ok += outcome.transfers_ok
        second.histogram.record_seconds(latency_s)
        self.statuses[outcome.status] += 1
        if outcome.errors:
            self.errors.update(outcome.errors)
        self.requests += 1
        self.reads += int(outcome.read)
        self.transfers += outcome.transfers
        self.transfers_ok += outcome.transfers_ok

    def merge(self, other: Recorder) -> None:
        self.histogram.merge(other.histogram)
        for index, second in other.seconds.items():
            mine = self.seconds.setdefault(index, Second())
            mine.requests += second.requests
            mine.transfers_ok += second.transfers_ok
            mine.histogram.merge(second.histogram)
        self.statuses.update(other.statuses)
        self.errors.update(other.errors)
        self.requests += other.requests
        self.reads += other.reads
        self.transfers += other.transfers
        self.transfers_ok += other.transfers_ok
        self.missed_sends += other.missed_sends
        self.warmup_requests += other.warmup_requests

    def to_json(self) -> dict[str, Any]:
        return {
            "window_start": self.window_start, "window_end": self.window_end,
            "histogram": self.histogram.to_json(),
            "seconds": {
                str(index): {"requests": s.requests, "transfers_ok": s.transfers_ok, "histogram": s.histogram.to_json()}
                for index, s in sorted(self.seconds.items())
            },
            "statuses": dict(self.statuses), "errors": dict(self.errors),
            "requests": self.requests, "reads": self.reads, "transfers": self.transfers,
            "transfers_ok": self.transfers_ok, "missed_sends": self.missed_sends,
            "warmup_requests": self.warmup_requests,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recorder:
        recorder = cls(data["window_start"], data["window_end"])
        recorder.histogram = Histogram.from_json(data["histogram"])
        for index, s in data["seconds"].items():
            recorder.seconds[int(index)] = Second(
                requests=s["requests"], transfers_ok=s["transfers_ok"], histogram=Histogram.from_json(s["histogram"])
            )
        recorder.statuses = Counter(data["statuses"])
        recorder.errors = Counter(data["errors"])
        for name in ("requests", "reads", "transfers", "transfers_ok", "missed_sends", "warmup_requests"):
            setattr(recorder, name, int(data[name]))
        return recorder


class Schedule:
    """Intended send times of an open loop: ``start + (index * processes + phase) / rate``, so
    P processes at ``rate / P`` each interleave into one even schedule at ``rate``."""

    def __init__(self, *, start: float, rate: float, processes: int = 1, phase: int = 0) -> None:
        assert rate > 0
        assert 0 <= phase < processes
        self.start = start
        self.rate = rate
        self.processes = processes
        self.phase = phase
        self.issued = 0

    def at(self, index: int) -> float:
        return self.start + (index * self.processes + self.phase) / self.rate

    def take(self) -> float:
        intended = self.at(self.issued)
        self.issued += 1
        return intended

    def count_before(self, end: float) -> int:
        """How many intended times fall before ``end``."""
        count = max(0, math.ceil(((end - self.start) * self.rate - self.phase) / self.processes))
        # The estimate may be off by one in float arithmetic: settle it with ``at`` itself.
        while count > 0 and self.at(count - 1) >= end:
            count -= 1
        while self.at(count) < end:
            count += 1
        return count


async def closed_loop(
    executors: list[Execute], next_op: Callable[[], Op], recorder: Recorder, *,
    start: float, end: float, now: Now, sleep: Sleep,
) -> None:
    async def client(execute: Execute) -> None:
        delay = start - now()
        if delay > 0:
            await sleep(delay)
        while True:
            op = next_op()
            sent = now()
            if sent >= end:
                return
            outcome = await execute(op)
            recorder.record(sent, now(), outcome)

    async with trio.open_nursery() as nursery:
        for execute in executors:
            nursery.start_soon(client, execute)


async def open_loop(
    executors: list[Execute], next_op: Callable[[], Op], recorder: Recorder, schedule: Schedule, *,
    end: float, now: Now, sleep: Sleep,
) -> None:
    async def client(execute: Execute) -> None:
        while True:
            if now() >= end:
                return
            intended = schedule.take()
            if intended >= end:
                return
            delay = intended - now()
            if delay > 0:
                await sleep(delay)
            outcome = await execute(next_op())
            recorder.record(intended, now(), outcome)

    async with trio.open_nursery() as nursery:
        for execute in executors:
            nursery.start_soon(client, execute)
    # Every ``take`` that returned a time before ``end`` was sent (a client only stops before
    # taking, or after taking a time at or past ``end``); the rest of the schedule was missed.
    due = schedule.count_before(end)
    sent = min(schedule.issued, due)
    recorder.missed_sends += sum(1 for index in range(sent, due) if recorder.in_window(schedule.at(index)))
