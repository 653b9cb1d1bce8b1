"""The recovery table of ``wal/_segments.py``, one test per row (named after the row), on real
logs written by a real ``WriteAheadLog`` and then damaged on disk.

The standard log (``built``) has 14 records in 8 group-commit writes over three segments::

    00000000000000000001.wal  LSN 1 2 3 | 4 | 5 6          (batches 1, 4, 5)
    00000000000000000007.wal  LSN 7 | 8 9 10               (batches 7, 8)
    00000000000000000011.wal  LSN 11 | 12 13 | 14          (batches 11, 12, 14)
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio

import wal
from wal import (
    HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
    ZERO_CHECKSUM,
    Frame,
    LogCorrupt,
    ScanResult,
    encode,
    encode_segment_header,
    segment_name,
)
from wal.testing import (
    all_frames,
    continue_log,
    frames_in,
    payload_for,
    replace_bytes,
    scan_all,
    scan_until_error,
    segment_paths,
    truncate,
    write_log,
)

BATCH_SIZES = [3, 1, 2, 1, 3, 1, 2, 1]
RECORDS = sum(BATCH_SIZES)
SEGMENT_BYTES_MAX = 400


@dataclass(frozen=True, slots=True, kw_only=True)
class Built:
    directory: Path
    frames: list[Frame]
    located: dict[int, tuple[Path, int]]

    def frame(self, lsn: int) -> Frame:
        return self.frames[lsn - 1]

    def path(self, lsn: int) -> Path:
        return self.located[lsn][0]

    def offset(self, lsn: int) -> int:
        return self.located[lsn][1]

    def checksum(self, lsn: int) -> bytes:
        return ZERO_CHECKSUM if lsn == 0 else self.frame(lsn).checksum

    @property
    def segments(self) -> list[Path]:
        return segment_paths(self.directory)

    def files(self) -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in sorted(self.directory.iterdir())}


async def build(directory: Path) -> Built:
    batches: list[list[bytes]] = []
    lsn = 1
    for size in BATCH_SIZES:
        batches.append([payload_for(lsn + index) for index in range(size)])
        lsn += size
    lsns = await write_log(directory, batches, segment_bytes_max=SEGMENT_BYTES_MAX)
    assert lsns == list(range(1, RECORDS + 1))
    located: dict[int, tuple[Path, int]] = {}
    for path in segment_paths(directory):
        for offset, frame in frames_in(path):
            located[frame.lsn] = (path, offset)
    frames = all_frames(directory)
    assert [frame.lsn for frame in frames] == lsns
    log = Built(directory=directory, frames=frames, located=located)
    # The layout the tests below rely on.
    assert [path.name for path in log.segments] == [segment_name(n) for n in (1, 7, 11)]
    assert [log.frame(n).batch_lsn for n in range(1, RECORDS + 1)] == [
        1, 1, 1, 4, 5, 5, 7, 8, 8, 8, 11, 12, 12, 14
    ]
    return log


@pytest.fixture
async def built(tmp_path: Path) -> Built:
    return await build(tmp_path / "wal")


def build_outside_trio(tmp_path: Path) -> Built:
    """For the synchronous (xfail) tests: an exception raised inside an async pytest-trio test
    reaches pytest wrapped in an ExceptionGroup, which ``xfail(raises=...)`` cannot match."""
    return trio.run(build, tmp_path / "wal")


def new_batches(first: int) -> list[list[bytes]]:
    return [[payload_for(first), payload_for(first + 1)], [payload_for(first + 2, size=3000)]]


def assert_refused(error: LogCorrupt, *, path: Path, offset: int, lsn: int, reason: str) -> None:
    assert error.path == path
    assert error.offset == offset
    assert error.lsn == lsn
    assert reason in error.reason
    message = str(error)
    assert str(path) in message
    assert f"offset {offset}" in message
    assert f"LSN {lsn}" in message
    assert "wallet wal" in message


def refuse(built: Built, *, path: Path, offset: int, lsn: int, reason: str,
           after_lsn: int = 0) -> None:
    """The scan refuses at exactly this place, yields only what precedes it, and leaves every
    file alone even when allowed to truncate a torn tail."""
    before = built.files()
    options = {}
    if after_lsn:
        options = {"after_lsn": after_lsn, "after_checksum": built.checksum(after_lsn)}
    for truncate_torn_tail in (False, True):
        frames, error = scan_until_error(
            built.directory, truncate_torn_tail=truncate_torn_tail, **options
        )
        assert_refused(error, path=path, offset=offset, lsn=lsn, reason=reason)
        assert all(frame.lsn < lsn for frame in frames)
        assert [frame.lsn for frame in frames] == list(range(after_lsn + 1, after_lsn + 1 + len(frames)))
        assert built.files() == before


async def torn_then_resume(built: Built, *, path: Path, offset: int, lsn: int,
                           caplog: pytest.LogCaptureFixture) -> None:
    """The scan keeps records before ``lsn``, reports the tail torn at (path, offset), cuts it
    only when asked, and a writer continuing from the result leaves a clean log."""
    damaged_size = path.stat().st_size
    assert damaged_size > offset
    before = built.files()

    with caplog.at_level(logging.WARNING, logger="wal"):
        frames, result = scan_all(built.directory)
    assert frames == built.frames[: lsn - 1]
    assert result.next_lsn == lsn
    assert result.last_checksum == built.checksum(lsn - 1)
    assert result.tail_path == path
    assert result.tail_offset == offset
    assert result.records == lsn - 1
    assert len(result.torn) == 1
    assert str(path) in result.torn[0]
    assert f"offset {offset}" in result.torn[0]
    assert f"LSN {lsn}" in result.torn[0]
    assert any(record.levelno == logging.WARNING and f"LSN {lsn}" in record.getMessage()
               for record in caplog.records)
    assert built.files() == before, "reporting a torn tail must not change the files"

    frames, result = scan_all(built.directory, truncate_torn_tail=True)
    assert frames == built.frames[: lsn - 1]
    assert result.tail_offset == offset
    assert path.stat().st_size == offset
    assert len(result.torn) == 1

    lsns = await continue_log(built.directory, result, new_batches(500),
                              segment_bytes_max=SEGMENT_BYTES_MAX)
    assert lsns == [lsn, lsn + 1, lsn + 2]
    frames, result = scan_all(built.directory)
    assert result.torn == []
    assert [frame.lsn for frame in frames] == list(range(1, lsn + 3))
    assert frames[: lsn - 1] == built.frames[: lsn - 1]
    assert [frame.payload for frame in frames[lsn - 1 :]] == [p for b in new_batches(500) for p in b]
    assert frames[lsn - 1].parent == built.checksum(lsn - 1)
    assert result.next_lsn == lsn + 3


def rewrite_frame(built: Built, lsn: int, *, new_lsn: int | None = None,
                  parent: bytes | None = None) -> None:
    """Replaces record ``lsn`` in place by one that verifies but carries other fields."""
    frame = built.frame(lsn)
    data, _ = encode(
        lsn=lsn if new_lsn is None else new_lsn,
        batch_lsn=frame.batch_lsn,
        parent=frame.parent if parent is None else parent,
        payload=frame.payload,
    )
    assert len(data) == frame.size
    replace_bytes(built.path(lsn), built.offset(lsn), data)
    assert wal.decode(built.path(lsn).read_bytes(), built.offset(lsn)).lsn == (new_lsn or lsn)


def flip(built: Built, lsn: int, position: int) -> None:
    """Flips the low bit of byte ``position`` of record ``lsn`` (negative: from its end)."""
    frame = built.frame(lsn)
    if position < 0:
        position += frame.size
    assert 0 <= position < frame.size
    path = built.path(lsn)
    data = bytearray(path.read_bytes())
    data[built.offset(lsn) + position] ^= 0x01
    path.write_bytes(bytes(data))


# Byte positions inside a frame, one per header field plus both ends of the payload.
FRAME_POSITIONS = [
    pytest.param(0, id="checksum"),
    pytest.param(20, id="parent"),
    pytest.param(32, id="lsn"),
    pytest.param(40, id="batch_lsn"),
    pytest.param(48, id="size-low"),
    pytest.param(51, id="size-high"),
    pytest.param(52, id="version"),
    pytest.param(55, id="flags"),
    pytest.param(HEADER_BYTES, id="payload-first"),
    pytest.param(-1, id="payload-last"),
]


# -- row: no segment at all -> empty log, start at 1 ---------------------------------------


async def test_no_segment_at_all_is_an_empty_log_starting_at_1(tmp_path: Path) -> None:
    missing = tmp_path / "never-created"
    frames, result = scan_all(missing)
    assert frames == []
    assert result == ScanResult()
    assert not missing.exists()

    directory = tmp_path / "wal"
    directory.mkdir()
    # Files that are not segments do not count: a leftover temp segment, notes, odd names.
    (directory / "00000000000000000001.tmp").write_bytes(b"half-made")
    (directory / "README").write_text("not a segment")
    (directory / "x1.wal").write_bytes(b"junk")
    frames, result = scan_all(directory, truncate_torn_tail=True)
    assert frames == []
    assert result.next_lsn == 1
    assert result.last_checksum == ZERO_CHECKSUM
    assert result.segments == 0
    assert result.records == 0
    assert result.tail_path is None
    assert result.tail_offset == 0
    assert result.torn == []

    lsns = await continue_log(directory, result, new_batches(1))
    assert lsns == [1, 2, 3]
    frames, result = scan_all(directory)
    assert [frame.lsn for frame in frames] == [1, 2, 3]
    assert result.tail_path == directory / segment_name(1)


# -- row: records verify, LSNs dense, chain unbroken, file ends cleanly -> clean ------------


async def test_records_verify_lsns_dense_chain_unbroken_file_ends_cleanly_is_clean(
    built: Built,
) -> None:
    before = built.files()
    frames, result = scan_all(built.directory, truncate_torn_tail=True)
    assert frames == built.frames
    assert [frame.payload for frame in frames] == [payload_for(n) for n in range(1, RECORDS + 1)]
    last = built.segments[-1]
    assert result.next_lsn == RECORDS + 1
    assert result.last_checksum == built.checksum(RECORDS)
    assert result.segments == 3
    assert result.records == RECORDS
    assert result.first_lsn == 1
    assert result.tail_path == last
    assert result.tail_offset == last.stat().st_size
    assert result.torn == []
    assert built.files() == before

    lsns = await continue_log(built.directory, result, new_batches(100),
                              segment_bytes_max=SEGMENT_BYTES_MAX)
    assert lsns == [RECORDS + 1, RECORDS + 2, RECORDS + 3]
    frames, result = scan_all(built.directory)
    assert frames[:RECORDS] == built.frames
    assert [frame.payload for frame in frames[RECORDS:]] == [p for b in new_batches(100) for p in b]
    assert result.next_lsn == RECORDS + 4
    assert result.torn == []


# -- row: segment holds only its header -> clean (nothing written) -------------------------


async def test_segment_holding_only_its_header_is_clean(built: Built) -> None:
    # A crash between creating the next segment and writing into it.
    empty = built.directory / segment_name(RECORDS + 1)
    empty.write_bytes(encode_segment_header(first_lsn=RECORDS + 1, parent=built.checksum(RECORDS)))
    frames, result = scan_all(built.directory, truncate_torn_tail=True)
    assert frames == built.frames
    assert result.next_lsn == RECORDS + 1
    assert result.last_checksum == built.checksum(RECORDS)
    assert result.segments == 4
    assert result.tail_path == empty
    assert result.tail_offset == SEGMENT_HEADER_BYTES
    assert result.torn == []
    assert empty.stat().st_size == SEGMENT_HEADER_BYTES

    await continue_log(built.directory, result, new_batches(100), segment_bytes_max=SEGMENT_BYTES_MAX)
    assert [frame.lsn for _, frame in frames_in(empty)][:2] == [RECORDS + 1, RECORDS + 2]
    frames, result = scan_all(built.directory)
    assert [frame.lsn for frame in frames] == list(range(1, RECORDS + 4))
    assert result.torn == []


async def test_segment_holding_only_its_header_is_clean_as_the_whole_log(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    directory.mkdir()
    only = directory / segment_name(1)
    only.write_bytes(encode_segment_header(first_lsn=1, parent=ZERO_CHECKSUM))
    frames, result = scan_all(directory)
    assert frames == []
    assert result.next_lsn == 1
    assert result.last_checksum == ZERO_CHECKSUM
    assert result.segments == 1
    assert result.first_lsn == 1
    assert (result.tail_path, result.tail_offset) == (only, SEGMENT_HEADER_BYTES)
    assert result.torn == []


# -- row: record LSN <= the snapshot's LSN -> skip (already in image) ----------------------


async def test_record_lsn_at_or_below_snapshot_lsn_is_skipped(built: Built) -> None:
    last = built.segments[-1]
    for after_lsn in range(RECORDS + 1):
        frames, result = scan_all(
            built.directory, after_lsn=after_lsn, after_checksum=built.checksum(after_lsn)
        )
        assert frames == built.frames[after_lsn:], after_lsn
        assert result.records == RECORDS - after_lsn
        assert result.next_lsn == RECORDS + 1
        assert result.last_checksum == built.checksum(RECORDS)
        assert result.tail_path == last
        assert result.tail_offset == last.stat().st_size
        assert result.torn == []


async def test_records_below_the_snapshot_lsn_may_be_compacted_away(built: Built) -> None:
    # Segments wholly inside the snapshot image are not even read: removing them is compaction.
    first, second, _ = built.segments
    first.unlink()
    second.unlink()
    frames, result = scan_all(built.directory, after_lsn=10, after_checksum=built.checksum(10))
    assert frames == built.frames[10:]
    assert result.next_lsn == RECORDS + 1
    assert result.first_lsn == 11


@pytest.mark.parametrize("after_lsn", [3, 6, 10, 12, RECORDS])
async def test_snapshot_that_does_not_match_the_log_at_its_lsn_is_refused(
    built: Built, after_lsn: int
) -> None:
    wrong = built.checksum(after_lsn - 1)
    frames, error = scan_until_error(built.directory, after_lsn=after_lsn, after_checksum=wrong)
    assert frames == []
    if after_lsn + 1 in (7, 11):
        # The snapshot ends a segment: the next segment's parent must be the snapshot's record.
        assert_refused(error, path=built.directory / segment_name(after_lsn + 1), offset=0,
                       lsn=after_lsn + 1, reason="broken chain")
    else:
        assert_refused(error, path=built.path(after_lsn), offset=built.offset(after_lsn),
                       lsn=after_lsn, reason="does not match")


# -- row: last segment ends in a cut header or cut payload -> torn tail: truncate+warn ------


@pytest.mark.parametrize(
    ("lsn", "into"),
    [
        pytest.param(14, 20, id="last-record-cut-mid-header"),
        pytest.param(14, 1, id="last-record-cut-after-one-byte"),
        pytest.param(14, HEADER_BYTES, id="last-record-cut-after-header"),
        pytest.param(14, HEADER_BYTES + 10, id="last-record-cut-mid-payload"),
        pytest.param(14, -1, id="last-record-one-byte-short"),
        pytest.param(13, HEADER_BYTES + 3, id="last-write-cut-before-its-second-record-ends"),
        pytest.param(11, 30, id="first-record-of-last-segment-cut"),
    ],
)
async def test_last_segment_ending_in_cut_header_or_cut_payload_is_a_torn_tail(
    built: Built, lsn: int, into: int, caplog: pytest.LogCaptureFixture
) -> None:
    path, offset = built.located[lsn]
    size = built.frame(lsn).size
    truncate(path, offset + (into if into >= 0 else size + into))
    await torn_then_resume(built, path=path, offset=offset, lsn=lsn, caplog=caplog)


# -- row: last segment, a record fails its checksum and no valid record follows -> torn ------


@pytest.mark.parametrize("position", FRAME_POSITIONS)
async def test_last_segment_record_failing_checksum_with_no_valid_record_after_it_is_a_torn_tail(
    built: Built, position: int, caplog: pytest.LogCaptureFixture
) -> None:
    flip(built, RECORDS, position)
    await torn_then_resume(built, path=built.path(RECORDS), offset=built.offset(RECORDS),
                           lsn=RECORDS, caplog=caplog)


async def test_last_record_overwritten_with_garbage_is_a_torn_tail(
    built: Built, caplog: pytest.LogCaptureFixture
) -> None:
    # What a write whose pages never reached the disk can leave: the right length, wrong bytes.
    path, offset = built.located[RECORDS]
    replace_bytes(path, offset, b"\x00" * built.frame(RECORDS).size)
    await torn_then_resume(built, path=path, offset=offset, lsn=RECORDS, caplog=caplog)


# -- row: a record fails its checksum and a valid record follows it -> refuse ---------------


@pytest.mark.parametrize("lsn", [11, 12, 13])
@pytest.mark.parametrize("position", FRAME_POSITIONS)
async def test_record_failing_checksum_with_a_valid_record_after_it_is_a_corrupt_middle(
    built: Built, lsn: int, position: int
) -> None:
    flip(built, lsn, position)
    refuse(built, path=built.path(lsn), offset=built.offset(lsn), lsn=lsn,
           reason=f"follows at offset {built.offset(lsn + 1)}")


# -- row: a record fails its checksum in a segment that is not the last -> refuse -----------


@pytest.mark.parametrize("lsn", [1, 6, 7, 10])
@pytest.mark.parametrize(
    "position", [pytest.param(0, id="checksum"), pytest.param(49, id="size"),
                 pytest.param(-1, id="payload-last")],
)
async def test_record_failing_checksum_in_a_segment_that_is_not_the_last_is_a_corrupt_middle(
    built: Built, lsn: int, position: int
) -> None:
    # LSNs 6 and 10 end their segments: nothing follows them there, yet later segments exist.
    flip(built, lsn, position)
    ends_segment = lsn in (6, 10)
    reason = "later segments exist" if ends_segment else f"follows at offset {built.offset(lsn + 1)}"
    refuse(built, path=built.path(lsn), offset=built.offset(lsn), lsn=lsn, reason=reason)


@pytest.mark.parametrize("lsn", [6, 10])
async def test_segment_that_is_not_the_last_ending_in_a_cut_record_is_a_corrupt_middle(
    built: Built, lsn: int
) -> None:
    path, offset = built.located[lsn]
    truncate(path, offset + HEADER_BYTES + 2)
    refuse(built, path=path, offset=offset, lsn=lsn, reason="later segments exist")


# -- row: a record's LSN is not the previous LSN + 1 -> refuse: LSN gap ---------------------


@pytest.mark.parametrize("lsn", [2, 7, 12, RECORDS])
async def test_record_lsn_not_previous_lsn_plus_one_is_an_lsn_gap(built: Built, lsn: int) -> None:
    # The record verifies on its own (even the last one: it is no torn write).
    rewrite_frame(built, lsn, new_lsn=lsn + 1)
    refuse(built, path=built.path(lsn), offset=built.offset(lsn), lsn=lsn,
           reason=f"expected LSN {lsn}, record says {lsn + 1}")


async def test_record_missing_from_the_middle_of_a_segment_is_an_lsn_gap(built: Built) -> None:
    path, offset = built.located[9]
    data = path.read_bytes()
    path.write_bytes(data[:offset] + data[offset + built.frame(9).size :])
    refuse(built, path=path, offset=offset, lsn=9, reason="expected LSN 9, record says 10")


# -- row: a record's parent is not the previous record's checksum -> refuse: broken chain ----


@pytest.mark.parametrize("lsn", [1, 3, 9, 13, RECORDS])
async def test_record_parent_not_previous_record_checksum_is_a_broken_chain(
    built: Built, lsn: int
) -> None:
    rewrite_frame(built, lsn, parent=built.checksum(lsn - 2) if lsn > 1 else b"\x01" * 16)
    refuse(built, path=built.path(lsn), offset=built.offset(lsn), lsn=lsn, reason="broken chain")


@pytest.mark.parametrize("first_lsn", [1, 7, 11])
async def test_segment_parent_not_previous_record_checksum_is_a_broken_chain(
    built: Built, first_lsn: int
) -> None:
    path = built.directory / segment_name(first_lsn)
    wrong = built.checksum(first_lsn - 2) if first_lsn > 1 else b"\x02" * 16
    replace_bytes(path, 0, encode_segment_header(first_lsn=first_lsn, parent=wrong))
    refuse(built, path=path, offset=0, lsn=first_lsn, reason="broken chain")


# -- row: a segment header is damaged or names the wrong first LSN -> refuse: bad segment ----


@pytest.mark.parametrize("first_lsn", [1, 7, 11])
@pytest.mark.parametrize(
    "position", [0, 9, 12, 16, 30, 45],
    ids=["magic", "version", "reserved", "first_lsn", "parent", "checksum"],
)
async def test_damaged_segment_header_is_a_bad_segment(
    built: Built, first_lsn: int, position: int
) -> None:
    path = built.directory / segment_name(first_lsn)
    data = bytearray(path.read_bytes())
    data[position] ^= 0x10
    path.write_bytes(bytes(data))
    refuse(built, path=path, offset=0, lsn=first_lsn, reason="segment header checksum mismatch")


@pytest.mark.parametrize("first_lsn", [1, 7, 11])
async def test_cut_segment_header_is_a_bad_segment(built: Built, first_lsn: int) -> None:
    path = built.directory / segment_name(first_lsn)
    truncate(path, 30)
    refuse(built, path=path, offset=0, lsn=first_lsn, reason="cut")


@pytest.mark.parametrize("first_lsn", [7, 11])
async def test_segment_header_naming_the_wrong_first_lsn_is_a_bad_segment(
    built: Built, first_lsn: int
) -> None:
    path = built.directory / segment_name(first_lsn)
    replace_bytes(path, 0, encode_segment_header(first_lsn=first_lsn + 1,
                                                 parent=built.checksum(first_lsn - 1)))
    refuse(built, path=path, offset=0, lsn=first_lsn,
           reason=f"names first LSN {first_lsn + 1}, file name says {first_lsn}")


RENAMES = [(7, 6), (7, 8), (11, 12), (1, 2)]


@pytest.mark.parametrize(("old", "new"), RENAMES)
async def test_segment_renamed_to_the_wrong_first_lsn_is_a_bad_segment(
    built: Built, old: int, new: int
) -> None:
    renamed = built.directory / segment_name(new)
    os.rename(built.directory / segment_name(old), renamed)
    before = built.files()
    frames, error = scan_until_error(built.directory, truncate_torn_tail=True)
    assert error.path == renamed
    assert error.offset == 0
    assert f"names first LSN {old}, file name says {new}" in error.reason
    assert str(renamed) in str(error)
    assert "wallet wal" in str(error)
    # Everything before the misnamed segment verified and was yielded; nothing after it.
    assert frames == built.frames[: old - 1]
    assert built.files() == before


@pytest.mark.parametrize(("old", "new"), RENAMES)
def test_segment_renamed_to_the_wrong_first_lsn_reports_the_first_lsn_in_doubt(
    tmp_path: Path, old: int, new: int
) -> None:
    built = build_outside_trio(tmp_path)
    renamed = built.directory / segment_name(new)
    os.rename(built.directory / segment_name(old), renamed)
    frames, error = scan_until_error(built.directory)
    assert [frame.lsn for frame in frames] == list(range(1, old))
    assert error.lsn == old, f"reported LSN {error.lsn}, but LSN {old} is the first not verified"
    assert f"records after LSN {old - 1} will be dropped" in str(error)


# -- row: the first kept segment starts after the snapshot's LSN + 1 -> refuse: LSN gap ------


async def test_missing_middle_segment_is_an_lsn_gap(built: Built) -> None:
    (built.directory / segment_name(7)).unlink()
    refuse(built, path=built.directory / segment_name(11), offset=0, lsn=7,
           reason="expected LSN 7, segment starts at 11")


@pytest.mark.parametrize(
    ("after_lsn", "deleted", "expected_lsn"),
    [
        pytest.param(3, [7], 7, id="gap-after-the-snapshot-segment"),
        pytest.param(8, [7], 9, id="snapshot-lsn-inside-the-deleted-segment"),
        pytest.param(8, [1, 7], 9, id="only-later-segments-kept"),
        pytest.param(6, [1, 7], 7, id="snapshot-ends-a-segment-next-one-missing"),
    ],
)
async def test_first_kept_segment_starting_after_snapshot_lsn_plus_one_is_an_lsn_gap(
    built: Built, after_lsn: int, deleted: list[int], expected_lsn: int
) -> None:
    for first_lsn in deleted:
        (built.directory / segment_name(first_lsn)).unlink()
    refuse(built, path=built.directory / segment_name(11), offset=0, lsn=expected_lsn,
           reason=f"expected LSN {expected_lsn}, segment starts at 11", after_lsn=after_lsn)


async def test_first_kept_segment_starting_right_after_the_snapshot_lsn_is_clean(
    built: Built,
) -> None:
    (built.directory / segment_name(1)).unlink()
    (built.directory / segment_name(7)).unlink()
    frames, result = scan_all(built.directory, after_lsn=10, after_checksum=built.checksum(10))
    assert frames == built.frames[10:]
    assert result.next_lsn == RECORDS + 1
    assert result.torn == []


# -- the log ends before the snapshot's LSN (the check after the loop) ----------------------


@pytest.mark.parametrize(
    "damage", ["snapshot-beyond-the-log", "last-segment-cut-below-the-snapshot"]
)
def test_log_ending_before_the_snapshot_lsn_is_refused(tmp_path: Path, damage: str) -> None:
    built = build_outside_trio(tmp_path)
    if damage == "snapshot-beyond-the-log":
        after_lsn, after_checksum = RECORDS + 3, b"\x05" * 16
    else:
        after_lsn, after_checksum = 13, built.checksum(13)
        truncate(built.path(12), built.offset(12))  # the log now ends at LSN 11
    frames, error = scan_until_error(built.directory, after_lsn=after_lsn,
                                     after_checksum=after_checksum)
    assert frames == []
    assert error.path == built.segments[-1]
    assert "before the snapshot" in error.reason
    assert "wallet wal" in str(error)


# -- batch_lsn: damage followed only by records of the same never-acknowledged write ---------


def test_damage_followed_only_by_records_of_the_same_last_write_is_refused(
    tmp_path: Path,
) -> None:
    # A power cut can persist a later page of the last write but not an earlier one; bit rot
    # after a fully fsynced (acknowledged) write looks exactly the same. Only refusing is safe
    # for both, so recovery refuses, and says the records after the damage were one write with
    # it, which is what an operator weighs before `wallet wal repair --truncate-at-lsn`.
    directory = tmp_path / "wal"
    batches = [[payload_for(1), payload_for(2)], [payload_for(3), payload_for(4), payload_for(5)]]
    trio.run(partial(write_log, directory, batches))
    (path,) = segment_paths(directory)
    located = {frame.lsn: (offset, frame) for offset, frame in frames_in(path)}
    assert [located[n][1].batch_lsn for n in (3, 4, 5)] == [3, 3, 3]
    offset, frame = located[3]
    replace_bytes(path, offset, bytes(frame.size))
    before = path.read_bytes()
    frames, error = scan_until_error(directory, truncate_torn_tail=True)
    assert [frame.lsn for frame in frames] == [1, 2]
    assert_refused(error, path=path, offset=offset, lsn=3, reason="write that began at LSN 3")
    assert path.read_bytes() == before


async def test_damage_followed_by_a_later_write_is_refused_even_in_the_last_write_layout(
    tmp_path: Path,
) -> None:
    # The counterpart that must stay refused whatever the fix: a later write follows the damage.
    directory = tmp_path / "wal"
    await write_log(directory, [[payload_for(1), payload_for(2)], [payload_for(3)]])
    (path,) = segment_paths(directory)
    offset, frame = frames_in(path)[1]
    replace_bytes(path, offset, bytes(frame.size))
    frames, error = scan_until_error(directory, truncate_torn_tail=True)
    assert [f.lsn for f in frames] == [1]
    assert_refused(error, path=path, offset=offset, lsn=2, reason="LSN 3")


# -- the advice in the refusal message -------------------------------------------------------


def test_every_command_the_refusal_message_recommends_exists(tmp_path: Path) -> None:
    from server.cli import build_parser

    error = LogCorrupt(path=tmp_path / segment_name(7), offset=56, lsn=7, reason="checksum mismatch")
    commands = re.findall(r"`(wallet wal [^`]+)`", str(error))
    assert len(commands) == 2
    for command in commands:
        argv = shlex.split(command.replace("DIR", str(tmp_path)))
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as exit_:
            raise AssertionError(f"`{command}` is not a command of `wallet`") from exit_


async def test_damage_inside_the_snapshot_image_is_found_only_when_asked(built: Built) -> None:
    # Recovery walks records inside the image by header only; `wallet wal verify` checks them.
    flip(built, 5, 60)
    frames, result = scan_all(built.directory, after_lsn=10, after_checksum=built.checksum(10))
    assert frames == built.frames[10:]
    assert not result.torn
    _, error = scan_until_error(built.directory)
    assert error.lsn == 5
