"""Webhook endpoints and their delivery cursors, durable in ``<data>/webhooks.sqlite3`` (ADR 0010),
or in cluster mode in a JetStream key-value bucket (``SharedWebhookStore``, at the end).

One SQLite file in WAL mode with ``synchronous=FULL`` (every commit is fsynced before it
returns), shared by the processes that touch webhooks:

- the HTTP workers (routes, admin only) create, delete and enable endpoints and read them and
  their recent deliveries; a ``201`` is sent only after the endpoint's row has committed;
- the dispatcher (``server._webhooks``: the ``webhooks`` process of ``--workers N``, a task of
  the one process of ``--workers 0``) notices those changes (``PRAGMA data_version``: a cheap
  read that changes when another connection commits), and writes what delivery learns: the
  cursors, ``failing_since``, ``disabled`` and the log of recent attempts.

Who writes which column, so that concurrent writers never undo each other:

    | column                         | written by                 | guard                               |
    |--------------------------------|----------------------------|-------------------------------------|
    | every column, once (INSERT)    | create (worker)            | the id is new                       |
    | status=enabled, failing_since, | enable (worker)            | bumps ``revision``                  |
    |   disabled_reason, gap, cursor |                            | (cursor only forward: a gap skip)   |
    | cursor                         | dispatcher                 | only forward (``cursor < new``)     |
    | failing_since                  | dispatcher                 | ``revision`` unchanged              |
    | status=disabled + reason (+gap)| dispatcher                 | ``revision`` unchanged, enabled     |
    | the row (DELETE)               | delete (worker)            | its deliveries go with it           |

A cursor is a position: ``lsn << 13 | index`` of the last event the endpoint acknowledged with a
2xx (or that it does not subscribe to), where ``index`` is the event's place in its record (the
items of a batch record share its LSN). ``index == COMPLETE`` means the whole record at ``lsn``
is done. A new endpoint starts at the durable LSN of its creation, complete: it gets every event
after the ``201``.

Every function here is blocking: callers run them in a worker thread.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger import FILE_MODE

FILE_NAME = "webhooks.sqlite3"
INDEX_BITS = 13
COMPLETE = (1 << INDEX_BITS) - 1  # the index of a cursor whose whole record is done
assert COMPLETE >= 8190  # a batch record holds at most 8190 transfers (BATCH_ITEMS_MAX)
DELIVERIES_KEPT = 100  # recent attempts kept per endpoint
BUSY_TIMEOUT_MS = 5000  # another process's commit holds the write lock for milliseconds

SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,            -- JSON list of event types, or ["*"]
    secret TEXT NOT NULL,
    status TEXT NOT NULL,            -- enabled | disabled
    disabled_reason TEXT,            -- failing | events_compacted
    created_at_us INTEGER NOT NULL,
    failing_since_us INTEGER,
    cursor INTEGER NOT NULL,         -- lsn << 13 | index of the last event done
    gap_oldest_lsn INTEGER,          -- with events_compacted: the oldest LSN the log still had
    revision INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    at_us INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS deliveries_by_endpoint ON deliveries (endpoint_id, seq);
"""


def position(lsn: int, index: int) -> int:
    assert lsn >= 0
    assert 0 <= index <= COMPLETE
    return lsn << INDEX_BITS | index


def lsn_of(cursor: int) -> int:
    return cursor >> INDEX_BITS


def index_of(cursor: int) -> int:
    return cursor & COMPLETE


def next_after(cursor: int) -> int:
    """The ``after`` LSN to read the feed from so that nothing past ``cursor`` is missed: the
    cursor's own record again when only part of it is done."""
    return lsn_of(cursor) if index_of(cursor) == COMPLETE else lsn_of(cursor) - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    id: str
    url: str
    events: tuple[str, ...]
    secret: str
    status: str
    disabled_reason: str | None
    created_at_us: int
    failing_since_us: int | None
    cursor: int
    gap_oldest_lsn: int | None
    revision: int

    def subscribes(self, event_type: str) -> bool:
        return "*" in self.events or event_type in self.events


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    endpoint_id: str
    event_id: str
    event_type: str
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int
    at_us: int


_COLUMNS = ("id, url, events, secret, status, disabled_reason, created_at_us, failing_since_us, cursor, "
            "gap_oldest_lsn, revision")


def _endpoint(row: tuple[Any, ...]) -> Endpoint:
    return Endpoint(
        id=row[0], url=row[1], events=tuple(json.loads(row[2])), secret=row[3], status=row[4],
        disabled_reason=row[5], created_at_us=row[6], failing_since_us=row[7], cursor=row[8],
        gap_oldest_lsn=row[9], revision=row[10],
    )


class WebhookStore:
    """One connection to the file (not shared between threads at once: each caller owns its
    store, and runs its calls one at a time in a worker thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the main
        # file's mode, and they hold the endpoints' secrets too.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
        # isolation_level=None: transactions are the explicit BEGIN IMMEDIATE below.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._db.executescript(SCHEMA)
        for existing in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if existing.exists():  # files an earlier version left wider
                existing.chmod(FILE_MODE)

    @classmethod
    def open(cls, data_dir: Path) -> WebhookStore:
        return cls(data_dir / FILE_NAME)

    def close(self) -> None:
        self._db.close()

    def data_version(self) -> int:
        """Changes whenever another connection has committed (SQLite's ``data_version``)."""
        value: int = self._db.execute("PRAGMA data_version").fetchone()[0]
        return value

    # -- the routes --------------------------------------------------------------------------

    def count(self) -> int:
        value: int = self._db.execute("SELECT count(*) FROM endpoints").fetchone()[0]
        return value

    def create(self, endpoint: Endpoint, *, endpoints_max: int) -> bool:
        """Inserts ``endpoint``; False when ``endpoints_max`` exist already (checked in the same
        write transaction, so concurrent creations in several workers cannot pass it)."""
        with self._transaction():
            if self.count() >= endpoints_max:
                return False
            self._db.execute(
                f"INSERT INTO endpoints ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (endpoint.id, endpoint.url, json.dumps(list(endpoint.events)), endpoint.secret, endpoint.status,
                 endpoint.disabled_reason, endpoint.created_at_us, endpoint.failing_since_us, endpoint.cursor,
                 endpoint.gap_oldest_lsn, endpoint.revision),
            )
        return True

    def get(self, endpoint_id: str) -> Endpoint | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM endpoints WHERE id = ?", (endpoint_id,)).fetchone()
        return None if row is None else _endpoint(row)

    def endpoints(self) -> list[Endpoint]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM endpoints ORDER BY created_at_us, id").fetchall()
        return [_endpoint(row) for row in rows]

    def delete(self, endpoint_id: str) -> bool:
        with self._transaction():
            deleted = self._db.execute("DELETE FROM endpoints WHERE id = ?", (endpoint_id,)).rowcount
            self._db.execute("DELETE FROM deliveries WHERE endpoint_id = ?", (endpoint_id,))
        return bool(deleted)

    def enable(self, endpoint_id: str, *, now_us: int) -> Endpoint | None:
        """Enables the endpoint (a no-op when it is enabled). One disabled because its events
        were compacted away resumes at the oldest event the log still had, and the skipped range
        is written to its deliveries log: enabling is the operator's acknowledgement of the gap."""
        with self._transaction():
            found = self.get(endpoint_id)
            if found is None or found.status == "enabled":
                return found
            cursor = found.cursor
            if found.disabled_reason == "events_compacted" and found.gap_oldest_lsn is not None:
                skip_to = position(found.gap_oldest_lsn - 1, COMPLETE)
                if skip_to > cursor:
                    self._insert_delivery(_gap(endpoint_id, cursor, found.gap_oldest_lsn, now_us))
                    cursor = skip_to
            self._db.execute(
                "UPDATE endpoints SET status = 'enabled', disabled_reason = NULL, failing_since_us = NULL, "
                "gap_oldest_lsn = NULL, cursor = ?, revision = revision + 1 WHERE id = ?",
                (cursor, endpoint_id),
            )
            return self.get(endpoint_id)

    def deliveries(self, endpoint_id: str, limit: int) -> list[Delivery]:
        rows = self._db.execute(
            "SELECT endpoint_id, event_id, event_type, attempt, status_code, error, duration_ms, at_us "
            "FROM deliveries WHERE endpoint_id = ? ORDER BY seq DESC LIMIT ?", (endpoint_id, limit),
        ).fetchall()
        return [Delivery(endpoint_id=row[0], event_id=row[1], event_type=row[2], attempt=row[3],
                         status_code=row[4], error=row[5], duration_ms=row[6], at_us=row[7]) for row in rows]

    # -- the dispatcher ----------------------------------------------------------------------

    def save(self, progress: Progress) -> None:
        """What the dispatcher learned since its last save, in one transaction."""
        if progress.empty():
            return
        with self._transaction():
            for endpoint_id, cursor in progress.cursors.items():
                self._db.execute("UPDATE endpoints SET cursor = ? WHERE id = ? AND cursor < ?",
                                 (cursor, endpoint_id, cursor))
            for endpoint_id, (revision, since_us) in progress.failing.items():
                self._db.execute("UPDATE endpoints SET failing_since_us = ? WHERE id = ? AND revision = ?",
                                 (since_us, endpoint_id, revision))
            for endpoint_id, (revision, reason, gap_oldest_lsn) in progress.disabled.items():
                self._db.execute(
                    "UPDATE endpoints SET status = 'disabled', disabled_reason = ?, gap_oldest_lsn = ? "
                    "WHERE id = ? AND revision = ? AND status = 'enabled'",
                    (reason, gap_oldest_lsn, endpoint_id, revision),
                )
            touched = set()
            for delivery in progress.deliveries:
                if self._db.execute("SELECT 1 FROM endpoints WHERE id = ?", (delivery.endpoint_id,)).fetchone():
                    self._insert_delivery(delivery)
                    touched.add(delivery.endpoint_id)
            for endpoint_id in sorted(touched):
                self._trim(endpoint_id)

    def _insert_delivery(self, delivery: Delivery) -> None:
        self._db.execute(
            "INSERT INTO deliveries (endpoint_id, event_id, event_type, attempt, status_code, error, duration_ms, "
            "at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (delivery.endpoint_id, delivery.event_id, delivery.event_type, delivery.attempt, delivery.status_code,
             delivery.error, delivery.duration_ms, delivery.at_us),
        )

    def _trim(self, endpoint_id: str) -> None:
        self._db.execute(
            "DELETE FROM deliveries WHERE endpoint_id = ? AND seq <= (SELECT seq FROM deliveries "
            "WHERE endpoint_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (endpoint_id, endpoint_id, DELIVERIES_KEPT),
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class SharedWebhookStore:
    """``WebhookStore`` in cluster mode: the same records in a JetStream key-value bucket
    (``BUCKET``, three copies, fsynced like the log) instead of a file on one host, so that the
    HTTP workers and the delivering owner may run on any hosts, and a takeover on another host
    resumes from the saved cursors. All endpoints are one value (``ENDPOINTS_KEY``: a JSON object
    by id; they are few), written only by compare-and-set on its revision, which stands in for
    the file's write transaction (a writer that lost the race reads again and redoes its change)
    and for ``data_version`` (it changes with every write); each endpoint's recent deliveries are
    a value of their own. The same guards as the table in the module docstring."""

    BUCKET = "wallet_webhooks"
    ENDPOINTS_KEY = "endpoints"

    def __init__(self, client: Any, bucket: str = BUCKET) -> None:
        self._client = client  # a connected ``wal.StreamClient``, this store's own
        self._bucket = bucket  # (tests use buckets of their own)
        client.ensure_bucket(bucket)

    @classmethod
    def open(cls, servers: list[str], *, bucket: str = BUCKET) -> SharedWebhookStore:
        from wal import StreamClient  # the NATS client: only cluster processes load it

        client = StreamClient(servers, name=f"wallet-webhooks-{os.getpid()}")
        client.connect()
        try:
            return cls(client, bucket)
        except BaseException:
            client.close()
            raise

    def close(self) -> None:
        """Closes its NATS connection (again: nothing)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _read(self) -> tuple[dict[str, dict[str, Any]], int]:
        found = self._client.get_value(self._bucket, self.ENDPOINTS_KEY)
        if found is None:
            return {}, 0
        value, revision = found
        return json.loads(value), revision

    def _change(self, change: Any) -> Any:
        """Applies ``change(rows)`` (which edits the rows in place and returns its answer, and
        whether to write) by compare-and-set, again on a lost race."""
        while True:
            rows, revision = self._read()
            answer, write = change(rows)
            if not write:
                return answer
            if self._client.put_value(self._bucket, self.ENDPOINTS_KEY, json.dumps(rows).encode(),
                                      last=revision) is not None:
                return answer

    def data_version(self) -> int:
        return self._read()[1]

    # -- the routes --------------------------------------------------------------------------

    def count(self) -> int:
        return len(self._read()[0])

    def create(self, endpoint: Endpoint, *, endpoints_max: int) -> bool:
        def change(rows: dict[str, dict[str, Any]]) -> tuple[bool, bool]:
            if len(rows) >= endpoints_max:
                return False, False
            assert endpoint.id not in rows, endpoint.id
            rows[endpoint.id] = _row(endpoint)
            return True, True

        created: bool = self._change(change)
        return created

    def get(self, endpoint_id: str) -> Endpoint | None:
        row = self._read()[0].get(endpoint_id)
        return None if row is None else Endpoint(**{**row, "events": tuple(row["events"])})

    def endpoints(self) -> list[Endpoint]:
        rows = self._read()[0].values()
        found = [Endpoint(**{**row, "events": tuple(row["events"])}) for row in rows]
        return sorted(found, key=lambda endpoint: (endpoint.created_at_us, endpoint.id))

    def delete(self, endpoint_id: str) -> bool:
        deleted: bool = self._change(lambda rows: (rows.pop(endpoint_id, None) is not None,) * 2)
        if deleted:
            self._client.delete_value(self._bucket, _deliveries_key(endpoint_id))
        return deleted

    def enable(self, endpoint_id: str, *, now_us: int) -> Endpoint | None:
        gap: list[Delivery] = []

        def change(rows: dict[str, dict[str, Any]]) -> tuple[bool, bool]:
            gap.clear()
            row = rows.get(endpoint_id)
            if row is None or row["status"] == "enabled":
                return False, False
            cursor = row["cursor"]
            if row["disabled_reason"] == "events_compacted" and row["gap_oldest_lsn"] is not None:
                skip_to = position(row["gap_oldest_lsn"] - 1, COMPLETE)
                if skip_to > cursor:
                    gap.append(_gap(endpoint_id, cursor, row["gap_oldest_lsn"], now_us))
                    cursor = skip_to
            row.update(status="enabled", disabled_reason=None, failing_since_us=None, gap_oldest_lsn=None,
                       cursor=cursor, revision=row["revision"] + 1)
            return True, True

        if self._change(change) and gap:
            self._add_deliveries(endpoint_id, gap)
        return self.get(endpoint_id)

    def deliveries(self, endpoint_id: str, limit: int) -> list[Delivery]:
        found = self._client.get_value(self._bucket, _deliveries_key(endpoint_id))
        rows = [] if found is None else json.loads(found[0])
        return [Delivery(**row) for row in reversed(rows[-limit:])]

    # -- the dispatcher ----------------------------------------------------------------------

    def save(self, progress: Progress) -> None:
        if progress.empty():
            return

        def change(rows: dict[str, dict[str, Any]]) -> tuple[set[str], bool]:
            for endpoint_id, cursor in progress.cursors.items():
                row = rows.get(endpoint_id)
                if row is not None and row["cursor"] < cursor:
                    row["cursor"] = cursor
            for endpoint_id, (revision, since_us) in progress.failing.items():
                row = rows.get(endpoint_id)
                if row is not None and row["revision"] == revision:
                    row["failing_since_us"] = since_us
            for endpoint_id, (revision, reason, gap_oldest_lsn) in progress.disabled.items():
                row = rows.get(endpoint_id)
                if row is not None and row["revision"] == revision and row["status"] == "enabled":
                    row.update(status="disabled", disabled_reason=reason, gap_oldest_lsn=gap_oldest_lsn)
            return set(rows), True

        present: set[str] = self._change(change)
        by_endpoint: dict[str, list[Delivery]] = {}
        for delivery in progress.deliveries:
            if delivery.endpoint_id in present:
                by_endpoint.setdefault(delivery.endpoint_id, []).append(delivery)
        for endpoint_id, deliveries in sorted(by_endpoint.items()):
            self._add_deliveries(endpoint_id, deliveries)

    def _add_deliveries(self, endpoint_id: str, deliveries: list[Delivery]) -> None:
        key = _deliveries_key(endpoint_id)
        while True:
            found = self._client.get_value(self._bucket, key)
            rows, revision = ([], 0) if found is None else (json.loads(found[0]), found[1])
            rows = (rows + [_delivery_row(delivery) for delivery in deliveries])[-DELIVERIES_KEPT:]
            if self._client.put_value(self._bucket, key, json.dumps(rows).encode(), last=revision) is not None:
                return


# Either store: a file on this host, or the cluster's bucket.
AnyWebhookStore = WebhookStore | SharedWebhookStore


def _row(endpoint: Endpoint) -> dict[str, Any]:
    return {"id": endpoint.id, "url": endpoint.url, "events": list(endpoint.events), "secret": endpoint.secret,
            "status": endpoint.status, "disabled_reason": endpoint.disabled_reason,
            "created_at_us": endpoint.created_at_us, "failing_since_us": endpoint.failing_since_us,
            "cursor": endpoint.cursor, "gap_oldest_lsn": endpoint.gap_oldest_lsn, "revision": endpoint.revision}


def _delivery_row(delivery: Delivery) -> dict[str, Any]:
    return {"endpoint_id": delivery.endpoint_id, "event_id": delivery.event_id, "event_type": delivery.event_type,
            "attempt": delivery.attempt, "status_code": delivery.status_code, "error": delivery.error,
            "duration_ms": delivery.duration_ms, "at_us": delivery.at_us}


def _deliveries_key(endpoint_id: str) -> str:
    return f"deliveries.{endpoint_id}"


def _gap(endpoint_id: str, cursor: int, gap_oldest_lsn: int, now_us: int) -> Delivery:
    """The deliveries log's note of the events an enabled endpoint skips (compacted away)."""
    return Delivery(
        endpoint_id=endpoint_id, event_id=f"lsn:{lsn_of(cursor)}-{gap_oldest_lsn - 1}", event_type="gap",
        attempt=0, status_code=None,
        error=(f"events after position {lsn_of(cursor)}.{index_of(cursor)} up to LSN {gap_oldest_lsn - 1} were "
               "compacted away before delivery: skipped when the endpoint was enabled"),
        duration_ms=0, at_us=now_us)


class _Transaction:
    """``BEGIN IMMEDIATE`` (takes the write lock at once, so a read-then-write cannot be
    overtaken) ... ``COMMIT``, or ``ROLLBACK`` on an error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


@dataclass(slots=True)
class Progress:
    """The dispatcher's writes waiting for the next save (``WebhookStore.save``)."""

    cursors: dict[str, int]
    failing: dict[str, tuple[int, int | None]]  # id -> (revision, failing_since_us or None)
    disabled: dict[str, tuple[int, str, int | None]]  # id -> (revision, reason, gap_oldest_lsn)
    deliveries: list[Delivery]

    @classmethod
    def new(cls) -> Progress:
        return cls(cursors={}, failing={}, disabled={}, deliveries=[])

    def empty(self) -> bool:
        return not (self.cursors or self.failing or self.disabled or self.deliveries)
