"""Routes of balance alerts: ``POST`` and ``GET /v1/wallets/{id}/alerts``, ``DELETE
/v1/alerts/{id}``. Admin, or the owner of the wallet (a user token is refused on a wallet of
another owner, a treasury included, as the wallet routes refuse it). Alerts are created and
deleted through the log on the wallet's shard (``ledger._decide``), which also evaluates them
on every change of the wallet; their firings reach ``/v1/events`` as ``alert.triggered``.
Runs in every HTTP worker, and in the one process of ``--workers 0``.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import Response

from ledger import (
    AlertCreated,
    AlertDeleted,
    AlertDirection,
    AlertField,
    CreateAlert,
    DeleteAlert,
    Rejection,
)
from server import _validate as v
from server._errors import rejected
from server.api._auth import authenticate
from server.api._deps import Deps, call
from server.api._render import alert_body, created_alert_body, json_response
from server.api._requests import path_id, path_wallet_id
from server.api._wallets import Wallets

_FIELDS = {field.label: field for field in AlertField}


class Alerts:
    def __init__(self, deps: Deps, wallets: Wallets) -> None:
        self._deps = deps
        self._wallets = wallets

    async def create_alert(self, request: Request) -> Response:
        caller = await authenticate(self._deps, request)
        v.query(request, set())
        wallet_id = path_wallet_id(request)
        body = v.fields(
            await v.json_object(request),
            {
                "field": (True, v.alert_field),
                "below": (False, v.threshold),
                "above": (False, v.threshold),
            },
        )
        given = [name for name in ("below", "above") if name in body]
        if len(given) != 1:
            message = "give exactly one of below and above" + (", not both" if given else "")
            raise v.invalid([{"field": name, "message": message} for name in (given or ["below", "above"])])
        (direction,) = given
        command = CreateAlert(
            alert_id="al_" + secrets.token_hex(12),
            wallet_id=wallet_id,
            field=_FIELDS[body["field"]],
            direction=AlertDirection.BELOW if direction == "below" else AlertDirection.ABOVE,
            threshold=body[direction],
            owner_id=caller.owner_id,
        )
        decision = await call(self._deps.port().create_alert(command))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        assert isinstance(decision, list)
        (event,) = decision
        assert isinstance(event, AlertCreated)
        return json_response(created_alert_body(event), 201)

    async def list_alerts(self, request: Request) -> Response:
        caller = await authenticate(self._deps, request)
        v.query(request, set())
        wallet_id = path_wallet_id(request)
        await self._wallets.owned_wallet(caller, wallet_id)
        views = await call(self._deps.port().alerts(wallet_id))
        return json_response({"items": [alert_body(view) for view in views or ()]})

    async def delete_alert(self, request: Request) -> Response:
        caller = await authenticate(self._deps, request)
        v.query(request, set())
        v.fields(await v.json_object(request, optional=True), {})
        alert_id = path_id(request, "alert_id", "alert_not_found", "Alert")
        decision = await call(self._deps.port().delete_alert(DeleteAlert(alert_id=alert_id, owner_id=caller.owner_id)))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        assert isinstance(decision, list)
        (event,) = decision
        assert isinstance(event, AlertDeleted)
        return json_response({"id": event.alert_id, "wallet_id": event.wallet_id, "deleted": True})
