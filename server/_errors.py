"""Errors as ``application/problem+json`` (RFC 9457), and the one table from rejection reasons to
HTTP statuses. Every ``code`` here is part of the API contract: never rename one.

    | reason / condition        | status | code                      |
    |---------------------------|--------|---------------------------|
    | IDEMPOTENCY_KEY_REUSED    | 409    | idempotency_key_reused    |
    | ASSET_NOT_FOUND           | 422    | asset_not_found           |
    | ASSET_EXISTS              | 409    | asset_exists              |
    | WALLET_EXISTS             | 409    | wallet_exists             |
    | SENDER/RECEIVER_NOT_FOUND | 404    | wallet_not_found          |
    | FORBIDDEN                 | 403    | forbidden                 |
    | SAME_WALLET               | 422    | same_wallet               |
    | ASSET_MISMATCH            | 422    | asset_mismatch            |
    | SENDER_FROZEN             | 409    | wallet_frozen             |
    | *_CLOSED                  | 409    | wallet_closed             |
    | WALLET_NOT_EMPTY          | 409    | wallet_not_empty          |
    | BALANCE_OVERFLOW          | 422    | balance_overflow          |
    | INSUFFICIENT_FUNDS        | 422    | insufficient_funds        |
    | SPEND_LIMIT_EXCEEDED      | 422    | spend_limit_exceeded      |
    | TOKEN_NOT_FOUND           | 404    | token_not_found           |
    | TOKEN_EXISTS              | 409    | token_exists              |
    | NOT_PENDING               | 409    | transfer_not_pending      |
    |   (no such transaction)   | 404    | transaction_not_found     |
    | AMOUNT_EXCEEDS_HOLD       | 422    | amount_exceeds_hold       |
    | WITHDRAWAL_NOT_FOUND      | 404    | withdrawal_not_found      |
    | WITHDRAWAL_NOT_DEAD       | 409    | withdrawal_not_dead       |
    | WITHDRAWAL_NOT_PAYABLE    | 409    | withdrawal_not_payable    |
    | RECORD_TOO_LARGE          | 413    | payload_too_large         |
    | REQUEST_IN_PROGRESS       | 409    | request_in_progress       |
    | NOT_REFUNDABLE            | 409    | not_refundable            |
    | REFUND_EXCEEDS_REMAINING  | 422    | refund_exceeds_remaining  |
    | an atomic batch's item    | 422    | batch_failed (with index  |
    |   failed: nothing posted  |        |   and the item's error)   |
    | bad body, query or header | 400    | invalid_request           |
    | no Idempotency-Key        | 400    | idempotency_key_missing   |
    | no or unknown token       | 401    | unauthorized              |
    | not allowed for the token | 403    | forbidden                 |
    | unknown route / object    | 404    | not_found / *_not_found   |
    | events compacted away     | 410    | gone (with oldest_lsn)    |
    | no such webhook endpoint  | 404    | webhook_not_found         |
    | webhook URL reaches this  | 422    | webhook_url_forbidden     |
    |   host's private network  |        |                           |
    | webhook host unresolvable | 422    | webhook_url_unresolvable  |
    | too many webhook endpoints| 409    | webhooks_limit_reached    |
    | no data dir for webhooks, | 503    | webhooks_unavailable      |
    | or its bucket unreachable |        |                           |
    | wrong method              | 405    | method_not_allowed        |
    | body not whole in time    | 408    | request_timeout           |
    | body too large            | 413    | payload_too_large         |
    | wrong content type        | 415    | unsupported_media_type    |
    | token over its rate       | 429    | rate_limited (Retry-After)|
    | mailbox or log backlog    | 503    | overloaded (Retry-After)  |
    | recovering                | 503    | not_ready (Retry-After)   |
    | history read model behind | 503    | history_lagging           |
    | disk refused a write      | 503    | storage_unavailable       |
    | anything else             | 500    | internal_error (a bug)    |

A 400 lists at most ``ERRORS_MAX`` errors; when there were more, a last entry (field
``errors``) says so. Collectors stop looking after ``ERRORS_MAX + 1`` (``first_errors``), so a
body with a million unknown fields costs no more to answer than one with twenty-one.
``CODES`` is every code above: the metrics label rejections with a code from it, or ``other``.

The HTTP edge (``server._edge``) answers a few requests before they reach the app, with the
same problem shape: ``431 headers_too_large``, ``505 http_version_not_supported``, ``503
too_many_connections`` and ``503 shutting_down`` (both with ``Retry-After: 1``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any

from starlette.responses import Response

from ledger import BatchFailed, Reason, Rejection

PROBLEM_MEDIA_TYPE = "application/problem+json"

REASONS: dict[Reason, tuple[int, str]] = {
    Reason.IDEMPOTENCY_KEY_REUSED: (409, "Idempotency key reused"),
    Reason.ASSET_NOT_FOUND: (422, "Asset not found"),
    Reason.ASSET_EXISTS: (409, "Asset exists"),
    Reason.WALLET_EXISTS: (409, "Wallet exists"),
    Reason.RESERVED_ID: (400, "Invalid request"),
    Reason.SENDER_NOT_FOUND: (404, "Wallet not found"),
    Reason.FORBIDDEN: (403, "Forbidden"),
    Reason.RECEIVER_NOT_FOUND: (404, "Wallet not found"),
    Reason.SAME_WALLET: (422, "Same wallet"),
    Reason.ASSET_MISMATCH: (422, "Asset mismatch"),
    Reason.SENDER_FROZEN: (409, "Wallet frozen"),
    Reason.SENDER_CLOSED: (409, "Wallet closed"),
    Reason.RECEIVER_CLOSED: (409, "Wallet closed"),
    Reason.WALLET_CLOSED: (409, "Wallet closed"),
    Reason.WALLET_NOT_EMPTY: (409, "Wallet not empty"),
    Reason.BALANCE_OVERFLOW: (422, "Balance overflow"),
    Reason.INSUFFICIENT_FUNDS: (422, "Insufficient funds"),
    Reason.TOKEN_NOT_FOUND: (404, "Token not found"),
    Reason.TOKEN_EXISTS: (409, "Token exists"),
    Reason.NOT_PENDING: (409, "Transfer not pending"),
    Reason.AMOUNT_EXCEEDS_HOLD: (422, "Amount exceeds hold"),
    Reason.WITHDRAWAL_NOT_FOUND: (404, "Withdrawal not found"),
    Reason.WITHDRAWAL_NOT_DEAD: (409, "Withdrawal not dead"),
    Reason.WITHDRAWAL_NOT_PAYABLE: (409, "Withdrawal not payable"),
    Reason.RECORD_TOO_LARGE: (413, "Payload too large"),
    Reason.REQUEST_IN_PROGRESS: (409, "Request in progress"),
    Reason.ALERT_LIMIT_REACHED: (409, "Alert limit reached"),
    Reason.ALERT_NOT_FOUND: (404, "Alert not found"),
    Reason.SPEND_LIMIT_EXCEEDED: (422, "Spend limit exceeded"),
    Reason.NOT_REFUNDABLE: (409, "Not refundable"),
    Reason.REFUND_EXCEEDS_REMAINING: (422, "Refund exceeds remaining"),
}
assert set(REASONS) == set(Reason), set(Reason) - set(REASONS)

# Every code an answer can carry (the table above). Closed, so that a metric labelled with a
# code has a bounded number of series.
CODES = frozenset({
    *(reason.code for reason in Reason),
    "transaction_not_found", "batch_failed", "invalid_request", "idempotency_key_missing",
    "unauthorized", "forbidden", "not_found", "wallet_not_found", "withdrawal_not_found", "gone",
    "method_not_allowed", "payload_too_large", "unsupported_media_type", "rate_limited", "overloaded",
    "not_ready", "history_lagging", "storage_unavailable", "ledger_unavailable", "internal_error",
    "request_timeout", "webhook_not_found", "webhook_url_forbidden", "webhook_url_unresolvable",
    "webhooks_limit_reached", "webhooks_unavailable",
})
CODE_OTHER = "other"
assert CODE_OTHER not in CODES

ERRORS_MAX = 20  # errors listed in one 400 (and for one item of a batch)
OMITTED_FIELD = "errors"


class ApiError(Exception):
    """An answer that is not a 2xx. Raised anywhere in a route, rendered in one place."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.errors = errors
        self.headers = headers
        self.extra: dict[str, Any] = {}


def rejected(rejection: Rejection) -> ApiError:
    status, title = REASONS[rejection.reason]
    return ApiError(status, rejection.reason.code, title, rejection.detail)


def batch_failed(failure: BatchFailed) -> ApiError:
    """An atomic batch that posted nothing: 422 naming the first failing item, with that item's
    own problem nested (or the item's own status when the batch as a whole was refused)."""
    if failure.index is None:
        return rejected(failure.rejection)
    item = rejected(failure.rejection)
    error = ApiError(
        422, "batch_failed", "Batch failed",
        f"transfers[{failure.index}] failed ({item.code}: {item.detail}); nothing was posted",
    )
    error.extra = {"index": failure.index, "error": problem_body(item)}
    return error


def code_label(code: str) -> str:
    """``code`` as a metric label: one of ``CODES``, else ``other``."""
    return code if code in CODES else CODE_OTHER


def first_errors(errors: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """At most ``ERRORS_MAX + 1`` of ``errors`` (one more than ``invalid`` lists, so that it can
    tell there were more): stops consuming ``errors`` there."""
    return list(itertools.islice(errors, ERRORS_MAX + 1))


def capped(errors: list[dict[str, str]], limit: int = ERRORS_MAX) -> list[dict[str, str]]:
    """The first ``limit`` errors, and when there were more, an entry that says so."""
    if len(errors) <= limit:
        return errors
    return [*errors[:limit], {"field": OMITTED_FIELD, "message": f"more errors omitted (at most {limit} are listed)"}]


def invalid(errors: list[dict[str, str]]) -> ApiError:
    errors = capped(errors)
    detail = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
    return ApiError(400, "invalid_request", "Invalid request", detail, errors=errors)


def invalid_field(field: str, message: str) -> ApiError:
    return invalid([{"field": field, "message": message}])


def overloaded(detail: str) -> ApiError:
    return ApiError(503, "overloaded", "Overloaded", detail, headers={"Retry-After": "1"})


def problem_body(error: ApiError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": error.title,
        "status": error.status,
        "code": error.code,
        "detail": error.detail,
    }
    if error.errors is not None:
        body["errors"] = error.errors
    body.update(error.extra)
    return body


def problem(error: ApiError) -> Response:
    return Response(
        json.dumps(problem_body(error)).encode(),
        status_code=error.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=error.headers,
    )
