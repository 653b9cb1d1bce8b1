"""Routes of assets (``/v1/assets``: the admin creates, any token lists). Runs in every HTTP
worker, and in the one process of ``--workers 0``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ledger import CreateAsset, Rejection
from server import _validate as v
from server._errors import rejected
from server.api._auth import admin, authenticate
from server.api._deps import Deps, call
from server.api._render import asset_body, json_response


class Assets:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def create_asset(self, request: Request) -> Response:
        await admin(self._deps, request)
        body = v.fields(
            await v.json_object(request),
            {"code": (True, v.asset_code), "scale": (True, v.scale)},
        )
        decision = await call(self._deps.port().create_asset(CreateAsset(code=body["code"], scale=body["scale"])))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        asset = await call(self._deps.port().asset(body["code"]))
        assert asset is not None  # created now, or before
        return json_response(asset_body(asset), 201 if decision else 200)

    async def list_assets(self, request: Request) -> Response:
        await authenticate(self._deps, request)
        v.query(request, set())
        return json_response({"items": [asset_body(asset) for asset in await call(self._deps.port().assets())]})
