"""Webhooks through the real ``wallet serve --workers 1`` and ``wallet webhook-sim``: a receiver
that is down across a SIGKILL and restart of the server gets every event afterwards, in log
order, each verified, nothing skipped; the dispatcher is a supervised process of its own."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e._server import ServerProcess, free_port
from tests.e2e._supervised import processes

ROOT = Path(__file__).resolve().parents[2]


class WebhookSim:
    """``wallet webhook-sim`` in a subprocess, started when the test wants the receiver up."""

    def __init__(self, log_path: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *arguments: str) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "webhook-sim", "--port", str(self.port), *arguments],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"webhook-sim exited: {self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise TimeoutError(self.log_path.read_text())

    def received(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = httpx.get(self.url + "/received", timeout=10).json()["items"]
        return items

    def delivered(self, count: int, timeout_s: float = 30.0) -> tuple[list[dict[str, Any]], list[Any]]:
        """Waits until ``count`` distinct events were answered 200 (or ``timeout_s``): the
        accepted deliveries, and each event's body once, in the order first delivered."""
        deadline = time.monotonic() + timeout_s
        while True:
            accepted = [entry for entry in self.received() if entry["answered"] == 200]
            unique: dict[str, Any] = {}
            for entry in accepted:
                unique.setdefault(entry["webhook_id"], entry["body"])
            if len(unique) >= count or time.monotonic() > deadline:
                return accepted, list(unique.values())
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookSim]:
    sim = WebhookSim(tmp_path / "webhook-sim.log", free_port())
    yield sim
    sim.stop()


def _transfer(http: httpx.Client, key: str) -> None:
    response = http.post("/v1/transfers", json={"from_wallet_id": "wh-a", "to_wallet_id": "wh-b", "amount": 1},
                         headers={"Idempotency-Key": key})
    assert response.status_code == 201, response.text


def test_a_receiver_down_across_a_server_kill_gets_every_event_afterwards_in_order(
    tmp_path: Path, receiver: WebhookSim,
) -> None:
    server = ServerProcess(tmp_path / "data", extra_args=[
        "--workers", "1", "--allow-private-webhooks", "--webhook-backoff-base", "0.05", "--webhook-backoff-max", "0.3",
    ])
    server.start()
    try:
        assert [item["role"] for item in processes(server)].count("webhooks") == 1
        with server.client() as http:
            assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
            created = http.post("/v1/webhooks", json={"url": receiver.url + "/hook", "events": ["*"]})
            assert created.status_code == 201, created.text
            endpoint = created.json()
            for wallet in ("wh-a", "wh-b"):
                assert http.post("/v1/wallets", json={"id": wallet, "owner_id": "o", "asset": "USD"}).status_code == 201
            assert http.post("/v1/deposits", json={"wallet_id": "wh-a", "amount": 100},
                             headers={"Idempotency-Key": "fund"}).status_code == 201
            for number in range(10):
                _transfer(http, f"before-{number}")
            deadline = time.monotonic() + 20
            while not http.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["items"]:
                assert time.monotonic() < deadline, "the dispatcher never tried"
                time.sleep(0.05)
        server.kill()  # SIGKILL: the supervisor and (PR_SET_PDEATHSIG) every child
        server.start()
        with server.client() as http:
            for number in range(10):
                _transfer(http, f"after-{number}")
            shown = http.get(f"/v1/webhooks/{endpoint['id']}").json()
            assert shown["status"] == "enabled" and shown["failing_since"] is not None  # failing, not forgotten
            assert shown["acknowledged_lsn"] == 1
            expected = [item for item in http.get("/v1/events", params={"limit": "1000"}).json()["items"]
                        if item["lsn"] > 1]  # everything after the endpoint's creation (LSN 1: the asset)
        receiver.start("--secret", endpoint["secret"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            accepted = [entry for entry in receiver.received() if entry["answered"] == 200]
            if len({entry["webhook_id"] for entry in accepted}) >= len(expected):
                break
            time.sleep(0.1)
        assert all(entry["verified"] for entry in accepted)
        unique: dict[str, dict[str, Any]] = {}
        for entry in accepted:
            unique.setdefault(entry["webhook_id"], entry["body"])
        assert list(unique.values()) == expected  # every event, in log order, the same bodies
        assert len(accepted) == len(expected)  # one POST in flight per endpoint: no duplicates here
        assert len([body for body in unique.values() if body["type"] == "transfer.posted"]) == 20
        with server.client() as http:  # the attempts log is saved every 0.2 s: wait for the last one
            deadline = time.monotonic() + 10
            while True:
                log = http.get(f"/v1/webhooks/{endpoint['id']}/deliveries", params={"limit": "100"}).json()["items"]
                if (log and log[0]["status_code"] == 200) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        assert log and log[0]["status_code"] == 200
        assert any(item["status_code"] is None and item["error"] for item in log)  # the refused connections
    finally:
        server.kill()
