"""SIGKILL in the middle of concurrent load, restart on the same data: every acknowledged
transfer is there exactly once, and retrying the unanswered ones with their idempotency keys
duplicates nothing. Plus the two disk-damage cases the server must tell apart: a torn tail
(survived) and a flipped byte in an old segment (refused)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.e2e._load import (
    Ledgerbook,
    balances,
    expected_balances,
    history_ids,
    run_clients,
    send,
    setup_wallets,
)
from tests.e2e._server import ServerProcess, on_each_loop, on_each_loop_long

DEPOSIT = 10**12


async def _load_then_kill(server: ServerProcess, ids: list[str], book: Ledgerbook, *, seed: int) -> None:
    def pick(rng: Any) -> tuple[str, str]:
        source, target = rng.sample(ids, 2)
        return source, target

    stop = trio.Event()
    async with server.async_client() as http:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: run_clients(
                    http, clients=48, requests_each=10_000, pick=pick, book=book, seed=seed, stop=stop
                )
            )
            # Kill once a good number of transfers were acknowledged, mid-stream.
            while len(book.acknowledged) < 300:
                await trio.sleep(0.01)
            await trio.sleep(random.Random(seed).uniform(0.0, 0.2))
            server.kill()
            stop.set()


async def _verify_after_restart(server: ServerProcess, ids: list[str], book: Ledgerbook) -> None:
    async with server.async_client() as http:
        # Acknowledged before the crash: all there.
        for key, transaction in list(book.acknowledged.items())[:50]:
            response = await http.get(f"/v1/transactions/{transaction['id']}")
            assert response.status_code == 200, (key, response.text)
        # Retry the unanswered ones with the same keys; an acknowledged key replays its answer.
        for key, body in list(book.unanswered.items()):
            await send(http, key, body, book)
        assert not book.unanswered
        assert not book.rejected
        replay_key, replay_transaction = next(iter(book.acknowledged.items()))
        response = await http.post(
            "/v1/transfers",
            json={k: replay_transaction[k] for k in ("from_wallet_id", "to_wallet_id", "amount")},
            headers={"Idempotency-Key": replay_key},
        )
        assert response.status_code == 201
        assert response.json() == replay_transaction
        assert await balances(http, ids) == expected_balances(ids, DEPOSIT, book.acknowledged)
        seen: Counter[str] = Counter()
        for wallet_id in ids:
            seen.update(await history_ids(http, wallet_id))
        assert all(count == 2 for count in seen.values()), "a transfer appears other than once per side"
        acknowledged_ids = {t["id"] for t in book.acknowledged.values()}
        assert set(seen) == acknowledged_ids, "the history holds transfers no client was told about"


@on_each_loop
async def test_sigkill_under_load_loses_and_duplicates_nothing(server: ServerProcess) -> None:
    ids = [f"c{index}" for index in range(40)]
    async with server.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
    book = Ledgerbook()
    await _load_then_kill(server, ids, book, seed=7)
    assert book.acknowledged, "the load acknowledged nothing before the kill"
    assert book.unanswered, "no request was in flight at the kill: the test proved nothing"
    server.start()
    await _verify_after_restart(server, ids, book)


def _newest_segment(data_dir: Path) -> Path:
    return sorted((data_dir / "wal").glob("*.wal"))[-1]


async def test_torn_tail_after_sigkill_is_cut_and_the_server_starts(server: ServerProcess) -> None:
    ids = ["t-a", "t-b"]
    async with server.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=1000)
        book = Ledgerbook()
        for index in range(20):
            await send(http, f"tt-{index}", {"from_wallet_id": "t-a", "to_wallet_id": "t-b", "amount": 1}, book)
    server.kill()
    segment = _newest_segment(server.data_dir)
    size = segment.stat().st_size
    with open(segment, "ab") as handle:
        # Half a frame header, as an interrupted write leaves it.
        handle.write(bytes(range(30)))
    server.start()
    assert "torn tail" in server.log()
    assert segment.stat().st_size == size
    async with server.async_client() as http:
        assert await balances(http, ids) == {"t-a": 980, "t-b": 1020}
        await send(http, "after", {"from_wallet_id": "t-a", "to_wallet_id": "t-b", "amount": 5}, book)
        assert "after" in book.acknowledged
    server.restart()
    async with server.async_client() as http:
        assert await balances(http, ids) == {"t-a": 975, "t-b": 1025}


@on_each_loop_long
async def test_flipped_byte_in_an_old_segment_refuses_to_start(tmp_path: Path, loop: str) -> None:
    server = ServerProcess(tmp_path / "data", extra_args=["--segment-bytes", "4096"], loop=loop)
    server.start()
    try:
        ids = ["f-a", "f-b"]
        async with server.async_client() as http:
            await setup_wallets(http, ids, asset="USD", deposit=10**6)
            book = Ledgerbook()
            for index in range(80):
                await send(http, f"ff-{index}", {"from_wallet_id": "f-a", "to_wallet_id": "f-b", "amount": 1}, book)
        server.kill()
        segments = sorted((server.data_dir / "wal").glob("*.wal"))
        assert len(segments) >= 3
        victim = segments[0]
        data = bytearray(victim.read_bytes())
        offset = len(data) // 2
        data[offset] ^= 0x01
        victim.write_bytes(bytes(data))
        server.start(wait=False)
        assert server.wait_exit() == 2
        log = server.log()
        assert "refusing to start" in log
        assert victim.name in log
        assert "LSN" in log and "offset" in log
        assert "wallet wal" in log
        with httpx.Client() as http:
            try:
                http.get(server.url + "/ready", timeout=1)
                raise AssertionError("the server still answers")
            except httpx.TransportError:
                pass
    finally:
        server.kill()


async def test_history_resumes_after_sigkill_and_rebuilds_when_deleted(server: ServerProcess) -> None:
    ids = ["h-a", "h-b"]
    async with server.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=1000)
        book = Ledgerbook()
        for index in range(30):
            await send(http, f"h-{index}", {"from_wallet_id": "h-a", "to_wallet_id": "h-b", "amount": index + 1}, book)
        before = await history_ids(http, "h-a")
    assert len(before) == 30
    server.restart()  # SIGKILL, then start: the projector resumes from its last LSN
    async with server.async_client() as http:
        assert await history_ids(http, "h-a") == before
    server.kill()
    for path in server.data_dir.glob("history.sqlite3*"):
        path.unlink()
    server.start()  # rebuilt from the log
    async with server.async_client() as http:
        assert await history_ids(http, "h-a") == before
        statement = (await http.get("/v1/wallets/h-b/transactions", params={"limit": "1"})).json()
        assert statement["items"][0]["balance_after"] == 1000 + sum(range(1, 31))
