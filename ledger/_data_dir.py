"""The data directory's permissions: a money ledger's files are the service user's alone.

The data directory is created 0700 and every file the service or its tools create in it is 0600
(WAL segments, snapshots and their temp files, the history read model and SQLite's -wal/-shm
files, the lock file, ``admin.token``, archived segments); its subdirectories are 0700 too.
``wal/`` and ``snapshots/`` create their own files with their own copies of these modes (they
import nothing from here); the constants below are checked against theirs at import time.

A data directory that already exists with any group or other permission is tightened to 0700,
with a warning, on every start and before every offline tool that writes: the rejected
alternative, only warning, leaves the ledger readable by every local user until someone reads
the log. Files an older version created with wider modes keep them, but nobody else can reach
them through a 0700 directory. An operator who needs a backup agent to read the directory gives
it the service user's identity (or ACLs on the backup copy), not permissions here. Nothing here
changes ownership. Must never be called on a directory the service does not own by design (it
would tighten it).
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import snapshots
import wal

log = logging.getLogger("ledger")

DATA_DIR_MODE = 0o700
FILE_MODE = 0o600
assert wal.DIRECTORY_MODE == DATA_DIR_MODE and wal.FILE_MODE == FILE_MODE
assert snapshots.DIRECTORY_MODE == DATA_DIR_MODE and snapshots.FILE_MODE == FILE_MODE


def prepare_data_dir(data_dir: Path) -> None:
    """Creates ``data_dir`` with mode 0700 (its missing parents with the usual modes), or
    tightens an existing one that grants anything to its group or to others. A directory that
    cannot be tightened (not its owner) is used as it is, with a warning."""
    data_dir.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if mode & 0o077 == 0:
        return
    try:
        data_dir.chmod(DATA_DIR_MODE)
    except PermissionError as error:
        log.warning("data directory %s has mode %04o and could not be tightened to %04o (%s): other "
                    "users may read the ledger", data_dir, mode, DATA_DIR_MODE, error)
        return
    log.warning("data directory %s had mode %04o: tightened to %04o (a ledger's files are the service "
                "user's alone)", data_dir, mode, DATA_DIR_MODE)
