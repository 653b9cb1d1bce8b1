"""One writer per data directory: ``wallet serve`` holds an exclusive ``flock`` on ``<data>/LOCK``
for its whole life; offline tools that change the directory take it too, so they cannot run
under a live server. The kernel drops the lock when the process dies, even by SIGKILL. Taking
the lock first makes the data directory private (``ledger.prepare_data_dir``: 0700, tightened
if it exists with wider permissions), so everything after it writes into a private directory."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ledger import FILE_MODE, prepare_data_dir


class DataDirLocked(Exception):
    """Another process (a running server) holds the data directory."""


class DataDirLock:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __del__(self) -> None:
        os.close(self._fd)


def lock_data_dir(data_dir: Path) -> DataDirLock:
    prepare_data_dir(data_dir)
    fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirLocked(f"{data_dir} is in use by another process (is `wallet serve` running on it?)") from None
    return DataDirLock(fd)
