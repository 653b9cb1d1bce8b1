"""A money ledger's files are the service user's alone: after a real ``wallet serve`` run (WAL
segments rolled and archived, periodic and final snapshots, the history read model with its
-wal/-shm files, the lock file) and the offline tools that write (``wallet snapshot create``,
``wallet wal repair``, ``wallet wal replay --out``), every directory in the data directory is
0700 and every file 0600. A data directory that already exists with wider permissions is
tightened on start, with a warning."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from tests.e2e._server import ServerProcess
from tests.e2e.test_api import deposit, new_wallet
from tests.e2e.test_snapshots import wallet


def modes(data_dir: Path) -> dict[str, int]:
    """Every path under ``data_dir`` (itself included, as "."): its permission bits."""
    found = {".": stat.S_IMODE(data_dir.stat().st_mode)}
    for path in data_dir.rglob("*"):
        found[str(path.relative_to(data_dir))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def assert_private(data_dir: Path) -> dict[str, int]:
    found = modes(data_dir)
    wider = {
        name: oct(mode) for name, mode in found.items()
        if mode != (0o700 if (data_dir / name).is_dir() else 0o600)
    }
    assert not wider, wider
    return found


def wait_for_log(server: ServerProcess, text: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in server.log():
        assert time.monotonic() < deadline, f"{text!r} not in the log:\n{server.log_tail()}"
        time.sleep(0.1)


@pytest.mark.usefixtures("usual_umask")
def test_the_data_directory_and_every_file_in_it_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)  # as an operator's `mkdir` leaves it
    server = ServerProcess(data, extra_args=["--snapshot-every", "20", "--segment-bytes", "4096", "--archive"])
    server.start()
    try:
        assert "tightened to 0700" in server.log(), server.log_tail()
        with server.client() as http:
            assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
            ids = [new_wallet(http) for _ in range(4)]
            for round_ in range(15):
                for wallet_id in ids:
                    deposit(http, wallet_id, 1 + round_)
            wait_for_log(server, "archived")  # a periodic snapshot, then segments moved to archive/
            running = assert_private(data)
            # While the server runs, SQLite's companions of the read model exist too.
            assert {"history.sqlite3", "history.sqlite3-wal", "history.sqlite3-shm", "LOCK"} <= set(running)
            assert any(name.startswith("archive/") for name in running), running
            assert any(name.startswith("snapshots/") for name in running), running
        # Again without periodic snapshots: the new records fill more than one segment, and
        # after a SIGKILL (no final snapshot) `wallet snapshot create` has work to do.
        server.extra_args = ["--segment-bytes", "4096"]
        server.restart()
        with server.client() as http:
            for round_ in range(16):
                for wallet_id in ids:
                    deposit(http, wallet_id, 1 + round_)
        server.kill()

        # Drop the newest segment's records: the repair moves it aside into a new folder.
        segments = sorted((data / "wal").glob("*.wal"))
        assert len(segments) >= 2
        repaired = wallet("wal", "repair", "--data", str(data), "--truncate-at-lsn", str(int(segments[-1].stem)))
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert list((data / "wal").glob("dropped-*")), repaired.stdout
        created = wallet("snapshot", "create", "--data", str(data))
        assert created.returncode == 0 and "snapshot at LSN" in created.stdout, created.stdout + created.stderr
        out = tmp_path / "replayed"
        until = str(int(segments[-1].stem) - 1)
        replayed = wallet("wal", "replay", "--data", str(data), "--until-lsn", until, "--out", str(out))
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert_private(out)
        assert_private(data)

        server.start()
        assert server.terminate() == 0, server.log_tail()  # the final snapshot, on a clean stop
        after = assert_private(data)
        assert any(name.startswith("snapshots/") for name in after), after
    finally:
        server.kill()
