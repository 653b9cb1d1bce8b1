"""Group commit in ``WriteAheadLog``: one fsync covers many appends, nobody is woken before the
fsync that covered their LSN, a failed fsync fails everyone and is never retried, segments roll
at ``segment_bytes_max``, and ``close`` drains the queue.

The injected ``sync`` wraps the real ``os.fdatasync`` and records, at each call, the last LSN
that is on disk: the writer's claims are checked against what the disk really holds.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pytest
import trio

import wal
from wal import (
    HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
    ZERO_CHECKSUM,
    StorageFailed,
    WriteAheadLog,
    decode_segment_header,
    segment_name,
)
from wal.testing import (
    all_frames,
    frames_in,
    last_lsn_on_disk,
    payload_for,
    scan_all,
    segment_paths,
    write_log,
)

TIMEOUT_S = 20


class RecordingSync:
    """Counts fsyncs of the log and remembers the last LSN on disk when each one returned.
    Calls listed in ``fail_at`` (1-based) raise EIO instead of syncing."""

    def __init__(self, directory: Path, *, fail_at: Collection[int] = (), delay_s: float = 0.0):
        self.directory = directory
        self.fail_at = set(fail_at)
        self.delay_s = delay_s
        self.calls = 0
        self.synced_lsn = 0
        self.history: list[int] = []

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls in self.fail_at:
            raise OSError(errno.EIO, "injected fsync failure")
        if self.delay_s:
            time.sleep(self.delay_s)  # a slow disk, so appends pile up behind the fsync
        os.fdatasync(fd)
        lsn = last_lsn_on_disk(self.directory)
        assert lsn > self.synced_lsn, "an fsync with nothing new written"
        self.synced_lsn = lsn
        self.history.append(lsn)


async def run_until_returned(log: WriteAheadLog, returned: list[bool]) -> None:
    await log.run()
    returned.append(True)


# -- many appenders, few fsyncs, nobody woken early ------------------------------------------


async def test_concurrent_appenders_share_few_syncs_and_wake_only_after_theirs(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "wal"
    tasks = 200
    sync = RecordingSync(directory, delay_s=0.002)
    appended: dict[int, tuple[bytes, int]] = {}
    notified: list[int] = []
    callbacks_run: list[int] = []
    woken: list[int] = []
    durable_seen: list[int] = []
    finished = trio.Event()

    def on_durable(batch: list[tuple[int, bytes, Any]]) -> None:
        lsns = [lsn for lsn, _, _ in batch]
        start = len(notified) + 1
        assert lsns == list(range(start, start + len(lsns))), "not dense, or not in LSN order"
        assert sync.synced_lsn >= lsns[-1], "reported durable before the fsync covered it"
        assert log.durable_lsn < lsns[0], "waiters were told before on_durable ran"
        for lsn, payload, tag in batch:
            assert appended[lsn] == (payload, tag)
        notified.extend(lsns)

    log = WriteAheadLog(directory, next_lsn=1, parent=ZERO_CHECKSUM, on_durable=on_durable,
                        sync=sync)
    rng = random.Random(20240611)

    async def appender(index: int, wave: int, checkpoints: int) -> None:
        await trio.sleep(wave * 0.015)
        for _ in range(checkpoints):
            await trio.lowlevel.checkpoint()
        payload = f"task {index}".encode() * (1 + index % 5)
        lsn = log.append(payload, tag=index)
        appended[lsn] = (payload, index)

        def when_durable(error: str | None) -> None:
            assert error is None
            assert notified and notified[-1] >= lsn, "callback before on_durable saw the LSN"
            assert sync.synced_lsn >= lsn, "callback before the fsync that covers it"
            callbacks_run.append(lsn)

        log.call_when_durable(lsn, when_durable)
        await log.wait_durable(lsn)
        assert log.durable_lsn >= lsn
        assert sync.synced_lsn >= lsn, "woken before the fsync that covers its LSN"
        assert lsn in callbacks_run
        woken.append(lsn)

    async def watch_durable_lsn() -> None:
        while not finished.is_set():
            durable_seen.append(log.durable_lsn)
            await trio.lowlevel.checkpoint()

    returned: list[bool] = []
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_until_returned, log, returned)
            nursery.start_soon(watch_durable_lsn)
            async with trio.open_nursery() as appenders:
                for index in range(tasks):
                    appenders.start_soon(appender, index, index % 4, rng.randrange(4))
            finished.set()
            log.close()
    log.release()

    assert returned == [True]
    assert sorted(woken) == list(range(1, tasks + 1))
    assert sorted(callbacks_run) == list(range(1, tasks + 1))
    assert notified == list(range(1, tasks + 1))
    # Group commit: the appenders came in four waves, so a few fsyncs, far fewer than records.
    assert 2 <= sync.calls <= tasks // 10, sync.calls
    statistics = log.statistics()
    assert statistics.batches == sync.calls
    assert statistics.records_written == tasks
    assert statistics.durable_lsn == tasks
    assert statistics.pending_records == 0
    assert statistics.failed is None
    # durable_lsn only ever moves forward, and each fsync covered more than the one before.
    assert durable_seen == sorted(durable_seen)
    assert durable_seen[-1] == tasks
    assert sync.history == sorted(set(sync.history))
    assert sync.history[-1] == tasks
    frames, result = scan_all(directory)
    assert [(frame.payload, frame.lsn) for frame in frames] == [
        (appended[lsn][0], lsn) for lsn in range(1, tasks + 1)
    ]
    assert result.torn == []
    assert len({frame.batch_lsn for frame in frames}) == sync.calls


async def test_already_durable_lsns_need_no_wait_and_no_sync(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    sync = RecordingSync(directory)
    log = WriteAheadLog(directory, next_lsn=1, parent=ZERO_CHECKSUM, sync=sync)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.run)
            first = log.append(b"one")
            second = log.append(b"two")
            await log.wait_durable(second)
            assert sync.calls == 1
            assert log.durable_lsn == second
            called: list[str | None] = []
            log.call_when_durable(first, called.append)
            assert called == [None], "an already durable LSN is reported at once"
            await log.wait_durable(first)
            await log.flush()
            assert sync.calls == 1
            log.close()
    log.release()


async def test_writer_resuming_after_a_scan_starts_durable_lsn_below_next_lsn(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "wal"
    sync = RecordingSync(directory)
    log = WriteAheadLog(directory, next_lsn=41, parent=b"\x07" * 16, sync=sync)
    assert (log.next_lsn, log.last_lsn, log.durable_lsn) == (41, 40, 40)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.run)
            assert log.append(b"x") == 41
            await log.flush()
            log.close()
    log.release()
    (path,) = segment_paths(directory)
    assert path.name == segment_name(41)
    assert decode_segment_header(path.read_bytes()) == (41, b"\x07" * 16)
    assert [frame.parent for _, frame in frames_in(path)] == [b"\x07" * 16]


# -- a failed fsync --------------------------------------------------------------------------


async def test_failed_sync_fails_every_waiter_and_is_never_retried(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    sync = RecordingSync(directory, fail_at={1})
    notified: list[int] = []
    log = WriteAheadLog(directory, next_lsn=1, parent=ZERO_CHECKSUM, sync=sync,
                        on_durable=lambda batch: notified.extend(lsn for lsn, _, _ in batch))
    failures: list[int] = []
    reasons: list[str | None] = []

    async def appender(index: int) -> None:
        for _ in range(index % 3):
            await trio.lowlevel.checkpoint()
        lsn = log.append(payload_for(index))
        log.call_when_durable(lsn, reasons.append)
        with pytest.raises(StorageFailed, match="injected fsync failure"):
            await log.wait_durable(lsn)
        failures.append(lsn)

    returned: list[bool] = []
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_until_returned, log, returned)
            async with trio.open_nursery() as appenders:
                for index in range(50):
                    appenders.start_soon(appender, index)
            # run() returned by itself, without close(): the log is dead.
        await trio.sleep(0.05)
    log.release()

    assert returned == [True]
    assert sorted(failures) == list(range(1, 51))
    assert len(reasons) == 50
    assert all(reason is not None and "injected fsync failure" in reason for reason in reasons)
    assert sync.calls == 1, "a failed fsync must not be retried, nor another one tried"
    assert notified == []
    assert log.durable_lsn == 0
    assert log.failed is not None
    assert "injected fsync failure" in log.failed
    assert log.statistics().failed == log.failed
    with pytest.raises(StorageFailed):
        log.append(b"after the failure")
    with pytest.raises(StorageFailed):
        log.check_writable()
    with pytest.raises(StorageFailed):
        await log.flush()
    with pytest.raises(StorageFailed):
        await log.wait_durable(50)
    late: list[str | None] = []
    log.call_when_durable(50, late.append)
    assert late == [log.failed]
    assert log.last_lsn == 50, "a refused append must not take an LSN"


async def test_failed_sync_keeps_earlier_records_durable(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    sync = RecordingSync(directory, fail_at={2})
    log = WriteAheadLog(directory, next_lsn=1, parent=ZERO_CHECKSUM, sync=sync)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.run)
            for index in range(3):
                log.append(payload_for(index))
            await log.flush()
            assert log.durable_lsn == 3
            lsns = [log.append(payload_for(index)) for index in range(3, 6)]
            assert lsns == [4, 5, 6]
            with pytest.raises(StorageFailed):
                await log.wait_durable(4)
            with pytest.raises(StorageFailed):
                log.append(b"refused")
    log.release()
    assert sync.calls == 2
    assert log.durable_lsn == 3
    await log.wait_durable(3)  # still durable: returns at once
    assert log.statistics().records_written == 3


# -- batch limits ----------------------------------------------------------------------------


async def test_batch_holds_at_most_batch_records_max(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("wal._writer.BATCH_RECORDS_MAX", 3)
    directory = tmp_path / "wal"
    sync = RecordingSync(directory)
    log = WriteAheadLog(directory, next_lsn=1, parent=ZERO_CHECKSUM, sync=sync)
    for index in range(10):
        log.append(payload_for(index))  # all queued before the writer starts
    log.close()
    with trio.fail_after(TIMEOUT_S):
        await log.run()
    log.release()
    assert [frame.batch_lsn for frame in all_frames(directory)] == [1, 1, 1, 4, 4, 4, 7, 7, 7, 10]
    assert sync.calls == 4
    assert sync.history == [3, 6, 9, 10]


def batch_bytes(directory: Path) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for frame in all_frames(directory):
        sizes[frame.batch_lsn] = sizes.get(frame.batch_lsn, 0) + frame.size
    return sizes


async def test_batch_bytes_stay_within_batch_bytes_max(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("wal._writer.BATCH_BYTES_MAX", 1000)
    directory = tmp_path / "wal"
    log = WriteAheadLog(directory, next_lsn=1, parent=ZERO_CHECKSUM)
    for _ in range(5):
        log.append(bytes(400))  # frames of 456 bytes: two fit in 1000, three do not
    log.append(bytes(2000))  # alone above the limit: still written, in a batch of its own
    log.close()
    with trio.fail_after(TIMEOUT_S):
        await log.run()
    log.release()
    assert batch_bytes(directory) == {1: 912, 3: 912, 5: 456, 6: 2056}


def test_batch_bytes_never_exceed_batch_bytes_max_counting_frame_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("wal._writer.BATCH_BYTES_MAX", 1000)
    directory = tmp_path / "wal"
    log = WriteAheadLog(directory, next_lsn=1, parent=ZERO_CHECKSUM)
    for _ in range(4):
        log.append(bytes(450))  # frames of 506: 2 * 506 = 1012 > 1000, yet 506 + 450 <= 1000
    log.close()
    trio.run(log.run)
    log.release()
    sizes = batch_bytes(directory)
    assert sum(sizes.values()) == 4 * (HEADER_BYTES + 450)
    assert all(size <= 1000 for size in sizes.values()), sizes


# -- segments roll at segment_bytes_max ------------------------------------------------------


async def test_segments_roll_at_segment_bytes_max_and_scan_clean(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    segment_bytes_max = 300
    sync = RecordingSync(directory)
    log = WriteAheadLog(directory, next_lsn=1, parent=ZERO_CHECKSUM,
                        segment_bytes_max=segment_bytes_max, sync=sync)
    payloads: list[bytes] = []
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.run)
            # Frames of 156 bytes, one write each: 56 + 156 < 300, 56 + 2 * 156 >= 300.
            for lsn in range(1, 10):
                payloads.append(payload_for(lsn, size=100))
                log.append(payloads[-1])
                await log.flush()
            # A write of 5 records into a segment below the limit is not split.
            for lsn in range(10, 15):
                payloads.append(payload_for(lsn, size=100))
                log.append(payloads[-1])
            await log.flush()
            payloads.append(payload_for(15, size=100))
            log.append(payloads[-1])
            await log.flush()
            log.close()
    log.release()

    segments = wal.list_segments(directory)
    assert [first_lsn for first_lsn, _ in segments] == [1, 3, 5, 7, 9, 15]
    assert [path.name for _, path in segments] == [segment_name(n) for n in (1, 3, 5, 7, 9, 15)]
    assert log.statistics().segments_created == 6
    assert sorted(p.name for p in directory.iterdir()) == [p.name for _, p in segments], (
        "temporary files left behind"
    )
    previous_checksum = ZERO_CHECKSUM
    for index, (first_lsn, path) in enumerate(segments):
        data = path.read_bytes()
        assert decode_segment_header(data) == (first_lsn, previous_checksum)
        frames = [frame for _, frame in frames_in(path)]
        assert frames[0].lsn == first_lsn
        assert frames[0].batch_lsn == first_lsn, "a segment starts with a write"
        assert all(frame.batch_lsn >= first_lsn for frame in frames), "a write was split"
        if index < len(segments) - 1:
            # Rolled at the first write after reaching the limit, not before, not later.
            assert len(data) >= segment_bytes_max
            last_batch = frames[-1].batch_lsn
            last_write = sum(f.size for f in frames if f.batch_lsn == last_batch)
            assert len(data) - last_write < segment_bytes_max
        previous_checksum = frames[-1].checksum
    assert [len(frames_in(path)) for _, path in segments] == [2, 2, 2, 2, 6, 1]

    frames, result = scan_all(directory)
    assert [frame.payload for frame in frames] == payloads
    assert result.next_lsn == 16
    assert result.segments == 6
    assert result.tail_path == segments[-1][1]
    assert result.tail_offset == SEGMENT_HEADER_BYTES + 156
    assert result.torn == []
    assert sync.calls == 11


# -- close -----------------------------------------------------------------------------------


async def test_close_makes_run_return_after_flushing_everything_queued(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    sync = RecordingSync(directory, delay_s=0.005)
    log = WriteAheadLog(directory, next_lsn=1, parent=ZERO_CHECKSUM, sync=sync)
    outcomes: dict[int, str | None] = {}
    returned: list[bool] = []

    def record_outcome(lsn: int) -> Callable[[str | None], None]:
        def record(error: str | None) -> None:
            outcomes[lsn] = error

        return record

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_until_returned, log, returned)
            for round_ in range(3):
                for index in range(100):
                    lsn = log.append(payload_for(round_ * 100 + index))
                    log.call_when_durable(lsn, record_outcome(lsn))
                await trio.lowlevel.checkpoint()  # the writer takes what is queued so far
            assert log.durable_lsn < 300, "the test needs records still queued at close"
            log.close()
            with pytest.raises(StorageFailed, match="closed"):
                log.append(b"after close")
    log.release()

    assert returned == [True]
    assert log.durable_lsn == log.last_lsn == 300
    assert outcomes == dict.fromkeys(range(1, 301))
    assert sync.history[-1] == 300
    assert log.statistics().pending_records == 0
    frames, result = scan_all(directory)
    assert [frame.lsn for frame in frames] == list(range(1, 301))
    assert result.torn == []


async def test_close_before_run_drains_the_queue_and_run_returns(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    log = WriteAheadLog(directory, next_lsn=1, parent=ZERO_CHECKSUM)
    for index in range(5):
        log.append(payload_for(index))
    log.close()
    with trio.fail_after(TIMEOUT_S):
        await log.run()
    log.release()
    assert log.durable_lsn == 5
    frames, _ = scan_all(directory)
    assert [frame.payload for frame in frames] == [payload_for(index) for index in range(5)]


async def test_close_with_nothing_queued_returns_without_creating_a_segment(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "wal"
    sync = RecordingSync(directory)
    log = WriteAheadLog(directory, next_lsn=1, parent=ZERO_CHECKSUM, sync=sync)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.run)
            await trio.sleep(0.01)
            log.close()
    log.release()
    assert sync.calls == 0
    assert list(directory.iterdir()) == []
    with pytest.raises(StorageFailed):
        log.append(b"x")


@pytest.mark.usefixtures("usual_umask")
async def test_the_log_directory_and_its_segments_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "data" / "wal"
    batches = [[payload_for(lsn) for lsn in range(first, first + 3)] for first in range(1, 31, 3)]
    await write_log(directory, batches, segment_bytes_max=400)
    assert len(segment_paths(directory)) >= 3  # segments rolled: each was created by the writer
    assert stat.S_IMODE(directory.stat().st_mode) == wal.DIRECTORY_MODE == 0o700
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()}
    assert modes == {path.name: wal.FILE_MODE for path in segment_paths(directory)}
    assert wal.FILE_MODE == 0o600
