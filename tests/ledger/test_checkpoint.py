"""Compaction keeps what any reader still needs: segments go only when both kept snapshots and
the history projector are past them; ``--archive`` moves instead of deleting."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ledger import State, kept_floor, remove_covered, write_state
from ledger._state import new_state
from wal.testing import payload_for, segment_paths, write_log


async def build(data: Path) -> list[Path]:
    batches = [[payload_for(lsn) for lsn in range(first, first + 3)] for first in range(1, 31, 3)]
    await write_log(data / "wal", batches, segment_bytes_max=300)
    return segment_paths(data / "wal")


def snapshot_at(data: Path, lsn: int) -> None:
    state: State = new_state()
    state.directory.lsn = lsn
    write_state(data, state, lsn=lsn, log_checksum=bytes(16), created_at_us=0)


@pytest.mark.parametrize("archive", [False, True])
async def test_segments_go_only_below_both_the_older_snapshot_and_the_history(tmp_path: Path, archive: bool) -> None:
    segments = await build(tmp_path)
    firsts = [int(path.stem) for path in segments]
    assert len(segments) >= 4
    assert remove_covered(tmp_path, history_lsn=30, archive=archive) == []  # no snapshot yet
    await trio.to_thread.run_sync(snapshot_at, tmp_path, firsts[2] - 1)
    await trio.to_thread.run_sync(snapshot_at, tmp_path, firsts[3] - 1)
    assert kept_floor(tmp_path) == firsts[2] - 1
    # The history is behind the first segment boundary: nothing goes.
    assert remove_covered(tmp_path, history_lsn=firsts[1] - 2, archive=archive) == []
    removed = remove_covered(tmp_path, history_lsn=30, archive=archive)
    assert removed == segments[:2]  # below the older kept snapshot, not the newer
    assert segment_paths(tmp_path / "wal") == segments[2:]
    archived = sorted((tmp_path / "archive").glob("*.wal")) if archive else []
    assert [path.name for path in archived] == ([path.name for path in segments[:2]] if archive else [])
    # The segment being written is never removed, whatever the floor.
    await trio.to_thread.run_sync(snapshot_at, tmp_path, 10_000)
    await trio.to_thread.run_sync(snapshot_at, tmp_path, 20_000)
    remove_covered(tmp_path, history_lsn=10**9, archive=archive)
    assert segment_paths(tmp_path / "wal") == segments[-1:]
