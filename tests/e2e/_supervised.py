"""What the tests of ``wallet serve --workers N`` share: the table of processes, whether a pid
lives, a server under a supervisor, load until an action (a kill, a signal) and the check of
everything the clients were told afterwards."""

from __future__ import annotations

import os
from typing import Any

import trio

from tests.e2e._load import Ledgerbook, check_against_book, retry_unanswered, run_clients
from tests.e2e._server import ServerProcess

DEPOSIT = 10**12
WORKERS = 2


def processes(server: ServerProcess) -> list[dict[str, Any]]:
    with server.client() as http:
        response = http.get("/v1/admin/processes")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped between the two looks (ESRCH on read)
        return False


async def load_until(server: ServerProcess, ids: list[str], book: Ledgerbook, *, seed: int,
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


async def verify(server: ServerProcess, ids: list[str], book: Ledgerbook) -> None:
    async with server.async_client() as http:
        await retry_unanswered(http, book)
        await check_against_book(http, ids, book, deposit=DEPOSIT)
