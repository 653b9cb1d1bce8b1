"""Every route of the contract (``API.md``), written once: each method builds a ``Call`` (or
``Pages`` for the ``iter_*`` walkers) and the ``endpoint`` / ``paginated`` descriptors make it a
method of both ``WalletClient`` (returns the result) and ``AsyncWalletClient`` (returns an
awaitable). Keep the order of the contract's sections.

Money-moving calls (deposit, transfer, capture, void, withdrawal, refund; a batch's items) take
an optional ``idempotency_key``; without one the client makes one. The key is fixed when the
call is built, so every retry of that call sends it again. Wallet creation sends a key too (the
server accepts one there), so a retried create never makes a second wallet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from wallet_client._core import Call, Pages, endpoint, paginated, query, segment
from wallet_client._models import (
    Alert,
    Asset,
    Balance,
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
    rfc3339,
)

EVENTS_FOLLOW_WAIT_S = 25.0  # a following iterator's long poll (the server allows up to 30 s)
UNSET: Any = object()  # "leave this field as it is" in update_wallet


def _page(parse: Any) -> Any:
    def read(data: Mapping[str, Any]) -> Page[Any]:
        return Page(items=[parse(item) for item in data["items"]], next_cursor=data.get("next_cursor"))
    return read


def _items(parse: Any) -> Any:
    def read(data: Mapping[str, Any]) -> list[Any]:
        return [parse(item) for item in data["items"]]
    return read


def _when(value: datetime | str | None) -> str | None:
    return None if value is None else rfc3339(value)


def _text(body: Any) -> str:
    return body if isinstance(body, str) else str(body)


def _same(body: Any) -> Any:
    return body


def _cursor_pages(first: Call[Page[Any]]) -> Pages[Any]:
    """Pages of a cursor listing: the same call with ``cursor`` set to the last page's
    ``next_cursor``, until it is ``None``."""
    base = [(name, value) for name, value in first.params if name != "cursor"]

    def following(page: Page[Any]) -> Call[Page[Any]] | None:
        if page.next_cursor is None:
            return None
        return Call(method=first.method, path=first.path, parse=first.parse,
                    params=(*base, ("cursor", page.next_cursor)))

    return Pages(first=first, items=lambda page: page.items, following=following)


class Operations:
    """The routes, shared by ``WalletClient`` and ``AsyncWalletClient``."""

    def _new_key(self) -> str:
        raise NotImplementedError

    def _key(self, given: str | None) -> str:
        return self._new_key() if given is None else given

    # -- operations --------------------------------------------------------------------------

    @endpoint
    def health(self) -> Call[dict[str, Any]]:
        """``GET /health``: ``{"status": "ok"}`` while the process runs."""
        return Call(method="GET", path="/health", parse=_same)

    @endpoint
    def ready(self) -> Call[Readiness]:
        """``GET /ready``: whether the server serves (a 503 during recovery is an answer here,
        ``ready=False``, not an error; it is not retried)."""
        return Call(method="GET", path="/ready", parse=Readiness.from_json, accept_statuses=frozenset({503}),
                    repeatable=False)

    @endpoint
    def metrics(self) -> Call[str]:
        """``GET /metrics``: the Prometheus text."""
        return Call(method="GET", path="/metrics", parse=_text)

    @endpoint
    def openapi(self) -> Call[dict[str, Any]]:
        """``GET /openapi.json``."""
        return Call(method="GET", path="/openapi.json", parse=_same)

    @endpoint
    def processes(self) -> Call[list[Process]]:
        """``GET /v1/admin/processes`` (admin): the server's processes."""
        return Call(method="GET", path="/v1/admin/processes", parse=_items(Process.from_json))

    @endpoint
    def take_snapshot(self) -> Call[Snapshot]:
        """``POST /v1/admin/snapshots`` (admin): snapshot the durable ledger now."""
        return Call(method="POST", path="/v1/admin/snapshots", parse=Snapshot.from_json, repeatable=True)

    @endpoint
    def cluster(self) -> Call[dict[str, Any]]:
        """``GET /v1/admin/cluster`` (admin, cluster mode): groups, owners, standbys, log nodes."""
        return Call(method="GET", path="/v1/admin/cluster", parse=_same)

    # -- tokens ------------------------------------------------------------------------------

    @endpoint
    def create_token(self, owner_id: str) -> Call[Token]:
        """``POST /v1/tokens`` (admin): a token acting for ``owner_id``, shown once. Not
        retried once sent (a second attempt would make a second token)."""
        return Call(method="POST", path="/v1/tokens", parse=Token.from_json, body={"owner_id": owner_id})

    @endpoint
    def revoke_token(self, prefix: str) -> Call[Deleted]:
        """``DELETE /v1/tokens/{prefix}`` (admin). A retried revoke whose first attempt went
        through answers ``NotFound`` (``token_not_found``)."""
        return Call(method="DELETE", path=f"/v1/tokens/{segment(prefix)}", parse=Deleted.from_json)

    # -- assets ------------------------------------------------------------------------------

    @endpoint
    def create_asset(self, code: str, scale: int) -> Call[Asset]:
        """``POST /v1/assets`` (admin): creating it again with the same scale is a no-op, so
        the call is repeatable; another scale raises ``Conflict`` (``asset_exists``)."""
        return Call(method="POST", path="/v1/assets", parse=Asset.from_json, body={"code": code, "scale": scale},
                    repeatable=True)

    @endpoint
    def list_assets(self) -> Call[list[Asset]]:
        """``GET /v1/assets``."""
        return Call(method="GET", path="/v1/assets", parse=_items(Asset.from_json))

    # -- wallets -----------------------------------------------------------------------------

    @endpoint
    def create_wallet(
        self, owner_id: str, asset: str, *, id: str | None = None, metadata: Mapping[str, Any] | None = None,
        overdraft_limit: int | None = None, spend_limits: Mapping[str, int | None] | None = None,
        idempotency_key: str | None = None,
    ) -> Call[Wallet]:
        """``POST /v1/wallets``: a wallet of ``owner_id`` in ``asset`` (``id`` made by the
        server when not given). The same id again with the same owner and asset answers the
        existing wallet. Sent with an ``Idempotency-Key`` (made when not given), so a retry
        never makes a second wallet."""
        body: dict[str, Any] = {"owner_id": owner_id, "asset": asset}
        if id is not None:
            body["id"] = id
        if metadata is not None:
            body["metadata"] = dict(metadata)
        if overdraft_limit is not None:
            body["overdraft_limit"] = overdraft_limit
        if spend_limits is not None:
            body["spend_limits"] = dict(spend_limits)
        return Call(method="POST", path="/v1/wallets", parse=Wallet.from_json, body=body,
                    idempotency_key=self._key(idempotency_key))

    @endpoint
    def get_wallet(self, wallet_id: str) -> Call[Wallet]:
        """``GET /v1/wallets/{id}``; ``NotFound`` (``wallet_not_found``)."""
        return Call(method="GET", path=f"/v1/wallets/{segment(wallet_id)}", parse=Wallet.from_json)

    @endpoint
    def list_wallets(
        self, *, owner_id: str | None = None, asset: str | None = None, limit: int | None = None,
        cursor: str | None = None,
    ) -> Call[Page[Wallet]]:
        """``GET /v1/wallets``: one page; ``iter_wallets`` walks them all."""
        return Call(method="GET", path="/v1/wallets", parse=_page(Wallet.from_json),
                    params=query(owner_id=owner_id, asset=asset, limit=limit, cursor=cursor))

    @paginated
    def iter_wallets(
        self, *, owner_id: str | None = None, asset: str | None = None, limit: int | None = None,
    ) -> Pages[Wallet]:
        """Every wallet matching the filters, page after page (``limit`` per request)."""
        return _cursor_pages(Operations.list_wallets.build(self, owner_id=owner_id, asset=asset, limit=limit))

    @endpoint
    def update_wallet(
        self, wallet_id: str, *, overdraft_limit: int | None = UNSET,
        spend_limits: Mapping[str, int | None] | None = UNSET, metadata: Mapping[str, Any] | None = UNSET,
    ) -> Call[Wallet]:
        """``PATCH /v1/wallets/{id}`` (admin): set the wallet's limits or metadata; fields not
        given are left as they are. Repeatable (it sets values)."""
        body: dict[str, Any] = {}
        if overdraft_limit is not UNSET:
            body["overdraft_limit"] = overdraft_limit
        if spend_limits is not UNSET:
            body["spend_limits"] = None if spend_limits is None else dict(spend_limits)
        if metadata is not UNSET:
            body["metadata"] = None if metadata is None else dict(metadata)
        return Call(method="PATCH", path=f"/v1/wallets/{segment(wallet_id)}", parse=Wallet.from_json, body=body,
                    repeatable=True)

    def _status(self, wallet_id: str, verb: str) -> Call[Wallet]:
        # Setting a status the wallet already has changes nothing: repeatable.
        return Call(method="POST", path=f"/v1/wallets/{segment(wallet_id)}/{verb}", parse=Wallet.from_json,
                    repeatable=True)

    @endpoint
    def freeze_wallet(self, wallet_id: str) -> Call[Wallet]:
        """``POST /v1/wallets/{id}/freeze`` (admin): it can receive but not send."""
        return self._status(wallet_id, "freeze")

    @endpoint
    def unfreeze_wallet(self, wallet_id: str) -> Call[Wallet]:
        """``POST /v1/wallets/{id}/unfreeze`` (admin)."""
        return self._status(wallet_id, "unfreeze")

    @endpoint
    def close_wallet(self, wallet_id: str) -> Call[Wallet]:
        """``POST /v1/wallets/{id}/close`` (admin): only an empty wallet without holds
        (``Conflict``, ``wallet_not_empty``)."""
        return self._status(wallet_id, "close")

    @endpoint
    def balance(self, wallet_id: str, *, as_of: datetime | str | None = None) -> Call[Balance]:
        """``GET /v1/wallets/{id}/balance``: the posted balance now, or at ``as_of``."""
        return Call(method="GET", path=f"/v1/wallets/{segment(wallet_id)}/balance", parse=Balance.from_json,
                    params=query(as_of=_when(as_of)))

    @endpoint
    def wallet_transactions(
        self, wallet_id: str, *, type: str | None = None, status: str | None = None,
        since: datetime | str | None = None, until: datetime | str | None = None, limit: int | None = None,
        cursor: str | None = None,
    ) -> Call[Page[StatementEntry]]:
        """``GET /v1/wallets/{id}/transactions``: one page of the wallet's history, newest
        first; ``iter_wallet_transactions`` walks every page."""
        return Call(method="GET", path=f"/v1/wallets/{segment(wallet_id)}/transactions",
                    parse=_page(StatementEntry.from_json),
                    params=query(type=type, status=status, since=_when(since), until=_when(until), limit=limit,
                                 cursor=cursor))

    @paginated
    def iter_wallet_transactions(
        self, wallet_id: str, *, type: str | None = None, status: str | None = None,
        since: datetime | str | None = None, until: datetime | str | None = None, limit: int | None = None,
    ) -> Pages[StatementEntry]:
        """Every entry of the wallet's history, newest first, ``limit`` per request. Pages never
        skip or repeat an entry, whatever is posted meanwhile."""
        return _cursor_pages(Operations.wallet_transactions.build(
            self, wallet_id, type=type, status=status, since=since, until=until, limit=limit))

    # -- money -------------------------------------------------------------------------------

    @endpoint
    def deposit(
        self, wallet_id: str, amount: int, *, description: str | None = None,
        metadata: Mapping[str, Any] | None = None, idempotency_key: str | None = None,
    ) -> Call[Transaction]:
        """``POST /v1/deposits`` (admin): ``amount`` minor units from the treasury into the wallet."""
        body = _money({"wallet_id": wallet_id, "amount": amount}, description, metadata)
        return Call(method="POST", path="/v1/deposits", parse=Transaction.from_json, body=body,
                    idempotency_key=self._key(idempotency_key))

    @endpoint
    def transfer(
        self, from_wallet_id: str, to_wallet_id: str, amount: int, *, description: str | None = None,
        metadata: Mapping[str, Any] | None = None, hold_timeout_s: int | None = None,
        idempotency_key: str | None = None,
    ) -> Call[Transaction]:
        """``POST /v1/transfers``: posted at once, or ``pending`` (a hold on the sender until
        ``capture``, ``void`` or ``hold_timeout_s`` seconds) when ``hold_timeout_s`` is given."""
        body = _money({"from_wallet_id": from_wallet_id, "to_wallet_id": to_wallet_id, "amount": amount},
                      description, metadata)
        if hold_timeout_s is not None:
            body["hold"] = {"timeout_s": hold_timeout_s}
        return Call(method="POST", path="/v1/transfers", parse=Transaction.from_json, body=body,
                    idempotency_key=self._key(idempotency_key))

    @endpoint
    def capture(
        self, transaction_id: str, *, amount: int | None = None, idempotency_key: str | None = None,
    ) -> Call[Transaction]:
        """``POST /v1/transfers/{id}/capture``: post a pending transfer (``amount`` below the
        held one posts that much and releases the rest)."""
        return Call(method="POST", path=f"/v1/transfers/{segment(transaction_id)}/capture",
                    parse=Transaction.from_json, body={} if amount is None else {"amount": amount},
                    idempotency_key=self._key(idempotency_key))

    @endpoint
    def void(self, transaction_id: str, *, idempotency_key: str | None = None) -> Call[Transaction]:
        """``POST /v1/transfers/{id}/void``: release a pending transfer's hold."""
        return Call(method="POST", path=f"/v1/transfers/{segment(transaction_id)}/void",
                    parse=Transaction.from_json, body={}, idempotency_key=self._key(idempotency_key))

    @endpoint
    def transfer_batch(
        self, transfers: Sequence[BatchTransfer | Mapping[str, Any]], *, atomic: bool = False,
        msgpack: bool = False,
    ) -> Call[BatchResult]:
        """``POST /v1/transfers/batch``: up to 8190 transfers in one request, each with its own
        idempotency key (made for items without one). Non-atomic: each item succeeds or fails
        alone (``BatchResult.items``). Atomic: all or nothing; a failure raises ``BatchFailed``
        naming the index. ``msgpack=True`` sends and receives MessagePack. Repeatable: the
        items' keys make a retried batch replay instead of posting again."""
        items: list[dict[str, Any]] = []
        keys: list[str] = []
        for transfer in transfers:
            if isinstance(transfer, BatchTransfer):
                item = _money({"from_wallet_id": transfer.from_wallet_id, "to_wallet_id": transfer.to_wallet_id,
                               "amount": transfer.amount}, transfer.description, transfer.metadata)
                key = self._key(transfer.idempotency_key)
            else:
                item = dict(transfer)
                key = self._key(item.get("idempotency_key"))
            item["idempotency_key"] = key
            items.append(item)
            keys.append(key)
        return Call(method="POST", path="/v1/transfers/batch", body={"atomic": atomic, "transfers": items},
                    parse=lambda data: BatchResult.from_json(data, keys), msgpack=msgpack, repeatable=True)

    @endpoint
    def refund(
        self, transaction_id: str, *, amount: int | None = None, description: str | None = None,
        metadata: Mapping[str, Any] | None = None, idempotency_key: str | None = None,
    ) -> Call[Transaction]:
        """``POST /v1/transactions/{id}/refund``: send back ``amount`` (default: what is left
        to refund) of a posted deposit or transfer."""
        body = _money({} if amount is None else {"amount": amount}, description, metadata)
        return Call(method="POST", path=f"/v1/transactions/{segment(transaction_id)}/refund",
                    parse=Transaction.from_json, body=body, idempotency_key=self._key(idempotency_key))

    @endpoint
    def get_transaction(self, transaction_id: str) -> Call[Transaction]:
        """``GET /v1/transactions/{id}``; ``NotFound`` (``transaction_not_found``)."""
        return Call(method="GET", path=f"/v1/transactions/{segment(transaction_id)}", parse=Transaction.from_json)

    @endpoint
    def search_transactions(
        self, *, wallet_id: str | None = None, type: str | None = None, status: str | None = None,
        since: datetime | str | None = None, until: datetime | str | None = None, min_amount: int | None = None,
        max_amount: int | None = None, metadata: Mapping[str, str] | None = None, limit: int | None = None,
        cursor: str | None = None,
    ) -> Call[Page[Transaction]]:
        """``GET /v1/transactions``: one page of the transactions matching every filter given,
        newest first (``metadata`` matches top-level values exactly); ``iter_transactions``
        walks every page."""
        params = query(wallet_id=wallet_id, type=type, status=status, since=_when(since), until=_when(until),
                       min_amount=min_amount, max_amount=max_amount)
        params += tuple((f"metadata.{key}", value) for key, value in (metadata or {}).items())
        params += query(limit=limit, cursor=cursor)
        return Call(method="GET", path="/v1/transactions", parse=_page(Transaction.from_json), params=params)

    @paginated
    def iter_transactions(
        self, *, wallet_id: str | None = None, type: str | None = None, status: str | None = None,
        since: datetime | str | None = None, until: datetime | str | None = None, min_amount: int | None = None,
        max_amount: int | None = None, metadata: Mapping[str, str] | None = None, limit: int | None = None,
    ) -> Pages[Transaction]:
        """Every transaction matching the filters (``search_transactions``), page after page."""
        return _cursor_pages(Operations.search_transactions.build(
            self, wallet_id=wallet_id, type=type, status=status, since=since, until=until, min_amount=min_amount,
            max_amount=max_amount, metadata=metadata, limit=limit))

    # -- withdrawals -------------------------------------------------------------------------

    @endpoint
    def create_withdrawal(
        self, wallet_id: str, amount: int, destination: Mapping[str, Any], *, idempotency_key: str | None = None,
    ) -> Call[Withdrawal]:
        """``POST /v1/withdrawals``: hold ``amount`` now and pay it out to ``destination``
        (status ``pending``; follow it with ``get_withdrawal``)."""
        return Call(method="POST", path="/v1/withdrawals", parse=Withdrawal.from_json,
                    body={"wallet_id": wallet_id, "amount": amount, "destination": dict(destination)},
                    idempotency_key=self._key(idempotency_key))

    @endpoint
    def get_withdrawal(self, withdrawal_id: str) -> Call[Withdrawal]:
        """``GET /v1/withdrawals/{id}``."""
        return Call(method="GET", path=f"/v1/withdrawals/{segment(withdrawal_id)}", parse=Withdrawal.from_json)

    @endpoint
    def list_withdrawals(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None,
    ) -> Call[Page[Withdrawal]]:
        """``GET /v1/withdrawals``: one page; ``iter_withdrawals`` walks them all."""
        return Call(method="GET", path="/v1/withdrawals", parse=_page(Withdrawal.from_json),
                    params=query(status=status, limit=limit, cursor=cursor))

    @paginated
    def iter_withdrawals(self, *, status: str | None = None, limit: int | None = None) -> Pages[Withdrawal]:
        """Every withdrawal (of ``status``), page after page."""
        return _cursor_pages(Operations.list_withdrawals.build(self, status=status, limit=limit))

    @endpoint
    def retry_withdrawal(self, withdrawal_id: str) -> Call[Withdrawal]:
        """``POST /v1/withdrawals/{id}/retry`` (admin): re-queue a ``dead`` withdrawal."""
        return Call(method="POST", path=f"/v1/withdrawals/{segment(withdrawal_id)}/retry",
                    parse=Withdrawal.from_json)

    # -- events ------------------------------------------------------------------------------

    @endpoint
    def events(self, *, after: int = 0, limit: int | None = None, wait: float | None = None) -> Call[EventPage]:
        """``GET /v1/events`` (admin): the committed events after LSN ``after``, waiting up to
        ``wait`` seconds for one when there is none yet. ``Gone`` when they were compacted away
        (``error.oldest_lsn``)."""
        return Call(method="GET", path="/v1/events", parse=EventPage.from_json,
                    params=query(after=after, limit=limit, wait=wait), extra_timeout_s=wait or 0.0)

    @paginated
    def iter_events(
        self, *, after: int = 0, limit: int | None = None, follow: bool = False, wait: float | None = None,
    ) -> Pages[Event]:
        """Every event after ``after``, in log order, following ``next_after``. It stops at
        the end of the feed, or with ``follow=True`` keeps long-polling (``wait`` seconds a
        request, default 25) for new events forever."""
        if follow and wait is None:
            wait = EVENTS_FOLLOW_WAIT_S
        first = Operations.events.build(self, after=after, limit=limit, wait=wait)

        def following(page: EventPage) -> Call[EventPage] | None:
            if not page.items and not follow:
                return None
            return Operations.events.build(self, after=page.next_after, limit=limit, wait=wait)

        return Pages(first=first, items=lambda page: page.items, following=following)

    # -- balance alerts ----------------------------------------------------------------------

    @endpoint
    def create_alert(
        self, wallet_id: str, field: str = "available", *, below: int | None = None, above: int | None = None,
    ) -> Call[Alert]:
        """``POST /v1/wallets/{id}/alerts``: an alert on ``field`` (``available`` or
        ``balance``) crossing ``below`` or ``above`` (exactly one). Not retried once sent (a
        second attempt would make a second alert)."""
        if (below is None) == (above is None):
            raise ValueError("give exactly one of below and above")
        body: dict[str, Any] = {"field": field}
        body["below" if below is not None else "above"] = below if below is not None else above
        return Call(method="POST", path=f"/v1/wallets/{segment(wallet_id)}/alerts", parse=Alert.from_json,
                    body=body)

    @endpoint
    def list_alerts(self, wallet_id: str) -> Call[list[Alert]]:
        """``GET /v1/wallets/{id}/alerts``."""
        return Call(method="GET", path=f"/v1/wallets/{segment(wallet_id)}/alerts", parse=_items(Alert.from_json))

    @endpoint
    def delete_alert(self, alert_id: str) -> Call[Deleted]:
        """``DELETE /v1/alerts/{id}``."""
        return Call(method="DELETE", path=f"/v1/alerts/{segment(alert_id)}", parse=Deleted.from_json)

    # -- webhooks ----------------------------------------------------------------------------

    @endpoint
    def create_webhook(self, url: str, events: Sequence[str] = ("*",)) -> Call[Webhook]:
        """``POST /v1/webhooks`` (admin): deliver ``events`` (types, or ``["*"]``) to ``url``.
        The answer's ``secret`` is shown only here. Not retried once sent."""
        return Call(method="POST", path="/v1/webhooks", parse=Webhook.from_json,
                    body={"url": url, "events": list(events)})

    @endpoint
    def list_webhooks(self) -> Call[list[Webhook]]:
        """``GET /v1/webhooks`` (admin)."""
        return Call(method="GET", path="/v1/webhooks", parse=_items(Webhook.from_json))

    @endpoint
    def get_webhook(self, webhook_id: str) -> Call[Webhook]:
        """``GET /v1/webhooks/{id}`` (admin)."""
        return Call(method="GET", path=f"/v1/webhooks/{segment(webhook_id)}", parse=Webhook.from_json)

    @endpoint
    def delete_webhook(self, webhook_id: str) -> Call[Deleted]:
        """``DELETE /v1/webhooks/{id}`` (admin)."""
        return Call(method="DELETE", path=f"/v1/webhooks/{segment(webhook_id)}", parse=Deleted.from_json)

    @endpoint
    def webhook_deliveries(self, webhook_id: str, *, limit: int | None = None) -> Call[list[Delivery]]:
        """``GET /v1/webhooks/{id}/deliveries`` (admin): the recent delivery attempts."""
        return Call(method="GET", path=f"/v1/webhooks/{segment(webhook_id)}/deliveries",
                    parse=_items(Delivery.from_json), params=query(limit=limit))

    @endpoint
    def enable_webhook(self, webhook_id: str) -> Call[Webhook]:
        """``POST /v1/webhooks/{id}/enable`` (admin): re-enable a disabled endpoint; it resumes
        where it stopped. Repeatable."""
        return Call(method="POST", path=f"/v1/webhooks/{segment(webhook_id)}/enable", parse=Webhook.from_json,
                    repeatable=True)


def _money(body: dict[str, Any], description: str | None, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if description is not None:
        body["description"] = description
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return body
