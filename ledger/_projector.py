"""The history projector in a process of its own (``wallet serve --workers N``), and the ledger
process's view of it.

One-process mode (``--workers 0``) keeps the in-process projector of ``ledger._history``: the
WAL writer feeds it durable records and it writes SQLite on the server's loop (the tested,
simple path). With workers, SQLite's writes would take the ledger's core, so:

- ``Projector`` (the projector process) tails the segment files read-only (``wal.Tailer``) and
  writes the read model in large SQLite transactions, each with the LSN it reached, exactly as
  the in-process projector does; it only ever reads up to the **durable LSN the ledger gave
  it**, so it never sees a torn or unacknowledged write.
- ``RemoteProjection`` (the ledger process) takes the place of ``History`` in the ``Ledger``: no
  SQLite, no backlog (a lagging read model refuses no write), only two numbers and two events.

Both meet in one call, ``sync(applied_lsn, wait_s) -> durable_lsn`` (the port's
``sync_projection``): the projector reports the LSN it has committed to SQLite and gets the
durable LSN back, waiting (bounded) when it has caught up. That report is what readers wait
for: ``RemoteProjection.wait_projected(lsn)`` returns once the projector has **committed**
``lsn``, so a worker that then opens a read transaction on SQLite sees it (read-your-writes).
It is also the floor below which compaction may remove segments, as before; until the
projector reports (after a ledger restart) it is 0 and nothing is compacted.

Start-up of the projector (the rows of ``recover`` that concern the read model, moved here):

    | what the projector finds at start                     | decision                         |
    |-------------------------------------------------------|----------------------------------|
    | stored LSN <= durable LSN, log holds what follows     | resume after the stored LSN      |
    | no database, log reaches back to LSN 1                | rebuild from LSN 1               |
    | stored LSN > durable LSN (the log was cut by a repair)| reset, rebuild from the log      |
    | stored LSN below the oldest segment (deleted db, or   | seed from the newest snapshot's  |
    |   segments compacted past it)                         |   balances, then follow the log  |

Nothing here mutates ledger state.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from ledger._checkpoint import load_base
from ledger._history import READ_WAIT_S, History, HistoryLagging, HistoryStatistics, weight
from ledger._model import Event
from ledger._recovery import take_transactions
from wal import Compacted, LogCorrupt, Tailer, list_segments

log = logging.getLogger("history.projector")

# Transactions (a batch record counting one per transfer) per SQLite transaction of the
# projector process. Larger than the in-process batch: nothing else runs on its loop, and each
# commit has a fixed cost (measured with bench.projector: 5,000 gave about two thirds of the
# rate of 50,000).
PROJECTOR_BATCH_MAX = 50_000
SYNC_WAIT_MAX_S = 5  # how long a sync waits for the log to move before answering anyway
SYNC_IDLE_S = 1  # what the projector asks for when it has caught up
# After the log moved, how long a sync may wait for more to gather before answering, unless a
# reader is waiting for the read model or the backlog is already large. Each SQLite commit
# writes every page it touched (a statement's pages are spread over the whole entries B-tree):
# under single transfers (wallet bench, --workers 2, 64 connections) a commit per group commit
# (10-20 records) cost the projector 154 µs of CPU per transaction, more than the ledger; 50 ms
# of linger 92 µs, 200 ms 60 µs. A reader never waits for it (its arrival ends the linger).
SYNC_LINGER_MS = 200
LINGER_RECORDS_MAX = 5_000


class RemoteProjection:
    """The ledger process's stand-in for ``History`` when the projector runs elsewhere."""

    def __init__(self, *, durable_lsn: int) -> None:
        self.applied_lsn = 0  # what the projector last reported committed; 0 until it reports
        self.durable_lsn = durable_lsn
        self._progress = anyio.Event()
        self._advanced = anyio.Event()
        self._stirred = anyio.Event()  # the log moved or a reader arrived
        self._readers = 0  # waiting in wait_projected
        self._closed = anyio.Event()
        self._reports = 0

    # -- what the Ledger calls (the same names as History) ----------------------------------

    def feed(self, records: list[tuple[int, bytes, Any]]) -> None:
        if not records:
            return
        last = records[-1][0]
        assert records[0][0] == self.durable_lsn + 1, (records[0][0], self.durable_lsn)
        self.durable_lsn = last
        advanced, self._advanced = self._advanced, anyio.Event()
        advanced.set()
        self._stir()

    def _stir(self) -> None:
        stirred, self._stirred = self._stirred, anyio.Event()
        stirred.set()

    def backlogged(self) -> bool:
        """Never: writes are not refused because the read model lags (reads wait instead)."""
        return False

    async def attach(self) -> None:
        pass

    async def run(self) -> None:
        await self._closed.wait()

    def close(self) -> None:
        self._closed.set()

    async def aclose(self) -> None:
        pass

    async def wait_projected(self, lsn: int, timeout_s: float = READ_WAIT_S) -> None:
        """Read-your-writes: waits until the projector has committed everything up to ``lsn``
        (a lingering projector is told to go on at once)."""
        if self.applied_lsn >= lsn:
            return
        self._readers += 1
        self._stir()
        try:
            with anyio.move_on_after(timeout_s):
                while self.applied_lsn < lsn:
                    await self._progress.wait()
                return
        finally:
            self._readers -= 1
        raise HistoryLagging(f"history is at LSN {self.applied_lsn}, {lsn} was asked for")

    def statistics(self) -> HistoryStatistics:
        return HistoryStatistics(
            applied_lsn=self.applied_lsn, pending_records=max(self.durable_lsn - self.applied_lsn, 0),
            batches=self._reports, records=0, seconds_total=0,
        )

    # -- what the projector calls ----------------------------------------------------------

    async def sync(self, applied_lsn: int, wait_s: float, linger_s: float = 0) -> int:
        """Records that the projector committed ``applied_lsn``; returns the durable LSN once it
        is past ``applied_lsn``, or after ``wait_s`` (at most ``SYNC_WAIT_MAX_S``). With
        ``linger_s``, once past it waits up to that long more for records to gather, ending
        early when a reader waits for the read model or ``LINGER_RECORDS_MAX`` are waiting."""
        assert applied_lsn >= 0
        self._reports += 1
        # A read model ahead of the log (the log was cut by a repair) shows nothing valid: it
        # counts as empty until the projector has rebuilt it.
        self.applied_lsn = applied_lsn if applied_lsn <= self.durable_lsn else 0
        progress, self._progress = self._progress, anyio.Event()
        progress.set()
        with anyio.move_on_after(min(wait_s, SYNC_WAIT_MAX_S)):
            while self.durable_lsn <= applied_lsn:
                await self._advanced.wait()
        if self.durable_lsn > applied_lsn:
            with anyio.move_on_after(min(linger_s, SYNC_WAIT_MAX_S)):
                while not self._readers and self.durable_lsn - applied_lsn < LINGER_RECORDS_MAX:
                    await self._stirred.wait()
        return self.durable_lsn


Sync = Callable[[int, float, float], Awaitable[int]]


class Projector:
    """The projector process's loop: ``run`` until cancelled. ``sync`` is the port call (the
    shell retries it while the ledger process is unreachable)."""

    def __init__(self, data_dir: Path, sync: Sync, *, batch_max: int = PROJECTOR_BATCH_MAX) -> None:
        assert batch_max >= 1
        self._data_dir = data_dir
        self._sync = sync
        self._batch_max = batch_max
        self.history: History | None = None
        self.transactions = 0  # projected by this process
        self.seconds: float = 0  # spent reading, decoding and writing them

    async def run(self) -> None:
        history = self.history = await anyio.to_thread.run_sync(History.open, self._data_dir / "history.sqlite3")
        try:
            durable = await self._sync(history.applied_lsn, 0, 0)
            while True:
                with await anyio.to_thread.run_sync(self._start, history, durable) as tailer:
                    try:
                        await self._follow(history, tailer, durable)
                    except Compacted as error:
                        log.warning("the log now starts at LSN %d, after the read model's LSN %d: starting over",
                                    error.oldest_lsn, history.applied_lsn)
                    except _LogWasCut as error:
                        log.warning("%s: starting over", error)
                        durable = error.durable_lsn
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(history.stop_thread)

    def _start(self, history: History, durable: int) -> Tailer:
        """The table in the module docstring. Blocking (SQLite, maybe a snapshot load)."""
        if history.applied_lsn > durable:
            log.warning("history is at LSN %d but the log ends at %d (the log was cut): rebuilding it",
                        history.applied_lsn, durable)
            history.reset()
        segments = list_segments(self._data_dir / "wal")
        oldest = segments[0][0] if segments else durable + 1
        if history.applied_lsn < oldest - 1:
            base = load_base(self._data_dir, at_most_lsn=durable)
            if base.lsn < oldest - 1:
                raise LogCorrupt(path=self._data_dir / "wal", offset=0, lsn=oldest,
                                 reason=f"the log starts at LSN {oldest} and no snapshot reaches it")
            log.warning(
                "history read model is at LSN %d but the log starts at %d: history before LSN %d "
                "cannot be rebuilt; continuing from the snapshot's balances", history.applied_lsn, oldest, base.lsn,
            )
            history.seed(base.state, base.lsn)
        elif history.applied_lsn:
            log.info("history read model is at LSN %d; following the log", history.applied_lsn)
        return Tailer(self._data_dir / "wal", after_lsn=history.applied_lsn)

    async def _follow(self, history: History, tailer: Tailer, durable: int) -> None:
        while True:
            while history.applied_lsn < durable:
                started = time.perf_counter()
                records = self.read(tailer, durable)
                await history.project(records)
                self.transactions += sum(weight(event) for _, event in records)
                self.seconds += time.perf_counter() - started
                # Report each commit at once (readers wait for it); go on once more has
                # gathered or a reader waits.
                durable = await self._sync(history.applied_lsn, 0, SYNC_LINGER_MS / 1000)
            durable = await self._sync(history.applied_lsn, SYNC_IDLE_S, SYNC_LINGER_MS / 1000)
            if durable < history.applied_lsn:
                raise _LogWasCut(durable, history.applied_lsn)

    def read(self, tailer: Tailer, until_lsn: int) -> list[tuple[int, Event]]:
        """Decoded records after the tailer's LSN, up to ``until_lsn``, about ``batch_max``
        transactions (at least one record)."""
        records = take_transactions(iter(functools.partial(tailer.next, until_lsn), None), self._batch_max)
        assert records, (tailer.lsn, until_lsn)
        return records


class _LogWasCut(Exception):
    def __init__(self, durable_lsn: int, applied_lsn: int) -> None:
        super().__init__(f"the ledger's log ends at LSN {durable_lsn}, before the read model's {applied_lsn}")
        self.durable_lsn = durable_lsn
