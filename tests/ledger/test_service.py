"""The ledger service in process (actors + WAL + router under trio, no HTTP): concurrent
cross-shard traffic keeps the invariants, the live state equals a replay of the log, a full
mailbox refuses at once, and a failed fsync is never acknowledged."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from ledger import (
    ChangeWalletStatus,
    Committed,
    Duplicate,
    Idempotency,
    Ledger,
    Overloaded,
    Rejection,
    TransactionType,
    Transfer,
    WalletStatus,
    check_invariants,
    recover,
    state_digest,
)
from ledger.testing import setup, transfer
from wal import StorageFailed


@pytest.mark.parametrize("shards", [1, 3, 8])
async def test_concurrent_cross_shard_transfers_replay_to_the_live_state(tmp_path: Path, shards: int) -> None:
    ids = [f"w{index}" for index in range(30)]
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=shards)
    outcomes: list[object] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ids, deposit=100)

        async def client(seed: int) -> None:
            rng = random.Random(seed)
            for index in range(40):
                source, target = rng.sample(ids, 2)
                outcomes.append(await ledger.transfer(transfer(seed * 1000 + index, source, target, rng.randint(1, 60))))
                if rng.random() < 0.05:
                    status = rng.choice([WalletStatus.FROZEN, WalletStatus.ACTIVE, WalletStatus.CLOSED])
                    await ledger.change_status(ChangeWalletStatus(wallet_id=rng.choice(ids), status=status))

        async with trio.open_nursery() as clients:
            for seed in range(16):
                clients.start_soon(client, seed)
        await trio.testing.wait_all_tasks_blocked()  # let the last credits land
        live = state_digest(ledger.all_wallets(), ledger.directory)
        check_invariants(ledger.all_wallets(), ledger.directory)
        await ledger.stop()
    committed = [outcome for outcome in outcomes if isinstance(outcome, Committed)]
    rejected = [outcome for outcome in outcomes if isinstance(outcome, Rejection)]
    assert committed and rejected  # the workload exercised both paths
    replayed = await trio.to_thread.run_sync(recover, tmp_path)
    try:
        assert state_digest(replayed.state.wallets.values(), replayed.state.directory) == live
        # Every acknowledged transfer is in the history exactly once, with its LSN.
        for outcome in committed:
            row = await replayed.history.transaction(outcome.event.transaction_id)
            assert row is not None and row.lsn == outcome.lsn
    finally:
        replayed.close()


async def test_a_key_answers_with_the_original_outcome_across_shards(tmp_path: Path) -> None:
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b", "c"], deposit=100)
        first = await ledger.transfer(transfer(1, "a", "b", 10, key="k"))
        again = await ledger.transfer(transfer(2, "a", "b", 10, key="k"))
        assert isinstance(first, Committed) and isinstance(again, Duplicate)
        assert again.record.event == first.event and again.record.lsn == first.lsn
        other = Transfer(
            transaction_id="tx3", type=TransactionType.TRANSFER, from_wallet_id="c", to_wallet_id="b",
            amount=10, description=None, metadata=None,
            idempotency=Idempotency(scope="s", key="k", fingerprint=b"different"),
        )
        reused = await ledger.transfer(other)
        assert isinstance(reused, Rejection) and reused.reason.code == "idempotency_key_reused"
        await ledger.stop()


async def test_a_full_mailbox_refuses_at_once(tmp_path: Path) -> None:
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=1, mailbox_capacity=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=100)
        shard = ledger.shards[0]
        # Nothing runs between these synchronous submits, so the mailbox fills.
        replies = [shard.submit_transfer(transfer(index, "a", "b", 1)) for index in range(4)]
        with pytest.raises(Overloaded):
            shard.submit_transfer(transfer(99, "a", "b", 1))
        for reply in replies:
            assert isinstance(await reply.wait(), Committed)
        assert shard.statistics().overloaded == 1
        await ledger.stop()


async def test_a_call_after_stop_is_refused_at_once_not_queued_to_a_stopped_actor(tmp_path: Path) -> None:
    # Idle mailboxes are not idle callers: a caller whose reply was still waiting for the log
    # when stop() ran calls again when it wakes. Queued, that call would never be answered (its
    # shielded wait, and the graceful stop, would hang): every submit must refuse at once.
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=100)
        await ledger.stop()
        for shard in ledger.shards:
            with pytest.raises(StorageFailed, match="stopping"):
                shard.submit_query(lambda state: None, lambda value: 0)
            with pytest.raises(StorageFailed, match="stopping"):
                shard.submit_command(ChangeWalletStatus(wallet_id="a", status=WalletStatus.FROZEN))
            with pytest.raises(StorageFailed, match="stopping"):
                shard.submit_transfer(transfer(1, "a", "b", 10))
            assert shard.idle()


async def test_a_failed_fsync_is_never_acknowledged_and_stops_writes(tmp_path: Path) -> None:
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=2)
    calls = []

    def failing_sync(fd: int) -> None:
        calls.append(fd)
        if len(calls) > 3:
            raise OSError(5, "Input/output error")
        os.fdatasync(fd)

    ledger.wal._sync = failing_sync
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=0)  # 3 records, 3 fsyncs
        with pytest.raises(StorageFailed):
            await ledger.transfer(transfer(1, None, "a", 5))
        assert len(calls) == 4  # not retried
        assert ledger.ready() is not None and "Input/output error" in ledger.ready()
        with pytest.raises(StorageFailed):
            await ledger.transfer(transfer(2, None, "a", 5))
        assert len(calls) == 4
        await ledger.stop()
    # What was acknowledged is on disk; the failed deposit was never acknowledged.
    replayed = recover(tmp_path)
    replayed.close()
    assert replayed.state.wallets["a"].balance in (0, 5)
