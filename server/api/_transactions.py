"""Routes of single transactions (``GET /v1/transactions/{id}``), read from the history read
model once it shows what was durable when the request arrived. A user token sees the
transactions that involve a wallet of its owner. Runs in every HTTP worker, and in the one
process of ``--workers 0``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ledger import TransactionRow, is_treasury
from server import _validate as v
from server._errors import ApiError
from server.api._auth import authenticate, forbidden
from server.api._deps import Deps, call
from server.api._render import json_response, row_body


async def find_transaction(deps: Deps, transaction_id: str) -> TransactionRow:
    """The transaction, or 404."""
    found = await call(deps.port().transaction(transaction_id))
    if found is None:
        raise ApiError(404, "transaction_not_found", "Transaction not found", f"no transaction {transaction_id}")
    return found


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
