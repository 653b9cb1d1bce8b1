"""The snapshot store: image files of the ledger at an LSN, written atomically, listed, loaded
and pruned. It moves bytes the ledger encoded and never looks inside them; it must never import
``ledger`` or ``wal``, read a clock (the caller passes ``created_at_us``) or hold a body in memory
twice while writing. Its invariants: a final name (``<lsn:020d>.snap``) only ever holds a
complete, fsynced file (temp file, fsync, rename, fsync directory), and nothing is returned as
valid unless its header checksum and body checksum verify.

A snapshot file is a fixed 112-byte header followed by the body. Integers are little-endian.

    offset size field
    0      8    magic          b"WLEDGSNP"
    8      4    version        file format version (``FORMAT_VERSION``)
    12     4    flags          reserved, must be 0
    16     8    lsn            the last log record the image contains (0: empty ledger)
    24     8    records        how many entities the body holds (for progress reports)
    32     8    body_bytes     body length, at most ``BODY_BYTES_MAX``
    40     16   body_checksum  blake2b-128 of the body
    56     16   log_checksum   checksum of the WAL record at ``lsn`` (zeros when lsn is 0), so
                               recovery can continue the log's hash chain after the image
    72     16   state_digest   the ledger's digest of the state, checked again after decoding
    88     8    created_at_us  signed, the caller's clock
    96     16   checksum       blake2b-128 of bytes [0, 96)

Writing (``write_snapshot``) streams the body into ``<lsn:020d>.<random>.snap.tmp`` behind a
zeroed header, fills in the header, fsyncs the file, renames it to the final name and fsyncs the
directory. A process that dies at any step leaves at worst a temp file, which every reader
ignores and ``prune`` removes; the previous snapshots are untouched until ``prune`` runs after a
successful write. One writer per directory is assumed (the server owns its data directory).

What a failure means (``SnapshotCorrupt.reason`` says which row):

    | where                  | failure                                    | outcome                        |
    |------------------------|--------------------------------------------|--------------------------------|
    | read_header/_snapshot  | file shorter than the header               | SnapshotCorrupt (torn/foreign) |
    | read_header/_snapshot  | wrong magic                                | SnapshotCorrupt (foreign file) |
    | read_header/_snapshot  | header checksum mismatch                   | SnapshotCorrupt (bit rot)      |
    | read_header/_snapshot  | unknown version or non-zero flags          | SnapshotCorrupt (newer writer) |
    | read_header/_snapshot  | lsn differs from the file name's lsn       | SnapshotCorrupt (misnamed)     |
    | read_header/_snapshot  | lsn 0 with a non-zero log checksum         | SnapshotCorrupt (impossible)   |
    | read_header/_snapshot  | body_bytes over ``BODY_BYTES_MAX``         | SnapshotCorrupt (impossible)   |
    | read_header/_snapshot  | file size is not header + body_bytes       | SnapshotCorrupt (truncated)    |
    | read_header/_snapshot  | the file cannot be read (OSError)          | SnapshotCorrupt (bad disk)     |
    | read_snapshot          | body checksum mismatch                     | SnapshotCorrupt (bit rot)      |
    | list_snapshots         | any of the header rows above               | listed with ``header=None``    |
    | load_newest            | newest snapshot damaged                    | skipped, reported, next older  |
    | load_newest            | no snapshot verifies                       | ``snapshot=None``: replay all  |
    | list/load/prune        | directory missing                          | treated as empty               |
    | write_snapshot         | body over ``BODY_BYTES_MAX``               | SnapshotTooLarge, temp removed |
    | write_snapshot         | OSError (disk full, EIO)                   | raised as is, temp removed     |
    | write_snapshot         | the process dies (or a BaseException)      | temp file left for ``prune``   |
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"WLEDGSNP"
FORMAT_VERSION = 1
CHECKSUM_BYTES = 16
ZERO_CHECKSUM = bytes(CHECKSUM_BYTES)
HEADER_BYTES = 112
# The body is read into memory whole on load; past this size the design needs to change
# (stream-decode from the file) before the limit is raised.
BODY_BYTES_MAX = 16 * 1024**3
SUFFIX = ".snap"
TEMP_SUFFIX = ".snap.tmp"
KEEP_DEFAULT = 2
# Snapshots are the service user's alone: files 0600 (``tempfile.mkstemp`` creates the temp file
# with exactly that mode, and the rename keeps it), directories 0700 (the caller creates them).
FILE_MODE = 0o600
DIRECTORY_MODE = 0o700
# The steps after which ``write_snapshot`` calls its crash hook, in order.
STEPS = ("temp-written", "file-synced", "renamed")
# Block size for streaming a body through the checksum without loading it whole.
_READ_BLOCK_BYTES = 1024 * 1024
_NAME = re.compile(r"([0-9]{20})\.snap")
_LSN_MAX = 2**64 - 1
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

_HEADER = struct.Struct("<8sIIQQQ16s16s16sq16s")
# The header without its trailing checksum: what the checksum covers.
_COVERED = struct.Struct("<8sIIQQQ16s16s16sq")

assert len(MAGIC) == 8
assert _HEADER.size == HEADER_BYTES
assert _COVERED.size == HEADER_BYTES - CHECKSUM_BYTES
assert len(f"{_LSN_MAX:020d}") == 20  # every u64 LSN fits the fixed-width name
assert TEMP_SUFFIX.endswith(".tmp")
assert not _NAME.fullmatch("0" * 20 + TEMP_SUFFIX)  # a temp file never looks like a snapshot


def _checksum(data: bytes | memoryview) -> bytes:
    # The same call as wal's frame checksum, copied: this package must not import wal.
    return hashlib.blake2b(data, digest_size=CHECKSUM_BYTES).digest()


class SnapshotCorrupt(Exception):
    """The file at ``path`` is not a valid snapshot (damaged, truncated, unreadable or foreign)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class SnapshotTooLarge(Exception):
    """The caller handed ``write_snapshot`` a body larger than ``BODY_BYTES_MAX``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Header:
    """A snapshot's verified header."""

    lsn: int
    records: int
    body_bytes: int
    body_checksum: bytes
    log_checksum: bytes
    state_digest: bytes
    created_at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotInfo:
    """A snapshot file as listed: its header if the header verifies, otherwise why not.

    The body is not read: a valid header does not mean a valid body (``load_newest`` checks)."""

    path: Path
    lsn: int
    size: int  # of the whole file, in bytes
    header: Header | None
    reason: str | None

    @property
    def valid(self) -> bool:
        return self.header is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """A snapshot whose header and body both verified."""

    path: Path
    header: Header
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Loaded:
    """What ``load_newest`` found: the newest snapshot that verifies (None when none does, so
    recovery starts from an empty state) and the newer ones it skipped as ``(path, reason)``,
    newest first. A non-empty ``skipped`` deserves a warning: the log suffix to replay is longer."""

    snapshot: Snapshot | None
    skipped: tuple[tuple[Path, str], ...]


def snapshot_name(lsn: int) -> str:
    assert 0 <= lsn <= _LSN_MAX
    return f"{lsn:020d}{SUFFIX}"


def _pack_header(header: Header) -> bytes:
    covered = _COVERED.pack(
        MAGIC, FORMAT_VERSION, 0, header.lsn, header.records, header.body_bytes,
        header.body_checksum, header.log_checksum, header.state_digest, header.created_at_us,
    )
    packed = covered + _checksum(covered)
    assert len(packed) == HEADER_BYTES
    return packed


def _unpack_header(path: Path, data: bytes, file_bytes: int) -> Header:
    """Verifies the header bytes ``data`` of the file at ``path`` whose size is ``file_bytes``."""
    if len(data) < HEADER_BYTES:
        raise SnapshotCorrupt(path, f"file too short for the header: {len(data)} of {HEADER_BYTES} bytes")
    # Magic first: a foreign file is better reported as such than as a checksum mismatch.
    if data[: len(MAGIC)] != MAGIC:
        raise SnapshotCorrupt(path, "wrong magic: not a snapshot file")
    (magic, version, flags, lsn, records, body_bytes, body_checksum, log_checksum, state_digest,
     created_at_us, checksum) = _HEADER.unpack_from(data)
    assert magic == MAGIC
    if _checksum(data[: _COVERED.size]) != checksum:
        raise SnapshotCorrupt(path, "header checksum mismatch")
    # Only trust the fields once the checksum verified them.
    if version != FORMAT_VERSION:
        raise SnapshotCorrupt(path, f"unknown format version {version}")
    if flags != 0:
        raise SnapshotCorrupt(path, f"unknown flags {flags:#x}")
    named = _NAME.fullmatch(path.name)
    if named is not None and int(named.group(1)) != lsn:
        raise SnapshotCorrupt(path, f"the file is named for LSN {int(named.group(1))} but holds LSN {lsn}")
    if lsn == 0 and log_checksum != ZERO_CHECKSUM:
        raise SnapshotCorrupt(path, "LSN 0 with a non-zero log checksum")
    if body_bytes > BODY_BYTES_MAX:
        raise SnapshotCorrupt(path, f"body size {body_bytes} exceeds the limit {BODY_BYTES_MAX}")
    if file_bytes != HEADER_BYTES + body_bytes:
        raise SnapshotCorrupt(
            path, f"file is {file_bytes} bytes, the header says {HEADER_BYTES + body_bytes} (truncated?)"
        )
    return Header(
        lsn=lsn, records=records, body_bytes=body_bytes, body_checksum=body_checksum,
        log_checksum=log_checksum, state_digest=state_digest, created_at_us=created_at_us,
    )


def fsync_directory(directory: Path) -> None:
    # The same as wal's, copied: this package must not import wal.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(
    directory: Path,
    *,
    lsn: int,
    records: int,
    log_checksum: bytes,
    state_digest: bytes,
    created_at_us: int,
    chunks: Iterable[bytes],
    _crash_hook: Callable[[str], None] | None = None,
) -> SnapshotInfo:
    """Writes the body ``chunks`` as the snapshot at ``lsn`` in ``directory`` (which must exist),
    atomically and durably; returns its listing. Chunks are streamed: each is written and
    hashed, then dropped. ``_crash_hook`` is for tests: it is called with each name in ``STEPS``
    and simulates a crash by raising a ``BaseException``.

    Does not prune: the caller calls ``prune`` once the new snapshot is safely in place."""
    assert 0 <= lsn <= _LSN_MAX
    assert 0 <= records <= _LSN_MAX
    assert len(log_checksum) == CHECKSUM_BYTES
    assert len(state_digest) == CHECKSUM_BYTES
    if lsn == 0:
        assert log_checksum == ZERO_CHECKSUM
    assert _INT64_MIN <= created_at_us <= _INT64_MAX
    directory = Path(directory)
    final = directory / snapshot_name(lsn)
    # A unique temp name: a leftover from a crash never collides with this write.
    fd, temp_name = tempfile.mkstemp(prefix=f"{lsn:020d}.", suffix=TEMP_SUFFIX, dir=directory)
    temp = Path(temp_name)
    assert os.stat(fd).st_mode & 0o777 == FILE_MODE, oct(os.stat(fd).st_mode)
    try:
        with open(fd, "wb") as file:
            # Reserve the header and fill it in once the body's size and checksum are known:
            # the alternative (a trailer) would make the reader seek to the end before trusting
            # anything. Until the rename, a zeroed header makes the temp file invalid anyway.
            file.write(bytes(HEADER_BYTES))
            body_hash = hashlib.blake2b(digest_size=CHECKSUM_BYTES)
            body_bytes = 0
            for chunk in chunks:
                body_bytes += len(chunk)
                if body_bytes > BODY_BYTES_MAX:
                    raise SnapshotTooLarge(f"snapshot body exceeds {BODY_BYTES_MAX} bytes")
                body_hash.update(chunk)
                file.write(chunk)
            header = Header(
                lsn=lsn, records=records, body_bytes=body_bytes, body_checksum=body_hash.digest(),
                log_checksum=log_checksum, state_digest=state_digest, created_at_us=created_at_us,
            )
            file.seek(0)
            file.write(_pack_header(header))
            file.flush()
            if _crash_hook is not None:
                _crash_hook("temp-written")
            os.fsync(file.fileno())
        if _crash_hook is not None:
            _crash_hook("file-synced")
        os.replace(temp, final)
    except Exception:
        # A failure the process survives (disk full, EIO, a bad chunk): do not leave a
        # half-written file taking space. A real crash (or a test's BaseException) skips this;
        # the temp file is then ignored by readers and removed by ``prune``.
        temp.unlink(missing_ok=True)
        raise
    if _crash_hook is not None:
        _crash_hook("renamed")
    # Without this the rename itself may not survive a power cut. The file is complete either
    # way: the old snapshots are still there, and the log still holds what this one covers.
    fsync_directory(directory)
    info = SnapshotInfo(path=final, lsn=lsn, size=HEADER_BYTES + body_bytes, header=header, reason=None)
    return info


def read_header(path: Path) -> Header:
    """Reads and verifies the header of the snapshot at ``path`` (not the body)."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            file_bytes = os.fstat(file.fileno()).st_size
            data = file.read(HEADER_BYTES)
    except OSError as error:
        raise SnapshotCorrupt(path, f"unreadable: {error}") from None
    return _unpack_header(path, data, file_bytes)


def read_snapshot(path: Path) -> tuple[Header, bytes]:
    """Reads the snapshot at ``path``, verifying header and body; returns (header, body)."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            file_bytes = os.fstat(file.fileno()).st_size
            header = _unpack_header(path, file.read(HEADER_BYTES), file_bytes)
            body = file.read(header.body_bytes)
    except OSError as error:
        raise SnapshotCorrupt(path, f"unreadable: {error}") from None
    if len(body) != header.body_bytes:
        # The file shrank between fstat and read.
        raise SnapshotCorrupt(path, f"body is {len(body)} bytes, the header says {header.body_bytes}")
    if _checksum(body) != header.body_checksum:
        raise SnapshotCorrupt(path, "body checksum mismatch")
    return header, body


def _verify_body(path: Path) -> Header:
    """Like ``read_snapshot`` but streams the body through the checksum without keeping it."""
    try:
        with open(path, "rb") as file:
            file_bytes = os.fstat(file.fileno()).st_size
            header = _unpack_header(path, file.read(HEADER_BYTES), file_bytes)
            body_hash = hashlib.blake2b(digest_size=CHECKSUM_BYTES)
            remaining = header.body_bytes
            while remaining > 0:
                block = file.read(min(remaining, _READ_BLOCK_BYTES))
                if not block:
                    raise SnapshotCorrupt(path, f"body ends {remaining} bytes early")
                body_hash.update(block)
                remaining -= len(block)
    except OSError as error:
        raise SnapshotCorrupt(path, f"unreadable: {error}") from None
    if body_hash.digest() != header.body_checksum:
        raise SnapshotCorrupt(path, "body checksum mismatch")
    return header


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def list_snapshots(directory: Path) -> list[SnapshotInfo]:
    """Every file named like a snapshot in ``directory``, newest (highest LSN) first, with its
    header verified (bodies are not read). Temp files and other names are ignored."""
    directory = Path(directory)
    found = []
    for name in _names(directory):
        named = _NAME.fullmatch(name)
        if named is None:
            continue
        path = directory / name
        try:
            size = path.stat().st_size
        except OSError:
            size = 0  # vanished or unreadable: read_header reports why
        try:
            header: Header | None = read_header(path)
            reason = None
        except SnapshotCorrupt as error:
            header, reason = None, error.reason
        found.append(SnapshotInfo(path=path, lsn=int(named.group(1)), size=size, header=header, reason=reason))
    found.sort(key=lambda info: info.lsn, reverse=True)
    return found


def load_newest(directory: Path) -> Loaded:
    """The newest snapshot in ``directory`` whose header and body verify, and the damaged newer
    ones skipped on the way (see ``Loaded``)."""
    skipped: list[tuple[Path, str]] = []
    for info in list_snapshots(directory):
        if info.header is None:
            assert info.reason is not None
            skipped.append((info.path, info.reason))
            continue
        try:
            header, body = read_snapshot(info.path)
        except SnapshotCorrupt as error:
            skipped.append((info.path, error.reason))
            continue
        assert header.lsn == info.lsn
        return Loaded(snapshot=Snapshot(path=info.path, header=header, body=body), skipped=tuple(skipped))
    return Loaded(snapshot=None, skipped=tuple(skipped))


def prune(directory: Path, keep: int = KEEP_DEFAULT) -> list[Path]:
    """Removes every snapshot but the newest ``keep`` that fully verify (header and body), and
    every leftover temp file; returns what it removed. Damaged snapshots are removed too: they
    can never be loaded. The newest valid snapshot is therefore never removed.

    Bodies are checked by streaming them, newest first, until ``keep`` verify, so a snapshot
    with a valid header but a rotten body never takes the place of a good one."""
    assert keep >= 1
    directory = Path(directory)
    removed = []
    for name in _names(directory):
        if name.endswith(TEMP_SUFFIX):
            path = directory / name
            path.unlink(missing_ok=True)
            removed.append(path)
    kept = 0
    for info in list_snapshots(directory):
        if kept < keep and info.valid:
            try:
                _verify_body(info.path)
            except SnapshotCorrupt:
                pass
            else:
                kept += 1
                continue
        info.path.unlink(missing_ok=True)
        removed.append(info.path)
    # No directory fsync: a removal lost to a power cut only brings back a file prune removes
    # again next time.
    return removed
