"""Routes of transactions read from the history read model, once it shows what was durable when
the request arrived: one transaction (``GET /v1/transactions/{id}``) and the search (``GET
/v1/transactions``). A user token sees the transactions that involve a wallet of its owner. Runs
in every HTTP worker, and in the one process of ``--workers 0``.

The search's query parameters, each checked here (every bad one is listed in one ``400
invalid_request``; the query itself is ``ledger._search``):

    | parameter            | accepted                                                         |
    |----------------------|------------------------------------------------------------------|
    | wallet_id            | an id; 404 when no such wallet, 403 for another owner's (a user  |
    |                      |   token), as on the wallet's own statement                       |
    | type, status         | one of the labels                                                |
    | since, until         | RFC 3339 timestamps, inclusive, since <= until                   |
    | min_amount, max_amount | integers 1..int64 max written plainly, min <= max              |
    | metadata.<key>       | key: 1-64 of [A-Za-z0-9_-]; value: at most 256 characters;       |
    |                      |   at most 8 keys, each once                                      |
    | limit, cursor        | 1-1000 (default 50); a cursor this route gave out                |

Every parameter may appear once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from ledger import (
    AMOUNT_MAX,
    INT64_MAX,
    SEARCH_METADATA_FILTERS_MAX,
    SEARCH_METADATA_KEY_PATTERN,
    SEARCH_METADATA_VALUE_CHARS_MAX,
    TransactionQuery,
    TransactionRow,
    TransactionStatus,
    is_treasury,
)
from server import _validate as v
from server._errors import ApiError, invalid
from server.api._auth import authenticate, forbidden
from server.api._cursors import cursor_text, decode_cursor, encode_cursor
from server.api._deps import Deps, call
from server.api._render import json_response, row_body
from server.api._requests import parse_timestamp
from server.api._wallets import TRANSACTION_STATUSES, TRANSACTION_TYPES, owned_wallet

METADATA_PREFIX = "metadata."
SEARCH_PARAMETERS = frozenset(
    {"wallet_id", "type", "status", "since", "until", "min_amount", "max_amount", "limit", "cursor"}
)
T = TypeVar("T")
SEARCH_CURSOR = "s"  # the cursor's kind: ``s:<position>``, the next page's exclusive upper position
# With several ledger groups: ``g:<at_us>.<group>.<position>``, where the next page starts below.
GROUPS_CURSOR = "g"


async def find_transaction(deps: Deps, transaction_id: str) -> TransactionRow:
    """The transaction, or 404."""
    found = await call(deps.port().transaction(transaction_id))
    if found is None:
        raise ApiError(404, "transaction_not_found", "Transaction not found", f"no transaction {transaction_id}")
    return found


def search_query(request: Request) -> TransactionQuery:
    """The search's parameters as a query (without the caller's scope), or one 400 that lists
    every bad parameter."""
    errors: list[dict[str, str]] = []
    values: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name.startswith(METADATA_PREFIX):
            key = name[len(METADATA_PREFIX):]
            if key in metadata:
                errors.append({"field": name, "message": "is given more than once"})
            elif not SEARCH_METADATA_KEY_PATTERN.fullmatch(key):
                errors.append({"field": name, "message": "the key must be 1-64 characters of A-Z a-z 0-9 _ - "
                                                         "(top-level keys only)"})
            elif len(value) > SEARCH_METADATA_VALUE_CHARS_MAX:
                errors.append({"field": name, "message": f"must be at most {SEARCH_METADATA_VALUE_CHARS_MAX} characters"})
            else:
                metadata[key] = value
        elif name not in SEARCH_PARAMETERS:
            errors.append({"field": name, "message": "unknown query parameter"})
        elif name in values:
            errors.append({"field": name, "message": "is given more than once"})
        else:
            values[name] = value
    if len(metadata) > SEARCH_METADATA_FILTERS_MAX:
        errors.append({"field": "metadata", "message": f"at most {SEARCH_METADATA_FILTERS_MAX} metadata filters "
                                                       f"are accepted, not {len(metadata)}"})

    def checked(name: str, check: Callable[[str, str], T]) -> T | None:
        if name not in values:
            return None
        try:
            return check(name, values[name])
        except ApiError as error:
            errors.extend(error.errors or [{"field": name, "message": error.detail}])
            return None

    def labelled(labels: Collection[str]) -> Callable[[str, str], str]:
        def check(name: str, raw: str) -> str:
            if raw not in labels:
                raise v.invalid_field(name, f"must be one of {', '.join(sorted(labels))}")
            return raw
        return check

    def amount(name: str, raw: str) -> int:
        found = v.integer_in(raw, 1, AMOUNT_MAX)
        if found is None:
            raise v.invalid_field(name, f"must be an integer from 1 to {AMOUNT_MAX}")
        return found

    def position(name: str, raw: str) -> int | tuple[int, int, int] | None:
        below = groups_cursor(raw)
        return below if below is not None else decode_cursor(SEARCH_CURSOR, raw, low=1)

    wallet_id = checked("wallet_id", v.identifier)
    type_label = checked("type", labelled(TRANSACTION_TYPES))
    status_label = checked("status", labelled(TRANSACTION_STATUSES))
    since = checked("since", parse_timestamp)
    until = checked("until", parse_timestamp)
    low = checked("min_amount", amount)
    high = checked("max_amount", amount)
    limit = checked("limit", lambda name, raw: v.limit(request))
    before = checked("cursor", position)
    if since is not None and until is not None and since > until:
        errors.append({"field": "since", "message": "must not be after until"})
    if low is not None and high is not None and low > high:
        errors.append({"field": "min_amount", "message": "must not be above max_amount"})
    if errors:
        raise invalid(errors)
    return TransactionQuery(
        wallet_id=wallet_id,
        type=None if type_label is None else TRANSACTION_TYPES[type_label],
        status=None if status_label is None else TransactionStatus[status_label.upper()],
        since_us=since, until_us=until, min_amount=low, max_amount=high,
        metadata=tuple(metadata.items()), before=before if isinstance(before, int) else None,
        below=before if isinstance(before, tuple) else None,
        limit=v.LIMIT_DEFAULT if limit is None else limit,
    )


def groups_cursor(raw: str) -> tuple[int, int, int] | None:
    """The (at_us, group, position) of a ``g:`` cursor, None for another kind; 400 if broken."""
    text = cursor_text(raw)
    kind, _, rest = text.partition(":")
    if kind != GROUPS_CURSOR:
        return None
    parts = [v.integer_in(part, 0, INT64_MAX) for part in rest.split(".")]
    if len(parts) != 3 or any(part is None for part in parts):
        raise v.invalid_field("cursor", "is not a cursor this endpoint gave out")
    at_us, group, position = parts
    assert at_us is not None and group is not None and position is not None
    return at_us, group, position


def encode_search_cursor(before: int | tuple[int, int, int]) -> str:
    if isinstance(before, tuple):
        return encode_cursor(GROUPS_CURSOR, ".".join(str(part) for part in before))  # type: ignore[arg-type]
    return encode_cursor(SEARCH_CURSOR, before)


class Transactions:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def get_transaction(self, request: Request) -> Response:
        caller = await authenticate(self._deps, request)
        v.query(request, set())
        found = await find_transaction(self._deps, request.path_params["transaction_id"])
        if caller.owner_id is not None:
            views = await call(self._deps.port().wallets([found.from_wallet_id, found.to_wallet_id]))
            if all(view.owner_id != caller.owner_id or is_treasury(view.id) for view in views):
                raise forbidden("the transaction does not involve a wallet of this owner")
        return json_response(row_body(found))

    async def search_transactions(self, request: Request) -> Response:
        caller = await authenticate(self._deps, request)
        query = search_query(request)
        if query.wallet_id is not None:
            # As the wallet's statement: an unknown wallet is 404, another owner's 403.
            await owned_wallet(self._deps, caller, query.wallet_id)
        elif caller.owner_id is not None:
            query = dataclasses.replace(query, owner_id=caller.owner_id)
        rows, before = await call(self._deps.port().search_transactions(query))
        return json_response({
            "items": [row_body(row) for row in rows],
            "next_cursor": None if before is None else encode_search_cursor(before),
        })

