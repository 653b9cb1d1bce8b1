"""The data directory is the service user's alone: created 0700, an existing one that grants
anything to group or others tightened (with a warning), and what the ledger itself creates in
it private too: snapshots/ and archive/ (0700), the history read model and SQLite's -wal/-shm
files (0600)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
import trio

from ledger import (
    DATA_DIR_MODE,
    FILE_MODE,
    History,
    State,
    prepare_data_dir,
    remove_covered,
    write_state,
)
from ledger._state import new_state
from wal.testing import payload_for, write_log

pytestmark = pytest.mark.usefixtures("usual_umask")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_modes_are_the_service_users_alone() -> None:
    assert (DATA_DIR_MODE, FILE_MODE) == (0o700, 0o600)


def test_a_new_data_directory_is_created_private(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "parent" / "data"
    with caplog.at_level(logging.WARNING):
        prepare_data_dir(data)
    assert mode(data) == 0o700
    assert mode(data.parent) == 0o755  # a parent is the operator's, with the usual mode
    assert not caplog.records


@pytest.mark.parametrize("wider", [0o755, 0o750, 0o701, 0o777], ids=oct)
def test_an_existing_wider_data_directory_is_tightened_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, wider: int
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(wider)
    (data / "kept").write_text("x")
    with caplog.at_level(logging.WARNING):
        prepare_data_dir(data)
    assert mode(data) == 0o700
    assert (data / "kept").read_text() == "x"
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert f"had mode {wider:04o}: tightened to 0700" in caplog.records[0].getMessage()


def test_a_private_data_directory_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    data.chmod(0o500)  # narrower still (read-only): not ours to widen
    with caplog.at_level(logging.WARNING):
        prepare_data_dir(data)
    assert mode(data) == 0o500
    assert not caplog.records
    data.chmod(0o700)


def snapshot_at(data: Path, lsn: int) -> None:
    state: State = new_state()
    state.directory.lsn = lsn
    write_state(data, state, lsn=lsn, log_checksum=bytes(16), created_at_us=0)


async def test_snapshots_and_archive_folders_are_private(tmp_path: Path) -> None:
    batches = [[payload_for(lsn) for lsn in range(first, first + 3)] for first in range(1, 31, 3)]
    await write_log(tmp_path / "wal", batches, segment_bytes_max=300)
    await trio.to_thread.run_sync(snapshot_at, tmp_path, 20)
    await trio.to_thread.run_sync(snapshot_at, tmp_path, 25)
    assert remove_covered(tmp_path, history_lsn=30, archive=True)
    assert mode(tmp_path / "snapshots") == 0o700
    assert mode(tmp_path / "archive") == 0o700
    files = [path for folder in ("snapshots", "archive") for path in (tmp_path / folder).iterdir()]
    assert files and {mode(path) for path in files} == {0o600}


def test_the_history_read_model_and_its_sqlite_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    history = History.open(path)
    try:
        # In WAL mode the -wal and -shm files exist while a connection is open.
        names = {"history.sqlite3", "history.sqlite3-wal", "history.sqlite3-shm"}
        assert names <= {child.name for child in tmp_path.iterdir()}
        assert {mode(tmp_path / name) for name in names} == {0o600}
    finally:
        history.stop_thread()
