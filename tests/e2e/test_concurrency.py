"""64 concurrent clients against the real server: money is conserved and every acknowledged
transfer is there exactly once, both spread over 200 wallets and all on the same 2 wallets."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.e2e._load import (
    Ledgerbook,
    balances,
    expected_balances,
    history_ids,
    run_clients,
    setup_wallets,
)
from tests.e2e._server import ServerProcess, on_each_loop, on_each_loop_long

DEPOSIT = 10**12


async def _check(server: ServerProcess, ids: list[str], book: Ledgerbook) -> None:
    async with server.async_client() as http:
        actual = await balances(http, ids)
        assert actual == expected_balances(ids, DEPOSIT, book.acknowledged)
        treasury = (await http.get("/v1/wallets/treasury:USD")).json()["balance"]
        assert treasury + sum(actual.values()) == 0
        seen: Counter[str] = Counter()
        for wallet_id in ids:
            seen.update(await history_ids(http, wallet_id))
        for transaction in book.acknowledged.values():
            # Once as a debit on the sender, once as a credit on the receiver.
            assert seen[transaction["id"]] == 2, transaction
            response = await http.get(f"/v1/transactions/{transaction['id']}")
            assert response.status_code == 200
            assert response.json()["amount"] == transaction["amount"]


@on_each_loop_long
async def test_64_clients_over_200_wallets_conserve_money(server: ServerProcess) -> None:
    ids = [f"u{index}" for index in range(200)]

    def pick(rng: Any) -> tuple[str, str]:
        source, target = rng.sample(ids, 2)
        return source, target

    book = Ledgerbook()
    async with server.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
        await run_clients(http, clients=64, requests_each=12, pick=pick, book=book, seed=1)
    assert not book.rejected and not book.unanswered
    assert len(book.acknowledged) == 64 * 12
    await _check(server, ids, book)


async def test_64_clients_on_two_hot_wallets_conserve_money(server: ServerProcess) -> None:
    ids = ["hot-a", "hot-b"]

    def pick(rng: Any) -> tuple[str, str]:
        return ("hot-a", "hot-b") if rng.random() < 0.5 else ("hot-b", "hot-a")

    book = Ledgerbook()
    async with server.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
        await run_clients(http, clients=64, requests_each=12, pick=pick, book=book, seed=2)
    assert not book.rejected and not book.unanswered
    assert len(book.acknowledged) == 64 * 12
    await _check(server, ids, book)


@on_each_loop
async def test_concurrent_duplicates_of_one_key_execute_once(server: ServerProcess) -> None:
    import trio

    ids = ["dup-a", "dup-b"]
    async with server.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=1000)
        answers: list[Any] = []

        async def again() -> None:
            response = await http.post(
                "/v1/transfers", json={"from_wallet_id": "dup-a", "to_wallet_id": "dup-b", "amount": 7},
                headers={"Idempotency-Key": "same-key"},
            )
            answers.append((response.status_code, response.json()))

        async with trio.open_nursery() as nursery:
            for _ in range(32):
                nursery.start_soon(again)
        assert {status for status, _ in answers} == {201}
        assert len({body["id"] for _, body in answers}) == 1
        assert await balances(http, ids) == {"dup-a": 993, "dup-b": 1007}
