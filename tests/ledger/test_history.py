"""The history projector: a batch is applied in one SQLite transaction together with its LSN, so a
failure in the middle of a batch leaves neither part of it nor a moved LSN; projecting again gives
exactly the incremental result. A batch record (several transfers at one LSN) becomes one
transaction and two entries per transfer, at positions that keep their order; a schema 1 file is
migrated in place; the backlog counts transactions."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ledger import (
    ENTRY_POSITION_BITS,
    History,
    TransactionType,
    Transferred,
    WalletCreated,
    transfers_posted,
)
from ledger._history import SCHEMA_VERSION


def events() -> list[tuple[int, Any]]:
    records: list[tuple[int, Any]] = []
    for index, wallet_id in enumerate(["a", "b"], start=1):
        records.append((index, WalletCreated(wallet_id=wallet_id, owner_id="o", asset="USD", metadata=None,
                                             at_us=index, idempotency=None)))
    for lsn in range(3, 23):
        source, target = ("a", "b") if lsn % 2 else ("b", "a")
        records.append((lsn, Transferred(transaction_id=f"t{lsn}", type=TransactionType.TRANSFER,
                                         from_wallet_id=source, to_wallet_id=target, asset="USD", amount=lsn,
                                         description=None, metadata=None, at_us=lsn * 10, idempotency=None)))
    return records


def statement(history: History, wallet_id: str) -> list[tuple[int, int]]:
    import trio

    async def read() -> list[tuple[int, int]]:
        entries = await history.entries(wallet_id, before=None, limit=1000)
        return [(entry.lsn, entry.balance_after) for entry in entries]

    return trio.run(read)


def test_a_failed_batch_leaves_nothing_behind_and_a_retry_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = events()
    history = History.open(tmp_path / "h.sqlite3")
    try:
        history.project_blocking(records[:10])
        assert history.applied_lsn == 10
        before = statement(history, "a")
        # A failure after the transactions went in, before the entries: a trigger on this
        # connection refuses the entries' insert.
        connection = history._connection
        run = history._blocking().run_blocking
        run(connection.execute(
            "CREATE TEMP TRIGGER refuse BEFORE INSERT ON entries BEGIN SELECT RAISE(ABORT, 'disk went away'); END"
        ))
        with pytest.raises(sqlite3.DatabaseError, match="disk went away"):
            history.project_blocking(records[10:])
        run(connection.execute("DROP TRIGGER refuse"))
        assert history.applied_lsn == 10
        assert statement(history, "a") == before  # nothing of the failed batch is visible
        history._fed_lsn = 10  # the projector resumes from the LSN the database holds
        history.project_blocking(records[10:])
        assert history.applied_lsn == 22
        incremental = statement(history, "a")
    finally:
        history.stop_thread()
    rebuilt = History.open(tmp_path / "rebuilt.sqlite3")
    try:
        rebuilt.project_blocking(records)
        assert statement(rebuilt, "a") == incremental
        reopened = History.open(tmp_path / "h.sqlite3")
        try:
            assert reopened.applied_lsn == 22
        finally:
            reopened.stop_thread()
    finally:
        rebuilt.stop_thread()
    # Each entry's balance_after follows from the amounts, in log order.
    balance = 0
    expected = []
    for lsn, event in records:
        if isinstance(event, Transferred):
            balance += event.amount if event.to_wallet_id == "a" else -event.amount
            expected.append((lsn, balance))
    assert incremental == expected[::-1]


# -- batch records -------------------------------------------------------------------------


def _moved(number: int, source: str, target: str, amount: int, at_us: int) -> Transferred:
    return Transferred(transaction_id=f"b{number}", type=TransactionType.TRANSFER, from_wallet_id=source,
                       to_wallet_id=target, asset="USD", amount=amount, description=f"d{number}", metadata=None,
                       at_us=at_us, idempotency=None)


def batch_records() -> list[tuple[int, Any]]:
    """Wallets a, b, c; a single transfer; a batch record in which a and b appear several times."""
    records: list[tuple[int, Any]] = [
        (lsn, WalletCreated(wallet_id=w, owner_id="o", asset="USD", metadata=None, at_us=lsn, idempotency=None))
        for lsn, w in enumerate(["a", "b", "c"], start=1)
    ]
    records.append((4, _moved(0, "a", "b", 100, 40)))
    transfers = (_moved(1, "b", "a", 30, 50), _moved(2, "a", "c", 5, 50), _moved(3, "b", "a", 7, 50),
                 _moved(4, "a", "b", 1, 50))
    records.append((5, transfers_posted(transfers, 50)))
    records.append((6, _moved(5, "c", "a", 2, 60)))
    return records


def entries_of(history: History, wallet_id: str, *, page: int = 1000) -> list[Any]:
    import trio

    async def read() -> list[Any]:
        found: list[Any] = []
        before = None
        while True:
            entries = await history.entries(wallet_id, before=before, limit=page)
            found.extend(entries)
            if len(entries) < page:
                return found
            before = entries[-1].position

    return trio.run(read)


def test_a_batch_record_projects_one_transaction_and_two_entries_per_transfer(tmp_path: Path) -> None:
    import trio

    history = History.open(tmp_path / "h.sqlite3")
    try:
        history.project_blocking(batch_records())
        statement = entries_of(history, "a")
        # Newest first, the batch's entries in record order reversed, all with the record's LSN.
        assert [(e.lsn, e.transaction_id, e.direction, e.amount, e.balance_after) for e in statement] == [
            (6, "b5", "credit", 2, -100 + 30 - 5 + 7 - 1 + 2),
            (5, "b4", "debit", 1, -100 + 30 - 5 + 7 - 1),
            (5, "b3", "credit", 7, -100 + 30 - 5 + 7),
            (5, "b2", "debit", 5, -100 + 30 - 5),
            (5, "b1", "credit", 30, -100 + 30),
            (4, "b0", "debit", 100, -100),
        ]
        assert [e.position for e in statement] == [6 << ENTRY_POSITION_BITS, *[(5 << ENTRY_POSITION_BITS) + i for i in (3, 2, 1, 0)], 4 << ENTRY_POSITION_BITS]
        # Pages of one entry visit each exactly once, through the middle of the record.
        assert entries_of(history, "a", page=1) == statement
        assert entries_of(history, "b", page=2) == entries_of(history, "b")
        rows = trio.run(history.transaction, "b3")
        assert rows is not None and rows.lsn == 5 and rows.description == "d3"
        # The balance as of the batch's time is after its last transfer.
        assert trio.run(history.balance_at, "a", 50) == -100 + 30 - 5 + 7 - 1
    finally:
        history.stop_thread()


def test_a_schema_1_read_model_is_migrated_to_entry_positions(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "h.sqlite3"
    connection = sqlite3.connect(path)
    connection.executescript(SCHEMA_1)
    connection.execute("INSERT INTO meta VALUES ('schema', 1)")
    connection.execute("INSERT INTO meta VALUES ('applied_lsn', 4)")
    connection.execute("INSERT INTO transactions VALUES ('b0', 4, 1, 'a', 'b', 'USD', 100, 'd0', NULL, 40)")
    connection.execute("INSERT INTO entries VALUES ('a', 4, 'b0', 1, 0, 100, -100, 'b', 40)")
    connection.execute("INSERT INTO entries VALUES ('b', 4, 'b0', 1, 1, 100, 100, 'a', 40)")
    connection.execute("INSERT INTO balances VALUES ('a', -100), ('b', 100)")
    connection.commit()
    connection.close()
    history = History.open(path)
    try:
        assert history.applied_lsn == 4
        history.project_blocking(batch_records()[4:])
        migrated = entries_of(history, "a")
        fresh = History.open(tmp_path / "fresh.sqlite3")
        try:
            fresh.project_blocking(batch_records())
            assert entries_of(fresh, "a") == migrated
        finally:
            fresh.stop_thread()
    finally:
        history.stop_thread()
    check = sqlite3.connect(path)
    try:
        assert check.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (SCHEMA_VERSION,)  # through schema 2 to the current one
        assert check.execute("SELECT pos FROM entries WHERE transaction_id = 'b0' AND wallet_id = 'a'").fetchone() == (
            4 << ENTRY_POSITION_BITS,)
    finally:
        check.close()


def test_the_backlog_counts_transactions_not_records(tmp_path: Path) -> None:
    from ledger._history import PENDING_RECORDS_MAX, take

    history = History.open(tmp_path / "h.sqlite3")
    try:
        many = tuple(_moved(i, "a", "b", 1, 1) for i in range(PENDING_RECORDS_MAX // 4))
        history.feed([(lsn, b"", transfers_posted(many, 1)) for lsn in range(1, 4)])
        assert not history.backlogged()
        history.feed([(4, b"", transfers_posted(many, 1))])
        assert history.backlogged()  # four records, PENDING_RECORDS_MAX transactions
        records = [(lsn, transfers_posted(many[:10], 1)) for lsn in range(1, 30)]
        assert take(records, 25) == 3
        assert take(records, 5) == 1
        assert take(records[:2], 1000) == 2
    finally:
        history.stop_thread()


SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE transactions (
    id TEXT PRIMARY KEY, lsn INTEGER NOT NULL, type INTEGER NOT NULL,
    from_wallet_id TEXT NOT NULL, to_wallet_id TEXT NOT NULL, asset TEXT NOT NULL,
    amount INTEGER NOT NULL, description TEXT, metadata TEXT, at_us INTEGER NOT NULL
);
CREATE TABLE entries (
    wallet_id TEXT NOT NULL, lsn INTEGER NOT NULL, transaction_id TEXT NOT NULL,
    type INTEGER NOT NULL, direction INTEGER NOT NULL, amount INTEGER NOT NULL,
    balance_after INTEGER NOT NULL, counterparty_wallet_id TEXT NOT NULL, at_us INTEGER NOT NULL,
    PRIMARY KEY (wallet_id, lsn)
) WITHOUT ROWID;
CREATE INDEX entries_by_time ON entries (wallet_id, at_us, lsn);
CREATE INDEX entries_by_type ON entries (wallet_id, type, lsn);
CREATE TABLE balances (wallet_id TEXT PRIMARY KEY, balance INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE wallets (lsn INTEGER PRIMARY KEY, id TEXT NOT NULL, owner_id TEXT NOT NULL, asset TEXT NOT NULL);
CREATE INDEX wallets_by_owner ON wallets (owner_id, lsn);
CREATE INDEX wallets_by_asset ON wallets (asset, lsn);
"""
