"""A local copy of a replicated log, written by a standby from the stream's messages.

In cluster mode (``server._member``) an owner's group commit travels as one message: the very
frames it wrote to its own segment (``_frame``), LSNs, parents and checksums included. A standby
appends those bytes here, so its data directory holds the same log, byte for byte frame by frame,
and taking over is an ordinary recovery of that directory (``ledger._recovery``) followed by the
owner's WAL writer continuing at the next LSN. Nothing is re-framed, so the hash chain, the
snapshots that name an LSN and checksum, and ``wallet wal verify`` all hold on the copy.

Every frame is verified before it is written: it must decode, carry the next LSN and name the
previous record's checksum as its parent. Anything else means the stream is not the log we
think it is, and the standby must stop rather than take over with a wrong copy (``MirrorError``).

Writes are not fsynced one by one: the stream is what is durable (a quorum fsynced it before the
owner answered anyone); the copy only saves the standby from reading the whole stream again at
takeover. ``close`` fsyncs what was written, because the owner that takes over recovers from it.
"""

from __future__ import annotations

import os
from pathlib import Path

from wal import _frame
from wal._segments import DIRECTORY_MODE, FILE_MODE, encode_segment_header, segment_name
from wal._writer import SEGMENT_BYTES_MAX, fsync_directory


class MirrorError(Exception):
    """A message of the stream does not continue the copied log."""


class Mirror:
    """Appends verified frames to segment files in ``directory`` (which must hold no log yet),
    starting at LSN 1."""

    def __init__(self, directory: Path, *, segment_bytes_max: int = SEGMENT_BYTES_MAX) -> None:
        directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        if any(directory.iterdir()):
            raise MirrorError(f"{directory} is not empty: a mirror starts from an empty log")
        self.directory = directory
        self._segment_bytes_max = segment_bytes_max
        self._next_lsn = 1
        self._parent = _frame.ZERO_CHECKSUM
        self._fd = -1
        self._segment_bytes = 0

    @property
    def last_lsn(self) -> int:
        return self._next_lsn - 1

    def append(self, data: bytes) -> int:
        """Verifies and writes the frames of one message; returns the last LSN written."""
        offset = 0
        parent = self._parent
        lsn = self._next_lsn
        while offset < len(data):
            try:
                frame = _frame.decode(data, offset)
            except _frame.FrameError as error:
                raise MirrorError(f"a frame at byte {offset} of the message does not verify: {error}") from None
            if frame.lsn != lsn or frame.parent != parent:
                raise MirrorError(f"the message's frame has LSN {frame.lsn}, the copy expects {lsn} "
                                  "(or its parent is not the previous record)")
            parent = frame.checksum
            lsn += 1
            offset += frame.size
        if lsn == self._next_lsn:
            return self.last_lsn
        if self._fd < 0 or self._segment_bytes >= self._segment_bytes_max:
            self._start_segment(self._next_lsn)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._segment_bytes += len(data)
        self._next_lsn = lsn
        self._parent = parent
        return self.last_lsn

    def _start_segment(self, first_lsn: int) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
        path = self.directory / segment_name(first_lsn)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        header = encode_segment_header(first_lsn=first_lsn, parent=self._parent)
        os.write(self._fd, header)
        self._segment_bytes = len(header)
        fsync_directory(self.directory)

    def close(self) -> None:
        """Makes the copy durable and closes it (before recovery reads it)."""
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            fsync_directory(self.directory)
