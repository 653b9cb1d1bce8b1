from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e._server import DEFAULT_LOOP, ServerProcess


@pytest.fixture
def loop() -> str:
    """The event loop of the ``server`` fixture; ``tests.e2e._server.on_each_loop`` (a
    ``parametrize("loop", ...)``) overrides it."""
    return DEFAULT_LOOP


@pytest.fixture
def server(tmp_path: Path, loop: str) -> Iterator[ServerProcess]:
    """A running ``wallet serve`` on a fresh data directory; killed after the test."""
    process = ServerProcess(tmp_path / "data", loop=loop)
    process.start()
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The usual umask (022) while the test runs, and in the processes it starts: under it, a file
    created with the default modes is world-readable, so a test of the data directory's modes
    cannot pass by the grace of a stricter umask in the environment that runs it."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)
