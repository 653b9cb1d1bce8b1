"""Memory of a ledger whose idempotency records exceed ``--idempotency-memory-keys``: keyed
batches of 1,000 from 8 tasks against an in-process ledger (no HTTP, no history read model),
printing every 5 s the keys made, the records in memory, those spilled to disk, the process's
resident memory and the batches refused (overloaded) while the spill was behind.

    python -m bench.key_tier --cap 200000 --seconds 60
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import trio

from ledger import Idempotency, Overloaded, TransactionType, Transfer, open_ledger
from ledger.testing import setup
from server._gc import tune_gc

WALLETS = 10_000
TASKS = 8
BATCH = 1000


def rss_mb() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) // 1024


async def main(cap: int, seconds: int, report_every_s: int) -> None:
    tune_gc()
    data = Path(tempfile.mkdtemp(prefix="key-tier-"))
    ledger = open_ledger(data, shards=4, memory_keys=cap or None)
    ledger.wal._on_durable = ledger.events.feed  # the ledger alone, as `wallet bench --no-history`
    ids = [f"w{index}" for index in range(WALLETS)]
    made = 0
    refused = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ids, deposit=10**9)
        stop = time.monotonic() + seconds

        async def client(seed: int) -> None:
            nonlocal made, refused
            rng = random.Random(seed)
            while time.monotonic() < stop:
                items = []
                for _ in range(BATCH):
                    number = made
                    made += 1
                    source, target = rng.sample(ids, 2)
                    items.append(Transfer(
                        transaction_id=f"t{number}", type=TransactionType.TRANSFER, from_wallet_id=source,
                        to_wallet_id=target, amount=1, description=None, metadata=None,
                        idempotency=Idempotency(scope="admin", key=f"key-{number}", fingerprint=b"0" * 16),
                    ))
                while True:
                    try:
                        await ledger.transfer_batch(items, atomic=False)
                        break
                    except Overloaded:
                        refused += 1
                        await trio.sleep(0.01)

        async def report() -> None:
            started = time.monotonic()
            while time.monotonic() < stop + report_every_s:
                await trio.sleep(report_every_s)
                tier = ledger.keys
                print(f"t={time.monotonic() - started:.0f}s keys={made:,} "
                      f"memory={len(ledger.directory.idempotency):,} "
                      f"spilled={tier.spilled if tier else 0:,} rss={rss_mb()} MB refused={refused}", flush=True)

        async with trio.open_nursery() as clients:
            clients.start_soon(report)
            for seed in range(TASKS):
                clients.start_soon(client, seed)
        await ledger.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap", type=int, default=200_000, help="records in memory (0: all)")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--every", type=int, default=5, help="seconds between lines")
    arguments = parser.parse_args()
    trio.run(main, arguments.cap, arguments.seconds, arguments.every)
