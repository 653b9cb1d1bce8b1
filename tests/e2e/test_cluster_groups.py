"""``wallet cluster up --groups 2`` end to end (ADR 0013, several groups): transfers inside a
group and between the two, under load from clients that retry each key until it is answered,
while one group's owner is SIGKILLed. Checked against the clients' own record: every
acknowledged transfer is there once (its key answers the same transaction), every balance is
what the record says, the treasury (its parts and transit accounts in both groups) balances the
wallets to zero, and the other group served while the killed one had no owner. Then atomic
batches, refunds and holds between the groups over HTTP."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest

from server._groups import group_of
from tests.e2e._cluster import Clients, ClusterProcess, subscribe
from tests.e2e._server import ADMIN_TOKEN
from wallet_client import WalletClient

GROUPS = 2
TAKEOVER_LIMIT_S = 15.0
START = 1_000_000


def _healthy(view: dict[str, Any]) -> bool:
    return len(view["groups"]) == GROUPS and all(
        group["owner"] is not None and len(group["standbys"]) == 1 for group in view["groups"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    process = ClusterProcess(tmp_path_factory.mktemp("groups") / "data",
                             extra_args=["--groups", str(GROUPS), "--snapshot-every", "200",
                                         "--allow-private-webhooks", "--webhook-backoff-base", "0.05",
                                         "--webhook-backoff-max", "0.3"])
    process.start()
    try:
        process.wait_for(_healthy, timeout_s=60)
        with WalletClient(process.url, token=ADMIN_TOKEN) as client:
            client.create_asset("USD", 2)
        yield process
    finally:
        if process.process is not None and process.process.poll() is None:
            assert process.terminate() == 0, process.log_tail()


def _wallets(cluster: ClusterProcess, per_group: int) -> dict[int, list[str]]:
    """``per_group`` new wallets in each group, each with START deposited."""
    found: dict[int, list[str]] = {group: [] for group in range(GROUPS)}
    with WalletClient(cluster.url, token=ADMIN_TOKEN) as client:
        while any(len(ids) < per_group for ids in found.values()):
            wallet_id = f"w-{uuid.uuid4().hex[:10]}"
            ids = found[group_of(wallet_id, GROUPS)]
            if len(ids) < per_group:
                client.create_wallet("o", "USD", id=wallet_id)
                client.deposit(wallet_id, START)
                ids.append(wallet_id)
    return found


def _until_served(request: Any, timeout_s: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        response: httpx.Response = request()
        if response.status_code != 503 or time.monotonic() >= deadline:
            return response
        time.sleep(0.2)


def _check(cluster: ClusterProcess, wallets: list[str], clients: Clients) -> None:
    expected = {wallet_id: START for wallet_id in wallets}
    with cluster.client() as client:
        for sender, receiver, amount, _, _ in clients.acknowledged.values():
            expected[sender] -= amount
            expected[receiver] += amount
        sample = list(clients.acknowledged.items())[:: max(1, len(clients.acknowledged) // 40)]
        for key, (sender, receiver, amount, transaction_id, _) in sample:
            again = _until_served(partial(
                client.post, "/v1/transfers", json={"from_wallet_id": sender, "to_wallet_id": receiver,
                                                    "amount": amount}, headers={"Idempotency-Key": key}))
            assert again.status_code in (200, 201) and again.json()["id"] == transaction_id, again.text
            found = _until_served(partial(client.get, f"/v1/transactions/{transaction_id}"))
            assert found.status_code == 200, found.text
            assert (found.json()["from_wallet_id"], found.json()["to_wallet_id"], found.json()["amount"]) == (
                sender, receiver, amount)
        # Credits the workers could not finish (a receiver without owner) are finished by the
        # owners within seconds: wait for the balances, then every one must be exact.
        deadline = time.monotonic() + 20
        while True:
            balances = {}
            for wallet_id in expected:
                response = _until_served(partial(client.get, f"/v1/wallets/{wallet_id}"))
                assert response.status_code == 200, response.text
                balances[wallet_id] = response.json()["balance"]
            if balances == expected or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert balances == expected
        treasury = _until_served(partial(client.get, "/v1/wallets/treasury:USD"))
        assert treasury.status_code == 200, treasury.text
        assert treasury.json()["balance"] == -START * len(wallets) == -sum(balances.values())


def test_transfers_between_groups_survive_an_owner_kill_and_the_other_group_keeps_serving(
        cluster: ClusterProcess) -> None:
    by_group = _wallets(cluster, per_group=3)
    wallets = [wallet_id for ids in by_group.values() for wallet_id in ids]
    across = [(a, b) for a in by_group[0] for b in by_group[1]] + [(b, a) for a in by_group[0] for b in by_group[1]]
    inside = [(a, b) for a in by_group[0] for b in by_group[0] if a != b]
    with Clients(cluster, across, threads=3) as between, Clients(cluster, inside, threads=2) as within:
        between.wait(60)
        within.wait(40)
        view = cluster.view()
        victim = view["groups"][1]["owner"]["pid"]
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        view = cluster.wait_for(lambda view: view["groups"][1]["owner"] is not None
                                and view["groups"][1]["owner"]["pid"] != victim, timeout_s=TAKEOVER_LIMIT_S + 15)
        took_over = time.monotonic()
        assert took_over - killed < TAKEOVER_LIMIT_S
        # Group 0 answered inside its own group while group 1 had no owner.
        with within.lock:
            during = [at for *_, at in within.acknowledged.values() if killed < at < took_over]
        assert during, "group 0 answered nothing while group 1 had no owner"
        count = between.count()
        between.wait(count + 40, timeout_s=60)  # transfers between the groups go on
    assert between.count() > 100
    _check_all(cluster, wallets, [between, within])


def _check_all(cluster: ClusterProcess, wallets: list[str], all_clients: list[Clients]) -> None:
    merged = Clients(cluster, [])
    for clients in all_clients:
        merged.acknowledged.update(clients.acknowledged)
    _check(cluster, wallets, merged)


def test_a_transfer_between_groups_reads_back_at_once_with_its_statement_entries(cluster: ClusterProcess) -> None:
    by_group = _wallets(cluster, per_group=1)
    sender, receiver = by_group[0][0], by_group[1][0]
    with cluster.client() as client:
        sent = client.post("/v1/transfers", json={"from_wallet_id": sender, "to_wallet_id": receiver, "amount": 250,
                                                  "description": "rent"}, headers={"Idempotency-Key": "rent-1"})
        assert sent.status_code == 201, sent.text
        assert client.get(f"/v1/wallets/{receiver}").json()["balance"] == START + 250
        assert client.get(f"/v1/wallets/{sender}").json()["balance"] == START - 250
        credit = client.get(f"/v1/wallets/{receiver}/transactions").json()["items"][0]
        assert (credit["transaction_id"], credit["direction"], credit["amount"], credit["counterparty_wallet_id"],
                credit["description"], credit["balance_after"]) == (sent.json()["id"], "credit", 250, sender, "rent",
                                                                    START + 250)
        debit = client.get(f"/v1/wallets/{sender}/transactions").json()["items"][0]
        assert (debit["transaction_id"], debit["direction"], debit["counterparty_wallet_id"]) == (
            sent.json()["id"], "debit", receiver)
        # The events feed holds both groups' records, once each, in positions that grow: the
        # transfer once (its sender group's record), and both wallets' creation.
        # The aggregate copies each group's stream on its own, so a record of one group may come
        # after a later one of the other: read until the transfer and both creations are there.
        seen: list[dict[str, Any]] = []
        after = 0
        # Pages from the start, behind the first test's load (thousands of records): on a loaded
        # host that took more than 10 s once. A bound on a hang, not a figure.
        deadline = time.monotonic() + 60

        def created_ids() -> set[str]:
            return {event["data"]["wallet_id"] for event in seen if event["type"] == "wallet.created"}

        while not (any(event["data"].get("id") == sent.json()["id"] for event in seen)
                   and {sender, receiver} <= created_ids()):
            assert time.monotonic() < deadline, "the transfer or a creation never reached the feed"
            page = client.get("/v1/events", params={"after": after, "limit": 1000, "wait": 1})
            assert page.status_code == 200, page.text
            seen += page.json()["items"]
            after = page.json()["next_after"]
        positions = [event["lsn"] for event in seen]
        assert positions == sorted(positions)
        assert sum(event["data"].get("id") == sent.json()["id"] for event in seen) == 1
        # Search across both groups, page by page: the transfer once, and both deposits.
        found: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/transactions", params={**params, "min_amount": 250})
            assert page.status_code == 200, page.text
            found += [item["id"] for item in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert found.count(sent.json()["id"]) == 1
        # Refused by the sender's group: recorded under its key, and nothing reached the receiver.
        for _ in range(2):
            poor = client.post("/v1/transfers", json={"from_wallet_id": sender, "to_wallet_id": receiver,
                                                      "amount": 10 * START}, headers={"Idempotency-Key": "too-much"})
            assert poor.status_code == 422 and poor.json()["code"] == "insufficient_funds", poor.text
        assert client.get(f"/v1/wallets/{receiver}").json()["balance"] == START + 250
        # Refused by the receiver's group: a closed wallet receives nothing.
        empty = next(wallet_id for wallet_id in (f"e-{uuid.uuid4().hex[:10]}" for _ in range(100))
                     if group_of(wallet_id, GROUPS) == 1)
        assert client.post("/v1/wallets", json={"id": empty, "owner_id": "o", "asset": "USD"}).status_code == 201
        assert client.post(f"/v1/wallets/{empty}/close").status_code == 200
        refused = client.post("/v1/transfers", json={"from_wallet_id": sender, "to_wallet_id": empty, "amount": 5},
                              headers={"Idempotency-Key": "to-closed"})
        assert refused.status_code == 409 and refused.json()["code"] == "wallet_closed", refused.text
        assert client.get(f"/v1/wallets/{sender}").json()["balance"] == START - 250


def test_an_atomic_batch_between_groups_posts_whole_or_nothing_over_http(cluster: ClusterProcess) -> None:
    by_group = _wallets(cluster, per_group=2)
    (a1, a2), (b1, b2) = by_group[0], by_group[1]

    def balances(client: httpx.Client) -> list[int]:
        return [client.get(f"/v1/wallets/{wallet_id}").json()["balance"] for wallet_id in (a1, a2, b1, b2)]

    def item(key: str, source: str, target: str, amount: int) -> dict[str, Any]:
        return {"idempotency_key": key, "from_wallet_id": source, "to_wallet_id": target, "amount": amount}

    with cluster.client() as client:
        # a2 pays b1 out of what a1 sends it in the same batch; a1 pays b2.
        body = {"atomic": True, "transfers": [item("ab-1", a1, a2, START), item("ab-2", a2, b1, 2 * START - 5),
                                               item("ab-3", a1, b2, 7)]}
        posted = client.post("/v1/transfers/batch", json=body)
        assert posted.status_code == 422, posted.text  # a1 has nothing left for the third item
        assert posted.json()["code"] == "batch_failed" and posted.json()["index"] == 2
        assert posted.json()["error"]["code"] == "insufficient_funds"
        assert balances(client) == [START] * 4
        body["transfers"][0]["amount"] = START - 7
        body["transfers"][1]["amount"] = 2 * START - 7
        for number, transfer in enumerate(body["transfers"]):  # ab-3's key answers its refusal now
            transfer["idempotency_key"] = f"ab-again-{number}"
        posted = client.post("/v1/transfers/batch", json=body)
        assert posted.status_code == 200, posted.text
        assert [result["status"] for result in posted.json()["results"]] == [201, 201, 201]
        # Read back at once: every wallet of both groups, and the receivers' statements.
        assert balances(client) == [0, 0, 3 * START - 7, START + 7]
        assert client.get(f"/v1/wallets/{b1}/transactions").json()["items"][0]["amount"] == 2 * START - 7
        # The same batch again: the same transactions, nothing moves.
        again = client.post("/v1/transfers/batch", json=body)
        assert [result["transaction"]["id"] for result in again.json()["results"]] == [
            result["transaction"]["id"] for result in posted.json()["results"]]
        assert balances(client) == [0, 0, 3 * START - 7, START + 7]
        # Senders in both groups: prepared by each, decided by the first item's, posted by each.
        # a1 cannot spend in the batch what b1's item (another group's) credits it: nothing moves.
        spans = client.post("/v1/transfers/batch", json={"atomic": True, "transfers": [
            item("sp-1", b1, a1, 10), item("sp-2", a1, b2, 5)]})
        assert spans.status_code == 422 and spans.json()["index"] == 1, spans.text
        assert spans.json()["error"]["code"] == "insufficient_funds"
        assert balances(client) == [0, 0, 3 * START - 7, START + 7]
        funded = client.post("/v1/transfers", json={"from_wallet_id": b1, "to_wallet_id": a1, "amount": 100},
                             headers={"Idempotency-Key": "sp-0"})
        assert funded.status_code == 201, funded.text
        spans = client.post("/v1/transfers/batch", json={"atomic": True, "transfers": [
            item("sp-3", a1, b2, 30), item("sp-4", b1, a2, 20)]})
        assert spans.status_code == 200, spans.text
        assert [result["status"] for result in spans.json()["results"]] == [201, 201]
        assert balances(client) == [70, 20, 3 * START - 7 - 120, START + 7 + 30]
        again = client.post("/v1/transfers/batch", json={"atomic": True, "transfers": [
            item("sp-3", a1, b2, 30), item("sp-4", b1, a2, 20)]})
        assert [result["transaction"]["id"] for result in again.json()["results"]] == [
            result["transaction"]["id"] for result in spans.json()["results"]]
        assert balances(client) == [70, 20, 3 * START - 7 - 120, START + 7 + 30]


def test_a_refund_between_groups_goes_back_and_both_statements_show_it(cluster: ClusterProcess) -> None:
    by_group = _wallets(cluster, per_group=1)
    sender, receiver = by_group[0][0], by_group[1][0]
    with cluster.client() as client:
        sent = client.post("/v1/transfers", json={"from_wallet_id": sender, "to_wallet_id": receiver, "amount": 400},
                           headers={"Idempotency-Key": "to-refund"})
        assert sent.status_code == 201, sent.text
        original = sent.json()["id"]
        part = client.post(f"/v1/transactions/{original}/refund", json={"amount": 150},
                           headers={"Idempotency-Key": "refund-1"})
        assert part.status_code == 201, part.text
        assert (part.json()["type"], part.json()["refund_of"], part.json()["from_wallet_id"],
                part.json()["to_wallet_id"], part.json()["amount"]) == ("refund", original, receiver, sender, 150)
        again = client.post(f"/v1/transactions/{original}/refund", json={"amount": 150},
                            headers={"Idempotency-Key": "refund-1"})
        assert again.status_code == 201 and again.json()["id"] == part.json()["id"]
        rest = client.post(f"/v1/transactions/{original}/refund", json={}, headers={"Idempotency-Key": "refund-2"})
        assert rest.status_code == 201 and rest.json()["amount"] == 250, rest.text
        over = client.post(f"/v1/transactions/{original}/refund", json={}, headers={"Idempotency-Key": "refund-3"})
        assert over.status_code == 422 and over.json()["code"] == "refund_exceeds_remaining", over.text
        # Read back at once: balances, the original's refunded amount, both statements.
        assert client.get(f"/v1/wallets/{sender}").json()["balance"] == START
        assert client.get(f"/v1/wallets/{receiver}").json()["balance"] == START
        assert client.get(f"/v1/transactions/{original}").json()["refunded_amount"] == 400
        credits = client.get(f"/v1/wallets/{sender}/transactions", params={"type": "refund"}).json()["items"]
        assert [(item["direction"], item["amount"]) for item in credits] == [("credit", 250), ("credit", 150)]
        debits = client.get(f"/v1/wallets/{receiver}/transactions", params={"type": "refund"}).json()["items"]
        assert [(item["direction"], item["amount"]) for item in debits] == [("debit", 250), ("debit", 150)]


def test_holds_between_groups_capture_void_and_expire_over_http(cluster: ClusterProcess) -> None:
    by_group = _wallets(cluster, per_group=1)
    sender, receiver = by_group[0][0], by_group[1][0]

    def held(client: httpx.Client, amount: int, key: str, timeout_s: int = 60) -> str:
        response = client.post("/v1/transfers", json={"from_wallet_id": sender, "to_wallet_id": receiver,
                                                      "amount": amount, "hold": {"timeout_s": timeout_s}},
                               headers={"Idempotency-Key": key})
        assert response.status_code == 201 and response.json()["status"] == "pending", response.text
        return str(response.json()["id"])

    with cluster.client() as client:
        first = held(client, 300, "hold-1")
        assert client.get(f"/v1/wallets/{sender}").json()["balance"] == START
        captured = client.post(f"/v1/transfers/{first}/capture", json={"amount": 120},
                               headers={"Idempotency-Key": "capture-1"})
        assert captured.status_code == 200 and captured.json()["status"] == "posted", captured.text
        assert captured.json()["amount"] == 120
        again = client.post(f"/v1/transfers/{first}/capture", json={"amount": 120},
                            headers={"Idempotency-Key": "capture-1"})
        assert again.status_code == 200 and again.json() == captured.json()
        twice = client.post(f"/v1/transfers/{first}/capture", json={}, headers={"Idempotency-Key": "capture-2"})
        assert twice.status_code == 409 and twice.json()["code"] == "transfer_not_pending", twice.text
        assert client.get(f"/v1/wallets/{sender}").json()["balance"] == START - 120
        assert client.get(f"/v1/wallets/{receiver}").json()["balance"] == START + 120
        entry = client.get(f"/v1/wallets/{receiver}/transactions").json()["items"][0]
        assert (entry["transaction_id"], entry["direction"], entry["amount"]) == (first, "credit", 120)
        assert client.get(f"/v1/transactions/{first}").json()["status"] == "posted"
        second = held(client, 50, "hold-2")
        voided = client.post(f"/v1/transfers/{second}/void", headers={"Idempotency-Key": "void-2"})
        assert voided.status_code == 200 and voided.json()["status"] == "voided", voided.text
        third = held(client, 70, "hold-3", timeout_s=1)
        deadline = time.monotonic() + 15
        while client.get(f"/v1/transactions/{third}").json()["status"] != "voided":
            assert time.monotonic() < deadline, "the hold between groups never expired"
            time.sleep(0.2)
        assert client.get(f"/v1/wallets/{sender}").json()["balance"] == START - 120
        assert client.get(f"/v1/wallets/{receiver}").json()["balance"] == START + 120


def test_webhooks_deliver_the_events_of_every_group_once_in_feed_order(cluster: ClusterProcess, tmp_path: Any) -> None:
    """Group 0's owner alone delivers webhooks, from the aggregate of every group's events:
    each event once, verified, in the feed's order, whichever group wrote it."""
    from tests.e2e._server import free_port
    from tests.e2e.test_webhooks import WebhookSim

    receiver = WebhookSim(tmp_path / "webhook-sim.log", free_port())
    try:
        with cluster.client() as client:
            start = subscribe(client, receiver)
            by_group = _wallets(cluster, per_group=2)
            for index, (sender, target) in enumerate([(by_group[0][0], by_group[1][0]), (by_group[1][0], by_group[1][1]),
                                                       (by_group[0][1], by_group[0][0]), (by_group[1][1], by_group[0][1])]):
                response = _until_served(partial(client.post, "/v1/transfers", json={
                    "from_wallet_id": sender, "to_wallet_id": target, "amount": 3},
                    headers={"Idempotency-Key": f"hook-{index}-{uuid.uuid4()}"}))
                assert response.status_code == 201, response.text
            deadline = time.monotonic() + 20
            while True:
                expected = client.get("/v1/events", params={"after": start, "limit": 1000}).json()["items"]
                if len([item for item in expected if item["type"] == "transfer.posted"]) >= 4:
                    break
                assert time.monotonic() < deadline, expected
                time.sleep(0.2)
        # Each group's records come in its own order; one acknowledged just before the endpoint's
        # creation may still be copied into the aggregate after it, and is delivered too.
        assert {item["data"]["wallet_id"] for item in expected if item["type"] == "wallet.created"} >= {
            wallet_id for ids in by_group.values() for wallet_id in ids}
        accepted, bodies = receiver.delivered(len(expected))
        assert all(entry["verified"] for entry in accepted)
        assert bodies[:len(expected)] == expected
    finally:
        receiver.stop()
