"""Routes of API tokens (``/v1/tokens``: the admin creates and revokes). A token is shown once,
when created; afterwards only its prefix. Runs in every HTTP worker, and in the one process of
``--workers 0``.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import Response

from ledger import CreateToken, Rejection, RevokeToken
from server import _validate as v
from server._errors import ApiError, rejected
from server._observe import TOKEN_CHARS_SHOWN
from server.api._auth import admin, hash_token
from server.api._deps import Deps, call
from server.api._render import json_response

TOKEN_PREFIX_CHARS = 12
assert TOKEN_CHARS_SHOWN == TOKEN_PREFIX_CHARS  # logs and answers show a token's prefix at most


class Tokens:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def create_token(self, request: Request) -> Response:
        await admin(self._deps, request)
        body = v.fields(await v.json_object(request), {"owner_id": (True, v.owner_identifier)})
        for _ in range(3):
            token = "wt_" + secrets.token_urlsafe(32)
            prefix = token[:TOKEN_PREFIX_CHARS]
            command = CreateToken(token_hash=hash_token(token), prefix=prefix, owner_id=body["owner_id"])
            decision = await call(self._deps.port().create_token(command))
            if not isinstance(decision, Rejection):
                return json_response({"token": token, "prefix": prefix, "owner_id": body["owner_id"]}, 201)
        assert isinstance(decision, Rejection)  # three prefixes in a row were taken
        raise rejected(decision)

    async def revoke_token(self, request: Request) -> Response:
        """``DELETE /v1/tokens/{prefix}``. Something longer than a prefix is taken for a whole
        token (sent by mistake, or all the caller has of a leaked one): revoked when it is one
        (looked up by its hash), else 404. The answer and the log never repeat more than a
        prefix of what was sent (the ledger's rejection names the prefix it was given)."""
        await admin(self._deps, request)
        prefix = request.path_params["prefix"]
        if len(prefix) > TOKEN_PREFIX_CHARS:
            found = await call(self._deps.port().token(hash_token(prefix)))
            if found is None:
                raise ApiError(404, "token_not_found", "Token not found",
                               f"no token has that prefix (a prefix is a token's first {TOKEN_PREFIX_CHARS} characters)")
            prefix = found.prefix
        decision = await call(self._deps.port().revoke_token(RevokeToken(prefix=prefix)))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        return json_response({"prefix": prefix, "revoked": True})
