from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e._server import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A running ``wallet serve`` on a fresh data directory; killed after the test."""
    process = ServerProcess(tmp_path / "data")
    process.start()
    try:
        yield process
    finally:
        process.kill()
