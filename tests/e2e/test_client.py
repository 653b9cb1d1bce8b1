"""``wallet_client`` against a real ``wallet serve`` (one server for the module): every route
the server has, through the sync and the async client, with the answers read into typed values;
problems raised as typed exceptions with the server's ``code``; cursor iterators over several
pages; and retries that reuse their ``Idempotency-Key`` so that money moves once: a response
lost after the server acted, and a ``503`` with ``Retry-After`` in front of the server.

Alerts, search, refunds, wallet limits and webhook endpoints are driven here too (webhook
delivery itself is ``tests/e2e/test_webhooks.py``); the routes of the contract still to come
(cluster) are checked against a fake server in ``tests/wallet_client``."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
import trio

import wallet_client as wc
from tests.e2e._server import ADMIN_TOKEN, ServerProcess
from wallet_client import AsyncWalletClient, BatchTransfer, WalletClient

COUNTER = itertools.count()


def uid(prefix: str) -> str:
    return f"{prefix}-{next(COUNTER)}-{time.monotonic_ns() % 10**6}"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("client") / "data")
    server.start()
    try:
        with WalletClient(server.url, token=ADMIN_TOKEN) as client:
            client.create_asset("USD", 2)
        yield server
    finally:
        server.kill()


@pytest.fixture
def admin(live: ServerProcess) -> Iterator[WalletClient]:
    with WalletClient(live.url, token=ADMIN_TOKEN) as client:
        yield client


def funded(client: WalletClient, owner: str, amount: int) -> str:
    wallet_id = uid(owner)
    client.create_wallet(owner, "USD", id=wallet_id)
    if amount:
        client.deposit(wallet_id, amount)
    return wallet_id


def test_operations_assets_and_tokens(admin: WalletClient, live: ServerProcess) -> None:
    assert admin.health() == {"status": "ok"}
    readiness = admin.ready()
    assert readiness.ready and readiness.durable_lsn is not None and readiness.durable_lsn > 0
    assert "wallet_" in admin.metrics()
    assert "/v1/transfers" in admin.openapi()["paths"]
    roles = {process.role for process in admin.processes()}
    assert "ledger" in roles
    assert admin.create_asset("USD", 2).treasury_wallet_id == "treasury:USD"  # again: the same asset
    with pytest.raises(wc.Conflict) as caught:
        admin.create_asset("USD", 3)
    assert caught.value.code == "asset_exists"
    assert "USD" in {asset.code for asset in admin.list_assets()}
    snapshot = admin.take_snapshot()
    assert snapshot.lsn > 0

    owner = uid("tok")
    token = admin.create_token(owner)
    wallet_id = funded(admin, owner, 0)
    with WalletClient(live.url, token=token.token) as user:
        assert user.get_wallet(wallet_id).owner_id == owner
        assert admin.revoke_token(token.prefix).id == token.prefix
        with pytest.raises(wc.Unauthorized) as unauthorized:
            user.get_wallet(wallet_id)
    assert unauthorized.value.code == "unauthorized" and unauthorized.value.status == 401


def test_wallets_money_and_history(admin: WalletClient) -> None:
    alice = funded(admin, "alice", 100_00)
    bob = funded(admin, "bob", 0)
    made = admin.create_wallet("carol", "USD", metadata={"tier": "gold"})  # the server names it
    assert made.id.startswith("w_") and made.metadata == {"tier": "gold"} and made.balance == 0
    wallet = admin.get_wallet(alice)
    assert (wallet.balance, wallet.held, wallet.available, wallet.status) == (100_00, 0, 100_00, "active")
    assert admin.create_wallet("alice", "USD", id=alice).balance == 100_00  # again: the existing one

    posted = admin.transfer(alice, bob, 12_50, description="lunch", metadata={"order": "o-1"})
    assert (posted.type, posted.status, posted.amount, posted.metadata) == ("transfer", "posted", 12_50,
                                                                            {"order": "o-1"})
    assert admin.get_transaction(posted.id).lsn == posted.lsn
    held = admin.transfer(alice, bob, 10_00, hold_timeout_s=60)
    assert held.status == "pending" and admin.get_wallet(alice).held == 10_00
    captured = admin.capture(held.id, amount=4_00)
    assert (captured.status, captured.amount) == ("posted", 4_00)
    with pytest.raises(wc.TransferNotPending) as not_pending:
        admin.void(held.id)
    assert not_pending.value.code == "transfer_not_pending"
    voided = admin.void(admin.transfer(alice, bob, 1_00, hold_timeout_s=60).id)
    assert voided.status == "voided"
    assert admin.get_wallet(alice).balance == 100_00 - 12_50 - 4_00

    for number in range(5):
        admin.transfer(alice, bob, number + 1)
    walked = list(admin.iter_wallet_transactions(alice, limit=2))  # 9 entries: 5 pages
    assert len(walked) == 9 and len({entry.lsn for entry in walked}) == 9
    assert [entry.lsn for entry in walked] == sorted((entry.lsn for entry in walked), reverse=True)
    assert walked[0].balance_after == admin.get_wallet(alice).balance
    first = admin.wallet_transactions(alice, limit=2)
    assert first.next_cursor is not None and [e.lsn for e in first.items] == [e.lsn for e in walked[:2]]
    deposits = admin.wallet_transactions(alice, type="deposit")
    assert [entry.type for entry in deposits.items] == ["deposit"] and deposits.next_cursor is None
    assert admin.balance(alice).balance == walked[0].balance_after
    assert admin.balance(alice, as_of=datetime(2020, 1, 1, tzinfo=UTC)).balance == 0

    owned = [w.id for w in admin.iter_wallets(owner_id="alice", limit=1)]
    assert alice in owned and len(owned) == len(set(owned))

    assert admin.freeze_wallet(bob).status == "frozen"
    assert admin.freeze_wallet(bob).status == "frozen"  # again: nothing changes
    with pytest.raises(wc.WalletFrozen) as frozen:
        admin.transfer(bob, alice, 1)
    assert frozen.value.code == "wallet_frozen" and frozen.value.status == 409
    assert admin.unfreeze_wallet(bob).status == "active"
    with pytest.raises(wc.Conflict) as not_empty:
        admin.close_wallet(bob)
    assert not_empty.value.code == "wallet_not_empty"
    assert admin.close_wallet(made.id).status == "closed"


def test_wallet_limits_through_the_client(admin: WalletClient) -> None:
    payer = uid("payer")
    made = admin.create_wallet("dora", "USD", id=payer, overdraft_limit=100, spend_limits={"daily": 100})
    assert (made.overdraft_limit, made.spend_limits, made.spent) == (100, {"daily": 100, "monthly": None},
                                                                      {"daily": 0, "monthly": 0})
    payee = funded(admin, "erin", 0)
    admin.deposit(payer, 30)
    admin.transfer(payer, payee, 70)  # 30 of its own and 40 of the overdraft (100)
    wallet = admin.get_wallet(payer)
    assert (wallet.available, wallet.spent) == (-40, {"daily": 70, "monthly": 70})
    with pytest.raises(wc.SpendLimitExceeded) as over:
        admin.transfer(payer, payee, 31)
    assert over.value.code == "spend_limit_exceeded" and "daily spend limit of 100" in str(over.value.detail)
    updated = admin.update_wallet(payer, spend_limits={"daily": None, "monthly": 80}, metadata={"k": "v"})
    assert (updated.overdraft_limit, updated.spend_limits, updated.metadata) == (
        100, {"daily": None, "monthly": 80}, {"k": "v"})
    assert admin.update_wallet(payer, overdraft_limit=0).overdraft_limit == 0  # below the deficit: allowed
    with pytest.raises(wc.InsufficientFunds):
        admin.transfer(payer, payee, 1)
    with pytest.raises(wc.NotFound):
        admin.update_wallet(uid("ghost"), overdraft_limit=1)


def test_typed_problems_carry_their_code(admin: WalletClient, live: ServerProcess) -> None:
    alice = funded(admin, "alice", 5_00)
    bob = funded(admin, "bob", 0)
    with pytest.raises(wc.InsufficientFunds) as poor:
        admin.transfer(alice, bob, 6_00, idempotency_key="too-much")
    assert poor.value.code == "insufficient_funds" and poor.value.idempotency_key == "too-much"
    assert "5" in poor.value.detail and poor.value.body["status"] == 422
    key = uid("paid")
    admin.transfer(alice, bob, 1_00, idempotency_key=key)
    with pytest.raises(wc.IdempotencyKeyReused) as reused:
        admin.transfer(alice, bob, 2_00, idempotency_key=key)
    assert reused.value.code == "idempotency_key_reused"
    with pytest.raises(wc.NotFound) as missing:
        admin.get_wallet("nobody-here")
    assert missing.value.code == "wallet_not_found"
    with pytest.raises(wc.NotFound) as no_transaction:
        admin.get_transaction("tx_nothing")
    assert no_transaction.value.code == "transaction_not_found"
    with pytest.raises(wc.InvalidRequest) as invalid:
        admin.transfer(alice, bob, 0)
    assert invalid.value.code == "invalid_request" and invalid.value.errors[0]["field"] == "amount"
    owner = uid("dora")
    token = admin.create_token(owner).token
    with WalletClient(live.url, token=token) as user, pytest.raises(wc.Forbidden) as forbidden:
        user.transfer(alice, bob, 1)
    assert forbidden.value.code == "forbidden"
    assert admin.get_wallet(alice).balance == 4_00


def test_batches_json_and_msgpack(admin: WalletClient) -> None:
    alice = funded(admin, "alice", 10_00)
    bob = funded(admin, "bob", 0)
    items = [BatchTransfer(from_wallet_id=alice, to_wallet_id=bob, amount=1_00),
             BatchTransfer(from_wallet_id=alice, to_wallet_id=bob, amount=50_00),
             BatchTransfer(from_wallet_id=alice, to_wallet_id=bob, amount=2_00, idempotency_key=uid("b"))]
    result = admin.transfer_batch(items)
    assert [item.status for item in result.items] == [201, 422, 201]
    assert isinstance(result.items[1].error, wc.InsufficientFunds)
    assert result.items[2].idempotency_key == items[2].idempotency_key
    again = admin.transfer_batch([items[2]], msgpack=True)  # the same key again, as MessagePack
    assert again.items[0].transaction is not None and result.items[2].transaction is not None
    assert again.items[0].transaction.id == result.items[2].transaction.id  # replayed, not posted again
    with pytest.raises(wc.BatchFailed) as failed:
        admin.transfer_batch([BatchTransfer(from_wallet_id=alice, to_wallet_id=bob, amount=1),
                              BatchTransfer(from_wallet_id=alice, to_wallet_id=bob, amount=10**9)], atomic=True)
    assert failed.value.index == 1 and isinstance(failed.value.item_error, wc.InsufficientFunds)
    assert admin.get_wallet(alice).balance == 10_00 - 3_00


def test_withdrawals_and_events(admin: WalletClient) -> None:
    alice = funded(admin, "alice", 10_00)
    start = admin.events(limit=1000).next_after
    withdrawal = admin.create_withdrawal(alice, 3_00, {"account": "acct-1"})
    assert (withdrawal.status, withdrawal.attempts) == ("pending", 0)
    deadline = time.monotonic() + 20
    while admin.get_withdrawal(withdrawal.id).status != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert withdrawal.id in {w.id for w in admin.iter_withdrawals(status="completed", limit=1)}
    assert admin.list_withdrawals(limit=1).items
    with pytest.raises(wc.Conflict) as not_dead:
        admin.retry_withdrawal(withdrawal.id)
    assert not_dead.value.code == "withdrawal_not_dead"
    for number in range(6):
        admin.transfer(alice, funded(admin, "bob", 0), number + 1)
    events = list(admin.iter_events(after=0, limit=5))
    lsns = [event.lsn for event in events]
    assert lsns == sorted(lsns) and lsns[-1] >= start
    mine = [event for event in events if event.data.get("from_wallet_id") == alice]
    assert sum(1 for event in mine if event.type == "transfer.posted") == 6
    assert any(event.type == "withdrawal.completed" and event.data["id"] == withdrawal.id for event in events)
    page = admin.events(after=lsns[-1], wait=0.2)  # nothing newer: a short long poll
    assert page.items == [] and page.next_after == lsns[-1]


def snapshot(request: httpx.Request) -> httpx.Request:
    """A copy of what ``request`` carries now: the client sends the same Request object on
    every attempt, and a record must show what each attempt carried."""
    return httpx.Request(request.method, request.url, headers=request.headers.copy(), content=request.content)


class LoseFirstResponse(httpx.BaseTransport):
    """Sends every request to the server but drops the first answer to ``path`` on the floor
    (as a cut connection would), after the server acted on it."""

    def __init__(self, path: str) -> None:
        self.real = httpx.HTTPTransport()
        self.path = path
        self.seen: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.real.handle_request(request)
        if request.url.path == self.path:
            self.seen.append(snapshot(request))
            if len(self.seen) == 1:
                response.read()
                response.close()
                raise httpx.ReadError("connection lost before the answer")
        return response

    def close(self) -> None:
        self.real.close()


class OverloadedOnce(httpx.AsyncBaseTransport):
    """Answers the first request to ``path`` with ``503 overloaded`` and ``Retry-After``, as
    the server does when its queues are full; then lets everything through."""

    def __init__(self, path: str) -> None:
        self.real = httpx.AsyncHTTPTransport()
        self.path = path
        self.seen: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == self.path:
            self.seen.append(snapshot(request))
            if len(self.seen) == 1:
                return httpx.Response(503, headers={"Retry-After": "1", "content-type": "application/problem+json"},
                                      json={"type": "about:blank", "title": "Overloaded", "status": 503,
                                            "code": "overloaded", "detail": "mailboxes full"})
        return await self.real.handle_async_request(request)

    async def aclose(self) -> None:
        await self.real.aclose()


def test_a_lost_response_is_retried_with_the_same_key_and_money_moves_once(admin: WalletClient,
                                                                           live: ServerProcess) -> None:
    alice = funded(admin, "alice", 10_00)
    bob = funded(admin, "bob", 0)
    transport = LoseFirstResponse("/v1/transfers")
    with WalletClient(live.url, token=ADMIN_TOKEN, transport=transport) as client:
        transaction = client.transfer(alice, bob, 3_00)
    first, second = transport.seen
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.content == second.content
    assert admin.get_wallet(alice).balance == 7_00 and admin.get_wallet(bob).balance == 3_00
    (entry,) = [e for e in admin.iter_wallet_transactions(bob) if e.type == "transfer"]
    assert entry.transaction_id == transaction.id
    # Without the retry (one attempt), the caller is told it does not know, and gets the key.
    transport = LoseFirstResponse("/v1/transfers")
    with WalletClient(live.url, token=ADMIN_TOKEN, transport=transport, retry=wc.RetryPolicy.never()) as client, \
            pytest.raises(wc.ConnectionFailed) as caught:
        client.transfer(alice, bob, 1_00)
    assert caught.value.idempotency_key == transport.seen[0].headers["idempotency-key"]
    again = admin.transfer(alice, bob, 1_00, idempotency_key=caught.value.idempotency_key)
    assert admin.get_transaction(again.id).amount == 1_00
    assert admin.get_wallet(alice).balance == 6_00  # the first attempt's, replayed: not 5_00


async def test_the_async_client_retries_503_with_retry_after_and_walks_pages(live: ServerProcess) -> None:
    transport = OverloadedOnce("/v1/deposits")
    async with AsyncWalletClient(live.url, token=ADMIN_TOKEN, transport=transport) as client:
        alice, bob = uid("alice"), uid("bob")
        async with trio.open_nursery() as nursery:
            for wallet_id, owner in ((alice, "alice"), (bob, "bob")):
                nursery.start_soon(lambda w=wallet_id, o=owner: client.create_wallet(o, "USD", id=w))
        started = time.monotonic()
        deposit = await client.deposit(alice, 10_00)
        assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured
        first, second = transport.seen
        assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
        assert deposit.type == "deposit"

        async def send(amount: int) -> None:
            await client.transfer(alice, bob, amount)

        async with trio.open_nursery() as nursery:
            for amount in range(1, 8):
                nursery.start_soon(send, amount)
        entries = [entry async for entry in client.iter_wallet_transactions(bob, limit=3)]
        assert sorted(entry.amount for entry in entries) == list(range(1, 8))
        assert (await client.get_wallet(alice)).balance == 10_00 - sum(range(1, 8))
        with pytest.raises(wc.InsufficientFunds) as caught:
            await client.transfer(bob, alice, 10**6)
        assert caught.value.code == "insufficient_funds"
        events = [event async for event in client.iter_events(after=deposit.lsn - 1, limit=2)]
        assert events[0].lsn == deposit.lsn and len(events) >= 8


def test_alerts_search_and_webhooks_through_the_client(admin: WalletClient) -> None:
    """Issue 16's routes on the real server through the client: an alert fires once when a
    transfer crosses it (and shows in the feed), a metadata search finds exactly the tagged
    transfers over several pages, and webhook endpoints refuse a loopback URL with a typed
    problem (this server runs without ``--allow-private-webhooks``)."""
    alice, bob = funded(admin, "alice", 1_000), funded(admin, "bob", 0)
    alert = admin.create_alert(alice, "available", below=500)
    assert (alert.state, alert.below, alert.above) == ("armed", 500, None)
    after = admin.ready().durable_lsn or 0
    tag = uid("order")
    posted = [admin.transfer(alice, bob, 200, metadata={"order": tag}) for _ in range(4)]  # 800, 600, 400, 200
    assert [item.state for item in admin.list_alerts(alice)] == ["triggered"]
    fired = [event for event in admin.iter_events(after=after) if event.type == "alert.triggered"]
    assert len(fired) == 1, fired
    assert fired[0].data["alert_id"] == alert.id and fired[0].data["value"] == 400
    assert fired[0].data["transaction_id"] == posted[2].id
    counted = [line for line in admin.metrics().splitlines() if line.startswith("wallet_alerts_triggered_total ")]
    assert counted and float(counted[0].split()[1]) >= 1, counted

    found = list(admin.iter_transactions(metadata={"order": tag}, limit=3))
    assert [item.id for item in found] == [item.id for item in reversed(posted)]  # newest first, 2 pages
    assert [item.id for item in admin.iter_transactions(wallet_id=bob, limit=1)] == [t.id for t in reversed(posted)]
    with pytest.raises(wc.InvalidRequest) as invalid:
        admin.search_transactions(min_amount=5, max_amount=4)
    assert invalid.value.code == "invalid_request"

    assert admin.delete_alert(alert.id).id == alert.id
    assert admin.list_alerts(alice) == []
    with pytest.raises(wc.NotFound) as missing:
        admin.delete_alert(alert.id)
    assert missing.value.code == "alert_not_found"

    with pytest.raises(wc.WalletError) as refused:
        admin.create_webhook("http://127.0.0.1:9/hook")
    assert (refused.value.status, refused.value.code) == (422, "webhook_url_forbidden")
    assert admin.list_webhooks() == []
    with pytest.raises(wc.NotFound) as no_hook:
        admin.get_webhook("wh_missing")
    assert no_hook.value.code == "webhook_not_found"


def test_refunds_through_the_client(admin: WalletClient, live: ServerProcess) -> None:
    """Issue 15's refunds on the real server: a partial refund then the rest (no amount), the
    cap and a refund of a refund as typed problems, a retry with the same key moving money once,
    the receiver's owner allowed and the sender's refused, and ``refunded_amount`` on the
    original and in the statement."""
    alice, bob = funded(admin, "alice", 100), funded(admin, "bob", 0)
    original = admin.transfer(alice, bob, 60)
    assert original.refunded_amount == 0
    part = admin.refund(original.id, amount=25, description="damaged", idempotency_key=uid("rk"))
    assert (part.type, part.refund_of, part.from_wallet_id, part.to_wallet_id, part.amount) == (
        "refund", original.id, bob, alice, 25)
    with pytest.raises(wc.RefundExceedsRemaining) as over:
        admin.refund(original.id, amount=36)
    assert over.value.code == "refund_exceeds_remaining" and "35 left" in (over.value.detail or "")
    with pytest.raises(wc.NotRefundable):
        admin.refund(part.id)
    key = uid("rk")
    rest = admin.refund(original.id, idempotency_key=key)
    assert rest.amount == 35 and admin.refund(original.id, idempotency_key=key).id == rest.id
    assert admin.get_transaction(original.id).refunded_amount == 60
    assert (admin.get_wallet(alice).balance, admin.get_wallet(bob).balance) == (100, 0)
    (credit, *_) = admin.wallet_transactions(alice).items
    assert (credit.type, credit.refund_of, credit.amount) == ("refund", original.id, 35)
    assert [item.id for item in admin.iter_transactions(wallet_id=alice, type="refund")] == [rest.id, part.id]

    owner = uid("payee")
    payee = funded(admin, owner, 0)
    paid = admin.transfer(alice, payee, 10)
    with WalletClient(live.url, token=admin.create_token(owner).token) as user:
        assert user.refund(paid.id, amount=4).amount == 4
    with WalletClient(live.url, token=admin.create_token(admin.get_wallet(alice).owner_id).token) as sender:
        with pytest.raises(wc.Forbidden):
            sender.refund(paid.id, amount=1)
