"""Crash loop: the real server under concurrent load, SIGKILLed at random moments, restarted on
the same data, many times. The clients keep their own record of what was acknowledged and retry
every unanswered request with its idempotency key; after each restart the server must hold
exactly what the clients were told, no less and no more.

    make crashloop ITERATIONS=50        # CI runs a short version through pytest

``iterate`` is the loop itself, whatever is broken and however it is mended; the cluster crash
loop (``tests.e2e.crashloop_cluster``) runs it against ``wallet cluster up``.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from tests.e2e._load import (
    Ledgerbook,
    check_against_book,
    hot_pair_picker,
    retry_unanswered,
    setup_wallets,
    under_load,
)
from tests.e2e._server import ServerProcess

DEPOSIT = 10**12
WALLETS = 30

# ``disrupt(iteration, rng, book)`` breaks something while the load runs and returns what it
# did (a record of the iteration); ``mend(record)`` runs after the load stopped and returns once
# the server is ready again.
Disrupt = Callable[[int, random.Random, Ledgerbook], Awaitable[dict[str, Any]]]
Mend = Callable[[dict[str, Any]], Awaitable[None]]


def seed_from_environment() -> int:
    return int(os.environ.get("CRASHLOOP_SEED", str(random.SystemRandom().randrange(1, 10**6))))


async def iterate(server: ServerProcess, *, iterations: int, seed: int, clients: int, disrupt: Disrupt,
                  mend: Mend, pause_unanswered_s: float = 0.0, history_every_iteration: bool = False,
                  settle_s: float = 0.0, batch_share: float = 0.0,
                  report: Callable[[dict[str, Any]], None] | None = None) -> tuple[Ledgerbook, list[dict[str, Any]]]:
    """``iterations`` times: load from ``clients`` clients, ``disrupt`` after a random moment
    (0.2-1.5 s), stop the load, ``mend``, retry every unanswered request with its key, and check
    the server against the clients' record (balances and conservation every iteration; the
    history too with ``history_every_iteration``, else after the last). With ``settle_s``, a
    check that fails is repeated until it holds, for up to that long (several ledger groups: the
    owners finish credits the workers left); the iteration's ``settle_s`` is the time until it
    held and ``checks`` the number of checks. ``batch_share`` of the requests are atomic batches
    of two transfers (``run_clients``). Returns the record and one dict per iteration (with ``retried``: how many requests
    were left unanswered)."""
    rng = random.Random(seed)
    ids = [f"cl{index}" for index in range(WALLETS)]
    book = Ledgerbook()
    async with server.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
    pick = hot_pair_picker(ids)
    records = []
    for iteration in range(iterations):
        async with server.async_client() as http, under_load(
            http, book, pick=pick, clients=clients, seed=seed * 1000 + iteration, prefix=f"i{iteration}",
            pause_unanswered_s=pause_unanswered_s, batch_share=batch_share,
        ):
            await trio.sleep(rng.uniform(0.2, 1.5))
            record = await disrupt(iteration, rng, book)
        await mend(record)
        record.update(iteration=iteration, retried=len(book.unanswered))
        async with server.async_client() as http:
            await retry_unanswered(http, book)
            history = history_every_iteration or iteration == iterations - 1
            checked = trio.current_time()
            checks = 0
            while True:
                checks += 1
                try:
                    await check_against_book(http, ids, book, deposit=DEPOSIT, history=history)
                    break
                except AssertionError as error:
                    if trio.current_time() - checked < settle_s:
                        await trio.sleep(0.5)
                        continue
                    raise AssertionError(f"seed {seed} iteration {iteration} ({record}): {error}") from None
            if settle_s:
                record.update(settle_s=round(trio.current_time() - checked, 2), checks=checks)
        record["acknowledged"] = len(book.acknowledged)
        records.append(record)
        if report is not None:
            report(record)
    return book, records


async def crash_loop(data_dir: Path, *, iterations: int, seed: int, clients: int = 32) -> dict[str, int]:
    server = ServerProcess(data_dir, extra_args=["--snapshot-every", "500", "--segment-bytes", "65536"])
    server.start()

    async def kill(iteration: int, rng: random.Random, book: Ledgerbook) -> dict[str, Any]:
        server.kill()
        return {"killed": "server"}

    async def restart(record: dict[str, Any]) -> None:
        server.start()

    try:
        book, records = await iterate(server, iterations=iterations, seed=seed, clients=clients,
                                      disrupt=kill, mend=restart)
    finally:
        server.kill()
    return {"iterations": len(records), "acknowledged": len(book.acknowledged),
            "retried": sum(record["retried"] for record in records)}


def main() -> int:
    iterations = int(os.environ.get("ITERATIONS", "30"))
    seed = seed_from_environment()
    with tempfile.TemporaryDirectory(prefix="crashloop-") as temp:
        totals = trio.run(lambda: crash_loop(Path(temp) / "data", iterations=iterations, seed=seed))
    print(f"crash loop seed {seed}: {totals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
