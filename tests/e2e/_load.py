"""A small concurrent client for end-to-end tests: it keeps its own record of what the server
acknowledged, so tests can check the server against what clients were told."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
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
    # ``watch()`` starts a clock; ``served_at`` is when the first request *sent* after it was
    # acknowledged (how long a failure kept the service from taking new money movements).
    watching_since: float | None = None
    served_at: float | None = None

    def watch(self) -> float:
        self.watching_since, self.served_at = time.monotonic(), None
        return self.watching_since

    def acknowledge(self, key: str, transaction: dict[str, Any], sent: float) -> None:
        self.acknowledged[key] = transaction
        self.unanswered.pop(key, None)
        if self.served_at is None and self.watching_since is not None and sent >= self.watching_since:
            self.served_at = time.monotonic()


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
    """One transfer (or, for a body with ``transfers``, an atomic batch: ``key`` names the
    request, each item has its own) recorded in ``book``: acknowledged, unanswered (retried
    later with the same keys: a cut connection, 503, or 409 ``request_in_progress``) or refused."""
    sent = time.monotonic()
    if "transfers" in body:
        await _send_batch(http, key, body, book, sent)
        return
    try:
        response = await http.post("/v1/transfers", json=body, headers={"Idempotency-Key": key})
    except httpx.TransportError:
        book.unanswered[key] = body
        return
    if response.status_code == 201:
        book.acknowledge(key, response.json(), sent)
    elif response.status_code == 503:
        book.unanswered[key] = body  # overloaded or not ready: retry later with the same key
    else:
        book.rejected[key] = response.status_code
        book.unanswered.pop(key, None)


async def _send_batch(http: httpx.AsyncClient, key: str, body: dict[str, Any], book: Ledgerbook, sent: float) -> None:
    try:
        response = await http.post("/v1/transfers/batch", json=body)
    except httpx.TransportError:
        book.unanswered[key] = body
        return
    if response.status_code == 200:
        for item, result in zip(body["transfers"], response.json()["results"], strict=True):
            if result["status"] == 201:
                book.acknowledge(item["idempotency_key"], result["transaction"], sent)
            else:
                book.rejected[item["idempotency_key"]] = result["status"]
        book.unanswered.pop(key, None)
    elif response.status_code == 503 or (response.status_code == 409
                                         and response.json().get("code") == "request_in_progress"):
        book.unanswered[key] = body
    else:
        book.rejected[key] = response.status_code
        book.unanswered.pop(key, None)


async def run_clients(
    http: httpx.AsyncClient, *, clients: int, requests_each: int, pick: Any, book: Ledgerbook,
    seed: int, prefix: str = "k", stop: trio.Event | None = None, pause_unanswered_s: float = 0.0,
    batch_share: float = 0.0,
) -> None:
    """``clients`` concurrent clients, ``requests_each`` transfers each (or until ``stop``; with
    ``batch_share``, that share of the requests an atomic batch of two transfers instead). A
    client whose request went unanswered moves on to its next key (the unanswered one waits in
    the book for a retry), after ``pause_unanswered_s``: without a pause, 503s answered at once
    (no ledger to reach) turn into thousands of unanswered keys a second."""

    async def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        for index in range(requests_each):
            if stop is not None and stop.is_set():
                return
            key = f"{prefix}-{number}-{index}"
            if batch_share and rng.random() < batch_share:
                # An atomic batch of two (with several ledger groups, its senders often in two).
                items = []
                for item in range(2):
                    source, target = pick(rng)
                    items.append({"idempotency_key": f"{key}-{item}", "from_wallet_id": source,
                                  "to_wallet_id": target, "amount": rng.randint(1, 1000)})
                body: dict[str, Any] = {"atomic": True, "transfers": items}
            else:
                source, target = pick(rng)
                body = {"from_wallet_id": source, "to_wallet_id": target, "amount": rng.randint(1, 1000)}
            await send(http, key, body, book)
            if pause_unanswered_s and key in book.unanswered:
                await trio.sleep(pause_unanswered_s)

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


def hot_pair_picker(ids: list[str], *, hot_share: float = 0.3) -> Callable[[random.Random], tuple[str, str]]:
    """Transfers between two wallets of ``ids``, a ``hot_share`` of them between the first two
    (either way round)."""

    def pick(rng: random.Random) -> tuple[str, str]:
        if rng.random() < hot_share:
            return (ids[0], ids[1]) if rng.random() < 0.5 else (ids[1], ids[0])
        source, target = rng.sample(ids, 2)
        return source, target

    return pick


@asynccontextmanager
async def under_load(http: httpx.AsyncClient, book: Ledgerbook, *, pick: Any, clients: int, seed: int,
                     prefix: str, pause_unanswered_s: float = 0.0, batch_share: float = 0.0) -> AsyncIterator[None]:
    """``run_clients`` in the background for the body of the ``async with``; stopped at its end
    (each client finishes the request it is in)."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(run_clients, http, clients=clients, requests_each=1_000_000, pick=pick,
                                   book=book, seed=seed, prefix=prefix, stop=stop,
                                   pause_unanswered_s=pause_unanswered_s, batch_share=batch_share))
        try:
            yield
        finally:
            stop.set()


async def retry_unanswered(http: httpx.AsyncClient, book: Ledgerbook, *, attempts: int = 100,
                           pause_s: float = 0.1) -> None:
    """Every unanswered request again with its own key, each until answered (``attempts`` at
    most, ``pause_s`` apart)."""
    for key, body in list(book.unanswered.items()):
        for _ in range(attempts):
            await send(http, key, body, book)
            if key not in book.unanswered:
                break
            await trio.sleep(pause_s)


async def check_against_book(http: httpx.AsyncClient, ids: list[str], book: Ledgerbook, *, deposit: int,
                             asset: str = "USD", history: bool = True) -> None:
    """The server holds exactly what the clients were told: nothing unanswered or refused left,
    every balance as the record says (so no key ran twice), money conserved (the treasury's
    balance and the wallets' add up to zero) and, with ``history``, every acknowledged transfer
    in the history once per side and nothing else. Raises AssertionError naming what differs."""
    if book.unanswered or book.rejected:
        raise AssertionError(f"retries failed: {len(book.unanswered)} unanswered "
                             f"(e.g. {list(book.unanswered)[:3]}), refused {dict(list(book.rejected.items())[:3])}")
    actual = await balances(http, ids)
    expected = expected_balances(ids, deposit, book.acknowledged)
    if actual != expected:
        differ = {wallet_id: (actual[wallet_id], expected[wallet_id]) for wallet_id in ids
                  if actual[wallet_id] != expected[wallet_id]}
        raise AssertionError(f"balances differ from the clients' record (actual, expected): {differ}")
    response = await http.get(f"/v1/wallets/treasury:{asset}")
    if response.status_code != 200 or response.json()["balance"] + sum(actual.values()) != 0:
        raise AssertionError(f"money is not conserved: treasury {response.text}, wallets {sum(actual.values())}")
    if not history:
        return
    seen: Counter[str] = Counter()
    for wallet_id in ids:
        seen.update(await history_ids(http, wallet_id))
    acknowledged = {transaction["id"] for transaction in book.acknowledged.values()}
    if set(seen) != acknowledged:
        raise AssertionError(f"history and record differ: {len(set(seen) - acknowledged)} transfers no client "
                             f"was told about, {len(acknowledged - set(seen))} acknowledged ones missing")
    twice = [transaction_id for transaction_id, count in seen.items() if count != 2]
    if twice:
        raise AssertionError(f"transfers in the history other than once per side: {twice[:5]}")
