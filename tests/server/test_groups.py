"""The router over several ledger groups (``server._groups``) and what an owner finishes of the
transfers between groups (``server._crossing``), over two group ledgers in this process, each
behind the port its owner serves (``LocalPort``). A port can be made unreachable, as a group
without owner is."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from ledger import (
    Committed,
    CreateAsset,
    CreateWallet,
    Duplicate,
    Idempotency,
    Ledger,
    Reason,
    Refund,
    Rejection,
    ReserveCredit,
    TransactionStatus,
    TransactionType,
    recover,
)
from ledger.testing import hold, transfer
from server._crossing import Crossing
from server._groups import GroupRouter, group_of
from server._port import LocalPort, Unavailable

GROUPS = 2


class Switchable:
    """A group's port that can be cut off (``down``): every call then raises Unavailable, as
    a worker's port does for a group without owner."""

    def __init__(self, port: LocalPort) -> None:
        self.port = port
        self.down = False
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.port, name)

        async def call(*args: Any) -> Any:
            self.calls.append(name)
            if self.down:
                raise Unavailable("no owner")
            result = method(*args)  # (a worker's port awaits every call; ``LocalPort.metrics`` is plain)
            return await result if inspect.isawaitable(result) else result

        return call


def wallet_in(group: int, prefix: str) -> str:
    return next(f"{prefix}{n}" for n in range(1000) if group_of(f"{prefix}{n}", GROUPS) == group)


@asynccontextmanager
async def two_groups(tmp_path: Path) -> AsyncIterator[tuple[list[Ledger], list[Switchable], GroupRouter]]:
    ledgers = []
    async with trio.open_nursery() as nursery:
        for group in range(GROUPS):
            path = tmp_path / f"g{group}"
            ledger = Ledger(await trio.to_thread.run_sync(recover, path), path, group=group, groups=GROUPS, shards=2)
            await nursery.start(ledger.run)
            ledgers.append(ledger)
        ports = [Switchable(LocalPort(ledger)) for ledger in ledgers]
        router = GroupRouter(ports)  # type: ignore[arg-type]
        settling = trio.CancelScope()

        async def settle() -> None:
            with settling:
                await router.settle_forever()  # (``run`` starts it with the ports)

        nursery.start_soon(settle)
        assert await router.create_asset(CreateAsset(code="USD", scale=2))
        yield ledgers, ports, router
        for ledger in ledgers:
            ledger.check_invariants()
            await ledger.stop()
        settling.cancel()


async def balances_of(router: GroupRouter, *ids: str) -> dict[str, int]:
    return {wallet_id: (await router.wallet(wallet_id)).balance for wallet_id in ids}  # type: ignore[union-attr]


async def wallets(router: GroupRouter, *ids: str, deposit: int = 0) -> None:
    for number, wallet_id in enumerate(ids):
        await router.create_wallet(CreateWallet(wallet_id=wallet_id, owner_id="o", asset="USD", metadata=None,
                                                idempotency=None))
        if deposit:
            assert isinstance(await router.transfer(transfer(900 + number, None, wallet_id, deposit)), Committed)


async def test_the_router_moves_money_between_groups_and_inside_one(tmp_path: Path) -> None:
    alice, bob, carol = wallet_in(0, "a"), wallet_in(1, "b"), wallet_in(0, "c")
    async with two_groups(tmp_path) as (ledgers, ports, router):
        await wallets(router, alice, bob, carol, deposit=100)
        across = await router.transfer(transfer(1, alice, bob, 30, key="k1"))
        assert isinstance(across, Committed)
        inside = await router.transfer(transfer(2, alice, carol, 5))
        assert isinstance(inside, Committed)
        # Prepare at the receiver's group, commit at the sender's, credit at the receiver's.
        assert ports[1].calls[-2:] == ["reserve_credit", "settle_reservation"] or "reserve_credit" in ports[1].calls
        assert (await router.wallet(bob)).balance == 130  # type: ignore[union-attr]
        assert (await router.wallet(alice)).balance == 65  # type: ignore[union-attr]
        # The treasury is every group's part and transit account: it balances all wallets.
        treasury = await router.wallet("treasury:USD")
        assert treasury is not None and treasury.balance == -300
        # The key answers its first outcome; a refusal by the sender's group releases the
        # receiver's reservation; one by the receiver's group is recorded at the sender's.
        again = await router.transfer(transfer(3, alice, bob, 30, key="k1"))
        assert isinstance(again, Duplicate) and again.record.event.transaction_id == "tx1"
        poor = await router.transfer(transfer(4, alice, bob, 10_000))
        assert isinstance(poor, Rejection) and poor.reason == Reason.INSUFFICIENT_FUNDS
        missing = await router.transfer(transfer(5, alice, wallet_in(1, "nobody"), 1, key="k5"))
        assert isinstance(missing, Rejection) and missing.reason == Reason.RECEIVER_NOT_FOUND
        assert await router.transfer(transfer(6, alice, wallet_in(1, "nobody"), 1, key="k5")) == missing
        assert ledgers[1].all_reservations() == []
        await trio.sleep(0.2)  # the router tells the sender's group what was credited
        assert ledgers[0].owed() == {}
        assert (await router.transaction("tx1")).lsn == across.lsn  # type: ignore[union-attr]


async def test_a_receiver_group_without_owner_fails_the_transfer_before_anything_moves(tmp_path: Path) -> None:
    alice, bob = wallet_in(0, "a"), wallet_in(1, "b")
    async with two_groups(tmp_path) as (ledgers, ports, router):
        await wallets(router, alice, bob, deposit=100)
        ports[1].down = True
        with pytest.raises(Unavailable):
            await router.transfer(transfer(1, alice, bob, 30))
        assert ledgers[0].owed() == {} and (await router.ports[0].wallet(alice)).balance == 100
        with pytest.raises(Unavailable):  # not an exception group: the route answers 503
            await router.wallet("treasury:USD")
        with pytest.raises(Unavailable):
            await router.status()


async def test_the_owners_finish_what_a_worker_left_half_done(tmp_path: Path) -> None:
    """A committed transfer whose credit the worker could not make (the receiver's group had
    no owner) is credited by the sender group's owner later; a reservation whose commit never
    came (the worker died) is resolved with the sender's group: aborted, and released."""
    alice, bob = wallet_in(0, "a"), wallet_in(1, "b")
    async with two_groups(tmp_path) as (ledgers, ports, router):
        await wallets(router, alice, bob, deposit=100)
        now = [0.0]
        sender = Crossing(ledgers[0], {1: ports[1]}, owed_after_s=1.0, clock=lambda: now[0])  # type: ignore[dict-item]
        receiver = Crossing(ledgers[1], {0: ports[0]}, reserved_after_s=0.0)  # type: ignore[dict-item]
        # The worker's steps 1 and 2, then it is gone.
        verdict = await ports[1].reserve_credit(ReserveCredit(
            transaction_id="tx1", to_wallet_id=bob, amount=40, from_wallet_id=alice, from_group=0, description=None,
            metadata=None))
        assert isinstance(await ports[0].transfer_across(transfer(1, alice, bob, 40), verdict), Committed)
        await ports[1].reserve_credit(ReserveCredit(
            transaction_id="tx2", to_wallet_id=bob, amount=7, from_wallet_id=alice, from_group=0, description=None,
            metadata=None))
        ports[1].down = True
        await sender.step()  # owed for less than a second: not yet
        now[0] = 5.0
        await sender.step()  # the receiver's group cannot be reached: still owed
        assert ledgers[0].owed() == {"tx1": bob} and sender.credited == 0
        ports[1].down = False
        await sender.step()
        assert ledgers[0].owed() == {} and sender.credited == 1
        assert (await router.wallet(bob)).balance == 140  # type: ignore[union-attr]
        # tx2 was never committed: its sender's group aborts it for good; the receiver releases.
        await receiver.step()
        assert receiver.resolved == 1 and ledgers[1].all_reservations() == []
        assert (await router.wallet(bob)).balance == 140  # type: ignore[union-attr]
        assert "tx2" in ledgers[0].directory.aborted
        assert (await router.wallet("treasury:USD")).balance == -200  # type: ignore[union-attr]


async def test_wallets_are_listed_across_groups_in_one_order_with_a_cursor(tmp_path: Path) -> None:
    ids = [wallet_in(group, f"w{index}-") for index in range(4) for group in range(GROUPS)]
    async with two_groups(tmp_path) as (_, _, router):
        await wallets(router, *ids)
        seen: list[str] = []
        after = 0
        while True:
            page = await router.wallet_ids("o", None, after, 3)
            seen += [wallet_id for _, wallet_id in page]
            if len(page) < 3:
                break
            after = page[-1][0]
        assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))


async def test_a_batch_across_groups_is_decided_by_each_group_and_answered_in_request_order(tmp_path: Path) -> None:
    a1, a2, b1, b2 = wallet_in(0, "a"), wallet_in(0, "aa"), wallet_in(1, "b"), wallet_in(1, "bb")
    async with two_groups(tmp_path) as (ledgers, _, router):
        await wallets(router, a1, a2, b1, b2, deposit=100)
        items = [transfer(1, a1, b1, 10, key="i1"), transfer(2, a1, a2, 5, key="i2"),
                 transfer(3, b2, a2, 1000, key="i3"), transfer(4, b1, b2, 7, key="i4"),
                 transfer(5, a2, wallet_in(1, "nobody"), 1, key="i5"), transfer(6, b2, a1, 20, key="i6")]
        outcomes = await router.transfer_batch(items, False)
        assert not isinstance(outcomes, type(None))
        kinds = [outcome.reason if isinstance(outcome, Rejection) else type(outcome).__name__
                 for outcome in outcomes]  # type: ignore[union-attr]
        assert kinds == ["Committed", "Committed", Reason.INSUFFICIENT_FUNDS, "Committed",
                         Reason.RECEIVER_NOT_FOUND, "Committed"]
        assert [outcome.event.transaction_id for outcome in outcomes  # type: ignore[union-attr]
                if isinstance(outcome, Committed)] == ["tx1", "tx2", "tx4", "tx6"]
        balances = {wallet_id: (await router.wallet(wallet_id)).balance for wallet_id in (a1, a2, b1, b2)}  # type: ignore[union-attr]
        assert balances == {a1: 100 - 10 - 5 + 20, a2: 105, b1: 100 + 10 - 7, b2: 100 + 7 - 20}
        assert ledgers[0].all_reservations() == [] and ledgers[1].all_reservations() == []
        # The same batch again: every item answers as the first time, nothing moves twice.
        again = await router.transfer_batch(items, False)
        assert [type(outcome).__name__ for outcome in again] == [  # type: ignore[union-attr]
            "Duplicate", "Duplicate", "Rejection", "Duplicate", "Rejection", "Duplicate"]
        assert {wallet_id: (await router.wallet(wallet_id)).balance for wallet_id in balances} == balances  # type: ignore[union-attr]

async def test_a_batch_across_groups_decides_a_senders_items_in_request_order_wherever_they_go(
        tmp_path: Path) -> None:
    """The items of one sender, some staying in its group and some leaving it, are decided in
    request order, as inside one group: the sending group decides all of them in one call."""
    a1, a2, b1, b2 = wallet_in(0, "a"), wallet_in(0, "aa"), wallet_in(1, "b"), wallet_in(1, "bb")
    async with two_groups(tmp_path) as (ledgers, _, router):
        await wallets(router, a1, a2, b1, b2, deposit=100)
        # a1 sends 80 out of its group first; b1 keeps 60 in its group first: each second item
        # no longer fits, whichever group it goes to.
        items = [transfer(1, a1, b1, 80, key="o1"), transfer(2, b1, b2, 60, key="o2"),
                 transfer(3, a1, a2, 50, key="o3"), transfer(4, b1, a2, 50, key="o4")]
        outcomes = await router.transfer_batch(items, False)
        kinds = [outcome.reason if isinstance(outcome, Rejection) else type(outcome).__name__
                 for outcome in outcomes]  # type: ignore[union-attr]
        assert kinds == ["Committed", "Committed", Reason.INSUFFICIENT_FUNDS, Reason.INSUFFICIENT_FUNDS]
        balances = {wallet_id: (await router.wallet(wallet_id)).balance for wallet_id in (a1, a2, b1, b2)}  # type: ignore[union-attr]
        assert balances == {a1: 20, a2: 100, b1: 100 + 80 - 60, b2: 160}
        assert ledgers[0].all_reservations() == [] and ledgers[1].all_reservations() == []


async def test_an_atomic_batch_from_one_group_to_several_is_all_or_nothing(tmp_path: Path) -> None:
    a1, a2, b1, b2 = wallet_in(0, "a"), wallet_in(0, "aa"), wallet_in(1, "b"), wallet_in(1, "bb")
    async with two_groups(tmp_path) as (ledgers, ports, router):
        await wallets(router, a1, a2, b1, b2, deposit=100)

        async def balances() -> dict[str, int]:
            return await balances_of(router, a1, a2, b1, b2)

        # a2 spends in the batch what a1 sent it (request order, as inside one group).
        items = [transfer(1, a1, a2, 50, key="j1"), transfer(2, a2, b1, 120, key="j2"),
                 transfer(3, a1, b2, 30, key="j3")]
        outcomes = await router.transfer_batch(items, True)
        assert isinstance(outcomes, list) and all(isinstance(outcome, Committed) for outcome in outcomes)
        assert await balances() == {a1: 20, a2: 30, b1: 220, b2: 130}
        assert ledgers[0].all_reservations() == [] and ledgers[1].all_reservations() == []
        # Retried: the same answers, nothing moves again, the retry's reservations released.
        again = await router.transfer_batch(items, True)
        assert isinstance(again, list) and all(isinstance(outcome, Duplicate) for outcome in again)
        assert await balances() == {a1: 20, a2: 30, b1: 220, b2: 130}
        assert ledgers[1].all_reservations() == []
        # The last item fails: nothing posted in either group, every reservation released.
        failing = [transfer(4, a2, b1, 10, key="j4"), transfer(5, a1, b2, 500, key="j5")]
        failed = await router.transfer_batch(failing, True)
        assert not isinstance(failed, list) and failed.index == 1
        assert failed.rejection.reason == Reason.INSUFFICIENT_FUNDS
        # A receiver in another group that does not exist fails its item, in the check order.
        missing = await router.transfer_batch([transfer(6, a1, wallet_in(1, "nobody"), 1, key="j6")], True)
        assert not isinstance(missing, list) and missing.rejection.reason == Reason.RECEIVER_NOT_FOUND
        assert await balances() == {a1: 20, a2: 30, b1: 220, b2: 130}
        assert ledgers[1].all_reservations() == []
        # A receiver's group without owner: 503 before anything is decided.
        ports[1].down = True
        with pytest.raises(Unavailable):
            await router.transfer_batch([transfer(7, a1, b1, 1, key="j7")], True)
        ports[1].down = False
        assert await balances() == {a1: 20, a2: 30, b1: 220, b2: 130}
        # Senders in two groups: the batch of several sending groups (the next test).
        spans = [transfer(8, a1, b1, 1, key="j8"), transfer(9, b2, a1, 1, key="j9")]
        passed = await router.transfer_batch(spans, True)
        assert isinstance(passed, list) and all(isinstance(outcome, Committed) for outcome in passed)
        assert await balances() == {a1: 20, a2: 30, b1: 221, b2: 129}
        # Both groups together conserve money: every wallet, treasury part and transit account.
        with trio.fail_after(10):  # the router tells the sending group what was credited (batched)
            while ledgers[0].owed():
                await trio.sleep(0.01)
        assert sum(wallet.balance for ledger in ledgers for wallet in ledger.all_wallets()) + sum(
            ledger.directory.transit.get("USD", 0) for ledger in ledgers) == 0


async def test_a_refund_between_groups_goes_back_once_and_never_past_the_original(tmp_path: Path) -> None:
    a1, b1 = wallet_in(0, "a"), wallet_in(1, "b")
    async with two_groups(tmp_path) as (ledgers, _, router):
        await wallets(router, a1, deposit=1000)
        await wallets(router, b1)
        sent = await router.transfer(transfer(1, a1, b1, 300, key="t1"))
        assert isinstance(sent, Committed)

        def refund(number: int, amount: int | None) -> Refund:
            return Refund(transaction_id=f"r{number}", refund_of="tx1", from_wallet_id=b1, to_wallet_id=a1,
                          amount=amount, original_type=TransactionType.TRANSFER,
                          original_status=TransactionStatus.POSTED, original_amount=300, description=None,
                          metadata=None, idempotency=Idempotency(scope="o", key=f"r{number}",
                                                                 fingerprint=f"r{number}".encode()))

        first = await router.refund(refund(1, 100))
        assert isinstance(first, Committed) and first.event.amount == 100
        assert isinstance(await router.refund(refund(1, 100)), Duplicate)  # the same key again
        rest = await router.refund(refund(2, None))  # what is left: 200
        assert isinstance(rest, Committed) and rest.event.amount == 200
        none_left = await router.refund(refund(3, None))
        assert isinstance(none_left, Rejection) and none_left.reason == Reason.REFUND_EXCEEDS_REMAINING
        assert isinstance(await router.refund(refund(3, None)), Rejection)  # recorded under its key
        over = await router.refund(refund(4, 1))
        assert isinstance(over, Rejection) and over.reason == Reason.REFUND_EXCEEDS_REMAINING
        assert {wallet_id: (await router.wallet(wallet_id)).balance  # type: ignore[union-attr]
                for wallet_id in (a1, b1)} == {a1: 1000, b1: 0}
        with trio.fail_after(10):  # the router tells the refunding group what was credited (batched)
            while ledgers[1].owed():
                await trio.sleep(0.01)
        assert ledgers[0].all_reservations() == [] and ledgers[1].all_reservations() == []


async def test_a_hold_between_groups_is_created_captured_once_or_voided(tmp_path: Path) -> None:
    a1, b1 = wallet_in(0, "a"), wallet_in(1, "b")
    async with two_groups(tmp_path) as (ledgers, ports, router):
        await wallets(router, a1, deposit=1000)
        await wallets(router, b1)
        created = await router.transfer(hold(1, a1, b1, 300))
        assert isinstance(created, Committed) and ledgers[0].hold_route("h1") == (a1, b1, 300)
        refused = await router.transfer(hold(2, a1, wallet_in(1, "nobody"), 5))
        assert isinstance(refused, Rejection) and refused.reason == Reason.RECEIVER_NOT_FOUND
        key = Idempotency(scope="o", key="cap", fingerprint=b"cap")
        # The receiver's group without owner: 503 before anything is decided; the hold stays.
        ports[1].down = True
        with pytest.raises(Unavailable):
            await router.resolve_hold("h1", True, 200, None, key)
        ports[1].down = False
        captured = await router.resolve_hold("h1", True, 200, None, key)
        assert isinstance(captured, Committed) and captured.event.amount == 200
        assert isinstance(await router.resolve_hold("h1", True, 200, None, key), Duplicate)  # the key again
        other = await router.resolve_hold("h1", True, None, None, None)
        assert isinstance(other, Rejection) and other.reason == Reason.NOT_PENDING
        assert {wallet_id: (await router.wallet(wallet_id)).balance  # type: ignore[union-attr]
                for wallet_id in (a1, b1)} == {a1: 800, b1: 200}
        assert isinstance(await router.transfer(hold(3, a1, b1, 50)), Committed)
        voided = await router.resolve_hold("h3", False, None, None, None)
        assert isinstance(voided, Committed) and ledgers[0].hold_route("h3") is None
        with trio.fail_after(10):  # the router tells the sending group what was credited (batched)
            while ledgers[0].owed():
                await trio.sleep(0.01)
        assert ledgers[0].all_reservations() == [] and ledgers[1].all_reservations() == []
        assert (await router.wallet(a1)).held == 0  # type: ignore[union-attr]


async def test_a_search_pages_over_every_group_newest_first_each_transaction_once(tmp_path: Path) -> None:
    from ledger import TransactionQuery

    a1, a2, b1 = wallet_in(0, "a"), wallet_in(0, "aa"), wallet_in(1, "b")
    async with two_groups(tmp_path) as (_, _, router):
        await wallets(router, a1, a2, b1, deposit=1000)
        for number in range(12):  # inside group 0, from 0 to 1, from 1 to 0, in turn
            pair = [(a1, a2), (a1, b1), (b1, a2)][number % 3]
            assert isinstance(await router.transfer(transfer(number, *pair, 1 + number)), Committed)
        everything: list[Any] = []
        below = None
        pages = 0
        while True:
            rows, below = await router.search_transactions(TransactionQuery(limit=4, below=below))
            everything += rows
            pages += 1
            if below is None:
                break
            assert pages < 20
        ids = [row.id for row in everything]
        assert len(ids) == len(set(ids)) == 12 + 3  # the transfers and the deposits, each once
        times = [row.at_us for row in everything]
        assert times == sorted(times, reverse=True)
        mine, _ = await router.search_transactions(TransactionQuery(wallet_id=b1, limit=100))
        assert sorted(row.id for row in mine) == sorted(
            ["tx902"] + [f"tx{number}" for number in range(12) if number % 3 in (1, 2)])


async def test_tokens_and_assets_are_read_from_another_group_while_group_0_has_no_owner(tmp_path: Path) -> None:
    import hashlib

    from ledger import CreateToken

    async with two_groups(tmp_path) as (_, ports, router):
        digest = hashlib.sha256(b"secret").digest()
        assert await router.create_token(CreateToken(token_hash=digest, prefix="abc", owner_id="alice"))
        ports[0].down = True
        token = await router.token(digest)
        assert token is not None and token.owner_id == "alice"
        assert [asset.code for asset in await router.assets()] == ["USD"]
        ports[1].down = True
        with pytest.raises(Unavailable):
            await router.token(digest)


async def test_the_owners_series_are_one_family_each_labelled_by_group(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async with two_groups(tmp_path) as (_, _, router):
        text = await router.metrics()
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)) and names
    groups = {sample.labels.get("group") for family in families for sample in family.samples}
    assert groups == {"0", "1"}


async def test_an_atomic_batch_of_several_sending_groups_is_all_or_nothing(tmp_path: Path) -> None:
    """Senders in both groups (ADR 0013, *atomic batches of several sending groups*): every
    sending group prepares its part, the first item's group decides, each posts its part. A
    wallet spends what an earlier item of its own group credited it; a failure anywhere fails
    the whole batch at the first failing item in request order, and nothing stays held or
    reserved. A coordinator without owner fails it with 503; what was held is released by the
    owners once it is back (presumed abort)."""
    a1, a2, b1, b2 = wallet_in(0, "a"), wallet_in(0, "aa"), wallet_in(1, "b"), wallet_in(1, "bb")
    async with two_groups(tmp_path) as (ledgers, ports, router):
        await wallets(router, a1, a2, b1, b2, deposit=100)

        async def balances() -> dict[str, int]:
            return await balances_of(router, a1, a2, b1, b2)

        def idle() -> None:
            for ledger in ledgers:
                assert ledger.all_reservations() == [] and ledger.directory.prepared == {}
                assert all(wallet.held == 0 for wallet in ledger.all_wallets())

        items = [transfer(1, a1, a2, 60, key="m1"), transfer(2, a2, b1, 150, key="m2"),
                 transfer(3, b2, a1, 40, key="m3"), transfer(4, b2, b1, 30, key="m4")]
        outcomes = await router.transfer_batch(items, True)
        assert isinstance(outcomes, list) and all(isinstance(outcome, Committed) for outcome in outcomes)
        assert [outcome.event.transaction_id for outcome in outcomes] == ["tx1", "tx2", "tx3", "tx4"]  # type: ignore[union-attr]
        assert await balances() == {a1: 80, a2: 10, b1: 280, b2: 30}
        idle()
        again = await router.transfer_batch(items, True)
        assert isinstance(again, list) and all(isinstance(outcome, Duplicate) for outcome in again)
        assert await balances() == {a1: 80, a2: 10, b1: 280, b2: 30}
        idle()
        # The first failing item in request order, whichever group decides it.
        for failing, index in (([transfer(5, a1, b1, 10, key="m5"), transfer(6, b2, a1, 1000, key="m6")], 1),
                               ([transfer(7, a1, b1, 500, key="m7"), transfer(8, b2, a1, 10, key="m8")], 0)):
            failed = await router.transfer_batch(failing, True)
            assert not isinstance(failed, list) and failed.index == index
            assert failed.rejection.reason == Reason.INSUFFICIENT_FUNDS
            assert await balances() == {a1: 80, a2: 10, b1: 280, b2: 30}
            idle()
        # What another group's item credits is not spendable by a later item (documented).
        gap = await router.transfer_batch([transfer(9, a1, b2, 50, key="m9"), transfer(10, b2, a2, 60, key="m10")],
                                          True)
        assert not isinstance(gap, list) and gap.index == 1
        idle()
        # The coordinator (the first item's group) without owner: 503, and group 1's part,
        # held, is released by its owners once the coordinator answers again.
        ports[0].down = True
        with pytest.raises(Unavailable):
            await router.transfer_batch([transfer(11, a1, b1, 1, key="m11"), transfer(12, b2, b1, 5, key="m12")],
                                        True)
        ports[0].down = False
        assert [batch for batch, _, _ in ledgers[1].prepared_batches()]
        # The owners' background work (the router's own transit settling may also have found
        # group 0 without owner meanwhile: the owners finish that too).
        owners = [Crossing(ledger, {1 - number: ports[1 - number]}, owed_after_s=0.0,  # type: ignore[dict-item]
                           reserved_after_s=0.0) for number, ledger in enumerate(ledgers)]
        for _ in range(2):  # the held part ends first; then its sending group answers about it
            for owner in owners:
                await owner.step()
        assert await balances() == {a1: 80, a2: 10, b1: 280, b2: 30}
        idle()
        # The keys are free again: the same batch goes through.
        done = await router.transfer_batch([transfer(13, a1, b1, 1, key="m11"), transfer(14, b2, b1, 5, key="m12")],
                                           True)
        assert isinstance(done, list) and all(isinstance(outcome, Committed) for outcome in done)
        with trio.fail_after(10):
            while ledgers[0].owed() or ledgers[1].owed():
                for owner in owners:
                    await owner.step()
                await trio.sleep(0.01)
        assert sum(wallet.balance for ledger in ledgers for wallet in ledger.all_wallets()) + sum(
            ledger.directory.transit.get("USD", 0) for ledger in ledgers) == 0
