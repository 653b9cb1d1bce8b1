"""Segment files and the recovery scan of the write-ahead log.

The log is a directory of segment files named ``<first_lsn:020d>.wal``. Each segment starts
with a 56-byte segment header and holds whole frames (see ``_frame``); a group-commit write is
never split across two segments. A new segment is created atomically (temp file, fsync, rename,
fsync of the directory) and only after the previous write was fsynced, so its header is never
torn and its existence proves the previous segment was durable.

Segment header (little-endian):

    0   8   magic       b"WLEDGWAL"
    8   2   version     SEGMENT_VERSION
    10  6   reserved    zeros
    16  8   first_lsn   LSN of the first record this segment holds (or will hold)
    24  16  parent      checksum of record first_lsn - 1 (zeros when first_lsn == 1)
    40  16  checksum    blake2b-128 of bytes [0, 40)

Recovery decisions, in the order the scan meets them (one test per row in
``tests/wal/test_recovery.py``):

    | what the scan finds                                           | decision                 |
    |---------------------------------------------------------------|--------------------------|
    | no segment at all                                             | empty log, start at 1    |
    | records verify, LSNs dense, chain unbroken, file ends cleanly | clean: resume after end  |
    | segment holds only its header                                 | clean (nothing written)  |
    | record LSN <= the snapshot's LSN                              | skip (already in image)  |
    | last segment ends in a cut header or cut payload              | torn tail: truncate+warn |
    | last segment: a record fails its checksum and no valid record | torn tail: truncate+warn |
    |   follows it in that segment                                  |                          |
    | a record fails its checksum and a valid record follows it     | refuse: corrupt middle   |
    | a record fails its checksum in a segment that is not the last | refuse: corrupt middle   |
    | a record's LSN is not the previous LSN + 1                    | refuse: LSN gap          |
    | a record's parent is not the previous record's checksum       | refuse: broken chain     |
    | a segment header is damaged or names the wrong first LSN      | refuse: bad segment      |
    | the first kept segment starts after the snapshot's LSN + 1    | refuse: LSN gap          |

Segments are created with mode ``FILE_MODE`` (0600) in a directory of ``DIRECTORY_MODE`` (0700).

A torn tail is what an interrupted write leaves; it was never acknowledged (acknowledgement
follows the fsync), so cutting it loses nothing. Anything else means acknowledged history is
damaged: the scan raises ``LogCorrupt`` naming the file, offset and LSN, and never guesses.
A complete last record whose checksum fails is indistinguishable from a torn write here and is
treated as one (TigerBeetle resolves the same ambiguity with replicas; we have none yet).
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wal import _frame
from wal._frame import CHECKSUM_BYTES, HEADER_BYTES, ZERO_CHECKSUM, Frame, FrameError

log = logging.getLogger("wal")

SEGMENT_MAGIC = b"WLEDGWAL"
SEGMENT_VERSION = 1
SEGMENT_HEADER = struct.Struct("<8sH6sQ16s16s")
SEGMENT_HEADER_BYTES = 56
SEGMENT_SUFFIX = ".wal"
assert SEGMENT_HEADER.size == SEGMENT_HEADER_BYTES
# The log is the service user's alone: segments (and their temp files) are created 0600, the
# log's directory and a repair's folder of dropped segments 0700.
FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


class LogCorrupt(Exception):
    """Acknowledged history in the log is damaged; the server must not start on it."""

    def __init__(self, *, path: Path, offset: int, lsn: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.lsn = lsn
        self.reason = reason
        super().__init__(
            f"write-ahead log damaged in {path} at offset {offset} (LSN {lsn}): {reason}. "
            f"Acknowledged records may follow this point, so the server refuses to start. "
            f"Inspect with `wallet wal verify --data DIR`; restore the file from a backup, or, "
            f"knowing that records after LSN {lsn - 1} will be dropped, run "
            f"`wallet wal repair --data DIR --truncate-at-lsn {lsn}`."
        )


def segment_name(first_lsn: int) -> str:
    return f"{first_lsn:020d}{SEGMENT_SUFFIX}"


def encode_segment_header(*, first_lsn: int, parent: bytes) -> bytes:
    assert first_lsn >= 1
    assert len(parent) == CHECKSUM_BYTES
    body = SEGMENT_HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION, bytes(6), first_lsn, parent, bytes(16))
    head = body[:40]
    return head + _frame.checksum(head)


def decode_segment_header(data: bytes) -> tuple[int, bytes]:
    """Returns (first_lsn, parent). Raises FrameError when the header does not verify."""
    if len(data) < SEGMENT_HEADER_BYTES:
        raise FrameError(f"segment header cut at {len(data)} bytes")
    magic, version, _, first_lsn, parent, digest = SEGMENT_HEADER.unpack_from(data, 0)
    if _frame.checksum(data[:40]) != digest:
        raise FrameError("segment header checksum mismatch")
    if magic != SEGMENT_MAGIC:
        raise FrameError("not a segment file (bad magic)")
    if version != SEGMENT_VERSION:
        raise FrameError(f"unknown segment version {version}")
    return first_lsn, parent


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """Segment files sorted by first LSN, as (first_lsn, path)."""
    if not directory.exists():
        return []
    found = []
    for path in directory.iterdir():
        if path.suffix != SEGMENT_SUFFIX or not path.stem.isdigit():
            continue
        found.append((int(path.stem), path))
    found.sort()
    return found


@dataclass(slots=True, kw_only=True)
class ScanResult:
    """Where the valid log ends. Filled in as the scan goes."""

    next_lsn: int = 1
    last_checksum: bytes = ZERO_CHECKSUM
    segments: int = 0
    records: int = 0
    first_lsn: int | None = None
    tail_path: Path | None = None
    tail_offset: int = 0
    torn: list[str] = field(default_factory=list)


def _find_valid_frame_after(data: bytes, offset: int, lsn: int) -> tuple[int, Frame] | None:
    """Searches the bytes after a damaged record for any frame that verifies with an LSN
    above ``lsn``. Runs only on damage; uses the fixed version/flags bytes as an anchor so the
    search runs at C speed rather than trying every offset from Python."""
    anchor = struct.pack("<HH", _frame.FRAME_VERSION, 0)
    position = data.find(anchor, offset + 1)
    while position != -1:
        start = position - 52
        if start > offset:
            peeked = _frame.peek_lsn(data, start)
            if peeked is not None and peeked[0] > lsn:
                try:
                    found = _frame.decode(data, start)
                except FrameError:
                    pass
                else:
                    return start, found
        position = data.find(anchor, position + 1)
    return None


def _skip_frame(data: bytes, offset: int, lsn: int) -> tuple[int, bytes] | None:
    """(offset after, stored checksum) of the frame at ``offset`` if its header is plausible for
    ``lsn``; None to fall back to a full decode (which then reports whatever is wrong)."""
    if offset + HEADER_BYTES > len(data):
        return None
    digest, _, found_lsn, _, size, version, flags = _frame.HEADER.unpack_from(data, offset)
    end = offset + HEADER_BYTES + size
    if found_lsn != lsn or version != _frame.FRAME_VERSION or flags or end > len(data):
        return None
    return end, digest


def scan(
    directory: Path,
    result: ScanResult,
    *,
    after_lsn: int = 0,
    after_checksum: bytes | None = None,
    truncate_torn_tail: bool = False,
    until_lsn: int | None = None,
) -> Iterator[Frame]:
    """Yields every valid record with LSN > ``after_lsn`` in order, filling ``result``.

    ``after_lsn``/``after_checksum`` describe the snapshot recovery starts from (0 and None for
    none). Raises LogCorrupt per the table above. With ``truncate_torn_tail`` a torn tail is cut
    off the last segment (and fsynced); without it, it is only reported in ``result.torn``.
    ``until_lsn`` stops after that record without reading further: a reader of a log that is
    still being written (the snapshot builder) must stop at what it knows to be durable.
    Records inside the snapshot image are walked by header only (``wallet wal verify`` scans
    from the start of the kept log to check them all).
    """
    segments = list_segments(directory)
    expected_lsn = after_lsn + 1
    expected_parent = after_checksum if after_lsn > 0 else ZERO_CHECKSUM
    result.next_lsn = expected_lsn
    result.last_checksum = expected_parent if expected_parent is not None else ZERO_CHECKSUM
    first_processed = True
    end_lsn = expected_lsn
    for index, (name_lsn, path) in enumerate(segments):
        is_last = index == len(segments) - 1
        if not is_last and segments[index + 1][0] <= after_lsn + 1:
            continue  # wholly inside the snapshot image
        data = path.read_bytes()
        # The first LSN this segment should account for: what the previous segment ended at,
        # or (for the first segment read) the lower of what its name and header claim.
        in_doubt = expected_lsn if not first_processed else name_lsn
        try:
            first_lsn, parent = decode_segment_header(data)
        except FrameError as error:
            raise LogCorrupt(path=path, offset=0, lsn=in_doubt, reason=str(error)) from None
        if first_lsn != name_lsn:
            raise LogCorrupt(
                path=path, offset=0, lsn=min(in_doubt, first_lsn),
                reason=f"segment header names first LSN {first_lsn}, file name says {name_lsn}",
            )
        if first_lsn > expected_lsn:
            raise LogCorrupt(
                path=path, offset=0, lsn=expected_lsn,
                reason=f"LSN gap: expected LSN {expected_lsn}, segment starts at {first_lsn}",
            )
        if first_lsn < expected_lsn and not first_processed:
            raise LogCorrupt(
                path=path, offset=0, lsn=first_lsn,
                reason=f"segments overlap: expected LSN {expected_lsn}, segment starts at {first_lsn}",
            )
        if first_lsn == expected_lsn and expected_parent is not None and parent != expected_parent:
            raise LogCorrupt(
                path=path, offset=0, lsn=first_lsn,
                reason="broken chain: segment parent does not match the previous record",
            )
        first_processed = False
        result.segments += 1
        if result.first_lsn is None:
            result.first_lsn = first_lsn
        offset = SEGMENT_HEADER_BYTES
        result.tail_path = path
        result.tail_offset = offset
        lsn_here = first_lsn
        parent_here = parent
        while offset < len(data):
            if until_lsn is not None and lsn_here > until_lsn:
                return
            if lsn_here < after_lsn:
                # Inside the snapshot image: walk the headers without verifying payloads (the
                # image already holds their effect). The record at ``after_lsn`` is verified in
                # full and must match the snapshot's checksum, which anchors the chain again.
                skipped = _skip_frame(data, offset, lsn_here)
                if skipped is not None:
                    offset, parent_here = skipped
                    lsn_here += 1
                    result.tail_path = path
                    result.tail_offset = offset
                    continue
            try:
                frame = _frame.decode(data, offset)
            except FrameError as error:
                follower = _find_valid_frame_after(data, offset, lsn_here - 1)
                if not is_last or follower is not None:
                    detail = str(error)
                    if follower is not None:
                        follower_offset, follower_frame = follower
                        detail += (
                            f"; a valid record (LSN {follower_frame.lsn}, part of the write that "
                            f"began at LSN {follower_frame.batch_lsn}) follows at offset "
                            f"{follower_offset}"
                        )
                    else:
                        detail += "; later segments exist"
                    raise LogCorrupt(path=path, offset=offset, lsn=lsn_here, reason=detail) from None
                message = (
                    f"torn tail in {path} at offset {offset} (LSN {lsn_here}): {error}; "
                    f"cutting {len(data) - offset} bytes that were never acknowledged"
                )
                result.torn.append(message)
                log.warning(message)
                if truncate_torn_tail:
                    with open(path, "r+b") as handle:
                        handle.truncate(offset)
                        handle.flush()
                        os.fsync(handle.fileno())
                break
            if frame.lsn != lsn_here:
                raise LogCorrupt(
                    path=path, offset=offset, lsn=lsn_here,
                    reason=f"LSN gap: expected LSN {lsn_here}, record says {frame.lsn}",
                )
            if frame.parent != parent_here:
                raise LogCorrupt(
                    path=path, offset=offset, lsn=lsn_here,
                    reason="broken chain: parent checksum does not match the previous record",
                )
            if frame.lsn == after_lsn and after_checksum is not None and frame.checksum != after_checksum:
                raise LogCorrupt(
                    path=path, offset=offset, lsn=frame.lsn,
                    reason="the snapshot's last record does not match the log at its LSN",
                )
            parent_here = frame.checksum
            lsn_here += 1
            offset += HEADER_BYTES + len(frame.payload)
            # Where the log would continue after this record (the repair tool cuts there).
            result.tail_path = path
            result.tail_offset = offset
            if frame.lsn <= after_lsn:
                continue  # already in the snapshot image
            result.records += 1
            result.next_lsn = frame.lsn + 1
            result.last_checksum = frame.checksum
            yield frame
        end_lsn = lsn_here
        expected_lsn = max(expected_lsn, lsn_here)
        if lsn_here > after_lsn:
            expected_parent = parent_here
        result.next_lsn = expected_lsn
        result.last_checksum = expected_parent if expected_parent is not None else ZERO_CHECKSUM
        result.tail_path = path
        result.tail_offset = offset
    if segments and end_lsn <= after_lsn:
        raise LogCorrupt(
            path=segments[-1][1], offset=0, lsn=end_lsn,
            reason=f"the log ends at LSN {end_lsn - 1}, before the snapshot's LSN {after_lsn}",
        )


def covered_segments(directory: Path, floor_lsn: int) -> list[Path]:
    """Segments whose every record has an LSN <= ``floor_lsn`` (so a snapshot and every other
    reader of the log have moved past them). Never the last segment: it is the one being
    written, and its existence is what tells recovery where the log continues."""
    segments = list_segments(directory)
    covered = []
    for (first_lsn, path), (next_first_lsn, _) in itertools.pairwise(segments):
        assert first_lsn < next_first_lsn
        if next_first_lsn - 1 <= floor_lsn:
            covered.append(path)
    return covered
