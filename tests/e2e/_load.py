"""A small concurrent client for end-to-end tests: it keeps its own record of what the server
acknowledged, so tests can check the server against what clients were told."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from wallet_client import AsyncWalletClient


@dataclass
class Ledgerbook:
    """The clients' own record: acknowledged transfers by idempotency key, and the requests that
    got no answer (connection cut) and must be retried with the same key."""

    acknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)
    unanswered: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)


async def setup_wallets(http: httpx.AsyncClient, ids: list[str], *, asset: str, deposit: int) -> None:
    """The asset, and each wallet (owner ``owner-<id>``) funded with ``deposit``, through
    ``wallet_client`` over ``http`` (its base URL and token): fixed deposit keys, so a setup
    retried after a restart funds nothing twice."""
    client = AsyncWalletClient(http=http)
    await client.create_asset(asset, 2)
    for wallet_id in ids:
        await client.create_wallet("owner-" + wallet_id, asset, id=wallet_id)
        if deposit:
            await client.deposit(wallet_id, deposit, idempotency_key=f"setup-{wallet_id}")


async def send(http: httpx.AsyncClient, key: str, body: dict[str, Any], book: Ledgerbook) -> None:
    try:
        response = await http.post("/v1/transfers", json=body, headers={"Idempotency-Key": key})
    except httpx.TransportError:
        book.unanswered[key] = body
        return
    if response.status_code == 201:
        book.acknowledged[key] = response.json()
        book.unanswered.pop(key, None)
    elif response.status_code == 503:
        book.unanswered[key] = body  # overloaded or not ready: retry later with the same key
    else:
        book.rejected[key] = response.status_code
        book.unanswered.pop(key, None)


async def run_clients(
    http: httpx.AsyncClient, *, clients: int, requests_each: int, pick: Any, book: Ledgerbook,
    seed: int, prefix: str = "k", stop: trio.Event | None = None,
) -> None:
    async def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        for index in range(requests_each):
            if stop is not None and stop.is_set():
                return
            source, target = pick(rng)
            body = {"from_wallet_id": source, "to_wallet_id": target, "amount": rng.randint(1, 1000)}
            await send(http, f"{prefix}-{number}-{index}", body, book)

    async with trio.open_nursery() as nursery:
        for number in range(clients):
            nursery.start_soon(client, number)


async def balances(http: httpx.AsyncClient, ids: list[str]) -> dict[str, int]:
    found = {}
    for wallet_id in ids:
        response = await http.get(f"/v1/wallets/{wallet_id}")
        assert response.status_code == 200, response.text
        found[wallet_id] = response.json()["balance"]
    return found


def expected_balances(ids: list[str], deposit: int, acknowledged: dict[str, dict[str, Any]]) -> dict[str, int]:
    expected = dict.fromkeys(ids, deposit)
    for transaction in acknowledged.values():
        expected[transaction["from_wallet_id"]] -= transaction["amount"]
        expected[transaction["to_wallet_id"]] += transaction["amount"]
    return expected


async def history_ids(http: httpx.AsyncClient, wallet_id: str, *, type_: str = "transfer") -> list[str]:
    """Every id of a transaction of ``type_`` in the wallet's history (all pages)."""
    found: list[str] = []
    cursor = None
    while True:
        params = {"limit": "1000"}
        if cursor:
            params["cursor"] = cursor
        response = await http.get(f"/v1/wallets/{wallet_id}/transactions", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        found.extend(item["transaction_id"] for item in page["items"] if item["type"] == type_)
        cursor = page["next_cursor"]
        if cursor is None:
            return found
