"""Transaction search over the history read model (``ledger._search``): every filter and
combination agrees with a plain reference model, page after page, including pages cut short by
the work budget and owners with more wallets than the union of streams takes; holds keep the
place of their creation when captured or voided; pages never skip or repeat while new
transactions are projected between them; a read-only connection answers the same; a schema 2
file is migrated in place (its rows keep their order and their metadata becomes searchable);
the SQL rule for searchable metadata is the Python one."""

from __future__ import annotations

import json
import random
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from ledger import (
    History,
    HoldCaptured,
    HoldCreated,
    HoldVoided,
    TransactionQuery,
    TransactionStatus,
    TransactionType,
    Transferred,
    VoidReason,
    WalletCreated,
    _search,
    transfers_posted,
)
from ledger._search import METADATA_SQL, searchable_metadata

OWNERS = ["o0", "o1", "o2"]
WALLETS = [f"w{number}" for number in range(8)]  # owner o<number % 3>
CHANNELS = ["web", "ios", "api"]


def _metadata(rng: random.Random, number: int) -> dict[str, Any] | None:
    roll = rng.randrange(6)
    if roll == 0:
        return None
    metadata: dict[str, Any] = {"channel": rng.choice(CHANNELS), "order_id": f"ord-{number % 7}"}
    if roll == 1:
        metadata["n"] = number  # not a string: never matches
        metadata["bad key"] = "x"  # not a searchable key
        metadata["long"] = "v" * 300  # longer than a search value may be
    return metadata


class Log:
    """A random log and the reference model of its transactions (creation order)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.records: list[tuple[int, Any]] = []
        self.rows: list[dict[str, Any]] = []  # in creation order
        self.pending: list[dict[str, Any]] = []
        self.at_us = 1_000
        for number, wallet_id in enumerate(WALLETS):
            self._append(WalletCreated(wallet_id=wallet_id, owner_id=OWNERS[number % 3], asset="USD",
                                       metadata=None, at_us=self.at_us, idempotency=None))
        self.number = 0

    def _append(self, event: Any) -> None:
        self.records.append((len(self.records) + 1, event))

    def _moved(self, type_: TransactionType, source: str, target: str) -> Transferred:
        self.number += 1
        moved = Transferred(transaction_id=f"t{self.number}", type=type_, from_wallet_id=source,
                            to_wallet_id=target, asset="USD", amount=self.rng.randint(1, 100), description=None,
                            metadata=_metadata(self.rng, self.number), at_us=self.at_us, idempotency=None)
        self.rows.append({"id": moved.transaction_id, "type": type_, "status": TransactionStatus.POSTED,
                          "from": source, "to": target, "amount": moved.amount, "at_us": self.at_us,
                          "metadata": moved.metadata or {}})
        return moved

    def grow(self, count: int) -> None:
        for _ in range(count):
            self.at_us += self.rng.choice([0, 1, 7])  # timestamps never decrease, and repeat
            source, target = self.rng.sample(WALLETS, 2)
            roll = self.rng.randrange(10)
            if roll == 0:
                self._append(self._moved(TransactionType.DEPOSIT, "treasury:USD", target))
            elif roll == 1:
                size = self.rng.randint(2, 5)
                moves = tuple(self._moved(TransactionType.TRANSFER, *self.rng.sample(WALLETS, 2)) for _ in range(size))
                self._append(transfers_posted(moves, self.at_us))
            elif roll == 2:
                self.number += 1
                lsn = len(self.records) + 1
                type_ = self.rng.choice([TransactionType.TRANSFER, TransactionType.WITHDRAWAL])
                to_wallet = target if type_ == TransactionType.TRANSFER else "treasury:USD"
                metadata = _metadata(self.rng, self.number)
                event = HoldCreated(transaction_id=f"h{self.number}", type=type_, from_wallet_id=source,
                                    to_wallet_id=to_wallet, asset="USD", amount=self.rng.randint(1, 100),
                                    description=None, metadata=metadata, at_us=self.at_us, deadline_us=0,
                                    destination=None, idempotency=None)
                row = {"id": event.transaction_id, "type": type_, "status": TransactionStatus.PENDING,
                       "from": source, "to": to_wallet, "amount": event.amount, "at_us": self.at_us,
                       "metadata": metadata or {}, "event": event, "lsn": lsn}
                self.rows.append(row)
                self.pending.append(row)
                self._append(event)
            elif roll == 3 and self.pending:
                row = self.pending.pop(self.rng.randrange(len(self.pending)))
                created: HoldCreated = row["event"]
                common = dict(transaction_id=created.transaction_id, type=created.type,
                              from_wallet_id=created.from_wallet_id, to_wallet_id=created.to_wallet_id,
                              asset="USD", description=None, metadata=created.metadata, created_at_us=created.at_us,
                              created_lsn=row["lsn"], at_us=self.at_us, idempotency=None)
                if self.rng.randrange(2):
                    amount = self.rng.randint(1, created.amount)
                    self._append(HoldCaptured(amount=amount, held_amount=created.amount, reference=None, **common))
                    row.update(status=TransactionStatus.POSTED, amount=amount)
                else:
                    reason = self.rng.choice([VoidReason.EXPIRED, VoidReason.REFUSED])
                    self._append(HoldVoided(amount=created.amount, reason=reason, detail=None, **common))
                    row["status"] = TransactionStatus.FAILED if reason == VoidReason.REFUSED else TransactionStatus.VOIDED
            else:
                self._append(self._moved(TransactionType.TRANSFER, source, target))

    def expected(self, query: TransactionQuery) -> list[str]:
        owned = {wallet for number, wallet in enumerate(WALLETS) if OWNERS[number % 3] == query.owner_id}

        def keep(row: dict[str, Any]) -> bool:
            return (
                (query.wallet_id is None or query.wallet_id in (row["from"], row["to"]))
                and (query.owner_id is None or bool(owned & {row["from"], row["to"]}))
                and (query.type is None or row["type"] == query.type)
                and (query.status is None or row["status"] == query.status)
                and (query.since_us is None or row["at_us"] >= query.since_us)
                and (query.until_us is None or row["at_us"] <= query.until_us)
                and (query.min_amount is None or row["amount"] >= query.min_amount)
                and (query.max_amount is None or row["amount"] <= query.max_amount)
                and all(searchable(row["metadata"]).get(key) == value for key, value in query.metadata)
            )

        return [row["id"] for row in reversed(self.rows) if keep(row)]


def searchable(metadata: dict[str, Any]) -> dict[str, str]:
    """The reference's rule: string values of at most 256 characters under plain keys."""
    return {key: value for key, value in metadata.items()
            if type(value) is str and len(value) <= 256 and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key)}


def random_query(rng: random.Random, log: Log) -> TransactionQuery:
    def maybe(value: Any) -> Any:
        return value if rng.randrange(3) == 0 else None

    times = sorted(rng.randint(900, log.at_us + 50) for _ in range(2))
    amounts = sorted(rng.randint(1, 100) for _ in range(2))
    metadata = [("channel", rng.choice(CHANNELS)), ("order_id", f"ord-{rng.randrange(7)}"), ("n", "3"),
                ("long", "v" * 300), ("bad key", "x"), ("missing", "x")]
    return TransactionQuery(
        wallet_id=maybe(rng.choice([*WALLETS, "treasury:USD", "nobody"])), owner_id=maybe(rng.choice(OWNERS)),
        type=maybe(rng.choice(list(TransactionType))), status=maybe(rng.choice(list(TransactionStatus))),
        since_us=maybe(times[0]), until_us=maybe(times[1]), min_amount=maybe(amounts[0]),
        max_amount=maybe(amounts[1]),
        metadata=tuple(rng.sample(metadata, rng.choice([0, 0, 1, 1, 2]))), limit=rng.choice([1, 3, 10, 1000]),
    )


async def read_all(history: History, query: TransactionQuery) -> tuple[list[str], int]:
    """Every page of ``query`` in order: the ids, and how many pages it took."""
    found: list[str] = []
    before = None
    for pages in range(1, 10_000):
        rows, before = await history.search(TransactionQuery(**{**_fields(query), "before": before}))
        assert len(rows) <= query.limit
        found += [row.id for row in rows]
        if before is None:
            return found, pages
    raise AssertionError("the pages did not end")


def _fields(query: TransactionQuery) -> dict[str, Any]:
    return {name: getattr(query, name) for name in TransactionQuery.__dataclass_fields__}


@pytest.mark.parametrize(("seed", "examined_max", "union_max"), [(1, 20_000, 32), (2, 7, 32), (3, 20_000, 1)])
async def test_every_filter_agrees_with_the_reference_page_after_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, examined_max: int, union_max: int
) -> None:
    # A tiny budget cuts pages short (some even empty, with a cursor); a union limit of one
    # wallet checks owners' rows one by one instead of merging their wallets' streams.
    monkeypatch.setattr(_search, "EXAMINED_MAX", examined_max)
    monkeypatch.setattr(_search, "OWNER_WALLETS_UNION_MAX", union_max)
    log = Log(seed)
    log.grow(400)
    history = await trio.to_thread.run_sync(History.open, tmp_path / "h.sqlite3")
    try:
        await trio.to_thread.run_sync(history.project_blocking, log.records)
        rng = random.Random(seed)
        cut_short = 0
        for _ in range(150):
            query = random_query(rng, log)
            found, pages = await read_all(history, query)
            assert found == log.expected(query), query
            cut_short += pages > len(found) // query.limit + 1
        assert cut_short > 0 if examined_max < 100 else cut_short == 0
        everything, _ = await read_all(history, TransactionQuery(limit=1000))
        assert everything == [row["id"] for row in reversed(log.rows)]  # holds stay where they were made
    finally:
        await trio.to_thread.run_sync(history.stop_thread)


async def test_pages_never_skip_or_repeat_while_transactions_are_projected(tmp_path: Path) -> None:
    log = Log(7)
    log.grow(150)
    history = await trio.to_thread.run_sync(History.open, tmp_path / "h.sqlite3")
    try:
        await trio.to_thread.run_sync(history.project_blocking, log.records)
        projected = len(log.records)
        for query in (TransactionQuery(limit=7), TransactionQuery(wallet_id="w1", limit=3),
                      TransactionQuery(metadata=(("channel", "web"),), limit=4)):
            before_first = log.expected(query)
            seen: list[str] = []
            before = None
            while True:
                rows, before = await history.search(TransactionQuery(**{**_fields(query), "before": before}))
                seen += [row.id for row in rows]
                # New transactions (and hold resolutions) land between two pages.
                log.grow(5)
                await trio.to_thread.run_sync(history.project_blocking, log.records[projected:])
                projected = len(log.records)
                if before is None:
                    break
            assert len(seen) == len(set(seen))  # no repeat
            assert [tx for tx in seen if tx in before_first] == before_first  # no skip, same order
            assert set(seen) <= set(before_first)  # nothing newer than the first page
    finally:
        await trio.to_thread.run_sync(history.stop_thread)


async def test_a_read_only_connection_answers_the_same(tmp_path: Path) -> None:
    log = Log(11)
    log.grow(100)
    history = await trio.to_thread.run_sync(History.open, tmp_path / "h.sqlite3")
    reader = None
    try:
        await trio.to_thread.run_sync(history.project_blocking, log.records)
        reader = await trio.to_thread.run_sync(History.open_readonly, tmp_path / "h.sqlite3")
        query = TransactionQuery(owner_id="o1", metadata=(("channel", "ios"),), limit=2)
        assert (await read_all(reader, query))[0] == log.expected(query) == (await read_all(history, query))[0]
    finally:
        if reader is not None:
            await trio.to_thread.run_sync(reader.stop_thread)
        await trio.to_thread.run_sync(history.stop_thread)


# Schema 2 as written by the previous release (tables that schema 3 changes, and those it reads).
SCHEMA_2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE transactions (
    id TEXT PRIMARY KEY, lsn INTEGER NOT NULL, type INTEGER NOT NULL,
    from_wallet_id TEXT NOT NULL, to_wallet_id TEXT NOT NULL, asset TEXT NOT NULL,
    amount INTEGER NOT NULL, description TEXT, metadata TEXT, at_us INTEGER NOT NULL,
    status INTEGER NOT NULL DEFAULT 0);
CREATE TABLE entries (
    wallet_id TEXT NOT NULL, pos INTEGER NOT NULL, transaction_id TEXT NOT NULL,
    type INTEGER NOT NULL, direction INTEGER NOT NULL, amount INTEGER NOT NULL,
    balance_after INTEGER NOT NULL, counterparty_wallet_id TEXT NOT NULL, at_us INTEGER NOT NULL,
    status INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (wallet_id, pos)) WITHOUT ROWID;
CREATE INDEX entries_by_time ON entries (wallet_id, at_us, pos);
CREATE INDEX entries_by_type ON entries (wallet_id, type, pos);
CREATE TABLE balances (wallet_id TEXT PRIMARY KEY, balance INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE wallets (lsn INTEGER PRIMARY KEY, id TEXT NOT NULL, owner_id TEXT NOT NULL, asset TEXT NOT NULL);
CREATE INDEX wallets_by_owner ON wallets (owner_id, lsn);
CREATE INDEX wallets_by_asset ON wallets (asset, lsn);
"""


async def test_a_schema_2_file_is_migrated_and_its_rows_become_searchable(tmp_path: Path) -> None:
    log = Log(5)
    log.grow(120)
    old = len(log.records)
    # A schema 2 file holding the first records, as the previous release projected them: its
    # transactions' rows (in log order, a captured hold's LSN moved to its capture).
    path = tmp_path / "old.sqlite3"
    reference = History.open(tmp_path / "reference.sqlite3")
    try:
        reference.project_blocking(log.records)
        with sqlite3.connect(tmp_path / "reference.sqlite3") as source:
            rows = source.execute("SELECT id, lsn, type, from_wallet_id, to_wallet_id, asset, amount, description, "
                                  "metadata, at_us, status FROM transactions ORDER BY pos").fetchall()
            wallets = source.execute("SELECT * FROM wallets").fetchall()
    finally:
        reference.stop_thread()
    with sqlite3.connect(path) as connection:
        connection.executescript(SCHEMA_2)
        connection.executemany("INSERT INTO transactions VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        connection.executemany("INSERT INTO wallets VALUES (?,?,?,?)", wallets)
        connection.execute("INSERT INTO meta VALUES ('schema', 2), ('applied_lsn', ?)", (old,))
    connection.close()
    log.grow(40)
    new = len(log.records)
    history = await trio.to_thread.run_sync(History.open, path)
    try:
        await trio.to_thread.run_sync(history.project_blocking, log.records[old:new])
        rng = random.Random(5)
        for query in [TransactionQuery(limit=9), TransactionQuery(metadata=(("channel", "web"),), limit=5),
                      *(random_query(rng, log) for _ in range(40))]:
            assert (await read_all(history, query))[0] == log.expected(query), query
    finally:
        await trio.to_thread.run_sync(history.stop_thread)
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (4,)
    check.close()


def test_the_sql_rule_for_searchable_metadata_is_the_python_one() -> None:
    metadata: dict[str, Any] = {
        "ok": "v", "A-Z_0-9": "v", "-": "", "k" * 64: "v", "k" * 65: "v", "a.b": "v", "a b": "v", "é": "v",
        "a]": "v", "a*": "v", "": "v", "n": 1, "t": True, "z": None, "l": ["v"], "o": {"k": "v"},
        "max": "é" * 256, "over": "é" * 257, "emoji": "\U0001f600",
    }
    connection = sqlite3.connect(":memory:")
    in_sql = connection.execute(
        f"SELECT j.key, j.value FROM json_each(?) j WHERE {METADATA_SQL}", (json.dumps(metadata),)
    ).fetchall()
    assert sorted(in_sql) == sorted(searchable_metadata(metadata))
    assert {key for key, _ in in_sql} == {"ok", "A-Z_0-9", "-", "k" * 64, "max", "emoji"}
