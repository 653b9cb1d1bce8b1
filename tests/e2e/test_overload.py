"""A burst far above capacity: the server answers 503 overloaded (with Retry-After) instead of
queueing without bound, acknowledges nothing it did not make durable, keeps its memory bounded,
and serves normally once the burst is over."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from tests.e2e._load import Ledgerbook, balances, expected_balances, send, setup_wallets
from tests.e2e._server import ServerProcess


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_burst_gets_503_overloaded_and_the_server_recovers(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", shards=1, extra_args=["--mailbox-capacity", "4"])
    server.start()
    try:
        ids = ["o-a", "o-b"]
        async with server.async_client() as http:
            await setup_wallets(http, ids, asset="USD", deposit=10**9)
        assert server.process is not None
        before_kib = rss_kib(server.process.pid)
        statuses: list[int] = []
        retry_after: set[str] = set()
        book = Ledgerbook()
        async with server.async_client(limits=httpx.Limits(max_connections=400)) as http:

            async def one(index: int) -> None:
                body = {"from_wallet_id": ids[index % 2], "to_wallet_id": ids[1 - index % 2], "amount": 1}
                response = await http.post("/v1/transfers", json=body, headers={"Idempotency-Key": f"b{index}"})
                statuses.append(response.status_code)
                if response.status_code == 201:
                    book.acknowledged[f"b{index}"] = response.json()
                elif response.status_code == 503:
                    assert response.json()["code"] == "overloaded"
                    retry_after.add(response.headers["retry-after"])
                    book.unanswered[f"b{index}"] = body

            for burst in range(3):
                async with trio.open_nursery() as nursery:
                    for index in range(300):
                        nursery.start_soon(one, index + 10_000 * burst)
        assert set(statuses) <= {201, 503}, set(statuses)
        assert statuses.count(503) > 0, "the burst never filled the mailbox"
        assert statuses.count(201) > 0
        assert retry_after == {"1"}
        assert rss_kib(server.process.pid) - before_kib < 200 * 1024  # bounded: no unbounded queue
        async with server.async_client() as http:
            # After the burst: the refused ones go through on retry, and the books balance.
            for key, body in list(book.unanswered.items()):
                await send(http, key, body, book)
            assert not book.unanswered and not book.rejected
            assert await balances(http, ids) == expected_balances(ids, 10**9, book.acknowledged)
    finally:
        server.kill()


async def test_slow_clients_do_not_hold_connections_for_everyone(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", extra_args=["--read-timeout", "1"])
    server.start()
    try:
        slow = []
        for _ in range(300):
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", server.port))
            await sock.send(b"POST /v1/transfers HTTP/1.1\r\nHost: x\r\nContent-Le")  # and then nothing
            slow.append(sock)
        with server.client() as http:
            assert http.get("/health").status_code == 200  # everyone else is still served
        with trio.fail_after(10):
            for sock in slow:
                # The server closes each stalled connection after the read timeout.
                while await sock.recv(4096):
                    pass
        for sock in slow:
            sock.close()
    finally:
        server.kill()


async def test_requests_past_the_in_flight_cap_get_503_at_once(tmp_path: Path) -> None:
    # --max-in-flight is per HTTP worker: one worker, so the count below is the server's.
    server = ServerProcess(tmp_path / "data", extra_args=["--max-in-flight", "5", "--workers", "1"])
    server.start()
    try:
        statuses: list[int] = []
        async with server.async_client(limits=httpx.Limits(max_connections=50)) as http:

            async def long_poll() -> None:  # each holds its slot for up to 2 s
                response = await http.get("/v1/events", params={"after": "0", "wait": "2"})
                statuses.append(response.status_code)
                if response.status_code == 503:
                    assert response.json()["code"] == "overloaded"

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(long_poll)
            assert statuses.count(200) == 5 and statuses.count(503) == 15
            assert (await http.get("/health")).status_code == 200  # slots come back
    finally:
        server.kill()
