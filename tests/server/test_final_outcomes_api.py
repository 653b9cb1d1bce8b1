"""A key's outcome is final, over HTTP in process (the app over a real ``Ledger``, through a
``LocalPort`` and, as ``--workers N`` runs it, through a ``RemotePort`` over the wire): a
refused transfer answers the same status and body under its key after a deposit, another body
under it is ``409 idempotency_key_reused``, what is decided before the ledger (400, 403) is not
recorded, batch items keep their refusals, the event feed does not show refusal records, and
``wallet wal dump`` / ``wal verify`` read them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio

from ledger import UNRECORDED_REASONS, Ledger, Reason, recover
from server._errors import REASONS
from server._port import LocalPort, RemotePort, serve_port
from server._tools import wal_dump, wal_verify
from server.api import Deps, build_app

ADMIN = {"Authorization": "Bearer admin"}
# What API.md lists as decided before the ledger, so never recorded under a key.
NOT_RECORDED_STATUSES = {400, 401, 403, 413, 415, 429, 503}


@asynccontextmanager
async def service(tmp_path: Path, *, remote: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        local = LocalPort(ledger)
        port: LocalPort | RemotePort = local
        transport = trio.CancelScope()
        if remote:
            listener = await anyio.create_unix_listener(str(tmp_path / "ledger.sock"))
            port = remote_port = RemotePort(str(tmp_path / "ledger.sock"))

            async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with transport:
                    async with trio.open_nursery() as inner:
                        inner.start_soon(serve_port, lambda: local, listener)
                        await inner.start(remote_port.run)
                        task_status.started()

            await nursery.start(serve)
            await remote_port.connected.wait()
        app = build_app(Deps.build(admin_token="admin", port=port))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                     headers=ADMIN) as http:
            assert (await http.post("/v1/assets", json={"code": "USD", "scale": 2})).status_code == 201
            for wallet_id, owner in (("a", "alice"), ("b", "bob")):
                created = await http.post("/v1/wallets", json={"id": wallet_id, "owner_id": owner, "asset": "USD"})
                assert created.status_code == 201, created.text
            yield http
        transport.cancel()
        ledger.check_invariants()
        await ledger.stop()


async def _deposit(http: httpx.AsyncClient, wallet_id: str, amount: int, key: str) -> None:
    response = await http.post("/v1/deposits", json={"wallet_id": wallet_id, "amount": amount},
                               headers={"Idempotency-Key": key})
    assert response.status_code == 201, response.text


async def _balance(http: httpx.AsyncClient, wallet_id: str) -> int:
    response = await http.get(f"/v1/wallets/{wallet_id}")
    assert response.status_code == 200
    balance: int = response.json()["balance"]
    return balance


async def _user(http: httpx.AsyncClient, owner: str) -> dict[str, str]:
    response = await http.post("/v1/tokens", json={"owner_id": owner})
    assert response.status_code == 201
    return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
async def test_a_refused_transfer_answers_the_same_after_a_deposit(tmp_path: Path, remote: bool,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    async with service(tmp_path, remote=remote) as http:
        body = {"from_wallet_id": "a", "to_wallet_id": "b", "amount": 500}
        first = await http.post("/v1/transfers", json=body, headers={"Idempotency-Key": "K"})
        assert first.status_code == 422 and first.json()["code"] == "insufficient_funds"
        await _deposit(http, "a", 1000, "dep")
        again = await http.post("/v1/transfers", json=body, headers={"Idempotency-Key": "K"})
        assert (again.status_code, again.content) == (first.status_code, first.content)
        other = await http.post("/v1/transfers", json={**body, "amount": 5}, headers={"Idempotency-Key": "K"})
        assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"
        assert (await _balance(http, "a"), await _balance(http, "b")) == (1000, 0)
        # The feed shows money events only: the refusal's record is skipped, the cursor passes it.
        feed = (await http.get("/v1/events", params={"limit": 1000})).json()
        assert [item["type"] for item in feed["items"]].count("transfer.posted") == 0
        assert all(item["type"] != "RequestsRefused" for item in feed["items"])
        assert feed["next_after"] >= max(item["lsn"] for item in feed["items"])
    if not remote:
        assert wal_dump(tmp_path, from_lsn=1, to_lsn=None, fmt="jsonl") == 0
        dumped = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        (refused,) = [record for record in dumped if record["type"] == "RequestsRefused"]
        assert refused["refusals"][0][1] == {"reason": "insufficient_funds", "detail": first.json()["detail"]}
        assert refused["refusals"][0][0]["key"] == "K"
        assert wal_verify(tmp_path, progress=False) == 0


async def test_what_is_decided_before_the_ledger_is_not_recorded(tmp_path: Path) -> None:
    async with service(tmp_path) as http:
        alice = await _user(http, "alice")
        await _deposit(http, "a", 100, "dep-a")
        await _deposit(http, "b", 100, "dep-b")
        # 400: a bad body, then the fixed one under the same key.
        bad = await http.post("/v1/transfers", json={"from_wallet_id": "a", "to_wallet_id": "b", "amount": "x"},
                              headers={**alice, "Idempotency-Key": "K400"})
        assert bad.status_code == 400
        fixed = await http.post("/v1/transfers", json={"from_wallet_id": "a", "to_wallet_id": "b", "amount": 1},
                                headers={**alice, "Idempotency-Key": "K400"})
        assert fixed.status_code == 201, fixed.text
        # 403: bob's wallet (the ledger's FORBIDDEN), then alice's own under the same key.
        forbidden = await http.post("/v1/transfers", json={"from_wallet_id": "b", "to_wallet_id": "a", "amount": 1},
                                    headers={**alice, "Idempotency-Key": "K403"})
        assert forbidden.status_code == 403
        fixed = await http.post("/v1/transfers", json={"from_wallet_id": "a", "to_wallet_id": "b", "amount": 2},
                                headers={**alice, "Idempotency-Key": "K403"})
        assert fixed.status_code == 201, fixed.text
        # 404 for a wallet named in the body is the ledger's decision: final, even once it exists.
        missing = {"from_wallet_id": "a", "to_wallet_id": "c", "amount": 1}
        first = await http.post("/v1/transfers", json=missing, headers={**alice, "Idempotency-Key": "K404"})
        assert first.status_code == 404
        created = await http.post("/v1/wallets", json={"id": "c", "owner_id": "carol", "asset": "USD"})
        assert created.status_code == 201
        again = await http.post("/v1/transfers", json=missing, headers={**alice, "Idempotency-Key": "K404"})
        assert (again.status_code, again.content) == (404, first.content)
        assert await _balance(http, "c") == 0


async def test_batch_items_and_atomic_batches_keep_their_refusals(tmp_path: Path) -> None:
    async with service(tmp_path) as http:
        await _deposit(http, "a", 100, "dep-a")
        items: list[dict[str, Any]] = [
            {"idempotency_key": "i1", "from_wallet_id": "a", "to_wallet_id": "b", "amount": 60},
            {"idempotency_key": "i2", "from_wallet_id": "a", "to_wallet_id": "b", "amount": 60},
        ]
        first = await http.post("/v1/transfers/batch", json={"atomic": False, "transfers": items})
        assert [result["status"] for result in first.json()["results"]] == [201, 422]
        # a has 40: the first item (30) would pass, the second (60) fails the batch.
        atomic = [{**item, "idempotency_key": "x" + item["idempotency_key"], "amount": amount}
                  for item, amount in zip(items, (30, 60), strict=True)]
        failed = await http.post("/v1/transfers/batch", json={"atomic": True, "transfers": atomic})
        assert failed.status_code == 422 and failed.json()["index"] == 1
        await _deposit(http, "a", 1000, "dep-a2")
        again = await http.post("/v1/transfers/batch", json={"atomic": False, "transfers": items})
        results = again.json()["results"]
        assert results[1] == first.json()["results"][1]
        assert results[0]["status"] == 201 and results[0]["transaction"] == first.json()["results"][0]["transaction"]
        retried = await http.post("/v1/transfers/batch", json={"atomic": True, "transfers": atomic})
        assert (retried.status_code, retried.content) == (failed.status_code, failed.content)
        assert await _balance(http, "a") == 1040


def test_the_unrecorded_reasons_are_the_statuses_api_md_names() -> None:
    """Every ledger rejection whose status API.md lists as decided before the ledger records
    nothing, and every other one (422, 404, 409 ...) is final; ``idempotency_key_reused`` and
    ``request_in_progress`` are the key's own answers, never an outcome."""
    for reason in Reason:
        status = REASONS[reason][0]
        unrecorded = status in NOT_RECORDED_STATUSES or reason in (Reason.IDEMPOTENCY_KEY_REUSED,
                                                                   Reason.REQUEST_IN_PROGRESS)
        assert (reason in UNRECORDED_REASONS) == unrecorded, (reason, status)
