"""The operator's tools on a data directory: ``wallet wal verify|dump|replay|repair`` and
``wallet snapshot create|list|verify``. They print (this is the command line) and return an
exit status: 0 all well, 1 a check failed or the tool refused, 2 the directory is in use.

Tools that change a directory take its lock, so they cannot run under a live server; the
snapshot child the server itself starts passes ``--server-child`` instead.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ledger import (
    DATA_DIR_MODE,
    FILE_MODE,
    CodecError,
    build_snapshot,
    check_state,
    decode_event,
    decode_state,
    digest_state,
    load_base,
    new_state,
    prepare_data_dir,
    replay_until,
    snapshots_dir,
    write_state,
)
from ledger import apply as apply_event
from server._lock import DataDirLocked, lock_data_dir
from snapshots import SnapshotCorrupt, list_snapshots, read_snapshot
from wal import (
    LogCorrupt,
    RepairRefused,
    ScanResult,
    apply_repair,
    list_segments,
    plan_repair,
    scan,
)


class Progress:
    """Records/s and ETA on a terminal; silent in pipes and files."""

    def __init__(self, label: str, total: int | None) -> None:
        self._label = label
        self._total = total
        self._enabled = sys.stderr.isatty()
        self._started = time.monotonic()
        self._last = 0.0
        self.count = 0

    def step(self, count: int = 1) -> None:
        self.count += count
        if not self._enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.5:
            return
        self._last = now
        rate = self.count / max(now - self._started, 1e-9)
        eta = ""
        if self._total:
            eta = f", ETA {max(self._total - self.count, 0) / max(rate, 1e-9):.0f} s"
        sys.stderr.write(f"\r{self._label}: {self.count} records, {rate:,.0f}/s{eta}   ")
        sys.stderr.flush()

    def done(self) -> None:
        if self._enabled and self._last:
            sys.stderr.write("\n")


def _first_lsn(data_dir: Path) -> int:
    segments = list_segments(data_dir / "wal")
    return segments[0][0] if segments else 1


def _locked(data_dir: Path) -> Any:
    try:
        return lock_data_dir(data_dir)
    except DataDirLocked as error:
        print(f"REFUSED: {error}")
        return None


# -- wal verify ------------------------------------------------------------------------------


def wal_verify(data_dir: Path) -> int:
    """Every segment and snapshot: checksums, chain, LSN continuity; a replay into a fresh state
    (from the oldest snapshot the log still connects to, or from LSN 1) checked against the
    invariants and against every newer snapshot's digest."""
    problems: list[str] = []
    snapshots = list_snapshots(snapshots_dir(data_dir)) if snapshots_dir(data_dir).exists() else []
    images: dict[int, tuple[Path, bytes]] = {}
    for info in snapshots:
        try:
            header, _ = read_snapshot(info.path)
        except SnapshotCorrupt as error:
            problems.append(f"snapshot {info.path}: {error.reason}")
            continue
        images[header.lsn] = (info.path, header.state_digest)
    first = _first_lsn(data_dir)
    start = 0
    if first > 1:
        candidates = sorted(lsn for lsn in images if lsn >= first - 1)
        if not candidates:
            problems.append(f"the log starts at LSN {first} and no valid snapshot covers LSN {first - 1}")
            return _report(problems, None, None, data_dir)
        start = candidates[0]
    base = load_base(data_dir, at_most_lsn=start) if start else None
    state = base.state if base is not None else new_state()
    if base is not None and base.lsn != start:
        problems.append(f"snapshot at LSN {start} does not load")
        return _report(problems, None, None, data_dir)
    result = ScanResult()
    progress = Progress("verify", None)
    try:
        # From the start of the kept log, so every record is checked, even those in the image.
        for frame in scan(data_dir / "wal", result, after_lsn=first - 1):
            progress.step()
            if frame.lsn == start and base is not None and frame.checksum != base.log_checksum:
                problems.append(f"the snapshot at LSN {start} does not match the log's record there")
            if frame.lsn <= start:
                continue
            apply_event(state, decode_event(frame.payload), frame.lsn)
            if frame.lsn in images:
                path, digest = images[frame.lsn]
                if bytes.fromhex(digest_state(state)) != digest:
                    problems.append(f"snapshot {path} does not match the replayed log at LSN {frame.lsn}")
    except LogCorrupt as error:
        problems.append(f"{error.path} offset {error.offset} LSN {error.lsn}: {error.reason}")
    except CodecError as error:
        problems.append(f"record LSN {result.next_lsn} does not decode: {error}")
    progress.done()
    if not problems:
        try:
            check_state(state)
        except AssertionError as error:
            problems.append(f"invariant violated after replay: {error}")
    return _report(problems, result, state, data_dir, start=start)


def _report(problems: list[str], result: ScanResult | None, state: Any, data_dir: Path, *, start: int = 0) -> int:
    segments = list_segments(data_dir / "wal")
    snapshots = list_snapshots(snapshots_dir(data_dir)) if snapshots_dir(data_dir).exists() else []
    print(f"segments:  {len(segments)}")
    print(f"snapshots: {', '.join(f'LSN {info.lsn}' + ('' if info.valid else ' (damaged)') for info in snapshots) or 'none'}")
    if result is not None:
        print(f"records:   {result.records} replayed after LSN {start}")
        print(f"LSNs:      {result.first_lsn or '-'}..{result.next_lsn - 1}")
        for message in result.torn:
            problems.append(f"{message} (`wallet wal repair` cuts it; the server does on start)")
    if state is not None:
        print(f"wallets:   {len(state.wallets)}; assets: {len(state.directory.assets)}")
        print(f"digest:    {digest_state(state)}")
    if problems:
        print(f"FAILED: {problems[0]}")
        for problem in problems[1:]:
            print(f"also:   {problem}")
        return 1
    print("OK")
    return 0


# -- wal dump --------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
    if hasattr(value, "label"):
        return value.label
    return value


def wal_dump(data_dir: Path, *, from_lsn: int, to_lsn: int | None, fmt: str) -> int:
    result = ScanResult()
    try:
        for frame in scan(data_dir / "wal", result, after_lsn=_first_lsn(data_dir) - 1, until_lsn=to_lsn):
            if frame.lsn < from_lsn:
                continue
            event = decode_event(frame.payload)
            if fmt == "jsonl":
                print(json.dumps({"lsn": frame.lsn, "type": type(event).__name__, **_plain(event)}))
            else:
                print(f"{frame.lsn:>10} {type(event).__name__} {_plain(event)}")
    except LogCorrupt as error:
        print(f"wallet wal dump: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    return 0


# -- wal repair ------------------------------------------------------------------------------


def wal_repair(data_dir: Path, *, truncate_at_lsn: int | None, dry_run: bool) -> int:
    lock = None if dry_run else _locked(data_dir)
    if lock is None and not dry_run:
        return 2
    directory = data_dir / "wal"
    try:
        plan = plan_repair(directory, truncate_at_lsn=truncate_at_lsn)
    except RepairRefused as error:
        print(f"REFUSED: {error}")
        return 1
    print(plan.describe())
    if plan.empty or dry_run:
        return 0
    aside = apply_repair(directory, plan)
    if aside is not None:
        print(f"moved {len(plan.segments_moved)} segment(s) to {aside}")
    print("repaired; `wallet wal verify` should now pass")
    return 0


# -- wal replay (point-in-time recovery) -----------------------------------------------------


def _lsn_at_time(data_dir: Path, until_us: int) -> int:
    """The last LSN whose record is stamped at or before ``until_us``."""
    found = 0
    result = ScanResult()
    for frame in scan(data_dir / "wal", result, after_lsn=_first_lsn(data_dir) - 1):
        if decode_event(frame.payload).at_us > until_us:
            break
        found = frame.lsn
    return found


def wal_replay(data_dir: Path, *, until_lsn: int | None, until_us: int | None, out: Path) -> int:
    """Builds ``out``: the ledger as it was at an LSN (or time), with the log copied up to that
    LSN and a snapshot at it, ready for ``wallet serve --data out``."""
    if out.exists() and any(out.iterdir()):
        print(f"REFUSED: {out} exists and is not empty")
        return 1
    if until_us is not None:
        until_lsn = _lsn_at_time(data_dir, until_us)
        print(f"the last record at or before that time is LSN {until_lsn}")
    assert until_lsn is not None
    base = load_base(data_dir, at_most_lsn=until_lsn)
    first = _first_lsn(data_dir)
    if base.lsn < first - 1:
        print(f"REFUSED: the log starts at LSN {first}; no snapshot at or before LSN {until_lsn} reaches it")
        return 1
    try:
        state, reached, checksum = replay_until(data_dir, base, until_lsn=until_lsn)
    except LogCorrupt as error:
        print(f"REFUSED: {error}")
        return 1
    prepare_data_dir(out)  # a new data directory: 0700, its files 0600 (copies included)
    (out / "wal").mkdir(mode=DATA_DIR_MODE)
    for _, path in list_segments(data_dir / "wal"):
        shutil.copy2(path, out / "wal" / path.name)
        (out / "wal" / path.name).chmod(FILE_MODE)
    plan = plan_repair(out / "wal", truncate_at_lsn=reached + 1) if reached else None
    if plan is not None and not plan.empty:
        aside = apply_repair(out / "wal", plan)
        if aside is not None:
            shutil.rmtree(aside)
    if reached:
        write_state(out, state, lsn=reached, log_checksum=checksum, created_at_us=int(time.time() * 1_000_000))
    print(f"replayed to LSN {reached} into {out}")
    print(f"wallets: {len(state.wallets)}; balances digest: {digest_state(state)}")
    return 0


# -- snapshots -------------------------------------------------------------------------------


def snapshot_create(data_dir: Path, *, until_lsn: int | None, server_child: bool) -> int:
    lock = None if server_child else _locked(data_dir)
    if lock is None and not server_child:
        return 2
    try:
        info = build_snapshot(data_dir, until_lsn=until_lsn, created_at_us=int(time.time() * 1_000_000))
    except LogCorrupt as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    if info is None:
        print("nothing new since the newest snapshot")
    else:
        print(f"snapshot at LSN {info.lsn}: {info.path} ({info.size} bytes)")
    return 0


def snapshot_list(data_dir: Path) -> int:
    directory = snapshots_dir(data_dir)
    for info in list_snapshots(directory) if directory.exists() else []:
        header = info.header
        status = "ok (header)" if header is not None else f"DAMAGED: {info.reason}"
        records = f"{header.records} records" if header is not None else ""
        print(f"{info.lsn:>12} {info.size:>12} bytes {records:>16}  {info.path.name}  {status}")
    return 0


def snapshot_verify(data_dir: Path) -> int:
    directory = snapshots_dir(data_dir)
    failed = 0
    for info in list_snapshots(directory) if directory.exists() else []:
        try:
            header, body = read_snapshot(info.path)
            state = decode_state(body)
            check_state(state)
            digest = bytes.fromhex(digest_state(state))
            if digest != header.state_digest:
                raise AssertionError("state digest differs from the header's")
        except (SnapshotCorrupt, CodecError, AssertionError) as error:
            failed += 1
            print(f"{info.path.name}: FAILED: {error}")
            continue
        print(f"{info.path.name}: OK (LSN {header.lsn}, {len(state.wallets)} wallets)")
    return 1 if failed else 0


__all__ = [
    "snapshot_create",
    "snapshot_list",
    "snapshot_verify",
    "wal_dump",
    "wal_repair",
    "wal_replay",
    "wal_verify",
]
