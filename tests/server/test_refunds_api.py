"""Refunds over HTTP, in process (the app over a real ``Ledger`` through a ``LocalPort``, and the
refund call through a ``RemotePort`` as ``--workers N`` makes it): full and partial refunds,
the cap, deposits back to the treasury, captured holds, every rejection (and that it changes
nothing), who may refund, idempotent replays, ``refunded_amount`` on the original and in
statements, ``type=refund`` in search, ``refund.posted`` in the feed, 20 concurrent refunds of 1
on a transaction of 10, and the answers against the OpenAPI document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio

from ledger import Committed, Ledger, Refund, Refunded, TransactionStatus, TransactionType, recover
from server._port import LocalPort, RemotePort, serve_port
from server.testing import in_process_api

ADMIN = {"Authorization": "Bearer admin"}


service = in_process_api


_keys = iter(range(10**9))


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"k{next(_keys)}"}


async def wallet(http: httpx.AsyncClient, wallet_id: str, owner: str = "alice", deposit: int = 0) -> str:
    response = await http.post("/v1/wallets", json={"id": wallet_id, "owner_id": owner, "asset": "USD"})
    assert response.status_code == 201, response.text
    if deposit:
        response = await http.post("/v1/deposits", json={"wallet_id": wallet_id, "amount": deposit}, headers=key())
        assert response.status_code == 201, response.text
    return wallet_id


async def send(http: httpx.AsyncClient, source: str, target: str, amount: int, **extra: Any) -> dict[str, Any]:
    response = await http.post("/v1/transfers", json={"from_wallet_id": source, "to_wallet_id": target,
                                                      "amount": amount, **extra}, headers=key())
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def refund(http: httpx.AsyncClient, transaction_id: str, body: Any = None, *,
                 headers: dict[str, str] | None = None) -> httpx.Response:
    return await http.post(f"/v1/transactions/{transaction_id}/refund", json=body,
                           headers=key() if headers is None else headers)


async def balances(http: httpx.AsyncClient, *wallet_ids: str) -> list[int]:
    return [(await http.get(f"/v1/wallets/{wallet_id}")).json()["balance"] for wallet_id in wallet_ids]


async def user(http: httpx.AsyncClient, owner: str) -> dict[str, str]:
    response = await http.post("/v1/tokens", json={"owner_id": owner})
    assert response.status_code == 201
    return {"Authorization": f"Bearer {response.json()['token']}"}


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


async def test_partial_then_full_refund_shows_everywhere(tmp_path: Path) -> None:
    async with service(tmp_path) as http:
        await wallet(http, "a", deposit=100)
        await wallet(http, "b", owner="bob")
        original = await send(http, "a", "b", 70, description="order 7")
        assert original["refunded_amount"] == 0
        first = await refund(http, original["id"], {"amount": 30, "description": "damaged", "metadata": {"n": "1"}})
        assert first.status_code == 201, first.text
        body = first.json()
        assert body == {
            "id": body["id"], "type": "refund", "status": "posted", "from_wallet_id": "b", "to_wallet_id": "a",
            "asset": "USD", "amount": 30, "description": "damaged", "metadata": {"n": "1"},
            "created_at": body["created_at"], "lsn": body["lsn"], "refund_of": original["id"], "refunded_amount": 0,
        }
        assert await balances(http, "a", "b") == [60, 40]
        rest = await refund(http, original["id"])  # no body: what is left
        assert rest.status_code == 201 and rest.json()["amount"] == 40
        assert await balances(http, "a", "b") == [100, 0]
        none_left = problem(await refund(http, original["id"], {}), 422, "refund_exceeds_remaining")
        assert "0 left" in none_left["detail"]
        got = (await http.get(f"/v1/transactions/{original['id']}")).json()
        assert got["refunded_amount"] == 70 and got["amount"] == 70 and "refund_of" not in got
        got_refund = (await http.get(f"/v1/transactions/{body['id']}")).json()
        assert (got_refund["type"], got_refund["refund_of"], got_refund["refunded_amount"]) == (
            "refund", original["id"], 0)
        assert got_refund["lsn"] == body["lsn"]
        # Statements: the original with its refunded amount, the refunds as type refund.
        items = (await http.get("/v1/wallets/a/transactions")).json()["items"]
        assert [(item["type"], item["direction"], item["amount"], item["balance_after"]) for item in items] == [
            ("refund", "credit", 40, 100), ("refund", "credit", 30, 60), ("transfer", "debit", 70, 30),
            ("deposit", "credit", 100, 100),
        ]
        assert items[0]["refund_of"] == original["id"] and items[2]["refunded_amount"] == 70
        assert items[3]["refunded_amount"] == 0 and "refund_of" not in items[3]
        only = (await http.get("/v1/wallets/b/transactions", params={"type": "refund"})).json()["items"]
        assert [item["direction"] for item in only] == ["debit", "debit"]
        found = (await http.get("/v1/transactions", params={"type": "refund"})).json()["items"]
        assert [item["id"] for item in found] == [rest.json()["id"], body["id"]]
        assert {item["refund_of"] for item in found} == {original["id"]}
        feed = (await http.get("/v1/events", params={"limit": 1000})).json()["items"]
        posted = [item for item in feed if item["type"] == "refund.posted"]
        assert [item["data"]["id"] for item in posted] == [body["id"], rest.json()["id"]]
        assert posted[0]["data"]["refund_of"] == original["id"]


async def test_the_cap_holds_across_several_refunds(tmp_path: Path) -> None:
    async with service(tmp_path) as http:
        await wallet(http, "a", deposit=100)
        await wallet(http, "b")
        original = await send(http, "a", "b", 100)
        for _ in range(2):
            assert (await refund(http, original["id"], {"amount": 40})).status_code == 201
        over = problem(await refund(http, original["id"], {"amount": 30}), 422, "refund_exceeds_remaining")
        assert over["detail"] == f"transaction {original['id']} has 20 left to refund, 30 requested"
        assert await balances(http, "a", "b") == [80, 20]
        assert (await refund(http, original["id"], {"amount": 20})).status_code == 201
        assert (await http.get(f"/v1/transactions/{original['id']}")).json()["refunded_amount"] == 100


async def test_a_deposit_refund_goes_back_to_the_treasury(tmp_path: Path) -> None:
    async with service(tmp_path) as http:
        await wallet(http, "a")
        deposited = await http.post("/v1/deposits", json={"wallet_id": "a", "amount": 100}, headers=key())
        refunded = await refund(http, deposited.json()["id"], {"amount": 60})
        assert refunded.status_code == 201, refunded.text
        assert (refunded.json()["from_wallet_id"], refunded.json()["to_wallet_id"]) == ("a", "treasury:USD")
        assert await balances(http, "a", "treasury:USD") == [40, -40]


async def test_a_captured_hold_is_refundable_up_to_the_captured_amount(tmp_path: Path) -> None:
    async with service(tmp_path) as http:
        await wallet(http, "a", deposit=100)
        await wallet(http, "b")
        held = await send(http, "a", "b", 80, hold={"timeout_s": 600})
        problem(await refund(http, held["id"], {"amount": 1}), 409, "not_refundable")  # pending
        captured = await http.post(f"/v1/transfers/{held['id']}/capture", json={"amount": 50}, headers=key())
        assert captured.status_code == 200
        problem(await refund(http, held["id"], {"amount": 51}), 422, "refund_exceeds_remaining")
        whole = await refund(http, held["id"])
        assert whole.status_code == 201 and whole.json()["amount"] == 50
        assert await balances(http, "a", "b") == [100, 0]
        voided = await send(http, "a", "b", 10, hold={"timeout_s": 600})
        assert (await http.post(f"/v1/transfers/{voided['id']}/void", headers=key())).status_code == 200
        problem(await refund(http, voided["id"]), 409, "not_refundable")


async def test_every_rejection_has_its_code_and_changes_nothing(tmp_path: Path) -> None:
    async with service(tmp_path) as http:
        await wallet(http, "a", deposit=100)
        await wallet(http, "b", deposit=5)
        await wallet(http, "c")
        original = await send(http, "a", "b", 50)
        first = await refund(http, original["id"], {"amount": 10})
        withdrawal = await http.post("/v1/withdrawals", json={"wallet_id": "a", "amount": 5,
                                                               "destination": {"iban": "x"}}, headers=key())
        assert withdrawal.status_code == 202
        before = await balances(http, "a", "b", "c", "treasury:USD")
        feed_before = len((await http.get("/v1/events", params={"limit": 1000})).json()["items"])
        rows = [
            (await refund(http, "tx_nope"), 404, "transaction_not_found"),
            (await refund(http, "bad id!"), 404, "transaction_not_found"),
            (await refund(http, first.json()["id"]), 409, "not_refundable"),  # a refund
            (await refund(http, withdrawal.json()["id"]), 409, "not_refundable"),
            (await refund(http, original["id"], {"amount": 41}), 422, "refund_exceeds_remaining"),
            (await refund(http, original["id"], {"amount": 0}), 400, "invalid_request"),
            (await refund(http, original["id"], {"amount": -1}), 400, "invalid_request"),
            (await refund(http, original["id"], {"amount": 1.5}), 400, "invalid_request"),
            (await refund(http, original["id"], {"amount": 10.0}), 400, "invalid_request"),
            (await refund(http, original["id"], {"amount": "1"}), 400, "invalid_request"),
            (await refund(http, original["id"], {"amount": True}), 400, "invalid_request"),
            (await refund(http, original["id"], {"amount": None}), 400, "invalid_request"),
            (await refund(http, original["id"], {"amount": 2**63}), 400, "invalid_request"),
            (await refund(http, original["id"], {"amount": 1, "to": "c"}), 400, "invalid_request"),
            (await refund(http, original["id"], {"metadata": []}), 400, "invalid_request"),
            (await refund(http, original["id"], [1]), 400, "invalid_request"),
            (await refund(http, original["id"], {"amount": 1}, headers={}), 400, "idempotency_key_missing"),
            (await http.post(f"/v1/transactions/{original['id']}/refund", content=b"amount=1",
                             headers={**key(), "Content-Type": "text/plain"}), 415, "unsupported_media_type"),
        ]
        for response, status, code in rows:
            problem(response, status, code)
        # The refunding wallet needs the money (b has 5 + 50 - 10 = 45) ...
        await send(http, "b", "c", 40)
        short = problem(await refund(http, original["id"], {"amount": 6}), 422, "insufficient_funds")
        assert "5 available" in short["detail"]
        # ... and must be active; the refunded wallet may be frozen, not closed.
        assert (await http.post("/v1/wallets/b/freeze")).status_code == 200
        problem(await refund(http, original["id"], {"amount": 1}), 409, "wallet_frozen")
        assert (await http.post("/v1/wallets/b/unfreeze")).status_code == 200
        assert (await http.post("/v1/wallets/a/freeze")).status_code == 200
        assert (await refund(http, original["id"], {"amount": 1})).status_code == 201
        assert (await http.post("/v1/wallets/a/unfreeze")).status_code == 200
        paid = await send(http, "c", "b", 40)
        assert (await http.post(f"/v1/transactions/{paid['id']}/refund", json={"amount": 40},
                                headers=key())).status_code == 201
        problem(await refund(http, paid["id"], {"amount": 1}), 422, "refund_exceeds_remaining")
        after = await balances(http, "a", "b", "c", "treasury:USD")
        assert after == [before[0] + 1, before[1] - 40 - 1, before[2] + 40, before[3]]
        feed = (await http.get("/v1/events", params={"limit": 1000})).json()["items"]
        assert [item["type"] for item in feed[feed_before:]] == [
            "transfer.posted", "wallet.frozen", "wallet.unfrozen", "wallet.frozen", "refund.posted",
            "wallet.unfrozen", "transfer.posted", "refund.posted",
        ]
        await send(http, "a", "c", before[0] + 1 - 5)  # a keeps only its withdrawal's hold
        c_refund = await refund(http, original["id"], {"amount": 1})  # to a, still open
        assert c_refund.status_code == 201


async def test_a_refund_to_a_closed_wallet_is_refused(tmp_path: Path) -> None:
    async with service(tmp_path) as http:
        await wallet(http, "a", deposit=10)
        await wallet(http, "b")
        original = await send(http, "a", "b", 10)
        assert (await http.post("/v1/wallets/a/close")).status_code == 200
        problem(await refund(http, original["id"]), 409, "wallet_closed")
        assert await balances(http, "a", "b") == [0, 10]


async def test_who_may_refund_and_replays(tmp_path: Path) -> None:
    async with service(tmp_path) as http:
        await wallet(http, "a", owner="alice", deposit=100)
        await wallet(http, "b", owner="bob")
        original = await send(http, "a", "b", 50)
        alice, bob, carol = await user(http, "alice"), await user(http, "bob"), await user(http, "carol")
        problem(await refund(http, original["id"], {"amount": 1}, headers={**alice, **key()}), 403, "forbidden")
        problem(await refund(http, original["id"], {"amount": 1}, headers={**carol, **key()}), 403, "forbidden")
        unknown = await http.post(f"/v1/transactions/{original['id']}/refund", json={"amount": 1},
                                  headers={**key(), "Authorization": "Bearer nope"})
        problem(unknown, 401, "unauthorized")
        # A deposit is received by a wallet too: its owner may send it back to the treasury.
        deposited = (await http.get("/v1/wallets/a/transactions")).json()["items"][-1]
        assert (await refund(http, deposited["transaction_id"], {"amount": 1},
                             headers={**alice, **key()})).status_code == 201
        problem(await refund(http, deposited["transaction_id"], {"amount": 1}, headers={**bob, **key()}),
                403, "forbidden")
        # Who may refund is decided before anything about the original: alice's own withdrawal
        # was received by the treasury, so she may not (403, not 409 not_refundable).
        withdrawal = await http.post("/v1/withdrawals", json={"wallet_id": "a", "amount": 1,
                                                               "destination": {"iban": "x"}}, headers=key())
        assert withdrawal.status_code == 202
        problem(await refund(http, withdrawal.json()["id"], headers={**alice, **key()}), 403, "forbidden")
        problem(await refund(http, withdrawal.json()["id"]), 409, "not_refundable")  # the admin
        keyed = {**bob, "Idempotency-Key": "bob-1"}
        first = await refund(http, original["id"], {"amount": 5}, headers=keyed)
        assert first.status_code == 201
        again = await refund(http, original["id"], {"amount": 5}, headers=keyed)
        assert again.status_code == 201 and again.json() == first.json()
        problem(await refund(http, original["id"], {"amount": 6}, headers=keyed), 409, "idempotency_key_reused")
        assert await balances(http, "a", "b") == [54, 45]  # a's withdrawal is only held
        assert (await http.get(f"/v1/transactions/{original['id']}", headers=bob)).json()["refunded_amount"] == 5


@pytest.mark.parametrize("shards", [1, 4])
async def test_twenty_concurrent_refunds_of_one_on_ten_post_exactly_ten(tmp_path: Path, shards: int) -> None:
    async with service(tmp_path, shards=shards) as http:
        await wallet(http, "a", deposit=10)
        await wallet(http, "b", deposit=100)
        original = await send(http, "a", "b", 10)
        statuses: list[int] = []

        async def one() -> None:
            statuses.append((await refund(http, original["id"], {"amount": 1})).status_code)

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(one)
        assert sorted(statuses) == [201] * 10 + [422] * 10
        assert await balances(http, "a", "b") == [10, 100]
        assert (await http.get(f"/v1/transactions/{original['id']}")).json()["refunded_amount"] == 10


async def test_the_remote_port_carries_the_refund_call(tmp_path: Path) -> None:
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        local = LocalPort(ledger)
        path = str(tmp_path / "ledger.sock")
        listener = await anyio.create_unix_listener(path)
        remote = RemotePort(path)
        transport = trio.CancelScope()

        async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with transport:
                async with trio.open_nursery() as inner:
                    inner.start_soon(serve_port, lambda: local, listener)
                    await inner.start(remote.run)
                    task_status.started()

        await nursery.start(serve)
        await remote.connected.wait()
        from ledger.testing import setup, transfer

        await setup(ledger, ["a", "b"], 10)
        original = await ledger.transfer(transfer(1, "a", "b", 7))
        assert isinstance(original, Committed)
        command = Refund(
            transaction_id="r1", refund_of="tx1", from_wallet_id="b", to_wallet_id="a", amount=None,
            original_type=TransactionType.TRANSFER, original_status=TransactionStatus.POSTED, original_amount=7,
            description=None, metadata=None, idempotency=None, owner_id="o",
        )
        done = await remote.refund(command)
        assert isinstance(done, Committed) and isinstance(done.event, Refunded) and done.event.amount == 7
        transport.cancel()
        await ledger.stop()


async def test_the_answers_match_the_openapi_document(tmp_path: Path) -> None:
    from server._openapi import build
    from tests.e2e.test_openapi_responses import validate

    document = build()
    operation = document["paths"]["/v1/transactions/{transaction_id}/refund"]["post"]
    assert operation["operationId"] == "refundTransaction"
    assert "refund" in document["components"]["schemas"]["Transaction"]["properties"]["type"]["enum"]
    async with service(tmp_path) as http:
        await wallet(http, "a", deposit=100)
        await wallet(http, "b")
        original = await send(http, "a", "b", 50)
        responses = [
            await refund(http, original["id"], {"amount": 10}),
            await refund(http, original["id"], {"amount": 100}),
            await refund(http, "tx_nope"),
            await refund(http, original["id"], {"amount": 0}),
            await http.get(f"/v1/transactions/{original['id']}"),
            await http.get("/v1/wallets/a/transactions"),
            await http.get("/v1/transactions", params={"type": "refund"}),
            await http.get("/v1/events"),
        ]
        assert [response.status_code for response in responses] == [201, 422, 404, 400, 200, 200, 200, 200]
        for response in responses:
            validate(document, response)
