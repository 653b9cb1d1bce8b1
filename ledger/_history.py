"""The history read model: transactions, per-wallet statements and the wallet index, in SQLite
(``<data>/history.sqlite3``) through aiosqlite.

It is a projection of the log, never the truth. The WAL writer hands it every batch of records
as soon as they are durable (``feed``, synchronous, in LSN order); the projector task writes
each batch in **one SQLite transaction that also records the last LSN applied**, so a crash can
neither lose nor duplicate an entry: after a restart the projector resumes after that LSN from
the log (or rebuilds everything when the file is gone). ``balance_after`` is computed here, in
log order, which is the order clients can observe.

Reads are indexed so that a page costs the same on a wallet with 10 entries or 10 million:
``entries`` is keyed by (wallet_id, pos); time and type filters have their own indexes, and
a time bound is turned into a position bound before the page is read. Read-your-writes: a reader
first waits (bounded) until the projector reached the LSN the server had made durable.

An entry's ``pos`` is its place in the log: ``lsn << POSITION_BITS | index``, where ``index`` is
the transfer's place in a ``TransfersPosted`` record (0 for a single ``Transferred``), so the
transfers of one batch record share its LSN but never a key. Schema 1 (keyed by LSN alone) is
migrated in place on open (``pos = lsn << POSITION_BITS``), and so are schemas 2 and 3.

Refunds (schema 4): a refund is a transaction of its own (type refund, ``refund_of`` naming the
original) with its two statement entries, and it adds its amount to the original's
``refunded_amount`` in the same SQLite transaction (a refund of an original older than a
snapshot the read model was seeded from updates nothing: that original is not here).

The backlog is counted in transactions (a batch record counts one per transfer, any other record
one), both for ``backlogged`` and for the size of a projector transaction, so a batch-heavy load
holds no more in memory than a single-transfer one.

All SQL runs through one runner (see ``_sqlite``): a dedicated ``AsyncioThread`` under trio
and in recovery and the tools; the server's own loop on asyncio/uvloop after ``attach``.
Nothing here touches ledger state.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from ledger._data_dir import FILE_MODE
from ledger._model import (
    BATCH_ITEMS_MAX,
    Event,
    HoldCaptured,
    HoldCreated,
    HoldVoided,
    Refunded,
    ReservationSettled,
    TransactionStatus,
    TransactionType,
    Transferred,
    TransfersPosted,
    VoidReason,
    WalletCreated,
)
from ledger._search import (
    METADATA_SQL,
    ROW_COLUMNS,
    SearchPage,
    TransactionQuery,
    search,
    searchable_metadata,
)
from ledger._sqlite import AsyncioThread, Native, running_asyncio_loop

log = logging.getLogger("history")

SCHEMA_VERSION = 4
# Transactions (see ``weight``) per projector transaction, at least one record.
BATCH_RECORDS_MAX = 5000
# Durable transactions waiting for the projector beyond which writers are told to back off.
PENDING_RECORDS_MAX = 200_000
POSITION_BITS = 13
assert BATCH_ITEMS_MAX < 1 << POSITION_BITS
READ_WAIT_S = 5
CACHE_KIB = 256 * 1024  # SQLite page cache of the read model
READER_CACHE_KIB = 32 * 1024  # per read-only connection of an HTTP worker
_IN_CHUNK = 500  # SQLite's bound-parameter limit is generous, but keep IN lists short

# Transaction search (``ledger._search``, ADR 0009): indexes on ``transactions``, whose integer
# primary key ``pos`` is the creation position (so each index entry also carries it, in order),
# and the searchable metadata values.
SEARCH_SCHEMA = """
CREATE INDEX IF NOT EXISTS transactions_by_from ON transactions (from_wallet_id);
CREATE INDEX IF NOT EXISTS transactions_by_to ON transactions (to_wallet_id);
CREATE INDEX IF NOT EXISTS transactions_by_type ON transactions (type);
CREATE INDEX IF NOT EXISTS transactions_by_status ON transactions (status);
CREATE TABLE IF NOT EXISTS transaction_metadata (
    key TEXT NOT NULL, value TEXT NOT NULL, pos INTEGER NOT NULL, PRIMARY KEY (key, value, pos)
) WITHOUT ROWID;
"""
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS transactions (
    pos INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, lsn INTEGER NOT NULL, type INTEGER NOT NULL,
    from_wallet_id TEXT NOT NULL, to_wallet_id TEXT NOT NULL, asset TEXT NOT NULL,
    amount INTEGER NOT NULL, description TEXT, metadata TEXT, at_us INTEGER NOT NULL,
    status INTEGER NOT NULL DEFAULT 0, refund_of TEXT, refunded_amount INTEGER NOT NULL DEFAULT 0
);
""" + SEARCH_SCHEMA + """
CREATE TABLE IF NOT EXISTS entries (
    wallet_id TEXT NOT NULL, pos INTEGER NOT NULL, transaction_id TEXT NOT NULL,
    type INTEGER NOT NULL, direction INTEGER NOT NULL, amount INTEGER NOT NULL,
    balance_after INTEGER NOT NULL, counterparty_wallet_id TEXT NOT NULL, at_us INTEGER NOT NULL,
    status INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (wallet_id, pos)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_time ON entries (wallet_id, at_us, pos);
CREATE INDEX IF NOT EXISTS entries_by_type ON entries (wallet_id, type, pos);
CREATE TABLE IF NOT EXISTS balances (wallet_id TEXT PRIMARY KEY, balance INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wallets (
    lsn INTEGER PRIMARY KEY, id TEXT NOT NULL, owner_id TEXT NOT NULL, asset TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS wallets_by_owner ON wallets (owner_id, lsn);
CREATE INDEX IF NOT EXISTS wallets_by_asset ON wallets (asset, lsn);
"""
# Schema 1 -> 2 (one transaction, on open): entries keyed by position instead of LSN, and a
# status on transactions and entries (schema 1 rows were all posted).
MIGRATE_1_TO_2 = f"""
ALTER TABLE transactions ADD COLUMN status INTEGER NOT NULL DEFAULT 0;
CREATE TABLE entries_v2 (
    wallet_id TEXT NOT NULL, pos INTEGER NOT NULL, transaction_id TEXT NOT NULL,
    type INTEGER NOT NULL, direction INTEGER NOT NULL, amount INTEGER NOT NULL,
    balance_after INTEGER NOT NULL, counterparty_wallet_id TEXT NOT NULL, at_us INTEGER NOT NULL,
    status INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (wallet_id, pos)
) WITHOUT ROWID;
INSERT INTO entries_v2 SELECT wallet_id, lsn << {POSITION_BITS}, transaction_id, type, direction, amount,
    balance_after, counterparty_wallet_id, at_us, 0 FROM entries;
DROP TABLE entries;
ALTER TABLE entries_v2 RENAME TO entries;
UPDATE meta SET value = 2 WHERE key = 'schema';
"""
# Schema 2 -> 3 (one transaction, on open): transactions keyed by their creation position for
# search, with its indexes and the metadata table. Schema 2 did not keep that position, but its
# rowids count the rows in insertion order, which is log order (rows are only ever appended,
# then updated in place), and each is below every later position (a record holds fewer than
# 2**POSITION_BITS transactions): they become the positions of the migrated rows.
MIGRATE_2_TO_3 = f"""
CREATE TABLE transactions_v3 (
    pos INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, lsn INTEGER NOT NULL, type INTEGER NOT NULL,
    from_wallet_id TEXT NOT NULL, to_wallet_id TEXT NOT NULL, asset TEXT NOT NULL,
    amount INTEGER NOT NULL, description TEXT, metadata TEXT, at_us INTEGER NOT NULL,
    status INTEGER NOT NULL DEFAULT 0
);
INSERT INTO transactions_v3 SELECT rowid, id, lsn, type, from_wallet_id, to_wallet_id, asset, amount,
    description, metadata, at_us, status FROM transactions ORDER BY rowid;
DROP TABLE transactions;
ALTER TABLE transactions_v3 RENAME TO transactions;
{SEARCH_SCHEMA}
INSERT INTO transaction_metadata SELECT j.key, j.value, t.pos FROM transactions t, json_each(t.metadata) j
    WHERE t.metadata IS NOT NULL AND {METADATA_SQL};
UPDATE meta SET value = 3 WHERE key = 'schema';
"""
# Schema 3 -> 4 (one transaction, on open): refunds. Schema 3 files hold no refund, so every
# existing row refunded nothing and is no refund: the columns' defaults are the truth.
MIGRATE_3_TO_4 = """
ALTER TABLE transactions ADD COLUMN refund_of TEXT;
ALTER TABLE transactions ADD COLUMN refunded_amount INTEGER NOT NULL DEFAULT 0;
UPDATE meta SET value = 4 WHERE key = 'schema';
"""

DEBIT = 0
CREDIT = 1
# The columns a new transaction row sets (refund_of and refunded_amount keep their defaults but
# for refunds, which set refund_of): two binds fewer per row on the projector's hot path.
_INSERTED = "pos, id, lsn, type, from_wallet_id, to_wallet_id, asset, amount, description, metadata, at_us, status"


def take(records: list[tuple[int, Event]], transactions_max: int) -> int:
    """How many of ``records`` (at least one) make a batch of about ``transactions_max``."""
    total = 0
    for count, (_, event) in enumerate(records, start=1):
        total += weight(event)
        if total >= transactions_max:
            return count
    return len(records)


def weight(event: Event) -> int:
    """What a record counts for in backlogs: its transactions (at least one)."""
    return len(event.rows) if isinstance(event, TransfersPosted) else 1


def position(lsn: int, index: int = 0) -> int:
    """An entry's place in the log: the ``index``-th transfer of the record at ``lsn``."""
    assert 0 <= index < 1 << POSITION_BITS
    return lsn << POSITION_BITS | index


class HistoryLagging(Exception):
    """The projector did not reach the LSN a read must show within the bound."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionRow:
    id: str
    lsn: int
    type: TransactionType
    from_wallet_id: str
    to_wallet_id: str
    asset: str
    amount: int
    description: str | None
    metadata: dict[str, Any] | None
    at_us: int
    status: TransactionStatus
    refund_of: str | None = None  # a refund's original
    refunded_amount: int = 0  # what refunds of this transaction sent back so far
    position: int = 0  # its creation position in this read model (searches page by it)


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One line of a wallet's statement. ``position`` orders entries (and pages them);
    ``lsn`` is the record's, shared by the transfers of one batch record."""

    position: int
    lsn: int
    transaction_id: str
    type: TransactionType
    direction: str  # "debit" | "credit"
    amount: int
    balance_after: int
    counterparty_wallet_id: str
    description: str | None
    at_us: int
    status: TransactionStatus
    refund_of: str | None = None  # a refund's original
    refunded_amount: int = 0  # of the entry's transaction, so far


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryStatistics:
    applied_lsn: int
    pending_records: int
    batches: int
    records: int
    seconds_total: float


class History:
    """Open with ``History.open(path)``; feed durable records; run ``run`` as a task."""

    def __init__(self, thread: AsyncioThread, connection: aiosqlite.Connection, applied_lsn: int) -> None:
        # The thread serves the blocking calls (recovery, tools); ``_runner`` the event loop's.
        # After ``attach`` on asyncio both are the native runner and the thread is gone (None).
        self._thread: AsyncioThread | None = thread
        self._runner: AsyncioThread | Native = thread
        self._connection = connection
        self.applied_lsn = applied_lsn
        self._fed_lsn = applied_lsn
        self._pending: list[tuple[int, Event]] = []
        self._pending_weight = 0  # transactions in _pending (see ``weight``)
        self._wakeup = anyio.Event()
        self._progress = anyio.Event()
        self._closed = False
        self._batches = 0
        self._records = 0
        self._nanoseconds = 0
        self._balances: dict[str, int] = {}

    @classmethod
    def open(cls, path: Path) -> History:
        """Opens (or creates) the database. Call from a plain thread, not from the event loop."""
        # Created 0600 before SQLite opens it: SQLite creates the -wal and -shm files with the
        # database file's mode, so the read model's three files are the service user's alone.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
        return cls._on_thread("history-sqlite", _open, path)

    @classmethod
    def open_readonly(cls, path: Path) -> History:
        """A read-only connection (``mode=ro``) for the queries of an HTTP worker of
        ``--workers N``; SQLite's WAL mode lets it read while the projector process writes.
        Raises ``HistoryLagging`` when there is no read model yet. Blocking."""
        return cls._on_thread("history-sqlite-ro", _open_readonly, path)

    @classmethod
    def _on_thread(cls, name: str, opener: Any, path: Path) -> History:
        """The History over ``opener(path)``'s connection on a new asyncio thread (ADR 0003)."""
        thread = AsyncioThread(name)
        try:
            connection, applied = thread.run_blocking(opener(path))
        except BaseException:
            thread.stop()
            raise
        return cls(thread, connection, applied)

    # -- feeding (recovery, then the WAL writer) -------------------------------------------

    def reset(self) -> None:
        """Drops every row (the log was cut below what the read model holds). Blocking."""
        self._blocking().run_blocking(_reset(self._connection))
        self._balances.clear()
        self.applied_lsn = self._fed_lsn = 0

    def seed(self, state: Any, lsn: int) -> None:
        """Starts the read model over from a snapshot's balances at ``lsn`` (older statements
        are gone). Wallets get negative creation keys in creation-time order. Blocking."""
        wallets = sorted(state.wallets.values(), key=lambda wallet: (wallet.created_at_us, wallet.id))
        self._blocking().run_blocking(_seed(self._connection, wallets, lsn))
        self._balances.clear()
        self.applied_lsn = self._fed_lsn = lsn

    def project_blocking(self, records: list[tuple[int, Event]]) -> None:
        """Recovery: applies records right away from a non-event-loop thread."""
        if not records:
            return
        assert records[0][0] == self._fed_lsn + 1, (records[0][0], self._fed_lsn)
        self._fed_lsn = records[-1][0]
        self._blocking().run_blocking(self._project(records))

    def feed(self, records: Iterable[tuple[int, bytes, Any]]) -> None:
        """Called by the WAL writer with records that just became durable, in LSN order."""
        pending = self._pending
        added = 0
        for lsn, _, event in records:
            assert lsn == self._fed_lsn + 1, (lsn, self._fed_lsn)
            self._fed_lsn = lsn
            pending.append((lsn, event))
            added += weight(event)
        self._pending_weight += added
        if pending and not self._wakeup.is_set():
            self._wakeup.set()

    def backlogged(self) -> bool:
        return self._pending_weight >= PENDING_RECORDS_MAX

    async def run(self) -> None:
        """The projector: one SQLite transaction per batch, until ``close`` and drained."""
        while True:
            if not self._pending:
                if self._closed:
                    return
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                continue
            count = take(self._pending, BATCH_RECORDS_MAX)
            batch = self._pending[:count]
            del self._pending[:count]
            self._pending_weight -= sum(weight(event) for _, event in batch)
            await self._apply(batch)

    async def project(self, records: list[tuple[int, Event]]) -> None:
        """The projector process (``ledger._projector``): applies records it read from the log
        itself, in one SQLite transaction, from its event loop."""
        assert records
        assert records[0][0] == self._fed_lsn + 1, (records[0][0], self._fed_lsn)
        self._fed_lsn = records[-1][0]
        await self._apply(records)

    async def _apply(self, records: list[tuple[int, Event]]) -> None:
        await self._runner.call(self._project, records)
        progress, self._progress = self._progress, anyio.Event()
        progress.set()

    def close(self) -> None:
        """``run`` returns once what was fed is applied."""
        self._closed = True
        self._wakeup.set()

    def _blocking(self) -> AsyncioThread:
        assert self._thread is not None, "blocking calls are for recovery and tools, before attach"
        return self._thread

    async def attach(self) -> None:
        """Called by the ledger when it starts serving: on an asyncio loop (asyncio, uvloop),
        aiosqlite runs on that loop from now on and the dedicated thread is stopped; under trio
        nothing changes. No call may be in flight (recovery is over, the projector not started)."""
        if running_asyncio_loop() is None or self._thread is None:
            return
        thread, self._thread = self._thread, None
        self._runner = Native()
        await anyio.to_thread.run_sync(thread.stop)

    async def aclose(self) -> None:
        """Closes the connection (and the thread, if any) from the event loop."""
        if self._thread is None:
            await self._connection.close()
        else:
            await anyio.to_thread.run_sync(self.stop_thread)

    def stop_thread(self) -> None:
        """Closes the connection and the thread. Blocking: recovery and tools, before attach."""
        thread = self._blocking()
        try:
            thread.run_blocking(self._connection.close())
        finally:
            thread.stop()

    async def wait_projected(self, lsn: int, timeout_s: int = READ_WAIT_S) -> None:
        """Read-your-writes: waits until everything up to ``lsn`` is queryable."""
        with anyio.move_on_after(timeout_s):
            while self.applied_lsn < lsn:
                await self._progress.wait()
            return
        raise HistoryLagging(f"history is at LSN {self.applied_lsn}, {lsn} was asked for")

    async def _project(self, records: list[tuple[int, Event]]) -> None:
        """Runs on the runner: the whole batch in one call to the connection's own thread.

        ``aiosqlite.Connection._execute`` (private, present since aiosqlite's first releases;
        the dependency is bounded below 1.0) runs a function in the thread that owns the
        ``sqlite3`` connection. Awaiting each statement instead cost two thread hops per
        statement, about ten per batch: most of the projector's CPU under single transfers."""
        await self._connection._execute(self._project_in_thread, records)

    def _project_in_thread(self, records: list[tuple[int, Event]]) -> None:
        """Rows for a batch, one transaction, applied LSN in it. In the connection's thread."""
        started = time.perf_counter_ns()
        connection = self._connection._conn
        # Every money event with its entry position, in log order.
        # A credited ``ReservationSettled`` is the credit of a transfer from another ledger group
        # (ADR 0013): an entry of its receiver.
        moves: list[tuple[int, int, Transferred | HoldCreated | HoldCaptured | HoldVoided | Refunded
                          | ReservationSettled]] = []
        wallets = []
        for lsn, event in records:
            if isinstance(event, Transferred | HoldCreated | HoldCaptured | HoldVoided | Refunded):
                moves.append((lsn, lsn << POSITION_BITS, event))
            elif isinstance(event, TransfersPosted):
                base = lsn << POSITION_BITS
                moves.extend((lsn, base + index, transfer) for index, transfer in enumerate(event.transfers))
            elif isinstance(event, WalletCreated):
                wallets.append((lsn, event.wallet_id, event.owner_id, event.asset))
            elif isinstance(event, ReservationSettled) and event.credited:
                moves.append((lsn, lsn << POSITION_BITS, event))
        touched = sorted(
            {wallet_id for _, _, event in moves if not isinstance(event, HoldVoided | HoldCreated | ReservationSettled)
             for wallet_id in (event.from_wallet_id, event.to_wallet_id)}
            | {event.from_wallet_id for _, _, event in moves if isinstance(event, HoldCreated)}
            | {event.wallet_id for _, _, event in moves if isinstance(event, ReservationSettled)}
        )
        # Running balances: a cache in front of the balances table (one entry per wallet that
        # moved money since start), so a batch rarely has to read them back.
        balances = self._balances
        missing = [wallet_id for wallet_id in touched if wallet_id not in balances]
        for index in range(0, len(missing), _IN_CHUNK):
            chunk = missing[index : index + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for wallet_id, balance in connection.execute(
                f"SELECT wallet_id, balance FROM balances WHERE wallet_id IN ({marks})", chunk
            ):
                balances[wallet_id] = balance
        transactions: list[tuple[Any, ...]] = []
        metadata_rows: list[tuple[str, str, int]] = []  # searchable (key, value, position) of the new transactions
        entries = []
        # Holds: rows inserted above are updated below, in this order, in the same transaction.
        resolved = []  # (status, amount, lsn, transaction id)
        dropped = []  # pending entries a capture replaces: (wallet id, creation position)
        voided = []  # pending entries a void marks: (status, wallet id, creation position)
        refunds = []  # (amount, original id): added to the original's refunded_amount
        refund_rows = []  # the refunds' own rows (other rows leave refund_of and refunded_amount to defaults)
        posted = int(TransactionStatus.POSTED)
        pending = int(TransactionStatus.PENDING)
        for lsn, pos, event in moves:
            if isinstance(event, ReservationSettled):
                # The receiver's statement joins its entries with their transactions: the
                # transaction is written here too (its sender's group has the original, at the
                # commit's LSN; reads by id go there), without its searchable metadata. A refund's
                # credit also adds to what was refunded of the original, whose row (its sender's
                # group's) is here.
                kind = int(TransactionType.TRANSFER if event.refund_of is None else TransactionType.REFUND)
                # A hold's capture was reserved under its attempt's id: the statement shows the hold's.
                shown = event.transaction_id if event.capture_of is None else event.capture_of
                row = (pos, shown, lsn, kind, event.from_wallet_id,
                       event.wallet_id, event.asset, event.amount, event.description,
                       None if event.metadata is None else json.dumps(event.metadata), event.at_us, posted)
                if event.refund_of is None:
                    transactions.append(row)
                else:
                    refund_rows.append((*row, event.refund_of))
                    refunds.append((event.amount, event.refund_of))
                receiver = balances[event.wallet_id] = balances.get(event.wallet_id, 0) + event.amount
                entries.append((event.wallet_id, pos, shown, kind, CREDIT,
                                event.amount, receiver, event.from_wallet_id, event.at_us, posted))
                continue
            if isinstance(event, HoldVoided):
                status = int(TransactionStatus.FAILED if event.reason == VoidReason.REFUSED
                             else TransactionStatus.VOIDED)
                resolved.append((status, event.amount, lsn, event.transaction_id))
                voided.append((status, event.from_wallet_id, event.created_lsn << POSITION_BITS))
                continue
            if isinstance(event, HoldCreated):
                transactions.append(
                    (pos, event.transaction_id, lsn, int(event.type), event.from_wallet_id, event.to_wallet_id,
                     event.asset, event.amount, event.description,
                     None if event.metadata is None else json.dumps(event.metadata), event.at_us, pending)
                )
                if event.metadata:
                    metadata_rows.extend((key, value, pos) for key, value in searchable_metadata(event.metadata))
                # The sender's statement shows the hold; its balance does not move yet.
                balance = balances[event.from_wallet_id] = balances.get(event.from_wallet_id, 0)
                entries.append((event.from_wallet_id, pos, event.transaction_id, int(event.type), DEBIT,
                                event.amount, balance, event.to_wallet_id, event.at_us, pending))
                continue
            if isinstance(event, HoldCaptured):
                resolved.append((posted, event.amount, lsn, event.transaction_id))
                dropped.append((event.from_wallet_id, event.created_lsn << POSITION_BITS))
            else:
                row = (pos, event.transaction_id, lsn, int(event.type), event.from_wallet_id, event.to_wallet_id,
                       event.asset, event.amount, event.description,
                       None if event.metadata is None else json.dumps(event.metadata), event.at_us, posted)
                if type(event) is Refunded:
                    refunds.append((event.amount, event.refund_of))
                    refund_rows.append((*row, event.refund_of))
                else:
                    transactions.append(row)
                if event.metadata:
                    metadata_rows.extend((key, value, pos) for key, value in searchable_metadata(event.metadata))
            sender = balances.get(event.from_wallet_id, 0) - event.amount
            receiver = balances.get(event.to_wallet_id, 0) + event.amount
            balances[event.from_wallet_id] = sender
            balances[event.to_wallet_id] = receiver
            entries.append((event.from_wallet_id, pos, event.transaction_id, int(event.type), DEBIT,
                            event.amount, sender, event.to_wallet_id, event.at_us, posted))
            entries.append((event.to_wallet_id, pos, event.transaction_id, int(event.type), CREDIT,
                            event.amount, receiver, event.from_wallet_id, event.at_us, posted))
        last = records[-1][0]
        connection.execute("BEGIN")
        try:
            if transactions:
                connection.executemany(
                    f"INSERT INTO transactions ({_INSERTED}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", transactions
                )
            if refund_rows:
                connection.executemany(
                    f"INSERT INTO transactions ({_INSERTED}, refund_of) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    refund_rows,
                )
            if metadata_rows:
                connection.executemany("INSERT INTO transaction_metadata VALUES (?,?,?)", metadata_rows)
            if entries:
                connection.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?)", entries)
            if touched:
                connection.executemany(
                    "INSERT OR REPLACE INTO balances VALUES (?,?)",
                    [(wallet_id, balances[wallet_id]) for wallet_id in touched],
                )
            if resolved:
                connection.executemany(
                    "UPDATE transactions SET status = ?, amount = ?, lsn = ? WHERE id = ?", resolved
                )
            if dropped:
                connection.executemany("DELETE FROM entries WHERE wallet_id = ? AND pos = ?", dropped)
            if voided:
                connection.executemany(
                    "UPDATE entries SET status = ? WHERE wallet_id = ? AND pos = ?", voided
                )
            if refunds:
                connection.executemany(
                    "UPDATE transactions SET refunded_amount = refunded_amount + ? WHERE id = ?", refunds
                )
            if wallets:
                connection.executemany("INSERT INTO wallets VALUES (?,?,?,?)", wallets)
            connection.execute("INSERT OR REPLACE INTO meta VALUES ('applied_lsn', ?)", (last,))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            self._balances.clear()  # the cache may hold this batch's uncommitted values
            raise
        self.applied_lsn = last
        self._batches += 1
        self._records += len(records)
        self._nanoseconds += time.perf_counter_ns() - started

    # -- queries (from the event loop) -----------------------------------------------------

    async def _all(self, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        async def query() -> list[Any]:
            async with self._connection.execute(sql, parameters) as cursor:
                return list(await cursor.fetchall())

        return await self._runner.call(query)

    async def transaction(self, transaction_id: str) -> TransactionRow | None:
        rows = await self._all(f"SELECT {ROW_COLUMNS} FROM transactions WHERE id = ?", (transaction_id,))
        return _transaction_row(rows[0]) if rows else None

    async def search(self, query: TransactionQuery) -> tuple[list[TransactionRow], int | None]:
        """One page of a transaction search (``ledger._search``), newest first, and the
        position the next page continues below (None when there is nothing more)."""
        page = await self._runner.call(self._search, query)
        return [_transaction_row(row) for row in page.rows], page.next_before

    async def _search(self, query: TransactionQuery) -> SearchPage:
        # The whole page in one call on the connection's thread: a page is many small lookups.
        page: SearchPage = await self._connection._execute(search, self._connection._conn, query)
        return page

    async def entries(
        self,
        wallet_id: str,
        *,
        before: int | None,
        limit: int,
        type_: TransactionType | None = None,
        status: TransactionStatus | None = None,
        since_us: int | None = None,
        until_us: int | None = None,
    ) -> list[Entry]:
        """Newest first: entries at positions below ``before``, stamped within [since, until]
        (inclusive), of ``type_`` and ``status`` when given."""
        assert limit >= 1
        upper = (2**63 - 1) if before is None else before
        lower = 0
        if until_us is not None:
            rows = await self._all(
                "SELECT pos FROM entries WHERE wallet_id = ? AND at_us <= ? ORDER BY at_us DESC, pos DESC LIMIT 1",
                (wallet_id, until_us),
            )
            if not rows:
                return []
            upper = min(upper, rows[0][0] + 1)
        if since_us is not None:
            rows = await self._all(
                "SELECT pos FROM entries WHERE wallet_id = ? AND at_us >= ? ORDER BY at_us, pos LIMIT 1",
                (wallet_id, since_us),
            )
            if not rows:
                return []
            lower = rows[0][0]
        sql = (
            "SELECT e.pos, e.transaction_id, e.type, e.direction, e.amount, e.balance_after, "
            "e.counterparty_wallet_id, t.description, e.at_us, e.status, t.refund_of, t.refunded_amount FROM entries e "
            "JOIN transactions t ON t.id = e.transaction_id "
            "WHERE e.wallet_id = ? AND e.pos < ? AND e.pos >= ?"
        )
        parameters: tuple[Any, ...] = (wallet_id, upper, lower)
        if type_ is not None:
            sql += " AND e.type = ?"
            parameters += (int(type_),)
        if status is not None:
            sql += " AND e.status = ?"
            parameters += (int(status),)
        sql += " ORDER BY e.pos DESC LIMIT ?"
        rows = await self._all(sql, (*parameters, limit))
        return [
            Entry(
                position=pos, lsn=pos >> POSITION_BITS, transaction_id=transaction_id,
                type=TransactionType(type_value),
                direction="debit" if direction == DEBIT else "credit", amount=amount,
                balance_after=balance_after, counterparty_wallet_id=counterparty,
                description=description, at_us=at_us, status=TransactionStatus(status_value),
                refund_of=refund_of, refunded_amount=refunded_amount,
            )
            for (pos, transaction_id, type_value, direction, amount, balance_after, counterparty,
                 description, at_us, status_value, refund_of, refunded_amount) in rows
        ]

    async def balance_at(self, wallet_id: str, at_us: int) -> int:
        """The posted balance after every entry stamped at or before ``at_us``."""
        rows = await self._all(
            "SELECT balance_after FROM entries WHERE wallet_id = ? AND at_us <= ? "
            "ORDER BY at_us DESC, pos DESC LIMIT 1",
            (wallet_id, at_us),
        )
        return rows[0][0] if rows else 0

    async def wallet_ids(
        self, *, owner_id: str | None, asset: str | None, after_lsn: int, limit: int
    ) -> list[tuple[int, str]]:
        """Wallets in creation order created after ``after_lsn``: (lsn, wallet_id)."""
        sql = "SELECT lsn, id FROM wallets WHERE lsn > ?"
        parameters: tuple[Any, ...] = (after_lsn,)
        if owner_id is not None:
            sql += " AND owner_id = ?"
            parameters += (owner_id,)
        if asset is not None:
            sql += " AND asset = ?"
            parameters += (asset,)
        sql += " ORDER BY lsn LIMIT ?"
        return [(lsn, wallet_id) for lsn, wallet_id in await self._all(sql, (*parameters, limit))]

    def statistics(self) -> HistoryStatistics:
        return HistoryStatistics(
            applied_lsn=self.applied_lsn, pending_records=len(self._pending), batches=self._batches,
            records=self._records, seconds_total=self._nanoseconds / 1_000_000_000,
        )


def _transaction_row(row: tuple[Any, ...]) -> TransactionRow:
    (position, id_, lsn, type_, source, target, asset, amount, description, metadata, at_us, status, refund_of,
     refunded_amount) = row
    return TransactionRow(
        position=position,
        id=id_, lsn=lsn, type=TransactionType(type_), from_wallet_id=source, to_wallet_id=target,
        asset=asset, amount=amount, description=description,
        metadata=None if metadata is None else json.loads(metadata), at_us=at_us,
        status=TransactionStatus(status), refund_of=refund_of, refunded_amount=refunded_amount,
    )


async def _open(path: Path) -> tuple[aiosqlite.Connection, int]:
    connection = await aiosqlite.connect(path, isolation_level=None)
    try:
        # The read model can be rebuilt from the log, so it trades power-loss durability of its
        # last commits for speed (the projector resumes from whatever LSN survived).
        await connection.execute("PRAGMA journal_mode=WAL")
        await connection.execute("PRAGMA synchronous=NORMAL")
        # Statement inserts land all over the (wallet_id, pos) B-tree: keep it in memory.
        await connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        await connection.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        async with connection.execute("SELECT value FROM meta WHERE key = 'schema'") as cursor:
            row = await cursor.fetchone()
        schema = None if row is None else int(row[0])
        if schema == 1:
            log.warning("%s: migrating the history read model from schema 1 to 2 (entry positions, statuses)", path)
            await connection.executescript("BEGIN;" + MIGRATE_1_TO_2 + "COMMIT;")
            schema = 2
        if schema == 2:
            await _migrate_2_to_3(connection, path)
            schema = 3
        if schema == 3:
            log.warning("%s: migrating the history read model from schema 3 to 4 (refunds)", path)
            await connection.executescript("BEGIN;" + MIGRATE_3_TO_4 + "COMMIT;")
            schema = 4
        await connection.executescript(SCHEMA)
        if schema is None:
            await connection.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif schema != SCHEMA_VERSION:
            raise RuntimeError(f"{path}: history schema {schema}, this version reads {SCHEMA_VERSION}")
        async with connection.execute("SELECT value FROM meta WHERE key = 'applied_lsn'") as cursor:
            row = await cursor.fetchone()
    except BaseException:
        await connection.close()
        raise
    return connection, 0 if row is None else int(row[0])


async def _migrate_2_to_3(connection: aiosqlite.Connection, path: Path) -> None:
    async with connection.execute("SELECT value FROM meta WHERE key = 'applied_lsn'") as cursor:
        row = await cursor.fetchone()
    applied = 0 if row is None else int(row[0])
    async with connection.execute("SELECT count(*), max(rowid) FROM transactions") as cursor:
        row = await cursor.fetchone()
    assert row is not None
    count, last = row
    # Every later position is at least (applied + 1) << POSITION_BITS: the rowids must stay below.
    if last is not None and last >= (applied + 1) << POSITION_BITS:
        raise RuntimeError(f"{path}: transaction rowid {last} is not below LSN {applied + 1}'s positions")
    log.warning("%s: migrating the history read model from schema 2 to 3 (transaction search: %d transactions)",
                path, count)
    started = time.perf_counter()
    await connection.executescript("BEGIN;" + MIGRATE_2_TO_3 + "COMMIT;")
    log.warning("%s: migrated to schema 3 in %.1f s", path, time.perf_counter() - started)


async def _open_readonly(path: Path) -> tuple[aiosqlite.Connection, int]:
    if not path.exists():
        raise HistoryLagging(f"{path} does not exist yet (the projector has not started)")
    connection = await aiosqlite.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        await connection.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
        async with connection.execute("SELECT key, value FROM meta WHERE key IN ('schema', 'applied_lsn')") as cursor:
            meta: dict[str, int] = {key: value for key, value in await cursor.fetchall()}
    except sqlite3.Error as error:
        await connection.close()
        raise HistoryLagging(f"{path} cannot be read yet: {error}") from None
    except BaseException:
        await connection.close()
        raise
    if meta.get("schema") != SCHEMA_VERSION:
        await connection.close()
        raise HistoryLagging(f"{path}: history schema {meta.get('schema')}, this version reads {SCHEMA_VERSION}")
    return connection, int(meta.get("applied_lsn", 0))


async def _reset(connection: aiosqlite.Connection) -> None:
    await connection.execute("BEGIN")
    for table in ("transactions", "transaction_metadata", "entries", "balances", "wallets"):
        await connection.execute(f"DELETE FROM {table}")
    await connection.execute("INSERT OR REPLACE INTO meta VALUES ('applied_lsn', 0)")
    await connection.commit()


async def _seed(connection: aiosqlite.Connection, wallets: list[Any], lsn: int) -> None:
    await _reset(connection)
    await connection.execute("BEGIN")
    await connection.executemany(
        "INSERT INTO balances VALUES (?,?)", [(wallet.id, wallet.balance) for wallet in wallets]
    )
    await connection.executemany(
        "INSERT INTO wallets VALUES (?,?,?,?)",
        [(index - len(wallets), wallet.id, wallet.owner_id, wallet.asset) for index, wallet in enumerate(wallets)],
    )
    await connection.execute("INSERT OR REPLACE INTO meta VALUES ('applied_lsn', ?)", (lsn,))
    await connection.commit()
