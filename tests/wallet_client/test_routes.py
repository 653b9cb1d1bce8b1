"""Every route of the contract through the client, against a fake server: the request it sends
(method, path, query, body, headers, idempotency key) and the value it reads from the answer,
for the sync and the async client alike (they share one definition per route)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgpack
import pytest

import wallet_client
from tests.wallet_client._fake import (
    ALERT,
    ASSET,
    DELIVERY,
    ENTRY,
    EVENT,
    TRANSACTION,
    WALLET,
    WEBHOOK,
    WITHDRAWAL,
    FakeServer,
    async_client,
    reply,
    sync_client,
)
from wallet_client import (
    Alert,
    AsyncWalletClient,
    BatchTransfer,
    Deleted,
    Transaction,
    Wallet,
    WalletClient,
)
from wallet_client._core import endpoint, paginated


@dataclass
class Row:
    name: str
    call: Callable[[Any], Any]
    method: str
    path: str
    answer: Any
    check: Callable[[Any], bool]
    params: list[tuple[str, str]] | None = None
    body: Any = "-"  # "-": no body expected
    keyed: bool = False  # the client makes an Idempotency-Key
    status: int = 200


def page(item: Any, cursor: str | None = "c2") -> dict[str, Any]:
    return {"items": [item], "next_cursor": cursor}


AT = datetime(2026, 11, 22, 11, 0, 0, 5, tzinfo=timezone(timedelta(hours=1)))
ROWS = [
    Row("health", lambda c: c.health(), "GET", "/health", {"status": "ok"}, lambda r: r == {"status": "ok"}),
    Row("ready", lambda c: c.ready(), "GET", "/ready", {"status": "ready", "durable_lsn": 9},
        lambda r: r.ready and r.durable_lsn == 9),
    Row("ready while recovering", lambda c: c.ready(), "GET", "/ready", {"status": "recovering", "reason": "replay"},
        lambda r: not r.ready and r.reason == "replay", status=503),
    Row("openapi", lambda c: c.openapi(), "GET", "/openapi.json", {"openapi": "3.1.0"},
        lambda r: r["openapi"] == "3.1.0"),
    Row("processes", lambda c: c.processes(), "GET", "/v1/admin/processes",
        {"items": [{"role": "ledger", "pid": 4, "started_at": "2026-01-01T00:00:00.000000Z", "restarts": 0}]},
        lambda r: r[0].role == "ledger" and r[0].pid == 4),
    Row("take_snapshot", lambda c: c.take_snapshot(), "POST", "/v1/admin/snapshots", {"lsn": 12, "taken": True},
        lambda r: r.lsn == 12 and r.taken, status=201),
    Row("cluster", lambda c: c.cluster(), "GET", "/v1/admin/cluster", {"groups": []}, lambda r: r == {"groups": []}),
    Row("create_token", lambda c: c.create_token("alice"), "POST", "/v1/tokens",
        {"token": "wt_secret", "prefix": "wt_secret", "owner_id": "alice"},
        lambda r: r.token == "wt_secret" and r.owner_id == "alice", body={"owner_id": "alice"}, status=201),
    Row("revoke_token", lambda c: c.revoke_token("wt_abc"), "DELETE", "/v1/tokens/wt_abc",
        {"prefix": "wt_abc", "revoked": True}, lambda r: r.id == "wt_abc"),
    Row("create_asset", lambda c: c.create_asset("USD", 2), "POST", "/v1/assets", ASSET,
        lambda r: r.code == "USD" and r.scale == 2 and r.created_at.year == 2026, body={"code": "USD", "scale": 2},
        status=201),
    Row("list_assets", lambda c: c.list_assets(), "GET", "/v1/assets", {"items": [ASSET]},
        lambda r: [a.treasury_wallet_id for a in r] == ["treasury:USD"]),
    Row("create_wallet", lambda c: c.create_wallet("alice", "USD", id="w-1", metadata={"k": "v"}), "POST",
        "/v1/wallets", WALLET, lambda r: isinstance(r, Wallet) and r.available == 1300 and r.metadata == {"k": "v"},
        body={"owner_id": "alice", "asset": "USD", "id": "w-1", "metadata": {"k": "v"}}, keyed=True, status=201),
    Row("create_wallet with limits", lambda c: c.create_wallet("alice", "USD", overdraft_limit=5,
                                                               spend_limits={"daily": 10, "monthly": None}),
        "POST", "/v1/wallets", {**WALLET, "overdraft_limit": 5}, lambda r: r.overdraft_limit == 5,
        body={"owner_id": "alice", "asset": "USD", "overdraft_limit": 5, "spend_limits": {"daily": 10, "monthly": None}},
        keyed=True, status=201),
    Row("get_wallet", lambda c: c.get_wallet("treasury:USD"), "GET", "/v1/wallets/treasury:USD", WALLET,
        lambda r: r.id == "w-1" and r.held == 200),
    Row("get_wallet with a dot id", lambda c: c.get_wallet(".."), "GET", "/v1/wallets/%2E%2E", WALLET,
        lambda r: r.id == "w-1"),
    Row("list_wallets", lambda c: c.list_wallets(owner_id="alice", asset="USD", limit=2, cursor="c1"), "GET",
        "/v1/wallets", page(WALLET), lambda r: r.next_cursor == "c2" and r.items[0].id == "w-1",
        params=[("owner_id", "alice"), ("asset", "USD"), ("limit", "2"), ("cursor", "c1")]),
    Row("update_wallet", lambda c: c.update_wallet("w-1", overdraft_limit=0, spend_limits=None), "PATCH",
        "/v1/wallets/w-1", WALLET, lambda r: r.id == "w-1", body={"overdraft_limit": 0, "spend_limits": None}),
    Row("freeze_wallet", lambda c: c.freeze_wallet("w-1"), "POST", "/v1/wallets/w-1/freeze",
        {**WALLET, "status": "frozen"}, lambda r: r.status == "frozen"),
    Row("unfreeze_wallet", lambda c: c.unfreeze_wallet("w-1"), "POST", "/v1/wallets/w-1/unfreeze", WALLET,
        lambda r: r.status == "active"),
    Row("close_wallet", lambda c: c.close_wallet("w-1"), "POST", "/v1/wallets/w-1/close",
        {**WALLET, "status": "closed"}, lambda r: r.status == "closed"),
    Row("balance", lambda c: c.balance("w-1", as_of=AT), "GET", "/v1/wallets/w-1/balance",
        {"wallet_id": "w-1", "balance": 5, "as_of": "2026-11-22T10:00:00.000005Z"},
        lambda r: r.balance == 5 and r.as_of == datetime(2026, 11, 22, 10, 0, 0, 5, tzinfo=UTC),
        params=[("as_of", "2026-11-22T10:00:00.000005Z")]),
    Row("wallet_transactions", lambda c: c.wallet_transactions("w-1", type="transfer", status="posted",
                                                               since="2026-01-01T00:00:00Z", limit=10),
        "GET", "/v1/wallets/w-1/transactions", page(ENTRY, None),
        lambda r: r.next_cursor is None and r.items[0].balance_after == 1400 and r.items[0].direction == "debit",
        params=[("type", "transfer"), ("status", "posted"), ("since", "2026-01-01T00:00:00Z"), ("limit", "10")]),
    Row("deposit", lambda c: c.deposit("w-1", 1500, description="hi", metadata={"a": 1}), "POST", "/v1/deposits",
        {**TRANSACTION, "type": "deposit"}, lambda r: isinstance(r, Transaction) and r.type == "deposit",
        body={"wallet_id": "w-1", "amount": 1500, "description": "hi", "metadata": {"a": 1}}, keyed=True,
        status=201),
    Row("transfer", lambda c: c.transfer("w-1", "w-2", 100), "POST", "/v1/transfers", TRANSACTION,
        lambda r: r.id == "tx_1" and r.lsn == 7 and r.amount == 100,
        body={"from_wallet_id": "w-1", "to_wallet_id": "w-2", "amount": 100}, keyed=True, status=201),
    Row("transfer with a hold", lambda c: c.transfer("w-1", "w-2", 100, hold_timeout_s=60), "POST", "/v1/transfers",
        {**TRANSACTION, "status": "pending"}, lambda r: r.status == "pending",
        body={"from_wallet_id": "w-1", "to_wallet_id": "w-2", "amount": 100, "hold": {"timeout_s": 60}},
        keyed=True, status=201),
    Row("capture", lambda c: c.capture("tx_1", amount=60), "POST", "/v1/transfers/tx_1/capture",
        {**TRANSACTION, "amount": 60}, lambda r: r.amount == 60, body={"amount": 60}, keyed=True),
    Row("void", lambda c: c.void("tx_1"), "POST", "/v1/transfers/tx_1/void", {**TRANSACTION, "status": "voided"},
        lambda r: r.status == "voided", body={}, keyed=True),
    Row("refund", lambda c: c.refund("tx_1", amount=40), "POST", "/v1/transactions/tx_1/refund",
        {**TRANSACTION, "id": "tx_2", "type": "refund", "refund_of": "tx_1"},
        lambda r: r.type == "refund" and r.refund_of == "tx_1", body={"amount": 40}, keyed=True, status=201),
    Row("get_transaction", lambda c: c.get_transaction("tx_1"), "GET", "/v1/transactions/tx_1",
        {**TRANSACTION, "refunded_amount": 0}, lambda r: r.refunded_amount == 0),
    Row("search_transactions", lambda c: c.search_transactions(
        wallet_id="w-1", type="transfer", status="posted", since=AT, until="2027-01-01T00:00:00Z", min_amount=1,
        max_amount=500, metadata={"order": "o-1", "shop": "s 2"}, limit=50, cursor="s:9"),
        "GET", "/v1/transactions", page(TRANSACTION), lambda r: r.items[0].id == "tx_1" and r.next_cursor == "c2",
        params=[("wallet_id", "w-1"), ("type", "transfer"), ("status", "posted"),
                ("since", "2026-11-22T10:00:00.000005Z"), ("until", "2027-01-01T00:00:00Z"), ("min_amount", "1"),
                ("max_amount", "500"), ("metadata.order", "o-1"), ("metadata.shop", "s 2"), ("limit", "50"),
                ("cursor", "s:9")]),
    Row("create_withdrawal", lambda c: c.create_withdrawal("w-1", 100, {"iban": "X"}), "POST", "/v1/withdrawals",
        WITHDRAWAL, lambda r: r.status == "pending" and r.destination == {"iban": "X"},
        body={"wallet_id": "w-1", "amount": 100, "destination": {"iban": "X"}}, keyed=True, status=202),
    Row("get_withdrawal", lambda c: c.get_withdrawal("wd_1"), "GET", "/v1/withdrawals/wd_1", WITHDRAWAL,
        lambda r: r.id == "wd_1"),
    Row("list_withdrawals", lambda c: c.list_withdrawals(status="dead"), "GET", "/v1/withdrawals",
        page(WITHDRAWAL, None), lambda r: r.items[0].id == "wd_1", params=[("status", "dead")]),
    Row("retry_withdrawal", lambda c: c.retry_withdrawal("wd_1"), "POST", "/v1/withdrawals/wd_1/retry", WITHDRAWAL,
        lambda r: r.id == "wd_1"),
    Row("events", lambda c: c.events(after=2, limit=10, wait=1.5), "GET", "/v1/events",
        {"items": [EVENT], "next_after": 3}, lambda r: r.next_after == 3 and r.items[0].type == "transfer.posted",
        params=[("after", "2"), ("limit", "10"), ("wait", "1.5")]),
    Row("create_alert", lambda c: c.create_alert("w-1", "available", below=100), "POST", "/v1/wallets/w-1/alerts",
        ALERT, lambda r: isinstance(r, Alert) and r.below == 100 and r.above is None and r.state == "armed",
        body={"field": "available", "below": 100}, status=201),
    Row("create_alert above", lambda c: c.create_alert("w-1", "balance", above=-5), "POST", "/v1/wallets/w-1/alerts",
        {**ALERT, "field": "balance", "below": None, "above": -5}, lambda r: r.above == -5,
        body={"field": "balance", "above": -5}, status=201),
    Row("list_alerts", lambda c: c.list_alerts("w-1"), "GET", "/v1/wallets/w-1/alerts", {"items": [ALERT]},
        lambda r: [a.id for a in r] == ["al_1"]),
    Row("delete_alert", lambda c: c.delete_alert("al_1"), "DELETE", "/v1/alerts/al_1",
        {"id": "al_1", "wallet_id": "w-1", "deleted": True}, lambda r: isinstance(r, Deleted) and r.id == "al_1"),
    Row("create_webhook", lambda c: c.create_webhook("https://example.com/hook", ["transfer.posted"]), "POST",
        "/v1/webhooks", WEBHOOK, lambda r: r.secret is not None and r.secret.startswith("whsec_"),
        body={"url": "https://example.com/hook", "events": ["transfer.posted"]}, status=201),
    Row("list_webhooks", lambda c: c.list_webhooks(), "GET", "/v1/webhooks",
        {"items": [{**WEBHOOK, "secret": None}]}, lambda r: r[0].id == "wh_1" and r[0].secret is None),
    Row("get_webhook", lambda c: c.get_webhook("wh_1"), "GET", "/v1/webhooks/wh_1", WEBHOOK,
        lambda r: r.events == ["*"] and r.status == "enabled"),
    Row("delete_webhook", lambda c: c.delete_webhook("wh_1"), "DELETE", "/v1/webhooks/wh_1",
        {"id": "wh_1", "deleted": True}, lambda r: r.id == "wh_1"),
    Row("webhook_deliveries", lambda c: c.webhook_deliveries("wh_1", limit=5), "GET", "/v1/webhooks/wh_1/deliveries",
        {"items": [DELIVERY]}, lambda r: r[0].status_code == 500 and r[0].event_id == "evt_3_0",
        params=[("limit", "5")]),
    Row("enable_webhook", lambda c: c.enable_webhook("wh_1"), "POST", "/v1/webhooks/wh_1/enable", WEBHOOK,
        lambda r: r.status == "enabled"),
]


def check_request(row: Row, server: FakeServer) -> None:
    (request,) = server.requests
    assert request.method == row.method
    assert request.url.raw_path.decode().split("?")[0] == row.path
    assert request.headers["authorization"] == "Bearer tok"
    assert list(request.url.params.multi_items()) == (row.params or [])
    if row.body == "-":
        assert request.content == b""
    else:
        assert request.headers["content-type"] == "application/json"
        assert server.bodies() == [row.body]
    key = request.headers.get("idempotency-key")
    assert (key is not None) == row.keyed, key
    if row.keyed:
        assert key.startswith("wc-") and len(key) == 35


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_each_route_sync(row: Row) -> None:
    server = FakeServer([reply(row.status, row.answer)])
    with sync_client(server) as client:
        assert row.check(row.call(client))
    check_request(row, server)


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
async def test_each_route_async(row: Row) -> None:
    server = FakeServer([reply(row.status, row.answer)])
    async with async_client(server) as client:
        assert row.check(await row.call(client))
    check_request(row, server)


def test_every_route_of_the_client_has_a_row() -> None:
    """A new method without a row here fails: every route's request and answer are checked."""
    methods = {name for name, value in vars(wallet_client._operations.Operations).items()
               if isinstance(value, endpoint)}
    walkers = {name for name, value in vars(wallet_client._operations.Operations).items()
               if isinstance(value, paginated)}
    assert methods - {row.name.split(" ")[0] for row in ROWS} == {"metrics", "transfer_batch"}  # below
    assert walkers == {"iter_wallets", "iter_wallet_transactions", "iter_transactions", "iter_withdrawals",
                       "iter_events"}


def test_metrics_are_text() -> None:
    server = FakeServer([__import__("httpx").Response(200, text="wallet_up 1\n",
                                                      headers={"content-type": "text/plain; version=0.0.4"})])
    with sync_client(server) as client:
        assert client.metrics() == "wallet_up 1\n"


def test_a_given_idempotency_key_is_sent_as_it_is() -> None:
    server = FakeServer([reply(201, TRANSACTION)])
    with sync_client(server) as client:
        client.transfer("w-1", "w-2", 100, idempotency_key="order-17")
    assert server.keys() == ["order-17"]


def test_each_call_gets_its_own_key() -> None:
    server = FakeServer([reply(201, TRANSACTION)])
    with sync_client(server) as client:
        for _ in range(3):
            client.deposit("w-1", 1)
    keys = server.keys()
    assert len(set(keys)) == 3 and all(key is not None for key in keys)


def test_a_key_factory_makes_the_keys() -> None:
    numbers = iter(range(100))
    server = FakeServer([reply(201, TRANSACTION)])
    with sync_client(server, key_factory=lambda: f"k{next(numbers)}") as client:
        client.transfer("w-1", "w-2", 1)
        client.void("tx_1")
    assert server.keys() == ["k0", "k1"]


def batch_answer(request: Any) -> Any:
    import httpx

    body = msgpack.unpackb(request.content) if request.headers["content-type"] == "application/msgpack" \
        else __import__("json").loads(request.content)
    results = []
    for item in body["transfers"]:
        if item["amount"] > 1000:
            results.append({"status": 422, "error": {"type": "about:blank", "title": "Insufficient funds",
                                                     "status": 422, "code": "insufficient_funds", "detail": "no"}})
        else:
            results.append({"status": 201, "transaction": {**TRANSACTION, "amount": item["amount"]}})
    if request.headers.get("accept") == "application/msgpack":
        return httpx.Response(200, content=msgpack.packb({"results": results}),
                              headers={"content-type": "application/msgpack"})
    return reply(200, {"results": results})


@pytest.mark.parametrize("packed", [False, True])
def test_a_batch_gives_every_item_a_key_and_reads_each_answer(packed: bool) -> None:
    server = FakeServer([batch_answer])
    items = [BatchTransfer(from_wallet_id="w-1", to_wallet_id="w-2", amount=5, idempotency_key="mine"),
             BatchTransfer(from_wallet_id="w-1", to_wallet_id="w-2", amount=5000, description="too much"),
             {"from_wallet_id": "w-2", "to_wallet_id": "w-1", "amount": 7, "metadata": {"m": 1}}]
    with sync_client(server) as client:
        result = client.transfer_batch(items, atomic=False, msgpack=packed)
    (request,) = server.requests
    sent = msgpack.unpackb(request.content) if packed else server.bodies()[0]
    assert request.headers["content-type"] == ("application/msgpack" if packed else "application/json")
    assert sent["atomic"] is False
    keys = [item["idempotency_key"] for item in sent["transfers"]]
    assert keys[0] == "mine" and len(set(keys)) == 3
    assert sent["transfers"][1] == {"from_wallet_id": "w-1", "to_wallet_id": "w-2", "amount": 5000,
                                    "description": "too much", "idempotency_key": keys[1]}
    assert [item.idempotency_key for item in result.items] == keys
    assert [item.status for item in result.items] == [201, 422, 201]
    assert [t.amount for t in result.transactions] == [5, 7]
    (failed,) = result.failed
    assert failed.error is not None and failed.error.code == "insufficient_funds"
    assert isinstance(failed.error, wallet_client.InsufficientFunds)


def test_an_atomic_batch_that_failed_raises_with_the_index() -> None:
    from tests.wallet_client._fake import problem

    server = FakeServer([problem(422, "batch_failed", "item 1 failed", index=1,
                                 error={"status": 422, "code": "insufficient_funds", "title": "x", "detail": "y"})])
    with sync_client(server) as client, pytest.raises(wallet_client.BatchFailed) as caught:
        client.transfer_batch([{"from_wallet_id": "a", "to_wallet_id": "b", "amount": 1}] * 2, atomic=True)
    assert caught.value.index == 1
    assert isinstance(caught.value.item_error, wallet_client.InsufficientFunds)
    assert server.bodies()[0]["atomic"] is True


def test_an_alert_needs_exactly_one_threshold() -> None:
    server = FakeServer([reply(201, ALERT)])
    with sync_client(server) as client:
        for bad in ({}, {"below": 1, "above": 2}):
            with pytest.raises(ValueError, match="exactly one"):
                client.create_alert("w-1", **bad)
    assert server.requests == []


def test_a_naive_datetime_is_refused() -> None:
    with sync_client(FakeServer([reply(200, {})])) as client, pytest.raises(ValueError, match="naive"):
        client.balance("w-1", as_of=datetime(2026, 1, 1))


def test_both_clients_have_the_same_methods_with_docstrings() -> None:
    def public(cls: type) -> set[str]:
        return {name for name in dir(cls) if not name.startswith("_") and name not in ("close", "aclose")}

    assert public(WalletClient) == public(AsyncWalletClient)
    for name in public(WalletClient) - {"retry", "timeout_s", "http"}:
        member = getattr(WalletClient, name)
        assert member.__doc__, name
    assert "Idempotency-Key" in (WalletClient.__doc__ or "") and "Example" in (AsyncWalletClient.__doc__ or "")
    signature = inspect.signature(WalletClient("http://x").transfer)
    assert list(signature.parameters)[:3] == ["from_wallet_id", "to_wallet_id", "amount"]


def test_the_package_exports_what_it_says() -> None:
    assert sorted(wallet_client.__all__) == wallet_client.__all__
    for name in wallet_client.__all__:
        assert hasattr(wallet_client, name), name
    assert (__import__("pathlib").Path(wallet_client.__file__).parent / "py.typed").exists()
