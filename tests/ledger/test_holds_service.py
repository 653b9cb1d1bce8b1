"""Holds and withdrawals through the real shard actors, WAL and router (no HTTP): concurrent
holds, captures and voids across shards keep the invariants and replay to the live state; a
hold expires at its deadline on the ledger's clock, also when the deadline passed while the
ledger was down; withdrawals move through their payout steps across shards."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ledger import (
    AdvanceWithdrawal,
    Clock,
    Committed,
    Duplicate,
    HoldCaptured,
    HoldCreated,
    HoldVoided,
    Idempotency,
    Ledger,
    PayoutStep,
    Reason,
    Rejection,
    RequestWithdrawal,
    VoidReason,
    WithdrawalStatus,
    digest_state,
    recover,
    treasury_id,
)
from ledger.testing import FakeTime, hold, setup


async def open_ledger(path: Path, shards: int, clock: Clock | None = None) -> Ledger:
    return Ledger(await trio.to_thread.run_sync(recover, path), path, shards=shards, clock=clock)


async def replayed_digest(path: Path) -> str:
    recovered = await trio.to_thread.run_sync(recover, path)
    try:
        return digest_state(recovered.state)
    finally:
        recovered.close()


@pytest.mark.parametrize("shards", [1, 3, 8])
async def test_concurrent_holds_across_shards_replay_to_the_live_state(tmp_path: Path, shards: int) -> None:
    ids = [f"w{index}" for index in range(12)]
    ledger = await open_ledger(tmp_path, shards)
    seen: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ids, deposit=1000)

        async def client(seed: int) -> None:
            rng = random.Random(seed)
            for index in range(30):
                number = seed * 1000 + index
                if rng.random() < 0.5:
                    source, target = rng.sample(ids, 2)
                    seen.append(await ledger.transfer(hold(number, source, target, rng.randint(1, 200))))
                    continue
                pending = sorted(ledger.directory.hold_routes)
                if not pending:
                    continue
                transaction_id = rng.choice(pending)
                capture = rng.random() < 0.6
                amount = rng.choice([None, rng.randint(1, 250)]) if capture else None
                seen.append(await ledger.resolve_hold(transaction_id, capture=capture, amount=amount,
                                                      owner_id=None, idempotency=None))

        async with trio.open_nursery() as clients:
            for seed in range(12):
                clients.start_soon(client, seed)
        await trio.testing.wait_all_tasks_blocked()
        ledger.check_invariants()
        live = ledger.digest()
        await ledger.stop()
    events = [outcome.event for outcome in seen if isinstance(outcome, Committed)]
    reasons = {outcome.reason for outcome in seen if isinstance(outcome, Rejection)}
    assert any(isinstance(event, HoldCaptured) for event in events)
    assert any(isinstance(event, HoldVoided) for event in events)
    assert any(isinstance(event, HoldCaptured) and event.amount < event.held_amount for event in events)
    # Two clients raced for the same hold, or captured more than it held: refused, not doubled.
    assert reasons & {Reason.NOT_PENDING, Reason.AMOUNT_EXCEEDS_HOLD}
    resolved = [event.transaction_id for event in events if isinstance(event, HoldCaptured | HoldVoided)]
    assert len(resolved) == len(set(resolved))
    assert await replayed_digest(tmp_path) == live


async def test_a_resolution_replays_by_key_after_the_hold_is_gone(tmp_path: Path) -> None:
    ledger = await open_ledger(tmp_path, 4)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=100)
        assert isinstance(await ledger.transfer(hold(1, "a", "b", 40)), Committed)
        key = Idempotency(scope="s", key="cap", fingerprint=b"1")
        first = await ledger.resolve_hold("h1", capture=True, amount=30, owner_id=None, idempotency=key)
        again = await ledger.resolve_hold("h1", capture=True, amount=30, owner_id=None, idempotency=key)
        assert isinstance(first, Committed) and isinstance(again, Duplicate)
        assert again.record.event == first.event
        other = await ledger.resolve_hold("h1", capture=False, amount=None, owner_id=None,
                                          idempotency=Idempotency(scope="s", key="cap", fingerprint=b"2"))
        assert isinstance(other, Rejection) and other.reason == Reason.IDEMPOTENCY_KEY_REUSED
        gone = await ledger.resolve_hold("h1", capture=False, amount=None, owner_id=None, idempotency=None)
        assert isinstance(gone, Rejection) and gone.reason == Reason.NOT_PENDING
        views = {view.id: view for view in await ledger.wallets(["a", "b"])}
        assert (views["a"].balance, views["a"].held, views["b"].balance) == (70, 0, 130)
        await ledger.stop()


async def wait_until(predicate: Any, seconds: float = 10) -> None:
    with trio.fail_after(seconds):
        while not predicate():
            await trio.sleep(0.01)


async def test_a_hold_expires_on_the_ledger_s_clock(tmp_path: Path) -> None:
    time_source = FakeTime()
    ledger = await open_ledger(tmp_path, 3, Clock(time_source))
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=100)
        created = await ledger.transfer(hold(1, "a", "b", 40, timeout_s=5))
        assert isinstance(created, Committed) and isinstance(created.event, HoldCreated)
        await trio.sleep(0.5)  # several timer rounds: not due yet on the ledger's clock
        assert "h1" in ledger.directory.hold_routes
        time_source.ns += 5 * 10**9
        await wait_until(lambda: "h1" not in ledger.directory.hold_routes)
        (view,) = await ledger.wallets(["a"])
        assert (view.balance, view.held) == (100, 0)
        ledger.check_invariants()
        live = ledger.digest()
        await ledger.stop()
    recovered = await trio.to_thread.run_sync(recover, tmp_path)
    try:
        assert digest_state(recovered.state) == live
        row = await recovered.history.transaction("h1")
        assert row is not None
    finally:
        recovered.close()


async def test_a_deadline_that_passed_while_down_expires_after_the_restart(tmp_path: Path) -> None:
    time_source = FakeTime()
    ledger = await open_ledger(tmp_path, 2, Clock(time_source))
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=100)
        assert isinstance(await ledger.transfer(hold(1, "a", "b", 40, timeout_s=5)), Committed)
        assert isinstance(await ledger.transfer(hold(2, "a", "b", 10, timeout_s=3600)), Committed)
        await ledger.stop()
    time_source.ns += 60 * 10**9  # a minute of downtime
    ledger = await open_ledger(tmp_path, 2, Clock(time_source))
    assert set(ledger.directory.hold_routes) == {"h1", "h2"}
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await wait_until(lambda: "h1" not in ledger.directory.hold_routes)
        assert set(ledger.directory.hold_routes) == {"h2"}
        (view,) = await ledger.wallets(["a"])
        assert (view.balance, view.held) == (100, 10)
        await ledger.stop()


async def test_a_withdrawal_across_shards_completes_into_the_treasury(tmp_path: Path) -> None:
    ledger = await open_ledger(tmp_path, 4)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b", "c", "d"], deposit=100)
        for number, wallet_id in enumerate(["a", "b", "c", "d"]):
            requested = await ledger.request_withdrawal(RequestWithdrawal(
                withdrawal_id=f"wd{number}", wallet_id=wallet_id, amount=25, destination={"n": number},
                owner_id=None, idempotency=None,
            ))
            assert isinstance(requested, Committed)
            assert isinstance(await ledger.advance_withdrawal(
                AdvanceWithdrawal(withdrawal_id=f"wd{number}", step=PayoutStep.BEGIN)), list)
        assert isinstance(await ledger.complete_withdrawal("wd0", "ref-0"), Committed)
        refused = await ledger.advance_withdrawal(
            AdvanceWithdrawal(withdrawal_id="wd1", step=PayoutStep.REFUSED, detail="closed"))
        assert isinstance(refused, Committed) and refused.event.reason == VoidReason.REFUSED
        assert isinstance(await ledger.advance_withdrawal(
            AdvanceWithdrawal(withdrawal_id="wd2", step=PayoutStep.DEAD, detail="503")), list)
        again = await ledger.complete_withdrawal("wd0", "ref-0")
        assert isinstance(again, Rejection) and again.reason == Reason.WITHDRAWAL_NOT_PAYABLE
        statuses = {view.id: view.status for view in await ledger.withdrawals()}
        assert statuses == {"wd0": WithdrawalStatus.COMPLETED, "wd1": WithdrawalStatus.FAILED,
                            "wd2": WithdrawalStatus.DEAD, "wd3": WithdrawalStatus.PROCESSING}
        dead = await ledger.withdrawals(statuses=frozenset({WithdrawalStatus.DEAD}))
        assert [view.id for view in dead] == ["wd2"]
        view = await ledger.withdrawal("wd0")
        assert view is not None and view.reference == "ref-0" and view.attempts == 1
        (treasury,) = await ledger.wallets([treasury_id("USD")])
        assert treasury.balance == -400 + 25
        ledger.check_invariants()
        live = ledger.digest()
        await ledger.stop()
    assert await replayed_digest(tmp_path) == live
