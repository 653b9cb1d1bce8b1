"""The event feed's window and pages in whole records: a batch record (several transfers at one
LSN, the feed's only cursor) is never split across pages, and the memory window is bounded in
transactions, not records."""

from __future__ import annotations

from pathlib import Path

from ledger import (
    EventFeed,
    TransactionType,
    Transferred,
    TransfersPosted,
    WalletCreated,
    transfers_posted,
)
from ledger._events import RECENT_MAX


def _moved(number: int) -> Transferred:
    return Transferred(transaction_id=f"t{number}", type=TransactionType.TRANSFER, from_wallet_id="a",
                       to_wallet_id="b", asset="USD", amount=1, description=None, metadata=None, at_us=1,
                       idempotency=None)


def _batch(first: int, count: int) -> TransfersPosted:
    return transfers_posted(tuple(_moved(first + i) for i in range(count)), 1)


async def test_a_page_ends_at_a_record_boundary(tmp_path: Path) -> None:
    feed = EventFeed(tmp_path / "wal", durable_lsn=0)
    created = WalletCreated(wallet_id="a", owner_id="o", asset="USD", metadata=None, at_us=1, idempotency=None)
    feed.feed([(1, b"", created), (2, b"", _batch(0, 3)), (3, b"", _moved(9)), (4, b"", _batch(10, 5))])
    assert [lsn for lsn, _ in await feed.read(0, limit=1)] == [1]
    assert [lsn for lsn, _ in await feed.read(0, limit=2)] == [1, 2]  # 4 transactions: the record is whole
    assert [lsn for lsn, _ in await feed.read(1, limit=1)] == [2]
    assert [lsn for lsn, _ in await feed.read(2, limit=100)] == [3, 4]
    assert await feed.read(4, limit=100) == []


def test_the_window_is_bounded_in_transactions(tmp_path: Path) -> None:
    feed = EventFeed(tmp_path / "wal", durable_lsn=0)
    size = RECENT_MAX // 4
    feed.feed([(lsn, b"", _batch(lsn * size, size)) for lsn in range(1, 9)])
    assert [lsn for lsn, _ in feed._recent] == [5, 6, 7, 8]
    assert feed._recent_weight == RECENT_MAX
    feed.feed([(9, b"", _batch(0, RECENT_MAX + 1))])  # the newest record stays, whatever its size
    assert [lsn for lsn, _ in feed._recent] == [9]
    assert feed._recent_weight == RECENT_MAX + 1
