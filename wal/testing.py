"""Helpers for testing code that reads or writes the log (shipped, like ``trio.testing``): write
real logs with a real ``WriteAheadLog`` (under any anyio backend), read segment files back frame
by frame, and damage them in precise places.

Nothing here knows what a payload means; payloads are made-up bytes. Nothing here is used by
the log itself.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

import wal
from wal import SEGMENT_HEADER_BYTES, ZERO_CHECKSUM, Frame, ScanResult, WriteAheadLog


def payload_for(lsn: int, size: int | None = None) -> bytes:
    """A recognisable payload for ``lsn`` (``size`` bytes long when given)."""
    text = f"record {lsn}|".encode()
    if size is None:
        size = 10 + (lsn * 7) % 50
    return (text * (size // len(text) + 1))[:size]


async def write_log(
    directory: Path,
    batches: Sequence[Sequence[bytes]],
    *,
    next_lsn: int = 1,
    parent: bytes = ZERO_CHECKSUM,
    tail_path: Path | None = None,
    tail_offset: int = 0,
    segment_bytes_max: int = wal.SEGMENT_BYTES_MAX,
    sync: Callable[[int], None] = os.fdatasync,
) -> list[int]:
    """Runs a WriteAheadLog to completion: each inner sequence is appended at once and flushed,
    so it becomes exactly one group-commit write. Returns the LSNs assigned, in order."""
    log = WriteAheadLog(
        directory,
        next_lsn=next_lsn,
        parent=parent,
        tail_path=tail_path,
        tail_offset=tail_offset,
        segment_bytes_max=segment_bytes_max,
        sync=sync,
    )
    lsns: list[int] = []
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(log.run)
            for batch in batches:
                for payload in batch:
                    lsns.append(log.append(payload))
                await log.flush()
                assert log.durable_lsn == log.last_lsn
            log.close()
    finally:
        log.release()
    assert log.failed is None
    return lsns


async def continue_log(directory: Path, result: ScanResult, batches: Sequence[Sequence[bytes]],
                       **options: Any) -> list[int]:
    """Appends after what a scan found, the way the ledger does on start."""
    return await write_log(
        directory,
        batches,
        next_lsn=result.next_lsn,
        parent=result.last_checksum,
        tail_path=result.tail_path,
        tail_offset=result.tail_offset,
        **options,
    )


def frames_in(path: Path) -> list[tuple[int, Frame]]:
    """(offset, frame) of every frame of an undamaged segment file."""
    data = path.read_bytes()
    wal.decode_segment_header(data)
    offset = SEGMENT_HEADER_BYTES
    found: list[tuple[int, Frame]] = []
    while offset < len(data):
        frame = wal.decode(data, offset)
        found.append((offset, frame))
        offset += frame.size
    return found


def all_frames(directory: Path) -> list[Frame]:
    return [frame for _, path in wal.list_segments(directory) for _, frame in frames_in(path)]


def segment_paths(directory: Path) -> list[Path]:
    return [path for _, path in wal.list_segments(directory)]


def scan_all(directory: Path, **options: Any) -> tuple[list[Frame], ScanResult]:
    result = ScanResult()
    frames = list(wal.scan(directory, result, **options))
    return frames, result


def scan_until_error(directory: Path, **options: Any) -> tuple[list[Frame], wal.LogCorrupt]:
    """Scans a log that must be refused; returns what was yielded before the refusal."""
    result = ScanResult()
    frames: list[Frame] = []
    try:
        for frame in wal.scan(directory, result, **options):
            frames.append(frame)
    except wal.LogCorrupt as error:
        return frames, error
    raise AssertionError(f"scan accepted a damaged log: {result}")


def flip_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def replace_bytes(path: Path, offset: int, new: bytes) -> None:
    data = bytearray(path.read_bytes())
    assert offset + len(new) <= len(data)
    data[offset : offset + len(new)] = new
    path.write_bytes(bytes(data))


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)


def copy_log(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def last_lsn_on_disk(directory: Path) -> int:
    """The LSN of the last complete frame in the newest segment (0 when there is none)."""
    segments = wal.list_segments(directory)
    if not segments:
        return 0
    first_lsn, path = segments[-1]
    frames = frames_in(path)
    return frames[-1][1].lsn if frames else first_lsn - 1


# -- a replicated log in memory (cluster mode's members, ``server._member``) ----------------------


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    data: bytes
    headers: dict[str, str]


class FakeStream:
    """The JetStream semantics cluster mode relies on, in memory and deterministic: one ordered
    stream per name, an append fenced on the last sequence, a repeated message id answered with
    its first sequence (the duplicate window), and core subjects delivered at once. Faults:
    ``unavailable`` makes every append raise ``LogUnavailable`` (no quorum); ``reads_unavailable``
    does the same to reads (``fetch``, ``last_sequence``, ``message``: a leader being elected);
    ``lose_ack``, when set, is asked about every message just stored and, when it answers True,
    the append raises ``LogUnavailable`` all the same (stored, but the ack was lost: the
    uncertain outcome). ``idle_wait`` is how an empty ``fetch`` waits (the deterministic
    simulation makes it return at once)."""

    def __init__(self) -> None:
        self.streams: dict[str, list[StoredMessage]] = {}
        self.subjects: dict[str, str] = {}
        self.ids: dict[tuple[str, str], int] = {}
        self.listeners: dict[str, list[Callable[[bytes], None]]] = {}
        self.unavailable = False
        self.reads_unavailable = False
        self.lose_ack: Callable[[StoredMessage], bool] | None = None
        self.idle_wait: Callable[[float], None] = time.sleep
        self.lock = threading.Lock()

    def client(self) -> FakeStreamClient:
        return FakeStreamClient(self)


class FakeStreamClient:
    """``wal.StreamClient``'s methods over a ``FakeStream``."""

    def __init__(self, stream: FakeStream) -> None:
        self._stream = stream

    def connect(self, timeout_s: float = 10) -> None:
        pass

    def close(self) -> None:
        pass

    def ensure_stream(self, stream: str, subject: str, *, replicas: int = 3) -> None:
        with self._stream.lock:
            self._stream.streams.setdefault(stream, [])
            self._stream.subjects[subject] = stream

    def publish(self, subject: str, data: bytes, *, expected_last_seq: int, msg_id: str,
                headers: dict[str, str] | None = None, timeout_s: float = 30) -> int:
        state = self._stream
        with state.lock:
            if state.unavailable:
                raise wal.LogUnavailable("no quorum (injected)")
            name = state.subjects[subject]
            messages = state.streams[name]
            known = state.ids.get((name, msg_id))
            if known is not None:
                return known
            if len(messages) != expected_last_seq:
                raise wal.Fenced(f"wrong last sequence: {len(messages)}, expected {expected_last_seq}")
            seq = len(messages) + 1
            stored = StoredMessage(seq, bytes(data), dict(headers or {}, **{"Nats-Msg-Id": msg_id}))
            messages.append(stored)
            state.ids[(name, msg_id)] = seq
            if state.lose_ack is not None and state.lose_ack(stored):
                raise wal.LogUnavailable(f"sequence {seq} stored, its ack lost (injected)")
            return seq

    def _readable(self) -> None:
        if self._stream.reads_unavailable:
            raise wal.LogUnavailable("no stream leader (injected)")

    def last_sequence(self, stream: str) -> int:
        self._readable()
        with self._stream.lock:
            return len(self._stream.streams[stream])

    def fetch(self, stream: str, from_seq: int, *, max_messages: int = 1000, wait_s: float = 1.0,
              max_bytes: int = 64 * 1024 * 1024) -> list[StoredMessage]:
        self._readable()
        with self._stream.lock:
            found: list[StoredMessage] = []
            size = 0
            for message in self._stream.streams[stream][from_seq - 1:from_seq - 1 + max_messages]:
                if found and size + len(message.data) > max_bytes:
                    break
                found.append(message)
                size += len(message.data)
        if not found:
            self._stream.idle_wait(min(wait_s, 0.01))
        return found

    def message(self, stream: str, seq: int) -> StoredMessage | None:
        self._readable()
        with self._stream.lock:
            messages = self._stream.streams[stream]
            return messages[seq - 1] if 1 <= seq <= len(messages) else None

    def stream_leader(self, stream: str) -> str | None:
        return "fake"

    def publish_core(self, subject: str, data: bytes) -> None:
        for listener in list(self._stream.listeners.get(subject, [])):
            listener(data)

    def subscribe_core(self, subject: str, callback: Callable[[bytes], None]) -> None:
        self._stream.listeners.setdefault(subject, []).append(callback)


@contextmanager
def connected(urls: list[str], name: str) -> Iterator[wal.StreamClient]:
    """A ``wal.StreamClient`` connected to the JetStream nodes at ``urls``, closed on exit."""
    client = wal.StreamClient(urls, name=name)
    client.connect()
    try:
        yield client
    finally:
        client.close()
