"""The history projector process of ``wallet serve --workers N``: workers read SQLite themselves
and still see every write that was durable when the read arrived; a killed projector is
restarted and catches up without losing or doubling an entry; a stopped one refuses no write;
and statements are the same as in one process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e._load import Ledgerbook, history_ids, setup_wallets
from tests.e2e._server import ServerProcess
from tests.e2e._supervised import (
    DEPOSIT,
    load_until,
    pid_alive,
    processes,
    verify,
)

pytestmark = pytest.mark.e2e


def _projector_pid(server: ServerProcess) -> int:
    (pid,) = [item["pid"] for item in processes(server) if item["role"] == "projector"]
    return int(pid)


async def test_a_read_on_another_connection_sees_the_write(supervised: ServerProcess) -> None:
    """Each read is a new connection (so any worker may take it) right after the write's 2xx."""
    ids = ["ryw-a", "ryw-b"]
    async with supervised.async_client() as writer:
        await setup_wallets(writer, ids, asset="USD", deposit=DEPOSIT)
        fresh = httpx.Limits(max_keepalive_connections=0)
        async with supervised.async_client(limits=fresh) as reader:
            for index in range(150):
                source, target = ids if index % 2 else ids[::-1]
                response = await writer.post(
                    "/v1/transfers", json={"from_wallet_id": source, "to_wallet_id": target, "amount": 1 + index},
                    headers={"Idempotency-Key": f"ryw-{index}"},
                )
                assert response.status_code == 201, response.text
                transaction_id = response.json()["id"]
                found = await reader.get(f"/v1/transactions/{transaction_id}")
                assert found.status_code == 200, (index, found.text)
                page = await reader.get(f"/v1/wallets/{target}/transactions", params={"limit": "1"})
                assert page.status_code == 200, page.text
                assert page.json()["items"][0]["transaction_id"] == transaction_id, index


async def test_a_killed_projector_is_restarted_and_history_is_whole(supervised: ServerProcess) -> None:
    ids = [f"p{index}" for index in range(20)]
    async with supervised.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
    victim = _projector_pid(supervised)
    book = Ledgerbook()
    await load_until(supervised, ids, book, seed=5, action=lambda: os.kill(victim, signal.SIGKILL))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        (projector,) = [item for item in processes(supervised) if item["role"] == "projector"]
        if projector["pid"] != victim and pid_alive(projector["pid"]):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the projector was not restarted: {processes(supervised)}")
    assert projector["restarts"] == 1
    assert not pid_alive(victim)
    # Writes never waited for the projector: nothing was refused while it was down.
    assert not book.unanswered, len(book.unanswered)
    await verify(supervised, ids, book)  # every acknowledged transfer in history exactly once per side
    assert supervised.terminate() == 0


async def test_a_stopped_projector_refuses_no_write_and_reads_wait_for_it(supervised: ServerProcess) -> None:
    ids = ["halt-a", "halt-b"]
    async with supervised.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
        pid = _projector_pid(supervised)
        os.kill(pid, signal.SIGSTOP)
        try:
            items = [{"idempotency_key": f"halt-{index}", "from_wallet_id": ids[index % 2],
                      "to_wallet_id": ids[1 - index % 2], "amount": 1 + index} for index in range(2000)]
            for round_ in range(3):
                response = await http.post("/v1/transfers/batch", json={"atomic": False, "transfers": items[round_::3]})
                assert response.status_code == 200, response.text
                assert all(result["status"] == 201 for result in response.json()["results"])
            lagging = await http.get(f"/v1/wallets/{ids[0]}/transactions")
            assert lagging.status_code == 503, lagging.text
            assert lagging.json()["code"] == "history_lagging"
        finally:
            os.kill(pid, signal.SIGCONT)
        assert len(set(await history_ids(http, ids[0]))) == 2000


def _operations(http: httpx.Client) -> list[str]:
    """The same requests in both modes: transfers, a deposit, a batch, a hold captured in part
    and one voided. Returns the wallet ids."""
    assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
    ids = ["same-a", "same-b", "same-c"]
    for wallet_id in ids:
        response = http.post("/v1/wallets", json={"id": wallet_id, "owner_id": "o", "asset": "USD"})
        assert response.status_code == 201, response.text
        response = http.post("/v1/deposits", json={"wallet_id": wallet_id, "amount": 10_000},
                             headers={"Idempotency-Key": f"d-{wallet_id}"})
        assert response.status_code == 201, response.text

    def transfer(key: str, source: str, target: str, amount: int, **extra: Any) -> dict[str, Any]:
        response = http.post("/v1/transfers", json={"from_wallet_id": source, "to_wallet_id": target,
                                                    "amount": amount, **extra},
                             headers={"Idempotency-Key": key})
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    for index in range(30):
        transfer(f"t-{index}", ids[index % 3], ids[(index + 1) % 3], 7 + index, description=f"n{index}")
    items = [{"idempotency_key": f"b-{index}", "from_wallet_id": ids[index % 3],
              "to_wallet_id": ids[(index + 2) % 3], "amount": 3 + index} for index in range(40)]
    response = http.post("/v1/transfers/batch", json={"atomic": True, "transfers": items})
    assert response.status_code == 200, response.text
    captured = transfer("h-1", ids[0], ids[1], 500, hold={"timeout_s": 3600})
    voided = transfer("h-2", ids[1], ids[2], 400, hold={"timeout_s": 3600})
    response = http.post(f"/v1/transfers/{captured['id']}/capture", json={"amount": 120},
                         headers={"Idempotency-Key": "c-1"})
    assert response.status_code in (200, 201), response.text
    response = http.post(f"/v1/transfers/{voided['id']}/void", headers={"Idempotency-Key": "v-1"})
    assert response.status_code in (200, 201), response.text
    return ids


def _statements(http: httpx.Client, ids: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Each wallet's whole statement, without what differs between two runs (ids, times)."""
    found = {}
    for wallet_id in ids:
        response = http.get(f"/v1/wallets/{wallet_id}/transactions", params={"limit": "1000"})
        assert response.status_code == 200, response.text
        found[wallet_id] = [
            (item["type"], item["direction"], item["amount"], item["balance_after"],
             item["counterparty_wallet_id"], item.get("description"), item["status"])
            for item in response.json()["items"]
        ]
        assert found[wallet_id]
    return found


def test_statements_are_the_same_in_both_modes(tmp_path: Path) -> None:
    found = []
    for workers in ("0", "2"):
        server = ServerProcess(tmp_path / f"data-{workers}", extra_args=["--workers", workers])
        server.start()
        try:
            with server.client() as http:
                ids = _operations(http)
                found.append(_statements(http, ids))
        finally:
            server.kill()
    one_process, with_workers = found
    assert with_workers == one_process
