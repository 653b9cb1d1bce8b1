"""Builds a data directory with a large ledger through the real core (actors, WAL, history),
without HTTP, for restart and replay measurements.

    python -m bench.make_ledger --data /tmp/big --wallets 100000 --transfers 1000000

``--history-only`` writes only the history read model (``<data>/history.sqlite3``), through the
projector's own code (``History.project_blocking``) from records made up here, without a log:
ten million transactions in minutes, for ``bench.search``. Every transfer carries metadata
``{"order_id": "ord-<n>", "channel": <one of 4>}``; a tenth go to one of 10 merchant wallets
(``m0``..``m9``, about a million transactions each at 10 M); owner ``o<k>`` holds wallets
``w<2k>`` and ``w<2k+1>``; timestamps advance 0-2 ms per record from 2026-01-01, one record in
four a batch record of up to 100 transfers. Such a file has no log behind it: a server started
on that directory rebuilds its read model from its (empty) log.

    python -m bench.make_ledger --history-only --data /tmp/search10m --wallets 100000 --transfers 10000000
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
    Event,
    History,
    Ledger,
    Overloaded,
    TransactionType,
    Transfer,
    Transferred,
    WalletCreated,
    recover,
    shard_of,
    transfers_posted,
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


CHANNELS = ("web", "ios", "android", "api")
MERCHANTS = 10
HISTORY_START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
HISTORY_CHUNK = 100_000  # transactions per projector call


def build_history(data: Path, wallets: int, transfers: int, seed: int) -> None:
    """The read model alone: made-up records through the projector's code (see the docstring)."""
    rng = random.Random(seed)
    data.mkdir(parents=True, exist_ok=True)
    history = History.open(data / "history.sqlite3")
    assert history.applied_lsn == 0, "--history-only writes a new read model"
    started = time.monotonic()
    ids = [f"w{index}" for index in range(wallets)]
    merchants = [f"m{index}" for index in range(MERCHANTS)]
    at_us = HISTORY_START_US
    records: list[tuple[int, Event]] = []
    lsn = 0

    def add(event: Event) -> None:
        nonlocal lsn
        lsn += 1
        records.append((lsn, event))

    def flush() -> None:
        history.project_blocking(records)
        records.clear()

    try:
        for index, wallet_id in enumerate(ids + merchants):
            add(WalletCreated(wallet_id=wallet_id, owner_id=f"o{index // 2}", asset="BEN", metadata=None,
                              at_us=at_us, idempotency=None))
        for wallet_id in ids + merchants:
            add(Transferred(transaction_id=f"d{wallet_id}", type=TransactionType.DEPOSIT,
                            from_wallet_id="treasury:BEN", to_wallet_id=wallet_id, asset="BEN", amount=10**9,
                            description=None, metadata=None, at_us=at_us, idempotency=None))
        flush()
        made = 0
        pending = 0
        while made < transfers:
            at_us += rng.randint(0, 2000)
            count = min(rng.randint(2, 100) if rng.random() < 0.25 else 1, transfers - made)
            moves = []
            for number in range(made, made + count):
                source = rng.choice(ids)
                target = rng.choice(merchants) if rng.random() < 0.1 else rng.choice(ids)
                if target == source:
                    target = merchants[0]
                moves.append(Transferred(
                    transaction_id=f"t{number}", type=TransactionType.TRANSFER, from_wallet_id=source,
                    to_wallet_id=target, asset="BEN", amount=rng.randint(1, 100_000), description=None,
                    metadata={"order_id": f"ord-{number}", "channel": rng.choice(CHANNELS)}, at_us=at_us,
                    idempotency=None))
            add(moves[0] if count == 1 else transfers_posted(moves, at_us))
            made += count
            pending += count
            if pending >= HISTORY_CHUNK:
                flush()
                pending = 0
                if made % 1_000_000 < HISTORY_CHUNK:
                    print(f"{made:,} transfers, {made / (time.monotonic() - started):,.0f}/s", flush=True)
        flush()
    finally:
        history.stop_thread()
    print(f"history built in {time.monotonic() - started:.1f} s; last LSN {lsn}; {made:,} transfers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--wallets", type=int, default=100_000)
    parser.add_argument("--transfers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--history-only", action="store_true",
                        help="write only the history read model, with metadata, without a log (bench.search)")
    arguments = parser.parse_args(argv)
    if arguments.history_only:
        build_history(arguments.data, arguments.wallets, arguments.transfers, arguments.seed)
        return 0
    trio.run(build, arguments.data, arguments.wallets, arguments.transfers, arguments.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
