"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``.

Written by hand next to the routes, not generated: the schemas state the contract (integer
money in int64, id patterns, closed objects), and the schemathesis and response-validation
tests hold the routes to it. Keep it in step with ``server/api/_app.py``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ledger import (
    ALERTS_PER_WALLET_MAX,
    AMOUNT_MAX,
    BATCH_ITEMS_MAX,
    DESCRIPTION_CHARS_MAX,
    SCALE_MAX,
    SEARCH_METADATA_FILTERS_MAX,
    SEARCH_METADATA_VALUE_CHARS_MAX,
    TransactionType,
)
from server.api._render import EVENT_TYPES

ID = {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,64}$"}
USER_ID = {"type": "string", "pattern": r"^(?!treasury:)[A-Za-z0-9_.:-]{1,64}$"}
ASSET_CODE = {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,64}$"}
AMOUNT = {"type": "integer", "minimum": 1, "maximum": AMOUNT_MAX}
BALANCE = {"type": "integer", "minimum": -(2**63), "maximum": AMOUNT_MAX}
TIMESTAMP = {"type": "string", "description": "RFC 3339, UTC"}
METADATA = {"type": "object", "description": "free-form JSON object, at most 4 KiB"}
DESCRIPTION = {"type": ["string", "null"], "maxLength": DESCRIPTION_CHARS_MAX}
OVERDRAFT_LIMIT = {"type": "integer", "minimum": 0, "maximum": AMOUNT_MAX,
                   "description": "available may go down to minus this (minor units; 0: never negative)"}
SPEND_LIMIT = {"type": ["integer", "null"], "minimum": 1, "maximum": AMOUNT_MAX,
               "description": "outgoing money per UTC window (minor units); null: no limit"}
SPEND_LIMITS = {"type": ["object", "null"], "additionalProperties": False,
                "properties": {"daily": SPEND_LIMIT, "monthly": SPEND_LIMIT},
                "description": "absent keys stay as they are (PATCH) or have no limit (create); null: no limits"}
TRANSACTION_TYPES = [member.label for member in TransactionType]

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "code", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "code": {"type": "string"},
            "detail": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    },
    "Asset": {
        "type": "object",
        "required": ["code", "scale", "treasury_wallet_id", "created_at"],
        "properties": {
            "code": {"type": "string"}, "scale": {"type": "integer"},
            "treasury_wallet_id": {"type": "string"}, "created_at": TIMESTAMP,
        },
    },
    "Wallet": {
        "type": "object",
        "required": ["id", "owner_id", "asset", "balance", "held", "available", "status", "metadata",
                     "created_at", "updated_at", "overdraft_limit", "spend_limits", "spent"],
        "properties": {
            "id": {"type": "string"}, "owner_id": {"type": "string"}, "asset": {"type": "string"},
            "balance": BALANCE, "held": {"type": "integer", "minimum": 0}, "available": BALANCE,
            "status": {"enum": ["active", "frozen", "closed"]}, "metadata": {"type": "object"},
            "created_at": TIMESTAMP, "updated_at": TIMESTAMP,
            "overdraft_limit": {"type": "integer", "minimum": 0, "maximum": AMOUNT_MAX},
            "spend_limits": {
                "type": "object", "required": ["daily", "monthly"],
                "properties": {"daily": {"type": ["integer", "null"], "minimum": 1},
                               "monthly": {"type": ["integer", "null"], "minimum": 1}},
            },
            "spent": {
                "type": "object", "required": ["daily", "monthly"],
                "description": "outgoing money in the current UTC day and month (the ledger's clock)",
                "properties": {"daily": {"type": "integer", "minimum": 0},
                               "monthly": {"type": "integer", "minimum": 0}},
            },
        },
    },
    "Transaction": {
        "type": "object",
        "required": ["id", "type", "status", "from_wallet_id", "to_wallet_id", "asset", "amount",
                     "description", "metadata", "created_at", "lsn"],
        "properties": {
            "id": {"type": "string"}, "type": {"enum": TRANSACTION_TYPES},
            "status": {"enum": ["posted", "pending", "voided", "failed"]},
            "from_wallet_id": {"type": "string"}, "to_wallet_id": {"type": "string"},
            "asset": {"type": "string"}, "amount": AMOUNT, "description": {"type": ["string", "null"]},
            "metadata": {"type": "object"}, "created_at": TIMESTAMP, "lsn": {"type": "integer", "minimum": 1},
            "refunded_amount": {"type": "integer", "minimum": 0,
                                "description": "what refunds of this transaction sent back so far (0 when "
                                               "none; the answer of the request that made it shows 0)"},
            "refund_of": {"type": "string", "description": "refunds only: the refunded transaction"},
        },
    },
    "Event": {
        "type": "object",
        "required": ["lsn", "type", "created_at", "data"],
        "properties": {
            "lsn": {"type": "integer", "minimum": 1},
            "type": {"enum": list(EVENT_TYPES)},
            "created_at": TIMESTAMP,
            "data": {"type": "object", "description": "by type: a transaction, a wallet, an alert, or for "
                                                      "alert.triggered an AlertTriggered"},
        },
    },
    "Alert": {
        "type": "object",
        "description": "A balance alert: exactly one of below and above holds the threshold.",
        "required": ["id", "wallet_id", "field", "state", "created_at"],
        "properties": {
            "id": {"type": "string"}, "wallet_id": {"type": "string"}, "field": {"enum": ["available", "balance"]},
            "below": BALANCE, "above": BALANCE, "state": {"enum": ["armed", "triggered"]}, "created_at": TIMESTAMP,
        },
    },
    "AlertTriggered": {
        "type": "object",
        "description": "The data of an alert.triggered event: the alert's condition became true through "
                       "the change made by transaction_id, which left field at value. Recorded in the same "
                       "step as that change; once per crossing.",
        "required": ["alert_id", "wallet_id", "field", "direction", "threshold", "value", "transaction_id"],
        "properties": {
            "alert_id": {"type": "string"}, "wallet_id": {"type": "string"},
            "field": {"enum": ["available", "balance"]}, "direction": {"enum": ["below", "above"]},
            "threshold": BALANCE, "value": BALANCE, "transaction_id": {"type": "string"},
        },
    },
    "Webhook": {
        "type": "object",
        "required": ["id", "url", "events", "status", "disabled_reason", "failing_since", "acknowledged_lsn",
                     "oldest_available_lsn", "created_at"],
        "properties": {
            "id": {"type": "string", "pattern": "^wh_"},
            "url": {"type": "string", "maxLength": 2048},
            "events": {"type": "array", "items": {"type": "string"}},
            "status": {"enum": ["enabled", "disabled"]},
            "disabled_reason": {"enum": [None, "failing", "events_compacted"],
                                "description": "why a disabled endpoint was disabled"},
            "failing_since": {"type": ["string", "null"], "description": "start of the current streak of failures"},
            "acknowledged_lsn": {"type": "integer", "minimum": 0,
                                 "description": "every event up to this LSN was acknowledged (2xx) or not subscribed"},
            "oldest_available_lsn": {"type": ["integer", "null"],
                                     "description": "with events_compacted: the oldest LSN the log still had"},
            "created_at": TIMESTAMP,
            "secret": {"type": "string", "pattern": "^whsec_",
                       "description": "only in the answer to its creation: the signing secret"},
        },
    },
    "WebhookDelivery": {
        "type": "object",
        "required": ["event_id", "event_type", "attempt", "status_code", "error", "duration_ms", "at"],
        "properties": {
            "event_id": {"type": "string", "description": "the webhook-id header (evt_<lsn>_<index>)"},
            "event_type": {"type": "string"}, "attempt": {"type": "integer", "minimum": 0},
            "status_code": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]},
            "duration_ms": {"type": "integer", "minimum": 0}, "at": TIMESTAMP,
        },
    },
    "Withdrawal": {
        "type": "object",
        "required": ["id", "wallet_id", "amount", "asset", "status", "attempts", "destination", "last_error",
                     "bank_reference", "next_attempt_at", "created_at", "updated_at"],
        "properties": {
            "id": {"type": "string"}, "wallet_id": {"type": "string"}, "amount": AMOUNT,
            "asset": {"type": "string"},
            "status": {"enum": ["pending", "processing", "completed", "failed", "dead"]},
            "attempts": {"type": "integer", "minimum": 0}, "destination": {"type": "object"},
            "last_error": {"type": ["string", "null"]}, "bank_reference": {"type": ["string", "null"]},
            "next_attempt_at": {"type": ["string", "null"]}, "created_at": TIMESTAMP, "updated_at": TIMESTAMP,
        },
    },
    "BatchTransfer": {
        "type": "object",
        "required": ["idempotency_key", "from_wallet_id", "to_wallet_id", "amount"],
        "additionalProperties": False,
        "properties": {
            "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[ -~]+$",
                                "description": "this item's own key (distinct within the batch)"},
            "from_wallet_id": USER_ID, "to_wallet_id": USER_ID, "amount": AMOUNT,
            "description": DESCRIPTION, "metadata": METADATA,
        },
    },
    "BatchRequest": {
        "type": "object",
        "required": ["atomic", "transfers"],
        "additionalProperties": False,
        "properties": {
            "atomic": {"type": "boolean", "description": "all items posted, or none (422 batch_failed)"},
            "transfers": {"type": "array", "minItems": 1, "maxItems": BATCH_ITEMS_MAX,
                          "items": {"$ref": "#/components/schemas/BatchTransfer"}},
        },
    },
    "BatchResults": {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "description": "one per item, in request order",
                "items": {
                    "oneOf": [
                        {"type": "object", "required": ["status", "transaction"],
                         "properties": {"status": {"const": 201},
                                        "transaction": {"$ref": "#/components/schemas/Transaction"}}},
                        {"type": "object", "required": ["status", "error"],
                         "properties": {"status": {"type": "integer", "minimum": 400, "maximum": 499},
                                        "error": {"$ref": "#/components/schemas/Problem"}}},
                    ]
                },
            }
        },
    },
    "BatchFailed": {
        "allOf": [
            {"$ref": "#/components/schemas/Problem"},
            {"type": "object", "required": ["index", "error"],
             "properties": {"code": {"const": "batch_failed"}, "index": {"type": "integer", "minimum": 0},
                            "error": {"$ref": "#/components/schemas/Problem"}}},
        ],
    },
    "Entry": {
        "type": "object",
        "required": ["transaction_id", "type", "status", "direction", "amount", "balance_after",
                     "counterparty_wallet_id", "description", "created_at", "lsn"],
        "properties": {
            "transaction_id": {"type": "string"}, "type": {"enum": TRANSACTION_TYPES},
            "status": {"enum": ["posted", "pending", "voided", "failed"]},
            "direction": {"enum": ["debit", "credit"]}, "amount": AMOUNT, "balance_after": BALANCE,
            "counterparty_wallet_id": {"type": "string"}, "description": {"type": ["string", "null"]},
            "created_at": TIMESTAMP, "lsn": {"type": "integer", "minimum": 1},
            "refunded_amount": {"type": "integer", "minimum": 0,
                                "description": "what refunds of the entry's transaction sent back so far"},
            "refund_of": {"type": "string", "description": "refunds only: the refunded transaction"},
        },
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problems(*statuses: int) -> dict[str, Any]:
    responses = {}
    for status in sorted({400, 401, 429, 503, *statuses}):
        responses[str(status)] = {
            "description": "problem",
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
    return responses


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": properties, "required": required,
                           "additionalProperties": False}
            }
        },
    }


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": True,
    "description": "Scoped to the caller, kept 24 hours. The same key and body get the original answer again: "
                   "a success, or a rejection the ledger decided (422, 404 for a wallet named in the body, 409 "
                   "such as wallet_frozen), even if the request would pass now. Another body under the key is 409 "
                   "idempotency_key_reused. 400, 401, 403, 413, 415, 429 and 503 are not recorded.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[ -~]+$"},
}
OPTIONAL_KEY = {**IDEMPOTENCY_KEY, "required": False,
                "description": "Optional. On POST /v1/wallets it works as on the money routes; on a batch it is "
                               "checked but each item's own idempotency_key is what makes it safe to retry."}


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _page(item: str) -> dict[str, Any]:
    return {
        "type": "object", "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": _ref(item)}, "next_cursor": {"type": ["string", "null"]}},
    }


HOLD = {"type": "object", "properties": {"timeout_s": {"type": "integer", "minimum": 1, "maximum": 7 * 24 * 3600}},
        "required": ["timeout_s"], "additionalProperties": False}
LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000})
CURSOR = _query("cursor", {"type": "string"})


# Every operation's tag, by the resource its path names (the first match wins), and the tags'
# order and descriptions in the document (Swagger UI groups operations by them).
TAGS = [
    ("/v1/assets", "assets", "Currencies and their treasury wallets"),
    ("/v1/tokens", "tokens", "User tokens (admin)"),
    ("/v1/wallets", "wallets", "Wallets, balances and statements"),
    ("/v1/deposits", "deposits", "Money in from an asset's treasury (admin)"),
    ("/v1/transfers", "transfers", "Transfers, holds and batches"),
    ("/v1/withdrawals", "withdrawals", "Money out to a bank, paid asynchronously"),
    ("/v1/transactions", "transactions", "Transactions by id, and the search over all of them"),
    ("/v1/alerts", "alerts", "Balance alerts: fire once when a wallet's available or balance crosses a threshold"),
    ("/v1/events", "events", "The committed event feed (admin)"),
    ("/v1/webhooks", "webhooks", "Webhook endpoints: events POSTed as they commit, signed (admin)"),
    ("/v1/admin", "admin", "Operator actions (admin)"),
    ("/", "service", "Health, readiness and where the documentation is"),
]


def _tag(path: str) -> str:
    for prefix, name, _ in TAGS:
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return name
    raise AssertionError(f"no tag for {path}")


# The summaries not written next to their operation in ``build`` (shared shapes, short ones).
SUMMARIES = {
    "index": "Where the documentation is: /docs and /openapi.json",
    "health": "The process runs (no authentication)",
    "ready": "Recovery finished and the ledger serves (no authentication)",
    "listAssets": "List assets",
    "revokeToken": "Revoke a user token by its prefix (admin)",
    "createWallet": "Create a wallet for an owner in an asset (limits: admin only)",
    "listWallets": "List wallets, by owner or asset, in creation order",
    "getWallet": "Get a wallet: balance, held, available, status",
    "freezeWallet": "Freeze a wallet: it can receive but not send (admin)",
    "unfreezeWallet": "Unfreeze a frozen wallet (admin)",
    "closeWallet": "Close a wallet with zero balance and no holds (admin)",
    "updateWallet": "Set a wallet's overdraft limit, spend limits or metadata (admin)",
    "walletBalance": "A wallet's balance, now or as of a past time",
    "walletTransactions": "A wallet's statement: its entries, newest first",
    "listWithdrawals": "List withdrawals, by status",
    "getWithdrawal": "Get a withdrawal: status, attempts, bank reference",
    "getTransaction": "Get a transaction by id",
}


async def index(request: Request) -> Response:
    """``GET /``: no API lives here, so say where the documentation is instead of a bare 404."""
    return JSONResponse({
        "name": "Wallet ledger",
        "docs": "/docs",
        "openapi": "/openapi.json",
        "health": "/health",
        "ready": "/ready",
        "detail": "The HTTP API lives under /v1/ (Bearer token); /docs describes every operation.",
    })


def build() -> dict[str, Any]:
    wallet_status = {
        "parameters": [_path_id("wallet_id")],
        "responses": {"200": _json(_ref("Wallet"), "the wallet"), **_problems(403, 404, 409)},
    }
    paths: dict[str, Any] = {
        "/": {"get": {"operationId": "index", "security": [],
                      "responses": {"200": _json({"type": "object", "required": ["docs", "openapi"],
                                                  "properties": {"docs": {"type": "string"},
                                                                 "openapi": {"type": "string"}}},
                                                 "where the documentation is")}}},
        "/health": {"get": {"operationId": "health", "security": [],
                            "responses": {"200": _json({"type": "object"}, "the process runs")}}},
        "/ready": {"get": {"operationId": "ready", "security": [],
                           "responses": {"200": _json({"type": "object"}, "serving"),
                                         "503": _json({"type": "object"}, "recovering or failed")}}},
        "/v1/assets": {
            "post": {
                "operationId": "createAsset", "summary": "Create an asset (admin)",
                "requestBody": _body({"code": ASSET_CODE, "scale": {"type": "integer", "minimum": 0, "maximum": SCALE_MAX}},
                                     ["code", "scale"]),
                "responses": {"201": _json(_ref("Asset"), "created"), "200": _json(_ref("Asset"), "already there"),
                              **_problems(403, 409, 413, 415)},
            },
            "get": {"operationId": "listAssets",
                    "responses": {"200": _json({"type": "object", "required": ["items"],
                                                "properties": {"items": {"type": "array", "items": _ref("Asset")}}},
                                               "assets"), **_problems()}},
        },
        "/v1/tokens": {
            "post": {
                "operationId": "createToken", "summary": "Create a user token (admin); shown once",
                "requestBody": _body({"owner_id": USER_ID}, ["owner_id"]),
                "responses": {"201": _json({"type": "object", "required": ["token", "prefix", "owner_id"],
                                            "properties": {"token": {"type": "string"}, "prefix": {"type": "string"},
                                                           "owner_id": {"type": "string"}}}, "the token"),
                              **_problems(403, 409, 413, 415)},
            }
        },
        "/v1/tokens/{prefix}": {
            "delete": {"operationId": "revokeToken", "parameters": [_path_id("prefix")],
                       "responses": {"200": _json({"type": "object"}, "revoked"), **_problems(403, 404)}}
        },
        "/v1/wallets": {
            "post": {
                "operationId": "createWallet", "parameters": [OPTIONAL_KEY],
                "requestBody": _body({"id": USER_ID, "owner_id": USER_ID, "asset": ASSET_CODE, "metadata": METADATA,
                                      "overdraft_limit": OVERDRAFT_LIMIT, "spend_limits": SPEND_LIMITS},
                                     ["owner_id", "asset"]),
                "responses": {"201": _json(_ref("Wallet"), "created"), "200": _json(_ref("Wallet"), "the same wallet again"),
                              **_problems(403, 409, 413, 415, 422)},
            },
            "get": {
                "operationId": "listWallets",
                "parameters": [_query("owner_id", ID), _query("asset", ID), LIMIT, CURSOR],
                "responses": {"200": _json(_page("Wallet"), "a page, in creation order"), **_problems(403)},
            },
        },
        "/v1/wallets/{wallet_id}": {
            "get": {"operationId": "getWallet", "parameters": [_path_id("wallet_id")],
                    "responses": {"200": _json(_ref("Wallet"), "the wallet"), **_problems(403, 404)}},
            "patch": {
                "operationId": "updateWallet", "parameters": [_path_id("wallet_id")],
                "requestBody": _body({"overdraft_limit": OVERDRAFT_LIMIT, "spend_limits": SPEND_LIMITS,
                                      "metadata": {**METADATA, "type": ["object", "null"]}}, []),
                "responses": {"200": _json(_ref("Wallet"), "the wallet, changed"),
                              **_problems(403, 404, 409, 413, 415)},
            },
        },
        "/v1/wallets/{wallet_id}/freeze": {"post": {"operationId": "freezeWallet", **wallet_status}},
        "/v1/wallets/{wallet_id}/unfreeze": {"post": {"operationId": "unfreezeWallet", **wallet_status}},
        "/v1/wallets/{wallet_id}/close": {"post": {"operationId": "closeWallet", **wallet_status}},
        "/v1/wallets/{wallet_id}/balance": {
            "get": {
                "operationId": "walletBalance", "parameters": [_path_id("wallet_id"), _query("as_of", TIMESTAMP)],
                "responses": {"200": _json({"type": "object", "required": ["wallet_id", "balance", "as_of"],
                                            "properties": {"wallet_id": {"type": "string"}, "balance": BALANCE,
                                                           "as_of": {"type": ["string", "null"]}}}, "the balance"),
                              **_problems(403, 404)},
            }
        },
        "/v1/wallets/{wallet_id}/transactions": {
            "get": {
                "operationId": "walletTransactions",
                "parameters": [_path_id("wallet_id"), _query("type", {"enum": TRANSACTION_TYPES}),
                               _query("status", {"enum": ["posted", "pending", "voided", "failed"]}),
                               _query("since", TIMESTAMP), _query("until", TIMESTAMP), LIMIT, CURSOR],
                "responses": {"200": _json(_page("Entry"), "newest first"), **_problems(403, 404)},
            }
        },
        "/v1/deposits": {
            "post": {
                "operationId": "deposit", "summary": "Deposit from the asset's treasury (admin)",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": _body({"wallet_id": USER_ID, "amount": AMOUNT, "description": DESCRIPTION,
                                      "metadata": METADATA}, ["wallet_id", "amount"]),
                "responses": {"201": _json(_ref("Transaction"), "posted"), **_problems(403, 404, 409, 413, 415, 422)},
            }
        },
        "/v1/transfers": {
            "post": {
                "operationId": "transfer", "parameters": [IDEMPOTENCY_KEY],
                "summary": "Transfer between wallets; with hold, a pending transfer to capture or void",
                "requestBody": _body({"from_wallet_id": USER_ID, "to_wallet_id": USER_ID, "amount": AMOUNT,
                                      "description": DESCRIPTION, "metadata": METADATA, "hold": HOLD},
                                     ["from_wallet_id", "to_wallet_id", "amount"]),
                "responses": {"201": _json(_ref("Transaction"), "posted (pending with hold)"),
                              **_problems(403, 404, 409, 413, 415, 422)},
            }
        },
        "/v1/transfers/{transaction_id}/capture": {
            "post": {
                "operationId": "captureTransfer", "parameters": [_path_id("transaction_id"), IDEMPOTENCY_KEY],
                "summary": "Post a pending transfer (all of it, or amount; the rest is released)",
                "requestBody": {**_body({"amount": AMOUNT}, []), "required": False},
                "responses": {"200": _json(_ref("Transaction"), "posted"),
                              **_problems(403, 404, 409, 413, 415, 422)},
            }
        },
        "/v1/transfers/{transaction_id}/void": {
            "post": {
                "operationId": "voidTransfer", "parameters": [_path_id("transaction_id"), IDEMPOTENCY_KEY],
                "summary": "Release a pending transfer",
                "requestBody": {**_body({}, []), "required": False},
                "responses": {"200": _json(_ref("Transaction"), "voided"), **_problems(403, 404, 409, 413, 415)},
            }
        },
        "/v1/withdrawals": {
            "post": {
                "operationId": "createWithdrawal", "parameters": [IDEMPOTENCY_KEY],
                "summary": "Hold the amount now and pay it out to the bank asynchronously",
                "requestBody": _body({"wallet_id": USER_ID, "amount": AMOUNT,
                                      "destination": {"type": "object", "minProperties": 1}},
                                     ["wallet_id", "amount", "destination"]),
                "responses": {"202": _json(_ref("Withdrawal"), "accepted, pending"),
                              **_problems(403, 404, 409, 413, 415, 422)},
            },
            "get": {
                "operationId": "listWithdrawals",
                "parameters": [_query("status", {"enum": ["pending", "processing", "completed", "failed", "dead"]}),
                               LIMIT, CURSOR],
                "responses": {"200": _json(_page("Withdrawal"), "withdrawals, oldest first"), **_problems()},
            },
        },
        "/v1/withdrawals/{withdrawal_id}": {
            "get": {"operationId": "getWithdrawal", "parameters": [_path_id("withdrawal_id")],
                    "responses": {"200": _json(_ref("Withdrawal"), "the withdrawal"), **_problems(403, 404)}}
        },
        "/v1/wallets/{wallet_id}/alerts": {
            "post": {
                "operationId": "createAlert", "tags": ["alerts"], "parameters": [_path_id("wallet_id")],
                "summary": "Watch a wallet's available or balance: fire once per crossing of a threshold",
                "description": (
                    "Exactly one of below (fires when the field becomes < below) and above (> above), any "
                    "int64. Admin, or the wallet's owner. The alert starts triggered when its condition "
                    "already holds, and then fires only after the condition was false again. At most "
                    f"{ALERTS_PER_WALLET_MAX} alerts per wallet (409 alert_limit_reached)."
                ),
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": False, "required": ["field"],
                        "properties": {"field": {"enum": ["available", "balance"]}, "below": BALANCE,
                                       "above": BALANCE},
                        "oneOf": [{"required": ["below"]}, {"required": ["above"]}],
                    }}},
                },
                "responses": {"201": _json(_ref("Alert"), "created"), **_problems(403, 404, 409, 413, 415)},
            },
            "get": {
                "operationId": "listAlerts", "tags": ["alerts"], "parameters": [_path_id("wallet_id")],
                "summary": "A wallet's alerts, oldest first, with their state",
                "responses": {"200": _json({"type": "object", "required": ["items"],
                                            "properties": {"items": {"type": "array", "items": _ref("Alert")}}},
                                           "the wallet's alerts"), **_problems(403, 404)},
            },
        },
        "/v1/alerts/{alert_id}": {
            "delete": {
                "operationId": "deleteAlert", "parameters": [_path_id("alert_id")],
                "summary": "Delete an alert (admin, or the owner of its wallet)",
                "responses": {"200": _json({"type": "object", "required": ["id", "wallet_id", "deleted"],
                                            "properties": {"id": {"type": "string"}, "wallet_id": {"type": "string"},
                                                           "deleted": {"const": True}}}, "deleted"),
                              **_problems(403, 404, 413, 415)},
            }
        },
        "/v1/withdrawals/{withdrawal_id}/retry": {
            "post": {
                "operationId": "retryWithdrawal", "parameters": [_path_id("withdrawal_id")],
                "summary": "Re-queue a dead withdrawal (admin)",
                "requestBody": {**_body({}, []), "required": False},
                "responses": {"200": _json(_ref("Withdrawal"), "pending again"),
                              **_problems(403, 404, 409, 413, 415)},
            }
        },
        "/v1/transfers/batch": {
            "post": {
                "operationId": "transferBatch",
                "summary": f"Up to {BATCH_ITEMS_MAX} transfers in one request, each with its own idempotency key",
                "description": (
                    "JSON or MessagePack (Content-Type: application/msgpack; Accept: application/msgpack "
                    "for a MessagePack answer), body at most 16 MiB. Not atomic: every item is answered "
                    "in order with its own status (201 and the transaction, or its problem; a shape error "
                    "is that item's 400). Atomic: all items are posted, or none and 422 batch_failed names "
                    "the first failing item; a shape error anywhere is 400 for the request, and a key of "
                    "an atomic batch still in progress (cluster mode, senders in several ledger groups) "
                    "409 request_in_progress. An "
                    "Idempotency-Key header is accepted but not needed: each item's key makes a retry safe."
                ),
                "parameters": [OPTIONAL_KEY],
                "requestBody": {
                    "required": True,
                    "content": {media: {"schema": _ref("BatchRequest")}
                                for media in ("application/json", "application/msgpack")},
                },
                "responses": {
                    "200": {"description": "every item's answer, in request order",
                            "content": {media: {"schema": _ref("BatchResults")}
                                        for media in ("application/json", "application/msgpack")}},
                    **_problems(413, 415),
                    "422": {"description": "an atomic batch failed: nothing was posted",
                            "content": {"application/problem+json": {"schema": _ref("BatchFailed")}}},
                },
            }
        },
        "/v1/transactions": {
            "get": {
                "operationId": "searchTransactions",
                "summary": "Search transactions, newest first: by wallet, type, status, time, amount and metadata",
                "description": (
                    "Filters combine with AND. `metadata.<key>=<value>` (e.g. `?metadata.order_id=A-17`) "
                    "matches a transaction whose metadata holds that string under that top-level key, "
                    f"exactly; repeat it with other keys, at most {SEARCH_METADATA_FILTERS_MAX}. A key is "
                    "1-64 of A-Z a-z 0-9 _ -, a value at most "
                    f"{SEARCH_METADATA_VALUE_CHARS_MAX} characters (longer stored values never match). "
                    "`since`/`until` and the amounts are inclusive. An admin token sees every transaction; "
                    "a user token those from or to a wallet of its owner (`wallet_id` of another owner's "
                    "wallet: 403; of no wallet: 404). Pages never skip or repeat a transaction while new "
                    "ones are written. A page examines a bounded number of rows: when the filters match "
                    "rarely and are not indexed (`min_amount`/`max_amount`), it may hold fewer than `limit` "
                    "items, even none, with a `next_cursor` to go on; only `next_cursor: null` means the "
                    "end. Every bad parameter is listed in one 400."
                ),
                "parameters": [_query("wallet_id", ID),
                               _query("type", {"enum": TRANSACTION_TYPES}),
                               _query("status", {"enum": ["posted", "pending", "voided", "failed"]}),
                               _query("since", TIMESTAMP), _query("until", TIMESTAMP),
                               _query("min_amount", AMOUNT), _query("max_amount", AMOUNT), LIMIT, CURSOR],
                "responses": {"200": _json(_page("Transaction"), "newest first"), **_problems(403, 404)},
            }
        },
        "/v1/transactions/{transaction_id}": {
            "get": {"operationId": "getTransaction", "parameters": [_path_id("transaction_id")],
                    "responses": {"200": _json(_ref("Transaction"), "the transaction"), **_problems(403, 404)}}
        },
        "/v1/transactions/{transaction_id}/refund": {
            "post": {
                "operationId": "refundTransaction", "parameters": [_path_id("transaction_id"), IDEMPOTENCY_KEY],
                "summary": "Send back (part of) a posted deposit or transfer, from its receiver to its sender",
                "description": (
                    "Admin, or the owner of the wallet that received the original. Without `amount`, "
                    "what is left to refund. Refundable: posted deposits (back to the treasury) and "
                    "transfers, captured holds up to the captured amount. The refunds of a transaction "
                    "never sum past its amount: `422 refund_exceeds_remaining` (the detail says what is "
                    "left). A withdrawal, a refund, a pending or voided hold: `409 not_refundable`. The "
                    "refunding wallet needs the funds (`422 insufficient_funds`) and must not be frozen or "
                    "closed; the wallet refunded to may be frozen, not closed."
                ),
                "requestBody": {**_body({"amount": AMOUNT, "description": DESCRIPTION, "metadata": METADATA}, []),
                                "required": False},
                "responses": {"201": _json(_ref("Transaction"), "the refund, posted"),
                              **_problems(403, 404, 409, 413, 415, 422)},
            }
        },
        "/v1/events": {
            "get": {
                "operationId": "events", "summary": "Committed events in LSN order, long-polling (admin)",
                "parameters": [_query("after", {"type": "integer", "minimum": 0}),
                               _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                               _query("wait", {"type": "number", "minimum": 0, "maximum": 30})],
                "responses": {"200": _json({"type": "object", "required": ["items", "next_after"],
                                            "properties": {"items": {"type": "array", "items": _ref("Event")},
                                                           "next_after": {"type": "integer"}}}, "events"),
                              **_problems(403, 410)},
            }
        },
        "/v1/events/stream": {
            "get": {
                "operationId": "eventStream", "summary": "The same as Server-Sent Events; id is the LSN (admin)",
                "parameters": [_query("after", {"type": "integer", "minimum": 0}),
                               {"name": "Last-Event-ID", "in": "header", "required": False,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "an endless event stream",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              **_problems(403, 410)},
            }
        },
        "/v1/webhooks": {
            "post": {
                "operationId": "createWebhook",
                "summary": "Register an endpoint for events; the answer shows its signing secret, once (admin)",
                "requestBody": _body({"url": {"type": "string", "minLength": 1, "maxLength": 2048,
                                              "description": "http:// or https://; without --allow-private-webhooks "
                                                             "it may not reach this host or its private network"},
                                      "events": {"type": "array", "minItems": 1, "maxItems": 32, "uniqueItems": True,
                                                 "items": {"enum": ["*", *EVENT_TYPES]}}},
                                     ["url", "events"]),
                "responses": {"201": _json(_ref("Webhook"), "created, enabled, with its secret"),
                              **_problems(403, 409, 413, 415, 422)},
            },
            "get": {"operationId": "listWebhooks", "summary": "List webhook endpoints (admin)",
                    "responses": {"200": _json({"type": "object", "required": ["items"],
                                                "properties": {"items": {"type": "array", "items": _ref("Webhook")}}},
                                               "every endpoint"), **_problems(403)}},
        },
        "/v1/webhooks/{webhook_id}": {
            "get": {"operationId": "getWebhook", "summary": "Get a webhook endpoint (never its secret) (admin)",
                    "parameters": [_path_id("webhook_id")],
                    "responses": {"200": _json(_ref("Webhook"), "the endpoint"), **_problems(403, 404)}},
            "delete": {"operationId": "deleteWebhook", "summary": "Delete a webhook endpoint: its deliveries stop (admin)",
                       "parameters": [_path_id("webhook_id")],
                       "responses": {"200": _json({"type": "object", "required": ["id", "deleted"],
                                                   "properties": {"id": {"type": "string"},
                                                                  "deleted": {"type": "boolean"}}}, "deleted"),
                                     **_problems(403, 404)}},
        },
        "/v1/webhooks/{webhook_id}/enable": {
            "post": {"operationId": "enableWebhook",
                     "summary": "Enable a disabled endpoint: delivery resumes after its last acknowledged event (admin)",
                     "parameters": [_path_id("webhook_id")],
                     "requestBody": {**_body({}, []), "required": False},
                     "responses": {"200": _json(_ref("Webhook"), "enabled"), **_problems(403, 404, 413, 415)}},
        },
        "/v1/webhooks/{webhook_id}/deliveries": {
            "get": {"operationId": "webhookDeliveries", "summary": "The endpoint's recent delivery attempts, newest first (admin)",
                    "parameters": [_path_id("webhook_id"), _query("limit", {"type": "integer", "minimum": 1,
                                                                            "maximum": 100})],
                    "responses": {"200": _json({"type": "object", "required": ["items"],
                                                "properties": {"items": {"type": "array",
                                                                         "items": _ref("WebhookDelivery")}}},
                                               "recent attempts"), **_problems(403, 404)}},
        },
        "/v1/admin/snapshots": {
            "post": {"operationId": "takeSnapshot", "summary": "Snapshot the durable ledger now (admin)",
                     "responses": {"201": _json({"type": "object"}, "taken"), "200": _json({"type": "object"}, "nothing new"),
                                   **_problems(403, 413, 415)}}
        },
        "/v1/admin/processes": {
            "get": {"operationId": "listProcesses",
                    "summary": "The server's processes: supervisor, ledger, history projector, webhook dispatcher and "
                               "HTTP workers (admin)",
                    "responses": {"200": _json({
                        "type": "object", "required": ["items"],
                        "properties": {"items": {"type": "array", "items": {
                            "type": "object", "required": ["role", "pid", "started_at", "restarts"],
                            "properties": {"role": {"type": "string"}, "pid": {"type": "integer"},
                                           "started_at": {"type": "string"}, "restarts": {"type": "integer"}},
                        }}},
                    }, "every process of this server"), **_problems(403)}}
        },
        "/v1/admin/cluster": {
            "get": {"operationId": "getCluster",
                    "summary": "Cluster mode: each group's owner and standbys, and the log's nodes (admin)",
                    "responses": {"200": _json({
                        "type": "object", "required": ["groups", "log"],
                        "properties": {
                            "groups": {"type": "array", "items": {
                                "type": "object", "required": ["group", "owner", "standbys", "lsn"],
                                "properties": {
                                    "group": {"type": "integer"},
                                    "owner": {"type": ["object", "null"], "required": ["pid", "node", "epoch"],
                                              "properties": {"pid": {"type": "integer"}, "node": {"type": "string"},
                                                             "epoch": {"type": "integer"}}},
                                    "standbys": {"type": "array", "items": {
                                        "type": "object", "required": ["pid", "node", "lsn"],
                                        "properties": {"pid": {"type": "integer"}, "node": {"type": "string"},
                                                       "lsn": {"type": "integer"}}}},
                                    "lsn": {"type": "integer"},
                                }}},
                            "log": {"type": "object", "required": ["nodes"], "properties": {"nodes": {
                                "type": "array", "items": {
                                    "type": "object", "required": ["pid", "url", "leader"],
                                    "properties": {"pid": {"type": "integer"}, "url": {"type": "string"},
                                                   "leader": {"type": "boolean"}}}}}},
                        },
                    }, "the cluster"), **_problems(403, 404)}}
        },
    }
    for path, item in paths.items():
        for operation in item.values():
            operation.setdefault("tags", [_tag(path)])
            if "summary" not in operation:
                operation["summary"] = SUMMARIES[operation["operationId"]]
    return {
        "openapi": "3.1.0",
        "tags": [{"name": name, "description": description} for _, name, description in TAGS],
        "info": {"title": "Wallet ledger", "version": "1", "description": "Durable, sharded wallet ledger."},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
