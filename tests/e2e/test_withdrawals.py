"""Withdrawals end to end: a real ``wallet serve`` paying out through ``wallet bank-sim`` in
another process. Happy path, a refusal, transient failures then success, dead-lettering and an
operator's retry, the built-in simulated bank, bad input, and a SIGKILL of the server while 100 (200 in `make test-long`)
withdrawals are in flight: after the restart each ends completed or failed, the bank paid each
id at most once, and the treasury moved by exactly what the bank paid."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._budget import scaled
from tests.e2e._server import ServerProcess, started_with_assets
from tests.e2e.test_api import assert_problem, deposit, key, new_wallet, uid, wallet
from tests.e2e.test_bank_sim import BankSim

TERMINAL = {"completed", "failed"}


def wait_for(predicate: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.1)


def start(tmp_path: Path, name: str, *extra: str) -> ServerProcess:
    return started_with_assets(tmp_path / name, "USD", extra_args=list(extra))


def withdraw(http: httpx.Client, wallet_id: str, amount: int, account: str = "acct-1",
             idempotency_key: str | None = None) -> httpx.Response:
    return http.post("/v1/withdrawals", json={"wallet_id": wallet_id, "amount": amount,
                                              "destination": {"account": account}},
                     headers={"Idempotency-Key": idempotency_key or key()})


def accepted(http: httpx.Client, wallet_id: str, amount: int, account: str = "acct-1") -> dict[str, Any]:
    response = withdraw(http, wallet_id, amount, account)
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["status"], body["attempts"], body["amount"]) == ("pending", 0, amount)
    return body


def get(http: httpx.Client, withdrawal_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/withdrawals/{withdrawal_id}")
    assert response.status_code == 200, response.text
    return response.json()


def ends(http: httpx.Client, withdrawal_id: str, status: str, timeout_s: float = 30.0) -> dict[str, Any]:
    wait_for(lambda: get(http, withdrawal_id)["status"] == status, timeout_s)
    return get(http, withdrawal_id)


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BankSim]:
    sim = BankSim(Path(tmp_path_factory.mktemp("bank")) / "bank.log", "--latency-ms", "20", "--fail-first", "2")
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bank: BankSim) -> Iterator[ServerProcess]:
    process = start(Path(tmp_path_factory.mktemp("withdrawals")), "data", "--bank-url", bank.url + "/payouts",
                    "--payout-max-attempts", "4")
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def test_a_withdrawal_is_held_then_paid_once_after_transient_failures(
    http: httpx.Client, bank: BankSim
) -> None:
    source = new_wallet(http)
    deposit(http, source, 1000)
    treasury_before = wallet(http, "treasury:USD")["balance"]
    created = accepted(http, source, 300)
    assert created["id"].startswith("wd_") and created["destination"] == {"account": "acct-1"}
    done = ends(http, created["id"], "completed")
    assert done["attempts"] == 3  # the bank answered 503 to the first two calls
    assert done["bank_reference"]
    body = wallet(http, source)
    assert (body["balance"], body["held"]) == (700, 0)
    assert wallet(http, "treasury:USD")["balance"] == treasury_before + 300
    paid = {item["id"]: item for item in bank.report()["items"]}
    assert paid[created["id"]]["amount"] == 300
    row = http.get(f"/v1/transactions/{created['id']}").json()
    assert (row["type"], row["status"], row["to_wallet_id"]) == ("withdrawal", "posted", "treasury:USD")
    kinds = [item["type"] for item in http.get("/v1/events", params={"limit": 1000}).json()["items"]
             if item["data"].get("id") == created["id"]]
    assert kinds[0] == "withdrawal.pending" and kinds[-1] == "withdrawal.completed"
    assert kinds.count("withdrawal.processing") >= 3


def test_a_refusal_fails_the_withdrawal_and_releases_the_hold(http: httpx.Client, bank: BankSim) -> None:
    source = new_wallet(http)
    deposit(http, source, 1000)
    created = accepted(http, source, 300, account="refuse-this")
    done = ends(http, created["id"], "failed")
    assert "refuse" in (done["last_error"] or "")
    body = wallet(http, source)
    assert (body["balance"], body["held"], body["available"]) == (1000, 0, 1000)
    assert created["id"] not in {item["id"] for item in bank.report()["items"]}
    assert http.get(f"/v1/transactions/{created['id']}").json()["status"] == "failed"


def test_the_request_is_idempotent_and_validated(http: httpx.Client, server: ServerProcess) -> None:
    source = new_wallet(http, owner=(owner := uid("o")))
    deposit(http, source, 100)
    first = withdraw(http, source, 60, idempotency_key="wd-key-" + source)
    again = withdraw(http, source, 60, idempotency_key="wd-key-" + source)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert_problem(withdraw(http, source, 61, idempotency_key="wd-key-" + source), 409, "idempotency_key_reused")
    assert_problem(withdraw(http, source, 41), 422, "insufficient_funds")
    assert_problem(withdraw(http, "nobody-" + source, 1), 404, "wallet_not_found")
    for bad in ({"wallet_id": source, "amount": 1}, {"wallet_id": source, "amount": 1.0, "destination": {"a": 1}},
                {"wallet_id": source, "amount": 1, "destination": {}},
                {"wallet_id": source, "amount": 1, "destination": "acct"},
                {"wallet_id": source, "amount": 1, "destination": {"a": 1}, "x": 1}):
        response = http.post("/v1/withdrawals", json=bad, headers={"Idempotency-Key": key()})
        assert_problem(response, 400, "invalid_request")
    assert_problem(http.post("/v1/withdrawals", json={"wallet_id": source, "amount": 1, "destination": {"a": 1}}),
                   400, "idempotency_key_missing")
    assert_problem(http.get("/v1/withdrawals/wd_nothing"), 404, "withdrawal_not_found")
    assert_problem(http.post(f"/v1/withdrawals/{first.json()['id']}/retry"), 409, "withdrawal_not_dead")
    assert_problem(http.get("/v1/withdrawals", params={"status": "gone"}), 400, "invalid_request")
    # A user token sees and withdraws from its own wallets only.
    token = http.post("/v1/tokens", json={"owner_id": owner}).json()["token"]
    other = new_wallet(http)
    deposit(http, other, 10)
    with server.client(token) as as_owner:
        assert_problem(withdraw(as_owner, other, 1), 403, "forbidden")
        mine = as_owner.get("/v1/withdrawals").json()["items"]
        assert [item["id"] for item in mine] == [first.json()["id"]]
        assert as_owner.get(f"/v1/withdrawals/{first.json()['id']}").status_code == 200
        assert_problem(as_owner.post(f"/v1/withdrawals/{first.json()['id']}/retry"), 403, "forbidden")


def test_dead_after_the_last_attempt_then_an_operator_retry_pays(tmp_path: Path) -> None:
    bank = BankSim(tmp_path / "bank.log", "--fail-first", "3")
    server = start(tmp_path, "data", "--bank-url", bank.url + "/payouts", "--payout-max-attempts", "2")
    try:
        with server.client() as http:
            source = new_wallet(http)
            deposit(http, source, 500)
            created = accepted(http, source, 200)
            dead = ends(http, created["id"], "dead")
            assert dead["attempts"] == 2 and dead["last_error"]
            assert (wallet(http, source)["held"], wallet(http, source)["balance"]) == (200, 500)
            listed = http.get("/v1/withdrawals", params={"status": "dead"}).json()["items"]
            assert [item["id"] for item in listed] == [created["id"]]
            retried = http.post(f"/v1/withdrawals/{created['id']}/retry")
            assert retried.status_code == 200 and retried.json()["status"] in ("pending", "processing", "completed")
            done = ends(http, created["id"], "completed")
            assert done["attempts"] == 2  # counted again from the retry: call 3 failed, call 4 paid
            assert (wallet(http, source)["held"], wallet(http, source)["balance"]) == (0, 300)
            assert [item["calls"] for item in bank.report()["items"]] == [4]
    finally:
        server.kill()
        bank.stop()


def test_the_built_in_simulated_bank_pays(tmp_path: Path) -> None:
    server = start(tmp_path, "data", "--bank-latency-ms", "5")
    try:
        with server.client() as http:
            source = new_wallet(http)
            deposit(http, source, 50)
            created = accepted(http, source, 50)
            ends(http, created["id"], "completed")
            assert wallet(http, source)["balance"] == 0
    finally:
        server.kill()


WITHDRAWALS = scaled(100, 200)  # in flight when the server is SIGKILLed


def test_sigkill_with_withdrawals_in_flight_pays_each_at_most_once(tmp_path: Path) -> None:
    bank = BankSim(tmp_path / "bank.log", "--latency-ms", "1000", "--drop-response-rate", "0.1",
                   "--failure-rate", "0.1", "--seed", "7")
    server = start(tmp_path, "data", "--bank-url", bank.url + "/payouts", "--payout-max-attempts", "50")
    try:
        with server.client() as http:
            wallets = [new_wallet(http) for _ in range(20)]
            for wallet_id in wallets:
                deposit(http, wallet_id, 10_000)
            treasury_before = wallet(http, "treasury:USD")["balance"]
            ids: dict[str, int] = {}
            for index in range(WITHDRAWALS):
                account = "refuse-x" if index % 10 == 0 else f"acct-{index}"
                body = accepted(http, wallets[index % 20], 1 + index, account)
                ids[body["id"]] = 1 + index
            open_ = [item for status in ("pending", "processing")
                     for item in http.get("/v1/withdrawals", params={"status": status, "limit": 1000}).json()["items"]]
        server.kill()  # SIGKILL while payouts are in flight
        assert len(open_) >= 20, "the kill must catch withdrawals on their way to the bank"
        server.start()
        with server.client() as http:
            def settled() -> bool:
                items = [get(http, withdrawal_id) for withdrawal_id in ids]
                return all(item["status"] in TERMINAL for item in items)

            wait_for(settled, timeout_s=120)
            statuses = {withdrawal_id: get(http, withdrawal_id)["status"] for withdrawal_id in ids}
            treasury_after = wallet(http, "treasury:USD")["balance"]
            held = sum(wallet(http, wallet_id)["held"] for wallet_id in wallets)
        report = bank.report()
        paid = {item["id"]: item for item in report["items"]}
        # The bank paid exactly the completed ones (each id once: it pays a key at most once and
        # reports one item per id), and refused the others.
        assert set(paid) == {withdrawal_id for withdrawal_id, status in statuses.items() if status == "completed"}
        assert all(paid[withdrawal_id]["amount"] == ids[withdrawal_id] for withdrawal_id in paid)
        assert {withdrawal_id for withdrawal_id, status in statuses.items() if status == "failed"} == {
            withdrawal_id for withdrawal_id, amount in ids.items() if (amount - 1) % 10 == 0
        }
        assert treasury_after - treasury_before == sum(item["amount"] for item in paid.values())
        assert report["total_paid"]["USD"] == sum(item["amount"] for item in paid.values())
        assert held == 0
    finally:
        server.kill()
        bank.stop()
