"""How the API shows things: the JSON bodies of wallets, transactions, withdrawals, statement
entries, assets and feed events, timestamps, and a batch item's answer. Pure functions over the
ledger's values; they never call the ledger. Runs in every HTTP worker, and in the one process
of ``--workers 0``. (Problems are rendered by ``server._errors``.)
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ledger import (
    AlertCreated,
    AlertDeleted,
    AlertFired,
    AlertsTriggered,
    AlertView,
    Asset,
    AssetCreated,
    BatchDecided,
    BatchPrepared,
    BatchReleased,
    Committed,
    CreditReserved,
    Duplicate,
    Entry,
    Event,
    GroupConfigured,
    HoldCaptured,
    HoldCreated,
    HoldVoided,
    ItemOutcome,
    Refunded,
    Rejection,
    RequestsRefused,
    ReservationSettled,
    TokenCreated,
    TokenRevoked,
    TransactionRow,
    TransactionStatus,
    TransactionType,
    Transferred,
    TransfersAborted,
    TransfersPosted,
    TransitSettled,
    VoidReason,
    WalletCreated,
    WalletStatus,
    WalletStatusChanged,
    WalletUpdated,
    WalletView,
    WithdrawalStatus,
    WithdrawalUpdated,
    WithdrawalView,
    treasury_id,
)
from server import _validate as v
from server._errors import problem_body, rejected


@functools.lru_cache(maxsize=4096)
def timestamp(at_us: int) -> str:
    """RFC 3339 in UTC with microseconds (``2026-12-07T04:49:59.000123Z``). Cached: the items
    of a batch share their record's time, and a page of a statement repeats a few times (the
    formatting was 18% of an HTTP worker's CPU under batches of 1000)."""
    seconds, micros = divmod(at_us, 1_000_000)
    t = time.gmtime(seconds)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d}Z")


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body).encode(), status_code=status, media_type="application/json")


def accepts_msgpack(request: Request) -> bool:
    """Whether the client asked for MessagePack (``Accept: application/msgpack``, q > 0)."""
    for part in request.headers.get("accept", "").split(","):
        media, *parameters = (piece.strip() for piece in part.split(";"))
        if media.lower() == v.MSGPACK_MEDIA_TYPE:
            return not any(parameter.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000")
                           for parameter in parameters)
    return False


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
        "overdraft_limit": view.overdraft_limit,
        "spend_limits": {"daily": view.daily_limit, "monthly": view.monthly_limit},
        "spent": {"daily": view.spent_daily, "monthly": view.spent_monthly},
    }


def limits_body(overdraft_limit: int, daily_limit: int | None, monthly_limit: int | None) -> dict[str, Any]:
    return {"overdraft_limit": overdraft_limit, "spend_limits": {"daily": daily_limit, "monthly": monthly_limit}}


def created_wallet_body(
    event: WalletCreated, overdraft_limit: int = 0, daily_limit: int | None = None, monthly_limit: int | None = None,
) -> dict[str, Any]:
    """The wallet as it was when created: what an idempotent replay answers (the limits are
    the request's: a replay has the same body)."""
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
        **limits_body(overdraft_limit, daily_limit, monthly_limit),
        "spent": {"daily": 0, "monthly": 0},
    }


def asset_body(asset: Asset) -> dict[str, Any]:
    return {
        "code": asset.code,
        "scale": asset.scale,
        "treasury_wallet_id": treasury_id(asset.code),
        "created_at": timestamp(asset.created_at_us),
    }


MoneyEvent = Transferred | HoldCreated | HoldCaptured | HoldVoided | Refunded


def event_status(event: MoneyEvent) -> TransactionStatus:
    if isinstance(event, HoldCreated):
        return TransactionStatus.PENDING
    if isinstance(event, HoldVoided):
        return TransactionStatus.FAILED if event.reason == VoidReason.REFUSED else TransactionStatus.VOIDED
    return TransactionStatus.POSTED


# An enum member's ``label`` is ``name.lower()`` on every call; these are looked up once.
_TYPE_LABELS = {kind: kind.label for kind in TransactionType}
_POSTED = TransactionStatus.POSTED.label


def transaction_body(event: MoneyEvent, lsn: int) -> dict[str, Any]:
    """The transaction as of ``event`` (a capture shows the amount posted, and the time the
    transfer was created, like ``GET /v1/transactions/{id}``)."""
    if type(event) is Transferred:  # nearly every call: a batch renders one per item
        created_us = event.at_us
        status = _POSTED
    else:
        created_us = event.at_us if isinstance(event, Transferred | HoldCreated | Refunded) else event.created_at_us
        status = event_status(event).label
    return {
        "id": event.transaction_id,
        "type": _TYPE_LABELS[event.type],
        "status": status,
        "from_wallet_id": event.from_wallet_id,
        "to_wallet_id": event.to_wallet_id,
        "asset": event.asset,
        "amount": event.amount,
        "description": event.description,
        "metadata": event.metadata or {},
        "created_at": timestamp(created_us),
        "lsn": lsn,
        # As of the event: nothing of a transaction is refunded when it is made (and a refund
        # is never refunded); GET shows what refunds sent back since.
        "refunded_amount": 0,
    }


def refund_body(event: Refunded, lsn: int) -> dict[str, Any]:
    """A refund: the transaction and the one it refunds (a separate function, so that the
    transfer path of ``transaction_body`` pays for no refund check)."""
    body = transaction_body(event, lsn)
    body["refund_of"] = event.refund_of
    return body


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
    body: dict[str, Any] = {
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
        "refunded_amount": row.refunded_amount,
    }
    if row.refund_of is not None:
        body["refund_of"] = row.refund_of
    return body


def entry_body(entry: Entry) -> dict[str, Any]:
    body: dict[str, Any] = {
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
        "refunded_amount": entry.refunded_amount,
    }
    if entry.refund_of is not None:
        body["refund_of"] = entry.refund_of
    return body


# Every ``type`` a feed event can have (``event_body``), in the order the README lists them:
# what webhooks may subscribe to and what the OpenAPI document's Event enum says.
# ``alert.triggered`` is written by the balance alerts of the state machine.
EVENT_TYPES = (
    "asset.created", "wallet.created", "wallet.frozen", "wallet.unfrozen", "wallet.closed",
    "deposit.posted", "transfer.posted", "transfer.pending", "transfer.voided", "transfer.expired",
    "withdrawal.pending", "withdrawal.processing", "withdrawal.completed", "withdrawal.failed", "withdrawal.dead",
    "token.created", "token.revoked", "alert.created", "alert.deleted", "alert.triggered",
    "wallet.updated",
    "refund.posted",
)

STATUS_EVENT = {WalletStatus.FROZEN: "wallet.frozen", WalletStatus.ACTIVE: "wallet.unfrozen",
                WalletStatus.CLOSED: "wallet.closed"}


def alert_body(view: AlertView) -> dict[str, Any]:
    """An alert as the API shows it: ``below`` or ``above`` holds the threshold."""
    return {"id": view.id, "wallet_id": view.wallet_id, "field": view.field.label,
            view.direction.label: view.threshold, "state": "triggered" if view.triggered else "armed",
            "created_at": timestamp(view.created_at_us)}


def created_alert_body(event: AlertCreated) -> dict[str, Any]:
    return {"id": event.alert_id, "wallet_id": event.wallet_id, "field": event.field.label,
            event.direction.label: event.threshold, "state": "triggered" if event.triggered else "armed",
            "created_at": timestamp(event.at_us)}


def firing_body(lsn: int, at_us: int, firing: AlertFired) -> dict[str, Any]:
    """``alert.triggered`` in the feed (and what webhooks deliver): the alert, its wallet, the
    field and threshold, the value the change left, the transaction that made the crossing."""
    data = {"alert_id": firing.alert_id, "wallet_id": firing.wallet_id, "field": firing.field.label,
            "direction": firing.direction.label, "threshold": firing.threshold, "value": firing.value,
            "transaction_id": firing.transaction_id}
    return {"lsn": lsn, "type": "alert.triggered", "created_at": timestamp(at_us), "data": data}


def event_body(lsn: int, event: Event) -> dict[str, Any]:
    """The stable JSON shape of one committed event in the feed (documented in the README)."""
    data: dict[str, Any]
    if isinstance(event, Transferred):
        kind = f"{event.type.label}.posted"
        data = transaction_body(event, lsn)
    elif isinstance(event, Refunded):
        kind = "refund.posted"
        data = refund_body(event, lsn)
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
    elif isinstance(event, WalletUpdated):
        kind = "wallet.updated"
        data = {"wallet_id": event.wallet_id,
                **limits_body(event.overdraft_limit, event.daily_limit, event.monthly_limit),
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
    elif isinstance(event, AlertCreated):
        kind = "alert.created"
        data = created_alert_body(event)
    elif isinstance(event, AlertDeleted):
        kind = "alert.deleted"
        data = {"id": event.alert_id, "wallet_id": event.wallet_id}
    elif isinstance(event, AlertsTriggered):
        raise AssertionError("an alerts record is one item per firing (event_items)")
    else:
        assert isinstance(event, TokenRevoked)
        kind = "token.revoked"
        data = {"prefix": event.prefix}
    return {"lsn": lsn, "type": kind, "created_at": timestamp(event.at_us), "data": data}


def event_items(lsn: int, event: Event) -> list[dict[str, Any]]:
    """A record's items in the feed: one per transfer of a batch record and one per firing of
    an alerts record (sharing its LSN), none for a refusals record, one for any other record."""
    if isinstance(event, TransfersPosted):
        return [event_body(lsn, transfer) for transfer in event.transfers]
    if isinstance(event, AlertsTriggered):
        return [firing_body(lsn, event.at_us, firing) for firing in event.firings]
    if isinstance(event, RequestsRefused | GroupConfigured | CreditReserved | ReservationSettled | TransitSettled
                  | TransfersAborted | BatchPrepared | BatchDecided | BatchReleased):
        # Final outcomes recorded under keys, and the steps of transfers and atomic batches
        # between ledger groups (the transfer itself is its sender group's record): not shown (the cursor still moves
        # past them: a page's ``next_after`` is its last record's LSN).
        return []
    return [event_body(lsn, event)]


def recorded(decision: Committed | Duplicate) -> tuple[Event, int]:
    """The event and LSN behind an answer: what was just committed, or what a replayed key
    committed the first time (the same answer again)."""
    if isinstance(decision, Duplicate):
        event = decision.record.event
        # A refused key answers with its ``Rejection`` itself, never as a duplicate.
        assert not isinstance(event, Rejection)
        return event, decision.record.lsn
    assert isinstance(decision, Committed)
    return decision.event, decision.lsn


def item_result(result: ItemOutcome) -> dict[str, Any]:
    """One item's answer in a batch: its status and its transaction or problem."""
    if type(result) is Committed:  # the common case, without ``recorded``'s checks
        committed = result.event
        assert type(committed) is Transferred
        return {"status": 201, "transaction": transaction_body(committed, result.lsn)}
    if isinstance(result, Rejection):
        error = rejected(result)
        return {"status": error.status, "error": problem_body(error)}
    event, lsn = recorded(result)
    assert isinstance(event, Transferred)
    return {"status": 201, "transaction": transaction_body(event, lsn)}
