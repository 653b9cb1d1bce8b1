"""Refunds in the ledger: one test per row of the refund table in ``ledger/_decide.py``, the
cap across several refunds and its tally in the state, the codec and replay, and the service
(actors, WAL, router): concurrent refunds never refund more than the original, across shards
too, and the live state equals a replay of the log and a snapshot of it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from ledger import (
    ChangeWalletStatus,
    Committed,
    CreateAsset,
    CreateWallet,
    Idempotency,
    Ledger,
    Reason,
    Refund,
    Refunded,
    RefundTally,
    Rejection,
    TransactionStatus,
    TransactionType,
    Transfer,
    UpdateWallet,
    WalletStatus,
    apply,
    build_snapshot,
    check_state,
    decide,
    decode_event,
    decode_state,
    digest_state,
    encode_event,
    encode_state,
    new_state,
    recover,
    shard_of,
    treasury_id,
)
from ledger._snapshot import SNAPSHOT_CODEC_VERSION
from ledger.testing import replay, setup, transfer

T0 = 1_000_000_000


class Book:
    """One state holding every wallet, and the events it accepted (for replay)."""

    def __init__(self) -> None:
        self.state = new_state()
        self.events: list[Any] = []

    def run(self, command: Any) -> Any:
        decision = decide(self.state, command, T0 + len(self.events))
        if isinstance(decision, list):
            for event in decision:
                apply(self.state, event, self.state.directory.lsn + 1)
                self.events.append(event)
        check_state(self.state)
        return decision

    def balance(self, wallet_id: str) -> int:
        return self.state.wallets[wallet_id].balance


def book() -> Book:
    """alice's ``a`` got a deposit of 100 (``dep``) and sent 60 of it to bob's ``b`` (``t1``)."""
    b = Book()
    b.run(CreateAsset(code="USD", scale=2))
    b.run(CreateAsset(code="EUR", scale=2))
    for wallet_id, owner, asset in (("a", "alice", "USD"), ("b", "bob", "USD"), ("c", "carol", "USD"),
                                    ("e", "bob", "EUR")):
        b.run(CreateWallet(wallet_id=wallet_id, owner_id=owner, asset=asset, metadata=None, idempotency=None))
    b.run(Transfer(transaction_id="dep", type=TransactionType.DEPOSIT, from_wallet_id=None, to_wallet_id="a",
                   amount=100, description=None, metadata=None, idempotency=None))
    b.run(Transfer(transaction_id="t1", type=TransactionType.TRANSFER, from_wallet_id="a", to_wallet_id="b",
                   amount=60, description=None, metadata=None, idempotency=None))
    return b


def refund(of: str = "t1", amount: int | None = None, *, tx: str = "r1", source: str = "b", target: str = "a",
           original_amount: int = 60, type_: TransactionType = TransactionType.TRANSFER,
           status: TransactionStatus = TransactionStatus.POSTED, owner: str | None = None,
           key: str | None = None, fingerprint: bytes = b"f") -> Refund:
    return Refund(
        transaction_id=tx, refund_of=of, from_wallet_id=source, to_wallet_id=target, amount=amount,
        original_type=type_, original_status=status, original_amount=original_amount, description="back",
        metadata={"why": "damaged"}, owner_id=owner,
        idempotency=None if key is None else Idempotency(scope="bob", key=key, fingerprint=fingerprint),
    )


def reason(decision: Any) -> Reason:
    assert isinstance(decision, Rejection), decision
    return decision.reason


def test_a_refund_sends_the_amount_back_and_counts_it() -> None:
    b = book()
    (event,) = b.run(refund(amount=25, owner="bob"))
    assert isinstance(event, Refunded) and event.type == TransactionType.REFUND
    assert (event.refund_of, event.from_wallet_id, event.to_wallet_id, event.amount, event.original_amount) == (
        "t1", "b", "a", 25, 60)
    assert (b.balance("a"), b.balance("b")) == (65, 35)
    assert b.state.refunded == {"t1": RefundTally(wallet_id="b", original_amount=60, refunded=25)}


def test_without_an_amount_a_refund_takes_what_is_left_then_nothing_is() -> None:
    b = book()
    b.run(refund(amount=25))
    (event,) = b.run(refund(tx="r2"))
    assert event.amount == 35
    assert (b.balance("a"), b.balance("b")) == (100, 0)
    again = b.run(refund(tx="r3"))
    assert reason(again) == Reason.REFUND_EXCEEDS_REMAINING and "0 left" in again.detail


def test_the_cap_holds_across_several_refunds() -> None:
    b = book()
    for number in range(3):
        assert isinstance(b.run(refund(amount=20, tx=f"r{number}")), list)
    over = b.run(refund(amount=1, tx="r9"))
    assert reason(over) == Reason.REFUND_EXCEEDS_REMAINING
    assert b.state.refunded["t1"].refunded == 60


def test_a_deposit_refund_goes_back_to_the_treasury() -> None:
    b = book()
    (event,) = b.run(refund("dep", 30, source="a", target=treasury_id("USD"), original_amount=100,
                            type_=TransactionType.DEPOSIT))
    assert event.to_wallet_id == "treasury:USD"
    assert (b.balance("a"), b.balance("treasury:USD")) == (10, -70)


# -- the refund table, one test per row ----------------------------------------------------


def test_row_0_a_key_replays_or_refuses_another_request() -> None:
    b = book()
    (first,) = b.run(refund(amount=10, key="k"))
    replayed = b.run(refund(amount=10, tx="r2", key="k"))
    assert replayed.record.event == first
    assert reason(b.run(refund(amount=11, tx="r3", key="k", fingerprint=b"other"))) == Reason.IDEMPOTENCY_KEY_REUSED
    assert b.state.refunded["t1"].refunded == 10


@pytest.mark.parametrize(("type_", "status"), [
    (TransactionType.WITHDRAWAL, TransactionStatus.POSTED),
    (TransactionType.REFUND, TransactionStatus.POSTED),
    (TransactionType.TRANSFER, TransactionStatus.PENDING),
    (TransactionType.TRANSFER, TransactionStatus.VOIDED),
    (TransactionType.WITHDRAWAL, TransactionStatus.FAILED),
])
def test_row_1_only_posted_deposits_and_transfers_are_refundable(type_: TransactionType,
                                                                 status: TransactionStatus) -> None:
    b = book()
    refused = b.run(refund(amount=1, type_=type_, status=status))
    assert reason(refused) == Reason.NOT_REFUNDABLE and type_.label in refused.detail
    assert b.state.refunded == {} and (b.balance("a"), b.balance("b")) == (40, 60)


def test_row_2_the_refunding_wallet_exists() -> None:
    assert reason(book().run(refund(amount=1, source="ghost"))) == Reason.SENDER_NOT_FOUND


def test_row_3_the_caller_owns_the_refunding_wallet() -> None:
    b = book()
    assert reason(b.run(refund(amount=1, owner="alice"))) == Reason.FORBIDDEN
    assert isinstance(b.run(refund(amount=1, owner="bob")), list)


def test_row_4_the_amount_is_at_most_what_is_left() -> None:
    b = book()
    over = b.run(refund(amount=61))
    assert reason(over) == Reason.REFUND_EXCEEDS_REMAINING
    assert over.detail == "transaction t1 has 60 left to refund, 61 requested"
    assert isinstance(b.run(refund(amount=60)), list)


def test_row_4_the_first_refund_fixes_the_original_amount() -> None:
    b = book()
    b.run(refund(amount=10))
    # A later command's facts cannot raise the cap the log recorded.
    assert reason(b.run(refund(amount=51, tx="r2", original_amount=1000))) == Reason.REFUND_EXCEEDS_REMAINING


@pytest.mark.parametrize(("status", "expected"), [
    (WalletStatus.FROZEN, Reason.SENDER_FROZEN), (WalletStatus.CLOSED, Reason.SENDER_CLOSED),
])
def test_row_5_the_refunding_wallet_is_not_frozen_or_closed(status: WalletStatus, expected: Reason) -> None:
    b = book()
    if status == WalletStatus.CLOSED:
        b.run(Transfer(transaction_id="away", type=TransactionType.TRANSFER, from_wallet_id="b", to_wallet_id="c",
                       amount=60, description=None, metadata=None, idempotency=None))
    b.run(ChangeWalletStatus(wallet_id="b", status=status))
    assert reason(b.run(refund(amount=1))) == expected


def test_row_5_the_refunded_wallet_may_be_frozen_not_closed() -> None:
    b = book()
    b.run(ChangeWalletStatus(wallet_id="a", status=WalletStatus.FROZEN))
    assert isinstance(b.run(refund(amount=1)), list)
    b.run(Transfer(transaction_id="out", type=TransactionType.TRANSFER, from_wallet_id="b", to_wallet_id="c",
                   amount=59, description=None, metadata=None, idempotency=None))
    b.run(ChangeWalletStatus(wallet_id="a", status=WalletStatus.ACTIVE))
    b.run(Transfer(transaction_id="out2", type=TransactionType.TRANSFER, from_wallet_id="a", to_wallet_id="c",
                   amount=41, description=None, metadata=None, idempotency=None))
    b.run(ChangeWalletStatus(wallet_id="a", status=WalletStatus.CLOSED))
    b.run(Transfer(transaction_id="in", type=TransactionType.TRANSFER, from_wallet_id="c", to_wallet_id="b",
                   amount=5, description=None, metadata=None, idempotency=None))
    assert reason(b.run(refund(amount=1, tx="r2"))) == Reason.RECEIVER_CLOSED


def test_row_5_the_refunding_wallet_needs_the_funds() -> None:
    b = book()
    b.run(Transfer(transaction_id="spent", type=TransactionType.TRANSFER, from_wallet_id="b", to_wallet_id="c",
                   amount=50, description=None, metadata=None, idempotency=None))
    short = b.run(refund(amount=11))
    assert reason(short) == Reason.INSUFFICIENT_FUNDS and "10 available" in short.detail
    assert isinstance(b.run(refund(amount=10)), list)


# -- codec, replay, snapshot -----------------------------------------------------------------


def test_refunds_replay_through_the_codec_to_the_same_state() -> None:
    b = book()
    b.run(refund(amount=10, key="k"))
    b.run(refund("dep", None, tx="r2", source="a", target=treasury_id("USD"), original_amount=100,
                 type_=TransactionType.DEPOSIT))
    event = b.events[-1]
    assert decode_event(encode_event(event)) == event
    assert msgpack.unpackb(encode_event(event))[:2] == [1, 19]  # kind 19
    assert digest_state(replay(b.events)) == digest_state(b.state)


def test_the_snapshot_carries_the_tallies_and_a_version_3_body_still_decodes() -> None:
    b = book()
    b.run(refund(amount=10))
    b.run(refund("dep", 5, tx="r2", source="a", target=treasury_id("USD"), original_amount=100,
                 type_=TransactionType.DEPOSIT))
    body = b"".join(encode_state(b.state))
    loaded = decode_state(body)
    assert loaded.refunded == b.state.refunded
    assert digest_state(loaded) == digest_state(b.state)
    # Without the tallies the digest differs: the digest covers them.
    loaded.refunded.clear()
    assert digest_state(loaded) != digest_state(b.state)
    assert SNAPSHOT_CODEC_VERSION == 4
    # A version 3 body (header of 11 fields, no refusal, tally or limits section) decodes with no tallies.
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(b"".join(encode_state(book().state)))
    header, *entities = list(unpacker)
    assert header[-2:] == [0, 0]  # no refusals, no tallies
    # The limits section ends the body: its count, then that many wallets (these spent).
    limited = next(k for k in range(len(entities)) if entities[-(k + 1)] == k)
    assert limited >= 1
    old = msgpack.packb([3, *header[1:-2]]) + b"".join(
        msgpack.packb(entity) for entity in entities[: -(limited + 1)]
    )
    assert decode_state(old).refunded == {}


# -- the service: actors, WAL, router ---------------------------------------------------------


def _refund_of(committed: Committed, amount: int | None, number: int, *, key: str | None = None) -> Refund:
    event = committed.event
    return Refund(
        transaction_id=f"rf{number}", refund_of=event.transaction_id, from_wallet_id=event.to_wallet_id,
        to_wallet_id=event.from_wallet_id, amount=amount, original_type=event.type,
        original_status=TransactionStatus.POSTED, original_amount=event.amount, description=None, metadata=None,
        idempotency=None if key is None else Idempotency(scope="s", key=key, fingerprint=key.encode()),
    )


def _apart(shards: int) -> tuple[str, str]:
    """Two wallet ids on different shards (the same one when there is one shard)."""
    ids = [f"w{number}" for number in range(40)]
    first = ids[0]
    second = next(wallet_id for wallet_id in ids[1:]
                  if shards == 1 or shard_of(wallet_id, shards) != shard_of(first, shards))
    return first, second


@pytest.mark.parametrize("shards", [1, 4])
async def test_twenty_concurrent_refunds_of_one_refund_exactly_ten(tmp_path: Path, shards: int) -> None:
    source, target = _apart(shards)
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=shards)
    outcomes: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, [source, target], deposit=50)
        original = await ledger.transfer(transfer(1, source, target, 10))
        assert isinstance(original, Committed)

        async def one(number: int) -> None:
            outcomes.append(await ledger.refund(_refund_of(original, 1, number, key=f"k{number}")))

        async with trio.open_nursery() as clients:
            for number in range(20):
                clients.start_soon(one, number)
        # And one without an amount, when nothing is left.
        outcomes.append(await ledger.refund(_refund_of(original, None, 99)))
        await trio.testing.wait_all_tasks_blocked()
        ledger.check_invariants()
        live = ledger.digest()
        balances = {wallet.id: wallet.balance for wallet in ledger.all_wallets()}
        await ledger.stop()
    posted = [outcome for outcome in outcomes if isinstance(outcome, Committed)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, Rejection)]
    assert len(posted) == 10 and len(refused) == 11
    assert {rejection.reason for rejection in refused} == {Reason.REFUND_EXCEEDS_REMAINING}
    assert (balances[source], balances[target]) == (50, 50)
    replayed = await trio.to_thread.run_sync(recover, tmp_path)
    try:
        assert digest_state(replayed.state) == live
        assert replayed.state.refunded[original.event.transaction_id].refunded == 10
        row = await replayed.history.transaction(original.event.transaction_id)
        assert row is not None and row.refunded_amount == 10
    finally:
        replayed.close()
    # After a restart the tally is on the refunding wallet's shard again: nothing more goes.
    restarted = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=shards)
    async with trio.open_nursery() as nursery:
        await nursery.start(restarted.run)
        again = await restarted.refund(_refund_of(original, 1, 100))
        assert isinstance(again, Rejection) and again.reason == Reason.REFUND_EXCEEDS_REMAINING
        await restarted.stop()


async def test_cross_shard_refunds_of_random_traffic_replay_and_snapshot_to_the_live_state(tmp_path: Path) -> None:
    ids = [f"w{number}" for number in range(12)]
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=3)
    rng = random.Random(15)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ids, deposit=200)
        originals = []
        for number in range(30):
            source, target = rng.sample(ids, 2)
            outcome = await ledger.transfer(transfer(number, source, target, rng.randint(1, 80)))
            if isinstance(outcome, Committed):
                originals.append(outcome)
        assert any(shard_of(o.event.from_wallet_id, 3) != shard_of(o.event.to_wallet_id, 3) for o in originals)
        results: list[Any] = []

        async def client(seed: int) -> None:
            local = random.Random(seed)
            for index in range(15):
                original = local.choice(originals)
                amount = None if local.random() < 0.2 else local.randint(1, 40)
                results.append(await ledger.refund(_refund_of(original, amount, seed * 100 + index)))

        async with trio.open_nursery() as clients:
            for seed in range(6):
                clients.start_soon(client, seed)
        await trio.testing.wait_all_tasks_blocked()
        ledger.check_invariants()
        live = ledger.digest()
        tallies = dict(ledger.all_refunded())
        # What the final snapshot at shutdown writes: the shards' states merged.
        assert digest_state(decode_state(b"".join(encode_state(ledger.merged_state())))) == live
        await ledger.stop()
    assert any(isinstance(result, Committed) for result in results)
    assert any(isinstance(result, Rejection) for result in results)
    for original in originals:
        tally = tallies.get(original.event.transaction_id)
        if tally is not None:
            assert tally.refunded <= original.event.amount == tally.original_amount
    replayed = await trio.to_thread.run_sync(recover, tmp_path)
    replayed.close()
    assert digest_state(replayed.state) == live
    # A snapshot of the log, then recovery from it, gives the same state.
    assert await trio.to_thread.run_sync(lambda: build_snapshot(tmp_path, until_lsn=None, created_at_us=1))
    from_snapshot = await trio.to_thread.run_sync(recover, tmp_path)
    from_snapshot.close()
    assert digest_state(from_snapshot.state) == live
    assert dict(from_snapshot.state.refunded) == tallies


# -- the history read model ------------------------------------------------------------------


def _book_records() -> list[tuple[int, Any]]:
    b = book()
    b.run(refund(amount=10))
    b.run(refund(tx="r2"))  # the 50 left
    return list(enumerate(b.events, start=1))


def test_a_schema_3_read_model_is_migrated_in_place_and_takes_refunds(tmp_path: Path) -> None:
    import sqlite3

    from ledger import History

    records = _book_records()
    before_refunds = [record for record in records if not isinstance(record[1], Refunded)]
    path = tmp_path / "h.sqlite3"
    history = History.open(path)
    history.project_blocking(before_refunds)
    history.stop_thread()
    # Make it what schema 3 wrote: no refund columns.
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE transactions DROP COLUMN refund_of")
        connection.execute("ALTER TABLE transactions DROP COLUMN refunded_amount")
        connection.execute("UPDATE meta SET value = 3 WHERE key = 'schema'")
    connection.close()
    history = History.open(path)
    try:
        row = trio.run(history.transaction, "t1")
        assert row is not None and row.refunded_amount == 0 and row.refund_of is None
        history.project_blocking(records[len(before_refunds):])
        row = trio.run(history.transaction, "t1")
        assert row is not None and row.refunded_amount == 60 and row.amount == 60
        second = trio.run(history.transaction, "r2")
        assert second is not None and (second.type, second.refund_of, second.amount) == (TransactionType.REFUND, "t1", 50)
    finally:
        history.stop_thread()
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (4,)
    check.close()


# -- refunds with wallet limits and final outcomes ---------------------------------------------


def test_a_refund_may_use_the_refunding_wallets_overdraft() -> None:
    """API.md, *Refunds*: the refunding wallet must have the money, "its overdraft limit counts"."""
    b = book()
    b.run(Transfer(transaction_id="t2", type=TransactionType.TRANSFER, from_wallet_id="b", to_wallet_id="c",
                   amount=50, description=None, metadata=None, idempotency=None))
    assert reason(b.run(refund(amount=30))) == Reason.INSUFFICIENT_FUNDS  # b has 10
    b.run(UpdateWallet(wallet_id="b", overdraft_limit=25))
    (event,) = b.run(refund(amount=30))
    assert isinstance(event, Refunded)
    assert b.balance("b") == -20
    over = b.run(refund(amount=6, tx="r2"))  # -26 is past the overdraft
    assert reason(over) == Reason.INSUFFICIENT_FUNDS and "overdraft limit of 25" in over.detail


def test_a_refund_out_of_a_wallet_is_not_its_spending() -> None:
    """API.md, *Wallet limits*: refunds out of a wallet do not count against its spend limits."""
    b = book()
    b.run(UpdateWallet(wallet_id="b", daily_limit=5, monthly_limit=5))
    assert isinstance(b.run(refund(amount=40)), list)  # eight times the daily limit
    wallet = b.state.wallets["b"]
    assert wallet.spent_at(T0 + len(b.events)) == (0, 0)
    # The day's allowance is whole: 5 goes, 1 more does not.
    assert isinstance(b.run(Transfer(transaction_id="t2", type=TransactionType.TRANSFER, from_wallet_id="b",
                                     to_wallet_id="c", amount=5, description=None, metadata=None,
                                     idempotency=None)), list)
    again = b.run(Transfer(transaction_id="t3", type=TransactionType.TRANSFER, from_wallet_id="b",
                           to_wallet_id="c", amount=1, description=None, metadata=None, idempotency=None))
    assert reason(again) == Reason.SPEND_LIMIT_EXCEEDED


@pytest.mark.parametrize("shards", [1, 4])
async def test_a_refused_refund_is_final_under_its_key(tmp_path: Path, shards: int) -> None:
    """API.md, *Idempotency*: a refund the ledger refused (insufficient funds) is recorded under
    its key; once the wallet has the money, the same key and request get the same refusal and
    nothing moves, also after a restart. A new key refunds."""
    source, target = _apart(shards)
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=shards)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, [source, target], deposit=50)
        original = await ledger.transfer(transfer(1, source, target, 10))
        assert isinstance(original, Committed)
        drained = await ledger.transfer(transfer(2, target, source, 60))  # target has 0 now
        assert isinstance(drained, Committed)
        first = await ledger.refund(_refund_of(original, 10, 1, key="rk"))
        assert isinstance(first, Rejection) and first.reason == Reason.INSUFFICIENT_FUNDS
        assert isinstance(await ledger.transfer(transfer(3, None, target, 100)), Committed)
        second = await ledger.refund(_refund_of(original, 10, 2, key="rk"))
        assert second == first
        balances = {wallet.id: wallet.balance for wallet in ledger.all_wallets()}
        await ledger.stop()
    assert balances[target] == 100
    replayed = await trio.to_thread.run_sync(recover, tmp_path)
    ledger = Ledger(replayed, tmp_path, shards=shards)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        assert await ledger.refund(_refund_of(original, 10, 3, key="rk")) == first
        fresh = await ledger.refund(_refund_of(original, 10, 4, key="rk2"))
        assert isinstance(fresh, Committed)
        assert {wallet.id: wallet.balance for wallet in ledger.all_wallets()}[target] == 90
        await ledger.stop()
