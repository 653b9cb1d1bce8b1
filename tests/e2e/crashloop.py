"""Crash loop: the real server under concurrent load, SIGKILLed at random moments, restarted on
the same data, many times. The clients keep their own record of what was acknowledged and retry
every unanswered request with its idempotency key; after each restart the server must hold
exactly what the clients were told, no less and no more.

    make crashloop ITERATIONS=50        # CI runs a short version through pytest
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path

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

DEPOSIT = 10**12


async def crash_loop(data_dir: Path, *, iterations: int, seed: int, clients: int = 32) -> dict[str, int]:
    rng = random.Random(seed)
    server = ServerProcess(data_dir, extra_args=["--snapshot-every", "500", "--segment-bytes", "65536"])
    server.start()
    ids = [f"cl{index}" for index in range(30)]
    book = Ledgerbook()
    totals = {"iterations": 0, "acknowledged": 0, "retried": 0}
    try:
        async with server.async_client() as http:
            await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)

        def pick(local: random.Random) -> tuple[str, str]:
            if local.random() < 0.3:
                return ("cl0", "cl1") if local.random() < 0.5 else ("cl1", "cl0")  # a hot pair
            source, target = local.sample(ids, 2)
            return source, target

        for iteration in range(iterations):
            stop = trio.Event()
            async with server.async_client() as http, trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(run_clients, http, clients=clients, requests_each=10_000, pick=pick, book=book,
                            seed=seed * 1000 + iteration, prefix=f"i{iteration}", stop=stop)
                )
                await trio.sleep(rng.uniform(0.2, 1.5))
                server.kill()
                stop.set()
            server.start()
            retried = len(book.unanswered)
            async with server.async_client() as http:
                for key, body in list(book.unanswered.items()):
                    await send(http, key, body, book)
                if book.unanswered or book.rejected:
                    raise AssertionError(f"iteration {iteration}: retries failed: {book.unanswered or book.rejected}")
                actual = await balances(http, ids)
                expected = expected_balances(ids, DEPOSIT, book.acknowledged)
                if actual != expected:
                    raise AssertionError(f"seed {seed} iteration {iteration}: balances differ from the clients' record")
            totals["iterations"] += 1
            totals["retried"] += retried
        async with server.async_client() as http:
            seen: Counter[str] = Counter()
            for wallet_id in ids:
                seen.update(await history_ids(http, wallet_id))
            acknowledged = {transaction["id"] for transaction in book.acknowledged.values()}
            if set(seen) != acknowledged or any(count != 2 for count in seen.values()):
                raise AssertionError(f"seed {seed}: the history does not hold each acknowledged transfer exactly once")
        totals["acknowledged"] = len(book.acknowledged)
        return totals
    finally:
        server.kill()


def main() -> int:
    iterations = int(os.environ.get("ITERATIONS", "30"))
    seed = int(os.environ.get("CRASHLOOP_SEED", str(random.SystemRandom().randrange(1, 10**6))))
    with tempfile.TemporaryDirectory(prefix="crashloop-") as temp:
        totals = trio.run(lambda: crash_loop(Path(temp) / "data", iterations=iterations, seed=seed))
    print(f"crash loop seed {seed}: {totals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

