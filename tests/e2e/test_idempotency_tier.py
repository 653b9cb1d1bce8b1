"""Idempotency keys past the memory cap (``--idempotency-memory-keys``) are in
``<data>/idempotency.sqlite3``: after a SIGKILL and a restart, every key replays its original
answer and moves nothing, and a key reused with another body is still refused."""

from __future__ import annotations

import time
from pathlib import Path

from ledger._key_index import read_through_lsn
from tests.e2e._server import ServerProcess

CAP = 10
KEYS = 60
DEPOSIT = 100_000


def _wait_spilled(data: Path) -> int:
    """Waits until the index stopped moving (the ledger spilled what was past its cap)."""
    deadline = time.monotonic() + 20
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        through = read_through_lsn(data)
        if through != last:
            last, since = through, time.monotonic()
        elif through > 0 and time.monotonic() - since > 1.0:
            return through
        time.sleep(0.1)
    raise AssertionError(f"the idempotency index did not settle (through LSN {last})")


def test_keys_on_disk_replay_after_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, extra_args=["--idempotency-memory-keys", str(CAP)])
    server.start()
    try:
        answers = {}
        with server.client() as http:
            assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
            for wallet_id in ("a", "b"):
                response = http.post("/v1/wallets", json={"id": wallet_id, "owner_id": "o", "asset": "USD"})
                assert response.status_code == 201, response.text
            response = http.post("/v1/deposits", json={"wallet_id": "a", "amount": DEPOSIT},
                                 headers={"Idempotency-Key": "deposit"})
            assert response.status_code == 201, response.text
            for n in range(KEYS):
                body = {"from_wallet_id": "a", "to_wallet_id": "b", "amount": n + 1}
                response = http.post("/v1/transfers", json=body, headers={"Idempotency-Key": f"k{n}"})
                assert response.status_code == 201, response.text
                answers[f"k{n}"] = (body, response.json())
        assert _wait_spilled(data) > KEYS - CAP  # most keys are only on disk now
        server.kill()
        server.start()
        moved = sum(n + 1 for n in range(KEYS))
        with server.client() as http:
            for key, (body, answer) in answers.items():
                response = http.post("/v1/transfers", json=body, headers={"Idempotency-Key": key})
                assert response.status_code == 201, (key, response.text)
                assert response.json() == answer, key
            response = http.post("/v1/transfers", json={"from_wallet_id": "a", "to_wallet_id": "b", "amount": 999},
                                 headers={"Idempotency-Key": "k0"})
            assert response.status_code == 409, response.text
            assert response.json()["code"] == "idempotency_key_reused"
            balances = {w: http.get(f"/v1/wallets/{w}").json()["balance"] for w in ("a", "b")}
            assert balances == {"a": DEPOSIT - moved, "b": moved}
    finally:
        server.kill()
