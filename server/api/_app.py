"""The HTTP application: the route table, over one resource class per module built from one
``Deps``, the handlers that turn exceptions into problem+json answers, and the middleware
(observing, gzip when asked). Runs in every HTTP worker, and in the one process of
``--workers 0``.

Nothing here touches a balance: every change goes through the ledger's actors and every 2xx is
sent only after the record is durable (the ledger's replies wait for the fsync). Reads wait
until the state they show is durable too.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from server import _openapi
from server._errors import ApiError, code_label, problem
from server._limits import BodyTimeout
from server._observe import Observe, shown_path
from server.api._alerts import Alerts
from server.api._assets import Assets
from server.api._batches import Batches
from server.api._deps import Deps
from server.api._events import Events
from server.api._operations import SWAGGER_UI_STATIC, Operations
from server.api._tokens import Tokens
from server.api._transactions import Transactions
from server.api._transfers import Transfers
from server.api._wallets import Wallets
from server.api._webhooks import Webhooks
from server.api._withdrawals import Withdrawals

log = logging.getLogger("server")

GZIP_MIN_BYTES = 1024
CLIENT_CLOSED_REQUEST = 499  # the status logged and counted for a client that left (nginx's)


def routes(deps: Deps) -> list[BaseRoute]:
    """Every route, in the order Starlette matches them (which also decides the ``Allow`` of a
    405: the first route whose path matches)."""
    operations = Operations(deps)
    assets = Assets(deps)
    tokens = Tokens(deps)
    wallets = Wallets(deps)
    transfers = Transfers(deps)
    batches = Batches(deps)
    withdrawals = Withdrawals(deps)
    alerts = Alerts(deps, wallets)
    transactions = Transactions(deps)
    events = Events(deps)
    webhooks = Webhooks(deps)
    return [
        Route("/", _openapi.index, methods=["GET"]),
        Route("/metrics", operations.scrape, methods=["GET"]),
        Route("/openapi.json", operations.openapi, methods=["GET"]),
        Route("/docs", operations.docs, methods=["GET"]),
        Mount("/docs/static", app=StaticFiles(directory=SWAGGER_UI_STATIC), name="swagger-ui"),
        Route("/health", operations.health, methods=["GET"]),
        Route("/ready", operations.ready, methods=["GET"]),
        Route("/v1/admin/snapshots", operations.take_snapshot, methods=["POST"]),
        Route("/v1/admin/processes", operations.processes, methods=["GET"]),
        Route("/v1/admin/cluster", operations.cluster, methods=["GET"]),
        Route("/v1/assets", assets.create_asset, methods=["POST"]),
        Route("/v1/assets", assets.list_assets, methods=["GET"]),
        Route("/v1/tokens", tokens.create_token, methods=["POST"]),
        Route("/v1/tokens/{prefix}", tokens.revoke_token, methods=["DELETE"]),
        Route("/v1/wallets", wallets.create_wallet, methods=["POST"]),
        Route("/v1/wallets", wallets.list_wallets, methods=["GET"]),
        Route("/v1/wallets/{wallet_id}", wallets.get_wallet, methods=["GET"]),
        Route("/v1/wallets/{wallet_id}", wallets.update_wallet, methods=["PATCH"]),
        Route("/v1/wallets/{wallet_id}/freeze", wallets.freeze, methods=["POST"]),
        Route("/v1/wallets/{wallet_id}/unfreeze", wallets.unfreeze, methods=["POST"]),
        Route("/v1/wallets/{wallet_id}/close", wallets.close, methods=["POST"]),
        Route("/v1/wallets/{wallet_id}/balance", wallets.balance, methods=["GET"]),
        Route("/v1/wallets/{wallet_id}/transactions", wallets.wallet_transactions, methods=["GET"]),
        Route("/v1/wallets/{wallet_id}/alerts", alerts.create_alert, methods=["POST"]),
        Route("/v1/wallets/{wallet_id}/alerts", alerts.list_alerts, methods=["GET"]),
        Route("/v1/alerts/{alert_id}", alerts.delete_alert, methods=["DELETE"]),
        Route("/v1/deposits", transfers.deposit, methods=["POST"]),
        Route("/v1/transfers", transfers.transfer, methods=["POST"]),
        Route("/v1/transfers/batch", batches.transfer_batch, methods=["POST"]),
        Route("/v1/transfers/{transaction_id}/capture", transfers.capture, methods=["POST"]),
        Route("/v1/transfers/{transaction_id}/void", transfers.void, methods=["POST"]),
        Route("/v1/withdrawals", withdrawals.create_withdrawal, methods=["POST"]),
        Route("/v1/withdrawals", withdrawals.list_withdrawals, methods=["GET"]),
        Route("/v1/withdrawals/{withdrawal_id}", withdrawals.get_withdrawal, methods=["GET"]),
        Route("/v1/withdrawals/{withdrawal_id}/retry", withdrawals.retry_withdrawal, methods=["POST"]),
        Route("/v1/transactions", transactions.search_transactions, methods=["GET"]),
        Route("/v1/transactions/{transaction_id}", transactions.get_transaction, methods=["GET"]),
        Route("/v1/transactions/{transaction_id}/refund", transfers.refund, methods=["POST"]),
        Route("/v1/events", events.events, methods=["GET"]),
        Route("/v1/events/stream", events.event_stream, methods=["GET"]),
        Route("/v1/webhooks", webhooks.create_webhook, methods=["POST"]),
        Route("/v1/webhooks", webhooks.list_webhooks, methods=["GET"]),
        Route("/v1/webhooks/{webhook_id}", webhooks.get_webhook, methods=["GET"]),
        Route("/v1/webhooks/{webhook_id}", webhooks.delete_webhook, methods=["DELETE"]),
        Route("/v1/webhooks/{webhook_id}/enable", webhooks.enable_webhook, methods=["POST"]),
        Route("/v1/webhooks/{webhook_id}/deliveries", webhooks.deliveries, methods=["GET"]),
    ]


def _not_found(request: Request, exc: Exception) -> ApiError:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return ApiError(
            405, "method_not_allowed", "Method not allowed",
            f"{request.method} is not allowed on {shown_path(request.url.path)}", headers=dict(exc.headers or {}),
        )
    return ApiError(exc.status_code, "not_found", "Not found", f"no route {request.method} {shown_path(request.url.path)}")


def build_app(deps: Deps, *, in_flight_max: int = 4096) -> Any:
    """The ASGI application: the routes inside the observing middleware (metrics, logs, ids)."""
    metrics = deps.metrics

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

    app = Starlette(
        routes=routes(deps),
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
