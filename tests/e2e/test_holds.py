"""Holds (pending transfers) over HTTP against a real ``wallet serve``: create, capture (all or
part), void, at most once, ownership, idempotent replays, bad input, statements, expiry by the
server (also for a deadline that passed while the server was down: SIGKILL, wait, restart), and
holds surviving a snapshot and a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e._server import ServerProcess, started_with_assets
from tests.e2e.test_api import assert_problem, deposit, key, new_wallet, uid, wallet


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = started_with_assets(Path(tmp_path_factory.mktemp("holds")) / "data", "USD", "EUR")
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def hold(http: httpx.Client, source: str, target: str, amount: int, timeout_s: int = 3600,
         idempotency_key: str | None = None) -> httpx.Response:
    return http.post(
        "/v1/transfers",
        json={"from_wallet_id": source, "to_wallet_id": target, "amount": amount, "hold": {"timeout_s": timeout_s}},
        headers={"Idempotency-Key": idempotency_key or key()},
    )


def pending(http: httpx.Client, source: str, target: str, amount: int, timeout_s: int = 3600) -> dict[str, Any]:
    response = hold(http, source, target, amount, timeout_s)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "pending" and body["amount"] == amount
    return body


def resolve(http: httpx.Client, transaction_id: str, action: str, body: dict[str, Any] | None = None,
            idempotency_key: str | None = None) -> httpx.Response:
    return http.post(f"/v1/transfers/{transaction_id}/{action}", json=body,
                     headers={"Idempotency-Key": idempotency_key or key()})


def funded(http: httpx.Client, amount: int = 1000, owner: str | None = None) -> tuple[str, str]:
    source, target = new_wallet(http, owner=owner), new_wallet(http)
    deposit(http, source, amount)
    return source, target


def money(http: httpx.Client, wallet_id: str) -> tuple[int, int, int]:
    body = wallet(http, wallet_id)
    return body["balance"], body["held"], body["available"]


def test_a_hold_moves_available_into_held(http: httpx.Client) -> None:
    source, target = funded(http)
    created = pending(http, source, target, 300)
    assert money(http, source) == (1000, 300, 700)
    assert money(http, target) == (0, 0, 0)
    row = http.get(f"/v1/transactions/{created['id']}").json()
    assert row["status"] == "pending" and row["lsn"] == created["lsn"]
    (entry, _) = http.get(f"/v1/wallets/{source}/transactions").json()["items"]
    assert (entry["status"], entry["amount"], entry["balance_after"]) == ("pending", 300, 1000)
    # What is held cannot be spent.
    response = http.post("/v1/transfers", json={"from_wallet_id": source, "to_wallet_id": target, "amount": 701},
                         headers={"Idempotency-Key": key()})
    assert_problem(response, 422, "insufficient_funds")


def test_capture_of_part_posts_it_and_releases_the_rest(http: httpx.Client) -> None:
    source, target = funded(http)
    created = pending(http, source, target, 300)
    response = resolve(http, created["id"], "capture", {"amount": 120})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["status"], body["amount"]) == (created["id"], "posted", 120)
    assert body["created_at"] == created["created_at"] and body["lsn"] > created["lsn"]
    assert money(http, source) == (880, 0, 880)
    assert money(http, target) == (120, 0, 120)
    assert http.get(f"/v1/transactions/{created['id']}").json() == body
    items = http.get(f"/v1/wallets/{source}/transactions").json()["items"]
    assert [(i["status"], i["amount"], i["balance_after"]) for i in items] == [("posted", 120, 880),
                                                                             ("posted", 1000, 1000)]
    assert_problem(resolve(http, created["id"], "capture"), 409, "transfer_not_pending")
    assert_problem(resolve(http, created["id"], "void"), 409, "transfer_not_pending")


def test_void_releases_everything_once(http: httpx.Client) -> None:
    source, target = funded(http)
    created = pending(http, source, target, 300)
    response = resolve(http, created["id"], "void")
    assert response.status_code == 200 and response.json()["status"] == "voided"
    assert money(http, source) == (1000, 0, 1000)
    assert money(http, target) == (0, 0, 0)
    voided = http.get(f"/v1/wallets/{source}/transactions", params={"status": "voided"}).json()["items"]
    assert [item["transaction_id"] for item in voided] == [created["id"]]
    assert_problem(resolve(http, created["id"], "void"), 409, "transfer_not_pending")
    assert_problem(resolve(http, created["id"], "capture"), 409, "transfer_not_pending")


def test_refusals(http: httpx.Client) -> None:
    source, target = funded(http)
    created = pending(http, source, target, 300)
    assert_problem(resolve(http, created["id"], "capture", {"amount": 301}), 422, "amount_exceeds_hold")
    assert_problem(resolve(http, "tx_nothing_here", "capture"), 404, "transaction_not_found")
    assert_problem(resolve(http, "not a valid id!", "void"), 404, "transaction_not_found")
    posted = http.post("/v1/transfers", json={"from_wallet_id": source, "to_wallet_id": target, "amount": 1},
                       headers={"Idempotency-Key": key()}).json()
    assert_problem(resolve(http, posted["id"], "capture"), 409, "transfer_not_pending")
    missing_key = http.post(f"/v1/transfers/{created['id']}/void")
    assert_problem(missing_key, 400, "idempotency_key_missing")
    assert money(http, source) == (999, 300, 699)  # none of it changed anything


@pytest.mark.parametrize(
    "hold_value",
    [{"timeout_s": 0}, {"timeout_s": 1.5}, {"timeout_s": "60"}, {"timeout_s": True}, {}, {"timeout_s": 60, "x": 1},
     [60], 60, None, {"timeout_s": 7 * 24 * 3600 + 1}],
)
def test_a_bad_hold_is_refused_and_changes_nothing(http: httpx.Client, hold_value: Any) -> None:
    source, target = funded(http)
    response = http.post(
        "/v1/transfers", json={"from_wallet_id": source, "to_wallet_id": target, "amount": 1, "hold": hold_value},
        headers={"Idempotency-Key": key()},
    )
    assert_problem(response, 400, "invalid_request")
    assert money(http, source) == (1000, 0, 1000)


def test_a_deposit_cannot_be_held(http: httpx.Client) -> None:
    target = new_wallet(http)
    response = http.post("/v1/deposits", json={"wallet_id": target, "amount": 5, "hold": {"timeout_s": 5}},
                         headers={"Idempotency-Key": key()})
    assert_problem(response, 400, "invalid_request")


def test_a_wallet_with_a_hold_cannot_be_closed(http: httpx.Client) -> None:
    source, target = funded(http, amount=10)
    pending(http, source, target, 10)
    assert_problem(http.post(f"/v1/wallets/{source}/close"), 409, "wallet_not_empty")


def test_the_owner_resolves_others_are_forbidden(server: ServerProcess, http: httpx.Client) -> None:
    alice, mallory = uid("alice"), uid("mallory")
    tokens = {}
    for owner in (alice, mallory):
        response = http.post("/v1/tokens", json={"owner_id": owner})
        assert response.status_code == 201
        tokens[owner] = response.json()["token"]
    source, target = funded(http, owner=alice)
    with server.client(tokens[alice]) as as_alice, server.client(tokens[mallory]) as as_mallory:
        created = pending(as_alice, source, target, 100)
        assert_problem(resolve(as_mallory, created["id"], "capture"), 403, "forbidden")
        assert_problem(resolve(as_mallory, created["id"], "void"), 403, "forbidden")
        assert resolve(as_alice, created["id"], "capture").status_code == 200
        assert_problem(resolve(as_mallory, created["id"], "void"), 403, "forbidden")
        assert_problem(resolve(as_alice, created["id"], "void"), 409, "transfer_not_pending")


def test_a_resolution_replays_by_key(http: httpx.Client) -> None:
    source, target = funded(http)
    created = pending(http, source, target, 300)
    first = resolve(http, created["id"], "capture", {"amount": 50}, idempotency_key="cap-" + created["id"])
    again = resolve(http, created["id"], "capture", {"amount": 50}, idempotency_key="cap-" + created["id"])
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    other = resolve(http, created["id"], "capture", {"amount": 60}, idempotency_key="cap-" + created["id"])
    assert_problem(other, 409, "idempotency_key_reused")
    assert money(http, target) == (50, 0, 50)


def wait_for(predicate: Any, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.1)


def test_the_server_voids_an_expired_hold(http: httpx.Client) -> None:
    source, target = funded(http)
    created = pending(http, source, target, 300, timeout_s=1)
    wait_for(lambda: http.get(f"/v1/transactions/{created['id']}").json()["status"] == "voided")
    assert money(http, source) == (1000, 0, 1000)
    assert_problem(resolve(http, created["id"], "capture"), 409, "transfer_not_pending")
    events = http.get("/v1/events", params={"after": created["lsn"] - 1, "limit": 1000}).json()["items"]
    expired = [e for e in events if e["type"] == "transfer.expired" and e["data"]["id"] == created["id"]]
    assert len(expired) == 1


def test_holds_survive_snapshot_and_restart_and_expire_after_downtime(tmp_path: Path) -> None:
    server = started_with_assets(tmp_path / "data", "USD", shards=3)
    try:
        with server.client() as http:
            source, target = funded(http)
            keep = pending(http, source, target, 100, timeout_s=3600)
            short = pending(http, source, target, 200, timeout_s=3)
            assert http.post("/v1/admin/snapshots").status_code in (200, 201, 202)
        server.kill()  # SIGKILL: the short hold's deadline passes while nothing runs
        time.sleep(3.5)
        server.start()
        with server.client() as http:
            wait_for(lambda: http.get(f"/v1/transactions/{short['id']}").json()["status"] == "voided")
            assert http.get(f"/v1/transactions/{keep['id']}").json()["status"] == "pending"
            assert money(http, source) == (1000, 100, 900)
            assert resolve(http, keep["id"], "capture").status_code == 200
        assert server.terminate() == 0
        server.start()
        with server.client() as http:
            assert money(http, source) == (900, 0, 900)
            assert money(http, target) == (100, 0, 100)
    finally:
        server.kill()
