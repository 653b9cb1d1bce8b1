"""Routes of wallets (``/v1/wallets``): create, read, list, freeze / unfreeze / close, balance
(now or as of a time) and the statement. A user token sees its owner's wallets only, never a
treasury. Runs in every HTTP worker, and in the one process of ``--workers 0``.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import Response

from ledger import (
    ChangeWalletStatus,
    CreateWallet,
    Duplicate,
    Idempotency,
    Rejection,
    TransactionStatus,
    TransactionType,
    UpdateWallet,
    WalletCreated,
    WalletStatus,
    WalletView,
    is_treasury,
)
from server import _validate as v
from server._errors import ApiError, rejected
from server.api._auth import Caller, admin, authenticate, forbidden
from server.api._cursors import decode_cursor, encode_cursor, statement_cursor
from server.api._deps import Deps, call
from server.api._render import (
    created_wallet_body,
    entry_body,
    json_response,
    timestamp,
    wallet_body,
)
from server.api._requests import fingerprint, parse_timestamp, path_wallet_id

TRANSACTION_TYPES = {member.label: member for member in TransactionType}
TRANSACTION_STATUSES = ("posted", "pending", "voided", "failed")


async def wallet_view(deps: Deps, wallet_id: str) -> WalletView:
    """The wallet, or 404."""
    view = await call(deps.port().wallet(wallet_id))
    if view is None:
        raise ApiError(404, "wallet_not_found", "Wallet not found", f"wallet {wallet_id} does not exist")
    return view


async def owned_wallet(deps: Deps, caller: Caller, wallet_id: str) -> WalletView:
    """The wallet, or 404; 403 for a user token of another owner (or for a treasury)."""
    view = await wallet_view(deps, wallet_id)
    if caller.owner_id is not None and (view.owner_id != caller.owner_id or is_treasury(view.id)):
        raise forbidden(f"wallet {wallet_id} belongs to another owner")
    return view


class Wallets:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def wallet_view(self, wallet_id: str) -> WalletView:
        return await wallet_view(self._deps, wallet_id)

    async def owned_wallet(self, caller: Caller, wallet_id: str) -> WalletView:
        return await owned_wallet(self._deps, caller, wallet_id)

    async def create_wallet(self, request: Request) -> Response:
        caller = await authenticate(self._deps, request)
        key = v.idempotency_key(request, required=False)
        raw = await v.json_object(request)
        body = v.fields(
            raw,
            {
                "id": (False, v.user_identifier),
                "owner_id": (True, v.owner_identifier),
                "asset": (True, v.asset_code),
                "metadata": (False, v.metadata),
                "overdraft_limit": (False, v.overdraft_limit),
                "spend_limits": (False, v.spend_limits),
            },
        )
        if caller.owner_id is not None and body["owner_id"] != caller.owner_id:
            raise forbidden(f"this token acts for owner {caller.owner_id} only")
        if caller.owner_id is not None and ("overdraft_limit" in body or "spend_limits" in body):
            # An overdraft is credit: only an admin grants it (and sets limits, as PATCH).
            raise forbidden("only an admin sets a wallet's limits")
        idempotency = None
        if key is not None:
            idempotency = Idempotency(scope=caller.scope, key=key, fingerprint=fingerprint(request, raw))
        wallet_id = body.get("id") or "w_" + secrets.token_hex(10)
        spend = body.get("spend_limits", {})
        limits = (body.get("overdraft_limit", 0), spend.get("daily") or None, spend.get("monthly") or None)
        command = CreateWallet(
            wallet_id=wallet_id, owner_id=body["owner_id"], asset=body["asset"],
            metadata=body.get("metadata"), idempotency=idempotency,
            overdraft_limit=limits[0], daily_limit=limits[1], monthly_limit=limits[2],
        )
        decision = await call(self._deps.port().create_wallet(command))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        if isinstance(decision, Duplicate):
            replayed = decision.record.event
            assert isinstance(replayed, WalletCreated)
            return json_response(created_wallet_body(replayed, *limits), 201)
        if decision:
            event = decision[0]
            assert isinstance(event, WalletCreated)
            return json_response(created_wallet_body(event, *limits), 201)
        return json_response(wallet_body(await self.wallet_view(wallet_id)), 200)

    async def update_wallet(self, request: Request) -> Response:
        """``PATCH /v1/wallets/{id}`` (admin): limits and metadata. Absent fields stay as they
        are; a spend limit of null removes it; metadata null clears it."""
        await admin(self._deps, request)
        raw = await v.json_object(request)
        body = v.fields(
            raw,
            {
                "overdraft_limit": (False, v.overdraft_limit),
                "spend_limits": (False, v.spend_limits),
                "metadata": (False, v.metadata),
            },
        )
        wallet_id = path_wallet_id(request)
        if is_treasury(wallet_id):
            raise forbidden("treasury wallets are managed by the system")
        spend = body.get("spend_limits", {})
        metadata = body.get("metadata", ...)
        command = UpdateWallet(
            wallet_id=wallet_id, overdraft_limit=body.get("overdraft_limit"),
            daily_limit=spend.get("daily"), monthly_limit=spend.get("monthly"),
            metadata=None if metadata is ... else (metadata or {}),
        )
        decision = await call(self._deps.port().update_wallet(command))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        return json_response(wallet_body(await self.wallet_view(wallet_id)))

    async def get_wallet(self, request: Request) -> Response:
        caller = await authenticate(self._deps, request)
        v.query(request, set())
        view = await self.owned_wallet(caller, path_wallet_id(request))
        return json_response(wallet_body(view))

    async def list_wallets(self, request: Request) -> Response:
        caller = await authenticate(self._deps, request)
        v.query(request, {"owner_id", "asset", "limit", "cursor"})
        params = request.query_params
        owner_id = params.get("owner_id")
        if owner_id is not None:
            owner_id = v.identifier("owner_id", owner_id)
        asset = params.get("asset")
        if asset is not None:
            asset = v.identifier("asset", asset)
        if caller.owner_id is not None:
            if owner_id is not None and owner_id != caller.owner_id:
                raise forbidden(f"this token acts for owner {caller.owner_id} only")
            owner_id = caller.owner_id
        limit = v.limit(request)
        # Wallets seeded from a snapshot (history rebuilt without its log) have negative keys.
        after = decode_cursor("w", params.get("cursor"))
        after = -(2**62) if after is None else after
        port = self._deps.port()
        found = await call(port.wallet_ids(owner_id, asset, after, limit + 1))
        page = found[:limit]
        views = await call(port.wallets([wallet_id for _, wallet_id in page]))
        next_cursor = encode_cursor("w", page[-1][0]) if len(found) > limit else None
        return json_response({"items": [wallet_body(view) for view in views], "next_cursor": next_cursor})

    async def _change_status(self, request: Request, status: WalletStatus) -> Response:
        await admin(self._deps, request)
        v.fields(await v.json_object(request, optional=True), {})
        wallet_id = path_wallet_id(request)
        if wallet_id.startswith("treasury:"):
            raise forbidden("treasury wallets are managed by the system")
        decision = await call(
            self._deps.port().change_status(ChangeWalletStatus(wallet_id=wallet_id, status=status))
        )
        if isinstance(decision, Rejection):
            raise rejected(decision)
        return json_response(wallet_body(await self.wallet_view(wallet_id)))

    async def freeze(self, request: Request) -> Response:
        return await self._change_status(request, WalletStatus.FROZEN)

    async def unfreeze(self, request: Request) -> Response:
        return await self._change_status(request, WalletStatus.ACTIVE)

    async def close(self, request: Request) -> Response:
        return await self._change_status(request, WalletStatus.CLOSED)

    async def balance(self, request: Request) -> Response:
        caller = await authenticate(self._deps, request)
        v.query(request, {"as_of"})
        wallet_id = path_wallet_id(request)
        view = await self.owned_wallet(caller, wallet_id)
        raw = request.query_params.get("as_of")
        if raw is None:
            return json_response({"wallet_id": wallet_id, "balance": view.balance, "as_of": None})
        at_us = parse_timestamp("as_of", raw)
        balance = await call(self._deps.port().balance_at(wallet_id, at_us))
        return json_response({"wallet_id": wallet_id, "balance": balance, "as_of": timestamp(at_us)})

    async def wallet_transactions(self, request: Request) -> Response:
        caller = await authenticate(self._deps, request)
        v.query(request, {"limit", "cursor", "type", "status", "since", "until"})
        params = request.query_params
        wallet_id = path_wallet_id(request)
        limit = v.limit(request)
        before = statement_cursor(params.get("cursor"))
        type_ = None
        if (raw_type := params.get("type")) is not None:
            if raw_type not in TRANSACTION_TYPES:
                raise v.invalid_field("type", f"must be one of {', '.join(sorted(TRANSACTION_TYPES))}")
            type_ = TRANSACTION_TYPES[raw_type]
        status = params.get("status")
        if status is not None and status not in TRANSACTION_STATUSES:
            raise v.invalid_field("status", f"must be one of {', '.join(TRANSACTION_STATUSES)}")
        since = None if (raw := params.get("since")) is None else parse_timestamp("since", raw)
        until = None if (raw := params.get("until")) is None else parse_timestamp("until", raw)
        await self.owned_wallet(caller, wallet_id)
        entries = await call(self._deps.port().entries(
            wallet_id, before, limit + 1, type_,
            None if status is None else TransactionStatus[status.upper()], since, until,
        ))
        page = entries[:limit]
        items = [entry_body(entry) for entry in page]
        next_cursor = encode_cursor("e", page[-1].position) if len(entries) > limit else None
        return json_response({"items": items, "next_cursor": next_cursor})
