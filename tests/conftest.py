from __future__ import annotations

import ast
import importlib
import importlib.machinery
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e._server import DEFAULT_LOOP, ServerProcess

SETUP_PY = Path(__file__).resolve().parent.parent / "setup.py"


def compiled_module_names() -> list[str]:
    """The modules ``setup.py`` compiles with ``WALLET_COMPILE=1`` (its ``COMPILED`` list)."""
    for node in ast.parse(SETUP_PY.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "COMPILED" for target in node.targets
        ):
            paths: list[str] = ast.literal_eval(node.value)
            return [path.removesuffix(".py").replace("/", ".") for path in paths]
    raise AssertionError("setup.py has no COMPILED list")


def pytest_configure(config: pytest.Config) -> None:
    """Which build is under test, checked before any test runs. ``WALLET_EXPECT_COMPILED=1``
    (``make test-compiled``): every module in setup.py's ``COMPILED`` must be imported from an
    extension module, not from its ``.py``. Otherwise (``make test``) none may be, so that a
    stray ``.so`` next to the sources can never pass for the pure build (ADR 0012)."""
    compiled = os.environ.get("WALLET_EXPECT_COMPILED") == "1"
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for name in compiled_module_names():
        path = importlib.import_module(name).__file__ or ""
        if path.endswith(suffixes) != compiled:
            raise pytest.UsageError(
                f"{name} was imported from {path}: expected the "
                + ("compiled build (make test-compiled)" if compiled else "pure-Python build")
            )


# The modules that took longest in ``--durations`` runs of the whole suite (2026-12-07),
# longest first. ``make test`` hands whole modules to its workers (``--dist loadscope``, so a
# module's servers start once), in collection order; these go first, then the other end-to-end
# modules, then the quick ones, which fill the gaps at the end instead of one long module
# running alone while the other workers idle. The order only; it selects nothing.
LONGEST_FIRST = (
    "tests/e2e/test_crashloop_cluster.py", "tests/e2e/test_snapshots.py", "tests/e2e/test_crash.py",
    "tests/e2e/test_concurrency.py", "tests/e2e/test_cluster.py", "tests/e2e/test_batch.py",
    "tests/e2e/test_withdrawals.py", "tests/e2e/test_processes.py", "tests/bench/test_e2e.py",
    "tests/e2e/test_hardening_edge.py", "tests/e2e/test_crashloop.py", "tests/e2e/test_schemathesis.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> tuple[int, int]:
        path = item.nodeid.split("::")[0]
        if path in LONGEST_FIRST:
            return (0, LONGEST_FIRST.index(path))
        return (1, 0) if path.startswith(("tests/e2e/", "tests/bench/")) else (2, 0)

    items.sort(key=rank)  # stable: each module's tests keep their order


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


@pytest.fixture(scope="module")
def nats_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Three JetStream nodes from the project's pinned ``nats-server`` (``server._natsnodes``),
    one cluster per test module, stopped after it."""
    from server._natsnodes import NatsCluster

    nodes = NatsCluster(tmp_path_factory.mktemp("nats"))
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def nats_client(nats_nodes: Any) -> Iterator[Any]:
    """A ``wal.StreamClient`` connected to the module's ``nats_nodes``."""
    from wal.testing import connected

    with connected(nats_nodes.urls, "test-client") as client:
        yield client
