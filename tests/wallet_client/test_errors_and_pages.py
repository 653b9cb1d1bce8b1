"""Problem answers as typed exceptions (``wallet_client._errors``' table, a test per row), and
the cursor and event iterators walking several pages, sync and async."""

from __future__ import annotations

from urllib.parse import parse_qsl

import httpx
import pytest

import wallet_client as wc
from tests.wallet_client._fake import (
    ENTRY,
    EVENT,
    TRANSACTION,
    WALLET,
    FakeServer,
    async_client,
    problem,
    reply,
    sync_client,
)

ROWS = [
    (400, "invalid_request", wc.InvalidRequest),
    (400, "idempotency_key_missing", wc.InvalidRequest),
    (401, "unauthorized", wc.Unauthorized),
    (403, "forbidden", wc.Forbidden),
    (404, "not_found", wc.NotFound),
    (404, "wallet_not_found", wc.NotFound),
    (404, "alert_not_found", wc.NotFound),  # a code the table does not list: by its suffix
    (409, "idempotency_key_reused", wc.IdempotencyKeyReused),
    (409, "request_in_progress", wc.RequestInProgress),
    (409, "wallet_frozen", wc.WalletFrozen),
    (409, "wallet_closed", wc.WalletClosed),
    (409, "transfer_not_pending", wc.TransferNotPending),
    (409, "wallet_not_empty", wc.Conflict),
    (410, "gone", wc.Gone),
    (413, "payload_too_large", wc.PayloadTooLarge),
    (422, "insufficient_funds", wc.InsufficientFunds),
    (422, "spend_limit_exceeded", wc.SpendLimitExceeded),
    (409, "not_refundable", wc.NotRefundable),
    (422, "refund_exceeds_remaining", wc.RefundExceedsRemaining),
    (422, "batch_failed", wc.BatchFailed),
    (422, "asset_mismatch", wc.Unprocessable),
    (429, "rate_limited", wc.RateLimited),
    (503, "overloaded", wc.Overloaded),
    (503, "not_ready", wc.ServiceUnavailable),
    (500, "internal_error", wc.ServerError),
    (502, "bad_gateway", wc.ServerError),
    (418, "teapot", wc.WalletError),
]


@pytest.mark.parametrize(("status", "code", "kind"), ROWS, ids=[row[1] for row in ROWS])
def test_problem_maps_to_its_class(status: int, code: str, kind: type[wc.WalletError]) -> None:
    server = FakeServer([problem(status, code, "what went wrong", errors=[{"field": "f", "message": "m"}],
                                 oldest_lsn=5)])
    with sync_client(server, retry=wc.RetryPolicy.never()) as client, pytest.raises(wc.WalletError) as caught:
        client.transfer("w-1", "w-2", 1, idempotency_key="k")
    error = caught.value
    assert type(error) is kind
    assert (error.status, error.code, error.detail) == (status, code, "what went wrong")
    assert error.title and error.errors == [{"field": "f", "message": "m"}]
    assert error.body["oldest_lsn"] == 5 and b'"oldest_lsn": 5' in error.content
    assert error.idempotency_key == "k"
    assert code in str(error)


def test_an_answer_that_is_not_a_problem_still_raises_by_status() -> None:
    server = FakeServer([httpx.Response(502, text="<html>bad gateway</html>", headers={"content-type": "text/html"})])
    with sync_client(server, retry=wc.RetryPolicy.never()) as client, pytest.raises(wc.ServerError) as caught:
        client.get_wallet("w-1")
    assert caught.value.code == "http_502" and caught.value.content == b"<html>bad gateway</html>"


def test_gone_carries_the_oldest_lsn() -> None:
    server = FakeServer([problem(410, "gone", "compacted", oldest_lsn=40)])
    with sync_client(server) as client, pytest.raises(wc.Gone) as caught:
        client.events(after=3)
    assert caught.value.oldest_lsn == 40


def entries_server(total: int) -> FakeServer:
    """A statement of ``total`` entries served ``limit`` at a time, the cursor being the index."""

    def answer(request: httpx.Request) -> httpx.Response:
        params = dict(parse_qsl(request.url.query.decode()))
        start = int(params.get("cursor", "0"))
        limit = int(params["limit"])
        items = [{**ENTRY, "lsn": total - index} for index in range(start, min(start + limit, total))]
        following = start + limit if start + limit < total else None
        return reply(200, {"items": items, "next_cursor": None if following is None else str(following)})

    return FakeServer([answer])


def test_iter_wallet_transactions_walks_every_page_with_the_same_filters() -> None:
    server = entries_server(7)
    with sync_client(server) as client:
        lsns = [entry.lsn for entry in client.iter_wallet_transactions("w-1", type="transfer", limit=3)]
    assert lsns == [7, 6, 5, 4, 3, 2, 1]
    assert [request.url.params.get("cursor") for request in server.requests] == [None, "3", "6"]
    assert all(request.url.params["type"] == "transfer" for request in server.requests)


async def test_async_iterators_walk_every_page() -> None:
    server = entries_server(5)
    async with async_client(server) as client:
        lsns = [entry.lsn async for entry in client.iter_wallet_transactions("w-1", limit=2)]
    assert lsns == [5, 4, 3, 2, 1] and len(server.requests) == 3


def test_pages_are_fetched_only_when_needed() -> None:
    server = entries_server(10)
    with sync_client(server) as client:
        walker = client.iter_wallet_transactions("w-1", limit=4)
        assert server.requests == []
        assert next(walker).lsn == 10
        assert len(server.requests) == 1


def test_iter_transactions_keeps_metadata_filters_on_every_page() -> None:
    pages = [reply(200, {"items": [TRANSACTION, TRANSACTION], "next_cursor": "s:5"}),
             reply(200, {"items": [{**TRANSACTION, "id": "tx_3"}], "next_cursor": None})]
    server = FakeServer(pages)
    with sync_client(server) as client:
        found = list(client.iter_transactions(wallet_id="w-1", metadata={"order": "o-1"}, limit=2))
    assert [t.id for t in found] == ["tx_1", "tx_1", "tx_3"]
    first, second = server.requests
    assert list(second.url.params.multi_items()) == [("wallet_id", "w-1"), ("metadata.order", "o-1"),
                                                     ("limit", "2"), ("cursor", "s:5")]
    assert "cursor" not in first.url.params


def test_iter_wallets_and_withdrawals_follow_cursors() -> None:
    server = FakeServer([reply(200, {"items": [WALLET], "next_cursor": "w:1"}),
                         reply(200, {"items": [{**WALLET, "id": "w-2"}], "next_cursor": None})])
    with sync_client(server) as client:
        assert [w.id for w in client.iter_wallets(asset="USD", limit=1)] == ["w-1", "w-2"]
    assert server.requests[1].url.params["cursor"] == "w:1"


def events_server(lsns: list[int]) -> FakeServer:
    def answer(request: httpx.Request) -> httpx.Response:
        after = int(request.url.params["after"])
        limit = int(request.url.params.get("limit", "100"))
        items = [{**EVENT, "lsn": lsn} for lsn in lsns if lsn > after][:limit]
        return reply(200, {"items": items, "next_after": items[-1]["lsn"] if items else after})

    return FakeServer([answer])


def test_iter_events_follows_after_to_the_end_of_the_feed() -> None:
    server = events_server([2, 3, 5, 8, 9])
    with sync_client(server) as client:
        assert [event.lsn for event in client.iter_events(after=2, limit=2)] == [3, 5, 8, 9]
    assert [request.url.params["after"] for request in server.requests] == ["2", "5", "9"]


async def test_iter_events_follow_long_polls_for_new_events() -> None:
    lsns = [1, 2]
    server = events_server(lsns)
    seen = []
    async with async_client(server, timeout_s=5) as client:
        async for event in client.iter_events(follow=True, wait=0.5):
            seen.append(event.lsn)
            if event.lsn == 2:
                lsns.append(3)  # arrives while the iterator waits
            if event.lsn == 3:
                break
    assert seen == [1, 2, 3]
    assert all(request.url.params["wait"] == "0.5" for request in server.requests)
    assert server.requests[-1].extensions["timeout"]["read"] == 5.5  # the wait on top of the timeout
