"""``GET /v1/transactions`` in process (the app over httpx's ASGI transport, a real ledger with
its history read model): each filter and a combination, newest first; owner scoping (a user
token sees only transactions touching its wallets; another owner's wallet is 403, an unknown
one 404); a transfer is found by the next search (read-your-writes); pages neither skip nor
repeat while transfers are posted between them; every bad parameter is a 400 listing it; and
the ledger port carries a search across the Unix socket."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from ledger import Ledger, recover
from server._port import LocalPort
from server.api import Deps, build_app

ADMIN = {"Authorization": "Bearer admin"}
_keys = itertools.count()


class Api:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str] = ADMIN) -> dict[str, Any]:
        response = await self.http.post(path, json=body, headers={**headers, "Idempotency-Key": f"k{next(_keys)}"})
        assert response.status_code in (200, 201), response.text
        return response.json()  # type: ignore[no-any-return]

    async def search(self, headers: dict[str, str] = ADMIN, **params: Any) -> httpx.Response:
        return await self.http.get("/v1/transactions", params=params, headers=headers)

    async def ids(self, headers: dict[str, str] = ADMIN, **params: Any) -> list[str]:
        found: list[str] = []
        cursor = None
        while True:
            response = await self.search(headers, **params, **({"cursor": cursor} if cursor else {}))
            assert response.status_code == 200, response.text
            page = response.json()
            found += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return found


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        app = build_app(Deps.build(admin_token="admin", port=LocalPort(ledger)))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            yield Api(http)
        await ledger.stop()


async def _world(api: Api) -> dict[str, Any]:
    """Alice (a1, a2) and Bob (b1); deposits, transfers with metadata, a held transfer."""
    await api.post("/v1/assets", {"code": "USD", "scale": 2})
    for wallet_id, owner in (("a1", "alice"), ("a2", "alice"), ("b1", "bob")):
        await api.post("/v1/wallets", {"id": wallet_id, "owner_id": owner, "asset": "USD"})
    made: list[dict[str, Any]] = []
    for wallet_id in ("a1", "a2", "b1"):
        made.append(await api.post("/v1/deposits", {"wallet_id": wallet_id, "amount": 1000}))
    for number, (source, target, channel) in enumerate([("a1", "b1", "web"), ("b1", "a2", "ios"),
                                                        ("a1", "a2", "web"), ("b1", "a1", "web"),
                                                        ("a2", "b1", "api")]):
        made.append(await api.post("/v1/transfers", {
            "from_wallet_id": source, "to_wallet_id": target, "amount": 10 * (number + 1),
            "metadata": {"channel": channel, "order_id": f"ord-{number}", "n": number},
        }))
    made.append(await api.post("/v1/transfers", {"from_wallet_id": "b1", "to_wallet_id": "a1", "amount": 7,
                                                 "metadata": {"channel": "web"}, "hold": {"timeout_s": 600}}))
    alice = (await api.post("/v1/tokens", {"owner_id": "alice"}))["token"]
    return {"made": made, "alice": {"Authorization": f"Bearer {alice}"}}


def _newest_first(made: list[dict[str, Any]], keep: Any = lambda tx: True) -> list[str]:
    return [tx["id"] for tx in reversed(made) if keep(tx)]


async def test_each_filter_and_a_combination(api: Api) -> None:
    world = await _world(api)
    made = world["made"]
    first = (await api.search(limit="1")).json()
    assert first["items"][0] == made[-1]  # the transaction's own representation
    assert await api.ids() == _newest_first(made)
    assert await api.ids(limit="2") == _newest_first(made)
    assert await api.ids(wallet_id="a2") == _newest_first(made, lambda tx: "a2" in (tx["from_wallet_id"], tx["to_wallet_id"]))
    assert await api.ids(type="deposit") == _newest_first(made, lambda tx: tx["type"] == "deposit")
    assert await api.ids(status="pending") == [made[-1]["id"]]
    assert await api.ids(min_amount="20", max_amount="40") == _newest_first(made, lambda tx: 20 <= tx["amount"] <= 40)
    assert await api.ids(**{"metadata.channel": "web"}) == _newest_first(
        made, lambda tx: tx["metadata"].get("channel") == "web")
    assert await api.ids(**{"metadata.order_id": "ord-3"}) == [made[6]["id"]]
    assert await api.ids(**{"metadata.n": "3"}) == []  # a number in metadata is not the string "3"
    stamps = [tx["created_at"] for tx in made]
    assert await api.ids(since=stamps[4], until=stamps[6]) == _newest_first(
        made, lambda tx: stamps[4] <= tx["created_at"] <= stamps[6])
    combined = await api.ids(wallet_id="a1", type="transfer", **{"metadata.channel": "web"}, min_amount="20",
                             since=stamps[0])
    assert combined == _newest_first(made, lambda tx: "a1" in (tx["from_wallet_id"], tx["to_wallet_id"])
                                     and tx["type"] == "transfer" and tx["metadata"].get("channel") == "web"
                                     and tx["amount"] >= 20)
    assert len(combined) == 2


async def test_a_user_token_sees_its_owners_transactions_only(api: Api) -> None:
    world = await _world(api)
    made, alice = world["made"], world["alice"]
    alices = {"a1", "a2"}
    assert await api.ids(alice) == _newest_first(made, lambda tx: bool(alices & {tx["from_wallet_id"], tx["to_wallet_id"]}))
    assert await api.ids(alice, wallet_id="a2") == _newest_first(
        made, lambda tx: "a2" in (tx["from_wallet_id"], tx["to_wallet_id"]))
    for wallet_id, status, code in (("b1", 403, "forbidden"), ("treasury:USD", 403, "forbidden"),
                                    ("nobody", 404, "wallet_not_found")):
        response = await api.search(alice, wallet_id=wallet_id)
        assert (response.status_code, response.json()["code"]) == (status, code)
    assert (await api.search(wallet_id="nobody")).status_code == 404
    assert len(await api.ids(wallet_id="treasury:USD")) == 3  # the admin sees the treasury's
    carol = (await api.post("/v1/tokens", {"owner_id": "carol"}))["token"]
    assert await api.ids({"Authorization": f"Bearer {carol}"}) == []  # no wallets, nothing


async def test_pages_never_skip_or_repeat_while_transfers_are_posted(api: Api) -> None:
    world = await _world(api)
    existing = _newest_first(world["made"])
    seen: list[str] = []
    cursor = None
    number = 0
    while True:
        page = (await api.search(limit="2", **({"cursor": cursor} if cursor else {}))).json()
        seen += [item["id"] for item in page["items"]]
        # Between two pages: two more transfers (read-your-writes: the next search shows them).
        for _ in range(2):
            number += 1
            posted = await api.post("/v1/transfers", {"from_wallet_id": "a1", "to_wallet_id": "b1", "amount": 1})
            assert (await api.ids(limit="1000"))[0] == posted["id"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == existing  # every one that existed, once, in order; none of the new ones


BAD = [
    ({"nope": "1"}, "nope"),
    ({"metadata": "x"}, "metadata"),
    ({"wallet_id": "a b"}, "wallet_id"),
    ({"type": "refunds"}, "type"),
    ({"status": "done"}, "status"),
    ({"since": "yesterday"}, "since"),
    ({"until": "2026-01-01T00:00:00"}, "until"),  # no time zone
    ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since"),
    ({"min_amount": "0"}, "min_amount"),
    ({"min_amount": "1.5"}, "min_amount"),
    ({"max_amount": "9223372036854775808"}, "max_amount"),
    ({"max_amount": "-5"}, "max_amount"),
    ({"min_amount": " 5"}, "min_amount"),
    ({"min_amount": "50", "max_amount": "10"}, "min_amount"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"cursor": "garbage"}, "cursor"),
    ({"cursor": "ZTox"}, "cursor"),  # "e:1", a statement's cursor
    ({"metadata.": "x"}, "metadata."),
    ({"metadata.a.b": "x"}, "metadata.a.b"),
    ({"metadata.a b": "x"}, "metadata.a b"),
    ({"metadata." + "k" * 65: "x"}, "metadata." + "k" * 65),
    ({"metadata.k": "v" * 257}, "metadata.k"),
    ({f"metadata.k{number}": "v" for number in range(9)}, "metadata"),
]


@pytest.mark.parametrize(("params", "field"), BAD)
async def test_every_bad_parameter_is_a_400_naming_it(api: Api, params: dict[str, str], field: str) -> None:
    response = await api.search(**params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_request"
    assert field in [error["field"] for error in body["errors"]]


async def test_repeated_and_several_bad_parameters_are_all_listed(api: Api) -> None:
    response = await api.http.get(
        "/v1/transactions?limit=5&limit=6&metadata.k=a&metadata.k=b&type=x&min_amount=0&nope=1", headers=ADMIN)
    assert response.status_code == 400
    fields = [(error["field"], error["message"]) for error in response.json()["errors"]]
    assert ("limit", "is given more than once") in fields
    assert ("metadata.k", "is given more than once") in fields
    assert {"type", "min_amount", "nope"} <= {field for field, _ in fields}
    # Limits at their edges are fine; so is a value of exactly 256 characters, and 8 keys.
    assert (await api.search(limit="1000", **{"metadata.k": "v" * 256})).status_code == 200
    assert (await api.search(**{f"metadata.k{number}": "v" for number in range(8)})).status_code == 200
    assert (await api.search(min_amount="9223372036854775807")).status_code == 200
    assert (await api.http.get("/v1/transactions")).status_code == 401
