"""Helpers for testing code that reads or writes the log (shipped, like ``trio.testing``): write
real logs with a real ``WriteAheadLog`` (under any anyio backend), read segment files back frame
by frame, and damage them in precise places.

Nothing here knows what a payload means; payloads are made-up bytes. Nothing here is used by
the log itself.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
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
