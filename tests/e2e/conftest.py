from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e._server import ServerProcess
from tests.e2e._supervised import WORKERS


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[ServerProcess]:
    """A started server with WORKERS HTTP workers under its supervisor."""
    server = ServerProcess(tmp_path / "data", extra_args=["--workers", str(WORKERS)])
    server.start()
    yield server
    server.kill()
