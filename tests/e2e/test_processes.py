"""``wallet serve --workers N``: HTTP workers in front of one ledger process, under a supervisor.
Each process is SIGKILLed under load in turn (a worker, the ledger, the supervisor); every
transfer a client was told about is found afterwards exactly once, and the unanswered ones
retried with their keys duplicate nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.e2e._load import (
    Ledgerbook,
    setup_wallets,
)
from tests.e2e._server import ADMIN_TOKEN, ServerProcess
from tests.e2e._supervised import (
    DEPOSIT,
    WORKERS,
    load_until,
    pid_alive,
    processes,
    verify,
)

pytestmark = pytest.mark.e2e

async def test_the_table_of_processes(supervised: ServerProcess) -> None:
    items = processes(supervised)
    roles = Counter(item["role"] for item in items)
    assert roles == {"supervisor": 1, "ledger": 1, "projector": 1, "webhooks": 1, "http": WORKERS}
    assert {item["pid"] for item in items if item["role"] == "supervisor"} == {supervised.process.pid}
    assert all(item["restarts"] == 0 and item["started_at"].endswith("Z") for item in items)
    assert all(pid_alive(item["pid"]) for item in items)
    # The fixture waited for one 200: then every worker is up, whichever takes a connection.
    assert ready_on_fresh_connections(supervised) == [200] * 20


def ready_on_fresh_connections(server: ServerProcess, count: int = 20) -> list[int]:
    statuses = []
    for _ in range(count):
        with httpx.Client(base_url=server.url, timeout=5) as http:  # a new connection each
            statuses.append(http.get("/ready").status_code)
    return statuses


async def test_a_killed_worker_is_replaced_and_nothing_is_lost(supervised: ServerProcess) -> None:
    ids = [f"w{index}" for index in range(20)]
    async with supervised.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
    (victim,) = [item["pid"] for item in processes(supervised) if item["role"] == "http"][:1]
    book = Ledgerbook()
    await load_until(supervised, ids, book, seed=1, action=lambda: os.kill(victim, signal.SIGKILL))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        workers = [item for item in processes(supervised) if item["role"] == "http"]
        if len(workers) == WORKERS and all(pid_alive(item["pid"]) for item in workers) \
                and victim not in {item["pid"] for item in workers}:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the worker was not replaced within 5 s: {processes(supervised)}")
    assert sum(item["restarts"] for item in workers) == 1
    deadline = time.monotonic() + 10
    while ready_on_fresh_connections(supervised, 1) != [200]:
        assert time.monotonic() < deadline, "not ready 10 s after the worker was replaced"
        time.sleep(0.05)
    assert ready_on_fresh_connections(supervised) == [200] * 20
    await verify(supervised, ids, book)
    assert supervised.terminate() == 0


async def test_a_killed_ledger_process_is_restarted_and_nothing_is_lost(supervised: ServerProcess) -> None:
    ids = [f"l{index}" for index in range(20)]
    async with supervised.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
    (ledger,) = [item["pid"] for item in processes(supervised) if item["role"] == "ledger"]
    book = Ledgerbook()
    await load_until(supervised, ids, book, seed=2, action=lambda: os.kill(ledger, signal.SIGKILL), settle_s=4.0)
    assert not pid_alive(ledger)
    supervised.wait_ready()
    (restarted,) = [item for item in processes(supervised) if item["role"] == "ledger"]
    assert restarted["pid"] != ledger and restarted["restarts"] == 1
    await verify(supervised, ids, book)
    assert supervised.terminate() == 0
    assert "snapshot at LSN" in supervised.log()


async def test_a_killed_supervisor_takes_its_children_and_a_restart_loses_nothing(
    supervised: ServerProcess,
) -> None:
    ids = [f"s{index}" for index in range(20)]
    async with supervised.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
    children = [item["pid"] for item in processes(supervised) if item["role"] != "supervisor"]
    book = Ledgerbook()
    await load_until(supervised, ids, book, seed=3, action=supervised.kill, settle_s=0.5)
    deadline = time.monotonic() + 5
    while any(pid_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(pid) for pid in children), "a child outlived the supervisor"
    supervised.start()
    await verify(supervised, ids, book)


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

    await load_until(supervised, ids, book, seed=4, action=stop, settle_s=0.2)
    assert statuses == [0]
    supervised.start()
    await verify(supervised, ids, book)


def test_one_process_mode_lists_itself(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", extra_args=["--workers", "0"])
    server.start()
    try:
        items = processes(server)
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


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_process_group_is_a_clean_stop(tmp_path: Path, signal_number: int) -> None:
    """Ctrl-C in a terminal (SIGINT) or ``timeout`` (SIGTERM) signals every process of the
    group at once: the ledger starts its graceful stop on its own, then the supervisor's SIGTERM
    reaches it again while it writes its final snapshot. Found by ``timeout 12 make run``: that
    second signal killed the ledger (status -15) and the supervisor exited 1."""
    server = ServerProcess(tmp_path / "data", extra_args=["--workers", "2"])
    log = open(server.log_path, "ab")
    server.process = subprocess.Popen(server.command(), stdout=log, stderr=subprocess.STDOUT,
                                      env=dict(os.environ, WALLET_ADMIN_TOKEN=ADMIN_TOKEN),
                                      start_new_session=True)  # its own group, as a terminal's job
    log.close()
    try:
        server.wait_ready()
        with server.client() as http:
            assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
        os.killpg(server.process.pid, signal_number)
        assert server.process.wait(timeout=30) == 0, server.log_tail()
        assert "the ledger process stopped with status" not in server.log(), server.log_tail()
        assert "stopped cleanly at LSN" in server.log(), server.log_tail()
    finally:
        server.kill()
