"""Who sends a request: the admin token (compared in constant time) or a user token, looked up
by its SHA-256 through the port, then throttled by the rate limiter. A user token's hash rides
along every ledger call the request makes (``server._port.current_auth``), so a token revoked
through any worker fails at once. Runs in every HTTP worker, and in the one process of
``--workers 0``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass

from starlette.requests import Request

from server._errors import ApiError
from server._port import current_auth
from server.api._deps import Deps, call

ADMIN_SCOPE = "admin"


@dataclass(frozen=True, slots=True)
class Caller:
    owner_id: str | None  # None: the admin

    @property
    def is_admin(self) -> bool:
        return self.owner_id is None

    @property
    def scope(self) -> str:
        return ADMIN_SCOPE if self.owner_id is None else f"owner:{self.owner_id}"


ADMIN = Caller(None)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def forbidden(detail: str) -> ApiError:
    return ApiError(403, "forbidden", "Forbidden", detail)


async def authenticate(deps: Deps, request: Request) -> Caller:
    header = request.headers.get("authorization")
    if header is None:
        raise ApiError(401, "unauthorized", "Unauthorized", "send Authorization: Bearer <token>")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "Unauthorized", "send Authorization: Bearer <token>")
    if hmac.compare_digest(token.encode(), deps.admin_token):
        if deps.limit_admin:
            _throttle(deps, b"admin")
        return ADMIN
    token_hash = hash_token(token)
    found = await call(deps.port().token(token_hash))
    if found is None:
        raise ApiError(401, "unauthorized", "Unauthorized", "unknown or revoked token")
    _throttle(deps, token_hash)
    # Every call this request makes to the ledger carries the token's hash: a token revoked
    # meanwhile (through any worker) fails that call (server._port).
    current_auth.set(token_hash)
    return Caller(found.owner_id)


async def admin(deps: Deps, request: Request) -> Caller:
    caller = await authenticate(deps, request)
    if not caller.is_admin:
        raise forbidden("this operation needs the admin token")
    return caller


def _throttle(deps: Deps, key: bytes) -> None:
    if deps.limiter is None:
        return
    wait_s = deps.limiter.check(key)
    if wait_s:
        raise ApiError(
            429, "rate_limited", "Too many requests", "this token sent more requests than its rate allows",
            headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
        )
