"""Happy paths of the HTTP API against a real ``wallet serve``, checked against ``API.md``:
assets, wallets (create, read, list with pagination, freeze/unfreeze/close), deposits,
transfers, idempotency (also across a SIGKILL restart), transaction reads, statements,
balances in the past, the operational endpoints and the shape of every error.

One server per module; every test uses its own wallet ids, owners and idempotency keys, so the
tests do not interfere (the restart test only restarts the process on the same data)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e._server import ServerProcess

INT64_MAX = 2**63 - 1
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
WALLET_FIELDS = {
    "id", "owner_id", "asset", "balance", "held", "available", "status", "created_at", "updated_at",
}
TRANSACTION_FIELDS = {
    "id", "type", "status", "from_wallet_id", "to_wallet_id", "asset", "amount", "description",
    "metadata", "created_at", "lsn",
}
ENTRY_FIELDS = {
    "transaction_id", "type", "status", "direction", "amount", "balance_after",
    "counterparty_wallet_id", "description", "created_at", "lsn",
}
PROBLEM_FIELDS = {"type", "title", "status", "code", "detail"}


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(Path(tmp_path_factory.mktemp("api")) / "data")
    process.start()
    try:
        with process.client() as http:
            for code in ("USD", "EUR"):
                response = http.post("/v1/assets", json={"code": code, "scale": 2})
                assert response.status_code in (200, 201), response.text
        yield process
    finally:
        process.kill()


@pytest.fixture
def http(api_server: ServerProcess) -> Iterator[httpx.Client]:
    with api_server.client() as client:
        yield client


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def key() -> str:
    return "k-" + uuid.uuid4().hex


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0].strip() == "application/problem+json"
    body = response.json()
    assert PROBLEM_FIELDS <= set(body), body
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def new_wallet(http: httpx.Client, *, owner: str | None = None, asset: str = "USD") -> str:
    wallet_id = uid("w")
    response = http.post(
        "/v1/wallets", json={"id": wallet_id, "owner_id": owner or uid("o"), "asset": asset}
    )
    assert response.status_code == 201, response.text
    return wallet_id


def deposit(http: httpx.Client, wallet_id: str, amount: int, idempotency_key: str | None = None) -> dict[str, Any]:
    response = http.post(
        "/v1/deposits", json={"wallet_id": wallet_id, "amount": amount},
        headers={"Idempotency-Key": idempotency_key or key()},
    )
    assert response.status_code == 201, response.text
    return response.json()


def transfer(http: httpx.Client, source: str, target: str, amount: int, **extra: Any) -> httpx.Response:
    return http.post(
        "/v1/transfers", json={"from_wallet_id": source, "to_wallet_id": target, "amount": amount, **extra},
        headers={"Idempotency-Key": key()},
    )


def posted(http: httpx.Client, source: str, target: str, amount: int, **extra: Any) -> dict[str, Any]:
    response = transfer(http, source, target, amount, **extra)
    assert response.status_code == 201, response.text
    return response.json()


def wallet(http: httpx.Client, wallet_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/wallets/{wallet_id}")
    assert response.status_code == 200, response.text
    return response.json()


def balance(http: httpx.Client, wallet_id: str) -> int:
    return wallet(http, wallet_id)["balance"]


def all_pages(http: httpx.Client, path: str, params: dict[str, Any], limit: int) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": limit}
        if cursor is not None:
            query["cursor"] = cursor
        response = http.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "next_cursor"}, body
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert isinstance(cursor, str) and cursor
        assert len(pages) < 1000, "pagination does not end"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_wallet(body: dict[str, Any], *, wallet_id: str | None = None, owner: str, asset: str) -> None:
    assert WALLET_FIELDS <= set(body), body
    if wallet_id is not None:
        assert body["id"] == wallet_id
    assert ID.match(body["id"])
    assert body["owner_id"] == owner
    assert body["asset"] == asset
    assert body["available"] == body["balance"] - body["held"]
    assert body["status"] in ("active", "frozen", "closed")
    assert TIMESTAMP.match(body["created_at"]), body["created_at"]
    assert TIMESTAMP.match(body["updated_at"]), body["updated_at"]


def check_transaction(body: dict[str, Any]) -> None:
    assert TRANSACTION_FIELDS <= set(body), body
    assert body["id"].startswith("tx_")
    assert body["status"] == "posted"
    assert type(body["amount"]) is int and body["amount"] >= 1
    assert type(body["lsn"]) is int and body["lsn"] >= 1
    assert isinstance(body["metadata"], dict)
    assert TIMESTAMP.match(body["created_at"]), body["created_at"]


# -- assets ------------------------------------------------------------------------------------


def test_asset_create_repeat_conflict_and_list(http: httpx.Client) -> None:
    code = "A" + uuid.uuid4().hex[:8].upper()
    created = http.post("/v1/assets", json={"code": code, "scale": 3})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["code"] == code
    assert body["scale"] == 3
    assert body["treasury_wallet_id"] == f"treasury:{code}"
    assert TIMESTAMP.match(body["created_at"])

    again = http.post("/v1/assets", json={"code": code, "scale": 3})
    assert again.status_code == 200, again.text
    assert again.json() == body

    assert_problem(http.post("/v1/assets", json={"code": code, "scale": 2}), 409, "asset_exists")

    listed = http.get("/v1/assets")
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert [item for item in items if item["code"] == code] == [body]
    assert {"USD", "EUR"} <= {item["code"] for item in items}

    treasury = wallet(http, f"treasury:{code}")
    assert treasury["balance"] == 0
    assert treasury["asset"] == code


# -- wallets -----------------------------------------------------------------------------------


def test_wallet_create_with_id_then_same_again_then_conflicts(http: httpx.Client) -> None:
    wallet_id, owner = uid("w"), uid("o")
    created = http.post(
        "/v1/wallets", json={"id": wallet_id, "owner_id": owner, "asset": "USD", "metadata": {"tier": "gold"}}
    )
    assert created.status_code == 201, created.text
    assert created.headers["content-type"].startswith("application/json")
    body = created.json()
    check_wallet(body, wallet_id=wallet_id, owner=owner, asset="USD")
    assert (body["balance"], body["held"], body["available"], body["status"]) == (0, 0, 0, "active")

    again = http.post("/v1/wallets", json={"id": wallet_id, "owner_id": owner, "asset": "USD"})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == wallet_id
    assert again.json()["created_at"] == body["created_at"]

    assert_problem(
        http.post("/v1/wallets", json={"id": wallet_id, "owner_id": uid("o"), "asset": "USD"}), 409, "wallet_exists"
    )
    assert_problem(
        http.post("/v1/wallets", json={"id": wallet_id, "owner_id": owner, "asset": "EUR"}), 409, "wallet_exists"
    )
    fetched = wallet(http, wallet_id)
    check_wallet(fetched, wallet_id=wallet_id, owner=owner, asset="USD")
    assert fetched["created_at"] == body["created_at"]


def test_wallet_create_without_id_gets_a_server_made_id(http: httpx.Client) -> None:
    owner = uid("o")
    first = http.post("/v1/wallets", json={"owner_id": owner, "asset": "USD"})
    second = http.post("/v1/wallets", json={"owner_id": owner, "asset": "USD"})
    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    check_wallet(first.json(), owner=owner, asset="USD")
    assert first.json()["id"] != second.json()["id"]
    assert not first.json()["id"].startswith("treasury:")
    assert wallet(http, first.json()["id"])["owner_id"] == owner


def test_wallet_create_without_id_retried_with_a_key_makes_one_wallet(http: httpx.Client) -> None:
    owner, retry_key = uid("o"), key()
    replies = [
        http.post("/v1/wallets", json={"owner_id": owner, "asset": "USD"}, headers={"Idempotency-Key": retry_key})
        for _ in range(2)
    ]
    assert [reply.status_code for reply in replies] == [201, 201]
    assert replies[1].json() == replies[0].json()
    listed = http.get("/v1/wallets", params={"owner_id": owner}).json()["items"]
    assert [item["id"] for item in listed] == [replies[0].json()["id"]]


def test_wallet_with_unknown_asset_is_422(http: httpx.Client) -> None:
    wallet_id = uid("w")
    assert_problem(
        http.post("/v1/wallets", json={"id": wallet_id, "owner_id": "o", "asset": "NOPE"}), 422, "asset_not_found"
    )
    assert_problem(http.get(f"/v1/wallets/{wallet_id}"), 404, "wallet_not_found")


def test_get_unknown_wallet_is_404(http: httpx.Client) -> None:
    assert_problem(http.get("/v1/wallets/no-such-wallet"), 404, "wallet_not_found")


def test_list_wallets_by_owner_pages_visit_each_exactly_once(http: httpx.Client) -> None:
    owner = uid("o")
    ids = [new_wallet(http, owner=owner) for _ in range(5)]
    new_wallet(http)  # someone else's

    pages = all_pages(http, "/v1/wallets", {"owner_id": owner}, limit=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    seen = [item["id"] for page in pages for item in page]
    assert sorted(seen) == sorted(ids)
    for page in pages:
        for item in page:
            check_wallet(item, owner=owner, asset="USD")

    # A wallet created while a client is paging shows up exactly once, on a later page.
    first = http.get("/v1/wallets", params={"owner_id": owner, "limit": 2}).json()
    late = new_wallet(http, owner=owner)
    rest: list[str] = [item["id"] for item in first["items"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        body = http.get("/v1/wallets", params={"owner_id": owner, "limit": 2, "cursor": cursor}).json()
        rest += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
    assert sorted(rest) == sorted([*ids, late])

    one_page = http.get("/v1/wallets", params={"owner_id": owner, "limit": 1000}).json()
    assert one_page["next_cursor"] is None
    assert len(one_page["items"]) == 6


def test_list_wallets_by_asset_and_by_owner_and_asset(http: httpx.Client) -> None:
    asset = "P" + uuid.uuid4().hex[:8].upper()
    assert http.post("/v1/assets", json={"code": asset, "scale": 0}).status_code == 201
    owners = [uid("o"), uid("o")]
    ids = [new_wallet(http, owner=owners[index % 2], asset=asset) for index in range(7)]
    usd_of_first = new_wallet(http, owner=owners[0], asset="USD")

    pages = all_pages(http, "/v1/wallets", {"asset": asset}, limit=3)
    assert [len(page) for page in pages] == [3, 3, 1]
    seen = [item["id"] for page in pages for item in page]
    assert sorted(seen) == sorted(ids)
    assert all(item["asset"] == asset for page in pages for item in page)

    pages = all_pages(http, "/v1/wallets", {"owner_id": owners[0], "asset": asset}, limit=2)
    seen = [item["id"] for page in pages for item in page]
    assert sorted(seen) == sorted(ids[0::2])
    assert usd_of_first not in seen


def test_freeze_blocks_sending_not_receiving_and_unfreeze(http: httpx.Client) -> None:
    frozen, other = new_wallet(http), new_wallet(http)
    deposit(http, frozen, 1000)
    deposit(http, other, 1000)

    response = http.post(f"/v1/wallets/{frozen}/freeze")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "frozen"
    assert wallet(http, frozen)["status"] == "frozen"

    assert_problem(transfer(http, frozen, other, 10), 409, "wallet_frozen")
    assert posted(http, other, frozen, 10)["to_wallet_id"] == frozen
    deposit(http, frozen, 5)  # a deposit credits the frozen wallet too
    assert balance(http, frozen) == 1015
    assert balance(http, other) == 990

    response = http.post(f"/v1/wallets/{frozen}/unfreeze")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "active"
    posted(http, frozen, other, 15)
    assert balance(http, frozen) == 1000
    assert balance(http, other) == 1005

    assert_problem(http.post("/v1/wallets/no-such-wallet/freeze"), 404, "wallet_not_found")


def test_close_needs_zero_balance_and_closed_wallet_neither_sends_nor_receives(http: httpx.Client) -> None:
    closing, other = new_wallet(http), new_wallet(http)
    deposit(http, closing, 300)
    deposit(http, other, 300)

    assert_problem(http.post(f"/v1/wallets/{closing}/close"), 409, "wallet_not_empty")
    assert wallet(http, closing)["status"] == "active"

    posted(http, closing, other, 300)
    response = http.post(f"/v1/wallets/{closing}/close")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "closed"
    assert response.json()["balance"] == 0

    assert_problem(transfer(http, closing, other, 1), 409, "wallet_closed")
    assert_problem(transfer(http, other, closing, 1), 409, "wallet_closed")
    assert_problem(
        http.post("/v1/deposits", json={"wallet_id": closing, "amount": 1}, headers={"Idempotency-Key": key()}),
        409, "wallet_closed",
    )
    assert_problem(http.post(f"/v1/wallets/{closing}/unfreeze"), 409, "wallet_closed")
    assert balance(http, closing) == 0
    assert balance(http, other) == 600
    assert wallet(http, closing)["status"] == "closed"


# -- deposits and double entry -------------------------------------------------------------------


def sum_of_balances(http: httpx.Client, asset: str) -> int:
    pages = all_pages(http, "/v1/wallets", {"asset": asset}, limit=1000)
    return sum(item["balance"] for page in pages for item in page) + balance(http, f"treasury:{asset}")


def test_deposit_debits_the_treasury_and_every_asset_sums_to_zero(http: httpx.Client) -> None:
    target = new_wallet(http)
    treasury_before = balance(http, "treasury:USD")
    response = http.post(
        "/v1/deposits",
        json={"wallet_id": target, "amount": 1500, "description": "top-up", "metadata": {"ref": "r1", "n": 2}},
        headers={"Idempotency-Key": key()},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    check_transaction(body)
    assert body["type"] == "deposit"
    assert body["from_wallet_id"] == "treasury:USD"
    assert body["to_wallet_id"] == target
    assert body["asset"] == "USD"
    assert body["amount"] == 1500
    assert body["description"] == "top-up"
    assert body["metadata"] == {"ref": "r1", "n": 2}

    assert balance(http, target) == 1500
    assert balance(http, "treasury:USD") == treasury_before - 1500
    assert balance(http, "treasury:USD") < 0
    deposit(http, new_wallet(http, asset="EUR"), 700)
    for asset in ("USD", "EUR"):
        assert sum_of_balances(http, asset) == 0


def test_no_balance_leaves_int64(http: httpx.Client) -> None:
    asset = "B" + uuid.uuid4().hex[:8].upper()
    assert http.post("/v1/assets", json={"code": asset, "scale": 0}).status_code == 201
    rich, other = new_wallet(http, asset=asset), new_wallet(http, asset=asset)
    deposit(http, rich, INT64_MAX)
    assert balance(http, rich) == INT64_MAX
    assert balance(http, f"treasury:{asset}") == -INT64_MAX
    deposit(http, other, 1)  # the treasury reaches int64 min exactly
    assert balance(http, f"treasury:{asset}") == -(2**63)
    assert_problem(
        http.post("/v1/deposits", json={"wallet_id": other, "amount": 1}, headers={"Idempotency-Key": key()}),
        422, "balance_overflow",
    )
    assert_problem(transfer(http, other, rich, 1), 422, "balance_overflow")
    assert (balance(http, rich), balance(http, other)) == (INT64_MAX, 1)
    assert sum_of_balances(http, asset) == 0


# -- transfers ----------------------------------------------------------------------------------


def test_transfer_representation_and_effect(http: httpx.Client) -> None:
    source, target = new_wallet(http), new_wallet(http)
    deposit(http, source, 1000)
    body = posted(http, source, target, 250, description="rent", metadata={"month": "2026-11"})
    check_transaction(body)
    assert body["type"] == "transfer"
    assert body["from_wallet_id"] == source
    assert body["to_wallet_id"] == target
    assert body["asset"] == "USD"
    assert body["amount"] == 250
    assert body["description"] == "rent"
    assert body["metadata"] == {"month": "2026-11"}
    assert (balance(http, source), balance(http, target)) == (750, 250)
    source_view = wallet(http, source)
    assert (source_view["held"], source_view["available"]) == (0, 750)

    fetched = http.get(f"/v1/transactions/{body['id']}")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == body


def test_transfer_business_rejections_change_nothing(http: httpx.Client) -> None:
    source, target, euro = new_wallet(http), new_wallet(http), new_wallet(http, asset="EUR")
    deposit(http, source, 100)
    deposit(http, euro, 100)

    body = assert_problem(transfer(http, source, target, 101), 422, "insufficient_funds")
    assert source in body["detail"]
    assert_problem(transfer(http, source, source, 1), 422, "same_wallet")
    assert_problem(transfer(http, source, euro, 1), 422, "asset_mismatch")
    assert_problem(transfer(http, euro, source, 1), 422, "asset_mismatch")
    assert_problem(transfer(http, source, "no-such-wallet", 1), 404, "wallet_not_found")
    assert_problem(transfer(http, "no-such-wallet", target, 1), 404, "wallet_not_found")
    assert (balance(http, source), balance(http, target), balance(http, euro)) == (100, 0, 100)

    posted(http, source, target, 100)  # exactly the available amount is fine
    assert (balance(http, source), balance(http, target)) == (0, 100)


# -- idempotency ------------------------------------------------------------------------------


def test_same_key_same_body_answers_the_original_and_moves_nothing_twice(http: httpx.Client) -> None:
    source, target = new_wallet(http), new_wallet(http)
    deposit_key = key()
    first = http.post("/v1/deposits", json={"wallet_id": source, "amount": 500}, headers={"Idempotency-Key": deposit_key})
    second = http.post("/v1/deposits", json={"wallet_id": source, "amount": 500}, headers={"Idempotency-Key": deposit_key})
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.content == first.content
    assert balance(http, source) == 500

    transfer_key = key()
    request = {"from_wallet_id": source, "to_wallet_id": target, "amount": 120, "description": "once"}
    replies = [
        http.post("/v1/transfers", json=request, headers={"Idempotency-Key": transfer_key}) for _ in range(3)
    ]
    assert {reply.status_code for reply in replies} == {201}
    assert all(reply.json() == replies[0].json() for reply in replies)
    assert (balance(http, source), balance(http, target)) == (380, 120)
    statement = http.get(f"/v1/wallets/{target}/transactions").json()["items"]
    assert [item["transaction_id"] for item in statement] == [replies[0].json()["id"]]


def test_same_key_different_body_is_409(http: httpx.Client) -> None:
    source, target = new_wallet(http), new_wallet(http)
    deposit(http, source, 500)
    shared = key()
    assert transfer_with_key(http, shared, source, target, 100).status_code == 201
    assert_problem(transfer_with_key(http, shared, source, target, 101), 409, "idempotency_key_reused")
    other = new_wallet(http)
    assert_problem(transfer_with_key(http, shared, source, other, 100), 409, "idempotency_key_reused")
    assert_problem(
        http.post("/v1/deposits", json={"wallet_id": source, "amount": 100}, headers={"Idempotency-Key": shared}),
        409, "idempotency_key_reused",
    )
    assert (balance(http, source), balance(http, target), balance(http, other)) == (400, 100, 0)


def transfer_with_key(
    http: httpx.Client, idempotency_key: str, source: str, target: str, amount: int
) -> httpx.Response:
    return http.post(
        "/v1/transfers", json={"from_wallet_id": source, "to_wallet_id": target, "amount": amount},
        headers={"Idempotency-Key": idempotency_key},
    )


def user_token(http: httpx.Client, owner: str) -> str:
    response = http.post("/v1/tokens", json={"owner_id": owner})
    assert response.status_code == 201, response.text
    return response.json()["token"]


def test_keys_are_scoped_per_caller(api_server: ServerProcess, http: httpx.Client) -> None:
    alice, bob = uid("alice"), uid("bob")
    alice_wallet, bob_wallet = new_wallet(http, owner=alice), new_wallet(http, owner=bob)
    sink = new_wallet(http)
    deposit(http, alice_wallet, 100)
    deposit(http, bob_wallet, 100)
    shared = key()
    with api_server.client(user_token(http, alice)) as as_alice, api_server.client(user_token(http, bob)) as as_bob:
        from_alice = transfer_with_key(as_alice, shared, alice_wallet, sink, 30)
        from_bob = transfer_with_key(as_bob, shared, bob_wallet, sink, 30)
        assert from_alice.status_code == 201, from_alice.text
        assert from_bob.status_code == 201, from_bob.text
        assert from_alice.json()["id"] != from_bob.json()["id"]
        # Each caller's replay still answers its own original.
        assert transfer_with_key(as_bob, shared, bob_wallet, sink, 30).json() == from_bob.json()
    # The admin has its own scope too.
    from_admin = transfer_with_key(http, shared, alice_wallet, sink, 5)
    assert from_admin.status_code == 201, from_admin.text
    assert (balance(http, alice_wallet), balance(http, bob_wallet), balance(http, sink)) == (65, 70, 65)


def test_money_moving_posts_need_an_idempotency_key(http: httpx.Client) -> None:
    source, target = new_wallet(http), new_wallet(http)
    deposit(http, source, 100)
    assert_problem(http.post("/v1/deposits", json={"wallet_id": source, "amount": 1}), 400, "idempotency_key_missing")
    assert_problem(
        http.post("/v1/transfers", json={"from_wallet_id": source, "to_wallet_id": target, "amount": 1}),
        400, "idempotency_key_missing",
    )
    assert (balance(http, source), balance(http, target)) == (100, 0)


def test_idempotency_survives_a_restart(api_server: ServerProcess) -> None:
    with api_server.client() as http:
        source, target = new_wallet(http), new_wallet(http)
        deposit_key, transfer_key = key(), key()
        deposit_request = {"wallet_id": source, "amount": 900, "metadata": {"x": [1, 2.5, None, True, "é"]}}
        transfer_request = {"from_wallet_id": source, "to_wallet_id": target, "amount": 400, "description": "ünï"}
        deposited = http.post("/v1/deposits", json=deposit_request, headers={"Idempotency-Key": deposit_key})
        moved = http.post("/v1/transfers", json=transfer_request, headers={"Idempotency-Key": transfer_key})
        assert deposited.status_code == moved.status_code == 201

    api_server.restart()

    with api_server.client() as http:
        again = http.post("/v1/deposits", json=deposit_request, headers={"Idempotency-Key": deposit_key})
        assert again.status_code == 201, again.text
        assert again.json() == deposited.json()
        again = http.post("/v1/transfers", json=transfer_request, headers={"Idempotency-Key": transfer_key})
        assert again.status_code == 201, again.text
        assert again.json() == moved.json()
        assert_problem(
            http.post("/v1/transfers", json={**transfer_request, "amount": 1}, headers={"Idempotency-Key": transfer_key}),
            409, "idempotency_key_reused",
        )
        assert (balance(http, source), balance(http, target)) == (500, 400)
        assert http.get(f"/v1/transactions/{moved.json()['id']}").json() == moved.json()
        assert sum_of_balances(http, "USD") == 0


# -- transactions and statements ------------------------------------------------------------------


def test_get_transaction(http: httpx.Client) -> None:
    target = new_wallet(http)
    body = deposit(http, target, 42)
    response = http.get(f"/v1/transactions/{body['id']}")
    assert response.status_code == 200, response.text
    assert response.json() == body
    assert_problem(http.get("/v1/transactions/tx_000000000000000000000000"), 404, "transaction_not_found")


def test_statement_newest_first_with_balance_after_and_pages(http: httpx.Client) -> None:
    mine, peer = new_wallet(http), new_wallet(http)
    deposit(http, peer, 1000)
    done = [
        deposit(http, mine, 1000),
        posted(http, mine, peer, 300, description="out"),
        posted(http, peer, mine, 50, description="in"),
        posted(http, mine, peer, 200),
        deposit(http, mine, 7),
    ]
    expected = [
        (done[4]["id"], "deposit", "credit", 7, 557, "treasury:USD"),
        (done[3]["id"], "transfer", "debit", 200, 550, peer),
        (done[2]["id"], "transfer", "credit", 50, 750, peer),
        (done[1]["id"], "transfer", "debit", 300, 700, peer),
        (done[0]["id"], "deposit", "credit", 1000, 1000, "treasury:USD"),
    ]
    response = http.get(f"/v1/wallets/{mine}/transactions")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_cursor"] is None
    items = body["items"]
    for item in items:
        assert ENTRY_FIELDS <= set(item), item
        assert item["status"] == "posted"
        assert TIMESTAMP.match(item["created_at"])
    assert [
        (item["transaction_id"], item["type"], item["direction"], item["amount"], item["balance_after"],
         item["counterparty_wallet_id"])
        for item in items
    ] == expected
    assert [item["lsn"] for item in items] == sorted((item["lsn"] for item in items), reverse=True)
    assert [item["lsn"] for item in items] == [tx["lsn"] for tx in reversed(done)]
    assert [item["description"] for item in items] == [None, None, "in", "out", None]
    assert items[0]["balance_after"] == balance(http, mine)

    for limit in (1, 2, 3):
        pages = all_pages(http, f"/v1/wallets/{mine}/transactions", {}, limit=limit)
        assert [item for page in pages for item in page] == items
        assert all(len(page) == limit for page in pages[:-1])

    # Pages are stable: a transaction posted while paging does not shift the next page.
    first = http.get(f"/v1/wallets/{mine}/transactions", params={"limit": 2}).json()
    newest = posted(http, peer, mine, 1)
    rest = all_pages(http, f"/v1/wallets/{mine}/transactions", {"cursor": first["next_cursor"]}, limit=2)
    assert first["items"] + [item for page in rest for item in page] == items
    assert http.get(f"/v1/wallets/{mine}/transactions", params={"limit": 1}).json()["items"][0][
        "transaction_id"
    ] == newest["id"]

    peer_items = http.get(f"/v1/wallets/{peer}/transactions").json()["items"]
    assert [(item["direction"], item["counterparty_wallet_id"]) for item in peer_items[:4]] == [
        ("debit", mine), ("credit", mine), ("debit", mine), ("credit", mine),
    ]


def test_statement_filters_of_the_contract(http: httpx.Client) -> None:
    mine, peer = new_wallet(http), new_wallet(http)
    deposited = deposit(http, mine, 100)
    moved = posted(http, mine, peer, 10)
    response = http.get(f"/v1/wallets/{mine}/transactions", params={"type": "deposit"})
    assert response.status_code == 200, response.text
    assert [item["transaction_id"] for item in response.json()["items"]] == [deposited["id"]]
    response = http.get(f"/v1/wallets/{mine}/transactions", params={"status": "posted", "since": moved["created_at"]})
    assert response.status_code == 200, response.text
    assert [item["transaction_id"] for item in response.json()["items"]] == [moved["id"]]
    response = http.get(f"/v1/wallets/{mine}/transactions", params={"until": deposited["created_at"]})
    assert response.status_code == 200, response.text
    assert [item["transaction_id"] for item in response.json()["items"]] == [deposited["id"]]


def test_balance_as_of_a_past_moment(http: httpx.Client) -> None:
    before_creation = rfc3339(datetime.now(UTC) - timedelta(days=1))
    mine, peer = new_wallet(http), new_wallet(http)
    deposit(http, peer, 100)
    first = posted(http, peer, mine, 30)
    time.sleep(0.02)
    second = posted(http, peer, mine, 40)
    t1, t2 = parse_time(first["created_at"]), parse_time(second["created_at"])
    assert t1 < t2
    between = t1 + (t2 - t1) / 2

    def as_of(moment: str) -> dict[str, Any]:
        response = http.get(f"/v1/wallets/{mine}/balance", params={"as_of": moment})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["wallet_id"] == mine
        assert TIMESTAMP.match(body["as_of"]), body
        return body

    assert as_of(rfc3339(between))["balance"] == 30
    assert as_of(first["created_at"])["balance"] == 30
    assert as_of(second["created_at"])["balance"] == 70
    assert as_of(rfc3339(t2 - timedelta(microseconds=1)))["balance"] == 30
    assert as_of(before_creation)["balance"] == 0
    assert as_of("2000-01-01T00:00:00Z")["balance"] == 0
    # The same moment written with an offset.
    assert as_of((between + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.%f+02:00"))["balance"] == 30
    assert parse_time(as_of(rfc3339(between))["as_of"]) == between

    now = http.get(f"/v1/wallets/{mine}/balance")
    assert now.status_code == 200, now.text
    assert now.json()["wallet_id"] == mine
    assert now.json()["balance"] == 70


def test_treasury_balance_as_of_now(http: httpx.Client) -> None:
    asset = "T" + uuid.uuid4().hex[:8].upper()
    assert http.post("/v1/assets", json={"code": asset, "scale": 2}).status_code == 201
    deposit(http, new_wallet(http, asset=asset), 100)
    time.sleep(0.002)
    now = rfc3339(datetime.now(UTC))
    response = http.get(f"/v1/wallets/treasury:{asset}/balance", params={"as_of": now})
    assert response.status_code == 200, response.text
    assert response.json()["balance"] == -100


# -- operations, routing and error shape ---------------------------------------------------------


def test_health_and_ready(api_server: ServerProcess) -> None:
    with httpx.Client(base_url=api_server.url) as anonymous:
        for path in ("/health", "/ready"):
            response = anonymous.get(path)
            assert response.status_code == 200, response.text


def test_unknown_route_is_404_not_found(http: httpx.Client) -> None:
    for path in ("/v1/nope", "/nope", "/v1/wallets/a/b/c", "/v2/wallets"):
        assert_problem(http.get(path), 404, "not_found")
    assert_problem(http.post("/v1/nope", json={}), 404, "not_found")


def test_wrong_method_is_405(http: httpx.Client) -> None:
    for method, path in (
        ("DELETE", "/v1/wallets"), ("PUT", "/v1/assets"), ("GET", "/v1/transfers"), ("GET", "/v1/deposits"),
        ("PUT", "/v1/wallets/x"), ("GET", "/v1/wallets/x/freeze"), ("POST", "/health"),  # PATCH exists: limits
    ):
        assert_problem(http.request(method, path), 405, "method_not_allowed")


def test_405_names_the_allowed_methods(http: httpx.Client) -> None:
    response = http.request("DELETE", "/v1/deposits")
    assert response.status_code == 405
    assert "POST" in response.headers.get("allow", "")


def test_every_error_is_a_problem_document(api_server: ServerProcess, http: httpx.Client) -> None:
    source = new_wallet(http)
    with httpx.Client(base_url=api_server.url) as anonymous:
        assert_problem(anonymous.get("/v1/assets"), 401, "unauthorized")
    body = assert_problem(http.post("/v1/deposits", json={"wallet_id": source}, headers={"Idempotency-Key": key()}),
                          400, "invalid_request")
    assert body["errors"] == [{"field": "amount", "message": body["errors"][0]["message"]}]
    assert_problem(http.post("/v1/deposits", content=b"{}", headers={"Idempotency-Key": key(),
                                                                     "Content-Type": "text/plain"}),
                   415, "unsupported_media_type")
    assert_problem(http.post("/v1/assets", json={"code": "USD", "scale": 3}), 409, "asset_exists")
    assert_problem(transfer(http, source, source, 1), 422, "same_wallet")
