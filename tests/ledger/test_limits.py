"""Wallet limits in the state machine and through the real actors: overdrafts, spend limits and
their windows (UTC day and month on the ledger's clock, roll-over at midnight, month end and a
leap day), what holds and withdrawals count and give back, batches, concurrent requests, and
replay / snapshots rebuilding exactly the live limits and spending."""

from __future__ import annotations

import calendar
import random
from pathlib import Path

import pytest
import trio

from ledger import (
    AdvanceWithdrawal,
    BatchFailed,
    ChangeWalletStatus,
    Clock,
    Committed,
    CreateAsset,
    CreateWallet,
    Decision,
    Event,
    ExpireHolds,
    Ledger,
    PayoutStep,
    Reason,
    Rejection,
    RequestWithdrawal,
    ResolveHold,
    TransactionType,
    UpdateWallet,
    WalletStatus,
    WalletUpdated,
    apply,
    check_state,
    decide,
    decide_transfers,
    decode_state,
    digest_state,
    encode_state,
    new_state,
    recover,
    spend_window,
    transfers_posted,
)
from ledger.testing import FakeTime, hold, replay, setup, transfer


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0) -> int:
    """Microseconds since the epoch of a UTC moment."""
    return calendar.timegm((year, month, day, hour, minute, second)) * 1_000_000 + us


START = at(2028, 2, 10, 12)


class World:
    """One State driven through ``decide`` and ``apply``, keeping the log it wrote."""

    def __init__(self) -> None:
        self.state = new_state()
        self.log: list[Event] = []
        self.number = 0
        self.run(CreateAsset(code="USD", scale=2))
        for wallet_id in ("a", "b", "c"):
            self.run(CreateWallet(wallet_id=wallet_id, owner_id=wallet_id, asset="USD", metadata=None,
                                  idempotency=None))
        self.run(transfer(0, None, "a", 1000))

    def run(self, command: object, now_us: int = START) -> Decision:
        decision = decide(self.state, command, now_us)
        if isinstance(decision, list):
            for event in decision:
                apply(self.state, event, self.state.directory.lsn + 1)
                self.log.append(event)
            check_state(self.state)
        return decision

    def send(self, amount: int, now_us: int = START, source: str = "a", target: str = "b") -> Decision:
        self.number += 1
        return self.run(transfer(self.number, source, target, amount), now_us)

    def spent(self, now_us: int = START, wallet_id: str = "a") -> tuple[int, int]:
        return self.state.wallets[wallet_id].spent_at(now_us)


def reason(decision: Decision) -> Reason | None:
    return decision.reason if isinstance(decision, Rejection) else None


@pytest.fixture
def world() -> World:
    return World()


def test_overdraft_goes_down_to_minus_the_limit_for_transfers_holds_and_withdrawals(world: World) -> None:
    world.run(UpdateWallet(wallet_id="a", overdraft_limit=300))
    assert isinstance(world.send(1200), list)
    assert world.state.wallets["a"].available == -200
    assert isinstance(world.run(hold(1, "a", "b", 50)), list)
    assert reason(world.run(hold(2, "a", "b", 51))) == Reason.INSUFFICIENT_FUNDS
    withdrawal = RequestWithdrawal(withdrawal_id="wd1", wallet_id="a", amount=51, destination={"x": 1},
                                   owner_id=None, idempotency=None)
    assert reason(world.run(withdrawal)) == Reason.INSUFFICIENT_FUNDS
    assert isinstance(world.run(RequestWithdrawal(withdrawal_id="wd2", wallet_id="a", amount=50,
                                                  destination={"x": 1}, owner_id=None, idempotency=None)), list)
    assert world.state.wallets["a"].available == -300
    assert reason(world.send(1)) == Reason.INSUFFICIENT_FUNDS
    # Capturing the hold does not change available; closing needs balance 0 and no holds.
    assert isinstance(world.run(ResolveHold(transaction_id="h1", capture=True, amount=None, from_wallet_id="a",
                                            to_wallet_id="b", owner_id=None, idempotency=None)), list)
    assert world.state.wallets["a"].available == -300
    assert reason(world.run(ChangeWalletStatus(wallet_id="a", status=WalletStatus.CLOSED))) == Reason.WALLET_NOT_EMPTY


def test_lowering_the_overdraft_below_a_deficit_is_allowed_and_blocks_sending(world: World) -> None:
    world.run(UpdateWallet(wallet_id="a", overdraft_limit=500))
    world.send(1400)
    assert world.state.wallets["a"].available == -400
    assert world.run(UpdateWallet(wallet_id="a", overdraft_limit=100))
    limits = world.state.wallets["a"].limits
    assert limits is not None and limits.overdraft == 100 and limits.floor == -400
    assert reason(world.send(1)) == Reason.INSUFFICIENT_FUNDS
    world.send(350, source="b", target="a")  # back to -50: above the new limit
    assert reason(world.send(51)) == Reason.INSUFFICIENT_FUNDS
    assert isinstance(world.send(50), list)
    # Removing every limit keeps the deficit's floor until the wallet is set again at >= 0.
    world.run(UpdateWallet(wallet_id="a", overdraft_limit=0))
    assert world.state.wallets["a"].limits is not None
    world.send(100, source="b", target="a")
    world.run(UpdateWallet(wallet_id="a", metadata={"k": "v"}))
    assert world.state.wallets["a"].limits is None  # the hot path's "no limits" again
    assert world.state.wallets["a"].metadata == {"k": "v"}


def test_update_wallet_rejections_and_nothing_to_change(world: World) -> None:
    assert reason(world.run(UpdateWallet(wallet_id="ghost", overdraft_limit=1))) == Reason.SENDER_NOT_FOUND
    assert reason(world.run(UpdateWallet(wallet_id="treasury:USD", overdraft_limit=1))) == Reason.SENDER_NOT_FOUND
    assert world.run(UpdateWallet(wallet_id="c", overdraft_limit=0, daily_limit=0)) == []
    world.run(ChangeWalletStatus(wallet_id="c", status=WalletStatus.FROZEN))
    assert world.run(UpdateWallet(wallet_id="c", daily_limit=5))  # a frozen wallet may be changed
    world.run(ChangeWalletStatus(wallet_id="c", status=WalletStatus.CLOSED))
    assert reason(world.run(UpdateWallet(wallet_id="c", daily_limit=6))) == Reason.WALLET_CLOSED


def test_creating_with_limits_is_two_records_in_one_step(world: World) -> None:
    decision = world.run(CreateWallet(wallet_id="d", owner_id="d", asset="USD", metadata={"m": 1}, idempotency=None,
                                      overdraft_limit=7, monthly_limit=9))
    assert isinstance(decision, list) and len(decision) == 2
    assert decision[1] == WalletUpdated(wallet_id="d", overdraft_limit=7, daily_limit=None, monthly_limit=9,
                                        metadata={"m": 1}, at_us=START)
    limits = world.state.wallets["d"].limits
    assert limits is not None and (limits.overdraft, limits.daily, limits.monthly) == (7, None, 9)


def test_spend_limits_count_transfers_holds_and_withdrawals_not_deposits(world: World) -> None:
    world.run(UpdateWallet(wallet_id="a", daily_limit=100, monthly_limit=150))
    world.send(40)
    world.run(hold(1, "a", "b", 30))
    world.run(RequestWithdrawal(withdrawal_id="wd1", wallet_id="a", amount=20, destination={"x": 1},
                                owner_id=None, idempotency=None))
    world.run(transfer(99, None, "a", 5000))  # a deposit into a: not spending
    world.send(7, source="b", target="a")  # money in: not spending
    assert world.spent() == (90, 90)
    refused = world.send(11)
    assert reason(refused) == Reason.SPEND_LIMIT_EXCEEDED
    assert isinstance(refused, Rejection)
    assert refused.detail == "wallet a has a daily spend limit of 100, has spent 90 in this day (UTC), 11 requested"
    assert reason(world.run(hold(2, "a", "b", 11))) == Reason.SPEND_LIMIT_EXCEEDED
    assert reason(world.run(RequestWithdrawal(withdrawal_id="wd2", wallet_id="a", amount=11, destination={"x": 1},
                                              owner_id=None, idempotency=None))) == Reason.SPEND_LIMIT_EXCEEDED
    assert isinstance(world.send(10), list)
    assert world.spent() == (100, 100)
    # Raising the limit takes effect for the next request.
    world.run(UpdateWallet(wallet_id="a", daily_limit=0))  # 0 in a command: no daily limit
    assert isinstance(world.send(50), list)
    assert reason(world.send(1)) == Reason.SPEND_LIMIT_EXCEEDED  # the monthly 150


def test_releasing_a_hold_gives_back_to_its_own_windows_only(world: World) -> None:
    world.run(UpdateWallet(wallet_id="a", daily_limit=100))
    world.run(hold(1, "a", "b", 60))
    world.run(hold(2, "a", "b", 30))
    assert world.spent() == (90, 90)
    world.run(ResolveHold(transaction_id="h1", capture=False, amount=None, from_wallet_id="a", to_wallet_id="b",
                          owner_id=None, idempotency=None))
    assert world.spent() == (30, 30)  # voided: all of it back
    world.run(ResolveHold(transaction_id="h2", capture=True, amount=10, from_wallet_id="a", to_wallet_id="b",
                          owner_id=None, idempotency=None))
    assert world.spent() == (10, 10)  # captured for less: the rest back
    world.run(hold(3, "a", "b", 80, timeout_s=60))
    world.run(ExpireHolds(transaction_ids=("h3",)), START + 61_000_000)
    assert world.spent() == (10, 10)  # expired: back
    # A hold of yesterday released today gives nothing back to today (the month still gets it).
    world.run(hold(4, "a", "b", 50))
    tomorrow = START + 86_400_000_000
    world.send(5, tomorrow)
    assert world.spent(tomorrow) == (5, 65)
    world.run(ResolveHold(transaction_id="h4", capture=False, amount=None, from_wallet_id="a", to_wallet_id="b",
                          owner_id=None, idempotency=None), tomorrow)
    assert world.spent(tomorrow) == (5, 15)
    # A refused withdrawal gives back too.
    world.run(RequestWithdrawal(withdrawal_id="wd1", wallet_id="a", amount=20, destination={"x": 1},
                                owner_id=None, idempotency=None), tomorrow)
    world.run(AdvanceWithdrawal(withdrawal_id="wd1", step=PayoutStep.BEGIN), tomorrow)
    assert world.spent(tomorrow) == (25, 35)
    world.run(AdvanceWithdrawal(withdrawal_id="wd1", step=PayoutStep.REFUSED), tomorrow)
    assert world.spent(tomorrow) == (5, 15)


@pytest.mark.parametrize(
    ("before", "after", "daily_resets", "monthly_resets"),
    [
        # Midnight inside a month.
        (at(2028, 2, 10, 23, 59, 59, 999_999), at(2028, 2, 11), True, False),
        # The leap day: Feb 28 -> Feb 29 is a new day of the same month, Feb 29 -> Mar 1 a new month.
        (at(2028, 2, 28, 23, 59, 59, 999_999), at(2028, 2, 29), True, False),
        (at(2028, 2, 29, 23, 59, 59, 999_999), at(2028, 3, 1), True, True),
        # Month end of a 30-day month and of the year.
        (at(2028, 4, 30, 23, 59, 59, 999_999), at(2028, 5, 1), True, True),
        (at(2028, 12, 31, 23, 59, 59, 999_999), at(2029, 1, 1), True, True),
        # The same day, a microsecond apart.
        (at(2028, 2, 29, 0), at(2028, 2, 29, 23, 59, 59, 999_999), False, False),
    ],
)
def test_windows_roll_over_at_utc_midnight_and_month_end(
    world: World, before: int, after: int, daily_resets: bool, monthly_resets: bool
) -> None:
    world.run(UpdateWallet(wallet_id="a", daily_limit=50, monthly_limit=80), before)
    world.send(50, before)
    assert world.spent(before) == (50, 50)
    assert world.spent(after) == (0 if daily_resets else 50, 0 if monthly_resets else 50)
    outcome = world.send(30, after)
    assert isinstance(outcome, list) == (daily_resets and True)
    if daily_resets:
        assert world.spent(after) == (30, 30 if monthly_resets else 80)
        assert reason(world.send(1, after)) == (None if monthly_resets else Reason.SPEND_LIMIT_EXCEEDED)


def test_spend_window_numbers() -> None:
    feb29 = spend_window(at(2028, 2, 29, 12))
    assert spend_window(at(2028, 2, 29)) is feb29  # one shared object per day
    assert spend_window(at(2028, 2, 28)).month == feb29.month == 2028 * 12 + 1
    assert spend_window(at(2028, 3, 1)).month == 2028 * 12 + 2
    assert spend_window(at(2028, 3, 1)).day == feb29.day + 1


def test_a_batch_carries_what_earlier_items_spent(world: World) -> None:
    world.run(UpdateWallet(wallet_id="a", daily_limit=100))
    world.send(30)
    items = [(transfer(100 + index, "a", "bc"[index % 2], 10), None) for index in range(10)]
    decisions = decide_transfers(world.state, items, START, {})
    assert [reason(decision) for decision in decisions] == [None] * 7 + [Reason.SPEND_LIMIT_EXCEEDED] * 3
    atomic = decide_transfers(world.state, items, START, {}, atomic=True)
    assert len(atomic) == 8 and reason(atomic[7]) == Reason.SPEND_LIMIT_EXCEEDED
    accepted = tuple(decision[0] for decision in decisions if isinstance(decision, list))
    apply(world.state, transfers_posted(accepted, START), world.state.directory.lsn + 1)  # type: ignore[arg-type]
    check_state(world.state)
    assert world.spent() == (100, 100)


def test_replay_and_snapshots_rebuild_limits_and_spending(world: World) -> None:
    rng = random.Random(7)
    now = START
    for step in range(300):
        now += rng.choice([1, 3_600_000_000, 86_400_000_000 // 3, 29 * 86_400_000_000 // 2])
        roll = rng.random()
        if roll < 0.1:
            world.run(UpdateWallet(wallet_id=rng.choice("abc"), overdraft_limit=rng.choice([None, 0, 50, 500]),
                                   daily_limit=rng.choice([None, 0, 40, 400]),
                                   monthly_limit=rng.choice([None, 0, 100, 900])), now)
        elif roll < 0.2:
            world.run(transfer(10_000 + step, None, rng.choice("abc"), rng.randint(1, 300)), now)
        elif roll < 0.35:
            world.run(hold(step, rng.choice("abc"), rng.choice("abc"), rng.randint(1, 100)), now)
        elif roll < 0.5 and world.state.holds:
            transaction_id = rng.choice(sorted(world.state.holds))
            held = world.state.holds[transaction_id]
            if held.type == TransactionType.TRANSFER:
                world.run(ResolveHold(transaction_id=transaction_id, capture=rng.random() < 0.5,
                                      amount=rng.randint(1, held.amount), from_wallet_id=held.from_wallet_id,
                                      to_wallet_id=held.to_wallet_id, owner_id=None, idempotency=None), now)
        else:
            source, target = rng.sample("abc", 2)
            world.send(rng.randint(1, 150), now, source, target)
    live = world.state
    replayed = replay(world.log)
    snapshot = decode_state(b"".join(encode_state(live)))
    for other in (replayed, snapshot):
        assert digest_state(other) == digest_state(live)
        for wallet_id, wallet in live.wallets.items():
            twin = other.wallets[wallet_id]
            assert (twin.limits, twin.window, twin.spent_day, twin.spent_month) == (
                wallet.limits, wallet.window, wallet.spent_day, wallet.spent_month), wallet_id
    assert any(wallet.limits is not None for wallet in live.wallets.values())


# -- through the actors ----------------------------------------------------------------------


async def open_ledger(path: Path, shards: int, clock: Clock | None = None) -> Ledger:
    return Ledger(await trio.to_thread.run_sync(recover, path), path, shards=shards, clock=clock)


async def test_concurrent_transfers_never_exceed_a_daily_limit_together(tmp_path: Path) -> None:
    ids = ["payer", *(f"r{index}" for index in range(8))]
    ledger = await open_ledger(tmp_path, 4)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ids, deposit=1000)
        assert isinstance(await ledger.update_wallet(UpdateWallet(wallet_id="payer", daily_limit=100)), list)
        outcomes: list[object] = []

        async def send(number: int) -> None:
            outcomes.append(await ledger.transfer(transfer(number, "payer", ids[1 + number % 8], 10)))

        async with trio.open_nursery() as senders:
            for number in range(20):
                senders.start_soon(send, number)
        assert sum(isinstance(outcome, Committed) for outcome in outcomes) == 10
        assert sum(reason(outcome) == Reason.SPEND_LIMIT_EXCEEDED for outcome in outcomes) == 10  # type: ignore[arg-type]
        # A batch of the same sender against what is left (nothing): every item refused.
        batch = await ledger.transfer_batch([transfer(100 + n, "payer", "r1", 1) for n in range(3)], atomic=True)
        assert isinstance(batch, BatchFailed) and batch.index == 0
        assert batch.rejection.reason == Reason.SPEND_LIMIT_EXCEEDED
        view = await ledger.wallet("payer")
        assert view is not None and (view.spent_daily, view.spent_monthly, view.daily_limit) == (100, 100, 100)
        nursery.cancel_scope.cancel()


async def test_the_ledgers_clock_rolls_the_windows_over_on_a_leap_day(tmp_path: Path) -> None:
    time = FakeTime()
    time.ns = at(2028, 2, 28, 23, 59, 59) * 1000
    ledger = await open_ledger(tmp_path, 2, Clock(time))
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["x", "y"], deposit=1000)
        await ledger.update_wallet(UpdateWallet(wallet_id="x", daily_limit=100, monthly_limit=150))
        assert isinstance(await ledger.transfer(transfer(1, "x", "y", 100)), Committed)
        assert reason(await ledger.transfer(transfer(2, "x", "y", 1))) == Reason.SPEND_LIMIT_EXCEEDED  # type: ignore[arg-type]
        time.ns = at(2028, 2, 29, 0, 0, 1) * 1000  # the leap day: a new day, the same month
        view = await ledger.wallet("x")
        assert view is not None and (view.spent_daily, view.spent_monthly) == (0, 100)
        assert isinstance(await ledger.transfer(transfer(3, "x", "y", 50)), Committed)
        assert reason(await ledger.transfer(transfer(4, "x", "y", 1))) == Reason.SPEND_LIMIT_EXCEEDED  # type: ignore[arg-type]
        time.ns = at(2028, 3, 1) * 1000  # March: both windows start over
        assert isinstance(await ledger.transfer(transfer(5, "x", "y", 100)), Committed)
        view = await ledger.wallet("x")
        assert view is not None and (view.spent_daily, view.spent_monthly) == (100, 100)
        nursery.cancel_scope.cancel()
    recovered = await trio.to_thread.run_sync(recover, tmp_path)
    try:
        wallet = recovered.state.wallets["x"]
        assert wallet.spent_at(at(2028, 3, 1, 1)) == (100, 100)
        assert wallet.limits is not None and wallet.limits.monthly == 150
    finally:
        recovered.close()
