"""The event feed: every acknowledged change exactly once and in order, across a restart;
long-poll wakes on commit; SSE resumes from Last-Event-ID; compacted history answers 410."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from tests.e2e._load import Ledgerbook, send, setup_wallets
from tests.e2e._server import ServerProcess


async def all_events(http: httpx.AsyncClient, after: int = 0) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        response = await http.get("/v1/events", params={"after": str(after), "limit": "7"})
        assert response.status_code == 200, response.text
        page = response.json()
        if not page["items"]:
            return found
        found.extend(page["items"])
        after = page["next_after"]


async def test_every_acknowledged_change_appears_once_in_order_across_a_restart(server: ServerProcess) -> None:
    ids = ["ev-a", "ev-b"]
    book = Ledgerbook()
    async with server.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=1000)
        for index in range(10):
            await send(http, f"e{index}", {"from_wallet_id": "ev-a", "to_wallet_id": "ev-b", "amount": 1}, book)
        assert (await http.post("/v1/wallets/ev-b/freeze")).status_code == 200
    server.restart()
    async with server.async_client() as http:
        for index in range(10, 15):
            await send(http, f"e{index}", {"from_wallet_id": "ev-a", "to_wallet_id": "ev-b", "amount": 1}, book)
        events = await all_events(http)
    assert not book.rejected
    assert [event["lsn"] for event in events] == list(range(1, len(events) + 1))
    posted = [event["data"]["id"] for event in events if event["type"] == "transfer.posted"]
    assert sorted(posted) == sorted(t["id"] for t in book.acknowledged.values())
    assert len(posted) == len(set(posted)) == 15
    kinds = [event["type"] for event in events]
    assert kinds[:3] == ["asset.created", "wallet.created", "deposit.posted"]
    assert "wallet.frozen" in kinds


async def test_a_long_poll_wakes_when_a_change_commits(server: ServerProcess) -> None:
    async with server.async_client() as http:
        await setup_wallets(http, ["lp-a"], asset="USD", deposit=0)
        after = (await http.get("/ready")).json()["durable_lsn"]
        answer: list[dict[str, Any]] = []

        async def poll() -> None:
            response = await http.get("/v1/events", params={"after": str(after), "wait": "25"})
            answer.append(response.json())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(0.3)
            response = await http.post("/v1/deposits", json={"wallet_id": "lp-a", "amount": 9},
                                       headers={"Idempotency-Key": "lp"})
            assert response.status_code == 201
        # Woken by the commit (a timeout would have answered with no items after 25 s).
        assert [event["data"]["amount"] for event in answer[0]["items"]] == [9]


async def test_sse_resumes_after_last_event_id(server: ServerProcess) -> None:
    async with server.async_client() as http:
        await setup_wallets(http, ["sse-a", "sse-b"], asset="USD", deposit=100)
        durable = (await http.get("/ready")).json()["durable_lsn"]
        seen: list[int] = []
        with trio.fail_after(10):
            async with http.stream("GET", "/v1/events/stream", headers={"Last-Event-ID": "2"}) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    if line.startswith("id: "):
                        seen.append(int(line[4:]))
                        if seen[-1] == durable:
                            break
    assert seen == list(range(3, durable + 1))


async def test_events_are_admin_only(server: ServerProcess) -> None:
    async with server.async_client() as http:
        token = (await http.post("/v1/tokens", json={"owner_id": "someone"})).json()["token"]
    async with server.async_client(token=token) as user:
        assert (await user.get("/v1/events")).json()["code"] == "forbidden"
        assert (await user.get("/v1/events/stream")).status_code == 403


async def test_compacted_history_answers_410_with_the_oldest_lsn(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", extra_args=["--snapshot-every", "40", "--segment-bytes", "4096"])
    server.start()
    try:
        async with server.async_client() as http:
            await setup_wallets(http, ["g-a", "g-b"], asset="USD", deposit=10**6)
            book = Ledgerbook()
            for index in range(200):
                await send(http, f"g{index}", {"from_wallet_id": "g-a", "to_wallet_id": "g-b", "amount": 1}, book)
        for _ in range(100):
            if "WAL segment(s) below" in server.log():
                break
            await trio.sleep(0.1)
        server.restart()  # the in-memory window is empty after a restart: old events come from disk
        async with server.async_client() as http:
            response = await http.get("/v1/events", params={"after": "0"})
            assert response.status_code == 410, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            oldest = response.json()["oldest_lsn"]
            assert oldest > 1
            events = await all_events(http, after=oldest - 1)
            assert events[0]["lsn"] == oldest
            assert events[-1]["lsn"] == (await http.get("/ready")).json()["durable_lsn"]
    finally:
        server.kill()
