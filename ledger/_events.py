"""The event feed: committed ledger events in LSN order, straight from the log.

The WAL writer hands every durable batch to ``EventFeed.feed`` (in LSN order, before any client
hears of it), which keeps the newest records in memory and wakes every waiting
reader at once (one broadcast event per batch, no polling). A reader behind the recent window
reads the log's segment files in a worker thread, stopping at the durable LSN, so it never sees
a record that is not durable. Asking for history older than the oldest kept segment raises
``Gone`` with the oldest LSN still available.

Memory is bounded: the window holds at most ``RECENT_MAX`` transactions' worth of records (a
batch record counts one per transfer; the newest record is kept whatever its size) and a reader
holds at most one page; a slow SSE consumer only slows its own response stream.

The feed moves in whole records: a page never ends inside a ``TransfersPosted`` record (whose
transfers share its LSN, the only cursor), so a page holds records until it has at least
``limit`` transactions, and may exceed ``limit`` by at most one record's transfers.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio

from ledger._history import weight
from ledger._model import Event
from ledger._recovery import take_transactions
from wal import LogCorrupt, ScanResult, list_segments, scan

RECENT_MAX = 20_000
PAGE_MAX = 1000
WAIT_MAX_S = 30


class Gone(Exception):
    """The events asked for were compacted away; ``oldest_lsn`` is the first still available."""

    def __init__(self, oldest_lsn: int) -> None:
        super().__init__(f"events before LSN {oldest_lsn} are no longer kept")
        self.oldest_lsn = oldest_lsn


class EventFeed:
    def __init__(self, wal_dir: Path, *, durable_lsn: int) -> None:
        self._wal_dir = wal_dir
        self.durable_lsn = durable_lsn
        self._recent: deque[tuple[int, Event]] = deque()
        self._recent_weight = 0  # transactions in _recent (see ``weight``)
        self._advanced = anyio.Event()

    def feed(self, records: Iterable[tuple[int, bytes, Any]]) -> None:
        """Called by the WAL writer with records that just became durable, in LSN order."""
        last = self.durable_lsn
        recent = self._recent
        for lsn, _, event in records:
            assert lsn == last + 1, (lsn, last)
            recent.append((lsn, event))
            self._recent_weight += weight(event)
            last = lsn
        while self._recent_weight > RECENT_MAX and len(recent) > 1:
            self._recent_weight -= weight(recent.popleft()[1])
        if last != self.durable_lsn:
            self.durable_lsn = last
            advanced, self._advanced = self._advanced, anyio.Event()
            advanced.set()

    def oldest_available_lsn(self) -> int:
        segments = list_segments(self._wal_dir)
        return segments[0][0] if segments else self.durable_lsn + 1

    async def read(self, after: int, *, limit: int, wait_s: float = 0) -> list[tuple[int, Event]]:
        """Records with LSN > ``after``, until they hold ``limit`` transactions (whole records,
        at least one); waits up to ``wait_s`` for the first one when there is none yet. Raises
        Gone."""
        assert 1 <= limit <= PAGE_MAX
        if after >= self.durable_lsn and wait_s > 0:
            with anyio.move_on_after(min(wait_s, WAIT_MAX_S)):
                while after >= self.durable_lsn:
                    await self._advanced.wait()
        if after >= self.durable_lsn:
            return []
        recent = self._recent
        if recent and after >= recent[0][0] - 1:
            start = bisect.bisect_right(recent, after, key=lambda item: item[0])
            page = []
            count = 0
            for index in range(start, min(len(recent), start + limit)):
                page.append(recent[index])
                count += weight(recent[index][1])
                if count >= limit:
                    break
            return page
        oldest = self.oldest_available_lsn()
        if after < oldest - 1:
            raise Gone(oldest)
        until = min(after + limit, self.durable_lsn)
        return await anyio.to_thread.run_sync(self._read_log, after, until, limit)

    def _read_log(self, after: int, until: int, limit: int) -> list[tuple[int, Event]]:
        try:
            # Stopping early leaves nothing open: ``scan`` reads each segment whole.
            return take_transactions(scan(self._wal_dir, ScanResult(), after_lsn=after, until_lsn=until), limit)
        except (FileNotFoundError, LogCorrupt):
            # A segment was compacted away while we read (or the scan raced its removal).
            raise Gone(self.oldest_available_lsn()) from None
