"""Holds (pending transfers) and withdrawals in the pure state machine: one test per row of the
check table in ``ledger/_decide.py``, the payout step table, and a property test that random
programs keep ``held == sum(holds)``, conservation including pending amounts, at-most-once
resolution and expiry, and replay through the codec to the same state."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from ledger import (
    AdvanceWithdrawal,
    ChangeWalletStatus,
    CompleteWithdrawal,
    CreateAsset,
    CreateWallet,
    ExpireHolds,
    HoldCaptured,
    HoldCreated,
    HoldVoided,
    Idempotency,
    PayoutStep,
    Reason,
    Rejection,
    RequestWithdrawal,
    ResolveHold,
    State,
    TransactionType,
    Transfer,
    VoidReason,
    WalletStatus,
    WithdrawalStatus,
    WithdrawalUpdated,
    apply,
    check_state,
    decide,
    digest_state,
    new_state,
    treasury_id,
)
from ledger.testing import amounts, replay

T0 = 1_000_000_000


class Book:
    """A single state plus the log of what it accepted, for replay checks."""

    def __init__(self) -> None:
        self.state = new_state()
        self.events: list[Any] = []
        self.now_us = T0

    def run(self, command: Any, *, at_us: int | None = None) -> Any:
        if at_us is not None:
            self.now_us = at_us
        decision = decide(self.state, command, self.now_us)
        if isinstance(decision, list):
            for event in decision:
                apply(self.state, event, self.state.directory.lsn + 1)
                self.events.append(event)
        check_state(self.state)
        return decision

    def wallet(self, wallet_id: str) -> Any:
        return self.state.wallets[wallet_id]


def book(*, balance: int = 100) -> Book:
    b = Book()
    b.run(CreateAsset(code="USD", scale=2))
    b.run(CreateAsset(code="EUR", scale=2))
    for wallet_id, owner, asset in (("a", "alice", "USD"), ("b", "bob", "USD"), ("e", "bob", "EUR")):
        b.run(CreateWallet(wallet_id=wallet_id, owner_id=owner, asset=asset, metadata=None, idempotency=None))
    b.run(Transfer(transaction_id="dep", type=TransactionType.DEPOSIT, from_wallet_id=None, to_wallet_id="a",
                   amount=balance, description=None, metadata=None, idempotency=None))
    return b


def hold(b: Book, amount: int = 30, *, tx: str = "h1", timeout_s: int = 60, key: str | None = None,
         source: str = "a", target: str = "b") -> Any:
    return b.run(Transfer(
        transaction_id=tx, type=TransactionType.TRANSFER, from_wallet_id=source, to_wallet_id=target,
        amount=amount, description="d", metadata={"m": 1}, idempotency=idem(key), owner_id="alice",
        hold_timeout_s=timeout_s,
    ))


def idem(key: str | None, fingerprint: bytes = b"f") -> Idempotency | None:
    return None if key is None else Idempotency(scope="alice", key=key, fingerprint=fingerprint)


def resolve(b: Book, *, capture: bool, tx: str = "h1", amount: int | None = None, owner: str | None = "alice",
            key: str | None = None, fingerprint: bytes = b"f") -> Any:
    route = b.state.directory.hold_routes.get(tx, ("a", "b", 0))
    return b.run(ResolveHold(transaction_id=tx, capture=capture, amount=amount, from_wallet_id=route[0],
                             to_wallet_id=route[1], owner_id=owner, idempotency=idem(key, fingerprint)))


def reason(decision: Any) -> Reason:
    assert isinstance(decision, Rejection), decision
    return decision.reason


# -- holds ---------------------------------------------------------------------------------


def test_a_hold_moves_available_into_held_and_the_receiver_sees_nothing() -> None:
    b = book()
    (event,) = hold(b, 30)
    assert isinstance(event, HoldCreated) and event.deadline_us == T0 + 60_000_000
    assert (b.wallet("a").balance, b.wallet("a").held, b.wallet("a").available) == (100, 30, 70)
    assert b.wallet("b").balance == 0
    assert b.state.directory.hold_routes == {"h1": ("a", "b", 30)}


def test_a_hold_counts_against_available_funds() -> None:
    b = book()
    hold(b, 80)
    assert reason(hold(b, 21, tx="h2")) == Reason.INSUFFICIENT_FUNDS
    assert reason(b.run(Transfer(transaction_id="t", type=TransactionType.TRANSFER, from_wallet_id="a",
                                 to_wallet_id="b", amount=21, description=None, metadata=None,
                                 idempotency=None))) == Reason.INSUFFICIENT_FUNDS


def test_capture_in_full_posts_the_transfer() -> None:
    b = book()
    hold(b, 30)
    (event,) = resolve(b, capture=True)
    assert isinstance(event, HoldCaptured) and (event.amount, event.held_amount) == (30, 30)
    assert (b.wallet("a").balance, b.wallet("a").held, b.wallet("b").balance) == (70, 0, 30)
    assert not b.state.holds and not b.state.directory.hold_routes


def test_capture_of_less_releases_the_rest() -> None:
    b = book()
    hold(b, 30)
    (event,) = resolve(b, capture=True, amount=12)
    assert (event.amount, event.held_amount) == (12, 30)
    assert (b.wallet("a").balance, b.wallet("a").held, b.wallet("b").balance) == (88, 0, 12)


def test_row_1_a_hold_resolves_at_most_once() -> None:
    for first, second in ((True, True), (True, False), (False, True), (False, False)):
        b = book()
        hold(b, 30)
        assert isinstance(resolve(b, capture=first), list)
        assert reason(resolve(b, capture=second)) == Reason.NOT_PENDING
    assert reason(resolve(book(), capture=True, tx="unknown")) == Reason.NOT_PENDING


def test_row_2_a_withdrawal_hold_is_not_the_user_s_to_resolve() -> None:
    b = book()
    b.run(RequestWithdrawal(withdrawal_id="wd", wallet_id="a", amount=10, destination={"x": 1},
                            owner_id="alice", idempotency=None))
    assert reason(resolve(b, capture=True, tx="wd")) == Reason.NOT_PENDING
    assert reason(resolve(b, capture=False, tx="wd")) == Reason.NOT_PENDING


def test_row_3_only_the_sender_s_owner_resolves() -> None:
    b = book()
    hold(b, 30)
    assert reason(resolve(b, capture=True, owner="bob")) == Reason.FORBIDDEN
    assert reason(resolve(b, capture=False, owner="bob")) == Reason.FORBIDDEN
    assert isinstance(resolve(b, capture=False, owner=None), list)  # admin


def test_row_4_capturing_more_than_was_held_is_refused() -> None:
    b = book()
    hold(b, 30)
    assert reason(resolve(b, capture=True, amount=31)) == Reason.AMOUNT_EXCEEDS_HOLD
    assert b.state.holds  # nothing changed


def test_row_5_a_frozen_sender_cannot_capture_but_can_void() -> None:
    b = book()
    hold(b, 30)
    b.run(ChangeWalletStatus(wallet_id="a", status=WalletStatus.FROZEN))
    assert reason(resolve(b, capture=True)) == Reason.SENDER_FROZEN
    assert isinstance(resolve(b, capture=False), list)
    assert b.wallet("a").held == 0


def test_row_6_a_closed_receiver_refuses_the_capture() -> None:
    b = book()
    hold(b, 30)
    b.run(ChangeWalletStatus(wallet_id="b", status=WalletStatus.CLOSED))
    assert reason(resolve(b, capture=True)) == Reason.RECEIVER_CLOSED
    assert b.state.holds


def test_row_0_a_key_replays_the_resolution() -> None:
    b = book()
    hold(b, 30)
    (first,) = resolve(b, capture=True, key="k")
    replayed = resolve(b, capture=True, key="k")
    assert replayed.record.event == first
    assert reason(resolve(b, capture=True, key="k", fingerprint=b"other")) == Reason.IDEMPOTENCY_KEY_REUSED


def test_a_hold_needs_what_a_transfer_needs() -> None:
    b = book()
    assert reason(hold(b, 10, target="e")) == Reason.ASSET_MISMATCH
    assert reason(hold(b, 10, target="nobody")) == Reason.RECEIVER_NOT_FOUND
    assert reason(hold(b, 10, target="a")) == Reason.SAME_WALLET
    b.run(ChangeWalletStatus(wallet_id="a", status=WalletStatus.FROZEN))
    assert reason(hold(b, 10)) == Reason.SENDER_FROZEN


def test_a_wallet_with_holds_cannot_be_closed() -> None:
    b = book(balance=5)
    hold(b, 5)
    assert reason(b.run(ChangeWalletStatus(wallet_id="a", status=WalletStatus.CLOSED))) == Reason.WALLET_NOT_EMPTY


def test_expiry_voids_only_what_is_due() -> None:
    b = book()
    hold(b, 10, tx="h1", timeout_s=5)
    hold(b, 10, tx="h2", timeout_s=50)
    assert b.run(ExpireHolds(transaction_ids=("h1", "h2")), at_us=T0 + 4_999_999) == []
    (event,) = b.run(ExpireHolds(transaction_ids=("h1", "h2", "gone")), at_us=T0 + 5_000_000)
    assert isinstance(event, HoldVoided) and event.reason == VoidReason.EXPIRED
    assert event.transaction_id == "h1"
    assert set(b.state.holds) == {"h2"} and b.wallet("a").held == 10


# -- withdrawals ---------------------------------------------------------------------------


def withdrawal_book() -> Book:
    b = book()
    (event,) = b.run(RequestWithdrawal(withdrawal_id="wd", wallet_id="a", amount=40, destination={"iban": "X"},
                                       owner_id="alice", idempotency=None))
    assert isinstance(event, HoldCreated) and event.to_wallet_id == treasury_id("USD")
    assert event.deadline_us == 0
    return b


def step(b: Book, payout: PayoutStep, detail: str | None = None) -> Any:
    return b.run(AdvanceWithdrawal(withdrawal_id="wd", step=payout, detail=detail, retry_at_us=T0 + 9))


def complete(b: Book) -> Any:
    return b.run(CompleteWithdrawal(withdrawal_id="wd", wallet_id="a", asset="USD", amount=40, reference="r1"))


def test_a_withdrawal_holds_then_completes_into_the_treasury() -> None:
    b = withdrawal_book()
    assert b.wallet("a").held == 40
    assert isinstance(step(b, PayoutStep.BEGIN)[0], WithdrawalUpdated)
    (event,) = complete(b)
    assert isinstance(event, HoldCaptured) and event.reference == "r1"
    withdrawal = b.state.withdrawals["wd"]
    assert withdrawal.status == WithdrawalStatus.COMPLETED and withdrawal.attempts == 1
    assert (b.wallet("a").balance, b.wallet("a").held) == (60, 0)
    assert b.wallet(treasury_id("USD")).balance == -100 + 40


def test_a_refused_withdrawal_fails_and_releases_the_hold() -> None:
    b = withdrawal_book()
    step(b, PayoutStep.BEGIN)
    (event,) = step(b, PayoutStep.REFUSED, "account closed")
    assert isinstance(event, HoldVoided) and event.reason == VoidReason.REFUSED
    withdrawal = b.state.withdrawals["wd"]
    assert withdrawal.status == WithdrawalStatus.FAILED and withdrawal.last_error == "account closed"
    assert (b.wallet("a").balance, b.wallet("a").held) == (100, 0)


def test_dead_keeps_the_hold_and_retry_requeues_it() -> None:
    b = withdrawal_book()
    step(b, PayoutStep.BEGIN)
    step(b, PayoutStep.TRANSIENT, "503")
    assert b.state.withdrawals["wd"].next_attempt_at_us == T0 + 9
    step(b, PayoutStep.BEGIN)
    step(b, PayoutStep.DEAD, "gave up")
    assert b.state.withdrawals["wd"].status == WithdrawalStatus.DEAD and b.wallet("a").held == 40
    assert reason(complete(b)) == Reason.WITHDRAWAL_NOT_PAYABLE
    step(b, PayoutStep.RETRY)
    withdrawal = b.state.withdrawals["wd"]
    assert (withdrawal.status, withdrawal.attempts) == (WithdrawalStatus.PENDING, 0)


# Which payout steps each status accepts (the rest are refused and change nothing).
STEP_TABLE = {
    WithdrawalStatus.PENDING: {PayoutStep.BEGIN},
    WithdrawalStatus.PROCESSING: {PayoutStep.BEGIN, PayoutStep.TRANSIENT, PayoutStep.DEAD, PayoutStep.REFUSED},
    WithdrawalStatus.DEAD: {PayoutStep.RETRY},
    WithdrawalStatus.COMPLETED: set(),
    WithdrawalStatus.FAILED: set(),
}


def in_status(status: WithdrawalStatus) -> Book:
    b = withdrawal_book()
    path = {
        WithdrawalStatus.PENDING: [],
        WithdrawalStatus.PROCESSING: [PayoutStep.BEGIN],
        WithdrawalStatus.DEAD: [PayoutStep.BEGIN, PayoutStep.DEAD],
        WithdrawalStatus.FAILED: [PayoutStep.BEGIN, PayoutStep.REFUSED],
        WithdrawalStatus.COMPLETED: [PayoutStep.BEGIN],
    }[status]
    for payout in path:
        assert isinstance(step(b, payout), list)
    if status == WithdrawalStatus.COMPLETED:
        assert isinstance(complete(b), list)
    assert b.state.withdrawals["wd"].status == status
    return b


@pytest.mark.parametrize("status", list(WithdrawalStatus))
@pytest.mark.parametrize("payout", list(PayoutStep))
def test_the_payout_step_table(status: WithdrawalStatus, payout: PayoutStep) -> None:
    b = in_status(status)
    before = digest_state(b.state)
    decision = step(b, payout)
    if payout in STEP_TABLE[status]:
        assert isinstance(decision, list) and decision
    else:
        expected = Reason.WITHDRAWAL_NOT_DEAD if payout == PayoutStep.RETRY else Reason.WITHDRAWAL_NOT_PAYABLE
        assert reason(decision) == expected
        assert digest_state(b.state) == before


@pytest.mark.parametrize("status", list(WithdrawalStatus))
def test_only_an_attempt_in_progress_completes(status: WithdrawalStatus) -> None:
    b = in_status(status)
    decision = complete(b)
    assert isinstance(decision, list) == (status == WithdrawalStatus.PROCESSING)


def test_a_withdrawal_needs_a_wallet_of_the_caller_with_funds() -> None:
    b = book()
    for wallet_id, owner, amount, expected in (
        ("nobody", None, 1, Reason.SENDER_NOT_FOUND),
        (treasury_id("USD"), None, 1, Reason.SENDER_NOT_FOUND),
        ("a", "bob", 1, Reason.FORBIDDEN),
        ("a", "alice", 101, Reason.INSUFFICIENT_FUNDS),
    ):
        decision = b.run(RequestWithdrawal(withdrawal_id="w", wallet_id=wallet_id, amount=amount,
                                           destination={}, owner_id=owner, idempotency=None))
        assert reason(decision) == expected


# -- random programs -----------------------------------------------------------------------

WALLETS = ["a", "b", "c"]
operations = st.lists(
    st.tuples(
        st.sampled_from(["transfer", "hold", "capture", "void", "expire", "withdraw", "begin", "transient",
                         "dead", "refused", "retry", "paid", "freeze", "unfreeze", "close"]),
        st.sampled_from(WALLETS),
        st.sampled_from(WALLETS),
        amounts(),
        st.integers(min_value=0, max_value=10),
        st.integers(min_value=0, max_value=3_000_000),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(program=operations)
def test_random_programs_keep_the_hold_invariants_and_replay(program: list[tuple[Any, ...]]) -> None:
    b = Book()
    b.run(CreateAsset(code="USD", scale=0))
    for wallet_id in WALLETS:
        b.run(CreateWallet(wallet_id=wallet_id, owner_id="o", asset="USD", metadata=None, idempotency=None))
        b.run(Transfer(transaction_id=f"d{wallet_id}", type=TransactionType.DEPOSIT, from_wallet_id=None,
                       to_wallet_id=wallet_id, amount=1000, description=None, metadata=None, idempotency=None))
    resolved: set[str] = set()
    deadlines: dict[str, int] = {}
    for number, (kind, source, target, amount, pick, step_us) in enumerate(program):
        b.now_us += step_us
        holds = sorted(b.state.holds)
        withdrawals = sorted(b.state.withdrawals)
        command: Any = None
        if kind in ("transfer", "hold"):
            command = Transfer(transaction_id=f"t{number}", type=TransactionType.TRANSFER, from_wallet_id=source,
                               to_wallet_id=target, amount=amount, description=None, metadata=None,
                               idempotency=None, hold_timeout_s=1 + pick if kind == "hold" else None)
        elif kind in ("capture", "void") and holds:
            tx = holds[pick % len(holds)]
            from_id, to_id, held = b.state.directory.hold_routes[tx]
            command = ResolveHold(transaction_id=tx, capture=kind == "capture",
                                  amount=None if pick % 2 else min(amount, held), from_wallet_id=from_id,
                                  to_wallet_id=to_id, owner_id=None, idempotency=None)
        elif kind == "expire":
            command = ExpireHolds(transaction_ids=tuple(holds))
        elif kind == "withdraw":
            command = RequestWithdrawal(withdrawal_id=f"w{number}", wallet_id=source, amount=amount,
                                        destination={"n": number}, owner_id=None, idempotency=None)
        elif kind in ("begin", "transient", "dead", "refused", "retry") and withdrawals:
            command = AdvanceWithdrawal(withdrawal_id=withdrawals[pick % len(withdrawals)],
                                        step=PayoutStep[kind.upper()], detail=kind, retry_at_us=b.now_us)
        elif kind == "paid" and withdrawals:
            withdrawal = b.state.withdrawals[withdrawals[pick % len(withdrawals)]]
            command = CompleteWithdrawal(withdrawal_id=withdrawal.id, wallet_id=withdrawal.wallet_id,
                                         asset="USD", amount=withdrawal.amount, reference=None)
        elif kind in ("freeze", "unfreeze", "close"):
            status = {"freeze": WalletStatus.FROZEN, "unfreeze": WalletStatus.ACTIVE, "close": WalletStatus.CLOSED}
            command = ChangeWalletStatus(wallet_id=source, status=status[kind])
        if command is None:
            continue
        held_before = {w.id: w.held for w in b.state.wallets.values()}
        decision = b.run(command)  # runs check_state: held == sum(holds), sums are 0, ...
        if isinstance(decision, list):
            # What the decision's resolutions released, per sender (one expiry can void several
            # holds of the same wallet).
            released: dict[str, int] = {}
            for event in decision:
                if isinstance(event, HoldCaptured | HoldVoided):
                    assert event.transaction_id not in resolved  # at most once
                    resolved.add(event.transaction_id)
                    released[event.from_wallet_id] = released.get(event.from_wallet_id, 0) + (
                        event.held_amount if isinstance(event, HoldCaptured) else event.amount
                    )
                    if isinstance(event, HoldVoided) and event.reason == VoidReason.EXPIRED:
                        assert 0 < deadlines[event.transaction_id] <= event.at_us
                elif isinstance(event, HoldCreated):
                    deadlines[event.transaction_id] = event.deadline_us
            for wallet_id, amount in released.items():
                assert b.state.wallets[wallet_id].held == held_before[wallet_id] - amount
        # Conservation including pending amounts: posted balances sum to 0, and what is held
        # is still part of its sender's balance.
        for wallet in b.state.wallets.values():
            assert wallet.balance - wallet.held == wallet.available
    # Nothing left that is past its deadline survives an expiry pass.
    b.run(ExpireHolds(transaction_ids=tuple(sorted(b.state.holds))), at_us=b.now_us + 11_000_000)
    assert all(hold.type == TransactionType.WITHDRAWAL for hold in b.state.holds.values())
    assert digest_state(replay(b.events)) == digest_state(b.state)


def test_replay_rebuilds_holds_withdrawals_and_routes() -> None:
    b = withdrawal_book()
    hold(b, 10)
    step(b, PayoutStep.BEGIN)
    replayed: State = replay(b.events)
    assert digest_state(replayed) == digest_state(b.state)
    assert replayed.directory.hold_routes == b.state.directory.hold_routes
    assert replayed.directory.withdrawal_wallets == {"wd": "a"}
