"""``wallet bank-sim`` in a subprocess: idempotency over HTTP (same key twice pays once; a
dropped answer then a retry pays once), the ``GET /payouts`` report, and the payout workers with
``HttpBank`` against a flaky simulator on both anyio backends, checked against what it paid."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from server._bank import HttpBank
from server._payouts import Payouts
from server.testing import FakeLedger, order
from tests.e2e._server import free_port

ROOT = Path(__file__).resolve().parents[2]
BODY = {"withdrawal_id": "w-1", "wallet_id": "alice", "amount": 250, "asset": "USD",
        "destination": {"account": "acct-1"}}


class BankSim:
    def __init__(self, log_path: Path, *arguments: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "bank-sim", "--port", str(self.port), *arguments],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bank-sim exited with {self.process.returncode}: {log_path.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise TimeoutError(log_path.read_text())

    def report(self) -> dict:
        return httpx.get(self.url + "/payouts", timeout=10).json()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@pytest.fixture
def bank_sim(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BankSim]:
    marker = request.node.get_closest_marker("bank_sim_args")
    sim = BankSim(tmp_path / "bank-sim.log", *(marker.args if marker else ()))
    try:
        yield sim
    finally:
        sim.stop()


def post(sim: BankSim, key: str, body: dict) -> httpx.Response:
    return httpx.post(sim.url + "/payouts", json=body, headers={"Idempotency-Key": key}, timeout=10)


def test_same_key_twice_pays_once(bank_sim: BankSim) -> None:
    first = post(bank_sim, "w-1", BODY)
    second = post(bank_sim, "w-1", BODY)
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    reused = post(bank_sim, "w-1", {**BODY, "amount": 1})
    assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")
    assert reused.headers["content-type"] == "application/problem+json"
    refused = post(bank_sim, "w-2", {**BODY, "withdrawal_id": "w-2", "destination": {"account": "refuse-x"}})
    assert (refused.status_code, refused.json()["code"]) == (422, "account_refused")
    assert post(bank_sim, "", BODY).status_code == 400
    report = bank_sim.report()
    assert report["total_paid"] == {"USD": 250}
    assert [(item["id"], item["amount"], item["asset"], item["destination"], item["calls"])
            for item in report["items"]] == [("w-1", 250, "USD", {"account": "acct-1"}, 3)]
    assert report["items"][0]["paid_at"].endswith("Z")
    assert bank_sim.stop() == 0
    assert "bank-sim listening on" in bank_sim.log_path.read_text()


@pytest.mark.bank_sim_args("--drop-response-rate", "1", "--seed", "4")
def test_a_dropped_answer_then_a_retry_pays_once(bank_sim: BankSim) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        post(bank_sim, "w-1", BODY)
    retried = post(bank_sim, "w-1", BODY)
    assert retried.status_code == 201
    assert retried.headers["idempotent-replayed"] == "true"

    async def through_http_bank() -> tuple[str, str, str | None, str | None]:
        async with HttpBank(bank_sim.url + "/payouts", timeout_s=10) as bank:
            lost = await bank.pay(order("w-2"))
            paid = await bank.pay(order("w-2"))
            again = await bank.pay(order("w-2"))
        return lost.outcome, paid.outcome, paid.reference, again.reference

    lost, paid, reference, again = anyio.run(through_http_bank)
    assert (lost, paid, reference, again) == ("transient", "paid", "sim-000002", "sim-000002")
    report = bank_sim.report()
    assert [(item["id"], item["calls"]) for item in report["items"]] == [("w-1", 2), ("w-2", 3)]
    assert report["total_paid"] == {"USD": 350}
    assert report["statistics"]["dropped"] == 2


@pytest.mark.bank_sim_args("--failure-rate", "0.3", "--drop-response-rate", "0.3", "--fail-first", "1",
                           "--latency-ms", "2", "--seed", "9")
@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_payout_workers_against_a_flaky_bank_pay_each_withdrawal_exactly_once(bank_sim: BankSim,
                                                                               backend: str) -> None:
    orders = [order(f"{backend}-{index}", amount=index + 1, account="refuse-closed" if index % 10 == 0 else "ok")
              for index in range(40)]

    async def main() -> FakeLedger:
        ledger = FakeLedger(orders)
        async with HttpBank(bank_sim.url + "/payouts", timeout_s=10) as bank:
            payouts = Payouts(ledger, bank, workers=6, max_attempts=30, backoff_base_s=0.001, backoff_max_s=0.02,
                              rng=random.Random(9))
            async with anyio.create_task_group() as group:
                await group.start(payouts.run)
                with anyio.fail_after(120):
                    await ledger.wait_settled()
                group.cancel_scope.cancel()
        return ledger

    ledger = anyio.run(main, backend=backend)
    refused = {item.withdrawal_id for index, item in enumerate(orders) if index % 10 == 0}
    assert {key for key, status in ledger.status.items() if status == "failed"} == refused
    assert all(status == "completed" for key, status in ledger.status.items() if key not in refused)
    report = bank_sim.report()
    paid = [item["id"] for item in report["items"]]
    assert sorted(paid) == sorted(key for key in ledger.status if key not in refused)  # each once
    assert report["total_paid"] == {"USD": sum(item.amount for item in orders if item.withdrawal_id not in refused)}
    assert report["statistics"]["dropped"] > 0  # the drop path was exercised...
    assert report["statistics"]["replayed"] >= report["statistics"]["dropped"]  # ...and answered by replays
    for key, reference in ledger.reference.items():
        assert reference == next(item["reference"] for item in report["items"] if item["id"] == key)
