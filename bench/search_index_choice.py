"""ADR 0009's measurement: how to index ``metadata.<key>=<value>`` filters in the history read
model. Two candidates on the same rows, plus the cost of no metadata index at all:

- ``table``: a side table ``(key, value, pos)`` (WITHOUT ROWID, primary key in that order), one
  row per top-level string value, written with the transaction;
- ``json``: the metadata JSON column with one expression index per key on
  ``(json_extract(metadata, '$.<key>'), pos)`` (which needs the keys known in advance);
- ``none``: the transactions alone (what inserting costs without any metadata index).

Each builds a fresh SQLite file of ``--transactions`` rows (metadata ``{"order_id": unique,
"channel": one of 4}``, as ``bench.make_ledger --history-only`` writes), timing the inserts in
transactions of 50,000, then times pages of 50 newest first below a random cursor for a rare
value (an order id) and a common one (a channel).

    python -m bench.search_index_choice [--transactions 2000000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

CHANNELS = ("web", "ios", "android", "api")
CHUNK = 50_000

BASE = """
CREATE TABLE transactions (
    pos INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, from_wallet_id TEXT NOT NULL,
    to_wallet_id TEXT NOT NULL, amount INTEGER NOT NULL, metadata TEXT, at_us INTEGER NOT NULL);
CREATE INDEX transactions_by_from ON transactions (from_wallet_id, pos);
CREATE INDEX transactions_by_to ON transactions (to_wallet_id, pos);
"""
SCHEMAS = {
    "none": BASE,
    "table": BASE + """
CREATE TABLE transaction_metadata (key TEXT NOT NULL, value TEXT NOT NULL, pos INTEGER NOT NULL,
    PRIMARY KEY (key, value, pos)) WITHOUT ROWID;
""",
    "json": BASE + """
CREATE INDEX transactions_by_order_id ON transactions (json_extract(metadata, '$.order_id'), pos);
CREATE INDEX transactions_by_channel ON transactions (json_extract(metadata, '$.channel'), pos);
""",
}
QUERIES = {
    "table": (
        "SELECT t.* FROM transaction_metadata m JOIN transactions t ON t.pos = m.pos "
        "WHERE m.key = ? AND m.value = ? AND m.pos < ? ORDER BY m.pos DESC LIMIT 50"
    ),
    "json": (
        "SELECT * FROM transactions WHERE json_extract(metadata, '$.{key}') = ? AND pos < ? "
        "ORDER BY pos DESC LIMIT 50"
    ),
}


def rows(count: int, wallets: int, seed: int) -> list[tuple[int, str, str, str, int, str, int]]:
    rng = random.Random(seed)
    made = []
    for number in range(count):
        source, target = rng.sample(range(wallets), 2)
        metadata = {"order_id": f"ord-{number}", "channel": rng.choice(CHANNELS)}
        made.append((number << 13, f"t{number}", f"w{source}", f"w{target}", rng.randint(1, 1000),
                     json.dumps(metadata), 1_700_000_000_000_000 + number))
    return made


def build(path: Path, kind: str, made: list[tuple[int, str, str, str, int, str, int]]) -> float:
    """Seconds to insert ``made`` into a fresh database of ``kind``."""
    pairs = {row[0]: [(key, value, row[0]) for key, value in json.loads(row[5]).items()] for row in made} \
        if kind == "table" else {}
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA cache_size=-262144")
    connection.executescript(SCHEMAS[kind])
    started = time.perf_counter()
    for start in range(0, len(made), CHUNK):
        chunk = made[start : start + CHUNK]
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO transactions VALUES (?,?,?,?,?,?,?)", chunk)
        if kind == "table":
            # As the projector does: from the metadata it holds as a dict (here the same JSON
            # decoded before timing), one row per key.
            connection.executemany("INSERT INTO transaction_metadata VALUES (?,?,?)",
                                   [entry for row in chunk for entry in pairs[row[0]]])
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


def page_ms(path: Path, kind: str, key: str, values: list[str], top: int) -> tuple[float, float]:
    """(p50, p99) milliseconds of a page of 50 for each value, from a random cursor."""
    connection = sqlite3.connect(path, isolation_level=None)
    rng = random.Random(2)
    sql = QUERIES[kind].format(key=key)
    latencies = []
    for value in values:
        cursor = rng.randint(top // 2, top)
        parameters = (key, value, cursor) if kind == "table" else (value, cursor)
        started = time.perf_counter()
        found = connection.execute(sql, parameters).fetchall()
        latencies.append((time.perf_counter() - started) * 1000)
        assert found or key == "order_id"
    connection.close()
    latencies.sort()
    return statistics.median(latencies), latencies[max(int(len(latencies) * 0.99) - 1, 0)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search_index_choice",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=2_000_000)
    parser.add_argument("--wallets", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary databases go")
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args(argv)
    made = rows(arguments.transactions, arguments.wallets, arguments.seed)
    top = arguments.transactions << 13
    rng = random.Random(3)
    orders = [f"ord-{rng.randrange(arguments.transactions)}" for _ in range(arguments.queries)]
    channels = [rng.choice(CHANNELS) for _ in range(arguments.queries)]
    with tempfile.TemporaryDirectory(dir=arguments.dir, prefix="search-index-choice-") as folder:
        for kind in ("none", "table", "json"):
            path = Path(folder) / f"{kind}.sqlite3"
            seconds = build(path, kind, made)
            size_mib = sum(file.stat().st_size for file in Path(folder).glob(f"{kind}.sqlite3*")) / 2**20
            line = (f"{kind:5}: {len(made):,} inserts in {seconds:.1f} s ({len(made) / seconds:,.0f}/s), "
                    f"{size_mib:,.0f} MiB")
            if kind != "none":
                order = page_ms(path, kind, "order_id", orders, top)
                channel = page_ms(path, kind, "channel", channels, top)
                line += (f"; page of 50 by order_id p50 {order[0]:.3f} ms p99 {order[1]:.3f} ms, "
                         f"by channel p50 {channel[0]:.3f} ms p99 {channel[1]:.3f} ms")
            print(line, flush=True)
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
