"""The payout workers: they send held withdrawals to the bank and tell the ledger what came back.

``Payouts`` owns a queue of withdrawal ids, a delay heap for backoff and exactly ``workers``
tasks, which bounds the bank calls in flight. It owns no money and no durable state: every state
change is a command to the ledger (``PayoutLedger``), and the ledger's durable record is the
truth. The workers stand outside the state machine and must never decide anything the ledger
has not recorded first: an attempt is counted (``begin_attempt``, durable) *before* the bank is
called, so a crash at any point leaves the withdrawal ``processing`` and the next start sends it
again under the same idempotency key (the withdrawal id). A bank that honours the key pays once.

One attempt, as a table (each row has a test in ``tests/server/test_payouts.py``):

    begin_attempt(id)          -> None: no longer payable (completed, failed, dead, unknown): skip
                               -> the order, attempts counted: call the bank (timeout bounded)
    bank: paid                 -> ledger.paid(id, reference)                      (completed)
    bank: refused              -> ledger.refused(id, reason)                      (failed, hold voided)
    bank: transient, attempts < max_attempts
                               -> ledger.transient(id, error, retry_at); wait until retry_at
    bank: transient, attempts >= max_attempts
                               -> ledger.dead(id, error)                           (hold kept)
    bank call raises or times out -> transient, as above
    a ledger call raises       -> wait (backoff) and make the *same* ledger call again, forever:
                                  the bank is never called again because the ledger failed

Backoff is exponential with full jitter: ``uniform(0, min(backoff_max_s, backoff_base_s *
2**(attempts-1)))`` from a seeded ``random.Random`` (a bank's ``Retry-After`` raises the floor).
Full jitter spreads retries of many withdrawals that failed together (a bank outage) instead of
sending them back in waves; the rejected alternative, a fixed schedule, would hit a recovering
bank with every withdrawal at once.

Invariants: an id is in at most one of ready / delayed / in flight (``_where``); at most
``workers`` bank calls run at once; ``submit`` never blocks and never drops an id (an id submitted
while in flight is queued again when its attempt ends, so an operator's retry that races a worker
is not lost). The queue holds only payable withdrawals, which the ledger holds in memory anyway,
so it is bounded by the ledger, not by a constant of its own.

Cancellation (shutdown) abandons in-flight bank calls: their withdrawals stay ``processing`` in
the log and are sent again, with the same key, on the next start.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import anyio
import anyio.abc

log = logging.getLogger("server.payouts")

WORKERS_DEFAULT = 16
MAX_ATTEMPTS_DEFAULT = 8
BACKOFF_BASE_S = 0.2
BACKOFF_MAX_S = 30.0
BANK_TIMEOUT_S = 10.0
ERROR_CHARS_MAX = 500  # bank reasons and errors kept in the ledger are cut to this length
# Histogram bounds for the bank's latency (seconds); the last bucket (+Inf) catches the rest.
BANK_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
assert list(BANK_LATENCY_BUCKETS_S) == sorted(BANK_LATENCY_BUCKETS_S)

T = TypeVar("T")
Outcome = Literal["paid", "refused", "transient"]
OUTCOMES: tuple[Outcome, ...] = ("paid", "refused", "transient")


@dataclass(frozen=True, slots=True, kw_only=True)
class PayoutOrder:
    withdrawal_id: str
    wallet_id: str
    asset: str
    amount: int
    destination: dict[str, Any]
    attempts: int  # attempts already started (durable count)
    next_attempt_at_us: int  # 0 = as soon as possible (unix µs)


@dataclass(frozen=True, slots=True, kw_only=True)
class BankResult:
    outcome: Outcome
    detail: str  # the bank's reason (refused) or what went wrong (transient); "" when paid
    reference: str | None = None  # the bank's id for the payment, when it gave one
    retry_after_s: float | None = None  # the bank's Retry-After, a floor for the next backoff


class PayoutLedger(Protocol):
    """The ledger's side of payouts. Every method is durable before it returns, and may raise
    (storage failed, overloaded): the caller then waits and makes the same call again."""

    async def payable(self) -> list[PayoutOrder]:
        """Every withdrawal that is pending or processing (called once at start, after recovery)."""
        ...

    async def begin_attempt(self, withdrawal_id: str) -> PayoutOrder | None:
        """Status -> processing, attempts += 1; the updated order, or None if it is no longer
        payable (completed, failed, dead or unknown)."""
        ...

    async def paid(self, withdrawal_id: str, bank_reference: str | None) -> None: ...

    async def refused(self, withdrawal_id: str, reason: str) -> None: ...

    async def transient(self, withdrawal_id: str, error: str, retry_at_us: int) -> None: ...

    async def dead(self, withdrawal_id: str, error: str) -> None: ...


class Bank(Protocol):
    async def pay(self, order: PayoutOrder) -> BankResult:
        """Never raises for the bank's answers or transport failures: they are results. (If it
        does raise, the attempt counts as transient.)"""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PayoutsStatistics:
    workers: int
    queued: int  # ready now, waiting for a worker
    delayed: int  # waiting for their backoff to end
    in_flight: int  # taken by a worker (ledger or bank call under way)
    bank_in_flight: int  # bank calls under way (never more than workers)
    attempts: dict[str, int]  # bank results by outcome: paid, refused, transient
    completed: int  # ledger.paid recorded
    failed: int  # ledger.refused recorded
    dead: int  # ledger.dead recorded
    rescheduled: int  # ledger.transient recorded
    skipped: int  # begin_attempt said the withdrawal is no longer payable
    timeouts: int  # bank calls cut off by the timeout (counted as transient too)
    ledger_errors: int  # ledger calls that raised and were retried
    bank_latency_bucket_counts: tuple[int, ...]  # per BANK_LATENCY_BUCKETS_S bound, then +Inf
    bank_latency_s_total: float


def now_us() -> int:
    return time.time_ns() // 1000


def backoff_s(attempts: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_s, base_s * 2**(attempts - 1))]."""
    assert attempts >= 1
    assert base_s > 0
    assert max_s >= base_s
    ceiling = min(max_s, base_s * 2.0 ** min(attempts - 1, 64))
    delay = rng.uniform(0.0, ceiling)
    assert 0.0 <= delay <= max_s
    return delay


def _cut(text: str) -> str:
    return text if len(text) <= ERROR_CHARS_MAX else text[: ERROR_CHARS_MAX - 3] + "..."


class Payouts:
    def __init__(
        self,
        ledger: PayoutLedger,
        bank: Bank,
        *,
        workers: int = WORKERS_DEFAULT,
        max_attempts: int = MAX_ATTEMPTS_DEFAULT,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        bank_timeout_s: float = BANK_TIMEOUT_S,
        clock: Callable[[], int] = now_us,
        rng: random.Random | None = None,
    ) -> None:
        assert workers >= 1
        assert max_attempts >= 1
        assert 0 < backoff_base_s <= backoff_max_s
        assert bank_timeout_s > 0
        self._ledger = ledger
        self._bank = bank
        self._workers = workers
        self._max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._bank_timeout_s = bank_timeout_s
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        # Where each known id is: "ready" (in _ready), "delayed" (in _due and _heap) or
        # "in_flight" (a worker has it). An id is in exactly one place, or unknown.
        self._where: dict[str, Literal["ready", "delayed", "in_flight"]] = {}
        self._ready: deque[str] = deque()
        self._heap: list[tuple[int, int, str]] = []  # (due µs, sequence, id); stale entries skipped
        self._due: dict[str, int] = {}  # the live due time of each delayed id
        self._sequence = 0
        self._again: set[str] = set()  # submitted while in flight: queue again afterwards
        # Made in run(): anyio primitives need the event loop. Until then submit() only queues.
        self._ready_wakeup: anyio.Event | None = None
        self._timer_wakeup: anyio.Event | None = None
        self._in_flight = 0  # ids a worker holds
        self._bank_in_flight = 0
        self._attempts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._completed = 0
        self._failed = 0
        self._dead = 0
        self._rescheduled = 0
        self._skipped = 0
        self._timeouts = 0
        self._ledger_errors = 0
        self._latency_counts = [0] * (len(BANK_LATENCY_BUCKETS_S) + 1)
        self._latency_total_s = 0.0

    # -- the public face ---------------------------------------------------------------------

    def submit(self, withdrawal_id: str) -> None:
        """Asks for an attempt as soon as a worker is free (a new withdrawal is durable, or an
        operator re-queued a dead one). Never blocks. Idempotent while the id is queued; an id
        in backoff is moved to the front; an id in flight is queued again once its attempt ends
        (``begin_attempt`` then decides whether anything is left to do)."""
        where = self._where.get(withdrawal_id)
        if where == "ready":
            return
        if where == "in_flight":
            self._again.add(withdrawal_id)
            return
        if where == "delayed":
            del self._due[withdrawal_id]  # its heap entry is now stale
            self._wake_timer()
        self._push_ready(withdrawal_id)

    def statistics(self) -> PayoutsStatistics:
        return PayoutsStatistics(
            workers=self._workers, queued=len(self._ready), delayed=len(self._due),
            in_flight=self._in_flight, bank_in_flight=self._bank_in_flight, attempts=dict(self._attempts),
            completed=self._completed, failed=self._failed, dead=self._dead,
            rescheduled=self._rescheduled, skipped=self._skipped, timeouts=self._timeouts,
            ledger_errors=self._ledger_errors,
            bank_latency_bucket_counts=tuple(self._latency_counts),
            bank_latency_s_total=self._latency_total_s,
        )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Runs the workers until cancelled. Reports started as soon as ``submit`` wakes workers;
        then loads ``payable()`` (retried while the ledger raises) and schedules each order at
        its ``next_attempt_at_us``. Once per ``Payouts``: after a cancellation, make a new one
        (as a restart does), since abandoned attempts are only found again through ``payable``."""
        assert self._ready_wakeup is None, "run() once per Payouts"
        self._ready_wakeup = anyio.Event()
        self._timer_wakeup = anyio.Event()
        async with anyio.create_task_group() as group:
            for index in range(self._workers):
                group.start_soon(self._worker, name=f"payout-worker-{index}")
            group.start_soon(self._timer, name="payout-timer")
            task_status.started()
            orders = await self._ledger_call("payable", self._ledger.payable)
            now = self._clock()
            for order in orders:
                if order.withdrawal_id in self._where:
                    continue  # submitted meanwhile: that attempt re-reads the ledger anyway
                if order.next_attempt_at_us <= now:
                    self._push_ready(order.withdrawal_id)
                else:
                    self._schedule(order.withdrawal_id, order.next_attempt_at_us)
            log.info("payouts: %d payable withdrawals loaded, %d workers", len(orders), self._workers,
                     extra={"fields": {"event": "payouts_started", "payable": len(orders),
                                       "workers": self._workers}})

    # -- queue and delay heap ------------------------------------------------------------------

    def _push_ready(self, withdrawal_id: str) -> None:
        self._where[withdrawal_id] = "ready"
        self._ready.append(withdrawal_id)
        if self._ready_wakeup is not None:
            self._ready_wakeup.set()

    def _schedule(self, withdrawal_id: str, due_us: int) -> None:
        assert withdrawal_id not in self._where
        # A wall clock that jumped back (or a due time far in the future in the log) must not
        # park a withdrawal for longer than one maximal backoff.
        due_us = min(due_us, self._clock() + math.ceil(self._backoff_max_s * 1_000_000))
        self._where[withdrawal_id] = "delayed"
        self._due[withdrawal_id] = due_us
        self._sequence += 1
        heapq.heappush(self._heap, (due_us, self._sequence, withdrawal_id))
        if self._heap[0][2] == withdrawal_id:
            self._wake_timer()

    def _wake_timer(self) -> None:
        if self._timer_wakeup is not None:
            self._timer_wakeup.set()

    async def _take(self) -> str:
        assert self._ready_wakeup is not None
        while not self._ready:
            if self._ready_wakeup.is_set():
                self._ready_wakeup = anyio.Event()
            await self._ready_wakeup.wait()
        withdrawal_id = self._ready.popleft()
        assert self._where[withdrawal_id] == "ready"
        self._where[withdrawal_id] = "in_flight"
        self._in_flight += 1
        assert self._in_flight <= self._workers
        return withdrawal_id

    async def _timer(self) -> None:
        """Moves delayed ids to the ready queue when their time comes."""
        assert self._timer_wakeup is not None
        while True:
            now = self._clock()
            while self._heap and self._heap[0][0] <= now:
                due_us, _, withdrawal_id = heapq.heappop(self._heap)
                if self._due.get(withdrawal_id) != due_us:
                    continue  # stale: promoted by submit() (and perhaps scheduled again since)
                del self._due[withdrawal_id]
                self._push_ready(withdrawal_id)
            wait_s = math.inf if not self._heap else (self._heap[0][0] - now) / 1_000_000
            if self._timer_wakeup.is_set():
                self._timer_wakeup = anyio.Event()
            with anyio.move_on_after(wait_s):
                await self._timer_wakeup.wait()

    # -- one attempt -----------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            withdrawal_id = await self._take()
            retry_at_us = await self._attempt(withdrawal_id)
            assert self._where[withdrawal_id] == "in_flight"
            del self._where[withdrawal_id]
            self._in_flight -= 1
            if retry_at_us is not None:
                self._schedule(withdrawal_id, retry_at_us)
            if withdrawal_id in self._again:
                self._again.discard(withdrawal_id)
                self.submit(withdrawal_id)

    async def _attempt(self, withdrawal_id: str) -> int | None:
        """One attempt; returns when to try again, or None when this id is done with (for now)."""
        order = await self._ledger_call("begin_attempt", self._ledger.begin_attempt, withdrawal_id)
        if order is None:
            self._skipped += 1
            return None
        assert order.withdrawal_id == withdrawal_id
        assert order.attempts >= 1, "begin_attempt counts the attempt before the bank is called"
        result = await self._pay(order)
        self._attempts[result.outcome] += 1
        fields = {"event": "payout_attempt", "withdrawal_id": withdrawal_id, "attempt": order.attempts,
                  "outcome": result.outcome}
        if result.outcome == "paid":
            await self._ledger_call("paid", self._ledger.paid, withdrawal_id, result.reference)
            self._completed += 1
            log.info("payout %s paid (attempt %d, reference %s)", withdrawal_id, order.attempts,
                     result.reference, extra={"fields": {**fields, "reference": result.reference}})
            return None
        if result.outcome == "refused":
            reason = _cut(result.detail or "refused by the bank")
            await self._ledger_call("refused", self._ledger.refused, withdrawal_id, reason)
            self._failed += 1
            log.info("payout %s refused by the bank: %s", withdrawal_id, reason,
                     extra={"fields": {**fields, "reason": reason}})
            return None
        assert result.outcome == "transient"
        error = _cut(result.detail or "transient bank error")
        if order.attempts >= self._max_attempts:
            await self._ledger_call("dead", self._ledger.dead, withdrawal_id, error)
            self._dead += 1
            log.error("payout %s dead after %d attempts (hold kept; POST /v1/withdrawals/%s/retry "
                      "re-queues it): %s", withdrawal_id, order.attempts, withdrawal_id, error,
                      extra={"fields": {**fields, "error": error, "status": "dead"}})
            return None
        delay_s = backoff_s(order.attempts, base_s=self._backoff_base_s, max_s=self._backoff_max_s,
                            rng=self._rng)
        if result.retry_after_s is not None:
            delay_s = min(max(delay_s, result.retry_after_s), self._backoff_max_s)
        retry_at_us = self._clock() + math.ceil(delay_s * 1_000_000)
        await self._ledger_call("transient", self._ledger.transient, withdrawal_id, error, retry_at_us)
        self._rescheduled += 1
        log.warning("payout %s attempt %d failed, retrying in %.3f s: %s", withdrawal_id, order.attempts,
                    delay_s, error, extra={"fields": {**fields, "error": error, "retry_in_s": delay_s}})
        return retry_at_us

    async def _pay(self, order: PayoutOrder) -> BankResult:
        started = time.perf_counter()
        self._bank_in_flight += 1
        try:
            with anyio.move_on_after(self._bank_timeout_s):
                return await self._bank.pay(order)
            self._timeouts += 1
            return BankResult(outcome="transient",
                              detail=f"the bank did not answer within {self._bank_timeout_s:g} s")
        except Exception as error:  # a Bank should return results; a raising one is a transient failure
            log.warning("bank call for %s raised", order.withdrawal_id, exc_info=error)
            return BankResult(outcome="transient", detail=f"bank call failed: {type(error).__name__}: {error}")
        finally:
            self._bank_in_flight -= 1
            self._observe_latency(time.perf_counter() - started)

    def _observe_latency(self, seconds: float) -> None:
        index = len(BANK_LATENCY_BUCKETS_S)
        for position, bound in enumerate(BANK_LATENCY_BUCKETS_S):
            if seconds <= bound:
                index = position
                break
        self._latency_counts[index] += 1
        self._latency_total_s += seconds

    async def _ledger_call(self, what: str, call: Callable[..., Awaitable[T]], *arguments: Any) -> T:
        """The same ledger call until it succeeds, with backoff between tries. Only cancellation
        stops it: giving up would lose the order (or, after the bank paid, the payment's record)."""
        tries = 0
        while True:
            try:
                return await call(*arguments)
            except Exception as error:
                tries += 1
                self._ledger_errors += 1
                delay_s = backoff_s(tries, base_s=self._backoff_base_s, max_s=self._backoff_max_s, rng=self._rng)
                log.warning("payouts: ledger.%s%r raised %s: %s; trying again in %.3f s", what, arguments,
                            type(error).__name__, error, delay_s,
                            extra={"fields": {"event": "payout_ledger_error", "call": what,
                                              "error": f"{type(error).__name__}: {error}"}})
                await anyio.sleep(delay_s)
