"""The history projector process's rate (``ledger._projector``): transactions per second from the
log into SQLite, the way ``wallet serve --workers N`` runs it (tail the segment files, decode,
one SQLite transaction per ``PROJECTOR_BATCH_MAX`` transactions), on a big batch load.

It builds a log through the real core (a ledger that does not project, non-atomic batches of
``--batch`` transfers with idempotency keys, as ``POST /v1/transfers/batch`` makes them), then
times a ``Projector`` catching up from an empty read model to the end of that log, with the
ledger's side of ``sync`` answering at once. Reported: the wall-clock rate, and how the time
splits between reading + decoding the log and writing SQLite.

    python -m bench.projector [--transactions 500000] [--wallets 10000] [--batch 8190]
                              [--batch-max 50000] [--data DIR] [--repeat 1] [--metadata]

``--metadata`` gives every transfer ``{"order_id": <unique>, "channel": <one of 4>}`` (what the
search's metadata table costs the projector; ADR 0009).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anyio

from ledger import (
    PROJECTOR_BATCH_MAX,
    Committed,
    CreateAsset,
    CreateWallet,
    History,
    Idempotency,
    Ledger,
    Projector,
    TransactionType,
    Transfer,
    recover,
)
from server._gc import tune_gc
from wal import Tailer

CHANNELS = ("web", "ios", "android", "api")


async def build(data: Path, *, transactions: int, wallets: int, batch: int, seed: int, metadata: bool = False) -> int:
    """A log of ``transactions`` transfers in batches; returns its last LSN."""
    ledger = Ledger(await anyio.to_thread.run_sync(lambda: recover(data, project_history=False)), data)
    rng = random.Random(seed)
    ids = [f"w{index}" for index in range(wallets)]
    async with anyio.create_task_group() as group:
        await group.start(ledger.run)
        await ledger.create_asset(CreateAsset(code="BEN", scale=2))
        for wallet_id in ids:
            await ledger.create_wallet(CreateWallet(wallet_id=wallet_id, owner_id="o" + wallet_id, asset="BEN",
                                                    metadata=None, idempotency=None))
        for index, wallet_id in enumerate(ids):
            await ledger.transfer(Transfer(transaction_id=f"d{index}", type=TransactionType.DEPOSIT,
                                           from_wallet_id=None, to_wallet_id=wallet_id, amount=10**12,
                                           description=None, metadata=None, idempotency=None))
        made = 0
        while made < transactions:
            items = []
            for _ in range(min(batch, transactions - made)):
                source, target = rng.sample(ids, 2)
                key = f"k{made}"
                items.append(Transfer(
                    transaction_id=f"t{made}", type=TransactionType.TRANSFER, from_wallet_id=source,
                    to_wallet_id=target, amount=rng.randint(1, 1000), description=None,
                    metadata={"order_id": f"ord-{made}", "channel": rng.choice(CHANNELS)} if metadata else None,
                    idempotency=Idempotency(scope="bench", key=key, fingerprint=key.encode()),
                ))
                made += 1
            outcomes = await ledger.transfer_batch(items, atomic=False)
            assert isinstance(outcomes, list) and all(isinstance(outcome, Committed) for outcome in outcomes)
        last = ledger.wal.durable_lsn
        await ledger.stop()
    return last


async def project(data: Path, end_lsn: int, batch_max: int) -> tuple[float, float, int, float, float]:
    """(seconds, CPU seconds of this process, transactions, seconds reading + decoding, seconds
    building rows and in SQLite) to catch up."""
    (data / "history.sqlite3").unlink(missing_ok=True)
    done = anyio.Event()

    async def sync(applied_lsn: int, wait_s: float, linger_s: float) -> int:
        if applied_lsn >= end_lsn:
            done.set()
            await anyio.sleep_forever()
        return end_lsn

    projector = Projector(data, sync, batch_max=batch_max)
    reading = [0.0]
    read = projector.read

    def timed_read(tailer: Tailer, until_lsn: int) -> list[tuple[int, object]]:
        started = time.perf_counter()
        try:
            return read(tailer, until_lsn)  # type: ignore[return-value]
        finally:
            reading[0] += time.perf_counter() - started

    projector.read = timed_read  # type: ignore[method-assign, assignment]
    started = time.perf_counter()
    cpu_started = time.process_time()
    async with anyio.create_task_group() as group:
        group.start_soon(projector.run)
        await done.wait()
        elapsed = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
        group.cancel_scope.cancel()
    history = projector.history
    assert isinstance(history, History) and history.applied_lsn == end_lsn
    sqlite_s = history.statistics().seconds_total
    return elapsed, cpu_s, projector.transactions, reading[0], sqlite_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.projector", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=500_000)
    parser.add_argument("--wallets", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=8190, help="transfers per batch request")
    parser.add_argument("--batch-max", type=int, default=PROJECTOR_BATCH_MAX,
                        help="transactions per SQLite transaction of the projector")
    parser.add_argument("--data", type=Path, default=None, help="keep (or reuse) the log here")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--metadata", action="store_true", help="transfers carry an order id and a channel")
    arguments = parser.parse_args(argv)
    tune_gc()  # the collector's thresholds of the projector process
    temporary = None
    data = arguments.data
    if data is None:
        temporary = tempfile.mkdtemp(prefix="bench-projector-")
        data = Path(temporary)
    try:
        if not (data / "wal").exists():
            started = time.perf_counter()
            end = anyio.run(lambda: build(data, transactions=arguments.transactions, wallets=arguments.wallets,
                                          batch=arguments.batch, seed=arguments.seed,
                                          metadata=arguments.metadata))
            print(f"log built: LSN {end} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        else:
            end = recover(data, project_history=False).scan.next_lsn - 1
        for _ in range(arguments.repeat):
            elapsed, cpu_s, transactions, reading_s, sqlite_s = anyio.run(project, data, end, arguments.batch_max)
            # CPU seconds too: on a shared machine the wall clock measures the neighbours as well.
            print(f"projected {transactions:,} transactions ({end:,} records) in {elapsed:.2f} s: "
                  f"{transactions / elapsed:,.0f} transactions/s; {cpu_s:.2f} CPU s, "
                  f"{transactions / cpu_s:,.0f} transactions per CPU second "
                  f"(read + decode {reading_s:.2f} s, rows + SQLite {sqlite_s:.2f} s)")
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
