"""``POST /v1/transfers/batch`` against the real server: JSON and MessagePack round trips, every
item answered in request order with its own status, atomic batches across shards (all posted, or
nothing changed), whole-batch retries that move nothing twice, the request-level 400/413/415
answers, statements and the event feed for batch records, and a SIGKILL while atomic batches
spanning shards are in flight: after the restart every batch is whole or absent."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import trio

from ledger import shard_of
from tests.e2e._server import ADMIN_TOKEN, ServerProcess, started_with_assets

SHARDS = 4
DEPOSIT = 1_000_000
MSGPACK = "application/msgpack"


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = started_with_assets(Path(tmp_path_factory.mktemp("batch")) / "data", "USD", "EUR", shards=SHARDS)
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def http(batch_server: ServerProcess) -> Iterator[httpx.Client]:
    with batch_server.client() as client:
        yield client


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def spread(count: int) -> list[str]:
    """``count`` fresh wallet ids, the first ones on every shard in turn."""
    ids: list[str] = []
    while len(ids) < count:
        candidate = uid("b")
        if len(ids) >= SHARDS or shard_of(candidate, SHARDS) == len(ids):
            ids.append(candidate)
    return ids


def wallets(http: httpx.Client, count: int, *, owner: str | None = None, asset: str = "USD",
            deposit: int = DEPOSIT) -> list[str]:
    """``count`` new wallets (on every shard when count >= SHARDS), funded."""
    ids = []
    for wallet_id in spread(count):
        created = http.post("/v1/wallets", json={"id": wallet_id, "owner_id": owner or wallet_id, "asset": asset})
        assert created.status_code == 201, created.text
        if deposit:
            funded = http.post("/v1/deposits", json={"wallet_id": wallet_id, "amount": deposit},
                               headers={"Idempotency-Key": uid("d")})
            assert funded.status_code == 201, funded.text
        ids.append(wallet_id)
    return ids


def on_other_shards(ids: list[str]) -> tuple[str, str]:
    return next((a, b) for a in ids for b in ids if shard_of(a, SHARDS) != shard_of(b, SHARDS))


def item(source: str, target: str, amount: Any, key: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key or uid("k"), "from_wallet_id": source, "to_wallet_id": target,
            "amount": amount, **extra}


def batch(http: httpx.Client, items: list[Any], *, atomic: bool, **options: Any) -> httpx.Response:
    return http.post("/v1/transfers/batch", json={"atomic": atomic, "transfers": items}, **options)


def balances(http: httpx.Client, ids: list[str]) -> dict[str, int]:
    found = {}
    for wallet_id in ids:
        response = http.get(f"/v1/wallets/{wallet_id}")
        assert response.status_code == 200, response.text
        found[wallet_id] = response.json()["balance"]
    return found


def statuses(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [result["status"] for result in response.json()["results"]]


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["code"] == code, body
    return body


# -- round trips ---------------------------------------------------------------------------


def test_json_round_trip_posts_each_item_and_answers_in_order(http: httpx.Client) -> None:
    ids = wallets(http, 12)
    source, target = on_other_shards(ids)
    items = [item(source, target, 7, description="rent", metadata={"n": 1}),
             item(target, source, 3), item(ids[2], ids[3], 11)]
    before = balances(http, ids)
    response = batch(http, items, atomic=False)
    assert statuses(response) == [201, 201, 201]
    results = response.json()["results"]
    for sent, result in zip(items, results, strict=True):
        transaction = result["transaction"]
        assert transaction["from_wallet_id"] == sent["from_wallet_id"]
        assert transaction["to_wallet_id"] == sent["to_wallet_id"]
        assert transaction["amount"] == sent["amount"]
        assert transaction["status"] == "posted" and transaction["type"] == "transfer"
        assert http.get(f"/v1/transactions/{transaction['id']}").json() == transaction
    assert results[0]["transaction"]["description"] == "rent"
    assert results[0]["transaction"]["metadata"] == {"n": 1}
    after = balances(http, ids)
    assert after[source] == before[source] - 7 + 3
    assert after[target] == before[target] + 7 - 3
    assert len({r["transaction"]["id"] for r in results}) == 3


def test_messagepack_round_trip(http: httpx.Client) -> None:
    ids = wallets(http, 12)
    source, target = on_other_shards(ids)
    body = {"atomic": True, "transfers": [item(source, target, 5), item(target, ids[5], 2, metadata={"x": 1.5})]}
    response = http.post("/v1/transfers/batch", content=msgpack.packb(body),
                         headers={"Content-Type": MSGPACK, "Accept": MSGPACK})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == MSGPACK
    answer = msgpack.unpackb(response.content, raw=False)
    assert [r["status"] for r in answer["results"]] == [201, 201]
    assert answer["results"][1]["transaction"]["metadata"] == {"x": 1.5}
    # The same batch in JSON is a retry: the original answer, not a second posting.
    again = batch(http, body["transfers"], atomic=True)
    assert again.json() == answer
    # A msgpack float amount is refused like a JSON one.
    bad = http.post("/v1/transfers/batch", headers={"Content-Type": MSGPACK},
                    content=msgpack.packb({"atomic": False, "transfers": [item(source, target, 5.0)]}))
    (result,) = bad.json()["results"]
    assert result["status"] == 400 and result["error"]["errors"][0]["field"] == "transfers[0].amount"
    undecodable = http.post("/v1/transfers/batch", content=b"\xc1\x00", headers={"Content-Type": MSGPACK})
    problem(undecodable, 400, "invalid_request")


def test_a_thousand_items_round_trip(http: httpx.Client) -> None:
    ids = wallets(http, 16)
    rng = random.Random(3)
    items = [item(*rng.sample(ids, 2), rng.randint(1, 100)) for _ in range(1000)]
    before = balances(http, ids)
    response = http.post("/v1/transfers/batch", content=msgpack.packb({"atomic": False, "transfers": items}),
                         headers={"Content-Type": MSGPACK, "Accept": MSGPACK})
    answer = msgpack.unpackb(response.content, raw=False)
    assert [r["status"] for r in answer["results"]] == [201] * 1000
    expected = dict(before)
    for sent in items:
        expected[sent["from_wallet_id"]] -= sent["amount"]
        expected[sent["to_wallet_id"]] += sent["amount"]
    assert balances(http, ids) == expected


# -- per-item answers ------------------------------------------------------------------------


def test_mixed_results_come_back_in_request_order_with_their_codes(batch_server: ServerProcess, http: httpx.Client) -> None:
    owner = uid("owner")
    mine = wallets(http, 2, owner=owner)
    others = wallets(http, 12)
    euro = wallets(http, 1, asset="EUR")
    frozen = wallets(http, 1)
    assert http.post(f"/v1/wallets/{frozen[0]}/freeze").status_code == 200
    source, target = on_other_shards(others)
    used = item(source, target, 1)
    assert statuses(batch(http, [used], atomic=False)) == [201]
    items = [
        item(source, target, 10),                       # 201
        item(source, "nobody-" + uid("x"), 10),         # 404 receiver
        item("nobody-" + uid("x"), target, 10),         # 404 sender
        item(source, target, DEPOSIT * 10),             # 422 insufficient_funds
        item(source, target, 10.0),                     # 400 shape
        item(source, source, 10),                       # 422 same_wallet
        item(source, euro[0], 10),                      # 422 asset_mismatch
        item(frozen[0], target, 10),                    # 409 wallet_frozen
        {**used, "amount": 2},                          # 409 idempotency_key_reused
        item(source, target, 10, unknown=1),            # 400 shape
        item(third := next(w for w in others if w not in (source, target)), target, 1),  # 201
    ]
    response = batch(http, items, atomic=False)
    assert statuses(response) == [201, 404, 404, 422, 400, 422, 422, 409, 409, 400, 201]
    results = response.json()["results"]
    codes = [r["error"]["code"] if "error" in r else None for r in results]
    assert codes == [None, "wallet_not_found", "wallet_not_found", "insufficient_funds", "invalid_request",
                     "same_wallet", "asset_mismatch", "wallet_frozen", "idempotency_key_reused",
                     "invalid_request", None]
    assert results[4]["error"]["errors"] == [{"field": "transfers[4].amount",
                                              "message": "must be an integer number of minor units, not the number 10.0"}]
    assert results[9]["error"]["errors"] == [{"field": "transfers[9].unknown", "message": "unknown field"}]
    assert results[10]["transaction"]["from_wallet_id"] == third
    # The same key with the same item again: the original answer.
    assert batch(http, [dict(used)], atomic=False).json()["results"][0]["status"] == 201
    # A user token sends from its own wallets only: the others are that item's 403.
    token = http.post("/v1/tokens", json={"owner_id": owner}).json()["token"]
    with batch_server.client(token) as user:
        response = batch(user, [item(mine[0], mine[1], 5), item(source, mine[0], 5), item(mine[1], target, 1)],
                         atomic=False)
        assert statuses(response) == [201, 403, 201]
        assert response.json()["results"][1]["error"]["code"] == "forbidden"
        failed = problem(batch(user, [item(mine[0], mine[1], 5), item(source, mine[0], 5)], atomic=True),
                         422, "batch_failed")
        assert failed["index"] == 1 and failed["error"]["code"] == "forbidden"


def test_statements_and_events_show_each_item_of_a_batch(http: httpx.Client) -> None:
    ids = wallets(http, 12)
    source, target = on_other_shards(ids)
    after = http.get("/v1/events", params={"after": 0, "limit": 1}).json()
    durable = http.get("/ready").json()["durable_lsn"]
    items = [item(source, target, amount) for amount in (1, 2, 3)] + [item(target, source, 4)]
    response = batch(http, items, atomic=True)
    transactions = [r["transaction"] for r in response.json()["results"]]
    assert len({t["lsn"] for t in transactions}) == 1  # one record
    statement = http.get(f"/v1/wallets/{source}/transactions", params={"limit": 1}).json()
    seen = []
    cursor = None
    while True:
        page = http.get(f"/v1/wallets/{source}/transactions",
                        params={"limit": 1, **({"cursor": cursor} if cursor else {})}).json()
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [e["transaction_id"] for e in seen[:4]] == [t["id"] for t in reversed(transactions)]
    assert [e["balance_after"] for e in seen[:4]] == [DEPOSIT - 6 + 4, DEPOSIT - 6, DEPOSIT - 3, DEPOSIT - 1]
    assert statement["items"][0] == seen[0]
    events = http.get("/v1/events", params={"after": durable, "limit": 1000}).json()
    posted = [e for e in events["items"] if e["type"] == "transfer.posted"]
    assert [e["data"]["id"] for e in posted] == [t["id"] for t in transactions]
    assert {e["lsn"] for e in posted} == {transactions[0]["lsn"]}
    assert after["items"]


# -- atomic ----------------------------------------------------------------------------------


def test_an_atomic_batch_across_shards_posts_everything_as_one_record(http: httpx.Client) -> None:
    ids = wallets(http, 16, deposit=100)
    assert len({shard_of(w, SHARDS) for w in ids}) == SHARDS
    # A chain through every wallet: each item spends what the one before it credited.
    chain = [item(ids[n], ids[n + 1], 100 + n) for n in range(len(ids) - 1)]
    before = balances(http, ids)
    response = batch(http, chain, atomic=True)
    assert statuses(response) == [201] * len(chain)
    lsns = {r["transaction"]["lsn"] for r in response.json()["results"]}
    assert len(lsns) == 1
    after = balances(http, ids)
    assert after[ids[0]] == before[ids[0]] - 100
    assert after[ids[-1]] == before[ids[-1]] + 100 + len(ids) - 2
    assert sum(after.values()) == sum(before.values())


def test_an_atomic_batch_that_fails_changes_nothing(http: httpx.Client) -> None:
    ids = wallets(http, 12, deposit=100)
    source, target = on_other_shards(ids)
    third = next(w for w in ids if w not in (source, target))
    items = [item(source, target, 60), item(target, third, 50), item(third, source, 1000), item(source, target, 1)]
    before = balances(http, ids)
    body = problem(batch(http, items, atomic=True), 422, "batch_failed")
    assert body["index"] == 2
    assert body["error"]["code"] == "insufficient_funds" and body["error"]["status"] == 422
    assert "transfers[2]" in body["detail"]
    assert balances(http, ids) == before
    # The failing item's refusal is final under its key (the same batch fails the same way); the
    # other items recorded nothing: with the failing item fixed under a new key, the batch posts.
    again = batch(http, items, atomic=True)
    assert again.status_code == 422 and again.json() == body
    items[2]["amount"] = 10
    reused = problem(batch(http, items, atomic=True), 422, "batch_failed")
    assert reused["index"] == 2 and reused["error"]["code"] == "idempotency_key_reused"
    items[2]["idempotency_key"] = uid("k")
    assert statuses(batch(http, items, atomic=True)) == [201] * 4
    # A shape error anywhere is 400 for the whole atomic batch, with the item's path.
    bad = problem(batch(http, [item(source, target, 1), item(source, target, "1")], atomic=True), 400,
                  "invalid_request")
    assert bad["errors"] == [{"field": "transfers[1].amount", "message": "must be an integer number of minor units, not a string"}]


def test_retrying_a_whole_batch_answers_the_same_transactions_and_moves_nothing_twice(http: httpx.Client) -> None:
    ids = wallets(http, 12)
    rng = random.Random(11)
    items = [item(*rng.sample(ids, 2), rng.randint(1, 500)) for _ in range(40)]
    items.append(item(ids[0], "nobody", 1))  # rejected: final under its key (404 again)
    for atomic in (False, True):
        chosen = items if not atomic else [dict(i, idempotency_key=uid("a")) for i in items[:-1]]
        first = batch(http, chosen, atomic=atomic, headers={"Idempotency-Key": uid("batch")})
        after_first = balances(http, ids)
        second = batch(http, chosen, atomic=atomic)
        assert second.json() == first.json()
        assert balances(http, ids) == after_first


# -- request-level answers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"atomic": False, "transfers": [], "x": 1}, "x"),
        ({"atomic": "yes", "transfers": [{}]}, "atomic"),
        ({"transfers": [{}]}, "atomic"),
        ({"atomic": False, "transfers": {}}, "transfers"),
        ({"atomic": False, "transfers": []}, "transfers"),
        ({"atomic": False, "transfers": [{}] * 8191}, "transfers"),
        ({"atomic": False, "transfers": [item("a", "b", 1, "same"), item("c", "d", 2, "same")]},
         "transfers[1].idempotency_key"),
    ],
    ids=["not-object", "unknown-field", "atomic-not-bool", "atomic-missing", "transfers-not-list",
         "transfers-empty", "too-many", "key-twice"],
)
def test_the_whole_request_is_refused_for_its_shape(http: httpx.Client, body: Any, field: str) -> None:
    body = problem(http.post("/v1/transfers/batch", json=body), 400, "invalid_request")
    assert field in [error["field"] for error in body["errors"]]


def test_malformed_body_wrong_content_type_bad_header_and_no_token(batch_server: ServerProcess, http: httpx.Client) -> None:
    problem(http.post("/v1/transfers/batch", content=b"{", headers={"Content-Type": "application/json"}),
            400, "invalid_request")
    problem(http.post("/v1/transfers/batch", content=b'{"atomic": false, "atomic": true, "transfers": []}',
                      headers={"Content-Type": "application/json"}), 400, "invalid_request")
    problem(http.post("/v1/transfers/batch", content=b"atomic", headers={"Content-Type": "text/plain"}),
            415, "unsupported_media_type")
    problem(batch(http, [item("a", "b", 1)], atomic=False, headers={"Idempotency-Key": "k" * 129}),
            400, "invalid_request")
    with httpx.Client(base_url=batch_server.url) as anonymous:
        problem(anonymous.post("/v1/transfers/batch", json={"atomic": False, "transfers": []}), 401, "unauthorized")


def test_a_body_over_16_mib_is_413(batch_server: ServerProcess, http: httpx.Client) -> None:
    limit = 16 * 1024 * 1024
    # Declared too large: refused from the header, before any of the body is read.
    with socket.create_connection(("127.0.0.1", batch_server.port)) as raw:
        raw.sendall(
            b"POST /v1/transfers/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ADMIN_TOKEN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(limit + 1).encode() + b"\r\n\r\n{"
        )
        raw.settimeout(30)
        received = b""
        while b"payload_too_large" not in received and (chunk := raw.recv(65536)):
            received += chunk
        answer = received.decode()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "payload_too_large" in answer and "connection: close" in answer.lower()
    # Streamed without a length: refused once the limit is passed.
    item_bytes = json.dumps(item("a", "b", 1, description="x" * 1000)).encode()

    def chunks(count: int) -> Iterator[bytes]:
        yield b'{"atomic": false, "transfers": ['
        for index in range(count):
            yield (b", " if index else b"") + item_bytes
        yield b"]}"

    over = limit // (len(item_bytes) + 2) + 200
    with batch_server.client() as once:  # the server closes a connection it answered early
        response = once.post("/v1/transfers/batch", content=chunks(over), headers={"Content-Type": "application/json"})
    problem(response, 413, "payload_too_large")
    # Just under the limit is read, then judged (here: too many items for one batch).
    under = (limit - 100) // (len(item_bytes) + 2)
    content = b"".join(chunks(under))
    assert limit - 100_000 < len(content) <= limit
    response = http.post("/v1/transfers/batch", content=content, headers={"Content-Type": "application/json"})
    body = problem(response, 400, "invalid_request")
    assert body["errors"][0]["field"] == "transfers"


# -- tools and restarts ---------------------------------------------------------------------


def wallet_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=120)


def test_batch_records_through_the_tools_a_snapshot_and_a_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", shards=SHARDS, extra_args=["--snapshot-every", "3"])
    server.start()
    try:
        with server.client() as http:
            http.post("/v1/assets", json={"code": "USD", "scale": 2})
            ids = wallets(http, 8)
            rng = random.Random(9)
            answers = []
            sent = []
            for atomic in (True, False, True, False):
                items = [item(*rng.sample(ids, 2), rng.randint(1, 99)) for _ in range(25)]
                sent.append((items, atomic))
                answers.append(batch(http, items, atomic=atomic).json())
            before = balances(http, ids)
            statement = http.get(f"/v1/wallets/{ids[0]}/transactions", params={"limit": 1000}).json()
            lsn = answers[0]["results"][0]["transaction"]["lsn"]
        assert server.terminate() == 0  # graceful: a final snapshot
        data = server.data_dir
        verify = wallet_cli("wal", "verify", "--data", str(data))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert wallet_cli("snapshot", "verify", "--data", str(data)).returncode == 0
        dump = wallet_cli("wal", "dump", "--data", str(data), "--format", "jsonl", "--from-lsn", str(lsn),
                          "--to-lsn", str(lsn))
        assert dump.returncode == 0, dump.stderr
        (line,) = dump.stdout.splitlines()
        record = json.loads(line)
        assert record["lsn"] == lsn and record["type"] == "TransfersPosted"
        assert [t["transaction_id"] for t in record["transfers"]] == [
            r["transaction"]["id"] for r in answers[0]["results"]]
        out = tmp_path / "at-batch"
        replay = wallet_cli("wal", "replay", "--data", str(data), "--until-lsn", str(lsn), "--out", str(out))
        assert replay.returncode == 0, replay.stdout + replay.stderr
        (data / "history.sqlite3").unlink()  # rebuilt from the log on start
        server.start()
        with server.client() as http:
            assert balances(http, ids) == before
            assert http.get(f"/v1/wallets/{ids[0]}/transactions", params={"limit": 1000}).json() == statement
            for answer in answers:
                for result in answer["results"]:
                    if result["status"] == 201:
                        transaction = result["transaction"]
                        assert http.get(f"/v1/transactions/{transaction['id']}").json() == transaction
            # Every key now answers from the snapshot's records (kept encoded since 2026-12-07):
            # the same batches again get the same answers and move nothing.
            for (items, atomic), answer in zip(sent, answers, strict=True):
                assert batch(http, items, atomic=atomic).json() == answer
            assert balances(http, ids) == before
    finally:
        server.kill()


# -- crash -----------------------------------------------------------------------------------


async def test_sigkill_while_atomic_batches_span_shards_leaves_each_whole_or_absent(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", shards=SHARDS)
    server.start()
    try:
        with server.client() as http:
            http.post("/v1/assets", json={"code": "USD", "scale": 2})
            ids = wallets(http, 24)
        rng = random.Random(5)
        batches = []
        for _ in range(400):
            items = [item(*rng.sample(ids, 2), rng.randint(1, 50)) for _ in range(rng.randint(2, 12))]
            if len({shard_of(w, SHARDS) for i in items for w in (i["from_wallet_id"], i["to_wallet_id"])}) > 1:
                batches.append(items)
        answered: dict[int, list[dict[str, Any]]] = {}
        sent: set[int] = set()
        pending = iter(range(len(batches)))

        async def client(http: httpx.AsyncClient) -> None:
            for number in pending:
                sent.add(number)
                while True:
                    try:
                        response = await http.post("/v1/transfers/batch",
                                                   json={"atomic": True, "transfers": batches[number]})
                    except httpx.TransportError:
                        return  # the server died under this request
                    # 16 uploads from one caller may exceed its share of the batch slots on a
                    # slow machine: refused before anything was done, so it is sent again.
                    if response.status_code != 503 or response.json()["code"] != "overloaded":
                        break
                    await trio.sleep(0.01)
                assert response.status_code == 200, response.text
                answered[number] = [r["transaction"] for r in response.json()["results"]]

        async with server.async_client() as http:
            async with trio.open_nursery() as nursery:
                for _ in range(16):
                    nursery.start_soon(client, http)
                while len(answered) < 60:
                    await trio.sleep(0.01)
                server.kill()
        in_flight = sent - set(answered)
        assert in_flight  # batches were on their way when the process died
        server.start()
        with server.client() as http:
            restart_lsn = http.get("/ready").json()["durable_lsn"]
            committed_unanswered = 0
            for number, items in enumerate(batches):
                response = batch(http, items, atomic=True)
                assert statuses(response) == [201] * len(items)
                transactions = [r["transaction"] for r in response.json()["results"]]
                lsns = {t["lsn"] for t in transactions}
                assert len(lsns) == 1, (number, lsns)  # one record: all or nothing
                lsn = lsns.pop()
                if number in answered:
                    assert transactions == answered[number]  # acknowledged: the same answer
                    assert lsn <= restart_lsn
                elif lsn <= restart_lsn:
                    committed_unanswered += 1  # made durable, the answer lost with the process
                else:
                    assert number not in sent or number in in_flight
            final = balances(http, ids)
            treasury = http.get("/v1/wallets/treasury:USD").json()["balance"]
        expected = {wallet_id: DEPOSIT for wallet_id in ids}
        for items in batches:  # every batch now posted exactly once
            for sent in items:
                expected[sent["from_wallet_id"]] -= sent["amount"]
                expected[sent["to_wallet_id"]] += sent["amount"]
        assert final == expected
        assert sum(final.values()) + treasury == 0
        print(f"batches: {len(batches)}, answered before the kill: {len(answered)}, in flight: {len(in_flight)},"
              f" of which durable: {committed_unanswered}")
    finally:
        server.kill()
