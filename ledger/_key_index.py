"""Idempotency records older than the in-memory tier: ``<data>/idempotency.sqlite3``.

An idempotency key is a promise for 24 hours, and a record in memory costs about 300 bytes, so
24 hours of keys at a sustained rate does not fit in a heap (1,000 requests/s is 27 GB). The
ledger keeps the newest records in memory (``--idempotency-memory-keys``) and moves older ones
here. The rule that makes the two tiers one set, whoever builds a state:

    every unexpired record with ``lsn <= through_lsn`` is in this file;
    memory holds the records with ``lsn > through_lsn`` (plus, in a running ledger, old ones
    that an in-flight request pinned).

``through_lsn`` is committed in the same transaction as the rows it covers, with
``synchronous=FULL``, before the ledger drops any of them from memory, and only records whose
log record is durable are ever written. So a crash at any point leaves each record in the log
replay, in this file, or in both; recovery and the snapshot builder drop from memory what this
file covers (``trim``). Rows expire on the same 24-hour horizon as memory. The records of refused
requests (final outcomes) spill, expire and come back exactly like the others: their ``event``
column holds a kind 18 payload with the one refusal (``ledger._codec.encode_outcome``).

Lookups happen before a command reaches its shard (``Ledger._recall``): the shard's decision
stays synchronous and pure, and consults records brought back from here
(``Directory.recalled``) exactly as it consults memory.

Blocking calls: the ledger runs them in a worker thread, one at a time.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from ledger._codec import decode_outcome, encode_outcome
from ledger._data_dir import FILE_MODE
from ledger._model import Idempotency, IdempotencyRecord
from ledger._state import Directory

FILE_NAME = "idempotency.sqlite3"
LOOKUP_CHUNK = 500  # keys per SELECT (two parameters each, far below SQLite's limit)
INSERT_ROWS = 500  # rows per INSERT (six parameters each: 3,000 of SQLite's 32,766)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS keys (scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint BLOB NOT NULL,"
    " lsn INTEGER NOT NULL, at_us INTEGER NOT NULL, event BLOB NOT NULL, PRIMARY KEY (scope, key))"
    " WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS keys_at ON keys (at_us)",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
)

Key = tuple[str, str]


def index_path(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


class KeyIndex:
    def __init__(self, connection: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        self._connection = connection
        # Lookups read through a connection of their own (WAL mode: readers do not wait for the
        # writer), so a request never waits behind a spill.
        self._reader = reader
        row = connection.execute("SELECT value FROM meta WHERE name = 'through_lsn'").fetchone()
        self.through_lsn: int = 0 if row is None else row[0]
        # False while the file holds no row: lookups are skipped (every fresh key would miss).
        self.maybe_holds: bool = connection.execute("SELECT EXISTS (SELECT 1 FROM keys)").fetchone()[0] == 1
        self.rows_written = 0
        self.lookups = 0
        self.found = 0

    @classmethod
    def open(cls, data_dir: Path) -> KeyIndex:
        path = index_path(data_dir)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
        # Autocommit mode: transactions are explicit (``write``). Used from one worker thread
        # at a time (the ledger's limiter), not always the same one.
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            connection.execute(statement)
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        return cls(connection, reader)

    def close(self) -> None:
        self._reader.close()
        self._connection.close()

    def write(self, records: list[tuple[Key, IdempotencyRecord]], through_lsn: int) -> None:
        """Stores ``records`` (every record with ``self.through_lsn < lsn <= through_lsn``, all
        durable in the log) and advances ``through_lsn``, in one transaction made durable."""
        assert through_lsn >= self.through_lsn
        # A refused request's record (final outcomes) is stored as a one-refusal kind 18 payload.
        rows = [(scope, key, record.fingerprint, record.lsn, record.at_us,
                 encode_outcome(record.event, record.at_us, Idempotency(scope=scope, key=key,
                                                                         fingerprint=record.fingerprint)))
                for (scope, key), record in records]
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            # Many rows per statement: the sqlite3 module lets go of the GIL around every step
            # and must win it back from a busy event loop (up to the 5 ms switch interval) after
            # each one; with a step per row the spill wrote about 3,000 rows/s under load.
            for start in range(0, len(rows), INSERT_ROWS):
                part = rows[start:start + INSERT_ROWS]
                connection.execute(
                    "INSERT OR REPLACE INTO keys VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(part)),
                    [value for row in part for value in row],
                )
            connection.execute("INSERT OR REPLACE INTO meta VALUES ('through_lsn', ?)", (through_lsn,))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        self.through_lsn = through_lsn
        self.rows_written += len(rows)
        if rows:
            self.maybe_holds = True

    def lookup(self, keys: Iterable[Key], horizon_us: int) -> dict[Key, IdempotencyRecord]:
        """The unexpired records (``at_us >= horizon_us``) of those ``keys`` that are here."""
        wanted = list(keys)
        found: dict[Key, IdempotencyRecord] = {}
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            chunk = wanted[start:start + LOOKUP_CHUNK]
            values = ", ".join(["(?, ?)"] * len(chunk))
            parameters: list[object] = [part for key in chunk for part in key]
            parameters.append(horizon_us)
            # CROSS JOIN keeps the wanted keys as the outer loop, so each is one primary-key
            # search (about 4 us a key at 2,000,000 rows); the planner's choice for a row-value
            # ``IN (VALUES ...)`` scanned the table (15 ms a key).
            cursor = self._reader.execute(
                f"WITH wanted (scope, key) AS (VALUES {values})"
                " SELECT keys.scope, keys.key, fingerprint, lsn, at_us, event FROM wanted"
                " CROSS JOIN keys ON keys.scope = wanted.scope AND keys.key = wanted.key"
                " WHERE at_us >= ?", parameters,
            )
            for scope, key, fingerprint, lsn, at_us, event in cursor:
                found[(scope, key)] = IdempotencyRecord(
                    fingerprint=fingerprint, lsn=lsn, at_us=at_us, source=decode_outcome(event)
                )
        self.lookups += len(wanted)
        self.found += len(found)
        return found

    def keys(self) -> Iterator[Key]:
        """Every key in the file (to build the tier's filter); through the writer's connection."""
        yield from self._connection.execute("SELECT scope, key FROM keys")

    def expire(self, horizon_us: int) -> int:
        """Deletes the rows older than the retention horizon; returns how many."""
        cursor = self._connection.execute("DELETE FROM keys WHERE at_us < ?", (horizon_us,))
        self.maybe_holds = self._connection.execute("SELECT EXISTS (SELECT 1 FROM keys)").fetchone()[0] == 1
        return cursor.rowcount

    def cut(self, last_lsn: int) -> None:
        """Forgets rows past the end of the log (a log cut by ``wallet wal repair``): their
        requests are not in the ledger any more, so their keys must not answer as used."""
        if self.through_lsn <= last_lsn:
            return
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("DELETE FROM keys WHERE lsn > ?", (last_lsn,))
        connection.execute("INSERT OR REPLACE INTO meta VALUES ('through_lsn', ?)", (last_lsn,))
        connection.execute("COMMIT")
        self.through_lsn = last_lsn


def read_through_lsn(data_dir: Path) -> int:
    """``through_lsn`` of the data directory's index, 0 when there is none (read-only)."""
    path = index_path(data_dir)
    if not path.exists():
        return 0
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = connection.execute("SELECT value FROM meta WHERE name = 'through_lsn'").fetchone()
    except sqlite3.OperationalError:
        return 0  # created but the schema is not written yet
    finally:
        connection.close()
    return 0 if row is None else row[0]


def trim(directory: Directory, through_lsn: int) -> int:
    """Drops from memory the records the index covers (``lsn <= through_lsn``); returns how
    many. Memory is in LSN order, so they are a prefix."""
    records = directory.idempotency
    if not records or through_lsn <= 0:
        return 0
    dropped = 0
    keep: dict[Key, IdempotencyRecord] = {}
    for key, record in records.items():
        if record.lsn <= through_lsn:
            dropped += 1
        else:
            keep[key] = record
    if dropped:
        # A new dict rather than deleting a prefix: deleting from the front leaves the dict's
        # entry table full of holes that every later scan from the front walks over.
        directory.idempotency = keep
    return dropped
