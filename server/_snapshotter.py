"""Periodic and on-demand snapshots of a running server, without stalling it.

Every ``--snapshot-every`` durable records (a batch record counting one per transfer, so the
bound on what a restart replays holds for batches too) and when an admin asks, the server starts
``wallet snapshot create --until-lsn X`` as a child process: it loads the previous image, replays
the durable log up to X on the other core and writes the new image atomically; the event loop
only waits for the child to exit. Then the WAL segments that both kept snapshots and the
history read model have moved past are removed (or archived). One snapshot at a time.

The rejected alternative, encoding the live state in the event loop, stops every request for
as long as it takes (seconds for a million wallets), and a copy-on-write scheme inside the
actors would put snapshot logic on the hot path.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from ledger import Ledger, remove_covered, snapshots_dir, write_state
from snapshots import list_snapshots

log = logging.getLogger("server.snapshots")

CHECK_INTERVAL_S = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotterStatistics:
    last_lsn: int
    last_seconds: float
    last_finished_monotonic: float | None
    taken: int
    failed: int
    segments_removed: int


class Snapshotter:
    def __init__(self, data_dir: Path, ledger: Ledger, *, every: int, archive: bool) -> None:
        assert every >= 1
        self._data_dir = data_dir
        self._ledger = ledger
        self._every = every
        self._archive = archive
        self._lock = anyio.Lock()
        directory = snapshots_dir(data_dir)
        valid = [info.lsn for info in list_snapshots(directory) if info.valid] if directory.exists() else []
        self.last_lsn = max(valid, default=0)
        self._last_seconds = 0.0
        self._last_finished: float | None = None
        self._taken = 0
        self._failed = 0
        self._removed = 0
        self._compacted_at = 0  # the history LSN the last compaction used
        self._transactions_at = 0  # ledger.durable_transactions at the last snapshot taken here

    async def run(self) -> None:
        while True:
            await anyio.sleep(CHECK_INTERVAL_S)
            if self._lock.locked():
                continue
            if self.due():
                await self.take()
            elif self.last_lsn and self._ledger.history.applied_lsn > self._compacted_at:
                # The projector may have been behind when the snapshot was taken: compact once it
                # has caught up, not only at the next snapshot.
                async with self._lock:
                    await self.compact()

    def due(self) -> bool:
        """Whether ``--snapshot-every`` records passed since the last snapshot: by LSN, or by
        transactions made durable since the last one this process took (a batch record holds up
        to 8,190 of them, and replaying costs per transaction)."""
        ledger = self._ledger
        return (ledger.wal.durable_lsn - self.last_lsn >= self._every
                or ledger.durable_transactions - self._transactions_at >= self._every)

    async def take(self) -> int | None:
        """Snapshots the durable log now; returns the LSN, or None if nothing new / it failed."""
        async with self._lock:
            target = self._ledger.wal.durable_lsn
            transactions = self._ledger.durable_transactions
            if target <= self.last_lsn:
                return None
            started = time.monotonic()
            command = [
                sys.executable, "-m", "server.cli", "snapshot", "create", "--data", str(self._data_dir),
                "--until-lsn", str(target), "--server-child",
            ]
            result = await anyio.run_process(command, check=False)
            if result.returncode != 0:
                self._failed += 1
                log.error(
                    "snapshot at LSN %d failed (status %d): %s", target, result.returncode,
                    result.stderr.decode(errors="replace")[-2000:],
                )
                return None
            self.last_lsn = target
            self._transactions_at = transactions
            self._taken += 1
            self._last_seconds = time.monotonic() - started
            self._last_finished = time.monotonic()
            log.info("snapshot at LSN %d taken in %.3f s", target, self._last_seconds)
            await self.compact()
            return target

    async def compact(self) -> None:
        history_lsn = self._ledger.history.applied_lsn
        removed = await anyio.to_thread.run_sync(
            lambda: remove_covered(self._data_dir, history_lsn=history_lsn, archive=self._archive)
        )
        self._compacted_at = history_lsn
        self._removed += len(removed)

    def final(self) -> None:
        """At graceful shutdown, after the actors and the log stopped: the live state equals
        the log at its durable LSN, so it is written directly. Blocking."""
        ledger = self._ledger
        lsn = ledger.wal.durable_lsn
        if ledger.wal.failed is not None or lsn <= self.last_lsn:
            return
        # Everything the shards own: wallets, and the pending holds and withdrawals too (an image
        # of the wallets alone fails check_invariants as soon as one hold exists).
        state = ledger.merged_state()
        write_state(self._data_dir, state, lsn=lsn, log_checksum=ledger.wal.durable_checksum,
                    created_at_us=ledger.clock())
        self.last_lsn = lsn
        self._removed += len(
            remove_covered(self._data_dir, history_lsn=ledger.history.applied_lsn, archive=self._archive)
        )

    def statistics(self) -> SnapshotterStatistics:
        return SnapshotterStatistics(
            last_lsn=self.last_lsn, last_seconds=self._last_seconds,
            last_finished_monotonic=self._last_finished, taken=self._taken, failed=self._failed,
            segments_removed=self._removed,
        )
