"""``wallet_client``: a typed Python client of the wallet ledger's HTTP API, shipped with the
service. ``WalletClient`` (blocking) and ``AsyncWalletClient`` (asyncio or trio) have one
method per route of the contract, make an ``Idempotency-Key`` for every money-moving call and
reuse it on retries (transport errors, 429, 503 with ``Retry-After``), walk cursor pages with
``iter_*`` methods, and raise problem answers as ``WalletError`` subclasses carrying ``code``.
``verify_webhook`` checks a webhook delivery's Standard Webhooks signature.

Example::

    from wallet_client import WalletClient

    with WalletClient("http://127.0.0.1:8080", token=token) as client:
        tx = client.transfer("alice-usd", "bob-usd", 12_50)
        print(tx.id, tx.status)

The package imports nothing of the server: it depends on httpx, anyio, msgpack and
standardwebhooks only.
"""

from wallet_client._async import AsyncWalletClient
from wallet_client._core import Call, new_key
from wallet_client._errors import (
    BatchFailed,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Gone,
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidRequest,
    NotFound,
    NotRefundable,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    RefundExceedsRemaining,
    RequestInProgress,
    ServerError,
    ServiceUnavailable,
    SpendLimitExceeded,
    TransferNotPending,
    Unauthorized,
    Unprocessable,
    WalletClientError,
    WalletClosed,
    WalletError,
    WalletFrozen,
)
from wallet_client._models import (
    Alert,
    Asset,
    Balance,
    BatchItem,
    BatchResult,
    BatchTransfer,
    Deleted,
    Delivery,
    Event,
    EventPage,
    Page,
    Process,
    Readiness,
    Snapshot,
    StatementEntry,
    Token,
    Transaction,
    Wallet,
    Webhook,
    Withdrawal,
)
from wallet_client._retry import RetryPolicy
from wallet_client._sync import WalletClient
from wallet_client._webhooks import WebhookVerificationError, sign_webhook, verify_webhook

__all__ = [
    "Alert",
    "Asset",
    "AsyncWalletClient",
    "Balance",
    "BatchFailed",
    "BatchItem",
    "BatchResult",
    "BatchTransfer",
    "Call",
    "Conflict",
    "ConnectionFailed",
    "Deleted",
    "Delivery",
    "Event",
    "EventPage",
    "Forbidden",
    "Gone",
    "IdempotencyKeyReused",
    "InsufficientFunds",
    "InvalidRequest",
    "NotFound",
    "NotRefundable",
    "Overloaded",
    "Page",
    "PayloadTooLarge",
    "Process",
    "RateLimited",
    "Readiness",
    "RefundExceedsRemaining",
    "RequestInProgress",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "Snapshot",
    "SpendLimitExceeded",
    "StatementEntry",
    "Token",
    "Transaction",
    "TransferNotPending",
    "Unauthorized",
    "Unprocessable",
    "Wallet",
    "WalletClient",
    "WalletClientError",
    "WalletClosed",
    "WalletError",
    "WalletFrozen",
    "Webhook",
    "WebhookVerificationError",
    "Withdrawal",
    "new_key",
    "sign_webhook",
    "verify_webhook",
]
