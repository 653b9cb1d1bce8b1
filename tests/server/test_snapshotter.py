"""When a periodic snapshot is due: after ``--snapshot-every`` records, counting a batch record
as one per transfer (what a restart replays is transactions, not records)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

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
