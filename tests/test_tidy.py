"""Walks the source ASTs (like TigerBeetle's tidy.zig) and fails when a design line is crossed:
imports between packages, floats in the ledger, clock/random/uuid in the state machine,
trio in the shells (they run on any anyio backend), print() outside the command line, the bench
harness's report and bench's scripts, sync routes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["ledger", "wal", "snapshots", "server", "bench", "wallet_client"]
# Which top-level packages each package may import (besides the stdlib and third parties).
ALLOWED = {
    "ledger": {"ledger", "wal", "snapshots"},
    "wal": {"wal"},
    "snapshots": {"snapshots"},
    "server": {"server", "ledger", "wal", "snapshots", "bench", "wallet_client"},
    "bench": {"bench", "server", "ledger", "wal", "snapshots", "wallet_client"},
    # The client ships to users of the API: it knows the contract, never the server's insides.
    "wallet_client": {"wallet_client"},
}
# The pure core: stdlib only, and no clock, randomness or I/O.
PURE = [
    "ledger/_model.py", "ledger/_state.py", "ledger/_decide.py", "ledger/_apply.py", "ledger/_invariants.py",
    "ledger/_part.py",
]
PURE_MODULES_FORBIDDEN = {"time", "datetime", "random", "uuid", "os", "trio", "anyio", "msgpack", "socket", "secrets"}
THIRD_PARTY = {"trio", "anyio", "uvloop", "msgpack", "starlette", "hypercorn", "aiosqlite", "prometheus_client", "httpx"}
PRINT_ALLOWED = {
    "server/cli.py", "server/_tools.py", "server/_seed.py",  # the command line
    "bench/_report.py",  # what `wallet bench` tells (its other modules report through it)
}


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported_modules(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_respect_package_boundaries(package: str) -> None:
    offenders = []
    for path in sources(package):
        for module in imported_modules(ast.parse(path.read_text())):
            top = module.split(".")[0]
            if top in ALLOWED and top not in ALLOWED[package]:
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not offenders, offenders


@pytest.mark.parametrize("relative", PURE)
def test_the_state_machine_is_pure(relative: str) -> None:
    tree = ast.parse((ROOT / relative).read_text())
    offenders = []
    for module in imported_modules(tree):
        top = module.split(".")[0]
        if top in PURE_MODULES_FORBIDDEN or top in THIRD_PARTY or top in {"wal", "snapshots", "server"}:
            offenders.append(module)
    assert not offenders, f"{relative} imports {offenders}"


# ``wallet serve --loop trio|asyncio|uvloop`` runs the same shells on every backend, so they are
# written against anyio and never import trio (nor asyncio's loop policies): the choice of loop
# lives in server/_serve.py, which picks Hypercorn's worker by name (``hypercorn.trio`` or
# ``hypercorn.asyncio``) and ``anyio.run``'s backend. bench/ keeps trio: client-side harnesses.
BACKEND_NEUTRAL = ["ledger", "wal", "snapshots", "server", "wallet_client"]
BACKEND_MODULES = {"trio", "trio_asyncio", "uvloop"}
BACKEND_ALLOWED = {
    "server/_serve.py": {"uvloop"},  # the --loop uvloop loop factory
    # `wallet bank-sim` is a standalone test double of a bank, not part of the server: it runs
    # on trio alone.
    "server/_banksim.py": {"trio"},
    "server/cli.py": {"trio"},
    # The WAL writer's thread wakes whichever loop waits for it through that loop's own
    # thread-safe "call soon"; trio (a dependency) answers whether it is the one running.
    "wal/_thread.py": {"trio"},
}


@pytest.mark.parametrize("package", BACKEND_NEUTRAL)
def test_the_shells_do_not_import_trio(package: str) -> None:
    offenders = []
    for path in sources(package):
        relative = str(path.relative_to(ROOT))
        for module in imported_modules(ast.parse(path.read_text())):
            top = module.split(".")[0]
            if top in BACKEND_MODULES and top not in BACKEND_ALLOWED.get(relative, set()):
                offenders.append(f"{relative} imports {module}")
    assert not offenders, offenders


# Event-loop shells measure time in seconds; money never passes through them.
FLOAT_ALLOWED = {"ledger/_ledger.py", "ledger/_sqlite.py"}


def test_no_float_literals_in_the_ledger() -> None:
    offenders = []
    for path in sources("ledger"):
        if str(path.relative_to(ROOT)) in FLOAT_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, float):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} float()")
    assert not offenders, offenders


def test_print_only_in_the_command_line_and_bench() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sources(package):
            relative = str(path.relative_to(ROOT))
            if relative in PRINT_ALLOWED or (package == "bench" and not path.name.startswith("_")):
                continue  # bench's standalone scripts (make_ledger, echo, ...) print their results
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                    offenders.append(f"{relative}:{node.lineno}")
    assert not offenders, offenders


def test_every_route_handler_is_async() -> None:
    import inspect

    from starlette.routing import Route

    from server.api import Deps, routes

    endpoints = [route.endpoint for route in routes(Deps.build(admin_token="admin")) if isinstance(route, Route)]
    assert len(endpoints) > 30
    offenders = [endpoint.__qualname__ for endpoint in endpoints if not inspect.iscoroutinefunction(endpoint)]
    assert not offenders, offenders


# The idempotency tier's Bloom filter lives in one process's memory, is rebuilt from the index at
# every start and routes nothing: a salted hash is what it wants.
HASH_ALLOWED = {"ledger/_key_tier.py"}


def test_python_hash_is_not_used_for_sharding() -> None:
    for path in sources("ledger"):
        if str(path.relative_to(ROOT)) in HASH_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "hash", f"{path}: salted hash() must not route wallets"
