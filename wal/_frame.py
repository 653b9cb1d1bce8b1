"""Record framing for the write-ahead log: bytes in, bytes out, nothing about the ledger.

A frame is a fixed 56-byte header followed by the payload (opaque bytes; the ledger puts
msgpack there). All integers are little-endian.

    offset size field
    0      16   checksum   blake2b-128 of bytes [16, 56 + size): the rest of the header + payload
    16     16   parent     checksum of the previous record in the log (zeros before LSN 1)
    32     8    lsn        log sequence number, dense and strictly increasing from 1
    40     8    batch_lsn  first LSN of the group-commit write this record was part of
    48     4    size       payload length in bytes, at most ``PAYLOAD_BYTES_MAX``
    52     2    version    frame format version (``FRAME_VERSION``)
    54     2    flags      reserved, must be 0

The checksum covers every byte of the frame except itself, so any single-bit flip anywhere in a
frame is detected (tests flip every bit). ``parent`` chains the records: a record that verifies
on its own but does not follow its predecessor is caught. ``batch_lsn`` is diagnostic: when
damage is followed by valid records, the refusal message (and ``wallet wal repair``) says
whether they were part of the same group-commit write as the damaged one. Recovery does not act
on it: a fully fsynced (acknowledged) write hit by bit rot looks the same as a write torn by a
power cut, and only refusing is safe for both.

This module must never do I/O or know what a payload means.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

FRAME_VERSION = 1
CHECKSUM_BYTES = 16
ZERO_CHECKSUM = bytes(CHECKSUM_BYTES)
HEADER = struct.Struct("<16s16sQQIHH")
HEADER_BYTES = 56
PAYLOAD_BYTES_MAX = 16 * 1024 * 1024
# The tail of the header that the checksum covers, after the checksum itself.
_COVERED = struct.Struct("<16sQQIHH")

assert HEADER.size == HEADER_BYTES
assert _COVERED.size == HEADER_BYTES - CHECKSUM_BYTES


def checksum(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=CHECKSUM_BYTES).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    lsn: int
    batch_lsn: int
    parent: bytes
    checksum: bytes
    payload: bytes

    @property
    def size(self) -> int:
        return HEADER_BYTES + len(self.payload)


def encode(*, lsn: int, batch_lsn: int, parent: bytes, payload: bytes) -> tuple[bytes, bytes]:
    """Returns (frame bytes, checksum of the frame)."""
    assert lsn >= 1
    assert 1 <= batch_lsn <= lsn
    assert len(parent) == CHECKSUM_BYTES
    assert len(payload) <= PAYLOAD_BYTES_MAX
    covered = _COVERED.pack(parent, lsn, batch_lsn, len(payload), FRAME_VERSION, 0) + payload
    digest = checksum(covered)
    return digest + covered, digest


class FrameError(Exception):
    """The bytes at this place are not a valid frame (damaged, torn, or not a frame at all)."""


def decode(buffer: bytes | memoryview, offset: int) -> Frame:
    """Decodes the frame that starts at ``offset``. Raises FrameError when it does not verify.

    A frame whose header or payload runs past the end of the buffer raises FrameError too: the
    caller decides whether that is a torn tail or damage, from what follows.
    """
    end = len(buffer)
    if offset + HEADER_BYTES > end:
        raise FrameError(f"incomplete header: {end - offset} of {HEADER_BYTES} bytes")
    digest, parent, lsn, batch_lsn, size, version, flags = HEADER.unpack_from(buffer, offset)
    if size > PAYLOAD_BYTES_MAX:
        raise FrameError(f"payload size {size} exceeds the limit {PAYLOAD_BYTES_MAX}")
    if offset + HEADER_BYTES + size > end:
        raise FrameError(f"incomplete payload: frame needs {HEADER_BYTES + size} bytes")
    covered = memoryview(buffer)[offset + CHECKSUM_BYTES : offset + HEADER_BYTES + size]
    if checksum(covered) != digest:
        raise FrameError("checksum mismatch")
    # Only trust the fields once the checksum verified them.
    if version != FRAME_VERSION:
        raise FrameError(f"unknown frame version {version}")
    if flags != 0:
        raise FrameError(f"unknown flags {flags:#x}")
    if lsn < 1 or not 1 <= batch_lsn <= lsn:
        raise FrameError(f"impossible lsn {lsn} / batch_lsn {batch_lsn}")
    payload = bytes(buffer[offset + HEADER_BYTES : offset + HEADER_BYTES + size])
    return Frame(lsn=lsn, batch_lsn=batch_lsn, parent=parent, checksum=digest, payload=payload)


def peek_lsn(buffer: bytes | memoryview, offset: int) -> tuple[int, int] | None:
    """The unverified (lsn, batch_lsn) fields at ``offset``, or None if the header is cut."""
    if offset + HEADER_BYTES > len(buffer):
        return None
    _, _, lsn, batch_lsn, _, _, _ = HEADER.unpack_from(buffer, offset)
    return lsn, batch_lsn
