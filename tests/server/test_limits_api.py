"""Wallet limits over HTTP, in process (the app over a real ``Ledger`` through a ``LocalPort``,
and ``update_wallet`` through a ``RemotePort`` as ``--workers N`` makes it): PATCH and POST
validation (each bad body changes nothing), the wallet representation everywhere, the 422 with
its detail, ``wallet.updated`` in the feed, and 20 concurrent transfers of 10 against a daily
limit of 100."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio

from ledger import INT64_MAX, Ledger, UpdateWallet, WalletUpdated, recover
from server._port import LocalPort, RemotePort, serve_port
from server.testing import in_process_api

ADMIN = {"Authorization": "Bearer admin"}


service = in_process_api


async def wallet(http: httpx.AsyncClient, wallet_id: str, deposit: int = 0, **limits: Any) -> dict[str, Any]:
    response = await http.post("/v1/wallets", json={"id": wallet_id, "owner_id": "alice", "asset": "USD", **limits})
    assert response.status_code == 201, response.text
    if deposit:
        response = await http.post("/v1/deposits", json={"wallet_id": wallet_id, "amount": deposit},
                                   headers={"Idempotency-Key": f"dep-{wallet_id}"})
        assert response.status_code == 201, response.text
    return dict((await http.get(f"/v1/wallets/{wallet_id}")).json())


async def send(http: httpx.AsyncClient, source: str, target: str, amount: int, key: str) -> httpx.Response:
    return await http.post("/v1/transfers", json={"from_wallet_id": source, "to_wallet_id": target, "amount": amount},
                           headers={"Idempotency-Key": key})


def limits_of(body: dict[str, Any]) -> tuple[Any, ...]:
    return body["overdraft_limit"], body["spend_limits"], body["spent"]


async def test_the_wallet_carries_limits_and_spending_everywhere(tmp_path: Path) -> None:
    async with service(tmp_path) as http:
        created = await http.post("/v1/wallets", json={"id": "plain", "owner_id": "alice", "asset": "USD"})
        assert limits_of(created.json()) == (0, {"daily": None, "monthly": None}, {"daily": 0, "monthly": 0})
        created = await http.post("/v1/wallets", json={
            "id": "w", "owner_id": "alice", "asset": "USD", "overdraft_limit": 500,
            "spend_limits": {"daily": 100}}, headers={"Idempotency-Key": "create-w"})
        assert created.status_code == 201
        expected = (500, {"daily": 100, "monthly": None}, {"daily": 0, "monthly": 0})
        assert limits_of(created.json()) == expected
        replayed = await http.post("/v1/wallets", json={
            "id": "w", "owner_id": "alice", "asset": "USD", "overdraft_limit": 500,
            "spend_limits": {"daily": 100}}, headers={"Idempotency-Key": "create-w"})
        assert replayed.status_code == 201 and replayed.json() == created.json()
        # The overdraft lets available go negative down to the limit.
        sent = await send(http, "w", "plain", 80, "t1")
        assert sent.status_code == 201, sent.text
        body = (await http.get("/v1/wallets/w")).json()
        assert (body["balance"], body["available"]) == (-80, -80)
        assert limits_of(body) == (500, {"daily": 100, "monthly": None}, {"daily": 80, "monthly": 80})
        listed = (await http.get("/v1/wallets", params={"owner_id": "alice"})).json()["items"]
        assert [limits_of(item) for item in listed if item["id"] == "w"] == [limits_of(body)]
        refused = await send(http, "w", "plain", 21, "t2")
        assert refused.status_code == 422
        assert refused.json()["code"] == "spend_limit_exceeded"
        assert refused.json()["detail"] == ("wallet w has a daily spend limit of 100, has spent 80 in this day "
                                            "(UTC), 21 requested")
        # PATCH: absent stays, null removes, metadata replaces.
        patched = await http.patch("/v1/wallets/w", json={"spend_limits": {"daily": None, "monthly": 90},
                                                           "metadata": {"tier": "gold"}})
        assert patched.status_code == 200, patched.text
        assert limits_of(patched.json()) == (500, {"daily": None, "monthly": 90}, {"daily": 80, "monthly": 80})
        assert patched.json()["metadata"] == {"tier": "gold"}
        refused = await send(http, "w", "plain", 11, "t3")
        assert refused.json()["code"] == "spend_limit_exceeded" and "monthly spend limit of 90" in refused.text
        patched = await http.patch("/v1/wallets/w", json={"overdraft_limit": 0, "spend_limits": None})
        assert patched.status_code == 200  # below the current deficit: allowed
        assert limits_of(patched.json())[:2] == (0, {"daily": None, "monthly": None})
        refused = await send(http, "w", "plain", 1, "t4")
        assert refused.json()["code"] == "insufficient_funds"
        feed = (await http.get("/v1/events", params={"limit": 1000})).json()["items"]
        updates = [item["data"] for item in feed if item["type"] == "wallet.updated"]
        assert updates[0] == {"wallet_id": "w", "overdraft_limit": 500, "metadata": {},
                              "spend_limits": {"daily": 100, "monthly": None}}
        assert updates[-1]["overdraft_limit"] == 0 and updates[-1]["metadata"] == {"tier": "gold"}
        assert len(updates) == 3


BAD_BODIES: list[tuple[Any, str]] = [
    ({"overdraft_limit": -1}, "overdraft_limit"),
    ({"overdraft_limit": INT64_MAX + 1}, "overdraft_limit"),
    ({"overdraft_limit": 1.0}, "overdraft_limit"),
    ({"overdraft_limit": "5"}, "overdraft_limit"),
    ({"overdraft_limit": None}, "overdraft_limit"),
    ({"overdraft_limit": True}, "overdraft_limit"),
    ({"spend_limits": {"daily": 0}}, "spend_limits.daily"),
    ({"spend_limits": {"monthly": -5}}, "spend_limits.monthly"),
    ({"spend_limits": {"daily": "10"}}, "spend_limits.daily"),
    ({"spend_limits": {"weekly": 10}}, "spend_limits.weekly"),
    ({"spend_limits": [10]}, "spend_limits"),
    ({"spend_limits": 5}, "spend_limits"),
    ({"metadata": [1]}, "metadata"),
    ({"balance": 5}, "balance"),
]


@pytest.mark.parametrize(("patch", "field"), BAD_BODIES)
async def test_bad_patch_and_create_bodies_are_400_and_change_nothing(
    tmp_path: Path, patch: dict[str, Any], field: str
) -> None:
    async with service(tmp_path, shards=1) as http:
        before = await wallet(http, "w", 10, overdraft_limit=5)
        response = await http.patch("/v1/wallets/w", json=patch)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "invalid_request"
        assert field in [error["field"] for error in response.json()["errors"]]
        assert (await http.get("/v1/wallets/w")).json() == before
        if field != "metadata":
            response = await http.post("/v1/wallets", json={"id": "x", "owner_id": "alice", "asset": "USD", **patch})
            assert response.status_code == 400, response.text
            assert field in [error["field"] for error in response.json()["errors"]]
            assert (await http.get("/v1/wallets/x")).status_code == 404


async def test_patch_of_unknown_closed_treasury_and_by_a_user(tmp_path: Path) -> None:
    async with service(tmp_path, shards=1) as http:
        await wallet(http, "w")
        missing = await http.patch("/v1/wallets/ghost", json={"overdraft_limit": 1})
        assert (missing.status_code, missing.json()["code"]) == (404, "wallet_not_found")
        treasury = await http.patch("/v1/wallets/treasury:USD", json={"overdraft_limit": 1})
        assert (treasury.status_code, treasury.json()["code"]) == (403, "forbidden")
        token = (await http.post("/v1/tokens", json={"owner_id": "alice"})).json()["token"]
        mine = await http.patch("/v1/wallets/w", json={"overdraft_limit": 1},
                                headers={"Authorization": f"Bearer {token}"})
        assert (mine.status_code, mine.json()["code"]) == (403, "forbidden")  # admin only, even the owner
        # Nor may a user create its own wallet with an overdraft (credit it would grant itself).
        own = await http.post("/v1/wallets", json={"id": "mine", "owner_id": "alice", "asset": "USD",
                                                   "overdraft_limit": 10**9},
                              headers={"Authorization": f"Bearer {token}"})
        assert (own.status_code, own.json()["code"]) == (403, "forbidden")
        assert (await http.get("/v1/wallets/mine")).status_code == 404
        assert (await http.patch("/v1/wallets/w", json={})).status_code == 200  # nothing to change
        assert (await http.post("/v1/wallets/w/close")).status_code == 200
        closed = await http.patch("/v1/wallets/w", json={"overdraft_limit": 1})
        assert (closed.status_code, closed.json()["code"]) == (409, "wallet_closed")


async def test_twenty_concurrent_transfers_of_10_against_a_daily_limit_of_100(tmp_path: Path) -> None:
    async with service(tmp_path) as http:
        await wallet(http, "payer", 1000, spend_limits={"daily": 100})
        for index in range(5):
            await wallet(http, f"r{index}")
        statuses: list[int] = []

        async def one(number: int) -> None:
            response = await send(http, "payer", f"r{number % 5}", 10, f"c{number}")
            statuses.append(response.status_code)

        async with anyio.create_task_group() as group:
            for number in range(20):
                group.start_soon(one, number)
        assert sorted(statuses) == [201] * 10 + [422] * 10
        body = (await http.get("/v1/wallets/payer")).json()
        assert (body["balance"], body["spent"]) == (900, {"daily": 100, "monthly": 100})
        # A batch: the items of the same step see what the earlier ones spent.
        await http.patch("/v1/wallets/payer", json={"spend_limits": {"daily": 130}})
        items = [{"idempotency_key": f"b{n}", "from_wallet_id": "payer", "to_wallet_id": "r1", "amount": 10}
                 for n in range(5)]
        batch = await http.post("/v1/transfers/batch", json={"atomic": False, "transfers": items})
        assert [result["status"] for result in batch.json()["results"]] == [201, 201, 201, 422, 422]


async def test_the_remote_port_carries_update_wallet(tmp_path: Path) -> None:
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        local = LocalPort(ledger)
        path = str(tmp_path / "ledger.sock")
        listener = await anyio.create_unix_listener(path)
        remote = RemotePort(path)

        async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with trio.open_nursery() as inner:
                inner.start_soon(serve_port, lambda: local, listener)
                await inner.start(remote.run)
                task_status.started()

        await nursery.start(serve)
        await remote.connected.wait()
        from ledger.testing import setup

        await setup(ledger, ["a"], 10)
        updated = await remote.update_wallet(UpdateWallet(wallet_id="a", overdraft_limit=5, daily_limit=0))
        assert isinstance(updated, list) and isinstance(updated[0], WalletUpdated)
        view = await remote.wallet("a")
        assert view is not None and (view.overdraft_limit, view.daily_limit, view.spent_daily) == (5, None, 0)
        nursery.cancel_scope.cancel()
