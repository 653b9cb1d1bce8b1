"""A cluster owner's read model (``server._serve.serve`` with an owner): recovery does not project
history, so a takeover does not wait for it; a projector task of the owner's process tails the
log into SQLite once the ledger serves, and history reads through the owner's ``LocalPort``
query that file read-only after waiting for what was durable on arrival, as a worker of
``--workers N`` does."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import anyio
import httpx

from ledger import Ledger, Projector, RemoteProjection, recover
from server._port import LocalPort
from server.api import Deps, build_app

HISTORY = "history.sqlite3"


async def test_the_owners_port_reads_the_history_its_projector_task_writes(tmp_path: Path) -> None:
    recovered = await anyio.to_thread.run_sync(partial(recover, tmp_path, project_history=False))
    assert recovered.history is None and not (tmp_path / HISTORY).exists()
    ledger = Ledger(recovered, tmp_path, shards=2)
    assert isinstance(ledger.history, RemoteProjection)
    port = LocalPort(ledger, history_path=tmp_path / HISTORY)
    async with anyio.create_task_group() as group:
        await group.start(ledger.run)
        projecting = anyio.CancelScope()

        async def project() -> None:
            with projecting:
                await Projector(tmp_path, port.sync_projection).run()

        app = build_app(Deps.build(admin_token="admin", port=port))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                     headers={"Authorization": "Bearer admin"}) as http:
            assert (await http.post("/v1/assets", json={"code": "USD", "scale": 2})).status_code == 201
            for wallet_id in ("a", "b"):
                response = await http.post("/v1/wallets", json={"id": wallet_id, "owner_id": "o", "asset": "USD"})
                assert response.status_code == 201, response.text
            response = await http.post("/v1/deposits", json={"wallet_id": "a", "amount": 500},
                                       headers={"Idempotency-Key": "d1"})
            assert response.status_code == 201, response.text
            # Written before the projector starts (a takeover's state): the read model catches up.
            group.start_soon(project)
            for number in range(5):
                response = await http.post("/v1/transfers", json={"from_wallet_id": "a", "to_wallet_id": "b",
                                                                  "amount": 10 + number},
                                           headers={"Idempotency-Key": f"t{number}"})
                assert response.status_code == 201, response.text
                last = response.json()["id"]
                # Read-your-writes through the port: the transfer just acknowledged is there.
                got = await http.get(f"/v1/transactions/{last}")
                assert got.status_code == 200, got.text
                assert got.json()["amount"] == 10 + number
            items = (await http.get("/v1/wallets/b/transactions")).json()["items"]
            assert sorted(item["amount"] for item in items) == [10, 11, 12, 13, 14]
        projecting.cancel()
        await port.aclose()
        ledger.check_invariants()
        await ledger.stop()
    assert (tmp_path / HISTORY).exists()
