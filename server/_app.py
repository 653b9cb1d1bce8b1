"""The HTTP front end: Starlette routes that authenticate, validate, turn requests into commands,
hand them to the ledger and render what it decided. Rendering of errors lives in ``_errors``.

Nothing here touches a balance: every change goes through the ledger's actors and every 2xx is
sent only after the record is durable (the ledger's replies wait for the fsync). Reads wait
until the state they show is durable too.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import swagger_ui
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ledger import (
    ENTRY_POSITION_BITS,
    EVENTS_PAGE_MAX,
    ID_PATTERN,
    INT64_MAX,
    INT64_MIN,
    AdvanceWithdrawal,
    AssetCreated,
    BatchFailed,
    ChangeWalletStatus,
    Committed,
    CreateAsset,
    CreateToken,
    CreateWallet,
    Duplicate,
    Entry,
    Gone,
    HistoryLagging,
    HoldCaptured,
    HoldCreated,
    HoldVoided,
    Idempotency,
    Ledger,
    Overloaded,
    PayoutStep,
    Reason,
    Rejection,
    RequestWithdrawal,
    RevokeToken,
    TokenCreated,
    TokenRevoked,
    TransactionRow,
    TransactionStatus,
    TransactionType,
    Transfer,
    Transferred,
    TransfersPosted,
    VoidReason,
    WalletCreated,
    WalletStatus,
    WalletStatusChanged,
    WalletView,
    WithdrawalStatus,
    WithdrawalUpdated,
    WithdrawalView,
    is_treasury,
    new_idempotency,
    new_transfer,
    treasury_id,
)
from server import _openapi
from server import _validate as v
from server._edge import BodyTimeout
from server._errors import (
    ApiError,
    batch_failed,
    code_label,
    invalid,
    overloaded,
    problem,
    problem_body,
    rejected,
)
from server._observe import TOKEN_CHARS_SHOWN, Metrics, Observe, shown_path
from server._port import LocalPort, RemotePort, Unauthorized, Unavailable, current_auth
from server._supervisor import processes as supervised_processes
from wal import StorageFailed

log = logging.getLogger("server")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PROCESS_STARTED_US = time.time_ns() // 1000
ADMIN_SCOPE = "admin"
GZIP_MIN_BYTES = 1024
# Swagger UI 5 (it reads OpenAPI 3.1) from the swagger-ui-py package's static files: no CDN.
SWAGGER_UI_STATIC = Path(swagger_ui.__file__).parent / "static"
DOCS_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Wallet ledger API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>"""
TRANSACTION_TYPES = {member.label: member for member in TransactionType}
TRANSACTION_STATUSES = ("posted", "pending", "voided", "failed")
TOKEN_PREFIX_CHARS = 12
assert TOKEN_CHARS_SHOWN == TOKEN_PREFIX_CHARS  # logs and answers show a token's prefix at most
# Batch requests handled at once: each may hold a 16 MiB body and what it decodes to (several
# times that for bodies of many small values), so they get their own bound below --max-in-flight.
BATCHES_IN_FLIGHT_MAX = 16
CLIENT_CLOSED_REQUEST = 499  # the status logged and counted for a client that left (nginx's)


def timestamp(at_us: int) -> str:
    moment = EPOCH + timedelta(microseconds=at_us)
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S.%f}Z"


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


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body).encode(), status_code=status, media_type="application/json")


# -- representations ---------------------------------------------------------------------


def wallet_body(view: WalletView) -> dict[str, Any]:
    return {
        "id": view.id,
        "owner_id": view.owner_id,
        "asset": view.asset,
        "balance": view.balance,
        "held": view.held,
        "available": view.available,
        "status": view.status.label,
        "metadata": view.metadata or {},
        "created_at": timestamp(view.created_at_us),
        "updated_at": timestamp(view.updated_at_us),
    }


def created_wallet_body(event: WalletCreated) -> dict[str, Any]:
    """The wallet as it was when created: what an idempotent replay answers."""
    return {
        "id": event.wallet_id,
        "owner_id": event.owner_id,
        "asset": event.asset,
        "balance": 0,
        "held": 0,
        "available": 0,
        "status": WalletStatus.ACTIVE.label,
        "metadata": event.metadata or {},
        "created_at": timestamp(event.at_us),
        "updated_at": timestamp(event.at_us),
    }


MoneyEvent = Transferred | HoldCreated | HoldCaptured | HoldVoided


def event_status(event: MoneyEvent) -> TransactionStatus:
    if isinstance(event, HoldCreated):
        return TransactionStatus.PENDING
    if isinstance(event, HoldVoided):
        return TransactionStatus.FAILED if event.reason == VoidReason.REFUSED else TransactionStatus.VOIDED
    return TransactionStatus.POSTED


def transaction_body(event: MoneyEvent, lsn: int) -> dict[str, Any]:
    """The transaction as of ``event`` (a capture shows the amount posted, and the time the
    transfer was created, like ``GET /v1/transactions/{id}``)."""
    created_us = event.at_us if isinstance(event, Transferred | HoldCreated) else event.created_at_us
    return {
        "id": event.transaction_id,
        "type": event.type.label,
        "status": event_status(event).label,
        "from_wallet_id": event.from_wallet_id,
        "to_wallet_id": event.to_wallet_id,
        "asset": event.asset,
        "amount": event.amount,
        "description": event.description,
        "metadata": event.metadata or {},
        "created_at": timestamp(created_us),
        "lsn": lsn,
    }


def withdrawal_body(view: WithdrawalView) -> dict[str, Any]:
    return {
        "id": view.id,
        "wallet_id": view.wallet_id,
        "amount": view.amount,
        "asset": view.asset,
        "status": view.status.label,
        "attempts": view.attempts,
        "destination": view.destination,
        "last_error": view.last_error,
        "bank_reference": view.reference,
        "next_attempt_at": timestamp(view.next_attempt_at_us) if view.next_attempt_at_us else None,
        "created_at": timestamp(view.created_at_us),
        "updated_at": timestamp(view.updated_at_us),
    }


def requested_withdrawal_body(event: HoldCreated) -> dict[str, Any]:
    """The withdrawal as its request left it (also what a retried request replays)."""
    assert event.destination is not None
    return {
        "id": event.transaction_id,
        "wallet_id": event.from_wallet_id,
        "amount": event.amount,
        "asset": event.asset,
        "status": WithdrawalStatus.PENDING.label,
        "attempts": 0,
        "destination": event.destination,
        "last_error": None,
        "bank_reference": None,
        "next_attempt_at": None,
        "created_at": timestamp(event.at_us),
        "updated_at": timestamp(event.at_us),
    }


def row_body(row: TransactionRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "type": row.type.label,
        "status": row.status.label,
        "from_wallet_id": row.from_wallet_id,
        "to_wallet_id": row.to_wallet_id,
        "asset": row.asset,
        "amount": row.amount,
        "description": row.description,
        "metadata": row.metadata or {},
        "created_at": timestamp(row.at_us),
        "lsn": row.lsn,
    }


def entry_body(entry: Entry) -> dict[str, Any]:
    return {
        "transaction_id": entry.transaction_id,
        "type": entry.type.label,
        "status": entry.status.label,
        "direction": entry.direction,
        "amount": entry.amount,
        "balance_after": entry.balance_after,
        "counterparty_wallet_id": entry.counterparty_wallet_id,
        "description": entry.description,
        "created_at": timestamp(entry.at_us),
        "lsn": entry.lsn,
    }


STATUS_EVENT = {WalletStatus.FROZEN: "wallet.frozen", WalletStatus.ACTIVE: "wallet.unfrozen",
                WalletStatus.CLOSED: "wallet.closed"}


def event_body(lsn: int, event: Any) -> dict[str, Any]:
    """The stable JSON shape of one committed event in the feed (documented in the README)."""
    data: dict[str, Any]
    if isinstance(event, Transferred):
        kind = f"{event.type.label}.posted"
        data = transaction_body(event, lsn)
    elif isinstance(event, HoldCreated | HoldCaptured | HoldVoided):
        if isinstance(event, HoldCaptured):
            verb = "completed" if event.type == TransactionType.WITHDRAWAL else "posted"
        elif isinstance(event, HoldVoided):
            verb = event.reason.label if event.type == TransactionType.TRANSFER else "failed"
        else:
            verb = "pending"
        kind = f"{event.type.label}.{verb}"
        data = transaction_body(event, lsn)
        if isinstance(event, HoldCreated) and event.deadline_us:
            data["expires_at"] = timestamp(event.deadline_us)
        if isinstance(event, HoldVoided) and event.detail is not None:
            data["reason"] = event.detail
    elif isinstance(event, WithdrawalUpdated):
        kind = f"withdrawal.{event.status.label}"
        data = {"id": event.withdrawal_id, "wallet_id": event.wallet_id, "status": event.status.label,
                "attempts": event.attempts, "last_error": event.last_error}
    elif isinstance(event, WalletCreated):
        kind = "wallet.created"
        data = {"wallet_id": event.wallet_id, "owner_id": event.owner_id, "asset": event.asset,
                "metadata": event.metadata or {}}
    elif isinstance(event, WalletStatusChanged):
        kind = STATUS_EVENT[event.status]
        data = {"wallet_id": event.wallet_id, "status": event.status.label}
    elif isinstance(event, AssetCreated):
        kind = "asset.created"
        data = {"code": event.code, "scale": event.scale}
    elif isinstance(event, TokenCreated):
        kind = "token.created"  # never the token or its hash
        data = {"prefix": event.prefix, "owner_id": event.owner_id}
    else:
        assert isinstance(event, TokenRevoked)
        kind = "token.revoked"
        data = {"prefix": event.prefix}
    return {"lsn": lsn, "type": kind, "created_at": timestamp(event.at_us), "data": data}


def event_items(lsn: int, event: Any) -> list[dict[str, Any]]:
    """A record's items in the feed: one per transfer of a batch record (sharing its LSN), one
    for any other record."""
    if isinstance(event, TransfersPosted):
        return [event_body(lsn, transfer) for transfer in event.transfers]
    return [event_body(lsn, event)]


def encode_cursor(kind: str, lsn: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{lsn}".encode()).decode().rstrip("=")


def _cursor_text(raw: str) -> str:
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad_cursor() from None


def _bad_cursor() -> ApiError:
    return v.invalid_field("cursor", "is not a cursor this endpoint gave out")


def decode_cursor(kind: str, raw: str | None, *, low: int = INT64_MIN, high: int = INT64_MAX) -> int | None:
    """The number in a ``<kind>:<number>`` cursor, from ``low`` to ``high`` (the range of the
    keys it was made from, within int64 for SQLite); anything else is ``400`` (field cursor)."""
    if raw is None:
        return None
    prefix, _, number = _cursor_text(raw).partition(":")
    found = v.integer_in(number, low, high) if prefix == kind else None
    if found is None:
        raise _bad_cursor()
    return found


# A statement cursor's ``t:<lsn>`` (schema 1) becomes the position ``lsn << ENTRY_POSITION_BITS``,
# which must stay within int64 too.
STATEMENT_LSN_MAX = INT64_MAX >> ENTRY_POSITION_BITS


def statement_cursor(raw: str | None) -> int | None:
    """The entry position a statement page continues below. Cursors are ``e:<position>``; the
    ``t:<lsn>`` ones given out before entries had positions (schema 1) still work. Positions
    and LSNs are never negative."""
    if raw is None:
        return None
    try:
        return decode_cursor("e", raw, low=0)
    except ApiError:
        lsn = decode_cursor("t", raw, low=0, high=STATEMENT_LSN_MAX)
        assert lsn is not None
        return lsn << ENTRY_POSITION_BITS


def withdrawal_cursor(raw: str | None) -> tuple[int, str] | None:
    """``<created_at_us>:<withdrawal id>`` of the last withdrawal of the previous page."""
    if raw is None:
        return None
    created, _, after_id = _cursor_text(raw).partition(":")
    at_us = v.integer_in(created, 0, INT64_MAX)
    if at_us is None or not ID_PATTERN.fullmatch(after_id):
        raise _bad_cursor()
    return at_us, after_id


def item_fingerprint(item: v.BatchItem) -> bytes:
    """What a batch item asked for, for its idempotency record: sender, receiver, amount,
    description and metadata as validated (a missing optional field and null are the same;
    metadata key order does not matter). Its own domain: a key used for a single transfer and
    then for a batch item is two different requests."""
    _, source, target, amount, description, metadata = item
    canonical = None if metadata is None else json.dumps(metadata, sort_keys=True, separators=(",", ":"))
    packed = msgpack.packb(["batch-item", source, target, amount, description, canonical])
    return hashlib.blake2b(packed, digest_size=16).digest()


def recorded(decision: Committed | Duplicate) -> tuple[Any, int]:
    """The event and LSN behind an answer: what was just committed, or what a replayed key
    committed the first time (the same answer again)."""
    if isinstance(decision, Duplicate):
        return decision.record.event, decision.record.lsn
    assert isinstance(decision, Committed)
    return decision.event, decision.lsn


def item_result(result: Any) -> dict[str, Any]:
    """One item's answer in a batch: its status and its transaction or problem."""
    if isinstance(result, Rejection):
        error = rejected(result)
        return {"status": error.status, "error": problem_body(error)}
    event, lsn = recorded(result)
    assert isinstance(event, Transferred)
    return {"status": 201, "transaction": transaction_body(event, lsn)}


def accepts_msgpack(request: Request) -> bool:
    """Whether the client asked for MessagePack (``Accept: application/msgpack``, q > 0)."""
    for part in request.headers.get("accept", "").split(","):
        media, *parameters = (piece.strip() for piece in part.split(";"))
        if media.lower() == v.MSGPACK_MEDIA_TYPE:
            return not any(parameter.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000")
                           for parameter in parameters)
    return False


# -- authentication ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    owner_id: str | None  # None: the admin

    @property
    def is_admin(self) -> bool:
        return self.owner_id is None

    @property
    def scope(self) -> str:
        return ADMIN_SCOPE if self.owner_id is None else f"owner:{self.owner_id}"


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def forbidden(detail: str) -> ApiError:
    return ApiError(403, "forbidden", "Forbidden", detail)


class RateLimiter:
    """A token bucket per API token: ``rate`` requests/s refill, ``burst`` at most. Buckets are
    keyed by the token's hash, so memory is bounded by the number of tokens that exist."""

    def __init__(self, *, rate: float, burst: int, clock: Any = time.monotonic) -> None:
        assert rate > 0 and burst >= 1
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._buckets: dict[bytes, tuple[float, float]] = {}

    def check(self, key: bytes) -> float:
        """0 when the request may go; else the seconds until it could."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - last) * self._rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self._rate
        self._buckets[key] = (tokens - 1, now)
        return 0.0


class Api:
    """The routes, bound to one ledger (set once recovery finished) and the admin token."""

    def __init__(self, *, admin_token: str, limiter: RateLimiter | None = None, limit_admin: bool = False,
                 batches_in_flight_max: int = BATCHES_IN_FLIGHT_MAX) -> None:
        assert batches_in_flight_max >= 1
        self._admin_token = admin_token.encode()
        self._batches_in_flight = 0
        self._batches_in_flight_max = batches_in_flight_max
        # Batch bodies still arriving, per caller scope: each caller has its own share, so one
        # caller's slow uploads cannot take the slots (``_batches_in_flight``) of everyone else.
        self._batches_receiving: dict[str, int] = {}
        self._batches_receiving_max = max(1, batches_in_flight_max // 2)
        self._limiter = limiter
        self._limit_admin = limit_admin
        # The ledger, once it can serve: a LocalPort in its own process, a RemotePort in an HTTP
        # worker (server._port). None while recovering.
        self.port: LocalPort | RemotePort | None = None
        self.data_dir: Path | None = None  # where the supervisor's table of processes lives
        self.metrics: Metrics | None = None  # set by build_app
        self._openapi: bytes | None = None
        self.not_ready_reason = "recovering the ledger from its write-ahead log"

    # -- plumbing ------------------------------------------------------------------------

    def _port(self) -> LocalPort | RemotePort:
        if self.port is None:
            raise ApiError(503, "not_ready", "Not ready", self.not_ready_reason, headers={"Retry-After": "1"})
        return self.port

    @property
    def ledger(self) -> Ledger | None:
        """The live ledger when it runs in this process (for metrics), else None."""
        return self.port.ledger if isinstance(self.port, LocalPort) else None

    async def authenticate(self, request: Request) -> Caller:
        header = request.headers.get("authorization")
        if header is None:
            raise ApiError(401, "unauthorized", "Unauthorized", "send Authorization: Bearer <token>")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthorized", "Unauthorized", "send Authorization: Bearer <token>")
        if hmac.compare_digest(token.encode(), self._admin_token):
            if self._limit_admin:
                self._throttle(b"admin")
            return Caller(None)
        token_hash = hash_token(token)
        found = await self.run(self._port().token(token_hash))
        if found is None:
            raise ApiError(401, "unauthorized", "Unauthorized", "unknown or revoked token")
        self._throttle(token_hash)
        # Every call this request makes to the ledger carries the token's hash: a token revoked
        # meanwhile (through any worker) fails that call (server._port).
        current_auth.set(token_hash)
        return Caller(found.owner_id)

    def _throttle(self, key: bytes) -> None:
        if self._limiter is None:
            return
        wait_s = self._limiter.check(key)
        if wait_s:
            raise ApiError(
                429, "rate_limited", "Too many requests", "this token sent more requests than its rate allows",
                headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
            )

    async def admin(self, request: Request) -> Caller:
        caller = await self.authenticate(request)
        if not caller.is_admin:
            raise forbidden("this operation needs the admin token")
        return caller

    def fingerprint(self, request: Request, body: dict[str, Any]) -> bytes:
        canonical = json.dumps(v.canonical(body), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(
            f"{request.method} {request.url.path} {canonical}".encode(), digest_size=16
        ).digest()

    async def run(self, coroutine: Any) -> Any:
        try:
            return await coroutine
        except Overloaded as error:
            raise overloaded(str(error)) from None
        except StorageFailed as error:
            raise ApiError(
                503, "storage_unavailable", "Storage unavailable",
                f"the server cannot make changes durable and refuses writes: {error}",
            ) from None
        except Unavailable as error:
            raise ApiError(
                503, "ledger_unavailable", "Ledger unavailable",
                f"{error}; a change sent just now may or may not have been made: retry with the same "
                "Idempotency-Key", headers={"Retry-After": "1"},
            ) from None
        except Unauthorized:
            raise ApiError(401, "unauthorized", "Unauthorized", "unknown or revoked token") from None
        except HistoryLagging as error:
            raise ApiError(503, "history_lagging", "History lagging", str(error), headers={"Retry-After": "1"}) from None

    async def wallet_view(self, wallet_id: str) -> WalletView:
        view = await self.run(self._port().wallet(wallet_id))
        if view is None:
            raise ApiError(404, "wallet_not_found", "Wallet not found", f"wallet {wallet_id} does not exist")
        return view

    async def owned_wallet(self, caller: Caller, wallet_id: str) -> WalletView:
        view = await self.wallet_view(wallet_id)
        if caller.owner_id is not None and (view.owner_id != caller.owner_id or is_treasury(view.id)):
            raise forbidden(f"wallet {wallet_id} belongs to another owner")
        return view

    def path_wallet_id(self, request: Request) -> str:
        try:
            return v.identifier("wallet_id", request.path_params["wallet_id"])
        except ApiError:
            raise ApiError(404, "wallet_not_found", "Wallet not found", "no wallet has that id") from None

    def path_id(self, request: Request, name: str, code: str, what: str) -> str:
        try:
            return v.identifier(name, request.path_params[name])
        except ApiError:
            raise ApiError(404, code, f"{what} not found", f"no {what.lower()} has that id") from None

    # -- operations ----------------------------------------------------------------------

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = json.dumps(_openapi.build()).encode()
        return Response(self._openapi, media_type="application/json")

    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        if self.port is None:
            return json_response({"status": "recovering", "reason": self.not_ready_reason}, 503)
        try:
            status = await self.port.status()
        except (Unavailable, Unauthorized) as error:
            return json_response({"status": "unavailable", "reason": str(error)}, 503)
        if status.reason is not None:
            state = "unavailable" if isinstance(self.port, RemotePort) else "failed"
            return json_response({"status": state, "reason": status.reason}, 503)
        return json_response({"status": "ready", "durable_lsn": status.durable_lsn})

    async def processes(self, request: Request) -> Response:
        """Admin: the supervisor's table of processes (``--workers N``), or this one process."""
        await self.admin(request)
        v.query(request, set())
        items = [] if self.data_dir is None else supervised_processes(self.data_dir)
        if not items:
            items = [{"role": "ledger", "pid": os.getpid(), "started_at": timestamp(PROCESS_STARTED_US),
                      "restarts": 0}]
        return json_response({"items": [
            {"role": item["role"], "pid": item["pid"], "started_at": item["started_at"],
             "restarts": item["restarts"]} for item in items
        ]})

    async def take_snapshot(self, request: Request) -> Response:
        """Admin: snapshot the durable ledger now (in a child process) and compact the log."""
        await self.admin(request)
        v.fields(await v.json_object(request, optional=True), {})
        lsn, last_lsn = await self.run(self._port().take_snapshot())
        if lsn is None:
            return json_response({"lsn": last_lsn, "taken": False})
        return json_response({"lsn": lsn, "taken": True}, 201)

    # -- assets --------------------------------------------------------------------------

    async def create_asset(self, request: Request) -> Response:
        await self.admin(request)
        body = v.fields(
            await v.json_object(request),
            {"code": (True, v.asset_code), "scale": (True, v.scale)},
        )
        decision = await self.run(self._port().create_asset(CreateAsset(code=body["code"], scale=body["scale"])))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        asset = await self.run(self._port().asset(body["code"]))
        return json_response(self.asset_body(asset), 201 if decision else 200)

    def asset_body(self, asset: Any) -> dict[str, Any]:
        return {
            "code": asset.code,
            "scale": asset.scale,
            "treasury_wallet_id": treasury_id(asset.code),
            "created_at": timestamp(asset.created_at_us),
        }

    async def list_assets(self, request: Request) -> Response:
        await self.authenticate(request)
        v.query(request, set())
        return json_response({"items": [self.asset_body(asset) for asset in await self.run(self._port().assets())]})

    # -- tokens --------------------------------------------------------------------------

    async def create_token(self, request: Request) -> Response:
        await self.admin(request)
        body = v.fields(await v.json_object(request), {"owner_id": (True, v.owner_identifier)})
        for _ in range(3):
            token = "wt_" + secrets.token_urlsafe(32)
            prefix = token[:TOKEN_PREFIX_CHARS]
            command = CreateToken(token_hash=hash_token(token), prefix=prefix, owner_id=body["owner_id"])
            decision = await self.run(self._port().create_token(command))
            if not isinstance(decision, Rejection):
                return json_response({"token": token, "prefix": prefix, "owner_id": body["owner_id"]}, 201)
        raise rejected(decision)

    async def revoke_token(self, request: Request) -> Response:
        """``DELETE /v1/tokens/{prefix}``. Something longer than a prefix is taken for a whole
        token (sent by mistake, or all the caller has of a leaked one): revoked when it is one
        (looked up by its hash), else 404. The answer and the log never repeat more than a
        prefix of what was sent (the ledger's rejection names the prefix it was given)."""
        await self.admin(request)
        prefix = request.path_params["prefix"]
        if len(prefix) > TOKEN_PREFIX_CHARS:
            found = await self.run(self._port().token(hash_token(prefix)))
            if found is None:
                raise ApiError(404, "token_not_found", "Token not found",
                               f"no token has that prefix (a prefix is a token's first {TOKEN_PREFIX_CHARS} characters)")
            prefix = found.prefix
        decision = await self.run(self._port().revoke_token(RevokeToken(prefix=prefix)))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        return json_response({"prefix": prefix, "revoked": True})

    # -- wallets -------------------------------------------------------------------------

    async def create_wallet(self, request: Request) -> Response:
        caller = await self.authenticate(request)
        key = v.idempotency_key(request, required=False)
        raw = await v.json_object(request)
        body = v.fields(
            raw,
            {
                "id": (False, v.user_identifier),
                "owner_id": (True, v.owner_identifier),
                "asset": (True, v.asset_code),
                "metadata": (False, v.metadata),
            },
        )
        if caller.owner_id is not None and body["owner_id"] != caller.owner_id:
            raise forbidden(f"this token acts for owner {caller.owner_id} only")
        idempotency = None
        if key is not None:
            idempotency = Idempotency(scope=caller.scope, key=key, fingerprint=self.fingerprint(request, raw))
        wallet_id = body.get("id") or "w_" + secrets.token_hex(10)
        command = CreateWallet(
            wallet_id=wallet_id, owner_id=body["owner_id"], asset=body["asset"],
            metadata=body.get("metadata"), idempotency=idempotency,
        )
        decision = await self.run(self._port().create_wallet(command))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        if isinstance(decision, Duplicate):
            event = decision.record.event
            assert isinstance(event, WalletCreated)
            return json_response(created_wallet_body(event), 201)
        if decision:
            (event,) = decision
            assert isinstance(event, WalletCreated)
            return json_response(created_wallet_body(event), 201)
        return json_response(wallet_body(await self.wallet_view(wallet_id)), 200)

    async def get_wallet(self, request: Request) -> Response:
        caller = await self.authenticate(request)
        v.query(request, set())
        view = await self.owned_wallet(caller, self.path_wallet_id(request))
        return json_response(wallet_body(view))

    async def list_wallets(self, request: Request) -> Response:
        caller = await self.authenticate(request)
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
        port = self._port()
        found = await self.run(port.wallet_ids(owner_id, asset, after, limit + 1))
        page = found[:limit]
        views = await self.run(port.wallets([wallet_id for _, wallet_id in page]))
        next_cursor = encode_cursor("w", page[-1][0]) if len(found) > limit else None
        return json_response({"items": [wallet_body(view) for view in views], "next_cursor": next_cursor})

    async def _change_status(self, request: Request, status: WalletStatus) -> Response:
        await self.admin(request)
        v.fields(await v.json_object(request, optional=True), {})
        wallet_id = self.path_wallet_id(request)
        if wallet_id.startswith("treasury:"):
            raise forbidden("treasury wallets are managed by the system")
        decision = await self.run(
            self._port().change_status(ChangeWalletStatus(wallet_id=wallet_id, status=status))
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
        caller = await self.authenticate(request)
        v.query(request, {"as_of"})
        wallet_id = self.path_wallet_id(request)
        view = await self.owned_wallet(caller, wallet_id)
        raw = request.query_params.get("as_of")
        if raw is None:
            return json_response({"wallet_id": wallet_id, "balance": view.balance, "as_of": None})
        at_us = parse_timestamp("as_of", raw)
        balance = await self.run(self._port().balance_at(wallet_id, at_us))
        return json_response({"wallet_id": wallet_id, "balance": balance, "as_of": timestamp(at_us)})

    async def wallet_transactions(self, request: Request) -> Response:
        caller = await self.authenticate(request)
        v.query(request, {"limit", "cursor", "type", "status", "since", "until"})
        params = request.query_params
        wallet_id = self.path_wallet_id(request)
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
        entries = await self.run(self._port().entries(
            wallet_id, before, limit + 1, type_,
            None if status is None else TransactionStatus[status.upper()], since, until,
        ))
        page = entries[:limit]
        items = [entry_body(entry) for entry in page]
        next_cursor = encode_cursor("e", page[-1].position) if len(entries) > limit else None
        return json_response({"items": items, "next_cursor": next_cursor})

    # -- events --------------------------------------------------------------------------

    def _after(self, raw: str | None) -> int:
        if raw is None:
            return 0
        after = None if raw.startswith("-") else v.integer_in(raw, 0, INT64_MAX)
        if after is None:
            raise v.invalid_field("after", f"must be an LSN (an integer from 0 to {INT64_MAX})")
        return after

    def _gone(self, error: Gone) -> ApiError:
        failure = ApiError(410, "gone", "Gone", f"{error}; start again from after={error.oldest_lsn - 1}")
        failure.extra = {"oldest_lsn": error.oldest_lsn}
        return failure

    async def events(self, request: Request) -> Response:
        await self.admin(request)
        v.query(request, {"after", "limit", "wait"})
        params = request.query_params
        after = self._after(params.get("after"))
        limit = v.limit(request, default=100, maximum=EVENTS_PAGE_MAX)
        wait_s = 0.0
        if (raw := params.get("wait")) is not None:
            try:
                wait_s = float(raw) if len(raw) <= 10 else -1.0
            except ValueError:
                wait_s = -1.0
            if not 0 <= wait_s <= 30:
                raise v.invalid_field("wait", "must be a number of seconds from 0 to 30")
        try:
            found = await self.run(self._port().events(after, limit, wait_s))
        except Gone as error:
            raise self._gone(error) from None
        items = [item for lsn, event in found for item in event_items(lsn, event)]
        return json_response({"items": items, "next_after": found[-1][0] if found else after})

    async def event_stream(self, request: Request) -> Response:
        await self.admin(request)
        v.query(request, {"after"})
        resume = request.headers.get("last-event-id")
        after = self._after(resume if resume is not None else request.query_params.get("after"))
        port = self._port()
        try:
            first = await self.run(port.events(after, EVENTS_PAGE_MAX, 0.0))
        except Gone as error:
            raise self._gone(error) from None

        async def stream() -> Any:
            position = after
            batch = first
            while True:
                if not batch:
                    yield b": keep-alive\n\n"
                for lsn, event in batch:
                    items = event_items(lsn, event)
                    for number, body in enumerate(items, start=1):
                        # The id only on a record's last item: a client that reconnects after
                        # part of a batch record gets the whole record again (at least once).
                        marker = f"id: {lsn}\n" if number == len(items) else ""
                        yield f"{marker}event: {body['type']}\ndata: {json.dumps(body)}\n\n".encode()
                    position = lsn
                try:
                    batch = await port.events(position, EVENTS_PAGE_MAX, 15.0)
                except (Unavailable, Unauthorized):
                    return  # the client reconnects with Last-Event-ID
                except Gone as error:
                    yield f"event: gone\ndata: {json.dumps({'oldest_lsn': error.oldest_lsn})}\n\n".encode()
                    return

        return StreamingResponse(
            stream(), media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},  # Observe adds Cache-Control: no-store
        )

    # -- money ---------------------------------------------------------------------------

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
            idempotency=Idempotency(scope=caller.scope, key=key, fingerprint=self.fingerprint(request, raw)),
            owner_id=caller.owner_id,
            hold_timeout_s=body.get("hold"),
        )
        decision = await self.run(self._port().transfer(command))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        event, lsn = recorded(decision)
        assert isinstance(event, Transferred | HoldCreated)
        return json_response(transaction_body(event, lsn), 201)

    async def deposit(self, request: Request) -> Response:
        caller = await self.admin(request)
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
        caller = await self.authenticate(request)
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
        caller = await self.authenticate(request)
        key = v.idempotency_key(request, required=True)
        assert key is not None
        raw = await v.json_object(request, optional=True)
        body = v.fields(raw, {"amount": (False, v.amount)} if capture else {})
        transaction_id = self.path_id(request, "transaction_id", "transaction_not_found", "Transaction")
        idempotency = Idempotency(scope=caller.scope, key=key, fingerprint=self.fingerprint(request, raw))
        decision = await self.run(self._port().resolve_hold(
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
        found = await self.run(self._port().transaction(transaction_id))
        if found is None:
            raise ApiError(404, "transaction_not_found", "Transaction not found", f"no transaction {transaction_id}")
        if caller.owner_id is not None:
            (view,) = await self.run(self._port().wallets([found.from_wallet_id]))
            if view.owner_id != caller.owner_id:
                raise forbidden("the transfer was sent from a wallet of another owner")

    async def capture(self, request: Request) -> Response:
        return await self._resolve(request, capture=True)

    async def void(self, request: Request) -> Response:
        return await self._resolve(request, capture=False)

    # -- withdrawals ---------------------------------------------------------------------

    async def create_withdrawal(self, request: Request) -> Response:
        caller = await self.authenticate(request)
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
            idempotency=Idempotency(scope=caller.scope, key=key, fingerprint=self.fingerprint(request, raw)),
        )
        decision = await self.run(self._port().request_withdrawal(command))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        event, _ = recorded(decision)
        assert isinstance(event, HoldCreated)
        return json_response(requested_withdrawal_body(event), 202)

    async def _owned_withdrawal(self, caller: Caller, withdrawal_id: str) -> WithdrawalView:
        view = await self.run(self._port().withdrawal(withdrawal_id))
        if view is None:
            raise ApiError(404, "withdrawal_not_found", "Withdrawal not found", f"no withdrawal {withdrawal_id}")
        if caller.owner_id is not None and view.owner_id != caller.owner_id:
            raise forbidden("the withdrawal is from a wallet of another owner")
        return view

    async def get_withdrawal(self, request: Request) -> Response:
        caller = await self.authenticate(request)
        v.query(request, set())
        withdrawal_id = self.path_id(request, "withdrawal_id", "withdrawal_not_found", "Withdrawal")
        return json_response(withdrawal_body(await self._owned_withdrawal(caller, withdrawal_id)))

    async def list_withdrawals(self, request: Request) -> Response:
        caller = await self.authenticate(request)
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
        views = await self.run(self._port().withdrawals(statuses, caller.owner_id))
        if after is not None:
            views = [view for view in views if (view.created_at_us, view.id) > after]
        page = views[:limit]
        next_cursor = None
        if len(views) > limit:
            last = page[-1]
            next_cursor = base64.urlsafe_b64encode(f"{last.created_at_us}:{last.id}".encode()).decode().rstrip("=")
        return json_response({"items": [withdrawal_body(view) for view in page], "next_cursor": next_cursor})

    async def retry_withdrawal(self, request: Request) -> Response:
        await self.admin(request)
        v.fields(await v.json_object(request, optional=True), {})
        withdrawal_id = self.path_id(request, "withdrawal_id", "withdrawal_not_found", "Withdrawal")
        decision = await self.run(self._port().advance_withdrawal(
            AdvanceWithdrawal(withdrawal_id=withdrawal_id, step=PayoutStep.RETRY)
        ))
        if isinstance(decision, Rejection):
            raise rejected(decision)
        return json_response(withdrawal_body(await self._owned_withdrawal(Caller(None), withdrawal_id)))

    async def transfer_batch(self, request: Request) -> Response:
        """``POST /v1/transfers/batch``: see the README. Items are validated here (a bad item is
        its own 400 in a non-atomic batch, the whole request's in an atomic one), the valid ones
        go to the ledger as one batch, and every item's answer comes back in request order."""
        caller = await self.authenticate(request)
        # Accepted and checked like everywhere else, but each item's own key is what makes a
        # batch safe to retry; the header has no further effect.
        v.idempotency_key(request, required=False)
        # A batch counts against the in-flight limit once its body has arrived (decoding and
        # posting it is the work the limit bounds); while it arrives, it counts against its
        # caller's share only (each body is bounded in size and, by --body-timeout, in time).
        scope = caller.scope
        receiving = self._batches_receiving.get(scope, 0)
        if receiving >= self._batches_receiving_max:
            raise overloaded(f"this caller already sends {receiving} batch requests; retry shortly")
        self._batches_receiving[scope] = receiving + 1
        try:
            payload = await v.read_body(request, limit=v.BATCH_BODY_BYTES_MAX)
        finally:
            left = self._batches_receiving[scope] - 1
            if left:
                self._batches_receiving[scope] = left
            else:
                del self._batches_receiving[scope]
        if self._batches_in_flight >= self._batches_in_flight_max:
            raise overloaded(f"{self._batches_in_flight} batch requests are being handled; retry shortly")
        self._batches_in_flight += 1
        try:
            return await self._transfer_batch(request, caller, payload)
        finally:
            self._batches_in_flight -= 1

    async def _transfer_batch(self, request: Request, caller: Caller, payload: bytes) -> Response:
        atomic, values = v.batch_request(await v.batch_body(request, payload))
        repeated = v.repeated_keys(values)
        if repeated:
            raise invalid(repeated)
        items = v.batch_items(values)
        if atomic:
            errors = [error for item in items if type(item) is list for error in item]
            if errors:
                raise invalid(errors)
        scope = caller.scope
        owner_id = caller.owner_id
        base = "tx_" + secrets.token_hex(10)  # + 4 hex digits of the index: 24 like a single one
        commands = []
        positions = []
        transfer_type = TransactionType.TRANSFER
        for index, item in enumerate(items):
            if type(item) is tuple:
                key, source, target, amount, description, metadata = item
                # The builders make the same frozen values as Transfer(...) and
                # Idempotency(...), at half the cost (ledger._model.frozen_builder).
                commands.append(new_transfer(
                    f"{base}{index:04x}", transfer_type, source, target, amount, description, metadata,
                    new_idempotency(scope, key, item_fingerprint(item)), owner_id, None,
                ))
                positions.append(index)
        results: list[Any] = [None] * len(items)
        counts: dict[int, int] = {}
        if commands:
            outcome = await self.run(self._port().transfer_batch(commands, atomic))
            if isinstance(outcome, BatchFailed):
                self._count_batch(atomic, {422: len(items)})
                if outcome.index is not None:  # the item's place in the request
                    outcome = dataclasses.replace(outcome, index=positions[outcome.index])
                raise batch_failed(outcome)
            for index, result in zip(positions, outcome, strict=True):
                rendered = item_result(result)
                results[index] = rendered
                counts[rendered["status"]] = counts.get(rendered["status"], 0) + 1
        for index, item in enumerate(items):
            if type(item) is list:
                results[index] = {"status": 400, "error": problem_body(invalid(item))}
                counts[400] = counts.get(400, 0) + 1
        self._count_batch(atomic, counts)
        body = {"results": results}
        if accepts_msgpack(request):
            return Response(msgpack.packb(body, use_bin_type=True), media_type=v.MSGPACK_MEDIA_TYPE)
        return json_response(body)

    def _count_batch(self, atomic: bool, counts: dict[int, int]) -> None:
        if self.metrics is not None:
            label = "true" if atomic else "false"
            for status, count in counts.items():
                self.metrics.batch_transfers.labels(label, str(status)).inc(count)

    async def get_transaction(self, request: Request) -> Response:
        caller = await self.authenticate(request)
        v.query(request, set())
        transaction_id = request.path_params["transaction_id"]
        found = await self.run(self._port().transaction(transaction_id))
        if found is None:
            raise ApiError(404, "transaction_not_found", "Transaction not found", f"no transaction {transaction_id}")
        if caller.owner_id is not None:
            views = await self.run(self._port().wallets([found.from_wallet_id, found.to_wallet_id]))
            if all(view.owner_id != caller.owner_id or is_treasury(view.id) for view in views):
                raise forbidden("the transaction does not involve a wallet of this owner")
        return json_response(row_body(found))


def _not_found(request: Request, exc: Exception) -> ApiError:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return ApiError(
            405, "method_not_allowed", "Method not allowed",
            f"{request.method} is not allowed on {shown_path(request.url.path)}", headers=dict(exc.headers or {}),
        )
    return ApiError(exc.status_code, "not_found", "Not found", f"no route {request.method} {shown_path(request.url.path)}")


def build_app(api: Api, *, in_flight_max: int = 4096) -> Any:
    """The ASGI application: the routes inside the observing middleware (metrics, logs, ids)."""
    metrics = Metrics()
    metrics.api = api
    api.metrics = metrics

    def render(error: ApiError) -> Response:
        metrics.rejections.labels(code_label(error.code)).inc()
        return problem(error)

    def http_error(request: Request, exc: Exception) -> Response:
        return render(_not_found(request, exc))

    def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return render(exc)

    def client_left(request: Request, exc: Exception) -> Response:
        # The client's doing (it closed the connection mid-request, or Hypercorn closed it on a
        # malformed body): one line, no traceback, and 499 in the metrics, never a 500. The
        # response goes nowhere.
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    def body_late(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BodyTimeout)
        return render(ApiError(408, "request_timeout", "Request timeout", str(exc),
                               headers={"Connection": "close"}))

    def bug(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return render(ApiError(500, "internal_error", "Internal error",
                               "a bug: the request may or may not have been applied; it was logged"))

    async def docs(request: Request) -> Response:
        return Response(DOCS_PAGE, media_type="text/html")

    async def scrape(request: Request) -> Response:
        return Response(await metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/", _openapi.index, methods=["GET"]),
        Route("/metrics", scrape, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Mount("/docs/static", app=StaticFiles(directory=SWAGGER_UI_STATIC), name="swagger-ui"),
        Route("/health", api.health, methods=["GET"]),
        Route("/ready", api.ready, methods=["GET"]),
        Route("/v1/admin/snapshots", api.take_snapshot, methods=["POST"]),
        Route("/v1/admin/processes", api.processes, methods=["GET"]),
        Route("/v1/assets", api.create_asset, methods=["POST"]),
        Route("/v1/assets", api.list_assets, methods=["GET"]),
        Route("/v1/tokens", api.create_token, methods=["POST"]),
        Route("/v1/tokens/{prefix}", api.revoke_token, methods=["DELETE"]),
        Route("/v1/wallets", api.create_wallet, methods=["POST"]),
        Route("/v1/wallets", api.list_wallets, methods=["GET"]),
        Route("/v1/wallets/{wallet_id}", api.get_wallet, methods=["GET"]),
        Route("/v1/wallets/{wallet_id}/freeze", api.freeze, methods=["POST"]),
        Route("/v1/wallets/{wallet_id}/unfreeze", api.unfreeze, methods=["POST"]),
        Route("/v1/wallets/{wallet_id}/close", api.close, methods=["POST"]),
        Route("/v1/wallets/{wallet_id}/balance", api.balance, methods=["GET"]),
        Route("/v1/wallets/{wallet_id}/transactions", api.wallet_transactions, methods=["GET"]),
        Route("/v1/deposits", api.deposit, methods=["POST"]),
        Route("/v1/transfers", api.transfer, methods=["POST"]),
        Route("/v1/transfers/batch", api.transfer_batch, methods=["POST"]),
        Route("/v1/transfers/{transaction_id}/capture", api.capture, methods=["POST"]),
        Route("/v1/transfers/{transaction_id}/void", api.void, methods=["POST"]),
        Route("/v1/withdrawals", api.create_withdrawal, methods=["POST"]),
        Route("/v1/withdrawals", api.list_withdrawals, methods=["GET"]),
        Route("/v1/withdrawals/{withdrawal_id}", api.get_withdrawal, methods=["GET"]),
        Route("/v1/withdrawals/{withdrawal_id}/retry", api.retry_withdrawal, methods=["POST"]),
        Route("/v1/transactions/{transaction_id}", api.get_transaction, methods=["GET"]),
        Route("/v1/events", api.events, methods=["GET"]),
        Route("/v1/events/stream", api.event_stream, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, ApiError: api_error, ClientDisconnect: client_left,
                            BodyTimeout: body_late, Exception: bug},
    )
    # ``/v1/wallets/`` is 404, not a redirect: Starlette's redirect would build its Location
    # from the request's Host header.
    app.router.redirect_slashes = False
    # gzip for large responses when the client accepts it (SSE is excluded by Starlette).
    return Observe(_GzipWhenAccepted(app), metrics, in_flight_max=in_flight_max)


class _GzipWhenAccepted:
    """Starlette's GZipMiddleware builds a responder for every request; most API clients do not
    ask for gzip, so only requests that do go through it (measured: several percent of the
    single-transfer throughput)."""

    def __init__(self, app: Any) -> None:
        self._plain = app
        self._gzip = GZipMiddleware(app, minimum_size=GZIP_MIN_BYTES)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"accept-encoding" and b"gzip" in value:
                    await self._gzip(scope, receive, send)
                    return
        await self._plain(scope, receive, send)
