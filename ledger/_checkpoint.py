"""Checkpoints: snapshot images of the whole ledger, loading them back (``load_base``), writing
them (``write_state``) and removing the log they cover. Building a new one from the previous
image plus the log (``build_snapshot``) is in ``ledger._recovery``, with every other replay.

A snapshot at LSN S is the state after applying records 1..S. It carries the checksum of record S
so the log's hash chain continues across it, and the state's digest, compared after every load
(paired assertion). Recovery = newest valid snapshot + the log after S; a damaged newest image
falls back to the previous one and a longer log suffix. Segments are removed only below the
older of the two kept snapshots (and below the history projector), so that fallback always has
its log.

Building a snapshot never runs in the server's event loop: the server starts
``wallet snapshot create --until-lsn X`` as a child process, which replays the previous image
and the durable log up to X on the other core and writes the new image; requests keep being
served meanwhile. At graceful shutdown the actors are idle and the live state equals the log,
so it is written directly.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ledger import _invariants, _state
from ledger._data_dir import DATA_DIR_MODE
from ledger._snapshot import count_records, decode_state, encode_state
from ledger._state import State
from snapshots import (
    SnapshotCorrupt,
    SnapshotInfo,
    list_snapshots,
    prune,
    read_snapshot,
    write_snapshot,
)
from wal import (
    covered_segments,
    fsync_directory,
)

log = logging.getLogger("ledger.checkpoint")

SNAPSHOT_EVERY_DEFAULT = 1_000_000  # records between periodic snapshots


def snapshots_dir(data_dir: Path) -> Path:
    return data_dir / "snapshots"


@dataclass(frozen=True, slots=True, kw_only=True)
class Base:
    """Where recovery starts: a decoded image at ``lsn`` (an empty state at 0)."""

    state: State
    lsn: int
    log_checksum: bytes | None
    path: Path | None
    skipped: tuple[tuple[Path, str], ...]


def load_base(data_dir: Path, *, at_most_lsn: int | None = None) -> Base:
    """The newest snapshot that verifies (header, body, decoded digest), optionally no newer
    than ``at_most_lsn``; damaged newer ones are skipped and reported."""
    skipped: list[tuple[Path, str]] = []
    directory = snapshots_dir(data_dir)
    for info in list_snapshots(directory) if directory.exists() else []:
        if at_most_lsn is not None and info.lsn > at_most_lsn:
            continue
        if info.header is None:
            skipped.append((info.path, info.reason or "damaged header"))
            continue
        try:
            header, body = read_snapshot(info.path)
            state = decode_state(body)
        except SnapshotCorrupt as error:
            skipped.append((info.path, error.reason))
            continue
        except Exception as error:  # CodecError: a body that verified but does not decode
            skipped.append((info.path, f"does not decode: {error}"))
            continue
        digest = _invariants.digest_state(state)
        if bytes.fromhex(digest) != header.state_digest:
            skipped.append((info.path, "state digest after loading differs from the one written"))
            continue
        assert state.directory.lsn == header.lsn, (state.directory.lsn, header.lsn)
        return Base(state=state, lsn=header.lsn, log_checksum=header.log_checksum if header.lsn else None,
                    path=info.path, skipped=tuple(skipped))
    return Base(state=_state.new_state(), lsn=0, log_checksum=None, path=None, skipped=tuple(skipped))


def write_state(data_dir: Path, state: State, *, lsn: int, log_checksum: bytes, created_at_us: int) -> SnapshotInfo:
    """Writes ``state`` (which must not change meanwhile) as the snapshot at ``lsn`` and prunes
    to the newest two. Blocking."""
    assert state.directory.lsn == lsn, (state.directory.lsn, lsn)
    _invariants.check_state(state)
    digest = _invariants.digest_state(state)
    directory = snapshots_dir(data_dir)
    directory.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    started = time.perf_counter()
    info = write_snapshot(
        directory, lsn=lsn, records=count_records(state), log_checksum=log_checksum,
        state_digest=bytes.fromhex(digest), created_at_us=created_at_us, chunks=encode_state(state),
    )
    removed = prune(directory)
    log.info(
        "snapshot at LSN %d written in %.3f s (%d bytes)%s", lsn, time.perf_counter() - started,
        info.size, f"; pruned {len(removed)}" if removed else "",
    )
    return info


def kept_floor(data_dir: Path) -> int:
    """The LSN below which the log is no longer needed by any kept snapshot: the older of the
    (at most two) kept valid snapshots. 0 when there is none."""
    directory = snapshots_dir(data_dir)
    valid = [info.lsn for info in list_snapshots(directory) if info.valid] if directory.exists() else []
    return min(valid) if valid else 0


def remove_covered(data_dir: Path, *, history_lsn: int, archive: bool) -> list[Path]:
    """Removes (or, with ``archive``, moves to ``<data>/archive/``) the WAL segments that both
    kept snapshots and the history read model have moved past. Blocking."""
    floor = min(kept_floor(data_dir), history_lsn)
    removed = covered_segments(data_dir / "wal", floor)
    if not removed:
        return []
    target = data_dir / "archive"
    if archive:
        target.mkdir(mode=DATA_DIR_MODE, exist_ok=True)  # archived segments keep their 0600
    for path in removed:
        if archive:
            os.replace(path, target / path.name)
        else:
            path.unlink()
    fsync_directory(data_dir / "wal")
    if archive:
        fsync_directory(target)
    log.info("%s %d WAL segment(s) below LSN %d", "archived" if archive else "removed", len(removed), floor + 1)
    return removed
