"""The replication hook of the WAL writer and the standby's copy of the log (``wal.Mirror``):
what an owner sends is exactly what it wrote, and a copy built from those messages is the same
log (same frames, same chain), continuable by an ordinary writer."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import wal
from wal import Mirror, MirrorError, WriteAheadLog
from wal.testing import all_frames, continue_log, payload_for, scan_all


async def _write_replicated(directory: Path, batches: list[list[bytes]], **options: object) -> list[tuple[int, int, bytes]]:
    sent: list[tuple[int, int, bytes]] = []
    log = WriteAheadLog(directory, next_lsn=1, parent=wal.ZERO_CHECKSUM,
                        replicate=lambda first, last, data: sent.append((first, last, data)), **options)  # type: ignore[arg-type]
    async with anyio.create_task_group() as group:
        group.start_soon(log.run)
        for batch in batches:
            for payload in batch:
                log.append(payload)
            await log.flush()
        log.close()
    log.release()
    return sent


async def test_each_group_commit_is_replicated_once_as_written(tmp_path: Path) -> None:
    batches = [[payload_for(lsn) for lsn in range(start, start + size)] for start, size in ((1, 3), (4, 1), (5, 7))]
    sent = await _write_replicated(tmp_path / "owner", batches)
    assert [(first, last) for first, last, _ in sent] == [(1, 3), (4, 4), (5, 11)]
    written = b"".join(path.read_bytes()[wal.SEGMENT_HEADER_BYTES:] for path in sorted((tmp_path / "owner").iterdir()))
    assert b"".join(data for _, _, data in sent) == written


async def test_a_failed_replication_acknowledges_nothing(tmp_path: Path) -> None:
    def refuse(first: int, last: int, data: bytes) -> None:
        raise OSError("the stream refused it")

    log = WriteAheadLog(tmp_path, next_lsn=1, parent=wal.ZERO_CHECKSUM, replicate=refuse)
    async with anyio.create_task_group() as group:
        group.start_soon(log.run)
        lsn = log.append(b"one")
        with pytest.raises(wal.StorageFailed):
            await log.wait_durable(lsn)
    assert log.durable_lsn == 0
    log.release()


async def test_the_copy_is_the_same_log_and_an_owner_continues_it(tmp_path: Path) -> None:
    batches = [[payload_for(lsn, 300) for lsn in range(start, start + 5)] for start in range(1, 40, 5)]
    sent = await _write_replicated(tmp_path / "owner", batches, segment_bytes_max=2_000)
    mirror = Mirror(tmp_path / "copy" / "wal", segment_bytes_max=3_000)
    for _, last, data in sent:
        assert mirror.append(data) == last
    mirror.close()
    original, copied = all_frames(tmp_path / "owner"), all_frames(tmp_path / "copy" / "wal")
    assert [(f.lsn, f.checksum, f.payload) for f in copied] == [(f.lsn, f.checksum, f.payload) for f in original]
    frames, result = scan_all(tmp_path / "copy" / "wal")
    assert result.next_lsn == 41 and not result.torn
    # The member that took over continues the copy with an ordinary writer.
    await continue_log(tmp_path / "copy" / "wal", result, [[b"after takeover"]])
    frames, result = scan_all(tmp_path / "copy" / "wal")
    assert frames[-1].lsn == 41 and frames[-1].payload == b"after takeover"


async def test_the_copy_refuses_a_gap_a_replay_and_damage(tmp_path: Path) -> None:
    sent = await _write_replicated(tmp_path / "owner", [[b"a", b"b"], [b"c"], [b"d"]])
    mirror = Mirror(tmp_path / "copy")
    with pytest.raises(MirrorError):
        mirror.append(sent[1][2])  # LSN 3 before 1
    mirror.append(sent[0][2])
    with pytest.raises(MirrorError):
        mirror.append(sent[0][2])  # the same message again
    damaged = bytearray(sent[1][2])
    damaged[-1] ^= 1
    with pytest.raises(MirrorError):
        mirror.append(bytes(damaged))
    assert mirror.append(sent[1][2]) == 3
    mirror.close()
    assert [frame.payload for frame in all_frames(tmp_path / "copy")] == [b"a", b"b", b"c"]


def test_a_copy_starts_from_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "left-over").write_bytes(b"x")
    with pytest.raises(MirrorError):
        Mirror(tmp_path)
