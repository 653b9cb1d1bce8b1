"""The client's exceptions: every ``application/problem+json`` answer becomes a ``WalletError``
(or one of its subclasses) carrying the problem's fields, and a request that got no answer at
all becomes a ``ConnectionFailed``. Both carry the ``Idempotency-Key`` the call used, so a
caller can retry it later and still move money at most once.

The class is picked by the problem's ``code`` first, then by the HTTP status:

    | code                                   | class                  | fallback status -> class   |
    |----------------------------------------|------------------------|----------------------------|
    | invalid_request, idempotency_key_missing | InvalidRequest       | 400 -> InvalidRequest      |
    | unauthorized                           | Unauthorized           | 401 -> Unauthorized        |
    | forbidden                              | Forbidden              | 403 -> Forbidden           |
    | not_found, *_not_found                 | NotFound               | 404 -> NotFound            |
    | idempotency_key_reused                 | IdempotencyKeyReused   | 409 -> Conflict            |
    | request_in_progress                    | RequestInProgress      |                            |
    | wallet_frozen / wallet_closed          | WalletFrozen / -Closed |                            |
    | transfer_not_pending                   | TransferNotPending     |                            |
    | gone                                   | Gone (oldest_lsn)      | 410 -> Gone                |
    | payload_too_large                      | PayloadTooLarge        | 413 -> PayloadTooLarge     |
    | insufficient_funds                     | InsufficientFunds      | 422 -> Unprocessable       |
    | spend_limit_exceeded                   | SpendLimitExceeded     |                            |
    | batch_failed                           | BatchFailed (index)    |                            |
    | rate_limited                           | RateLimited            | 429 -> RateLimited         |
    | overloaded                             | Overloaded             | 503 -> ServiceUnavailable  |
    | (anything else)                        | by status              | 5xx -> ServerError, else WalletError |

A code this table does not know (a newer server) still gets its status's class, so ``except
NotFound`` keeps working when the server adds a ``*_not_found``; ``error.code`` is always the
server's own string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class WalletClientError(Exception):
    """Anything the client raises for a call that did not succeed."""

    idempotency_key: str | None = None


class ConnectionFailed(WalletClientError):
    """No answer from the server (connection refused or cut, timeout) after the retries the
    policy allowed. Whether the server acted is unknown: retry with the same
    ``idempotency_key`` (it is on the exception) to find out without moving money twice."""

    def __init__(self, message: str, *, idempotency_key: str | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.idempotency_key = idempotency_key
        self.attempts = attempts


class WalletError(WalletClientError):
    """A problem answer (RFC 9457) from the server.

    ``status`` (HTTP status), ``code`` (the stable machine-readable code, e.g.
    ``"insufficient_funds"``), ``title``, ``detail``, ``errors`` (the field errors of a 400),
    ``body`` (the whole decoded problem, extensions included), ``content`` (the raw bytes),
    ``retry_after_s`` (from ``Retry-After``, when sent) and ``idempotency_key`` (the key the call
    used, if any).

    Example::

        try:
            client.transfer("w-alice", "w-bob", 10_000)
        except InsufficientFunds as error:
            print(error.code, error.detail)   # insufficient_funds wallet w-alice has ...
    """

    def __init__(
        self,
        *,
        status: int,
        code: str,
        title: str = "",
        detail: str = "",
        errors: Sequence[Mapping[str, Any]] = (),
        body: Mapping[str, Any] | None = None,
        content: bytes = b"",
        retry_after_s: float | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail or title}")
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.errors = [dict(error) for error in errors]
        self.body: dict[str, Any] = dict(body or {})
        self.content = content
        self.retry_after_s = retry_after_s
        self.idempotency_key = idempotency_key


class InvalidRequest(WalletError):
    """400: the request is malformed (``errors`` lists the fields); fix it and retry."""


class Unauthorized(WalletError):
    """401: no token, or an unknown or revoked one."""


class Forbidden(WalletError):
    """403: the token may not do this (another owner's wallet, an admin-only route)."""


class NotFound(WalletError):
    """404: no such route or object (``code`` says which: ``wallet_not_found``, ...)."""


class Conflict(WalletError):
    """409: the request conflicts with the state (``code`` says how)."""


class IdempotencyKeyReused(Conflict):
    """409 ``idempotency_key_reused``: the key was used before with another body."""


class RequestInProgress(Conflict):
    """409 ``request_in_progress``: the first request with this key has not finished."""


class WalletFrozen(Conflict):
    """409 ``wallet_frozen``: the sending wallet is frozen."""


class WalletClosed(Conflict):
    """409 ``wallet_closed``."""


class TransferNotPending(Conflict):
    """409 ``transfer_not_pending``: the hold was already captured, voided or expired."""


class NotRefundable(Conflict):
    """409 ``not_refundable``: only posted deposits and transfers can be refunded."""


class Gone(WalletError):
    """410 ``gone``: the events asked for were compacted away; ``oldest_lsn`` is the first one
    still kept (read again from ``after=oldest_lsn - 1``)."""

    @property
    def oldest_lsn(self) -> int | None:
        value = self.body.get("oldest_lsn")
        return value if type(value) is int else None


class PayloadTooLarge(WalletError):
    """413: the body is over the route's limit."""


class Unprocessable(WalletError):
    """422: a business rule refused the request (recorded under its idempotency key)."""


class InsufficientFunds(Unprocessable):
    """422 ``insufficient_funds``."""


class RefundExceedsRemaining(Unprocessable):
    """422 ``refund_exceeds_remaining``: the refunds would sum past the transaction's amount
    (``detail`` says what is left)."""


class SpendLimitExceeded(Unprocessable):
    """422 ``spend_limit_exceeded``."""


class BatchFailed(Unprocessable):
    """422 ``batch_failed``: an atomic batch posted nothing; ``index`` is the first item that
    failed and ``item_error`` its problem."""

    @property
    def index(self) -> int | None:
        value = self.body.get("index")
        return value if type(value) is int else None

    @property
    def item_error(self) -> WalletError | None:
        problem = self.body.get("error")
        if not isinstance(problem, Mapping):
            return None
        status = problem.get("status")
        return error_from_problem(status if type(status) is int else 422, problem)


class RateLimited(WalletError):
    """429 ``rate_limited``: the token is over its rate; ``retry_after_s`` says when to retry."""


class ServiceUnavailable(WalletError):
    """503: the server cannot take the request now (recovering, history behind, ...)."""


class Overloaded(ServiceUnavailable):
    """503 ``overloaded``: its queues are full; retry after ``retry_after_s``."""


class ServerError(WalletError):
    """500 or another 5xx: a bug or a proxy's failure; the request may or may not have acted."""


CODES: dict[str, type[WalletError]] = {
    "invalid_request": InvalidRequest,
    "idempotency_key_missing": InvalidRequest,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "idempotency_key_reused": IdempotencyKeyReused,
    "request_in_progress": RequestInProgress,
    "wallet_frozen": WalletFrozen,
    "wallet_closed": WalletClosed,
    "transfer_not_pending": TransferNotPending,
    "not_refundable": NotRefundable,
    "refund_exceeds_remaining": RefundExceedsRemaining,
    "gone": Gone,
    "payload_too_large": PayloadTooLarge,
    "insufficient_funds": InsufficientFunds,
    "spend_limit_exceeded": SpendLimitExceeded,
    "batch_failed": BatchFailed,
    "rate_limited": RateLimited,
    "overloaded": Overloaded,
}
STATUSES: dict[int, type[WalletError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    422: Unprocessable,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_class(status: int, code: str) -> type[WalletError]:
    """The class for a problem: by ``code``, then by ``status`` (the table above)."""
    found = CODES.get(code)
    if found is not None:
        return found
    if code.endswith("_not_found") and status == 404:
        return NotFound
    if status in STATUSES:
        return STATUSES[status]
    return ServerError if status >= 500 else WalletError


def error_from_problem(
    status: int,
    problem: Mapping[str, Any],
    *,
    content: bytes = b"",
    retry_after_s: float | None = None,
    idempotency_key: str | None = None,
) -> WalletError:
    """A ``WalletError`` of the right class from a decoded problem body (an empty mapping when
    the body was not a problem: the code is then ``http_<status>``)."""
    code = problem.get("code")
    code = code if isinstance(code, str) and code else f"http_{status}"
    title = problem.get("title")
    detail = problem.get("detail")
    errors = problem.get("errors")
    return error_class(status, code)(
        status=status,
        code=code,
        title=title if isinstance(title, str) else "",
        detail=detail if isinstance(detail, str) else "",
        errors=[item for item in errors if isinstance(item, Mapping)] if isinstance(errors, list) else (),
        body=problem,
        content=content,
        retry_after_s=retry_after_s,
        idempotency_key=idempotency_key,
    )
