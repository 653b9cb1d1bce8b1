"""The payout workers against an in-memory ledger and a scripted bank: one test per row of the
attempt table in ``server/_payouts.py``, the bound on bank calls in flight, backoff, ledger
failures (retried, never a second bank call), recovery of loaded orders, and both anyio backends.

Time is trio's ``MockClock`` with autojump (the workers' clock reads it too), so backoffs of
seconds pass instantly and "not before" checks are exact; nothing asserts on wall time."""

from __future__ import annotations

import itertools
import random

import anyio
import pytest
import trio
from prometheus_client import generate_latest

from ledger import Overloaded
from server._bank import SimulatedBank
from server._observe import Metrics
from server._payouts import BankResult, PayoutOrder, Payouts, backoff_s
from server.testing import (
    HANG,
    PAID,
    RAISE,
    REFUSED,
    TRANSIENT,
    FakeBank,
    FakeLedger,
    order,
)
from wal import StorageFailed


def virtual_us() -> int:
    return int(trio.current_time() * 1_000_000)


def sequence(ledger: FakeLedger, withdrawal_id: str) -> list[str]:
    """The ledger and bank calls for one withdrawal, in order."""
    return [call[0] for call in ledger.calls if call[1] == withdrawal_id]


def make(orders: list, script: dict | None = None, **options: object) -> tuple[Payouts, FakeLedger, FakeBank]:
    ledger = FakeLedger(orders, clock=virtual_us)
    bank = FakeBank(script, clock=virtual_us, journal=ledger.calls)
    settings: dict = {"workers": 4, "max_attempts": 3, "backoff_base_s": 1.0, "backoff_max_s": 8.0,
                      "clock": virtual_us, "rng": random.Random(7)}
    settings.update(options)
    return Payouts(ledger, bank, **settings), ledger, bank  # type: ignore[arg-type]


async def run_until_settled(payouts: Payouts, ledger: FakeLedger, ids: list[str] | None = None) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(payouts.run)
        with trio.fail_after(3_000):  # virtual seconds: a hang fails instead of blocking
            await ledger.wait_settled(ids)
        nursery.cancel_scope.cancel()


# -- one test per row of the attempt table ------------------------------------------------------


async def test_paid_captures(autojump_clock: trio.testing.MockClock) -> None:
    payouts, ledger, bank = make([order("a")])
    await run_until_settled(payouts, ledger)
    assert ledger.status["a"] == "completed"
    assert ledger.reference["a"] == "ref-a"
    assert sequence(ledger, "a") == ["begin_attempt", "bank", "paid"]
    assert bank.calls_for("a") == [("a", 1, bank.calls[0][2])]
    stats = payouts.statistics()
    assert (stats.completed, stats.attempts["paid"], stats.failed, stats.dead) == (1, 1, 0, 0)


async def test_refused_voids_with_the_banks_reason(autojump_clock: trio.testing.MockClock) -> None:
    payouts, ledger, bank = make([order("b")], {"b": [REFUSED]})
    await run_until_settled(payouts, ledger)
    assert ledger.status["b"] == "failed"
    assert ledger.reason["b"] == "422 account_closed: closed"
    assert len(bank.calls_for("b")) == 1  # a refusal is final: no retry
    assert payouts.statistics().failed == 1


async def test_transient_is_retried_with_the_same_id_then_paid(autojump_clock: trio.testing.MockClock) -> None:
    payouts, ledger, bank = make([order("c")], {"c": [TRANSIENT, TRANSIENT, PAID]})
    await run_until_settled(payouts, ledger)
    assert ledger.status["c"] == "completed"
    assert [attempts for _, attempts, _ in bank.calls_for("c")] == [1, 2, 3]
    assert sequence(ledger, "c") == ["begin_attempt", "bank", "transient"] * 2 + ["begin_attempt", "bank", "paid"]
    assert payouts.statistics().rescheduled == 2


async def test_transient_at_max_attempts_is_dead_and_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    payouts, ledger, bank = make([order("d")], max_attempts=3)
    bank.default = TRANSIENT
    await run_until_settled(payouts, ledger)
    assert ledger.status["d"] == "dead"
    assert ledger.reason["d"] == "503 unavailable"
    assert len(bank.calls_for("d")) == 3
    assert len(ledger.calls_of("transient", "d")) == 2  # the third transient is the death
    assert payouts.statistics().dead == 1
    await trio.sleep(1000)  # nothing is left scheduled for it
    assert len(bank.calls_for("d")) == 3


async def test_not_payable_any_more_is_skipped(autojump_clock: trio.testing.MockClock) -> None:
    payouts, ledger, bank = make([order("e")])
    ledger.status["e"] = "completed"  # e.g. paid by a previous process
    async with trio.open_nursery() as nursery:
        await nursery.start(payouts.run)
        payouts.submit("e")
        with trio.fail_after(100):
            await ledger.wait_until(lambda: len(ledger.calls_of("begin_attempt", "e")) == 1)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert bank.calls == []
    assert payouts.statistics().skipped == 1


async def test_a_bank_that_does_not_answer_times_out_as_transient(autojump_clock: trio.testing.MockClock) -> None:
    payouts, ledger, _bank = make([order("f")], {"f": [HANG, HANG]}, max_attempts=2, bank_timeout_s=5.0)
    await run_until_settled(payouts, ledger)
    assert ledger.status["f"] == "dead"
    assert "did not answer within 5 s" in ledger.reason["f"]
    stats = payouts.statistics()
    assert stats.timeouts == 2
    assert stats.bank_in_flight == 0
    assert sum(stats.bank_latency_bucket_counts) == 2


async def test_a_bank_that_raises_is_transient(autojump_clock: trio.testing.MockClock) -> None:
    payouts, ledger, _bank = make([order("g")], {"g": [RAISE, PAID]})
    await run_until_settled(payouts, ledger)
    assert ledger.status["g"] == "completed"
    assert "RuntimeError" in ledger.calls_of("transient", "g")[0][2]


# -- bounded concurrency -------------------------------------------------------------------------


async def test_at_most_workers_bank_calls_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    orders = [order(f"w{index}") for index in range(60)]
    script = {f"w{index}": [TRANSIENT] for index in range(0, 60, 3)}  # some come back later
    payouts, ledger, bank = make(orders, script, workers=5, max_attempts=4)
    seen_in_flight = []
    pay = bank.pay

    async def pay_and_look(item: PayoutOrder) -> BankResult:
        seen_in_flight.append(payouts.statistics().bank_in_flight)  # includes this call
        return await pay(item)

    bank.pay = pay_and_look  # type: ignore[method-assign]
    await run_until_settled(payouts, ledger)
    assert all(ledger.status[item.withdrawal_id] == "completed" for item in orders)
    assert bank.in_flight_max == 5  # the pool is used, and never exceeded
    assert max(seen_in_flight) == 5
    assert len(bank.calls) == 60 + 20


# -- backoff -----------------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    rng = random.Random(3)
    base_s, max_s = 0.5, 20.0
    means = []
    for attempts in range(1, 11):
        ceiling = min(max_s, base_s * 2 ** (attempts - 1))
        samples = [backoff_s(attempts, base_s=base_s, max_s=max_s, rng=rng) for _ in range(400)]
        assert all(0.0 <= sample <= ceiling for sample in samples)
        assert max(samples) > 0.9 * ceiling  # spread over the whole range, not squeezed to the floor
        assert min(samples) < 0.1 * ceiling
        assert len(set(samples)) == len(samples)  # jittered
        means.append(sum(samples) / len(samples))
    assert all(earlier < later for earlier, later in itertools.pairwise(means[:7]))  # grows...
    assert all(abs(mean - max_s / 2) < 0.15 * max_s for mean in means[6:])  # ...up to the cap
    assert backoff_s(10_000, base_s=base_s, max_s=max_s, rng=rng) <= max_s  # no overflow


def test_backoff_replays_from_the_seed() -> None:
    first = [backoff_s(n, base_s=1.0, max_s=60.0, rng=random.Random(11)) for n in range(1, 8)]
    again = [backoff_s(n, base_s=1.0, max_s=60.0, rng=random.Random(11)) for n in range(1, 8)]
    assert first == again


async def test_retries_wait_their_jittered_backoff(autojump_clock: trio.testing.MockClock) -> None:
    payouts, ledger, _bank = make([order("h")], {"h": [TRANSIENT] * 5 + [PAID]}, max_attempts=8,
                                 backoff_base_s=1.0, backoff_max_s=8.0)
    await run_until_settled(payouts, ledger)
    transients = ledger.calls_of("transient", "h")
    begins = ledger.calls_of("begin_attempt", "h")
    assert len(transients) == 5
    delays = []
    for attempt, (_, _, _, retry_at_us, at_us) in enumerate(transients, start=1):
        ceiling_us = min(8.0, 1.0 * 2 ** (attempt - 1)) * 1_000_000
        delay = retry_at_us - at_us
        assert 0 <= delay <= ceiling_us + 1
        delays.append(delay)
        assert begins[attempt][-1] >= retry_at_us  # the next attempt waited for it
    assert len(set(delays)) == len(delays)


async def test_retry_after_from_the_bank_is_a_floor(autojump_clock: trio.testing.MockClock) -> None:
    slow_down = BankResult(outcome="transient", detail="429 rate_limited", retry_after_s=5.0)
    payouts, ledger, _bank = make([order("i")], {"i": [slow_down, PAID]}, backoff_base_s=0.01)
    await run_until_settled(payouts, ledger)
    _, _, _, retry_at_us, at_us = ledger.calls_of("transient", "i")[0]
    assert retry_at_us - at_us >= 5_000_000
    assert ledger.status["i"] == "completed"


# -- ledger failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "first_answer", "expected", "final"),
    [
        ("begin_attempt", PAID, ["begin_attempt"] * 4 + ["bank", "paid"], "completed"),
        ("paid", PAID, ["begin_attempt", "bank"] + ["paid"] * 4, "completed"),
        ("refused", REFUSED, ["begin_attempt", "bank"] + ["refused"] * 4, "failed"),
        ("transient", TRANSIENT, ["begin_attempt", "bank"] + ["transient"] * 4 + ["begin_attempt", "bank", "paid"],
         "completed"),
        ("dead", TRANSIENT, ["begin_attempt", "bank"] + ["dead"] * 4, "dead"),
    ],
)
async def test_a_failing_ledger_call_is_retried_without_calling_the_bank_again(
        autojump_clock: trio.testing.MockClock, method: str, first_answer: BankResult, expected: list[str],
        final: str) -> None:
    payouts, ledger, _bank = make([order("j")], {"j": [first_answer, PAID]},
                                 max_attempts=1 if method == "dead" else 3)
    ledger.raises[method] = [StorageFailed("fsync failed"), Overloaded("mailbox full"), StorageFailed("again")]
    await run_until_settled(payouts, ledger)
    assert sequence(ledger, "j") == expected
    calls = ledger.calls_of(method, "j")
    assert len({call[1:-1] for call in calls}) == 1  # the *same* call each time (same arguments)
    assert calls[-1][-1] > calls[0][-1]  # with a backoff between tries
    assert ledger.status["j"] == final
    assert payouts.statistics().ledger_errors == 3


async def test_payable_is_retried_until_the_ledger_answers(autojump_clock: trio.testing.MockClock) -> None:
    payouts, ledger, _bank = make([order("k")])
    ledger.raises["payable"] = [Overloaded("busy"), Overloaded("busy")]
    await run_until_settled(payouts, ledger)
    assert len(ledger.calls_of("payable")) == 3
    assert ledger.status["k"] == "completed"


# -- recovery: orders loaded at start --------------------------------------------------------


async def test_loaded_orders_honour_their_attempts_and_next_attempt_time(
        autojump_clock: trio.testing.MockClock) -> None:
    start_us = virtual_us()
    later = order("later", attempts=2, next_attempt_at_us=start_us + 50_000_000)
    last_chance = order("last", attempts=2)  # one attempt left of max_attempts=3
    fresh = order("fresh")
    payouts, ledger, bank = make([later, last_chance, fresh], {"last": [TRANSIENT]},
                                 max_attempts=3, backoff_max_s=60.0)
    await run_until_settled(payouts, ledger)
    assert ledger.status == {"later": "completed", "last": "dead", "fresh": "completed"}
    assert bank.calls_for("later")[0][1] == 3  # the durable count goes on
    assert ledger.calls_of("begin_attempt", "later")[0][-1] >= start_us + 50_000_000
    assert ledger.calls_of("begin_attempt", "fresh")[0][-1] < start_us + 1_000_000
    assert len(bank.calls_for("last")) == 1


async def test_a_far_future_next_attempt_is_clamped_to_one_maximal_backoff(
        autojump_clock: trio.testing.MockClock) -> None:
    start_us = virtual_us()
    parked = order("parked", attempts=1, next_attempt_at_us=start_us + 10**12)  # a wall clock that jumped
    payouts, ledger, _bank = make([parked], backoff_max_s=8.0)
    await run_until_settled(payouts, ledger)
    assert ledger.calls_of("begin_attempt", "parked")[0][-1] <= start_us + 8_000_000 + 1


async def test_a_cancelled_attempt_is_sent_again_with_the_same_id_by_the_next_start(
        autojump_clock: trio.testing.MockClock) -> None:
    payouts, ledger, bank = make([order("m")], {"m": [HANG]}, bank_timeout_s=1000.0)
    bank.entered = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(payouts.run)
        with trio.fail_after(1000):
            await bank.entered.wait()
        nursery.cancel_scope.cancel()  # a crash or shutdown mid-call
    assert ledger.status["m"] == "processing"
    again = Payouts(ledger, bank, workers=2, clock=virtual_us, rng=random.Random(1))
    await run_until_settled(again, ledger)
    assert [(withdrawal_id, attempts) for withdrawal_id, attempts, _ in bank.calls] == [("m", 1), ("m", 2)]
    assert ledger.status["m"] == "completed"


# -- submit ------------------------------------------------------------------------------------


async def test_submit_is_idempotent_while_queued(autojump_clock: trio.testing.MockClock) -> None:
    payouts, ledger, bank = make([], workers=1)
    for name in ("n1", "n2"):
        ledger.add(order(name))
    for _ in range(3):  # before run(): kept until the workers start
        payouts.submit("n1")
    assert payouts.statistics().queued == 1
    async with trio.open_nursery() as nursery:
        await nursery.start(payouts.run)
        payouts.submit("n2")
        payouts.submit("n2")
        with trio.fail_after(1000):
            await ledger.wait_settled()
        nursery.cancel_scope.cancel()
    assert sorted(call[0] for call in bank.calls) == ["n1", "n2"]


async def test_submit_during_an_attempt_queues_it_again_afterwards(autojump_clock: trio.testing.MockClock) -> None:
    """An operator's retry that lands between the ledger recording ``dead`` and the worker
    letting go of the id is not lost."""
    payouts, ledger, bank = make([order("p")], {"p": [TRANSIENT]}, max_attempts=1)
    record_dead = ledger.dead

    async def dead_then_operator_retries(withdrawal_id: str, error: str) -> None:
        await record_dead(withdrawal_id, error)
        ledger.retry(withdrawal_id)  # POST /v1/withdrawals/p/retry, durable...
        payouts.submit(withdrawal_id)  # ...then re-queued, while the worker still holds the id

    ledger.dead = dead_then_operator_retries  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(payouts.run)
        with trio.fail_after(1000):
            await ledger.wait_until(lambda: ledger.status["p"] == "completed")
        nursery.cancel_scope.cancel()
    assert [attempts for _, attempts, _ in bank.calls_for("p")] == [1, 1]


async def test_submit_of_a_finished_withdrawal_in_flight_is_skipped(autojump_clock: trio.testing.MockClock) -> None:
    payouts, ledger, bank = make([order("p2")])
    bank.entered = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(payouts.run)
        with trio.fail_after(1000):
            await bank.entered.wait()
        payouts.submit("p2")  # a duplicate while in flight
        with trio.fail_after(1000):
            await ledger.wait_until(lambda: len(ledger.calls_of("begin_attempt", "p2")) == 2)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert len(bank.calls) == 1
    assert payouts.statistics().skipped == 1


async def test_submit_moves_a_delayed_withdrawal_to_the_front(autojump_clock: trio.testing.MockClock) -> None:
    payouts, ledger, _bank = make([order("q")], {"q": [TRANSIENT]}, backoff_base_s=500.0, backoff_max_s=500.0,
                                 rng=random.Random(5))
    async with trio.open_nursery() as nursery:
        await nursery.start(payouts.run)
        with trio.fail_after(1000):
            while payouts.statistics().delayed != 1:  # the worker scheduled it after the ledger call
                await trio.sleep(0.01)
        retry_at_us = ledger.calls_of("transient", "q")[0][3]
        assert payouts.statistics().delayed == 1
        payouts.submit("q")
        with trio.fail_after(1000):
            await ledger.wait_settled()
        nursery.cancel_scope.cancel()
    assert ledger.calls_of("paid", "q")[0][-1] < retry_at_us
    assert payouts.statistics().delayed == 0


# -- metrics -----------------------------------------------------------------------------------


async def test_metrics_expose_the_statistics(autojump_clock: trio.testing.MockClock) -> None:
    payouts, ledger, _ = make([order("r"), order("s")], {"s": [REFUSED]})
    await run_until_settled(payouts, ledger)

    class PortStub:
        ledger = None
        payouts: Payouts | None = None

    port = PortStub()
    metrics = Metrics(port_of=lambda: port)
    assert b"wallet_payout" not in generate_latest(metrics.registry)
    port.payouts = payouts
    text = generate_latest(metrics.registry).decode()
    assert 'wallet_payout_attempts_total{outcome="paid"} 1.0' in text
    assert 'wallet_payout_attempts_total{outcome="refused"} 1.0' in text
    assert 'wallet_payout_results_total{status="completed"} 1.0' in text
    assert 'wallet_payout_bank_seconds_count 2.0' in text
    assert 'wallet_payouts_in_flight 0.0' in text
    assert 'wallet_payout_queue_depth{queue="ready"} 0.0' in text


# -- both anyio backends, real clock, the in-process simulated bank ------------------------------


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_runs_on_both_anyio_backends(backend: str) -> None:
    async def main() -> FakeLedger:
        orders = [order(f"x{index}", account="refuse-closed" if index == 3 else "acct") for index in range(12)]
        ledger = FakeLedger(orders)
        bank = SimulatedBank(latency_ms=1, fail_first=1, rng=random.Random(2))
        payouts = Payouts(ledger, bank, workers=3, max_attempts=4, backoff_base_s=0.001, backoff_max_s=0.01,
                          rng=random.Random(2))
        async with anyio.create_task_group() as group:
            await group.start(payouts.run)
            with anyio.fail_after(30):
                await ledger.wait_settled()
            group.cancel_scope.cancel()
        report = bank.simulator.report()
        assert report["total_paid"] == {"USD": 1100}
        assert all(item["calls"] == 2 for item in report["items"])  # one 503, then paid
        return ledger

    ledger = anyio.run(main, backend=backend)
    assert ledger.status["x3"] == "failed"
    assert "account_refused" in ledger.reason["x3"]
    assert sum(status == "completed" for status in ledger.status.values()) == 11
