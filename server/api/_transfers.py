"""Routes that move money one transfer at a time: deposits (admin), transfers (pending when
they ask for a hold), the capture or void of a pending transfer, and refunds. Each needs an
``Idempotency-Key`` and answers only once its record is durable. Runs in every HTTP worker, and
in the one process of ``--workers 0``.
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ledger import (
    HoldCaptured,
    HoldCreated,
    HoldVoided,
    Idempotency,
    Reason,
    Refund,
    Refunded,
    Rejection,
    TransactionType,
    Transfer,
    Transferred,
)
from server import _validate as v
from server._errors import rejected
from server.api._auth import Caller, admin, authenticate, forbidden
from server.api._deps import Deps, call
from server.api._render import json_response, recorded, refund_body, transaction_body
from server.api._requests import fingerprint, path_id
from server.api._transactions import find_transaction


class Transfers:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def _move(self, request: Request, caller: Caller, raw: dict[str, Any], body: dict[str, Any],
                    *, type_: TransactionType, from_wallet_id: str | None) -> Response:
        """A deposit or a transfer (pending when ``body`` has a hold timeout)."""
        key = v.idempotency_key(request, required=True)
        assert key is not None
        command = Transfer(
            transaction_id="tx_" + secrets.token_hex(12),
            type=type_,
            from_wallet_id=from_wallet_id,
            to_wallet_id=body["to_wallet_id"],
            amount=body["amount"],
            description=body.get("description"),
            metadata=body.get("metadata"),
            idempotency=Idempotency(scope=caller.scope, key=key, fingerprint=fingerprint(request, raw)),
            owner_id=caller.owner_id,
            hold_timeout_s=body.get("hold"),
        )
        decision = await call(self._deps.port().transfer(command))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        event, lsn = recorded(decision)
        assert isinstance(event, Transferred | HoldCreated)
        return json_response(transaction_body(event, lsn), 201)

    async def deposit(self, request: Request) -> Response:
        caller = await admin(self._deps, request)
        v.idempotency_key(request, required=True)
        raw = await v.json_object(request)
        body = v.fields(
            raw,
            {
                "wallet_id": (True, v.user_identifier),
                "amount": (True, v.amount),
                "description": (False, v.description),
                "metadata": (False, v.metadata),
            },
        )
        body["to_wallet_id"] = body.pop("wallet_id")
        return await self._move(request, caller, raw, body, type_=TransactionType.DEPOSIT, from_wallet_id=None)

    async def transfer(self, request: Request) -> Response:
        caller = await authenticate(self._deps, request)
        v.idempotency_key(request, required=True)
        raw = await v.json_object(request)
        body = v.fields(
            raw,
            {
                "from_wallet_id": (True, v.user_identifier),
                "to_wallet_id": (True, v.user_identifier),
                "amount": (True, v.amount),
                "description": (False, v.description),
                "metadata": (False, v.metadata),
                "hold": (False, v.hold),
            },
        )
        return await self._move(
            request, caller, raw, body, type_=TransactionType.TRANSFER, from_wallet_id=body["from_wallet_id"]
        )

    async def _resolve(self, request: Request, *, capture: bool) -> Response:
        caller = await authenticate(self._deps, request)
        key = v.idempotency_key(request, required=True)
        assert key is not None
        raw = await v.json_object(request, optional=True)
        body = v.fields(raw, {"amount": (False, v.amount)} if capture else {})
        transaction_id = path_id(request, "transaction_id", "transaction_not_found", "Transaction")
        idempotency = Idempotency(scope=caller.scope, key=key, fingerprint=fingerprint(request, raw))
        decision = await call(self._deps.port().resolve_hold(
            transaction_id, capture, body.get("amount"), caller.owner_id, idempotency,
        ))
        if isinstance(decision, Rejection):
            if decision.reason == Reason.NOT_PENDING:
                await self._not_pending(caller, transaction_id)
            raise rejected(decision)
        event, lsn = recorded(decision)
        assert isinstance(event, HoldCaptured | HoldVoided)
        return json_response(transaction_body(event, lsn), 200)

    async def _not_pending(self, caller: Caller, transaction_id: str) -> None:
        """Raises 404 for a transaction that does not exist, 403 for another owner's; returns
        (for a 409 transfer_not_pending) otherwise."""
        found = await find_transaction(self._deps, transaction_id)
        if caller.owner_id is not None:
            (view,) = await call(self._deps.port().wallets([found.from_wallet_id]))
            if view.owner_id != caller.owner_id:
                raise forbidden("the transfer was sent from a wallet of another owner")

    async def capture(self, request: Request) -> Response:
        return await self._resolve(request, capture=True)

    async def refund(self, request: Request) -> Response:
        """``POST /v1/transactions/{id}/refund``: the original's facts come from the history
        read model once it shows everything durable at arrival (a capture or a deposit the
        caller saw acknowledged is there); they never change once posted. The ledger decides
        the rest, the cap included, on the refunding wallet's shard (ADR 0011)."""
        caller = await authenticate(self._deps, request)
        key = v.idempotency_key(request, required=True)
        assert key is not None
        raw = await v.json_object(request, optional=True)
        body = v.fields(
            raw,
            {
                "amount": (False, v.amount),
                "description": (False, v.description),
                "metadata": (False, v.metadata),
            },
        )
        transaction_id = path_id(request, "transaction_id", "transaction_not_found", "Transaction")
        original = await find_transaction(self._deps, transaction_id)
        if caller.owner_id is not None:
            # Who may refund: admin, or the owner of the wallet that received the original.
            (view,) = await call(self._deps.port().wallets([original.to_wallet_id]))
            if view.owner_id != caller.owner_id:
                raise forbidden("the transaction was received by a wallet of another owner")
        command = Refund(
            transaction_id="tx_" + secrets.token_hex(12),
            refund_of=original.id,
            from_wallet_id=original.to_wallet_id,
            to_wallet_id=original.from_wallet_id,
            amount=body.get("amount"),
            original_type=original.type,
            original_status=original.status,
            original_amount=original.amount,
            description=body.get("description"),
            metadata=body.get("metadata"),
            idempotency=Idempotency(scope=caller.scope, key=key, fingerprint=fingerprint(request, raw)),
            owner_id=caller.owner_id,
        )
        decision = await call(self._deps.port().refund(command))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        event, lsn = recorded(decision)
        assert isinstance(event, Refunded)
        return json_response(refund_body(event, lsn), 201)

    async def void(self, request: Request) -> Response:
        return await self._resolve(request, capture=False)
