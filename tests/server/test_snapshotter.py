"""When a periodic snapshot is due: after ``--snapshot-every`` records, counting a batch record
as one per transfer (what a restart replays is transactions, not records). The final snapshot
at graceful shutdown holds everything the shards own, pending holds and withdrawals included,
and equals the image the periodic path (``build_snapshot``, the child process) makes of the same
log."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from ledger import (
    AdvanceWithdrawal,
    Clock,
    Committed,
    Ledger,
    PayoutStep,
    RequestWithdrawal,
    WithdrawalStatus,
    build_snapshot,
    digest_state,
    load_base,
    recover,
)
from ledger.testing import FakeTime, hold, setup
from server._snapshotter import Snapshotter


def snapshotter(tmp_path: Path, *, durable_lsn: int, transactions: int) -> tuple[Snapshotter, Any]:
    ledger = SimpleNamespace(wal=SimpleNamespace(durable_lsn=durable_lsn), durable_transactions=transactions)
    return Snapshotter(tmp_path, ledger, every=100, archive=False), ledger  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("durable_lsn", "transactions", "due"),
    [(99, 99, False), (100, 100, True), (3, 99, False), (3, 100, True), (100, 3, True)],
    ids=["single-under", "single-at", "batches-under", "batches-at", "records-at"],
)
def test_a_snapshot_is_due_after_every_records_or_transactions(
    tmp_path: Path, durable_lsn: int, transactions: int, due: bool
) -> None:
    taker, _ = snapshotter(tmp_path, durable_lsn=durable_lsn, transactions=transactions)
    assert taker.due() is due


async def run_with_holds_and_withdrawals(data: Path, shards: int) -> Ledger:
    """A ledger left with two pending holds, a pending, a processing and a completed withdrawal,
    stopped the way ``serve`` stops it at graceful shutdown."""
    # A clock that stands still: two runs of this write the same log.
    ledger = Ledger(await trio.to_thread.run_sync(recover, data), data, shards=shards, clock=Clock(FakeTime()))
    ids = ["a", "b", "c", "d"]
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ids, deposit=1000)
        assert isinstance(await ledger.transfer(hold(1, "a", "b", 100)), Committed)
        assert isinstance(await ledger.transfer(hold(2, "c", "d", 200)), Committed)
        for number, wallet_id in enumerate(["b", "c", "d"]):
            requested = await ledger.request_withdrawal(RequestWithdrawal(
                withdrawal_id=f"wd{number}", wallet_id=wallet_id, amount=25, destination={"n": number},
                owner_id=None, idempotency=None,
            ))
            assert isinstance(requested, Committed)
        for withdrawal_id in ["wd1", "wd2"]:
            begun = await ledger.advance_withdrawal(AdvanceWithdrawal(withdrawal_id=withdrawal_id, step=PayoutStep.BEGIN))
            assert isinstance(begun, list)
        assert isinstance(await ledger.complete_withdrawal("wd2", "ref-2"), Committed)
        await ledger.stop()
    return ledger


@pytest.mark.parametrize("shards", [1, 3])
async def test_the_final_snapshot_holds_pending_holds_and_withdrawals(tmp_path: Path, shards: int) -> None:
    ledger = await run_with_holds_and_withdrawals(tmp_path / "live", shards)
    assert {hold.transaction_id for hold in ledger.all_holds()} == {"h1", "h2", "wd0", "wd1"}
    statuses = {withdrawal.id: withdrawal.status for withdrawal in ledger.all_withdrawals()}
    assert statuses == {"wd0": WithdrawalStatus.PENDING, "wd1": WithdrawalStatus.PROCESSING,
                        "wd2": WithdrawalStatus.COMPLETED}
    live = ledger.digest()
    lsn = ledger.wal.durable_lsn

    taker = Snapshotter(tmp_path / "live", ledger, every=10**6, archive=False)
    await trio.to_thread.run_sync(taker.final)  # raised AssertionError (hold_count) before the fix
    assert taker.statistics().last_lsn == lsn
    base = load_base(tmp_path / "live")
    assert base.lsn == lsn and not base.skipped
    assert digest_state(base.state) == live
    assert set(base.state.holds) == {"h1", "h2", "wd0", "wd1"}
    assert set(base.state.withdrawals) == {"wd0", "wd1", "wd2"}
    assert base.state.directory.hold_routes.keys() == {"h1", "h2", "wd0", "wd1"}
    assert base.state.directory.withdrawal_wallets.keys() == {"wd0", "wd1", "wd2"}
    recovered = await trio.to_thread.run_sync(recover, tmp_path / "live")
    try:
        assert recovered.scan.records == 0  # nothing after the final snapshot to replay
        assert digest_state(recovered.state) == live
    finally:
        recovered.close()

    # The periodic path (``wallet snapshot create``: previous image + log) on the same log makes
    # the same image.
    other = await run_with_holds_and_withdrawals(tmp_path / "periodic", shards)
    assert other.digest() == live
    info = await trio.to_thread.run_sync(
        lambda: build_snapshot(tmp_path / "periodic", until_lsn=None, created_at_us=0)
    )
    assert info is not None and info.lsn == lsn
    assert digest_state(load_base(tmp_path / "periodic").state) == live
