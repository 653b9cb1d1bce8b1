"""Latency of ``GET /v1/transactions`` pages on a large history read model, as an HTTP worker
reads it: a read-only connection (``History.open_readonly``), one ``History.search`` per page
(the query's SQLite work on aiosqlite's thread, the rows turned into ``TransactionRow``s). The
HTTP route adds its own parsing and rendering on top (about a millisecond; README,
*Performance*).

Each shape runs ``--queries`` pages with random parameters drawn from the file (wallets, order
ids, windows of time, cursors) and prints p50, p99 and max in milliseconds, with the mean number
of items per page and how many pages were cut short by the work budget (fewer items than
asked, with a cursor). Time ranges are fractions of the file's time span (``time/10``: a tenth).
Shapes: indexed ones (a wallet; a wallet + a metadata key + a time range, the issue's target; a
merchant wallet + channel + time; an order id; a type; a user's wallets; a time window; a deep
page of a wallet), and what is not indexed (a metadata value alone that a quarter of all
transactions hold; ``min_amount`` alone on a rare amount; a deep page of everything).

    python -m bench.search --data /tmp/search10m [--queries 300] [--limit 50] [--shape NAME ...]

The data directory comes from ``python -m bench.make_ledger --history-only``.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

from ledger import History, TransactionQuery, TransactionType
from ledger._search import EXAMINED_MAX


class Draw:
    """Random parameters taken from the file itself."""

    def __init__(self, path: Path, seed: int) -> None:
        self.rng = random.Random(seed)
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as connection:
            self.first_us, self.last_us = connection.execute(
                "SELECT (SELECT at_us FROM transactions ORDER BY pos LIMIT 1), "
                "(SELECT at_us FROM transactions ORDER BY pos DESC LIMIT 1)").fetchone()
            self.low, self.high = connection.execute("SELECT min(pos), max(pos) FROM transactions").fetchone()
            self.wallets = connection.execute("SELECT count(*) FROM wallets WHERE id GLOB 'w*'").fetchone()[0]
            self.transfers = connection.execute(
                "SELECT count(*) FROM transaction_metadata WHERE key = 'channel'").fetchone()[0]
        connection.close()

    def wallet(self) -> str:
        return f"w{self.rng.randrange(self.wallets)}"

    def window(self, fraction: float) -> tuple[int, int]:
        """A random window of that fraction of the file's time span (the file's clock is
        arbitrary: ``bench.make_ledger --history-only`` spans minutes, a real one months)."""
        length_us = int((self.last_us - self.first_us) * fraction)
        start = self.rng.randint(self.first_us, max(self.first_us, self.last_us - length_us))
        return start, start + length_us

    def cursor(self) -> int:
        """A position in the older half of the file: a deep page."""
        return self.rng.randint(self.low, (self.low + self.high) // 2)


def shapes(draw: Draw, limit: int) -> dict[str, Callable[[], TransactionQuery]]:
    rng = draw.rng

    def wallet_metadata_time() -> TransactionQuery:
        since, until = draw.window(0.1)
        return TransactionQuery(wallet_id=draw.wallet(), metadata=(("channel", rng.choice(["web", "ios"])),),
                                since_us=since, until_us=until, limit=limit)

    def merchant_metadata_time() -> TransactionQuery:
        since, until = draw.window(0.01)
        return TransactionQuery(wallet_id=f"m{rng.randrange(10)}", metadata=(("channel", "android"),),
                                since_us=since, until_us=until, limit=limit)

    return {
        # Indexed.
        "wallet": lambda: TransactionQuery(wallet_id=draw.wallet(), limit=limit),
        "wallet+channel+time/10": wallet_metadata_time,
        "merchant+channel+time/100": merchant_metadata_time,
        "order_id": lambda: TransactionQuery(
            metadata=(("order_id", f"ord-{rng.randrange(draw.transfers)}"),), limit=limit),
        "type=deposit": lambda: TransactionQuery(type=TransactionType.DEPOSIT, limit=limit),
        "owner (user token)": lambda: TransactionQuery(owner_id=f"o{rng.randrange(draw.wallets // 2)}", limit=limit),
        "time window /1000": lambda: TransactionQuery(
            since_us=(window := draw.window(0.001))[0], until_us=window[1], limit=limit),
        "all, first page": lambda: TransactionQuery(limit=limit),
        "wallet, deep page": lambda: TransactionQuery(wallet_id=draw.wallet(), before=draw.cursor(), limit=limit),
        # Not indexed, or not selective.
        "channel alone (1 in 4)": lambda: TransactionQuery(metadata=(("channel", "web"),), limit=limit),
        "channel, deep page": lambda: TransactionQuery(metadata=(("channel", "web"),), before=draw.cursor(),
                                                       limit=limit),
        "min_amount (1 in 1000)": lambda: TransactionQuery(min_amount=99_900, limit=limit),
        "max_amount + channel": lambda: TransactionQuery(max_amount=100, metadata=(("channel", "api"),),
                                                         limit=limit),
        "all, deep page": lambda: TransactionQuery(before=draw.cursor(), limit=limit),
    }


async def measure(path: Path, names: list[str], queries: int, limit: int, seed: int) -> None:
    history = await trio.to_thread.run_sync(History.open_readonly, path)
    draw = Draw(path, seed)
    try:
        print(f"{path}: {draw.transfers:,} transfers with metadata, {draw.wallets:,} wallets; "
              f"pages of {limit}; {queries} queries per shape; budget {EXAMINED_MAX:,} rows per page", flush=True)
        made = shapes(draw, limit)
        for name in names or list(made):
            latencies = []
            items = 0
            short = 0
            for _ in range(queries):
                query = made[name]()
                started = time.perf_counter()
                rows, before = await history.search(query)
                latencies.append((time.perf_counter() - started) * 1000)
                items += len(rows)
                short += len(rows) < limit and before is not None
            latencies.sort()
            p99 = latencies[max(int(len(latencies) * 0.99) - 1, 0)]
            print(f"{name:24} p50 {statistics.median(latencies):8.2f} ms  p99 {p99:8.2f} ms  "
                  f"max {latencies[-1]:8.2f} ms  items/page {items / queries:6.1f}  cut short {short}", flush=True)
    finally:
        await trio.to_thread.run_sync(history.stop_thread)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a data directory with history.sqlite3")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--shape", action="append", default=[], help="only these shapes (repeatable)")
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args(argv)
    trio.run(measure, arguments.data / "history.sqlite3", arguments.shape, arguments.queries, arguments.limit,
             arguments.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
