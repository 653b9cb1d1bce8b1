"""The write-ahead log writer: dense LSNs, group commit, durability notifications.

``append`` is synchronous and cheap: it assigns the next LSN and queues the payload. One writer
task takes everything queued (up to ``BATCH_RECORDS_MAX`` / ``BATCH_BYTES_MAX``), and in its
own long-lived thread (``wal/_thread.py``) frames it, writes it with one ``write`` and makes it durable with one
``fdatasync``; then it advances ``durable_lsn`` and calls every callback registered for an LSN
that is now durable. While one batch is being synced the next one accumulates: that is group
commit, and it is why the number of fsyncs per second is bounded by the disk, not by the load.

A failed write or fsync is never retried: the page cache may have dropped the dirty pages, so
a retry could report success for data that is not on disk (the "fsyncgate" lesson from
PostgreSQL). The log becomes failed, every waiter is told so, and every later ``append`` raises
``StorageFailed``. Restart recovers from what is really on disk.

This module knows nothing of the ledger: payloads are bytes and callbacks are opaque.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from wal import _frame
from wal._segments import (
    DIRECTORY_MODE,
    FILE_MODE,
    SEGMENT_HEADER_BYTES,
    encode_segment_header,
    segment_name,
)
from wal._thread import BlockingThread

log = logging.getLogger("wal")

SEGMENT_BYTES_MAX = 64 * 1024 * 1024
BATCH_RECORDS_MAX = 16_384
BATCH_BYTES_MAX = 32 * 1024 * 1024
# A group commit of a replicated log is one stream message: under the NATS nodes' max_payload
# (24 MB, ``server._natsnodes``) and above one largest frame.
REPLICATED_BATCH_BYTES_MAX = 20 * 1024 * 1024
# Appends not yet durable, beyond which callers are told to back off (``overloaded``).
PENDING_BYTES_MAX = 64 * 1024 * 1024

DurableCallback = Callable[[str | None], None]
# Cluster mode: called in the writer thread with (first LSN, last LSN, the framed bytes) of each
# group commit after the local write; it returns once the bytes are replicated (a quorum stored them)
# and never returns otherwise (a fenced or cut-off owner exits there: ``server._member``).
Replicate = Callable[[int, int, bytes], None]
# Histogram bounds kept by the writer itself (wal/ has no metrics library): fsync seconds and
# records per group commit. The server exposes them as Prometheus histograms.
FSYNC_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 16384)


class StorageFailed(Exception):
    """The disk refused a write or an fsync; nothing more can be acknowledged."""


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True, kw_only=True)
class Statistics:
    next_lsn: int
    durable_lsn: int
    pending_records: int
    pending_bytes: int
    batches: int
    records_written: int
    bytes_written: int
    fsync_seconds_total: float
    fsync_seconds_max: float
    segments_created: int
    failed: str | None
    fsync_bucket_counts: tuple[int, ...]  # per FSYNC_BUCKETS_S bound, then +Inf (not cumulative)
    batch_bucket_counts: tuple[int, ...]  # per BATCH_BUCKETS bound, then +Inf (not cumulative)


class WriteAheadLog:
    """Appends records to ``directory`` starting at ``next_lsn``, after ``parent``.

    ``tail_path``/``tail_offset`` name the segment to continue (from the recovery scan); when
    None a new segment is started at ``next_lsn``. ``on_durable`` is called in the event loop
    with the list of (lsn, payload, tag) that just became durable, in LSN order, before any
    waiter is woken: projections fed from it are never behind what clients were told.
    """

    def __init__(
        self,
        directory: Path,
        *,
        next_lsn: int,
        parent: bytes,
        tail_path: Path | None = None,
        tail_offset: int = 0,
        segment_bytes_max: int = SEGMENT_BYTES_MAX,
        on_durable: Callable[[list[tuple[int, bytes, Any]]], None] | None = None,
        sync: Callable[[int], None] = os.fdatasync,
        write: Callable[[int, memoryview], int] = os.write,
        replicate: Replicate | None = None,
        batch_bytes_max: int | None = None,
    ) -> None:
        assert next_lsn >= 1
        assert len(parent) == _frame.CHECKSUM_BYTES
        self.directory = directory
        self.directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        self._segment_bytes_max = segment_bytes_max
        self._on_durable = on_durable
        self._sync = sync
        self._write = write  # injectable, like ``sync``, for fault injection
        self._replicate = replicate
        # One group commit is one message of a replicated log, so it must fit the message size.
        self._batch_bytes_max = batch_bytes_max if batch_bytes_max is not None else BATCH_BYTES_MAX
        self._next_lsn = next_lsn
        self._durable_lsn = next_lsn - 1
        self._parent = parent
        self._pending: list[tuple[int, bytes, Any]] = []
        self._pending_bytes = 0
        self._waiters: dict[int, list[DurableCallback]] = {}
        self._wakeup = anyio.Event()
        self._failed: str | None = None
        self._closed = False
        self._fd = -1
        self._segment_bytes = 0
        if tail_path is not None:
            self._fd = os.open(tail_path, os.O_WRONLY)
            os.lseek(self._fd, tail_offset, os.SEEK_SET)
            self._segment_bytes = tail_offset
        self._batches = 0
        self._records_written = 0
        self._bytes_written = 0
        self._fsync_seconds_total = 0.0
        self._fsync_seconds_max = 0.0
        self._segments_created = 0
        self._fsync_counts = [0] * (len(FSYNC_BUCKETS_S) + 1)
        self._batch_counts = [0] * (len(BATCH_BUCKETS) + 1)

    # -- the producer side: called from actors, synchronous --------------------------------

    @property
    def next_lsn(self) -> int:
        return self._next_lsn

    @property
    def last_lsn(self) -> int:
        """The LSN of the last appended record (durable or not)."""
        return self._next_lsn - 1

    @property
    def durable_lsn(self) -> int:
        return self._durable_lsn

    @property
    def durable_checksum(self) -> bytes:
        """The checksum of the record at ``durable_lsn`` (what a snapshot at that LSN records so
        the hash chain continues). Only meaningful while no write is in progress."""
        return self._parent

    @property
    def failed(self) -> str | None:
        return self._failed

    def check_writable(self) -> None:
        """Raises StorageFailed when appends cannot be accepted."""
        if self._failed is not None:
            raise StorageFailed(self._failed)
        if self._closed:
            raise StorageFailed("the write-ahead log is closed")

    def backlogged(self) -> bool:
        return self._pending_bytes >= PENDING_BYTES_MAX

    def append(self, payload: bytes, tag: Any = None) -> int:
        """Queues one record and returns its LSN. Never blocks, never yields."""
        self.check_writable()
        assert len(payload) <= _frame.PAYLOAD_BYTES_MAX
        lsn = self._next_lsn
        self._next_lsn = lsn + 1
        self._pending.append((lsn, payload, tag))
        self._pending_bytes += len(payload) + _frame.HEADER_BYTES
        if not self._wakeup.is_set():
            self._wakeup.set()
        return lsn

    def call_when_durable(self, lsn: int, callback: DurableCallback) -> None:
        """Calls ``callback(None)`` once ``lsn`` is durable (at once if it is already), or
        ``callback(reason)`` if the log fails first."""
        assert lsn < self._next_lsn
        if lsn <= self._durable_lsn:
            callback(None)
            return
        if self._failed is not None:
            callback(self._failed)
            return
        waiters = self._waiters.get(lsn)
        if waiters is None:
            self._waiters[lsn] = [callback]
        else:
            waiters.append(callback)

    async def wait_durable(self, lsn: int) -> None:
        """Waits until ``lsn`` is durable; raises StorageFailed if it never will be."""
        if lsn <= self._durable_lsn:
            return
        done = anyio.Event()
        outcome: list[str | None] = []

        def wake(error: str | None) -> None:
            outcome.append(error)
            done.set()

        self.call_when_durable(lsn, wake)
        await done.wait()
        if outcome[0] is not None:
            raise StorageFailed(outcome[0])

    # -- the writer task -----------------------------------------------------------------

    async def run(self) -> None:
        """The group-commit loop. Returns after ``close()`` once everything queued is durable."""
        thread = BlockingThread("wal-writer")
        try:
            while True:
                if not self._pending:
                    if self._closed:
                        return
                    await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    continue
                batch = self._take_batch()
                try:
                    await thread.run_sync(self._write_batch, batch)
                except OSError as error:
                    self._fail(f"write-ahead log write/fsync failed: {error}")
                    return
                self._advance(batch)
        finally:
            thread.close()

    def commit_pending(self) -> bool:
        """One group commit in the calling thread: what ``run`` does per batch, for the
        deterministic simulation. Returns False when there was nothing to do or it failed."""
        if not self._pending or self._failed is not None:
            return False
        batch = self._take_batch()
        try:
            self._write_batch(batch)
        except OSError as error:
            self._fail(f"write-ahead log write/fsync failed: {error}")
            return False
        self._advance(batch)
        return True

    def _take_batch(self) -> list[tuple[int, bytes, Any]]:
        pending = self._pending
        if len(pending) <= BATCH_RECORDS_MAX and self._pending_bytes <= self._batch_bytes_max:
            self._pending = []
            self._pending_bytes = 0
            return pending
        size = 0
        count = 0
        for _, payload, _ in pending:
            frame_bytes = len(payload) + _frame.HEADER_BYTES
            if count >= BATCH_RECORDS_MAX or (count and size + frame_bytes > self._batch_bytes_max):
                break
            size += frame_bytes
            count += 1
        self._pending = pending[count:]
        self._pending_bytes -= size
        return pending[:count]

    def _write_batch(self, batch: list[tuple[int, bytes, Any]]) -> None:
        """Runs in the writer thread: frame, write, fsync. Touches only writer-owned fields."""
        batch_lsn = batch[0][0]
        if self._fd < 0 or self._segment_bytes >= self._segment_bytes_max:
            self._start_segment(batch_lsn)
        parent = self._parent
        chunks = []
        for lsn, payload, _ in batch:
            frame, parent = _frame.encode(
                lsn=lsn, batch_lsn=batch_lsn, parent=parent, payload=payload
            )
            chunks.append(frame)
        data = b"".join(chunks)
        view = memoryview(data)
        while view:
            written = self._write(self._fd, view)
            view = view[written:]
        started = time.perf_counter()
        self._sync(self._fd)
        if self._replicate is not None:
            self._replicate(batch_lsn, batch[-1][0], data)
        elapsed = time.perf_counter() - started
        self._parent = parent
        self._segment_bytes += len(data)
        self._batches += 1
        self._records_written += len(batch)
        self._bytes_written += len(data)
        self._fsync_seconds_total += elapsed
        self._fsync_seconds_max = max(self._fsync_seconds_max, elapsed)
        self._fsync_counts[bisect.bisect_left(FSYNC_BUCKETS_S, elapsed)] += 1
        self._batch_counts[bisect.bisect_left(BATCH_BUCKETS, len(batch))] += 1

    def _start_segment(self, first_lsn: int) -> None:
        """Creates the next segment atomically: temp file, fsync, rename, fsync directory."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        path = self.directory / segment_name(first_lsn)
        temp = path.with_suffix(".tmp")
        header = encode_segment_header(first_lsn=first_lsn, parent=self._parent)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            os.write(fd, header)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        fsync_directory(self.directory)
        self._fd = os.open(path, os.O_WRONLY)
        os.lseek(self._fd, SEGMENT_HEADER_BYTES, os.SEEK_SET)
        self._segment_bytes = SEGMENT_HEADER_BYTES
        self._segments_created += 1

    def _advance(self, batch: list[tuple[int, bytes, Any]]) -> None:
        last = batch[-1][0]
        if self._on_durable is not None:
            self._on_durable(batch)
        previous = self._durable_lsn
        self._durable_lsn = last
        waiters = self._waiters
        if waiters:
            for lsn in range(previous + 1, last + 1):
                callbacks = waiters.pop(lsn, None)
                if callbacks is not None:
                    for callback in callbacks:
                        callback(None)

    def _fail(self, reason: str) -> None:
        log.error("%s; no further writes are accepted until restart", reason)
        self._failed = reason
        waiters, self._waiters = self._waiters, {}
        for callbacks in waiters.values():
            for callback in callbacks:
                callback(reason)

    # -- lifecycle -----------------------------------------------------------------------

    async def flush(self) -> None:
        """Waits until everything appended so far is durable (or the log failed)."""
        if self.last_lsn > self._durable_lsn:
            await self.wait_durable(self.last_lsn)

    def close(self) -> None:
        """Stops accepting appends; ``run`` returns once the queue is durable."""
        self._closed = True
        self._wakeup.set()

    def release(self) -> None:
        """Closes the file. Call after ``run`` returned."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def statistics(self) -> Statistics:
        return Statistics(
            next_lsn=self._next_lsn,
            durable_lsn=self._durable_lsn,
            pending_records=len(self._pending),
            pending_bytes=self._pending_bytes,
            batches=self._batches,
            records_written=self._records_written,
            bytes_written=self._bytes_written,
            fsync_seconds_total=self._fsync_seconds_total,
            fsync_seconds_max=self._fsync_seconds_max,
            segments_created=self._segments_created,
            failed=self._failed,
            fsync_bucket_counts=tuple(self._fsync_counts),
            batch_bucket_counts=tuple(self._batch_counts),
        )
