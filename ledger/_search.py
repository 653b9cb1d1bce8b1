"""Transaction search over the history read model (``GET /v1/transactions``): which metadata
is searchable, and the query that answers one page, newest first. ADR 0009 has the choices and
their measurements.

Order and pages. Every transaction has a **position**, ``transactions.pos`` (the table's
integer primary key): where it was created in the log, ``lsn << POSITION_BITS | index`` (rows
migrated from schema 2 keep their insertion number, which is below every later position). It
never changes (a captured hold keeps the position of its creation), is unique, and grows with
the log, so newest first is descending position, and a page continues strictly below the
position where the previous one stopped: a transaction created after the first page has a
higher position than anything on it and can neither appear on a later page nor push one of
its items off (no skip, no repeat). A page is read in one SQLite read transaction.

Filters, and how each is answered:

    | filter                      | how                                                       |
    |-----------------------------|-----------------------------------------------------------|
    | wallet_id                   | index ``transactions_by_from`` + ``transactions_by_to``   |
    | a user token (no wallet_id) | the owner's wallets (``wallets_by_owner``): each wallet's |
    |                             |   two indexes; past ``OWNER_WALLETS_UNION_MAX`` wallets,  |
    |                             |   a check of each row against the owner's wallet set      |
    | type / status               | ``transactions_by_type`` / ``transactions_by_status``     |
    | metadata.<key>=<value>      | ``transaction_metadata`` (key, value, pos)                |
    | since / until               | a position range: timestamps are non-decreasing in log    |
    |                             |   order (``ledger.Clock``), so a binary search over the   |
    |                             |   primary key finds the bounds                             |
    | min_amount / max_amount     | not indexed: checked on each candidate row                 |
    | none of the above           | the primary key itself, newest first                      |

Each indexed filter is a **stream** of positions, descending. The page is their intersection,
found by leapfrogging: ask each stream for its largest position at or below the current one
until all agree (a match), then go below it. That costs about the smaller streams' lengths,
whichever filter is selective, so no planner has to guess (SQLite's statistics hold averages
per index, and this SQLite has no STAT4 for skewed values such as one common channel). Streams
read their index in chunks that grow while they are read in sequence.

Bounded work: a page examines at most ``EXAMINED_MAX`` index positions and rows. When a filter
that is not indexed (or the intersection) is so rare that the budget runs out first, the page
holds what was found (maybe nothing) and a cursor that continues from where it stopped; only
an exhausted search answers without a cursor.

Searchable metadata: top-level string values of at most ``METADATA_VALUE_CHARS_MAX`` characters
under keys of 1-64 characters of ``[A-Za-z0-9_-]`` (``searchable_metadata``; the schema-3
migration applies the same rule in SQL: ``METADATA_SQL``). Other values are kept in the
transaction's metadata but never match.

Plain ``sqlite3`` on the connection's own thread (``History.search`` runs it there); nothing
here touches ledger state.
"""

from __future__ import annotations

import bisect
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ledger._model import INT64_MAX, TransactionStatus, TransactionType

METADATA_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
METADATA_VALUE_CHARS_MAX = 256
METADATA_FILTERS_MAX = 8  # metadata.<key> parameters in one search
EXAMINED_MAX = 10_000  # index positions and rows one page may examine (about 20 ms)
OWNER_WALLETS_UNION_MAX = 32  # beyond, the owner's wallets are a check on rows, not streams
CHUNK_MIN = 8  # positions a stream reads at a time after a jump
CHUNK_MAX = 1024  # ... and at most, while it is read in sequence

# The same rule as ``searchable_metadata``, for ``json_each(metadata)`` rows aliased ``j``.
METADATA_SQL = (
    "j.type = 'text' AND length(j.key) BETWEEN 1 AND 64 AND j.key NOT GLOB '*[^A-Za-z0-9_-]*' "
    f"AND length(j.value) <= {METADATA_VALUE_CHARS_MAX}"
)
ROW_COLUMNS = ("pos, id, lsn, type, from_wallet_id, to_wallet_id, asset, amount, description, metadata, at_us, status, "
               "refund_of, refunded_amount")


def searchable_metadata(metadata: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The (key, value) pairs of ``metadata`` that a search can match."""
    if not metadata:
        return []
    return [
        (key, value) for key, value in metadata.items()
        if type(value) is str and len(value) <= METADATA_VALUE_CHARS_MAX and METADATA_KEY_PATTERN.fullmatch(key)
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionQuery:
    """One page of a search. ``wallet_id``: transactions from or to it; ``owner_id``: from or
    to any wallet of that owner (treasuries excepted). Bounds are inclusive; ``before`` is the
    exclusive upper position (a cursor)."""

    wallet_id: str | None = None
    owner_id: str | None = None
    type: TransactionType | None = None
    status: TransactionStatus | None = None
    since_us: int | None = None
    until_us: int | None = None
    min_amount: int | None = None
    max_amount: int | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    before: int | None = None
    limit: int = 50
    # Several ledger groups (``server._groups``): the page starts below this (at_us, group,
    # position) in the order of every group's rows together; each group is asked with
    # ``before`` and ``until_us`` made from it.
    below: tuple[int, int, int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchPage:
    """Raw rows (``ROW_COLUMNS``), newest first, and the exclusive upper position the next page
    starts below (None: nothing more)."""

    rows: list[tuple[Any, ...]]
    next_before: int | None
    examined: int


class _Budget:
    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left


class _Stream:
    """Positions of one index range within [floor, ...], newest first: ``seek(p)`` is the
    largest at or below ``p``, or None."""

    __slots__ = ("_budget", "_chunk", "_connection", "_done", "_floor", "_high", "_last", "_low", "_negated",
                 "_parameters", "_sql")

    def __init__(self, connection: sqlite3.Connection, where: str, parameters: tuple[Any, ...], *,
                 table: str, floor: int, budget: _Budget) -> None:
        self._connection = connection
        self._sql = f"SELECT pos FROM {table} WHERE {where}pos <= ? AND pos >= ? ORDER BY pos DESC LIMIT ?"
        self._parameters = parameters
        self._floor = floor
        self._budget = budget
        self._negated: list[int] = []  # the chunk read last, as -pos (ascending, for bisect)
        # The chunk holds every position of the stream in [_low, _high]; _done: none below _low.
        self._high = -1
        self._low = 0
        self._done = False
        self._chunk = CHUNK_MIN
        self._last: int | None = None  # what the last seek answered

    def seek(self, position: int) -> int | None:
        if self._low <= position <= self._high:
            index = bisect.bisect_left(self._negated, -position)
            if index < len(self._negated):
                self._last = -self._negated[index]
                return self._last
            assert self._done
            return None
        # Below the chunk after answering its last position: read on, more at a time. After a
        # jump (another stream was sparser), read little: the next jump may come at once.
        sequential = self._last is not None and self._last == self._low and position < self._low
        self._chunk = min(self._chunk * 2, CHUNK_MAX) if sequential else CHUNK_MIN
        found = [row[0] for row in self._connection.execute(
            self._sql, (*self._parameters, position, self._floor, self._chunk))]
        self._budget.left -= len(found) or 1
        self._negated = [-pos for pos in found]
        self._high = position
        self._done = len(found) < self._chunk
        self._low = self._floor if self._done else found[-1]
        self._last = found[0] if found else None
        return self._last


class _Union:
    """Positions in any of several streams."""

    __slots__ = ("_streams",)

    def __init__(self, streams: list[_Stream]) -> None:
        assert streams
        self._streams = streams

    def seek(self, position: int) -> int | None:
        best = None
        for stream in self._streams:
            found = stream.seek(position)
            if found is not None and (best is None or found > best):
                best = found
        return best


# Two subqueries: one ``SELECT min(pos), max(pos)`` would scan the table (SQLite optimizes a
# lone min() or max() into one B-tree lookup, not both together).
_ENDS = "SELECT (SELECT min(pos) FROM transactions), (SELECT max(pos) FROM transactions)"


def _first_at_or_after(connection: sqlite3.Connection, at_us: int, budget: _Budget) -> int | None:
    """The smallest position stamped at or after ``at_us`` (timestamps never decrease along
    positions): a binary search over the primary key, about 60 lookups at most."""
    low, high = connection.execute(_ENDS).fetchone()
    if high is None or connection.execute("SELECT at_us FROM transactions WHERE pos = ?", (high,)).fetchone()[0] < at_us:
        return None
    answer = high
    high -= 1
    while low <= high:
        middle = (low + high) // 2
        budget.left -= 1
        row = connection.execute(
            "SELECT pos, at_us FROM transactions WHERE pos >= ? ORDER BY pos LIMIT 1", (middle,)
        ).fetchone()
        if row is None or row[0] > high:
            high = middle - 1
        elif row[1] >= at_us:
            answer = row[0]
            high = middle - 1
        else:
            low = row[0] + 1
    return answer


def _last_at_or_before(connection: sqlite3.Connection, at_us: int, budget: _Budget) -> int | None:
    """The largest position stamped at or before ``at_us`` (the mirror of the above)."""
    low, high = connection.execute(_ENDS).fetchone()
    if low is None or connection.execute("SELECT at_us FROM transactions WHERE pos = ?", (low,)).fetchone()[0] > at_us:
        return None
    answer = low
    low += 1
    while low <= high:
        middle = (low + high + 1) // 2
        budget.left -= 1
        row = connection.execute(
            "SELECT pos, at_us FROM transactions WHERE pos <= ? ORDER BY pos DESC LIMIT 1", (middle,)
        ).fetchone()
        if row is None or row[0] < low:
            low = middle + 1
        elif row[1] <= at_us:
            answer = row[0]
            low = middle + 1
        else:
            high = row[0] - 1
    return answer


def search(connection: sqlite3.Connection, query: TransactionQuery) -> SearchPage:
    """One page of ``query``, in one read transaction on ``connection`` (plain sqlite3, in
    autocommit mode, on its own thread)."""
    assert query.limit >= 1
    assert len(query.metadata) <= METADATA_FILTERS_MAX
    connection.execute("BEGIN")
    try:
        return _search(connection, query, EXAMINED_MAX)
    finally:
        connection.execute("COMMIT")


def _search(connection: sqlite3.Connection, query: TransactionQuery, examined_max: int) -> SearchPage:
    budget = _Budget(examined_max)
    empty = SearchPage(rows=[], next_before=None, examined=0)
    upper = INT64_MAX if query.before is None else query.before - 1
    floor = 0
    if query.until_us is not None:
        last = _last_at_or_before(connection, query.until_us, budget)
        if last is None:
            return empty
        upper = min(upper, last)
    if query.since_us is not None:
        first = _first_at_or_after(connection, query.since_us, budget)
        if first is None:
            return empty
        floor = first
    if upper < floor:
        return empty

    def stream(table: str, where: str, *parameters: Any) -> _Stream:
        return _Stream(connection, where, parameters, table=table, floor=floor, budget=budget)

    def wallet(wallet_id: str) -> list[_Stream]:
        return [stream("transactions", "from_wallet_id = ? AND ", wallet_id),
                stream("transactions", "to_wallet_id = ? AND ", wallet_id)]

    streams: list[_Stream | _Union] = []
    owned: frozenset[str] | None = None  # checked on rows when the owner has many wallets
    if query.wallet_id is not None:
        streams.append(_Union(wallet(query.wallet_id)))
    if query.owner_id is not None:
        wallet_ids = [row[0] for row in connection.execute(
            "SELECT id FROM wallets WHERE owner_id = ? AND id NOT GLOB 'treasury:*'", (query.owner_id,))]
        budget.left -= len(wallet_ids)
        if not wallet_ids:
            return empty
        if len(wallet_ids) <= OWNER_WALLETS_UNION_MAX:
            streams.append(_Union([part for wallet_id in wallet_ids for part in wallet(wallet_id)]))
        else:
            owned = frozenset(wallet_ids)
    for key, value in query.metadata:
        streams.append(stream("transaction_metadata", "key = ? AND value = ? AND ", key, value))
    if query.type is not None:
        streams.append(stream("transactions", "type = ? AND ", int(query.type)))
    if query.status is not None:
        streams.append(stream("transactions", "status = ? AND ", int(query.status)))
    if not streams:
        streams.append(stream("transactions", ""))

    fetch = f"SELECT {ROW_COLUMNS} FROM transactions WHERE pos = ?"
    rows: list[tuple[Any, ...]] = []
    position = upper
    while True:
        # Leapfrog until every stream holds ``position``. Every position above it is settled
        # (no stream skipped a position that all of them hold), so a page may stop here.
        agreed = 0
        index = 0
        while agreed < len(streams):
            # Out of budget: stop, once past the first position (so every page moves on).
            if budget.left <= 0 and position < upper:
                return SearchPage(rows=rows, next_before=position + 1, examined=examined_max - budget.left)
            found = streams[index].seek(position)
            if found is None:
                return SearchPage(rows=rows, next_before=None, examined=examined_max - budget.left)
            if found == position:
                agreed += 1
            else:
                position = found
                agreed = 1
            index = (index + 1) % len(streams)
        budget.left -= 1
        row = connection.execute(fetch, (position,)).fetchone()
        assert row is not None, position
        if _matches(row, query, owned):
            if len(rows) == query.limit:
                return SearchPage(rows=rows, next_before=rows[-1][0], examined=examined_max - budget.left)
            rows.append(row)
        if position <= floor:
            return SearchPage(rows=rows, next_before=None, examined=examined_max - budget.left)
        position -= 1


def _matches(row: Sequence[Any], query: TransactionQuery, owned: frozenset[str] | None) -> bool:
    """The filters no index answered."""
    amount = row[7]
    if query.min_amount is not None and amount < query.min_amount:
        return False
    if query.max_amount is not None and amount > query.max_amount:
        return False
    return owned is None or row[4] in owned or row[5] in owned
