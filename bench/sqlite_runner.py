"""Where the history read model's aiosqlite calls should run on each event loop (ADR 0003): the
dedicated asyncio thread, or natively on the server's own asyncio loop.

For each mode it times ``History.transaction`` lookups of a missing id (one indexed query, all
hops included), then lets the projector catch up on a backlog of transfers (batches of
``BATCH_RECORDS_MAX``, fed 500 at a time as group commits would) while a ticker task sleeping 1 ms records how late the event loop wakes
it: the stall the projector's Python work inflicts on everything else on that loop.

    python -m bench.sqlite_runner [--queries 2000] [--wallets 10000] [--records 100000] [--repeat 2]
                                   [--modes uvloop+native,uvloop+thread]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from ledger import History, TransactionType, Transferred, WalletCreated

FEED_RECORDS = 500  # records handed over per (simulated) group commit

MODES = {
    # name: (anyio backend, backend options, attach: run aiosqlite natively on the loop)
    "trio+thread": ("trio", {}, False),
    "asyncio+thread": ("asyncio", {}, False),
    "asyncio+native": ("asyncio", {}, True),
    "uvloop+thread": ("asyncio", {"use_uvloop": True}, False),
    "uvloop+native": ("asyncio", {"use_uvloop": True}, True),
}


def workload(wallets: int, records: int) -> list[tuple[int, Any]]:
    events: list[tuple[int, Any]] = []
    for index in range(wallets):
        events.append((len(events) + 1, WalletCreated(
            wallet_id=f"w{index}", owner_id=f"o{index}", asset="USD", metadata=None, at_us=index, idempotency=None,
        )))
    for index in range(records):
        source, target = (index * 7919) % wallets, (index * 104729 + 1) % wallets
        if source == target:
            target = (target + 1) % wallets
        lsn = len(events) + 1
        events.append((lsn, Transferred(
            transaction_id=f"t{index}", type=TransactionType.TRANSFER, from_wallet_id=f"w{source}",
            to_wallet_id=f"w{target}", asset="USD", amount=1 + index % 1000, description=None,
            metadata=None, at_us=lsn, idempotency=None,
        )))
    return events


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def measure(path: Path, attach: bool, queries: int, events: list[tuple[int, Any]]) -> dict[str, float]:
    history = await anyio.to_thread.run_sync(History.open, path)
    if attach:
        await history.attach()
    for _ in range(50):  # warm up
        await history.transaction("missing")
    latencies = []
    for _ in range(queries):
        started = time.perf_counter()
        await history.transaction("missing")
        latencies.append(time.perf_counter() - started)
    lateness: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await anyio.sleep(0.001)
            lateness.append(time.perf_counter() - started - 0.001)

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        group.start_soon(history.run)
        await anyio.sleep(0.05)
        started = time.perf_counter()
        for index in range(0, len(events), FEED_RECORDS):  # as group commits would
            history.feed((lsn, b"", event) for lsn, event in events[index : index + FEED_RECORDS])
            await anyio.sleep(0)
        history.close()
        while history.applied_lsn < events[-1][0]:
            await history.wait_projected(events[-1][0], timeout_s=600)
        seconds = time.perf_counter() - started
        done.set()
    await history.aclose()
    return {
        "query_p50_us": statistics.median(latencies) * 1e6,
        "query_p99_us": percentile(latencies, 0.99) * 1e6,
        "records_per_s": len(events) / seconds,
        "late_p50_ms": statistics.median(lateness) * 1e3,
        "late_p99_ms": percentile(lateness, 0.99) * 1e3,
        "late_max_ms": max(lateness) * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--wallets", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, in this order")
    arguments = parser.parse_args(argv)
    events = workload(arguments.wallets, arguments.records)
    print("| mode | query p50 | query p99 | projector records/s | loop late p50 | p99 | max |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for round_ in range(arguments.repeat):
        for name in arguments.modes.split(","):
            backend, options, attach = MODES[name.strip()]
            with tempfile.TemporaryDirectory() as directory:
                path = Path(directory) / "history.sqlite3"
                result = anyio.run(
                    measure, path, attach, arguments.queries, events, backend=backend, backend_options=options
                )
            print(
                f"| {name} (run {round_ + 1}) | {result['query_p50_us']:.0f} us | {result['query_p99_us']:.0f} us "
                f"| {result['records_per_s']:,.0f} | {result['late_p50_ms']:.2f} ms | {result['late_p99_ms']:.2f} ms "
                f"| {result['late_max_ms']:.1f} ms |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
