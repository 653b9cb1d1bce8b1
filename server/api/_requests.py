"""Reading what a request names besides its body: ids in its path (a malformed one is the
resource's 404, not a 400), timestamps in its query, and its fingerprint for an idempotency
key. Runs in every HTTP worker, and in the one process of ``--workers 0``; the command line
parses timestamps with it too.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from server import _validate as v
from server._errors import ApiError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_timestamp(name: str, raw: str) -> int:
    """Microseconds since the epoch (negative before 1970) of an RFC 3339 time whose UTC
    value lies in years 1-9999."""
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise v.invalid_field(name, "must be an RFC 3339 timestamp, e.g. 2026-11-22T10:00:00Z") from None
    if moment.tzinfo is None:
        raise v.invalid_field(name, "must carry a time zone (Z or an offset)")
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise v.invalid_field(name, "must fall within years 1-9999 in UTC") from None
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def fingerprint(request: Request, body: dict[str, Any]) -> bytes:
    """What a keyed request asked for: its method, path and canonical body."""
    canonical = json.dumps(v.canonical(body), sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(
        f"{request.method} {request.url.path} {canonical}".encode(), digest_size=16
    ).digest()


def path_wallet_id(request: Request) -> str:
    try:
        return v.identifier("wallet_id", request.path_params["wallet_id"])
    except ApiError:
        raise ApiError(404, "wallet_not_found", "Wallet not found", "no wallet has that id") from None


def path_id(request: Request, name: str, code: str, what: str) -> str:
    try:
        return v.identifier(name, request.path_params[name])
    except ApiError:
        raise ApiError(404, code, f"{what} not found", f"no {what.lower()} has that id") from None
