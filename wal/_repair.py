"""``wallet wal repair``: cut a torn tail, or (only when told the LSN explicitly) drop
everything from a given LSN on. Bytes and files only; it never decodes a payload.

The plan is computed first and shown; nothing is removed that the plan did not name. Dropped
segments are moved aside into ``<wal>/dropped-<unix time>/``, never deleted, so an operator can
still take them to a specialist.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from wal._segments import (
    DIRECTORY_MODE,
    SEGMENT_HEADER_BYTES,
    LogCorrupt,
    ScanResult,
    list_segments,
    scan,
)
from wal._writer import fsync_directory


class RepairRefused(Exception):
    """Repairing would drop records that verify; the operator must name the LSN to cut at."""


@dataclass(slots=True, kw_only=True)
class RepairPlan:
    cut_path: Path | None = None
    cut_offset: int = 0
    bytes_cut: int = 0
    records_dropped: int = 0
    segments_moved: list[Path] = field(default_factory=list)
    reason: str = ""

    @property
    def empty(self) -> bool:
        return self.cut_path is None and not self.segments_moved

    def describe(self) -> str:
        if self.empty:
            return "nothing to repair: the log verifies to its end"
        lines = [f"reason: {self.reason}"]
        if self.cut_path is not None and self.bytes_cut:
            lines.append(f"cut {self.cut_path} at offset {self.cut_offset} ({self.bytes_cut} bytes)")
        for path in self.segments_moved:
            lines.append(f"move aside {path}")
        if self.records_dropped:
            lines.append(f"valid records dropped: {self.records_dropped}")
        return "\n".join(lines)


def plan_repair(directory: Path, *, truncate_at_lsn: int | None = None) -> RepairPlan:
    segments = list_segments(directory)
    if not segments:
        return RepairPlan()
    result = ScanResult()
    cut: tuple[Path, int] | None = None
    # A compacted log starts after LSN 1: check it from its first kept segment.
    first_lsn = segments[0][0]
    if truncate_at_lsn is not None:
        if truncate_at_lsn < first_lsn:
            raise RepairRefused(f"--truncate-at-lsn must be at least {first_lsn}, where the kept log starts")
        if truncate_at_lsn == first_lsn:
            cut = (segments[0][1], SEGMENT_HEADER_BYTES)
    last_lsn = first_lsn - 1
    damage: LogCorrupt | None = None
    try:
        for frame in scan(directory, result, after_lsn=first_lsn - 1, truncate_torn_tail=False):
            last_lsn = frame.lsn
            if truncate_at_lsn is not None and frame.lsn == truncate_at_lsn - 1:
                assert result.tail_path is not None
                cut = (result.tail_path, result.tail_offset)
    except LogCorrupt as error:
        damage = error
    if truncate_at_lsn is None:
        if damage is not None:
            raise RepairRefused(
                f"{damage.reason} in {damage.path} at offset {damage.offset} (LSN {damage.lsn}). "
                f"That is not a torn tail: records after it may have been acknowledged. To drop "
                f"everything from LSN {damage.lsn} on, run again with --truncate-at-lsn {damage.lsn}."
            )
        if not result.torn:
            return RepairPlan()
        assert result.tail_path is not None
        size = result.tail_path.stat().st_size
        return RepairPlan(
            cut_path=result.tail_path, cut_offset=result.tail_offset,
            bytes_cut=size - result.tail_offset, reason=result.torn[0],
        )
    if damage is not None and truncate_at_lsn > damage.lsn:
        raise RepairRefused(
            f"the log is damaged at LSN {damage.lsn}; cannot keep records up to LSN "
            f"{truncate_at_lsn - 1}. Use --truncate-at-lsn {damage.lsn} or lower."
        )
    if cut is None:
        if damage is None and truncate_at_lsn > last_lsn:
            return plan_repair(directory)  # nothing valid to drop: at most a torn tail
        raise RepairRefused(f"LSN {truncate_at_lsn - 1} was not found in the log")
    cut_path, cut_offset = cut
    moved = [path for _, path in segments if path > cut_path]
    dropped = max(0, last_lsn - truncate_at_lsn + 1)
    return RepairPlan(
        cut_path=cut_path, cut_offset=cut_offset,
        bytes_cut=cut_path.stat().st_size - cut_offset, records_dropped=dropped,
        segments_moved=moved,
        reason=(
            f"drop every record from LSN {truncate_at_lsn} on, as asked"
            + (f" (the log is damaged at LSN {damage.lsn}: {damage.reason})" if damage else "")
        ),
    )


def apply_repair(directory: Path, plan: RepairPlan) -> Path | None:
    """Carries out the plan; returns the folder the dropped segments were moved to, if any."""
    aside = None
    if plan.segments_moved:
        aside = directory / f"dropped-{int(time.time())}"
        aside.mkdir(mode=DIRECTORY_MODE, exist_ok=True)
        for path in plan.segments_moved:
            os.replace(path, aside / path.name)
        fsync_directory(aside)
    if plan.cut_path is not None and plan.bytes_cut:
        with open(plan.cut_path, "r+b") as handle:
            handle.truncate(plan.cut_offset)
            handle.flush()
            os.fsync(handle.fileno())
    fsync_directory(directory)
    return aside
