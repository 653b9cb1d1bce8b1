"""``wallet wal repair``: cuts a torn tail (and only that) by itself; drops valid records only
when told the LSN; moves dropped segments aside; a dry run changes nothing."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from server.cli import main
from wal import RepairRefused, apply_repair, plan_repair
from wal.testing import (
    flip_byte,
    frames_in,
    payload_for,
    scan_all,
    segment_paths,
    write_log,
)


async def build(tmp_path: Path) -> Path:
    directory = tmp_path / "data" / "wal"
    batches = [[payload_for(lsn) for lsn in range(first, first + 3)] for first in range(1, 31, 3)]
    await write_log(directory, batches, segment_bytes_max=400)
    assert len(segment_paths(directory)) >= 3
    return directory


def snapshot_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.rglob("*") if path.is_file()}


async def test_a_clean_log_needs_nothing(tmp_path: Path) -> None:
    directory = await build(tmp_path)
    assert plan_repair(directory).empty
    assert main(["wal", "repair", "--data", str(directory.parent)]) == 0


async def test_a_torn_tail_is_cut_without_asking(tmp_path: Path) -> None:
    directory = await build(tmp_path)
    last = segment_paths(directory)[-1]
    size = last.stat().st_size
    with open(last, "ab") as handle:
        handle.write(b"\x07" * 40)
    plan = plan_repair(directory)
    assert plan.cut_path == last and plan.cut_offset == size and plan.bytes_cut == 40
    assert plan.records_dropped == 0
    assert main(["wal", "repair", "--data", str(directory.parent)]) == 0
    assert last.stat().st_size == size
    frames, result = scan_all(directory)
    assert [frame.lsn for frame in frames] == list(range(1, 31))
    assert not result.torn


async def test_damage_with_valid_records_after_it_is_refused_without_an_lsn(tmp_path: Path) -> None:
    directory = await build(tmp_path)
    first = segment_paths(directory)[0]
    offset, frame = frames_in(first)[1]
    flip_byte(first, offset + 60)
    before = snapshot_files(directory)
    with pytest.raises(RepairRefused, match=f"--truncate-at-lsn {frame.lsn}"):
        plan_repair(directory)
    assert main(["wal", "repair", "--data", str(directory.parent)]) == 1
    assert snapshot_files(directory) == before


async def test_truncate_at_lsn_drops_from_there_and_moves_later_segments_aside(tmp_path: Path) -> None:
    directory = await build(tmp_path)
    segments = segment_paths(directory)
    first = segments[0]
    offset, frame = frames_in(first)[1]
    flip_byte(first, offset + 60)
    dry = snapshot_files(directory)
    assert main(["wal", "repair", "--data", str(directory.parent), "--truncate-at-lsn", str(frame.lsn), "--dry-run"]) == 0
    assert snapshot_files(directory) == dry
    plan = plan_repair(directory, truncate_at_lsn=frame.lsn)
    assert plan.cut_path == first and plan.cut_offset == offset
    assert plan.segments_moved == segments[1:]
    aside = apply_repair(directory, plan)
    assert aside is not None and sorted(p.name for p in aside.iterdir()) == [p.name for p in segments[1:]]
    frames, result = scan_all(directory)
    assert [f.lsn for f in frames] == list(range(1, frame.lsn))
    assert not result.torn


async def test_truncate_at_lsn_cannot_keep_records_past_the_damage(tmp_path: Path) -> None:
    directory = await build(tmp_path)
    first = segment_paths(directory)[0]
    offset, frame = frames_in(first)[1]
    flip_byte(first, offset + 60)
    with pytest.raises(RepairRefused, match="damaged at LSN"):
        plan_repair(directory, truncate_at_lsn=frame.lsn + 2)


async def test_truncate_at_lsn_on_a_healthy_log_drops_only_what_was_asked(tmp_path: Path) -> None:
    directory = await build(tmp_path)
    plan = plan_repair(directory, truncate_at_lsn=11)
    assert plan.records_dropped == 20
    apply_repair(directory, plan)
    frames, _ = scan_all(directory)
    assert [f.lsn for f in frames] == list(range(1, 11))


async def test_a_compacted_log_is_repaired_from_its_first_kept_segment(tmp_path: Path) -> None:
    directory = await build(tmp_path)
    segments = segment_paths(directory)
    segments[0].unlink()  # compacted away below a snapshot
    second = segments[1]
    offset, frame = frames_in(second)[1]
    flip_byte(second, offset + 60)
    with pytest.raises(RepairRefused, match=f"--truncate-at-lsn {frame.lsn}"):
        plan_repair(directory)
    with pytest.raises(RepairRefused, match="where the kept log starts"):
        plan_repair(directory, truncate_at_lsn=1)
    apply_repair(directory, plan_repair(directory, truncate_at_lsn=frame.lsn))
    first_kept = int(second.stem)
    frames, _ = scan_all(directory, after_lsn=first_kept - 1)
    assert [f.lsn for f in frames] == list(range(first_kept, frame.lsn))


@pytest.mark.usefixtures("usual_umask")
async def test_segments_moved_aside_go_into_a_private_folder(tmp_path: Path) -> None:
    directory = await build(tmp_path)
    assert main(["wal", "repair", "--data", str(directory.parent), "--truncate-at-lsn", "11"]) == 0
    (aside,) = directory.glob("dropped-*")
    assert stat.S_IMODE(aside.stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in aside.iterdir()} == {0o600}
    # The command took the data directory's lock, which makes the directory private too.
    assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory.parent / "LOCK").stat().st_mode) == 0o600
