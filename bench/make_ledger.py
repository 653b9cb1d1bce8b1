"""Builds a data directory with a large ledger through the real core (actors, WAL, history),
without HTTP, for restart and replay measurements.

    python -m bench.make_ledger --data /tmp/big --wallets 100000 --transfers 1000000
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import trio

from ledger import (
    Committed,
    CreateAsset,
    CreateWallet,
    Ledger,
    Overloaded,
    TransactionType,
    Transfer,
    recover,
    shard_of,
)

CHUNK = 4000


async def build(data: Path, wallets: int, transfers: int, seed: int) -> None:
    recovered = await trio.to_thread.run_sync(recover, data)
    ledger = Ledger(recovered, data)
    rng = random.Random(seed)
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await ledger.create_asset(CreateAsset(code="BEN", scale=2))
        ids = [f"w{index}" for index in range(wallets)]

        async def run_chunk(replies: list) -> None:
            for reply in replies:
                outcome = await reply.wait()
                assert outcome is not None

        async def submitted(submit: Any) -> Any:
            while True:
                try:
                    return submit()
                except Overloaded:  # the history projector is behind: back off, as a client would
                    await trio.sleep(0.05)

        for start in range(0, wallets, CHUNK):
            replies = []
            for wallet_id in ids[start : start + CHUNK]:
                shard = ledger.shards[shard_of(wallet_id, len(ledger.shards))]
                command = CreateWallet(wallet_id=wallet_id, owner_id=f"o{wallet_id}", asset="BEN", metadata=None,
                                       idempotency=None)
                replies.append(await submitted(lambda shard=shard, command=command: shard.submit_command(command)))
            await run_chunk(replies)
        for start in range(0, wallets, CHUNK):
            replies = []
            for wallet_id in ids[start : start + CHUNK]:
                shard = ledger.shards[shard_of(wallet_id, len(ledger.shards))]
                deposit = Transfer(transaction_id=f"d{wallet_id}", type=TransactionType.DEPOSIT, from_wallet_id=None,
                                   to_wallet_id=wallet_id, amount=10**9, description=None, metadata=None,
                                   idempotency=None)
                replies.append(await submitted(lambda shard=shard, deposit=deposit: shard.submit_transfer(deposit)))
            await run_chunk(replies)
        print(f"{wallets} wallets funded in {time.monotonic() - started:.1f} s", flush=True)
        done = 0
        t0 = time.monotonic()
        while done < transfers:
            batch = min(CHUNK, transfers - done)
            replies = []
            for number in range(done, done + batch):
                source, target = rng.sample(ids, 2)
                transfer = Transfer(
                    transaction_id=f"t{number}", type=TransactionType.TRANSFER, from_wallet_id=source,
                    to_wallet_id=target, amount=rng.randint(1, 1000), description=None, metadata=None,
                    idempotency=None,
                )
                shard = ledger.shards[shard_of(target, len(ledger.shards))]
                while True:
                    try:
                        replies.append(shard.submit_transfer(transfer))
                        break
                    except Overloaded:  # the history projector is behind: back off, as a client would
                        await trio.sleep(0.05)
            for reply in replies:
                assert isinstance(await reply.wait(), Committed)
            done += batch
            if done % 100_000 < CHUNK:
                print(f"{done} transfers, {done / (time.monotonic() - t0):,.0f}/s", flush=True)
        await ledger.stop()
    print(f"built in {time.monotonic() - started:.1f} s; last LSN {ledger.wal.durable_lsn}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--wallets", type=int, default=100_000)
    parser.add_argument("--transfers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args(argv)
    trio.run(build, arguments.data, arguments.wallets, arguments.transfers, arguments.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
