"""Tailing a log that another process is writing: complete, verified frames forward from an LSN,
never past an LSN the caller knows to be durable.

The history projector of ``wallet serve --workers N`` reads the segment files read-only while
the ledger process appends to them, so the bytes after the last durable record may be anything:
a write in progress, or a torn tail a crashed ledger left behind that its successor will cut
off and overwrite. Hence the rules, in the order ``Tailer.next`` applies them:

    | situation                                                    | decision                    |
    |--------------------------------------------------------------|-----------------------------|
    | the next LSN is above ``until_lsn`` (not known durable)      | return None; read nothing   |
    | buffered bytes were read when that LSN was not yet durable   | read them again from disk   |
    | the frame is in the current segment and verifies             | return it                   |
    | the current segment ends before the frame (the writer rolled)| open the segment named for  |
    |                                                              | the LSN; header must chain  |
    | durable, but neither here nor in a segment named for it      | LogCorrupt                  |
    | a durable frame fails its checksum, LSN or parent            | LogCorrupt                  |
    | the LSN to resume after is below the oldest segment          | Compacted (oldest LSN)      |
    | a segment vanishes between listing and opening (compaction)  | list again                  |

An open segment that compaction removes or archives stays readable through its descriptor, and
compaction only removes segments below what every reader has stored, so a tailer never needs a
removed segment except when it resumes from an LSN the log no longer holds (``Compacted``).
Reads are ``os.pread`` of at most ``READ_BYTES`` (or one frame) at a time; nothing is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from wal import _frame
from wal._frame import HEADER_BYTES, Frame, FrameError
from wal._segments import (
    SEGMENT_HEADER_BYTES,
    LogCorrupt,
    decode_segment_header,
    list_segments,
    segment_name,
)

READ_BYTES = 4 * 1024 * 1024  # one pread: many frames, a bounded buffer
_OPEN_ATTEMPTS = 8  # listings retried when compaction removes the segment just listed


class Compacted(Exception):
    """The records asked for were compacted away; ``oldest_lsn`` is the first the log holds."""

    def __init__(self, oldest_lsn: int) -> None:
        super().__init__(f"the log starts at LSN {oldest_lsn}")
        self.oldest_lsn = oldest_lsn


class Tailer:
    """Frames with LSN > ``after_lsn``, in order, one ``next(until_lsn)`` at a time."""

    def __init__(self, directory: Path, *, after_lsn: int) -> None:
        assert after_lsn >= 0
        self._directory = directory
        self.lsn = after_lsn  # the last LSN returned (or resumed after)
        self._fd: int | None = None
        self._path: Path | None = None
        self._offset = 0  # where the frame at self.lsn + 1 starts in the open segment
        self._parent = b""  # checksum of the record at self.lsn (once positioned)
        self._buffer = b""
        self._buffer_offset = 0  # file offset of _buffer[0]
        self._buffer_until = 0  # the until_lsn in force when _buffer was read

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Tailer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def next(self, until_lsn: int) -> Frame | None:
        """The frame at ``self.lsn + 1`` if that LSN is <= ``until_lsn`` (which the caller
        knows to be durable), else None. Raises LogCorrupt, Compacted."""
        lsn = self.lsn + 1
        if lsn > until_lsn:
            return None
        if self._fd is None:
            self._position()
        frame = self._frame(until_lsn)
        if frame is None:
            self._roll()
            frame = self._frame(until_lsn)
            if frame is None:
                raise self._corrupt("a durable record is missing from the segment named for it")
        if frame.lsn != lsn:
            raise self._corrupt(f"LSN gap: expected LSN {lsn}, record says {frame.lsn}")
        if frame.parent != self._parent:
            raise self._corrupt("broken chain: parent checksum does not match the previous record")
        self._offset += frame.size
        self._parent = frame.checksum
        self.lsn = lsn
        return frame

    # -- positioning -------------------------------------------------------------------------

    def _position(self) -> None:
        """Opens the segment holding ``self.lsn + 1`` and walks (verifying) to it."""
        wanted = self.lsn + 1
        for _ in range(_OPEN_ATTEMPTS):
            segments = list_segments(self._directory)
            if not segments:
                raise LogCorrupt(path=self._directory, offset=0, lsn=wanted, reason="the log has no segment")
            if segments[0][0] > wanted:
                raise Compacted(segments[0][0])
            first_lsn, path = [item for item in segments if item[0] <= wanted][-1]
            try:
                self._open(path, first_lsn)
            except FileNotFoundError:
                continue  # compacted between the listing and the open: list again
            break
        else:
            raise Compacted(list_segments(self._directory)[0][0])
        # Walk the records before ``wanted`` (all durable: the caller resumes after a stored LSN).
        target = self.lsn
        self.lsn = first_lsn - 1
        while self.lsn < target:
            if self.next(target) is None:
                raise self._corrupt(f"the segment ends before LSN {target}")

    def _open(self, path: Path, first_lsn: int) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            header = os.pread(fd, SEGMENT_HEADER_BYTES, 0)
            try:
                named, parent = decode_segment_header(header)
            except FrameError as error:
                raise LogCorrupt(path=path, offset=0, lsn=first_lsn, reason=str(error)) from None
            if named != first_lsn:
                raise LogCorrupt(path=path, offset=0, lsn=first_lsn,
                                 reason=f"segment header names first LSN {named}, file name says {first_lsn}")
        except BaseException:
            os.close(fd)
            raise
        self.close()
        self._fd = fd
        self._path = path
        self._offset = SEGMENT_HEADER_BYTES
        self._parent = parent
        self._buffer = b""
        self._buffer_offset = SEGMENT_HEADER_BYTES

    def _roll(self) -> None:
        """The writer started a new segment at ``self.lsn + 1``: it must exist and chain on."""
        lsn = self.lsn + 1
        path = self._directory / segment_name(lsn)
        parent = self._parent
        try:
            self._open(path, lsn)
        except FileNotFoundError:
            raise self._corrupt(f"LSN {lsn} is durable but neither here nor in {path.name}") from None
        if self._parent != parent:
            raise self._corrupt("broken chain: segment parent does not match the previous record")

    # -- reading -----------------------------------------------------------------------------

    def _frame(self, until_lsn: int) -> Frame | None:
        """The frame at ``_offset`` of the open segment, None when the segment ends there."""
        head = self._bytes(self._offset, HEADER_BYTES, until_lsn)
        if len(head) < HEADER_BYTES:
            if head:
                raise self._corrupt(f"a durable record's header is cut ({len(head)} bytes)")
            return None
        _, _, _, _, size, _, _ = _frame.HEADER.unpack_from(head)
        if size > _frame.PAYLOAD_BYTES_MAX:
            raise self._corrupt(f"payload size {size} exceeds the limit")
        data = self._bytes(self._offset, HEADER_BYTES + size, until_lsn)
        try:
            return _frame.decode(data, 0)
        except FrameError as error:
            raise self._corrupt(str(error)) from None

    def _bytes(self, offset: int, count: int, until_lsn: int) -> memoryview:
        """``count`` bytes at ``offset`` (fewer at the end of the file). Buffered bytes are used
        only if they were read once the record at ``self.lsn + 1`` was durable: anything past
        the durable end may have been a torn write that a restarted ledger overwrote since."""
        start = offset - self._buffer_offset
        if self._buffer_until < self.lsn + 1 or start < 0 or start + count > len(self._buffer):
            assert self._fd is not None
            self._buffer = os.pread(self._fd, max(count, READ_BYTES), offset)
            self._buffer_offset = offset
            self._buffer_until = until_lsn
            start = 0
        return memoryview(self._buffer)[start : start + count]

    def _corrupt(self, reason: str) -> LogCorrupt:
        return LogCorrupt(path=self._path or self._directory, offset=self._offset, lsn=self.lsn + 1, reason=reason)
