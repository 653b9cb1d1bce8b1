"""Statement pages stay stable under concurrent writes: newest first, a cursor never skips or
repeats an entry, whatever lands between two pages; and every statement ends at the balance."""

from __future__ import annotations

import random

import pytest

from tests.e2e._load import Ledgerbook, send, setup_wallets
from tests.e2e._server import ServerProcess


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_cursor_never_skips_or_repeats_while_writes_land(server: ServerProcess, seed: int) -> None:
    rng = random.Random(seed)
    ids = [f"pg{seed}-a", f"pg{seed}-b", f"pg{seed}-c"]
    book = Ledgerbook()
    counter = iter(range(10**6))
    async with server.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=10**6)

        async def write() -> None:
            source, target = rng.sample(ids, 2)
            await send(http, f"{seed}-{next(counter)}", {"from_wallet_id": source, "to_wallet_id": target,
                                                       "amount": rng.randint(1, 50)}, book)

        for _ in range(40):
            await write()
        wallet = ids[0]
        collected: list[dict[str, int | str]] = []
        cursor = None
        while True:
            params = {"limit": str(rng.randint(1, 6))}
            if cursor:
                params["cursor"] = cursor
            page = (await http.get(f"/v1/wallets/{wallet}/transactions", params=params)).json()
            collected.extend(page["items"])
            cursor = page["next_cursor"]
            for _ in range(rng.randint(0, 3)):
                await write()  # lands between two pages
            if cursor is None:
                break
        top = collected[0]["lsn"]
        everything = (await http.get(f"/v1/wallets/{wallet}/transactions", params={"limit": "1000"})).json()["items"]
        expected = [entry for entry in everything if entry["lsn"] <= top]
        assert [entry["lsn"] for entry in collected] == [entry["lsn"] for entry in expected]
        assert len({entry["lsn"] for entry in collected}) == len(collected)
        for wallet_id in ids:
            newest = (await http.get(f"/v1/wallets/{wallet_id}/transactions", params={"limit": "1"})).json()["items"][0]
            balance = (await http.get(f"/v1/wallets/{wallet_id}")).json()["balance"]
            assert newest["balance_after"] == balance
