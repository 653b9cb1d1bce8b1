"""``decide`` row by row: the transfer rejection table in ``ledger/_decide.py`` (one test per row,
each also showing that the row beats a later one, whichever side that later one is on), then
status changes, wallet and asset creation, tokens and idempotency expiry.

Every transfer test runs twice: on one State holding every wallet, and split the way the shard
actors split it (``check_credit`` on a State holding only the receiver, ``decide_transfer`` on
one holding the rest), because the answer must not depend on where the wallets live.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ledger import (
    IDEMPOTENCY_RETENTION_US,
    INT64_MAX,
    INT64_MIN,
    AssetCreated,
    ChangeWalletStatus,
    CreateAsset,
    CreateToken,
    CreateWallet,
    CreditCheck,
    Decision,
    Duplicate,
    Event,
    Idempotency,
    Reason,
    Rejection,
    RevokeToken,
    State,
    TokenCreated,
    TokenRevoked,
    TransactionType,
    Transfer,
    Transferred,
    UpdateWallet,
    Wallet,
    WalletCreated,
    WalletStatus,
    WalletStatusChanged,
    apply,
    check_credit,
    check_invariants,
    decide,
    decide_transfer,
    new_state,
    treasury_id,
)
from ledger._decide import decide_change_status
from ledger._model import TRANSFER_CHECK_ORDER
from ledger.testing import digest

START_US = 1_000_000


class Book:
    """One full State, driven through ``decide`` and ``apply`` with LSNs from 1."""

    def __init__(self) -> None:
        self.state = new_state()
        self.now_us = START_US
        self.transactions = 0

    def run(self, command: object, *, at_us: int | None = None) -> Decision:
        now_us = self.now_us if at_us is None else at_us
        before = digest(self.state)
        decision = decide(self.state, command, now_us)
        assert digest(self.state) == before, "decide mutated the state"
        if isinstance(decision, list):
            for event in decision:
                apply(self.state, event, self.state.directory.lsn + 1)
            check_invariants(self.state.wallets.values(), self.state.directory)
        return decision

    def accept(self, command: object, *, at_us: int | None = None) -> list[Event]:
        decision = self.run(command, at_us=at_us)
        assert isinstance(decision, list), decision
        assert decision, "accepted without a record"
        return decision

    def transfer(
        self, from_wallet_id: str | None, to_wallet_id: str, amount: int, *,
        owner_id: str | None = None, key: str | None = None, fingerprint: bytes = b"f",
        scope: str = "admin",
    ) -> Transfer:
        self.transactions += 1
        return Transfer(
            transaction_id=f"tx{self.transactions}",
            type=TransactionType.DEPOSIT if from_wallet_id is None else TransactionType.TRANSFER,
            from_wallet_id=from_wallet_id,
            to_wallet_id=to_wallet_id,
            amount=amount,
            description=None,
            metadata=None,
            idempotency=None if key is None else Idempotency(scope=scope, key=key, fingerprint=fingerprint),
            owner_id=owner_id,
        )

    def set_status(self, wallet_id: str, status: WalletStatus) -> None:
        self.accept(ChangeWalletStatus(wallet_id=wallet_id, status=status))


def wallet(wallet_id: str, owner_id: str, asset: str, key: str | None = None, fingerprint: bytes = b"w") -> CreateWallet:
    idempotency = None if key is None else Idempotency(scope="admin", key=key, fingerprint=fingerprint)
    return CreateWallet(wallet_id=wallet_id, owner_id=owner_id, asset=asset, metadata=None, idempotency=idempotency)


@pytest.fixture
def book() -> Book:
    """USD and EUR; alice (100 USD), bob and dan (empty, USD), carol (50 EUR)."""
    book = Book()
    book.accept(CreateAsset(code="USD", scale=2))
    book.accept(CreateAsset(code="EUR", scale=2))
    book.accept(wallet("alice", "alice", "USD"))
    book.accept(wallet("bob", "bob", "USD"))
    book.accept(wallet("dan", "dan", "USD"))
    book.accept(wallet("carol", "carol", "EUR"))
    book.accept(book.transfer(None, "alice", 100))
    book.accept(book.transfer(None, "carol", 50))
    return book


@pytest.fixture(params=["one state", "split"])
def layout(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def decide_in(layout: str, state: State, command: Transfer, now_us: int = START_US) -> Decision:
    """``decide`` on one State, or the two halves of a transfer on two States sharing the
    directory, the receiver alone on one of them (a self-transfer stays on one shard)."""
    if layout == "one state":
        return decide(state, command, now_us)
    receiver = {w.id: w for w in state.wallets.values() if w.id == command.to_wallet_id}
    others = {w.id: w for w in state.wallets.values() if w.id != command.to_wallet_id}
    credit_shard = State(directory=state.directory, wallets=receiver)
    credit = check_credit(credit_shard, command)
    sender_id = command.from_wallet_id
    if sender_id is None and credit.asset is not None:
        sender_id = treasury_id(credit.asset)
    debit_shard = credit_shard if sender_id in (None, command.to_wallet_id) else State(
        directory=state.directory, wallets=others
    )
    return decide_transfer(debit_shard, command, now_us, credit)


def assert_rejected(decision: Decision, reason: Reason) -> None:
    assert isinstance(decision, Rejection), decision
    assert decision.reason == reason, decision
    assert decision.detail


def assert_accepted(decision: Decision) -> Transferred:
    assert isinstance(decision, list), decision
    (event,) = decision
    assert isinstance(event, Transferred)
    return event


TABLE_ROW = re.compile(r"^\s*\|\s*(\d+b?)\s*\|[^|]*\|\s*([A-Z_/]+)\s*\|")


# The source file, not ``ledger._decide.__doc__``: the table is documentation of the source, and
# a build that compiles the module (mypyc, ADR 0012) need not keep its docstring.
DECIDE_SOURCE = Path(__file__).resolve().parents[2] / "ledger" / "_decide.py"


def table_reasons() -> list[Reason]:
    """The reasons of the docstring table in ``ledger/_decide.py``, top to bottom (row 0 aside)."""
    reasons: list[Reason] = []
    docstring = ast.get_docstring(ast.parse(DECIDE_SOURCE.read_text(encoding="utf-8")), clean=False)
    for line in (docstring or "").splitlines():
        match = TABLE_ROW.match(line)
        if match is None or match.group(1) == "0":
            continue
        head, *tails = match.group(2).split("/")
        reasons.append(Reason[head])
        prefix = head.rsplit("_", 1)[0]
        reasons.extend(Reason[prefix + tail] for tail in tails)  # SENDER_FROZEN/_CLOSED
    return reasons


def test_the_table_order_is_the_check_order() -> None:
    """The docstring table, ``TRANSFER_CHECK_ORDER`` and the order of ``Reason`` agree."""
    rows = [
        Reason.SENDER_NOT_FOUND, Reason.FORBIDDEN, Reason.RECEIVER_NOT_FOUND, Reason.SAME_WALLET,
        Reason.ASSET_MISMATCH, Reason.SENDER_FROZEN, Reason.SENDER_CLOSED, Reason.RECEIVER_CLOSED,
        Reason.INSUFFICIENT_FUNDS, Reason.SPEND_LIMIT_EXCEEDED, Reason.BALANCE_OVERFLOW,
    ]
    assert table_reasons() == rows
    assert sorted(TRANSFER_CHECK_ORDER, key=TRANSFER_CHECK_ORDER.__getitem__) == rows
    members = list(Reason)
    # SPEND_LIMIT_EXCEEDED came later: appended to ``Reason``, so only the others keep its order.
    rows.remove(Reason.SPEND_LIMIT_EXCEEDED)
    assert [members.index(reason) for reason in rows] == sorted(members.index(reason) for reason in rows)


# -- row 0: idempotency -------------------------------------------------------------------


def test_row_0_same_key_same_request_replays_the_original(book: Book, layout: str) -> None:
    first = book.accept(book.transfer("alice", "bob", 10, key="k"))
    lsn = book.state.directory.lsn
    book.set_status("alice", WalletStatus.FROZEN)  # row 5 would refuse a fresh request
    again = book.transfer("alice", "bob", 10, key="k")
    decision = decide_in(layout, book.state, again)
    assert isinstance(decision, Duplicate), decision
    assert decision.record.lsn == lsn
    assert [decision.record.event] == first
    assert decision.record.fingerprint == b"f"


def test_row_0_same_key_another_request_is_refused_before_row_1(book: Book, layout: str) -> None:
    book.accept(book.transfer("alice", "bob", 10, key="k"))
    reused = book.transfer("ghost", "nobody", 10, key="k", fingerprint=b"other")
    assert_rejected(decide_in(layout, book.state, reused), Reason.IDEMPOTENCY_KEY_REUSED)
    # The same key in another scope is another key.
    fresh = book.transfer("alice", "bob", 10, key="k", fingerprint=b"other", scope="owner:alice")
    assert_accepted(decide_in(layout, book.state, fresh))


# -- rows 1 to 8 ---------------------------------------------------------------------------


def test_row_1_sender_not_found_beats_receiver_not_found(book: Book, layout: str) -> None:
    assert_rejected(decide_in(layout, book.state, book.transfer("ghost", "nobody", 1)), Reason.SENDER_NOT_FOUND)
    assert_rejected(decide_in(layout, book.state, book.transfer("ghost", "bob", 1)), Reason.SENDER_NOT_FOUND)


def test_row_1b_forbidden_beats_receiver_not_found(book: Book, layout: str) -> None:
    command = book.transfer("alice", "nobody", 1000, owner_id="bob")
    assert_rejected(decide_in(layout, book.state, command), Reason.FORBIDDEN)
    assert_rejected(decide_in(layout, book.state, book.transfer("alice", "bob", 1, owner_id="bob")), Reason.FORBIDDEN)
    # The owner and the admin (owner_id None) may move alice's money.
    assert_accepted(decide_in(layout, book.state, book.transfer("alice", "bob", 1, owner_id="alice")))
    assert_accepted(decide_in(layout, book.state, book.transfer("alice", "bob", 1)))


def test_row_1b_only_the_system_owns_a_treasury(book: Book, layout: str) -> None:
    assert_rejected(decide_in(layout, book.state, book.transfer(None, "bob", 1, owner_id="bob")), Reason.FORBIDDEN)
    assert_accepted(decide_in(layout, book.state, book.transfer(None, "bob", 1, owner_id="system")))


def test_row_2_receiver_not_found_beats_later_debit_rows(book: Book, layout: str) -> None:
    book.set_status("alice", WalletStatus.FROZEN)
    # A credit-side failure wins over a later debit-side one (frozen sender, no funds).
    command = book.transfer("alice", "nobody", 1000)
    assert_rejected(decide_in(layout, book.state, command), Reason.RECEIVER_NOT_FOUND)


def test_row_3_same_wallet_beats_status_overflow_and_funds(book: Book, layout: str) -> None:
    assert_rejected(decide_in(layout, book.state, book.transfer("alice", "alice", INT64_MAX)), Reason.SAME_WALLET)
    book.set_status("alice", WalletStatus.FROZEN)
    assert_rejected(decide_in(layout, book.state, book.transfer("alice", "alice", 1)), Reason.SAME_WALLET)
    book.set_status("dan", WalletStatus.CLOSED)  # closed is both SENDER_ and RECEIVER_CLOSED
    assert_rejected(decide_in(layout, book.state, book.transfer("dan", "dan", 1)), Reason.SAME_WALLET)
    # A deposit into a treasury moves money from the treasury to itself.
    assert_rejected(decide_in(layout, book.state, book.transfer(None, treasury_id("USD"), 1)), Reason.SAME_WALLET)


def test_row_4_asset_mismatch_beats_status_rows(book: Book, layout: str) -> None:
    assert_rejected(decide_in(layout, book.state, book.transfer("alice", "carol", 1)), Reason.ASSET_MISMATCH)
    book.set_status("alice", WalletStatus.FROZEN)
    book.accept(book.transfer("carol", treasury_id("EUR"), 50))
    book.set_status("carol", WalletStatus.CLOSED)
    assert_rejected(decide_in(layout, book.state, book.transfer("alice", "carol", 1000)), Reason.ASSET_MISMATCH)


def test_row_5_sender_frozen_beats_receiver_closed(book: Book, layout: str) -> None:
    book.set_status("alice", WalletStatus.FROZEN)
    book.set_status("bob", WalletStatus.CLOSED)
    assert_rejected(decide_in(layout, book.state, book.transfer("alice", "bob", 1000)), Reason.SENDER_FROZEN)
    assert_rejected(decide_in(layout, book.state, book.transfer("alice", "dan", 1)), Reason.SENDER_FROZEN)


def test_row_5_sender_closed_beats_receiver_closed(book: Book, layout: str) -> None:
    book.set_status("dan", WalletStatus.CLOSED)
    book.set_status("bob", WalletStatus.CLOSED)
    assert_rejected(decide_in(layout, book.state, book.transfer("dan", "bob", 1)), Reason.SENDER_CLOSED)
    assert_rejected(decide_in(layout, book.state, book.transfer("dan", "alice", 1)), Reason.SENDER_CLOSED)


def test_row_5_a_frozen_treasury_refuses_deposits(book: Book, layout: str) -> None:
    book.set_status(treasury_id("USD"), WalletStatus.FROZEN)
    assert_rejected(decide_in(layout, book.state, book.transfer(None, "bob", 1)), Reason.SENDER_FROZEN)


def test_row_5_a_frozen_receiver_still_receives(book: Book, layout: str) -> None:
    book.set_status("bob", WalletStatus.FROZEN)
    assert_accepted(decide_in(layout, book.state, book.transfer("alice", "bob", 1)))


def test_row_6_receiver_closed_beats_funds_and_overflow(book: Book, layout: str) -> None:
    book.set_status("bob", WalletStatus.CLOSED)
    assert_rejected(decide_in(layout, book.state, book.transfer("alice", "bob", 1000)), Reason.RECEIVER_CLOSED)
    assert_rejected(decide_in(layout, book.state, book.transfer(None, "bob", 1)), Reason.RECEIVER_CLOSED)
    # A treasury that would leave int64 (debit-side row 8) loses to the credit-side row 6.
    book.accept(book.transfer(None, "dan", INT64_MAX - 100))  # the USD treasury is at INT64_MIN + 1
    assert_rejected(decide_in(layout, book.state, book.transfer(None, "bob", 2)), Reason.RECEIVER_CLOSED)


def test_row_7_insufficient_funds_and_the_exact_balance(book: Book, layout: str) -> None:
    assert_rejected(decide_in(layout, book.state, book.transfer("alice", "bob", 101)), Reason.INSUFFICIENT_FUNDS)
    assert_rejected(decide_in(layout, book.state, book.transfer("bob", "alice", 1)), Reason.INSUFFICIENT_FUNDS)
    event = assert_accepted(decide_in(layout, book.state, book.transfer("alice", "bob", 100)))
    assert event == Transferred(
        transaction_id=event.transaction_id, type=TransactionType.TRANSFER, from_wallet_id="alice",
        to_wallet_id="bob", asset="USD", amount=100, description=None, metadata=None,
        at_us=START_US, idempotency=None,
    )


def test_row_7_insufficient_funds_beats_the_receivers_overflow(book: Book, layout: str) -> None:
    # alice has 100 and bob INT64_MAX - 99: every dollar in USD is in these two wallets.
    book.accept(book.transfer(None, "bob", INT64_MAX - 99))
    # Too much for alice *and* for bob's balance: the debit side's row 7 wins over the credit
    # side's row 8, so a sender cannot probe a stranger's balance with money it does not have.
    assert_rejected(decide_in(layout, book.state, book.transfer("alice", "bob", 200)), Reason.INSUFFICIENT_FUNDS)
    assert_rejected(decide_in(layout, book.state, book.transfer("alice", "bob", 101)), Reason.INSUFFICIENT_FUNDS)


def test_row_7_treasuries_are_exempt(book: Book, layout: str) -> None:
    event = assert_accepted(decide_in(layout, book.state, book.transfer(None, "bob", INT64_MAX - 100)))
    assert event.from_wallet_id == treasury_id("USD")
    assert event.type == TransactionType.DEPOSIT
    assert_accepted(decide_in(layout, book.state, book.transfer(treasury_id("USD"), "bob", 12345)))


def test_row_7_overdraft_limit_lets_available_go_down_to_minus_the_limit(book: Book, layout: str) -> None:
    book.accept(UpdateWallet(wallet_id="alice", overdraft_limit=50))
    # alice has 100 and may go to -50: 151 is one too many, whatever her spend limits say.
    refused = decide_in(layout, book.state, book.transfer("alice", "bob", 151))
    assert_rejected(refused, Reason.INSUFFICIENT_FUNDS)
    assert isinstance(refused, Rejection) and "overdraft limit of 50" in refused.detail
    book.accept(book.transfer("alice", "bob", 150))
    assert book.state.wallets["alice"].available == -50
    assert_rejected(decide_in(layout, book.state, book.transfer("alice", "bob", 1)), Reason.INSUFFICIENT_FUNDS)


def test_row_7_insufficient_funds_beats_the_spend_limit(book: Book, layout: str) -> None:
    book.accept(UpdateWallet(wallet_id="alice", daily_limit=10))
    assert_rejected(decide_in(layout, book.state, book.transfer("alice", "bob", 101)), Reason.INSUFFICIENT_FUNDS)


def test_row_7b_spend_limit_daily_then_monthly_beats_the_receivers_overflow(book: Book, layout: str) -> None:
    book.accept(book.transfer(None, "bob", INT64_MAX - 99))  # bob overflows past 99 more
    book.accept(UpdateWallet(wallet_id="alice", overdraft_limit=1000, daily_limit=200, monthly_limit=250))
    book.accept(book.transfer("alice", "dan", 20))
    refused = decide_in(layout, book.state, book.transfer("alice", "bob", 181))
    assert_rejected(refused, Reason.SPEND_LIMIT_EXCEEDED)
    assert isinstance(refused, Rejection)
    assert refused.detail == ("wallet alice has a daily spend limit of 200, has spent 20 in this day (UTC), "
                              "181 requested")
    assert_rejected(decide_in(layout, book.state, book.transfer("alice", "bob", 180)), Reason.BALANCE_OVERFLOW)
    book.accept(book.transfer("alice", "dan", 80))
    # The next day the daily window is empty; the month's still counts 100.
    tomorrow = START_US + 86_400_000_000
    refused = decide_in(layout, book.state, book.transfer("alice", "dan", 151), now_us=tomorrow)
    assert_rejected(refused, Reason.SPEND_LIMIT_EXCEEDED)
    assert isinstance(refused, Rejection) and "monthly spend limit of 250, has spent 100" in refused.detail
    assert_accepted(decide_in(layout, book.state, book.transfer("alice", "dan", 150), now_us=tomorrow))
    # Deposits into alice never count (the treasury has no limits).
    book.accept(book.transfer("bob", "alice", 500), at_us=tomorrow)
    assert book.state.wallets["alice"].spent_at(tomorrow) == (0, 100)


def test_row_8_receiver_overflow(book: Book, layout: str) -> None:
    book.accept(book.transfer(None, "bob", INT64_MAX - 99))  # the treasury at exactly INT64_MIN
    # bob has the money; alice's 100 plus all of it would be INT64_MAX + 1.
    assert_rejected(
        decide_in(layout, book.state, book.transfer("bob", "alice", INT64_MAX - 99)), Reason.BALANCE_OVERFLOW
    )
    assert_accepted(decide_in(layout, book.state, book.transfer("bob", "alice", INT64_MAX - 100)))


def test_row_8_treasury_int64_underflow_is_balance_overflow(book: Book, layout: str) -> None:
    # alice's 100 plus this takes the USD treasury to exactly INT64_MIN, which is allowed.
    book.accept(book.transfer(None, "bob", INT64_MAX - 99))
    treasury = book.state.wallets[treasury_id("USD")]
    assert treasury.balance == INT64_MIN
    assert_rejected(decide_in(layout, book.state, book.transfer(None, "dan", 1)), Reason.BALANCE_OVERFLOW)
    assert_rejected(
        decide_in(layout, book.state, book.transfer(treasury_id("USD"), "dan", 1)), Reason.BALANCE_OVERFLOW
    )
    # Money coming back makes room again.
    book.accept(book.transfer("bob", treasury_id("USD"), 1))
    assert_accepted(decide_in(layout, book.state, book.transfer(None, "dan", 1)))


def test_row_8_check_credit_counts_the_reservations(book: Book) -> None:
    book.accept(book.transfer(None, "bob", INT64_MAX - 100))
    command = book.transfer("alice", "bob", 5)
    assert check_credit(book.state, command, pending=95) == CreditCheck(asset="USD", failure=None)
    failure = check_credit(book.state, command, pending=96).failure
    assert failure is not None
    assert failure.reason == Reason.BALANCE_OVERFLOW


def test_accepted_transfers_move_exactly_the_amount(book: Book) -> None:
    book.accept(book.transfer("alice", "bob", 40))
    wallets = book.state.wallets
    assert (wallets["alice"].balance, wallets["bob"].balance, wallets[treasury_id("USD")].balance) == (60, 40, -100)


def test_row_2_deposit_to_a_missing_wallet_is_receiver_not_found(book: Book, layout: str) -> None:
    # Without a receiver there is no asset, hence no treasury to check rows 1 to 5 against.
    decision = decide_in(layout, book.state, book.transfer(None, "nobody", 1))
    assert_rejected(decision, Reason.RECEIVER_NOT_FOUND)
    decision = decide_in(layout, book.state, book.transfer(None, "nobody", 1, owner_id="bob"))
    assert_rejected(decision, Reason.RECEIVER_NOT_FOUND)


# -- decide_change_status ------------------------------------------------------------------


def test_status_of_a_missing_wallet(book: Book) -> None:
    assert_rejected(book.run(ChangeWalletStatus(wallet_id="ghost", status=WalletStatus.FROZEN)), Reason.SENDER_NOT_FOUND)


def test_status_freeze_unfreeze_and_already_so(book: Book) -> None:
    assert book.run(ChangeWalletStatus(wallet_id="alice", status=WalletStatus.ACTIVE)) == []
    events = book.accept(ChangeWalletStatus(wallet_id="alice", status=WalletStatus.FROZEN), at_us=START_US + 5)
    assert events == [WalletStatusChanged(wallet_id="alice", status=WalletStatus.FROZEN, at_us=START_US + 5)]
    assert book.state.wallets["alice"].status == WalletStatus.FROZEN
    assert book.state.wallets["alice"].updated_at_us == START_US + 5
    assert book.run(ChangeWalletStatus(wallet_id="alice", status=WalletStatus.FROZEN)) == []
    book.accept(ChangeWalletStatus(wallet_id="alice", status=WalletStatus.ACTIVE))
    assert book.state.wallets["alice"].status == WalletStatus.ACTIVE


def test_close_needs_a_zero_balance(book: Book) -> None:
    assert_rejected(book.run(ChangeWalletStatus(wallet_id="alice", status=WalletStatus.CLOSED)), Reason.WALLET_NOT_EMPTY)
    assert_rejected(
        book.run(ChangeWalletStatus(wallet_id=treasury_id("USD"), status=WalletStatus.CLOSED)), Reason.WALLET_NOT_EMPTY
    )
    book.accept(book.transfer("alice", "bob", 100))
    book.set_status("alice", WalletStatus.FROZEN)
    book.accept(ChangeWalletStatus(wallet_id="alice", status=WalletStatus.CLOSED))  # frozen -> closed
    assert book.state.wallets["alice"].status == WalletStatus.CLOSED


def test_close_needs_nothing_held() -> None:
    state = new_state()
    apply(state, AssetCreated(code="USD", scale=2, at_us=START_US), 1)
    # No event holds money yet, so the wallet is made by hand: nothing but ``held`` is non-zero.
    state.wallets["held"] = Wallet(
        id="held", owner_id="o", asset="USD", metadata=None, created_at_us=START_US, lsn=1, balance=0, held=5
    )
    decision = decide_change_status(state, ChangeWalletStatus(wallet_id="held", status=WalletStatus.CLOSED), START_US)
    assert_rejected(decision, Reason.WALLET_NOT_EMPTY)


def test_close_needs_no_transfer_in_flight(book: Book) -> None:
    command = ChangeWalletStatus(wallet_id="dan", status=WalletStatus.CLOSED)
    decision = decide_change_status(book.state, command, START_US, pending=1)
    assert_rejected(decision, Reason.WALLET_NOT_EMPTY)
    assert isinstance(decision, Rejection)
    assert "in flight" in decision.detail
    assert decide_change_status(book.state, command, START_US, pending=0) == [
        WalletStatusChanged(wallet_id="dan", status=WalletStatus.CLOSED, at_us=START_US)
    ]
    # Freezing is fine with money on its way.
    freeze = ChangeWalletStatus(wallet_id="dan", status=WalletStatus.FROZEN)
    assert isinstance(decide_change_status(book.state, freeze, START_US, pending=1), list)


def test_closed_is_final(book: Book) -> None:
    book.set_status("dan", WalletStatus.CLOSED)
    for status in (WalletStatus.ACTIVE, WalletStatus.FROZEN):
        assert_rejected(book.run(ChangeWalletStatus(wallet_id="dan", status=status)), Reason.WALLET_CLOSED)
    assert book.run(ChangeWalletStatus(wallet_id="dan", status=WalletStatus.CLOSED)) == []
    assert_rejected(book.run(book.transfer(None, "dan", 1)), Reason.RECEIVER_CLOSED)


# -- decide_create_wallet ------------------------------------------------------------------


def test_create_wallet_records_the_wallet(book: Book) -> None:
    command = CreateWallet(wallet_id="erin", owner_id="erin", asset="EUR", metadata={"k": "v"}, idempotency=None)
    assert book.accept(command, at_us=START_US + 7) == [
        WalletCreated(wallet_id="erin", owner_id="erin", asset="EUR", metadata={"k": "v"}, at_us=START_US + 7, idempotency=None)
    ]
    erin = book.state.wallets["erin"]
    assert (erin.owner_id, erin.asset, erin.balance, erin.status, erin.metadata) == (
        "erin", "EUR", 0, WalletStatus.ACTIVE, {"k": "v"}
    )
    assert (erin.created_at_us, erin.updated_at_us, erin.lsn) == (START_US + 7, START_US + 7, book.state.directory.lsn)


def test_create_wallet_again_is_nothing_new(book: Book) -> None:
    lsn = book.state.directory.lsn
    assert book.run(wallet("alice", "alice", "USD")) == []
    assert book.state.directory.lsn == lsn


@pytest.mark.parametrize(("owner_id", "asset"), [("bob", "USD"), ("alice", "EUR"), ("bob", "EUR")])
def test_create_wallet_with_another_owner_or_asset_exists(book: Book, owner_id: str, asset: str) -> None:
    assert_rejected(book.run(wallet("alice", owner_id, asset)), Reason.WALLET_EXISTS)


def test_create_wallet_of_an_unknown_asset(book: Book) -> None:
    assert_rejected(book.run(wallet("erin", "erin", "GBP")), Reason.ASSET_NOT_FOUND)
    # The asset check comes before the existence check.
    assert_rejected(book.run(wallet("alice", "alice", "GBP")), Reason.ASSET_NOT_FOUND)


def test_create_wallet_with_a_key(book: Book) -> None:
    (created,) = book.accept(wallet("erin", "erin", "USD", key="w1"))
    lsn = book.state.directory.lsn
    decision = book.run(wallet("erin", "erin", "USD", key="w1"))
    assert isinstance(decision, Duplicate), decision
    assert decision.record.lsn == lsn
    assert decision.record.event == created
    # Row 0 comes before the asset check.
    assert_rejected(book.run(wallet("erin", "erin", "GBP", key="w1", fingerprint=b"x")), Reason.IDEMPOTENCY_KEY_REUSED)


def test_a_treasury_id_cannot_be_taken_before_its_asset_exists(book: Book) -> None:
    assert_rejected(book.run(wallet(treasury_id("GBP"), "mallory", "USD")), Reason.RESERVED_ID)
    assert_rejected(book.run(wallet("w-sys", "system", "USD")), Reason.RESERVED_ID)
    book.run(CreateAsset(code="GBP", scale=2))
    treasury = book.state.wallets[treasury_id("GBP")]
    assert treasury.asset == "GBP"
    assert treasury.owner_id == "system"


# -- decide_create_asset -------------------------------------------------------------------


def test_create_asset_makes_its_treasury() -> None:
    book = Book()
    assert book.accept(CreateAsset(code="JPY", scale=0)) == [AssetCreated(code="JPY", scale=0, at_us=START_US)]
    assert book.state.directory.assets["JPY"].scale == 0
    treasury = book.state.wallets[treasury_id("JPY")]
    assert (treasury.owner_id, treasury.asset, treasury.balance) == ("system", "JPY", 0)


def test_create_asset_again(book: Book) -> None:
    assert book.run(CreateAsset(code="USD", scale=2)) == []
    assert_rejected(book.run(CreateAsset(code="USD", scale=3)), Reason.ASSET_EXISTS)
    assert book.state.directory.assets["USD"].scale == 2


# -- tokens --------------------------------------------------------------------------------


def test_tokens(book: Book) -> None:
    created = book.accept(CreateToken(token_hash=b"h1", prefix="p1", owner_id="alice"))
    assert created == [TokenCreated(token_hash=b"h1", prefix="p1", owner_id="alice", at_us=START_US)]
    assert book.state.directory.tokens[b"h1"].owner_id == "alice"
    assert_rejected(book.run(CreateToken(token_hash=b"h1", prefix="p2", owner_id="bob")), Reason.TOKEN_EXISTS)
    assert_rejected(book.run(CreateToken(token_hash=b"h2", prefix="p1", owner_id="bob")), Reason.TOKEN_EXISTS)
    assert_rejected(book.run(RevokeToken(prefix="p2")), Reason.TOKEN_NOT_FOUND)
    assert book.accept(RevokeToken(prefix="p1")) == [TokenRevoked(prefix="p1", at_us=START_US)]
    assert b"h1" not in book.state.directory.tokens
    assert "p1" not in book.state.directory.token_prefixes
    assert_rejected(book.run(RevokeToken(prefix="p1")), Reason.TOKEN_NOT_FOUND)
    book.accept(CreateToken(token_hash=b"h2", prefix="p1", owner_id="bob"))  # the prefix is free again


# -- idempotency retention -----------------------------------------------------------------


def test_idempotency_records_are_kept_for_the_retention_then_expire(book: Book) -> None:
    t0 = START_US + 1
    book.accept(book.transfer("alice", "bob", 1, key="old"), at_us=t0)
    reused = book.transfer("alice", "bob", 1, key="old", fingerprint=b"new")
    # Another keyed record exactly RETENTION later: "old" is at the horizon and stays.
    book.accept(book.transfer("alice", "bob", 1, key="k2"), at_us=t0 + IDEMPOTENCY_RETENTION_US)
    assert ("admin", "old") in book.state.directory.idempotency
    assert_rejected(book.run(reused, at_us=t0 + IDEMPOTENCY_RETENTION_US), Reason.IDEMPOTENCY_KEY_REUSED)
    # One microsecond more and the next keyed record expires it.
    book.accept(book.transfer("alice", "bob", 1, key="k3"), at_us=t0 + IDEMPOTENCY_RETENTION_US + 1)
    assert ("admin", "old") not in book.state.directory.idempotency
    assert ("admin", "k2") in book.state.directory.idempotency
    assert_accepted(book.run(reused, at_us=t0 + IDEMPOTENCY_RETENTION_US + 1))


def test_an_expired_key_runs_again(book: Book) -> None:
    first = book.transfer("alice", "bob", 1, key="k")
    book.accept(first, at_us=START_US)
    later = START_US + IDEMPOTENCY_RETENTION_US + 1
    book.accept(book.transfer("alice", "bob", 1, key="other"), at_us=later)
    assert_accepted(book.run(first, at_us=later))
    assert book.state.wallets["bob"].balance == 3
