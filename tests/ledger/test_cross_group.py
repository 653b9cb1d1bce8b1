"""Transfers between ledger groups, the ledger's half (ADR 0013, "a two-phase commit decided by
the sender's group"): two group ledgers in one process, driven step by step as a worker and the
owners would drive them. Prepare at the receiver's group (a durable reservation), commit at the
sender's (its record is the commit point; the money goes to its transit account), credit or
release at the receiver's, settle at the sender's; presumed abort for a reservation whose commit
never came. Each group replays from its own log to the state it had live, snapshots included,
and the two groups together are zero-sum per asset."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from ledger import (
    Aborted,
    ChangeWalletStatus,
    Committed,
    CreditCheck,
    Duplicate,
    Held,
    Idempotency,
    Ledger,
    Reason,
    Refund,
    Rejection,
    ReserveCredit,
    TransactionStatus,
    TransactionType,
    WalletStatus,
    build_snapshot,
    check_state,
    digest_state,
    recover,
)
from ledger.testing import hold, setup, transfer

GROUPS = 2


@asynccontextmanager
async def running(path: Path, group: int, **options: object) -> AsyncIterator[Ledger]:
    ledger = Ledger(await trio.to_thread.run_sync(recover, path), path, group=group, groups=GROUPS, shards=3,
                    **options)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        try:
            yield ledger
        finally:
            ledger.check_invariants()
            await ledger.stop()


def reserve(number: int, source: str, target: str, amount: int) -> ReserveCredit:
    return ReserveCredit(transaction_id=f"tx{number}", to_wallet_id=target, amount=amount, from_wallet_id=source,
                         from_group=0, description="rent", metadata={"k": "v"})


def balances(ledger: Ledger) -> dict[str, int]:
    return {wallet.id: wallet.balance for wallet in ledger.all_wallets()}


async def replayed_digest(path: Path) -> str:
    recovered = await trio.to_thread.run_sync(recover, path)
    try:
        check_state(recovered.state)
        return digest_state(recovered.state)
    finally:
        recovered.close()


async def test_a_transfer_between_groups_moves_the_money_once_through_both_transit_accounts(tmp_path: Path) -> None:
    a_path, b_path = tmp_path / "g0", tmp_path / "g1"
    async with running(a_path, 0) as a, running(b_path, 1) as b:
        await setup(a, ["alice"], deposit=1000)
        await setup(b, ["bob"], deposit=0)
        verdict = await b.reserve_credit(reserve(1, "alice", "bob", 300))
        assert verdict == CreditCheck(asset="USD", failure=None)
        assert [r.transaction_id for r in b.all_reservations()] == ["tx1"]
        # A prepare asked again (a retry) answers the same and reserves nothing more.
        assert await b.reserve_credit(reserve(1, "alice", "bob", 300)) == verdict
        assert len(b.all_reservations()) == 1
        committed = await a.transfer_across(transfer(1, "alice", "bob", 300, key="k1"), verdict)
        assert isinstance(committed, Committed)
        assert committed.event.to_wallet_id == "bob" and committed.event.amount == 300
        assert a.owed() == {"tx1": "bob"}
        assert balances(a) == {"alice": 700, "treasury:USD": -1000}
        assert a.directory.transit == {"USD": 300}
        # Nothing reached bob before the credit.
        assert balances(b)["bob"] == 0
        assert await b.settle_reservation("tx1", "bob", credit=True)
        assert not await b.settle_reservation("tx1", "bob", credit=True)  # asked twice: once
        assert balances(b) == {"bob": 300, "treasury:USD": 0}
        assert b.directory.transit == {"USD": -300}
        assert b.all_reservations() == []
        await a.settle_transit(["tx1"])
        assert a.owed() == {}
        # The two groups together: every balance and both transit accounts sum to zero.
        assert sum(balances(a).values()) + sum(balances(b).values()) == 0
        assert a.directory.transit["USD"] + b.directory.transit["USD"] == 0
        live = (a.digest(), b.digest())
        assert b.history is not None
        await b.history.wait_projected(b.wal.durable_lsn)  # the read model lags the log a little
        history = await b.history.entries("bob", before=None, limit=10)
    assert [(e.transaction_id, e.direction, e.amount, e.balance_after, e.counterparty_wallet_id)
            for e in history] == [("tx1", "credit", 300, 300, "alice")]
    assert (await replayed_digest(a_path), await replayed_digest(b_path)) == live


async def test_a_refused_commit_releases_the_reservation_and_a_key_answers_its_first_outcome(tmp_path: Path) -> None:
    async with running(tmp_path / "g0", 0) as a, running(tmp_path / "g1", 1) as b:
        await setup(a, ["alice"], deposit=100)
        await setup(b, ["bob"], deposit=0)
        verdict = await b.reserve_credit(reserve(1, "alice", "bob", 500))
        refused = await a.transfer_across(transfer(1, "alice", "bob", 500, key="k"), verdict)
        assert isinstance(refused, Rejection) and refused.reason == Reason.INSUFFICIENT_FUNDS
        assert a.owed() == {} and a.directory.transit == {}
        assert await b.settle_reservation("tx1", "bob", credit=False)
        assert balances(b)["bob"] == 0 and b.all_reservations() == [] and b.directory.transit == {}
        # The same key again (a client's retry: a new transaction id, prepared again): the
        # recorded refusal, and the new reservation is released in turn.
        verdict = await b.reserve_credit(reserve(2, "alice", "bob", 500))
        again = await a.transfer_across(transfer(2, "alice", "bob", 500, key="k"), verdict)
        assert again == refused
        assert await b.settle_reservation("tx2", "bob", credit=False)
        # A committed key answers its commit, and owes nothing twice.
        verdict = await b.reserve_credit(reserve(3, "alice", "bob", 40))
        first = await a.transfer_across(transfer(3, "alice", "bob", 40, key="k3"), verdict)
        verdict = await b.reserve_credit(reserve(4, "alice", "bob", 40))
        second = await a.transfer_across(transfer(4, "alice", "bob", 40, key="k3"), verdict)
        assert isinstance(first, Committed) and isinstance(second, Duplicate)
        assert second.record.event == first.event
        assert a.owed() == {"tx3": "bob"}
        assert balances(a)["alice"] == 60


async def test_the_receiver_checks_count_reservations_and_a_reserved_wallet_cannot_be_closed(tmp_path: Path) -> None:
    async with running(tmp_path / "g1", 1) as b:
        await setup(b, ["bob", "carol"], deposit=0)
        missing = await b.reserve_credit(reserve(1, "alice", "nobody", 5))
        assert missing.asset is None and missing.failure is not None
        assert missing.failure.reason == Reason.RECEIVER_NOT_FOUND
        assert (await b.reserve_credit(reserve(2, "alice", "bob", 2**63 - 10))).failure is None
        overflow = await b.reserve_credit(reserve(3, "alice", "bob", 11))
        assert overflow.failure is not None and overflow.failure.reason == Reason.BALANCE_OVERFLOW
        closing = await b.change_status(ChangeWalletStatus(wallet_id="bob", status=WalletStatus.CLOSED))
        assert isinstance(closing, Rejection) and closing.reason == Reason.WALLET_NOT_EMPTY
        assert await b.settle_reservation("tx2", "bob", credit=False)
        assert await b.change_status(ChangeWalletStatus(wallet_id="bob", status=WalletStatus.CLOSED)) != closing
        closed = await b.reserve_credit(reserve(4, "alice", "bob", 5))
        assert closed.failure is not None and closed.failure.reason == Reason.RECEIVER_CLOSED
        # A frozen wallet may receive.
        await b.change_status(ChangeWalletStatus(wallet_id="carol", status=WalletStatus.FROZEN))
        assert (await b.reserve_credit(reserve(5, "alice", "carol", 5))).failure is None


async def test_presumed_abort_a_reservation_the_sender_never_committed_is_aborted_for_good(tmp_path: Path) -> None:
    a_path, b_path = tmp_path / "g0", tmp_path / "g1"
    async with running(a_path, 0) as a, running(b_path, 1) as b:
        await setup(a, ["alice"], deposit=100)
        await setup(b, ["bob"], deposit=0)
        late = await b.reserve_credit(reserve(1, "alice", "bob", 10))
        done = await b.reserve_credit(reserve(2, "alice", "bob", 20))
        assert isinstance(await a.transfer_across(transfer(2, "alice", "bob", 20), done), Committed)
        # The receiver's group asks about both of its reservations: tx2 is committed (credit
        # it), tx1 is not and never will be.
        assert await a.resolve_transfers(["tx1", "tx2"]) == {"tx1": False, "tx2": True}
        assert await a.resolve_transfers(["tx1"]) == {"tx1": False}  # asked again: the same
        # The commit that comes after the abort (a slow worker) is refused; nothing moved.
        assert await a.transfer_across(transfer(1, "alice", "bob", 10), late) == Aborted("tx1")
        assert balances(a)["alice"] == 80 and a.owed() == {"tx2": "bob"}
        assert await b.settle_reservation("tx1", "bob", credit=False)
        assert await b.settle_reservation("tx2", "bob", credit=True)
        assert balances(b)["bob"] == 20
        live = a.digest()
    # The abort is in the log: after a restart the late commit is still refused.
    assert await replayed_digest(a_path) == live
    async with running(a_path, 0) as a:
        assert await a.transfer_across(transfer(1, "alice", "bob", 10), late) == Aborted("tx1")
        assert a.owed() == {"tx2": "bob"}


async def test_reservations_and_what_is_owed_survive_restarts_and_snapshots(tmp_path: Path) -> None:
    a_path, b_path = tmp_path / "g0", tmp_path / "g1"
    async with running(a_path, 0) as a, running(b_path, 1) as b:
        await setup(a, ["alice"], deposit=100)
        await setup(b, ["bob"], deposit=0)
        verdict = await b.reserve_credit(reserve(1, "alice", "bob", 30))
        assert isinstance(await a.transfer_across(transfer(1, "alice", "bob", 30), verdict), Committed)
        await b.reserve_credit(reserve(2, "alice", "bob", 7))
        live = (a.digest(), b.digest())
    for path in (a_path, b_path):
        info = await trio.to_thread.run_sync(lambda p=path: build_snapshot(p, until_lsn=None, created_at_us=1))
        assert info is not None
    assert (await replayed_digest(a_path), await replayed_digest(b_path)) == live
    # Both groups start again from their snapshots: the owed credit and both reservations are
    # there, and the protocol finishes where it stopped.
    async with running(a_path, 0) as a, running(b_path, 1) as b:
        assert a.owed() == {"tx1": "bob"}
        assert sorted(r.transaction_id for r in b.all_reservations()) == ["tx1", "tx2"]
        assert await a.resolve_transfers(["tx1", "tx2"]) == {"tx1": True, "tx2": False}
        assert await b.settle_reservation("tx1", "bob", credit=True)
        assert await b.settle_reservation("tx2", "bob", credit=False)
        await a.settle_transit(["tx1"])
        assert balances(b)["bob"] == 30 and balances(a)["alice"] == 70
        assert a.directory.transit["USD"] + b.directory.transit["USD"] == 0


async def test_an_atomic_batch_to_other_groups_commits_whole_as_one_record_and_replays(tmp_path: Path) -> None:
    """An atomic batch whose senders are in one group (ADR 0013, *atomic batches*): the items to
    other groups are reserved there first; the sender's group decides every item in order with
    those verdicts, as one record (its commit point), the remote items' money in transit; a
    wallet may spend in the batch what an earlier item of it credited; replay gives the same."""
    a_path, b_path = tmp_path / "g0", tmp_path / "g1"
    # alice and carol share a shard, erin has another: the batch involves two shards of group 0
    # (the lead and its paused peer); the one below a single shard.
    async with running(a_path, 0) as a, running(b_path, 1) as b:
        await setup(a, ["alice", "carol", "erin", "fay"], deposit=0)
        assert isinstance(await a.transfer(transfer(90, None, "alice", 1000)), Committed)
        await setup(b, ["bob", "dave"], deposit=0)
        commands = [transfer(1, "alice", "carol", 50, key="k1"), transfer(2, "carol", "bob", 30, key="k2"),
                    transfer(3, "alice", "dave", 100, key="k3"), transfer(5, "alice", "erin", 10, key="k5")]
        verdicts = [await b.reserve_credit(reserve(2, "carol", "bob", 30)),
                    await b.reserve_credit(reserve(3, "alice", "dave", 100))]
        lsn = a.directory.lsn
        result = await a.transfer_batch(commands, atomic=True, credits=[None, *verdicts, None])
        assert isinstance(result, list) and all(isinstance(item, Committed) for item in result)
        assert a.directory.lsn == lsn + 1  # one record: a crash keeps all of it or none
        assert balances(a) | {"treasury:USD": 0} == {"alice": 840, "carol": 20, "erin": 10, "fay": 0,
                                                    "treasury:USD": 0}
        assert a.directory.transit == {"USD": 130} and a.owed() == {"tx2": "bob", "tx3": "dave"}
        # The same batch again answers its outcomes and moves nothing (the retry's fresh
        # reservations are released by the router, which sees Duplicate, not Committed).
        again = await a.transfer_batch(commands, atomic=True, credits=[None, *verdicts, None])
        assert isinstance(again, list) and all(isinstance(item, Duplicate) for item in again)
        assert balances(a)["alice"] == 840
        for number, wallet_id in ((2, "bob"), (3, "dave")):
            assert await b.settle_reservation(f"tx{number}", wallet_id, credit=True)
        await a.settle_transit(["tx2", "tx3"])
        assert balances(b) == {"bob": 30, "dave": 100, "treasury:USD": 0}
        assert sum(balances(a).values()) + sum(balances(b).values()) == 0
        assert a.directory.transit["USD"] + b.directory.transit["USD"] == 0
        # One shard of group 0 only (erin to bob, nothing else): the shard's own step.
        assert isinstance(await a.transfer(transfer(91, None, "erin", 5)), Committed)
        one = await a.transfer_batch([transfer(4, "erin", "bob", 5)], atomic=True,
                                     credits=[await b.reserve_credit(reserve(4, "erin", "bob", 5))])
        assert isinstance(one, list) and isinstance(one[0], Committed) and a.owed() == {"tx4": "bob"}
        live = (a.digest(), b.digest())
    assert (await replayed_digest(a_path), await replayed_digest(b_path)) == live


async def test_a_non_atomic_batch_decides_a_senders_items_in_request_order_whichever_group_receives_them(
        tmp_path: Path) -> None:
    """``transfers_across`` with items that stay in the group (no verdict) and items that leave
    it (the receiver group's verdict): a sender's items are decided in one step, in request
    order, each after the accepted ones before it; those that stay are credited here, those that
    leave go to the transit account and are owed. Replay gives the same."""
    a_path, b_path = tmp_path / "g0", tmp_path / "g1"
    async with running(a_path, 0) as a, running(b_path, 1) as b:
        await setup(a, ["alice", "carol", "erin"], deposit=100)
        await setup(b, ["bob"], deposit=0)
        # alice: 80 to bob (leaves) first, then 50 to carol (stays): the second no longer fits.
        # erin: 60 to carol (stays) first, then 50 to bob (leaves): the second no longer fits.
        commands = [transfer(1, "alice", "bob", 80, key="m1"), transfer(2, "erin", "carol", 60, key="m2"),
                    transfer(3, "alice", "carol", 50, key="m3"), transfer(4, "erin", "bob", 50, key="m4")]
        first = await b.reserve_credit(reserve(1, "alice", "bob", 80))
        fourth = await b.reserve_credit(reserve(4, "erin", "bob", 50))
        outcomes = await a.transfers_across(commands, [first, None, None, fourth])
        kinds = [outcome.reason if isinstance(outcome, Rejection) else type(outcome).__name__ for outcome in outcomes]
        assert kinds == ["Committed", "Committed", Reason.INSUFFICIENT_FUNDS, Reason.INSUFFICIENT_FUNDS]
        assert balances(a) | {"treasury:USD": 0} == {"alice": 20, "carol": 160, "erin": 40, "treasury:USD": 0}
        assert a.owed() == {"tx1": "bob"} and a.directory.transit == {"USD": 80}
        # Asked again: every item answers its first outcome and nothing moves.
        again = await a.transfers_across(commands, [first, None, None, fourth])
        assert [type(outcome).__name__ for outcome in again] == ["Duplicate", "Duplicate", "Rejection", "Rejection"]
        assert balances(a)["alice"] == 20 and balances(a)["carol"] == 160
        assert await b.settle_reservation("tx1", "bob", credit=True)
        assert await b.settle_reservation("tx4", "bob", credit=False)
        await a.settle_transit(["tx1"])
        assert balances(b) == {"bob": 80, "treasury:USD": 0} and b.all_reservations() == []
        assert sum(balances(a).values()) + sum(balances(b).values()) == 0
        live = (a.digest(), b.digest())
    assert (await replayed_digest(a_path), await replayed_digest(b_path)) == live


async def test_an_atomic_batch_across_groups_that_fails_or_was_aborted_moves_nothing(tmp_path: Path) -> None:
    async with running(tmp_path / "g0", 0) as a, running(tmp_path / "g1", 1) as b:
        await setup(a, ["alice", "carol"], deposit=100)
        await setup(b, ["bob", "gone"], deposit=0)
        assert await b.change_status(ChangeWalletStatus(wallet_id="gone", status=WalletStatus.CLOSED))
        before = (balances(a), a.directory.transit, a.owed())
        # A later item fails for want of funds: nothing is posted, the verdicts' reservations
        # are the router's to release.
        commands = [transfer(1, "alice", "bob", 60, key="k1"), transfer(2, "alice", "carol", 60, key="k2")]
        verdict = await b.reserve_credit(reserve(1, "alice", "bob", 60))
        failed = await a.transfer_batch(commands, atomic=True, credits=[verdict, None])
        assert not isinstance(failed, list) and failed.index == 1
        assert failed.rejection.reason == Reason.INSUFFICIENT_FUNDS
        # The receiver's group refused its part (a closed wallet): the item fails with that reason.
        closed = await b.reserve_credit(reserve(3, "alice", "gone", 5))
        assert closed.failure is not None
        refused = await a.transfer_batch([transfer(3, "alice", "gone", 5), transfer(4, "alice", "carol", 5)],
                                         atomic=True, credits=[closed, None])
        assert not isinstance(refused, list) and refused.index == 0
        assert refused.rejection.reason == Reason.RECEIVER_CLOSED
        # The receiver's group had one item aborted (presumed abort): the batch cannot commit.
        late = await b.reserve_credit(reserve(5, "alice", "bob", 5))
        assert await a.resolve_transfers(["tx5"]) == {"tx5": False}
        aborted = await a.transfer_batch([transfer(6, "alice", "carol", 5), transfer(5, "alice", "bob", 5)],
                                         atomic=True, credits=[None, late])
        assert aborted == [Aborted("tx6"), Aborted("tx5")]
        assert (balances(a), a.directory.transit, a.owed()) == before
        for number in (1, 5):
            assert await b.settle_reservation(f"tx{number}", "bob", credit=False)
        assert b.all_reservations() == []


def refund(number: int, source: str, target: str, amount: int | None, *, of: str, original: int,
           key: str | None = None) -> Refund:
    return Refund(transaction_id=f"r{number}", refund_of=of, from_wallet_id=source, to_wallet_id=target,
                  amount=amount, original_type=TransactionType.TRANSFER, original_status=TransactionStatus.POSTED,
                  original_amount=original, description="sorry", metadata=None,
                  idempotency=None if key is None else Idempotency(scope="s", key=key, fingerprint=key.encode()))


def reserve_refund(number: int, source: str, target: str, amount: int, of: str) -> ReserveCredit:
    return ReserveCredit(transaction_id=f"r{number}", to_wallet_id=target, amount=amount, from_wallet_id=source,
                         from_group=1, description="sorry", metadata=None, refund_of=of)


async def test_a_refund_between_groups_goes_back_through_the_protocol_with_the_cap_at_the_refunding_group(
        tmp_path: Path) -> None:
    """The refund of a transfer from group 0 to group 1 is a transfer back decided by group 1
    (the refunding wallet's, which keeps the cap): group 0 reserves the credit (a reservation
    that names the refunded transaction), group 1 commits the refund, group 0 credits it; both
    read models show it as a refund and the original's row at its sender's group counts it."""
    a_path, b_path = tmp_path / "g0", tmp_path / "g1"
    async with running(a_path, 0) as a, running(b_path, 1) as b:
        await setup(a, ["alice"], deposit=1000)
        await setup(b, ["bob"], deposit=0)
        verdict = await b.reserve_credit(reserve(1, "alice", "bob", 300))
        assert isinstance(await a.transfer_across(transfer(1, "alice", "bob", 300), verdict), Committed)
        assert await b.settle_reservation("tx1", "bob", credit=True)
        await a.settle_transit(["tx1"])
        assert await b.refund_remaining("tx1", "bob", 300) == 300
        # A refund of 100.
        back = await a.reserve_credit(reserve_refund(1, "bob", "alice", 100, "tx1"))
        assert back.failure is None and a.all_reservations()[0].refund_of == "tx1"
        refunded = await b.refund_across(refund(1, "bob", "alice", 100, of="tx1", original=300, key="rf1"), back)
        assert isinstance(refunded, Committed) and refunded.event.amount == 100
        assert b.owed() == {"r1": "alice"} and b.directory.transit == {"USD": -200}
        assert await b.refund_remaining("tx1", "bob", 300) == 200
        assert await a.settle_reservation("r1", "alice", credit=True)
        await b.settle_transit(["r1"])
        assert balances(a)["alice"] == 800 and balances(b)["bob"] == 200
        assert a.directory.transit["USD"] + b.directory.transit["USD"] == 0
        # More than is left: refused by the refunding group, recorded under its key; the
        # receiver's reservation is released.
        too_much = await a.reserve_credit(reserve_refund(2, "bob", "alice", 250, "tx1"))
        refused = await b.refund_across(refund(2, "bob", "alice", 250, of="tx1", original=300, key="rf2"), too_much)
        assert isinstance(refused, Rejection) and refused.reason == Reason.REFUND_EXCEEDS_REMAINING
        assert await a.settle_reservation("r2", "alice", credit=False)
        # A reservation of a refund survives a snapshot and a restart with what it refunds.
        await a.reserve_credit(reserve_refund(3, "bob", "alice", 50, "tx1"))
        assert b.history is not None and a.history is not None
        await a.history.wait_projected(a.wal.durable_lsn)
        await b.history.wait_projected(b.wal.durable_lsn)
        statement = await a.history.entries("alice", before=None, limit=10)
        assert (statement[0].transaction_id, statement[0].type, statement[0].direction, statement[0].amount) == (
            "r1", TransactionType.REFUND, "credit", 100)
        original = await a.history.transaction("tx1")
        assert original is not None and original.refunded_amount == 100
        row = await b.history.transaction("r1")
        assert row is not None and (row.type, row.refund_of) == (TransactionType.REFUND, "tx1")
        live = (a.digest(), b.digest())
    info = await trio.to_thread.run_sync(lambda: build_snapshot(a_path, until_lsn=None, created_at_us=1))
    assert info is not None
    assert (await replayed_digest(a_path), await replayed_digest(b_path)) == live
    async with running(a_path, 0) as a:
        assert [(r.transaction_id, r.refund_of) for r in a.all_reservations()] == [("r3", "tx1")]


def reserve_capture(attempt: str, hold_id: str, target: str, amount: int) -> ReserveCredit:
    return ReserveCredit(transaction_id=attempt, to_wallet_id=target, amount=amount, from_wallet_id="alice",
                         from_group=0, description=None, metadata=None, capture_of=hold_id)


async def test_a_hold_to_another_group_is_captured_under_an_id_per_attempt(tmp_path: Path) -> None:
    """A hold whose receiver is in another group: created at the sender's group with the
    receiver's checks as they stand (nothing reserved, as inside one group); each capture attempt
    is the two-phase commit of a transfer under an id of its own, so a late or repeated attempt
    can never have its reservation credited (the sender's group never owes its id), and an
    abandoned attempt is aborted without touching the hold."""
    a_path, b_path = tmp_path / "g0", tmp_path / "g1"
    async with running(a_path, 0) as a, running(b_path, 1) as b:
        await setup(a, ["alice"], deposit=1000)
        await setup(b, ["bob", "carol"], deposit=0)
        lsn = b.directory.lsn
        verdict = await b.credit_check("bob", 300)
        assert verdict == CreditCheck(asset="USD", failure=None) and b.directory.lsn == lsn  # appended nothing
        missing = await b.credit_check("nobody", 300)
        assert missing.failure is not None and missing.failure.reason == Reason.RECEIVER_NOT_FOUND
        assert isinstance(await a.transfer_across(hold(1, "alice", "bob", 300), verdict), Committed)
        assert a.hold_route("h1") == ("alice", "bob", 300)
        # Capture 200 (attempt c1): reserved, committed (the rest released), credited.
        key = Idempotency(scope="s", key="cap-1", fingerprint=b"cap-1")
        reserved = await b.reserve_credit(reserve_capture("c1", "h1", "bob", 200))
        captured = await a.capture_across("h1", reservation="c1", amount=200, owner_id=None, idempotency=key,
                                          credit=reserved)
        assert isinstance(captured, Committed) and captured.event.amount == 200
        assert a.hold_route("h1") is None and a.owed() == {"c1": "bob"} and a.directory.transit == {"USD": 200}
        wallet = next(w for w in a.all_wallets() if w.id == "alice")
        assert (wallet.balance, wallet.held) == (800, 0)
        assert await b.settle_reservation("c1", "bob", credit=True)
        # The same capture again (a retry, attempt c2, reserved after c1 was credited): its key
        # answers, and c2 is never owed, so asking about it aborts it: no second credit.
        again_reserved = await b.reserve_credit(reserve_capture("c2", "h1", "bob", 200))
        again = await a.capture_across("h1", reservation="c2", amount=200, owner_id=None, idempotency=key,
                                       credit=again_reserved)
        assert isinstance(again, Duplicate)
        assert await a.resolve_transfers(["c1", "c2"]) == {"c1": True, "c2": False}
        assert not await b.settle_reservation("c1", "bob", credit=True)  # credited once only
        assert await b.settle_reservation("c2", "bob", credit=False)
        await a.settle_transit(["c1"])
        assert balances(b)["bob"] == 200 and a.directory.transit["USD"] + b.directory.transit["USD"] == 0
        # An abandoned attempt on a live hold (its worker died after the reservation) is
        # aborted on its own; the hold stays capturable, for another amount too.
        assert isinstance(await a.transfer_across(hold(3, "alice", "bob", 100), verdict), Committed)
        dead = await b.reserve_credit(reserve_capture("c3", "h3", "bob", 100))
        assert await a.resolve_transfers(["c3"]) == {"c3": False}
        assert await b.settle_reservation("c3", "bob", credit=False)
        late = await a.capture_across("h3", reservation="c3", amount=None, owner_id=None, idempotency=None,
                                      credit=dead)
        assert late == Aborted("h3") and a.hold_route("h3") == ("alice", "bob", 100)
        fresh = await b.reserve_credit(reserve_capture("c4", "h3", "bob", 60))
        taken = await a.capture_across("h3", reservation="c4", amount=60, owner_id=None, idempotency=None,
                                       credit=fresh)
        assert isinstance(taken, Committed) and taken.event.amount == 60
        assert await b.settle_reservation("c4", "bob", credit=True)
        await a.settle_transit(["c4"])
        assert balances(b)["bob"] == 260
        # A void needs nothing from the receiver's group.
        assert isinstance(await a.transfer_across(hold(5, "alice", "bob", 50), verdict), Committed)
        voided = await a.resolve_hold("h5", capture=False, amount=None, owner_id=None, idempotency=None)
        assert isinstance(voided, Committed) and a.hold_route("h5") is None
        # The receiver refuses the capture (closed since): refused as inside one group; the hold
        # stays pending.
        assert isinstance(await a.transfer_across(hold(6, "alice", "carol", 10), verdict), Committed)
        assert await b.change_status(ChangeWalletStatus(wallet_id="carol", status=WalletStatus.CLOSED))
        refused_verdict = await b.reserve_credit(reserve_capture("c6", "h6", "carol", 10))
        refused = await a.capture_across("h6", reservation="c6", amount=None, owner_id=None, idempotency=None,
                                         credit=refused_verdict)
        assert isinstance(refused, Rejection) and refused.reason == Reason.RECEIVER_CLOSED
        assert a.hold_route("h6") == ("alice", "carol", 10)
        # The receiver's statement shows the captures under the holds' ids.
        assert b.history is not None
        await b.history.wait_projected(b.wal.durable_lsn)
        statement = await b.history.entries("bob", before=None, limit=10)
        assert [(entry.transaction_id, entry.direction, entry.amount) for entry in statement] == [
            ("h3", "credit", 60), ("h1", "credit", 200)]
        await b.reserve_credit(reserve_capture("c7", "h6", "bob", 5))  # one left pending
        live = (a.digest(), b.digest())
    info = await trio.to_thread.run_sync(lambda: build_snapshot(b_path, until_lsn=None, created_at_us=1))
    assert info is not None
    assert (await replayed_digest(a_path), await replayed_digest(b_path)) == live
    async with running(b_path, 1) as b:
        assert [(r.transaction_id, r.capture_of) for r in b.all_reservations()] == [("c7", "h6")]


async def test_a_group_log_keeps_its_place_in_the_group_table(tmp_path: Path) -> None:
    async with running(tmp_path, 1) as b:
        await setup(b, ["bob"], deposit=0)
    recovered = await trio.to_thread.run_sync(recover, tmp_path)
    for group, groups in ((0, 2), (1, 3), (0, 1)):
        with pytest.raises(ValueError, match="group table never changes"):
            Ledger(recovered, tmp_path, group=group, groups=groups)
    recovered.close()
    # A log of one group cannot become a group of several either.
    single = tmp_path / "single"
    ledger = Ledger(await trio.to_thread.run_sync(recover, single), single)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["bob"], deposit=0)
        await ledger.stop()
    recovered = await trio.to_thread.run_sync(recover, single)
    with pytest.raises(ValueError, match="group table never changes"):
        Ledger(recovered, single, group=0, groups=2)
    recovered.close()


def test_the_records_of_transfers_between_groups_decode_to_themselves_and_refuse_garbage() -> None:
    from ledger import (
        BatchDecided,
        BatchPrepared,
        BatchReleased,
        CodecError,
        CreditReserved,
        GroupConfigured,
        ReservationSettled,
        TransactionType,
        TransfersAborted,
        TransfersPosted,
        TransitSettled,
        decode_event,
        encode_event,
    )

    rows = (("tx5", TransactionType.TRANSFER, "alice", "bob", "USD", 4, None, {"m": 1}, ("s", "k5", b"f")),
            ("tx6", TransactionType.TRANSFER, "bob", "carol", "USD", 1, "d", None, None))

    events = [
        GroupConfigured(group=1, groups=3, at_us=5),
        CreditReserved(transaction_id="tx1", wallet_id="bob", asset="USD", amount=3, from_wallet_id="alice",
                       from_group=0, description=None, metadata={"a": [1, "b"]}, at_us=7),
        ReservationSettled(transaction_id="tx1", wallet_id="bob", asset="USD", amount=3, from_wallet_id="alice",
                           from_group=0, description="d", metadata=None, reserved_at_us=7, credited=True, at_us=9),
        TransitSettled(transaction_ids=("tx1", "tx2"), at_us=11),
        TransfersAborted(transaction_ids=("tx3",), at_us=12),
        CreditReserved(transaction_id="r1", wallet_id="alice", asset="USD", amount=2, from_wallet_id="bob",
                       from_group=1, description=None, metadata=None, at_us=13, refund_of="tx1"),
        ReservationSettled(transaction_id="r1", wallet_id="alice", asset="USD", amount=2, from_wallet_id="bob",
                           from_group=1, description=None, metadata=None, reserved_at_us=13, credited=True,
                           at_us=14, refund_of="tx1"),
        CreditReserved(transaction_id="c1", wallet_id="bob", asset="USD", amount=2, from_wallet_id="alice",
                       from_group=0, description=None, metadata=None, at_us=15, capture_of="h1"),
        ReservationSettled(transaction_id="c1", wallet_id="bob", asset="USD", amount=2, from_wallet_id="alice",
                           from_group=0, description=None, metadata=None, reserved_at_us=15, credited=False,
                           at_us=16, capture_of="h1"),
        BatchPrepared(batch="b-1", coordinator=2, rows=rows, at_us=17),
        BatchDecided(batch="b-1", committed=True, at_us=18),
        BatchDecided(batch="b-2", committed=False, at_us=18),
        BatchReleased(batch="b-1", at_us=19),
        TransfersPosted(rows=rows, at_us=20, settles="b-1"),
    ]
    for event in events:
        assert decode_event(encode_event(event)) == event
    import msgpack

    for garbage in ([1, 24, [], 3], [1, 24, "tx1", 3], [1, 25, [7], 3], [1, 22, "tx1", "bob"],
                    [1, 23, "tx1", "bob", "USD", 3, "alice", 0, None, None, 7, "yes", 9],
                    [1, 22, "r1", "alice", "USD", 2, "bob", 1, None, None, 13, 5],
                    [1, 22, "r1", "alice", "USD", 2, "bob", 1, None, None, 13, None, 5],
                    [1, 22, "r1", "alice", "USD", 2, "bob", 1, None, None, 13, "tx1", "h1", "more"],
                    [1, 26, "b-1", 2, 17, []], [1, 26, "b-1", "2", 17, [list(rows[1])]], [1, 27, "b-1", 1, 18],
                    [1, 28, 7, 19], [1, 7, 20, [list(rows[1])], 5]):
        with pytest.raises(CodecError):
            decode_event(msgpack.packb(garbage))


def reserve_from(number: int, source: str, target: str, amount: int, group: int) -> ReserveCredit:
    return ReserveCredit(transaction_id=f"tx{number}", to_wallet_id=target, amount=amount, from_wallet_id=source,
                         from_group=group, description=None, metadata=None)


async def test_an_atomic_batch_of_several_sending_groups_is_prepared_decided_once_and_posted_by_each(
        tmp_path: Path) -> None:
    """ADR 0013, *atomic batches of several sending groups*, the ledger's steps as the router
    runs them: each receiving group reserves its items' credits, each sending group prepares
    its items (decided whole in request order, held, one ``BatchPrepared``), the coordinator
    decides once, each sending group posts its part, each receiving group credits. While held:
    the amounts are not spendable, the keys answer ``request_in_progress``, a receiver of the
    group cannot be closed, and a receiving group asking about an item is told nothing yet.
    Replay and snapshots give the same state at every point."""
    a_path, b_path = tmp_path / "g0", tmp_path / "g1"
    async with running(a_path, 0) as a, running(b_path, 1) as b:
        await setup(a, ["alice", "carol"], deposit=0)
        assert isinstance(await a.transfer(transfer(90, None, "alice", 100)), Committed)
        await setup(b, ["bob", "dave"], deposit=0)
        assert isinstance(await b.transfer(transfer(91, None, "bob", 100)), Committed)
        # carol spends what item 0 credited her (same group); bob sends inside and out of his.
        items = [transfer(1, "alice", "carol", 50, key="b0"), transfer(2, "carol", "bob", 30, key="b1"),
                 transfer(3, "bob", "dave", 80, key="b2"), transfer(4, "bob", "alice", 20, key="b3")]
        to_b = await b.reserve_credit(reserve_from(2, "carol", "bob", 30, 0))
        to_a = await a.reserve_credit(reserve_from(4, "bob", "alice", 20, 1))
        part_a = await a.prepare_batch("B1", 0, items[:2], [None, to_b])
        part_b = await b.prepare_batch("B1", 0, items[2:], [None, to_a])
        assert part_a == [Held("tx1"), Held("tx2")] and part_b == [Held("tx3"), Held("tx4")]
        # Held: alice's 50 and bob's 100 (his lowest point; carol spends only what item 0
        # credits her), nothing posted yet.
        assert {w.id: (w.balance, w.held) for w in a.all_wallets() if w.id in ("alice", "carol")} == {
            "alice": (100, 50), "carol": (0, 0)}
        assert {w.id: (w.balance, w.held) for w in b.all_wallets() if w.id in ("bob", "dave")} == {
            "bob": (100, 100), "dave": (0, 0)}
        spend = await b.transfer(transfer(5, "bob", "dave", 1, key="other"))
        assert isinstance(spend, Rejection) and spend.reason == Reason.INSUFFICIENT_FUNDS
        busy = await a.transfer(transfer(6, "alice", "carol", 1, key="b0"))
        assert isinstance(busy, Rejection) and busy.reason == Reason.REQUEST_IN_PROGRESS
        closing = await b.change_status(ChangeWalletStatus(wallet_id="dave", status=WalletStatus.CLOSED))
        assert isinstance(closing, Rejection) and closing.reason == Reason.WALLET_NOT_EMPTY
        # A receiving group asking about a held item is told nothing yet (and nothing aborts).
        assert await b.resolve_transfers(["tx4"]) == {}
        a.check_invariants()
        b.check_invariants()
        assert (await replayed_digest(a_path), await replayed_digest(b_path)) == (a.digest(), b.digest())
        info = await trio.to_thread.run_sync(lambda: build_snapshot(b_path, until_lsn=None, created_at_us=1))
        assert info is not None and info.lsn == b.directory.lsn
        assert await replayed_digest(b_path) == b.digest()
        # The coordinator decides once; a later presumed abort finds it decided.
        assert await a.decide_batch("B1", True) is True
        assert await a.decide_batch("B1", False) is True
        posted_a = await a.settle_batch("B1", True)
        posted_b = await b.settle_batch("B1", True)
        assert posted_a is not None and posted_b is not None
        assert [c.event.transaction_id for c in posted_a + posted_b] == ["tx1", "tx2", "tx3", "tx4"]
        assert await a.settle_batch("B1", True) is None  # ended: nothing again
        assert a.owed() == {"tx2": "bob"} and b.owed() == {"tx4": "alice"}
        assert await b.resolve_transfers(["tx4"]) == {"tx4": True}
        assert await b.settle_reservation("tx2", "bob", credit=True)
        assert await a.settle_reservation("tx4", "alice", credit=True)
        await a.settle_transit(["tx2"])
        await b.settle_transit(["tx4"])
        assert {w.id: (w.balance, w.held) for w in a.all_wallets() if w.id in ("alice", "carol")} == {
            "alice": (70, 0), "carol": (20, 0)}
        assert {w.id: (w.balance, w.held) for w in b.all_wallets() if w.id in ("bob", "dave")} == {
            "bob": (30, 0), "dave": (80, 0)}
        assert sum(balances(a).values()) + sum(balances(b).values()) == 0
        # The keys answer their outcome now.
        again = await a.transfer(transfer(6, "alice", "carol", 50, key="b0"))
        assert isinstance(again, Duplicate)
        live = (a.digest(), b.digest())
    assert (await replayed_digest(a_path), await replayed_digest(b_path)) == live


async def test_a_batch_of_several_sending_groups_not_committed_is_released_and_its_ids_aborted(tmp_path: Path) -> None:
    """A part whose batch the coordinator decided not to commit is released: holds and keys
    free, its ids aborted (a receiving group asking is told to release). A part whose ids a
    receiving group had aborted first is never prepared. A failing item fails the part and
    records nothing under its key."""
    a_path, b_path = tmp_path / "g0", tmp_path / "g1"
    async with running(a_path, 0) as a, running(b_path, 1) as b:
        await setup(a, ["alice"], deposit=100)
        await setup(b, ["bob"], deposit=100)
        to_b = await b.reserve_credit(reserve_from(1, "alice", "bob", 40, 0))
        assert await a.prepare_batch("B2", 1, [transfer(1, "alice", "bob", 40, key="r1")], [to_b]) == [Held("tx1")]
        assert await b.decide_batch("B2", False) is False
        assert await a.settle_batch("B2", False) is None
        assert {w.id: (w.balance, w.held) for w in a.all_wallets() if w.id == "alice"} == {"alice": (100, 0)}
        assert await a.resolve_transfers(["tx1"]) == {"tx1": False}
        assert await b.settle_reservation("tx1", "bob", credit=False)
        fresh = await a.transfer(transfer(2, "alice", "alice2", 1, key="r1"))  # the key is free again
        assert isinstance(fresh, Rejection) and fresh.reason == Reason.RECEIVER_NOT_FOUND
        # Asked about first (presumed abort), then prepared late: refused whole.
        assert await a.resolve_transfers(["tx3"]) == {"tx3": False}
        late = await a.prepare_batch("B3", 1, [transfer(3, "alice", "bob", 1, key="r3")],
                                     [CreditCheck(asset="USD", failure=None)])
        assert isinstance(late, list) and [type(item).__name__ for item in late] == ["Aborted"]
        failed = await a.prepare_batch("B4", 1, [transfer(4, "alice", "bob", 500, key="r4")],
                                       [CreditCheck(asset="USD", failure=None)])
        assert not isinstance(failed, list) and failed.index == 0
        assert failed.rejection.reason == Reason.INSUFFICIENT_FUNDS
        assert a.directory.prepared == {} and ("s", "r4") not in a.directory.idempotency
        live = (a.digest(), b.digest())
    assert (await replayed_digest(a_path), await replayed_digest(b_path)) == live


async def test_a_held_part_survives_a_restart_from_a_snapshot_and_is_posted_after(tmp_path: Path) -> None:
    """A prepared part is in the snapshot (holds, reservations, keys in progress) and posts after
    a restart from it exactly as it would have before."""
    path = tmp_path / "g1"
    async with running(path, 1) as b:
        await setup(b, ["bob", "dave"], deposit=100)
        held = await b.prepare_batch("B9", 0, [transfer(1, "bob", "dave", 70, key="h1"),
                                               transfer(2, "bob", "alice", 20, key="h2")],
                                     [None, CreditCheck(asset="USD", failure=None)])
        assert held == [Held("tx1"), Held("tx2")]
    info = await trio.to_thread.run_sync(lambda: build_snapshot(path, until_lsn=None, created_at_us=1))
    assert info is not None
    async with running(path, 1) as b:
        assert [batch for batch, _, _ in b.prepared_batches()] == ["B9"]
        assert {w.id: (w.balance, w.held) for w in b.all_wallets() if w.id in ("bob", "dave")} == {
            "bob": (100, 90), "dave": (100, 0)}
        busy = await b.transfer(transfer(3, "dave", "bob", 1, key="h2"))
        assert isinstance(busy, Rejection) and busy.reason == Reason.REQUEST_IN_PROGRESS
        posted = await b.settle_batch("B9", True)
        assert posted is not None and [c.event.transaction_id for c in posted] == ["tx1", "tx2"]
        assert {w.id: (w.balance, w.held) for w in b.all_wallets() if w.id in ("bob", "dave")} == {
            "bob": (10, 0), "dave": (170, 0)}
        assert b.owed() == {"tx2": "alice"}
        live = b.digest()
    assert await replayed_digest(path) == live


async def test_a_held_part_posts_after_its_senders_overdraft_limit_was_lowered(tmp_path: Path) -> None:
    """A part decided within an overdraft limit posts even if the limit was lowered while it was
    held: the hold had already taken ``available`` down, which the new limit keeps as the
    wallet's floor (as for a hold's capture)."""
    from ledger import UpdateWallet

    path = tmp_path / "g1"
    async with running(path, 1) as b:
        await setup(b, ["bob", "dave"], deposit=0)
        assert isinstance(await b.update_wallet(UpdateWallet(wallet_id="bob", overdraft_limit=100)), list)
        held = await b.prepare_batch("B8", 0, [transfer(1, "bob", "dave", 80, key="o1")], [None])
        assert held == [Held("tx1")]
        assert isinstance(await b.update_wallet(UpdateWallet(wallet_id="bob", overdraft_limit=0)), list)
        posted = await b.settle_batch("B8", True)
        assert posted is not None
        assert {w.id: (w.balance, w.held) for w in b.all_wallets() if w.id in ("bob", "dave")} == {
            "bob": (-80, 0), "dave": (80, 0)}
        live = b.digest()
    assert await replayed_digest(path) == live
