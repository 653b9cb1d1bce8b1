"""Transfers between ledger groups in one process: each group a ``Ledger`` behind the port its
owner serves (``LocalPort``), the workers' ``GroupRouter`` in front (with ``--groups 1``, the one
ledger's port alone). What the ledger and the router spend on crossing groups, without NATS,
the stream's replication or any other process in the clock (``python -m bench.cluster`` measures
the whole cluster).

    python -m bench.groups batch --groups 2     # batches of 1,000 random transfers
    python -m bench.groups single --groups 2    # concurrent clients, one transfer per request

Wallets are spread over the groups by the group table, so with two groups about half of the
transfers cross. Every transfer is keyed. Prints one line: the transfers committed per second of
wall time (the setup, wallets and deposits, is not in the clock). Data goes to a temporary
directory, removed afterwards.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from ledger import (
    Committed,
    CreateAsset,
    CreateWallet,
    Idempotency,
    Ledger,
    TransactionType,
    Transfer,
    recover,
)
from server._groups import GroupRouter
from server._port import LocalPort


def _transfer(transaction_id: str, source: str | None, target: str, amount: int, key: str | None) -> Transfer:
    return Transfer(
        transaction_id=transaction_id,
        type=TransactionType.DEPOSIT if source is None else TransactionType.TRANSFER,
        from_wallet_id=source, to_wallet_id=target, amount=amount, description=None, metadata=None,
        idempotency=None if key is None else Idempotency(scope="bench", key=key, fingerprint=key.encode()),
    )


async def run(mode: str, *, groups: int, shards: int, wallets: int, batches: int, clients: int,
              each: int, seed: int, data: Path) -> tuple[int, float]:
    """(transfers committed, seconds) for ``mode``."""
    async with trio.open_nursery() as nursery:
        ledgers = []
        for group in range(groups):
            path = data / f"g{group}"
            grouping: dict[str, Any] = {"group": group, "groups": groups} if groups > 1 else {}
            ledger = Ledger(await trio.to_thread.run_sync(recover, path), path, shards=shards, **grouping)
            await nursery.start(ledger.run)
            ledgers.append(ledger)
        ports = [LocalPort(ledger) for ledger in ledgers]
        router: Any = ports[0]
        if groups > 1:
            router = GroupRouter(ports)  # type: ignore[arg-type]
            nursery.start_soon(router.settle_forever)
        await router.create_asset(CreateAsset(code="USD", scale=2))
        ids = [f"w{number}" for number in range(wallets)]
        for number, wallet_id in enumerate(ids):
            await router.create_wallet(CreateWallet(wallet_id=wallet_id, owner_id="o", asset="USD", metadata=None,
                                                    idempotency=None))
            await router.transfer(_transfer(f"d{number}", None, wallet_id, 10**12, None))
        committed = 0
        started = time.perf_counter()
        if mode == "batch":
            rng = random.Random(seed)
            for batch in range(batches):
                items = []
                for item in range(1000):
                    source, target = rng.sample(ids, 2)
                    items.append(_transfer(f"b{batch}-{item}", source, target, 1, f"b{batch}-{item}"))
                outcomes = await router.transfer_batch(items, False)
                committed += sum(isinstance(outcome, Committed) for outcome in outcomes)
        else:
            async def client(number: int) -> None:
                nonlocal committed
                rng = random.Random(seed * 1000 + number)
                for request in range(each):
                    source, target = rng.sample(ids, 2)
                    key = f"c{number}-{request}"
                    outcome = await router.transfer(_transfer(key, source, target, 1, key))
                    committed += isinstance(outcome, Committed)  # (read after the await: no update lost)

            async with trio.open_nursery() as load:
                for number in range(clients):
                    load.start_soon(client, number)
        elapsed = time.perf_counter() - started
        for ledger in ledgers:
            ledger.check_invariants()
            await ledger.stop()
        nursery.cancel_scope.cancel()
    return committed, elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.groups", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["batch", "single"])
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--shards", type=int, default=4, help="shards of each group (default 4)")
    parser.add_argument("--wallets", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=20, help="batch: batches of 1,000 (default 20)")
    parser.add_argument("--clients", type=int, default=64, help="single: concurrent clients (default 64)")
    parser.add_argument("--each", type=int, default=150, help="single: transfers per client (default 150)")
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-groups-") as data:
        committed, elapsed = trio.run(lambda: run(
            options.mode, groups=options.groups, shards=options.shards, wallets=options.wallets,
            batches=options.batches, clients=options.clients, each=options.each, seed=options.seed,
            data=Path(data)))
    print(f"{options.mode}  groups {options.groups}  {committed / elapsed:,.0f} transfers/s  "
          f"({committed} in {elapsed:.2f} s)")


if __name__ == "__main__":
    main()
