"""``wal.Tailer``: a reader of a log another process writes. One test per row of the table in
``wal/_tail.py``: only complete, verified frames, never past the durable LSN it is given,
resuming after a stored LSN, across segment rolls and compaction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from wal import (
    HEADER_BYTES,
    Compacted,
    LogCorrupt,
    ScanResult,
    Tailer,
    covered_segments,
    encode,
    list_segments,
    scan,
)
from wal.testing import payload_for, write_log


def _write(directory: Path, batches: list[list[bytes]], **options: object) -> list[int]:
    return trio.run(lambda: write_log(directory, batches, **options))  # type: ignore[arg-type]


def _drain(tailer: Tailer, until_lsn: int) -> list[int]:
    lsns = []
    while (frame := tailer.next(until_lsn)) is not None:
        assert frame.payload == payload_for(frame.lsn)
        lsns.append(frame.lsn)
    return lsns


def test_it_stops_at_the_durable_lsn_and_goes_on_when_it_moves(tmp_path: Path) -> None:
    _write(tmp_path, [[payload_for(lsn) for lsn in range(1, 11)]])
    with Tailer(tmp_path, after_lsn=0) as tailer:
        assert _drain(tailer, 4) == [1, 2, 3, 4]
        assert tailer.next(4) is None
        assert _drain(tailer, 10) == list(range(5, 11))
        assert tailer.next(10) is None


def test_it_resumes_after_a_stored_lsn(tmp_path: Path) -> None:
    _write(tmp_path, [[payload_for(lsn)] for lsn in range(1, 21)], segment_bytes_max=300)
    assert len(list_segments(tmp_path)) > 2
    for after in (0, 1, 7, 13, 19, 20):
        with Tailer(tmp_path, after_lsn=after) as tailer:
            assert _drain(tailer, 20) == list(range(after + 1, 21))


def test_it_follows_segment_rolls_while_the_log_is_written(tmp_path: Path) -> None:
    lsns = _write(tmp_path, [[payload_for(1)], [payload_for(2)]], segment_bytes_max=200)
    with Tailer(tmp_path, after_lsn=0) as tailer:
        assert _drain(tailer, 2) == lsns
        # The writer goes on (a restarted ledger continues the same log) and rolls segments.
        result = ScanResult()
        list(scan(tmp_path, result))
        more = trio.run(lambda: write_log(
            tmp_path, [[payload_for(lsn)] for lsn in range(3, 30)], next_lsn=result.next_lsn,
            parent=result.last_checksum, tail_path=result.tail_path, tail_offset=result.tail_offset,
            segment_bytes_max=200,
        ))
        assert len(list_segments(tmp_path)) > 5
        assert _drain(tailer, 29) == more


def test_a_torn_tail_past_the_durable_lsn_is_never_read(tmp_path: Path) -> None:
    _write(tmp_path, [[payload_for(lsn) for lsn in range(1, 6)]])
    (_, path), = list_segments(tmp_path)
    with open(path, "ab") as handle:  # a write in progress: half of the frame for LSN 6
        handle.write(b"\x01" * (HEADER_BYTES + 3))
    with Tailer(tmp_path, after_lsn=0) as tailer:
        assert _drain(tailer, 5) == [1, 2, 3, 4, 5]
        assert tailer.next(5) is None


def test_bytes_read_before_they_were_durable_are_read_again(tmp_path: Path) -> None:
    """A crashed ledger left a torn write after LSN 3; its successor cut it off and wrote LSN 4
    in its place. A tailer that buffered the torn bytes must not use them for LSN 4."""
    _write(tmp_path, [[payload_for(lsn) for lsn in range(1, 4)]])
    (_, path), = list_segments(tmp_path)
    size = path.stat().st_size
    with open(path, "ab") as handle:
        handle.write(os.urandom(200))
    with Tailer(tmp_path, after_lsn=0) as tailer:
        assert _drain(tailer, 3) == [1, 2, 3]  # the garbage is in its buffer now
        with open(path, "r+b") as handle:
            handle.truncate(size)
        result = ScanResult()
        list(scan(tmp_path, result))
        trio.run(lambda: write_log(tmp_path, [[payload_for(4)]], next_lsn=4, parent=result.last_checksum,
                                   tail_path=result.tail_path, tail_offset=result.tail_offset))
        assert _drain(tailer, 4) == [4]


def test_a_damaged_durable_record_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, [[payload_for(lsn) for lsn in range(1, 6)]])
    (_, path), = list_segments(tmp_path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # inside the payload of LSN 5
    path.write_bytes(bytes(data))
    with Tailer(tmp_path, after_lsn=0) as tailer:
        assert _drain(tailer, 4) == [1, 2, 3, 4]
        with pytest.raises(LogCorrupt, match="checksum"):
            tailer.next(5)


def test_a_durable_record_that_is_missing_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, [[payload_for(lsn) for lsn in range(1, 4)]])
    with Tailer(tmp_path, after_lsn=0) as tailer:
        assert _drain(tailer, 3) == [1, 2, 3]
        with pytest.raises(LogCorrupt, match="LSN 4"):
            tailer.next(4)  # told LSN 4 is durable, but the log ends at 3


def test_a_record_that_does_not_chain_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, [[payload_for(lsn) for lsn in range(1, 3)]])
    (_, path), = list_segments(tmp_path)
    frame, _ = encode(lsn=3, batch_lsn=3, parent=bytes(16), payload=payload_for(3))
    with open(path, "ab") as handle:
        handle.write(frame)
    with Tailer(tmp_path, after_lsn=0) as tailer:
        assert _drain(tailer, 2) == [1, 2]
        with pytest.raises(LogCorrupt, match="broken chain"):
            tailer.next(3)


def test_compaction_under_an_open_tailer_and_on_resume(tmp_path: Path) -> None:
    _write(tmp_path, [[payload_for(lsn)] for lsn in range(1, 31)], segment_bytes_max=200)
    with Tailer(tmp_path, after_lsn=0) as tailer:
        assert _drain(tailer, 12) == list(range(1, 13))
        # Compaction removes what the reader has stored: the segment it reads stays readable
        # through its descriptor, the ones after it are still there.
        for path in covered_segments(tmp_path, 12):
            path.unlink()
        assert list_segments(tmp_path)[0][0] > 1
        assert _drain(tailer, 30) == list(range(13, 31))
    oldest = list_segments(tmp_path)[0][0]
    with Tailer(tmp_path, after_lsn=oldest - 1) as tailer:
        assert _drain(tailer, 30) == list(range(oldest, 31))
    with Tailer(tmp_path, after_lsn=oldest - 2) as tailer, pytest.raises(Compacted) as raised:
        tailer.next(30)
    assert raised.value.oldest_lsn == oldest


def test_a_segment_removed_between_listing_and_opening_is_listed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, [[payload_for(lsn)] for lsn in range(1, 21)], segment_bytes_max=200)
    (_, first_path), (second_lsn, _), *_ = list_segments(tmp_path)
    import wal._tail as tail

    listings = []

    def racing_list(directory: Path) -> list[tuple[int, Path]]:
        listed = list_segments(directory)
        if not listings:
            first_path.unlink()  # compaction runs right after this listing
        listings.append(listed)
        return listed

    monkeypatch.setattr(tail, "list_segments", racing_list)
    with Tailer(tmp_path, after_lsn=0) as tailer, pytest.raises(Compacted) as raised:
        tailer.next(20)
    assert raised.value.oldest_lsn == second_lsn
    assert len(listings) == 2
