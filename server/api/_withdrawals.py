"""Routes of withdrawals (``/v1/withdrawals``): request one (``202``: the payout workers of the
ledger process call the bank later), read, list, and the admin's retry of a failed one. Runs in
every HTTP worker, and in the one process of ``--workers 0``.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import Response

from ledger import (
    AdvanceWithdrawal,
    HoldCreated,
    Idempotency,
    PayoutStep,
    Rejection,
    RequestWithdrawal,
    WithdrawalStatus,
    WithdrawalView,
)
from server import _validate as v
from server._errors import ApiError, rejected
from server.api._auth import ADMIN, Caller, admin, authenticate, forbidden
from server.api._cursors import encode_withdrawal_cursor, withdrawal_cursor
from server.api._deps import Deps, call
from server.api._render import json_response, recorded, requested_withdrawal_body, withdrawal_body
from server.api._requests import fingerprint, path_id


class Withdrawals:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def create_withdrawal(self, request: Request) -> Response:
        caller = await authenticate(self._deps, request)
        key = v.idempotency_key(request, required=True)
        assert key is not None
        raw = await v.json_object(request)
        body = v.fields(
            raw,
            {
                "wallet_id": (True, v.user_identifier),
                "amount": (True, v.amount),
                "destination": (True, v.destination),
            },
        )
        command = RequestWithdrawal(
            withdrawal_id="wd_" + secrets.token_hex(12),
            wallet_id=body["wallet_id"],
            amount=body["amount"],
            destination=body["destination"],
            owner_id=caller.owner_id,
            idempotency=Idempotency(scope=caller.scope, key=key, fingerprint=fingerprint(request, raw)),
        )
        decision = await call(self._deps.port().request_withdrawal(command))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        event, _ = recorded(decision)
        assert isinstance(event, HoldCreated)
        return json_response(requested_withdrawal_body(event), 202)

    async def _owned_withdrawal(self, caller: Caller, withdrawal_id: str) -> WithdrawalView:
        view = await call(self._deps.port().withdrawal(withdrawal_id))
        if view is None:
            raise ApiError(404, "withdrawal_not_found", "Withdrawal not found", f"no withdrawal {withdrawal_id}")
        if caller.owner_id is not None and view.owner_id != caller.owner_id:
            raise forbidden("the withdrawal is from a wallet of another owner")
        return view

    async def get_withdrawal(self, request: Request) -> Response:
        caller = await authenticate(self._deps, request)
        v.query(request, set())
        withdrawal_id = path_id(request, "withdrawal_id", "withdrawal_not_found", "Withdrawal")
        return json_response(withdrawal_body(await self._owned_withdrawal(caller, withdrawal_id)))

    async def list_withdrawals(self, request: Request) -> Response:
        caller = await authenticate(self._deps, request)
        v.query(request, {"status", "limit", "cursor"})
        params = request.query_params
        statuses = None
        if (raw := params.get("status")) is not None:
            labels = {status.label: status for status in WithdrawalStatus}
            if raw not in labels:
                raise v.invalid_field("status", f"must be one of {', '.join(labels)}")
            statuses = frozenset({labels[raw]})
        limit = v.limit(request)
        after = withdrawal_cursor(params.get("cursor"))
        views = await call(self._deps.port().withdrawals(statuses, caller.owner_id))
        if after is not None:
            views = [view for view in views if (view.created_at_us, view.id) > after]
        page = views[:limit]
        next_cursor = None
        if len(views) > limit:
            last = page[-1]
            next_cursor = encode_withdrawal_cursor(last.created_at_us, last.id)
        return json_response({"items": [withdrawal_body(view) for view in page], "next_cursor": next_cursor})

    async def retry_withdrawal(self, request: Request) -> Response:
        await admin(self._deps, request)
        v.fields(await v.json_object(request, optional=True), {})
        withdrawal_id = path_id(request, "withdrawal_id", "withdrawal_not_found", "Withdrawal")
        decision = await call(self._deps.port().advance_withdrawal(
            AdvanceWithdrawal(withdrawal_id=withdrawal_id, step=PayoutStep.RETRY)
        ))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        return json_response(withdrawal_body(await self._owned_withdrawal(ADMIN, withdrawal_id)))
