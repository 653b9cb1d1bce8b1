"""The operator's tools on a data directory: ``wallet wal verify|dump|replay|repair`` and
``wallet snapshot create|list|verify``. They print (this is the command line) and return an
exit status: 0 all well; 1 a check failed, the log is damaged, or the tool refused to change
what it was given; 2 the arguments do not fit the directory (no log at ``--data``: a missing or
empty directory; an LSN past the end of the log) or the directory is in use.

Tools that change a directory take its lock, so they cannot run under a live server; the
snapshot child the server itself starts passes ``--server-child`` instead.

Long-running tools (verify, replay, snapshot create) show a tqdm progress bar on stderr with a
total known upfront (log bytes, or records when the end LSN is known), so it has an ETA. It is
off when stderr is not a terminal, so pipes and files get only the machine-friendly output,
unless ``--progress`` asks for it.
"""

from __future__ import annotations

import enum
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ledger import (
    DATA_DIR_MODE,
    FILE_MODE,
    CodecError,
    Event,
    TransfersPosted,
    build_snapshot,
    check_state,
    decode_event,
    decode_state,
    digest_state,
    load_base,
    new_state,
    prepare_data_dir,
    read_records,
    replay_log,
    replay_until,
    snapshots_dir,
    write_state,
)
from server._lock import DataDirLocked, lock_data_dir
from snapshots import SnapshotCorrupt, list_snapshots, read_snapshot
from wal import (
    SEGMENT_HEADER_BYTES,
    Frame,
    LogCorrupt,
    RepairRefused,
    ScanResult,
    apply_repair,
    list_segments,
    plan_repair,
    scan,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # the same status argparse gives a bad command line


def progress_bar(label: str, *, total: int, unit: str, show: bool | None) -> tqdm[Any]:
    """One progress bar for every long-running tool: on stderr, with ``total`` known upfront
    (so tqdm shows the ETA); ``show`` None means "when stderr is a terminal"."""
    enabled = sys.stderr.isatty() if show is None else show
    return tqdm(total=total, desc=label, unit=unit, unit_scale=unit == "B", unit_divisor=1024,
                file=sys.stderr, disable=not enabled, mininterval=0.5)


def _log_bytes(data_dir: Path, *, after_lsn: int = 0) -> int:
    """The frame bytes a scan after ``after_lsn`` reads (segments wholly inside a snapshot
    image are skipped, as ``scan`` does)."""
    segments = list_segments(data_dir / "wal")
    total = 0
    for index, (_, path) in enumerate(segments):
        if index + 1 < len(segments) and segments[index + 1][0] <= after_lsn + 1:
            continue
        total += max(path.stat().st_size - SEGMENT_HEADER_BYTES, 0)
    return total


def _first_lsn(data_dir: Path) -> int:
    segments = list_segments(data_dir / "wal")
    return segments[0][0] if segments else 1


def _no_log(data_dir: Path, tool: str, *, snapshots_will_do: bool = False) -> bool:
    """True, after saying why on stderr, when ``data_dir`` has no log to work on: a typo in
    ``--data`` must not pass for an empty, healthy ledger."""
    if not data_dir.exists():
        reason = f"{data_dir} does not exist"
    elif not data_dir.is_dir():
        reason = f"{data_dir} is not a directory"
    elif list_segments(data_dir / "wal"):
        return False
    elif snapshots_will_do and snapshots_dir(data_dir).is_dir() and list_snapshots(snapshots_dir(data_dir)):
        return False
    else:
        reason = f"{data_dir} holds no write-ahead log (no segment in {data_dir / 'wal'})"
    print(f"wallet {tool}: {reason}; is --data right?", file=sys.stderr)
    return True


def _healthy_end(data_dir: Path) -> int | None:
    """The last LSN of the kept log when it reads without damage (a torn tail is not damage:
    it ends there), else None."""
    result = ScanResult()
    try:
        for _ in scan(data_dir / "wal", result, after_lsn=_first_lsn(data_dir) - 1):
            pass
    except LogCorrupt:
        return None
    return result.next_lsn - 1


def _past_the_end(data_dir: Path, until_lsn: int | None, tool: str) -> bool:
    """True, after saying so on stderr, when ``until_lsn`` lies past the end of a healthy log:
    that is a wrong argument, not damage, and `wal repair` would only drop good records."""
    if until_lsn is None:
        return False
    end = _healthy_end(data_dir)
    if end is None or end >= until_lsn:
        return False
    print(f"wallet {tool}: LSN {until_lsn} is past the end of the log: the last LSN is {end}; "
          f"the log itself is fine", file=sys.stderr)
    return True


def _locked(data_dir: Path) -> Any:
    try:
        return lock_data_dir(data_dir)
    except DataDirLocked as error:
        print(f"REFUSED: {error}")
        return None


# -- wal verify ------------------------------------------------------------------------------


def wal_verify(data_dir: Path, *, progress: bool | None = None) -> int:
    """Every segment and snapshot: checksums, chain, LSN continuity; a replay into a fresh state
    (from the oldest snapshot the log still connects to, or from LSN 1) checked against the
    invariants and against every newer snapshot's digest."""
    if _no_log(data_dir, "wal verify"):
        return EXIT_USAGE
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

    def mismatch(frame: Frame) -> None:
        problems.append(f"the snapshot at LSN {start} does not match the log's record there")

    def compare(frame: Frame, event: Event) -> None:
        if frame.lsn in images:
            path, digest = images[frame.lsn]
            if bytes.fromhex(digest_state(state)) != digest:
                problems.append(f"snapshot {path} does not match the replayed log at LSN {frame.lsn}")

    with progress_bar("wal verify", total=_log_bytes(data_dir), unit="B", show=progress) as bar:
        try:
            # From the start of the kept log, so every record is checked, even those in the image.
            replay_log(
                state, data_dir / "wal", result, after_lsn=first - 1, base_lsn=start,
                base_checksum=base.log_checksum if base is not None else None,
                on_frame=lambda frame: bar.update(frame.size), on_base_mismatch=mismatch, on_record=compare,
            )
        except LogCorrupt as error:
            problems.append(f"{error.path} offset {error.offset} LSN {error.lsn}: {error.reason}")
        except CodecError as error:
            problems.append(f"record LSN {result.next_lsn} does not decode: {error}")
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
        return EXIT_FAILED
    print("OK")
    return EXIT_OK


# -- wal dump --------------------------------------------------------------------------------

# Event fields that are times (microseconds since the epoch): dumped as RFC 3339 under the name
# without ``_us``. In those marked optional, 0 means "none" and is dumped as null.
_TIMES = {"at_us": False, "created_at_us": False, "updated_at_us": False, "deadline_us": True,
          "retry_at_us": True, "next_attempt_at_us": True}


def _plain(value: Any) -> Any:
    """An event as JSON values: bytes as hex, enums by label, times as RFC 3339."""
    from server.api import timestamp

    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        plain: dict[str, Any] = {}
        # A batch record shows its transfers whole, as it always did (its rows are how it is
        # held in memory, not what it means).
        names = ("transfers", "at_us") if isinstance(value, TransfersPosted) else value.__dataclass_fields__
        for name in names:
            item = getattr(value, name)
            if name in _TIMES and isinstance(item, int):
                plain[name.removesuffix("_us")] = None if (_TIMES[name] and item == 0) else timestamp(item)
            else:
                plain[name] = _plain(item)
        return plain
    if hasattr(value, "label"):
        return value.label
    if isinstance(value, enum.Enum):  # a rejection's reason (a refusals record): its value
        return value.value
    return value


def wal_dump(data_dir: Path, *, from_lsn: int, to_lsn: int | None, fmt: str) -> int:
    """One JSON object per record (``jsonl``), or per line an aligned LSN, the event type and
    the same JSON (``text``): never Python reprs, so both can be parsed."""
    if _no_log(data_dir, "wal dump"):
        return EXIT_USAGE
    result = ScanResult()
    try:
        for frame in scan(data_dir / "wal", result, after_lsn=_first_lsn(data_dir) - 1, until_lsn=to_lsn):
            if frame.lsn < from_lsn:
                continue
            event = decode_event(frame.payload)
            fields = _plain(event)
            if fmt == "jsonl":
                print(json.dumps({"lsn": frame.lsn, "type": type(event).__name__, **fields}))
            else:
                print(f"{frame.lsn:>10} {type(event).__name__} {json.dumps(fields)}")
    except LogCorrupt as error:
        print(f"wallet wal dump: {error}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_OK
    return EXIT_OK


# -- wal repair ------------------------------------------------------------------------------


def wal_repair(data_dir: Path, *, truncate_at_lsn: int | None, dry_run: bool) -> int:
    if _no_log(data_dir, "wal repair"):
        return EXIT_USAGE
    lock = None if dry_run else _locked(data_dir)
    if lock is None and not dry_run:
        return EXIT_USAGE
    directory = data_dir / "wal"
    try:
        plan = plan_repair(directory, truncate_at_lsn=truncate_at_lsn)
    except RepairRefused as error:
        print(f"REFUSED: {error}")
        return EXIT_FAILED
    print(plan.describe())
    if plan.empty or dry_run:
        return EXIT_OK
    aside = apply_repair(directory, plan)
    if aside is not None:
        print(f"moved {len(plan.segments_moved)} segment(s) to {aside}")
    print("repaired; `wallet wal verify` should now pass")
    return EXIT_OK


# -- wal replay (point-in-time recovery) -----------------------------------------------------


def _lsn_at_time(data_dir: Path, until_us: int, *, progress: bool | None) -> int:
    """The last LSN whose record is stamped at or before ``until_us``."""
    found = 0
    result = ScanResult()
    with progress_bar("find time", total=_log_bytes(data_dir), unit="B", show=progress) as bar:
        for frame, event in read_records(data_dir / "wal", result, after_lsn=_first_lsn(data_dir) - 1):
            bar.update(frame.size)
            if event.at_us > until_us:
                break
            found = frame.lsn
    return found


def wal_replay(data_dir: Path, *, until_lsn: int | None, until_us: int | None, out: Path,
               progress: bool | None = None) -> int:
    """Builds ``out``: the ledger as it was at an LSN (or time), with the log copied up to that
    LSN and a snapshot at it, ready for ``wallet serve --data out``."""
    if _no_log(data_dir, "wal replay"):
        return EXIT_USAGE
    if out.exists() and any(out.iterdir()):
        print(f"REFUSED: {out} exists and is not empty")
        return EXIT_FAILED
    if until_us is not None:
        until_lsn = _lsn_at_time(data_dir, until_us, progress=progress)
        print(f"the last record at or before that time is LSN {until_lsn}")
    assert until_lsn is not None
    base = load_base(data_dir, at_most_lsn=until_lsn)
    first = _first_lsn(data_dir)
    if base.lsn < first - 1:
        print(f"REFUSED: the log starts at LSN {first}; no snapshot at or before LSN {until_lsn} reaches it")
        return EXIT_FAILED
    try:
        with progress_bar("wal replay", total=max(until_lsn - base.lsn, 0), unit="rec", show=progress) as bar:
            state, reached, checksum = replay_until(data_dir, base, until_lsn=until_lsn,
                                                    on_frame=lambda frame: bar.update(1))
    except LogCorrupt as error:
        if _past_the_end(data_dir, until_lsn, "wal replay"):
            return EXIT_USAGE
        print(f"REFUSED: {error}")
        return EXIT_FAILED
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
    return EXIT_OK


# -- snapshots -------------------------------------------------------------------------------


def _newest_image_lsn(data_dir: Path, until_lsn: int | None) -> int:
    """The LSN of the image ``build_snapshot`` will most likely start from (by header only)."""
    directory = snapshots_dir(data_dir)
    for info in list_snapshots(directory) if directory.exists() else []:
        if info.header is not None and (until_lsn is None or info.lsn <= until_lsn):
            return info.lsn
    return 0


def snapshot_create(data_dir: Path, *, until_lsn: int | None, server_child: bool,
                    progress: bool | None = None) -> int:
    if _no_log(data_dir, "snapshot create"):
        return EXIT_USAGE
    lock = None if server_child else _locked(data_dir)
    if lock is None and not server_child:
        return EXIT_USAGE
    start = _newest_image_lsn(data_dir, until_lsn)
    if until_lsn is not None:
        bar = progress_bar("snapshot", total=max(until_lsn - start, 0), unit="rec", show=progress)

        def step(frame: Frame) -> None:
            bar.update(1)
    else:
        bar = progress_bar("snapshot", total=_log_bytes(data_dir, after_lsn=start), unit="B", show=progress)

        def step(frame: Frame) -> None:
            bar.update(frame.size)
    try:
        with bar:
            info = build_snapshot(data_dir, until_lsn=until_lsn, created_at_us=int(time.time() * 1_000_000),
                                  on_frame=step)
    except LogCorrupt as error:
        if _past_the_end(data_dir, until_lsn, "snapshot create"):
            return EXIT_USAGE
        print(f"FAILED: {error}", file=sys.stderr)
        return EXIT_FAILED
    if info is None:
        print("nothing new since the newest snapshot")
    else:
        print(f"snapshot at LSN {info.lsn}: {info.path} ({info.size} bytes)")
    return EXIT_OK


SNAPSHOT_LIST_HEADER = f"{'LSN':>12} {'BYTES':>12} {'RECORDS':>10}  {'FILE':<32}  STATUS"


def snapshot_list(data_dir: Path) -> int:
    """A header line, then one line per snapshot, newest first (``none`` when there is none)."""
    if _no_log(data_dir, "snapshot list", snapshots_will_do=True):
        return EXIT_USAGE
    directory = snapshots_dir(data_dir)
    found = list_snapshots(directory) if directory.exists() else []
    print(SNAPSHOT_LIST_HEADER)
    for info in found:
        header = info.header
        status = "ok (header)" if header is not None else f"DAMAGED: {info.reason}"
        records = str(header.records) if header is not None else "-"
        print(f"{info.lsn:>12} {info.size:>12} {records:>10}  {info.path.name:<32}  {status}")
    if not found:
        print("(none)")
    return EXIT_OK


def snapshot_verify(data_dir: Path) -> int:
    if _no_log(data_dir, "snapshot verify", snapshots_will_do=True):
        return EXIT_USAGE
    directory = snapshots_dir(data_dir)
    failed = 0
    found = list_snapshots(directory) if directory.exists() else []
    for info in found:
        try:
            header, body = read_snapshot(info.path)
            state = decode_state(body, decode_events=True)
            check_state(state)
            digest = bytes.fromhex(digest_state(state))
            if digest != header.state_digest:
                raise AssertionError("state digest differs from the header's")
        except (SnapshotCorrupt, CodecError, AssertionError) as error:
            failed += 1
            print(f"{info.path.name}: FAILED: {error}")
            continue
        print(f"{info.path.name}: OK (LSN {header.lsn}, {len(state.wallets)} wallets)")
    if not found:
        print("no snapshots yet (the server writes one every --snapshot-every records and at shutdown)")
    return EXIT_FAILED if failed else EXIT_OK


__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "progress_bar",
    "snapshot_create",
    "snapshot_list",
    "snapshot_verify",
    "wal_dump",
    "wal_repair",
    "wal_replay",
    "wal_verify",
]
