"""``wallet serve --workers N``: HTTP workers in front of one ledger process, under a supervisor.
Each process is SIGKILLed under load in turn (a worker, the ledger, the supervisor); every
transfer a client was told about is found afterwards exactly once, and the unanswered ones
retried with their keys duplicate nothing."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.e2e._load import (
    Ledgerbook,
    balances,
    expected_balances,
    history_ids,
    run_clients,
    send,
    setup_wallets,
)
from tests.e2e._server import ServerProcess

pytestmark = pytest.mark.e2e

DEPOSIT = 10**12
WORKERS = 2


def _processes(server: ServerProcess) -> list[dict[str, Any]]:
    with server.client() as http:
        response = http.get("/v1/admin/processes")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def supervised(tmp_path: Path) -> Any:
    server = ServerProcess(tmp_path / "data", extra_args=["--workers", str(WORKERS)])
    server.start()
    yield server
    server.kill()


async def _load_until(server: ServerProcess, ids: list[str], book: Ledgerbook, *, seed: int,
                      action: Any, settle_s: float = 3.0) -> None:
    """Concurrent transfers; once 200 were acknowledged, ``action()``; then the load goes on for
    ``settle_s`` more seconds (against what survived) and stops."""

    def pick(rng: Any) -> tuple[str, str]:
        source, target = rng.sample(ids, 2)
        return source, target

    stop = trio.Event()
    async with server.async_client() as http, trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_clients(
            http, clients=32, requests_each=100_000, pick=pick, book=book, seed=seed, stop=stop,
        ))
        while len(book.acknowledged) < 200:
            await trio.sleep(0.01)
        await trio.to_thread.run_sync(action)
        await trio.sleep(settle_s)
        stop.set()


async def _verify(server: ServerProcess, ids: list[str], book: Ledgerbook) -> None:
    async with server.async_client() as http:
        for key, body in list(book.unanswered.items()):
            for _ in range(100):
                await send(http, key, body, book)
                if key not in book.unanswered:
                    break
                await trio.sleep(0.1)
        assert not book.unanswered
        assert not book.rejected, book.rejected
        assert await balances(http, ids) == expected_balances(ids, DEPOSIT, book.acknowledged)
        seen: Counter[str] = Counter()
        for wallet_id in ids:
            seen.update(await history_ids(http, wallet_id))
        assert all(count == 2 for count in seen.values()), "a transfer appears other than once per side"
        assert set(seen) == {t["id"] for t in book.acknowledged.values()}


async def test_the_table_of_processes(supervised: ServerProcess) -> None:
    items = _processes(supervised)
    roles = Counter(item["role"] for item in items)
    assert roles == {"supervisor": 1, "ledger": 1, "projector": 1, "http": WORKERS}
    assert {item["pid"] for item in items if item["role"] == "supervisor"} == {supervised.process.pid}
    assert all(item["restarts"] == 0 and item["started_at"].endswith("Z") for item in items)
    assert all(_pid_alive(item["pid"]) for item in items)


async def test_a_killed_worker_is_replaced_and_nothing_is_lost(supervised: ServerProcess) -> None:
    ids = [f"w{index}" for index in range(20)]
    async with supervised.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
    (victim,) = [item["pid"] for item in _processes(supervised) if item["role"] == "http"][:1]
    book = Ledgerbook()
    await _load_until(supervised, ids, book, seed=1, action=lambda: os.kill(victim, signal.SIGKILL))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        workers = [item for item in _processes(supervised) if item["role"] == "http"]
        if len(workers) == WORKERS and all(_pid_alive(item["pid"]) for item in workers) \
                and victim not in {item["pid"] for item in workers}:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the worker was not replaced within 5 s: {_processes(supervised)}")
    assert sum(item["restarts"] for item in workers) == 1
    await _verify(supervised, ids, book)
    assert supervised.terminate() == 0


async def test_a_killed_ledger_process_is_restarted_and_nothing_is_lost(supervised: ServerProcess) -> None:
    ids = [f"l{index}" for index in range(20)]
    async with supervised.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
    (ledger,) = [item["pid"] for item in _processes(supervised) if item["role"] == "ledger"]
    book = Ledgerbook()
    await _load_until(supervised, ids, book, seed=2, action=lambda: os.kill(ledger, signal.SIGKILL), settle_s=4.0)
    assert not _pid_alive(ledger)
    supervised.wait_ready()
    (restarted,) = [item for item in _processes(supervised) if item["role"] == "ledger"]
    assert restarted["pid"] != ledger and restarted["restarts"] == 1
    await _verify(supervised, ids, book)
    assert supervised.terminate() == 0
    assert "snapshot at LSN" in supervised.log()


async def test_a_killed_supervisor_takes_its_children_and_a_restart_loses_nothing(
    supervised: ServerProcess,
) -> None:
    ids = [f"s{index}" for index in range(20)]
    async with supervised.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
    children = [item["pid"] for item in _processes(supervised) if item["role"] != "supervisor"]
    book = Ledgerbook()
    await _load_until(supervised, ids, book, seed=3, action=supervised.kill, settle_s=0.5)
    deadline = time.monotonic() + 5
    while any(_pid_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_pid_alive(pid) for pid in children), "a child outlived the supervisor"
    supervised.start()
    await _verify(supervised, ids, book)


async def test_sigterm_answers_what_was_accepted_and_exits_zero(supervised: ServerProcess) -> None:
    ids = [f"t{index}" for index in range(10)]
    async with supervised.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
    book = Ledgerbook()
    statuses: list[int] = []

    def stop() -> None:
        assert supervised.process is not None
        supervised.process.send_signal(signal.SIGTERM)
        statuses.append(supervised.process.wait(timeout=30))

    await _load_until(supervised, ids, book, seed=4, action=stop, settle_s=0.2)
    assert statuses == [0]
    supervised.start()
    await _verify(supervised, ids, book)


def test_one_process_mode_lists_itself(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", extra_args=["--workers", "0"])
    server.start()
    try:
        items = _processes(server)
        assert [item["role"] for item in items] == ["ledger"]
        assert server.process is not None and items[0]["pid"] == server.process.pid
    finally:
        server.kill()


def test_a_busy_port_is_refused_before_any_child_starts(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path / "a", extra_args=["--workers", "1"])
    first.start()
    try:
        second = ServerProcess(tmp_path / "b", extra_args=["--workers", "1"])
        second.port = first.port
        second.start(wait=False)
        assert second.wait_exit(timeout_s=20) == 2
        assert not (tmp_path / "b" / "wal").exists()
        with httpx.Client(base_url=first.url) as http:
            assert http.get("/health").status_code == 200
    finally:
        first.kill()
