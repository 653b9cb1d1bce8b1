"""Reading the log back: the one place that scans the WAL from an LSN, decodes its records and
applies them to a ``State``.

``replay_log`` is the loop every reader shares: the frames after an LSN, each decoded and
applied once it is past the base image's LSN, with hooks for what differs between callers:

    | caller                                   | scans after      | hooks                         |
    |------------------------------------------|------------------|-------------------------------|
    | ``recover`` (server start, tools, tests) | min(history,     | records for the history read  |
    |                                          |   snapshot) LSN  | model, progress in the log    |
    | ``replay_until`` / ``build_snapshot``    | the image's LSN  | until an LSN; a per-record    |
    |   (the snapshot child, ``wal replay``)   |                  | callback (a progress bar)     |
    | ``wallet wal verify`` (server._tools)    | the kept log's   | progress by bytes, a base     |
    |                                          |   first LSN - 1  | record that does not match is |
    |                                          |                  | a problem, not an error; each |
    |                                          |                  | record's digest vs the images |

``read_records`` is the same scan and decode without a state (``wal replay --until-time``
finding its LSN), and ``take_transactions`` the decode that stops after a number of transactions
(the event feed's reads of old segments, the projector process's reads of the tailed log).

Recovery proper (``recover``) loads the newest valid snapshot (``ledger._checkpoint``), replays
the log after it, brings the history read model up to the end of the log and checks the
invariants. Everything here blocks: run it in a worker thread or a child process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ledger._apply import apply
from ledger._checkpoint import Base, load_base, write_state
from ledger._codec import decode_event
from ledger._data_dir import prepare_data_dir
from ledger._history import BATCH_RECORDS_MAX as HISTORY_BATCH_RECORDS
from ledger._history import History, weight
from ledger._invariants import check_state
from ledger._key_index import read_through_lsn, trim
from ledger._model import Event, TransfersPosted
from ledger._part import apply_part, apply_part_of_group
from ledger._state import State
from snapshots import SnapshotInfo
from wal import ZERO_CHECKSUM, Frame, LogCorrupt, ScanResult, list_segments, scan

log = logging.getLogger("ledger")
checkpoint_log = logging.getLogger("ledger.checkpoint")

RECOVERY_PROGRESS_RECORDS = 100_000

FrameHook = Callable[[Frame], None]
RecordHook = Callable[[Frame, Event], None]


def replay_log(
    state: State,
    wal_dir: Path,
    result: ScanResult,
    *,
    after_lsn: int,
    base_lsn: int,
    base_checksum: bytes | None = None,
    after_checksum: bytes | None = None,
    until_lsn: int | None = None,
    truncate_torn_tail: bool = False,
    on_frame: FrameHook | None = None,
    on_base_mismatch: FrameHook | None = None,
    on_covered: RecordHook | None = None,
    on_record: RecordHook | None = None,
    progress_every: int = 0,
) -> tuple[int, int, bytes]:
    """Applies to ``state`` (which holds records up to ``base_lsn``) every record of the log in
    ``wal_dir`` after ``base_lsn``, scanning from ``after_lsn`` (<= ``base_lsn``) up to
    ``until_lsn`` (the end when None). ``result``, ``after_checksum``, ``until_lsn`` and
    ``truncate_torn_tail`` are ``wal.scan``'s. Returns (records applied, the last LSN applied,
    its checksum); with none applied, ``base_lsn`` and ``base_checksum`` (or the zero checksum).

    Per frame, in this order: ``on_frame(frame)`` (before decoding: progress by bytes); at
    ``base_lsn``, a checksum other than ``base_checksum`` calls ``on_base_mismatch(frame)``, or
    raises LogCorrupt without it; a record up to ``base_lsn`` is decoded only for
    ``on_covered(frame, event)``; a later one is decoded, applied, then given to
    ``on_record(frame, event)``. With ``progress_every``, every LSN that is a multiple of it is
    logged. Raises LogCorrupt, CodecError."""
    assert after_lsn <= base_lsn, (after_lsn, base_lsn)
    records = 0
    reached = base_lsn
    checksum = base_checksum or ZERO_CHECKSUM
    for frame in scan(wal_dir, result, after_lsn=after_lsn, after_checksum=after_checksum,
                      truncate_torn_tail=truncate_torn_tail, until_lsn=until_lsn):
        if on_frame is not None:
            on_frame(frame)
        lsn = frame.lsn
        if lsn <= base_lsn:
            if lsn == base_lsn and base_checksum is not None and frame.checksum != base_checksum:
                if on_base_mismatch is None:
                    raise LogCorrupt(
                        path=wal_dir, offset=0, lsn=lsn,
                        reason="the snapshot's last record does not match the log at its LSN",
                    )
                on_base_mismatch(frame)
            if on_covered is not None:
                on_covered(frame, decode_event(frame.payload))
        else:
            event = decode_event(frame.payload)
            if type(event) is TransfersPosted and event.settles is None:
                # The live path's one-loop apply (``ledger._part``, tested equal to ``apply``),
                # every receiver local: replay holds every wallet of its group. (A prepared part
                # of a batch of several groups, posted, lets its holds go first: ``apply``.)
                if state.directory.groups == 1:
                    apply_part(state, event, (True,) * len(event.rows), lsn)
                else:
                    apply_part_of_group(state, event, lsn)
            else:
                apply(state, event, lsn)
            records += 1
            reached = lsn
            checksum = frame.checksum
            if on_record is not None:
                on_record(frame, event)
        if progress_every and lsn % progress_every == 0:
            log.info("recovery: read up to LSN %d", lsn)
    return records, reached, checksum


def read_records(
    wal_dir: Path, result: ScanResult, *, after_lsn: int, until_lsn: int | None = None
) -> Iterator[tuple[Frame, Event]]:
    """The decoded records after ``after_lsn`` (up to ``until_lsn``), in order, without a state.
    Raises LogCorrupt, CodecError."""
    for frame in scan(wal_dir, result, after_lsn=after_lsn, until_lsn=until_lsn):
        yield frame, decode_event(frame.payload)


def take_transactions(frames: Iterable[Frame], limit: int) -> list[tuple[int, Event]]:
    """(LSN, event) of the frames, decoded, until they hold ``limit`` transactions (whole
    records; a batch record counts one per transfer). Stops reading once there."""
    found: list[tuple[int, Event]] = []
    count = 0
    for frame in frames:
        event = decode_event(frame.payload)
        found.append((frame.lsn, event))
        count += weight(event)
        if count >= limit:
            break
    return found


# -- snapshots from the log -------------------------------------------------------------------


def replay_until(
    data_dir: Path, base: Base, *, until_lsn: int | None, on_frame: FrameHook | None = None
) -> tuple[State, int, bytes]:
    """Applies the log after ``base`` up to ``until_lsn`` (the end when None), reading a log
    that may still be written (it stops at ``until_lsn`` and never truncates). Returns the state,
    the LSN reached and that record's checksum. ``on_frame`` sees each record once applied (the
    command line's progress bar)."""
    state = base.state
    _, reached, checksum = replay_log(
        state, data_dir / "wal", ScanResult(), after_lsn=base.lsn, base_lsn=base.lsn,
        base_checksum=base.log_checksum, after_checksum=base.log_checksum, until_lsn=until_lsn,
        on_record=None if on_frame is None else lambda frame, _: on_frame(frame),
    )
    if until_lsn is not None and reached < until_lsn:
        raise LogCorrupt(
            path=data_dir / "wal", offset=0, lsn=reached + 1,
            reason=f"the log ends at LSN {reached}, before the requested LSN {until_lsn}",
        )
    return state, reached, checksum


def build_snapshot(
    data_dir: Path, *, until_lsn: int | None, created_at_us: int, on_frame: FrameHook | None = None
) -> SnapshotInfo | None:
    """Previous image + log up to ``until_lsn`` -> a new image. None if there is nothing new."""
    base = load_base(data_dir)
    for path, reason in base.skipped:
        checkpoint_log.warning("snapshot %s skipped: %s", path, reason)
    # Read before replaying: whatever it covers is in the index for good (``ledger._key_index``).
    through_lsn = read_through_lsn(data_dir)
    state, reached, checksum = replay_until(data_dir, base, until_lsn=until_lsn, on_frame=on_frame)
    if reached == base.lsn:
        return None
    trim(state.directory, through_lsn)
    return write_state(data_dir, state, lsn=reached, log_checksum=checksum, created_at_us=created_at_us)


# -- recovery -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovered:
    state: State
    history: History | None  # None: a projector process keeps the read model (``ledger._projector``)
    scan: ScanResult
    seconds: float

    def close(self) -> None:
        """For tools and tests that recover without serving: stops the history thread."""
        if self.history is not None:
            self.history.stop_thread()


def recover(data_dir: Path, *, truncate_torn_tail: bool = True, project_history: bool = True) -> Recovered:
    """Rebuilds the ledger from the newest valid snapshot and the log after it, and brings the
    history read model up to the end of the log (without ``project_history``, the ledger of
    ``--workers N``, it leaves the read model to the projector process and never opens it).
    Raises ``wal.LogCorrupt``. Blocking: run it in a worker thread."""
    started = time.perf_counter()
    prepare_data_dir(data_dir)
    if not project_history:
        base = load_base(data_dir)
        for path, reason in base.skipped:
            log.warning("snapshot %s is damaged (%s): using an older one and a longer log suffix", path, reason)
        if base.path is not None:
            log.info("recovery: snapshot %s at LSN %d", base.path.name, base.lsn)
        state, result = _replay(data_dir, base, None, truncate_torn_tail=truncate_torn_tail)
        check_state(state)
        return Recovered(state=state, history=None, scan=result, seconds=time.perf_counter() - started)
    history = History.open(data_dir / "history.sqlite3")
    try:
        base = load_base(data_dir)
        for path, reason in base.skipped:
            log.warning("snapshot %s is damaged (%s): using an older one and a longer log suffix", path, reason)
        if base.path is not None:
            log.info("recovery: snapshot %s at LSN %d", base.path.name, base.lsn)
        state, result = _replay(data_dir, base, history, truncate_torn_tail=truncate_torn_tail)
        if history.applied_lsn > result.next_lsn - 1:
            log.warning(
                "history is at LSN %d but the log ends at %d (the log was cut): rebuilding it",
                history.applied_lsn, result.next_lsn - 1,
            )
            history.reset()
            state, result = _replay(data_dir, load_base(data_dir), history, truncate_torn_tail=False)
        check_state(state)
    except BaseException:
        history.stop_thread()
        raise
    return Recovered(state=state, history=history, scan=result, seconds=time.perf_counter() - started)


def _replay(
    data_dir: Path, base: Base, history: History | None, *, truncate_torn_tail: bool
) -> tuple[State, ScanResult]:
    """Applies the log after ``base``; projects what ``history`` (when given) misses."""
    state = base.state
    snapshot_lsn = base.lsn
    # Without a history, nothing is projected: as if it were at the snapshot's LSN already.
    projected = history.applied_lsn if history is not None else snapshot_lsn
    segments = list_segments(data_dir / "wal")
    oldest = segments[0][0] if segments else snapshot_lsn + 1
    if history is not None and projected < snapshot_lsn and projected < oldest - 1:
        # The log no longer holds what the read model misses (it was deleted after segments were
        # removed): keep going from the snapshot's balances; older statements are lost.
        log.warning(
            "history read model is at LSN %d but the log starts at %d: history before LSN %d "
            "cannot be rebuilt; continuing from the snapshot's balances", projected, oldest, snapshot_lsn,
        )
        history.seed(state, snapshot_lsn)
        projected = snapshot_lsn
    start = min(projected, snapshot_lsn)
    if projected:
        log.info("history read model is at LSN %d", projected)
    result = ScanResult()
    hook: RecordHook | None = None
    batch: list[tuple[int, Event]] = []
    if history is not None:
        batch_weight = 0

        def project(frame: Frame, event: Event) -> None:
            nonlocal batch, batch_weight
            assert history is not None
            if frame.lsn > projected:
                batch.append((frame.lsn, event))
                batch_weight += weight(event)
                if batch_weight >= HISTORY_BATCH_RECORDS:
                    history.project_blocking(batch)
                    batch = []
                    batch_weight = 0

        hook = project
    replayed, _, _ = replay_log(
        state, data_dir / "wal", result, after_lsn=start, base_lsn=snapshot_lsn,
        base_checksum=base.log_checksum,
        after_checksum=base.log_checksum if start == snapshot_lsn else None,
        truncate_torn_tail=truncate_torn_tail, on_covered=hook, on_record=hook,
        progress_every=RECOVERY_PROGRESS_RECORDS,
    )
    if history is not None:
        history.project_blocking(batch)
    result.records = replayed
    if result.next_lsn <= snapshot_lsn:
        # Nothing after the snapshot in the log (or no log at all): continue the chain from it.
        result.next_lsn = snapshot_lsn + 1
        result.last_checksum = base.log_checksum or result.last_checksum
    return state, result
