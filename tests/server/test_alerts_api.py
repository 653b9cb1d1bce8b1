"""Balance alerts over HTTP, in process (the app over a real ``Ledger`` through a ``LocalPort``,
and the port's calls through a ``RemotePort`` as ``--workers N`` makes them): the routes and
their answers, every validation error (and that it changes nothing), ownership, the per-wallet
cap, ``alert.triggered`` in ``/v1/events``, and the issue's case: 20 concurrent transfers that
cross a threshold fire it exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio

from ledger import (
    ALERTS_PER_WALLET_MAX,
    AlertCreated,
    AlertDirection,
    AlertField,
    CreateAlert,
    DeleteAlert,
    Ledger,
    recover,
)
from server._port import LocalPort, RemotePort, serve_port
from server.testing import in_process_api

ADMIN = {"Authorization": "Bearer admin"}


service = in_process_api


async def wallet(http: httpx.AsyncClient, wallet_id: str, owner: str = "alice", deposit: int = 0) -> str:
    response = await http.post("/v1/wallets", json={"id": wallet_id, "owner_id": owner, "asset": "USD"})
    assert response.status_code == 201, response.text
    if deposit:
        response = await http.post("/v1/deposits", json={"wallet_id": wallet_id, "amount": deposit},
                                   headers={"Idempotency-Key": f"dep-{wallet_id}"})
        assert response.status_code == 201, response.text
    return wallet_id


async def user(http: httpx.AsyncClient, owner: str) -> dict[str, str]:
    response = await http.post("/v1/tokens", json={"owner_id": owner})
    assert response.status_code == 201
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def events(http: httpx.AsyncClient, kind: str) -> list[dict[str, Any]]:
    response = await http.get("/v1/events", params={"limit": 1000})
    assert response.status_code == 200
    return [item for item in response.json()["items"] if item["type"] == kind]


async def test_create_list_fire_and_delete(tmp_path: Path) -> None:
    async with service(tmp_path) as http:
        await wallet(http, "w1", deposit=100)
        created = await http.post("/v1/wallets/w1/alerts", json={"field": "available", "below": 50})
        assert created.status_code == 201, created.text
        body = created.json()
        alert_id = body["id"]
        assert alert_id.startswith("al_")
        assert body == {"id": alert_id, "wallet_id": "w1", "field": "available", "below": 50, "state": "armed",
                        "created_at": body["created_at"]}
        already = await http.post("/v1/wallets/w1/alerts", json={"field": "balance", "above": -5})
        assert already.status_code == 201 and already.json()["state"] == "triggered"
        assert already.json()["above"] == -5 and "below" not in already.json()
        moved = await http.post("/v1/transfers", json={"from_wallet_id": "w1", "to_wallet_id": await wallet(
            http, "w2"), "amount": 60, "hold": {"timeout_s": 60}}, headers={"Idempotency-Key": "h1"})
        assert moved.status_code == 201
        listed = (await http.get("/v1/wallets/w1/alerts")).json()["items"]
        assert [(item["id"], item["state"]) for item in listed] == [
            (alert_id, "triggered"), (already.json()["id"], "triggered"),
        ]
        (fired,) = await events(http, "alert.triggered")
        assert fired["data"] == {"alert_id": alert_id, "wallet_id": "w1", "field": "available",
                                 "direction": "below", "threshold": 50, "value": 40,
                                 "transaction_id": moved.json()["id"]}
        assert fired["lsn"] > moved.json()["lsn"]
        deleted = await http.delete(f"/v1/alerts/{alert_id}")
        assert deleted.status_code == 200
        assert deleted.json() == {"id": alert_id, "wallet_id": "w1", "deleted": True}
        assert [item["id"] for item in (await http.get("/v1/wallets/w1/alerts")).json()["items"]] == [
            already.json()["id"]
        ]
        again = await http.delete(f"/v1/alerts/{alert_id}")
        assert again.status_code == 404 and again.json()["code"] == "alert_not_found"
        assert [item["data"]["id"] for item in await events(http, "alert.deleted")] == [alert_id]
        assert len(await events(http, "alert.created")) == 2


BAD_BODIES: list[tuple[Any, str]] = [
    ({}, "field"),
    ({"below": 5}, "field"),
    ({"field": "held", "below": 5}, "field"),
    ({"field": 1, "below": 5}, "field"),
    ({"field": "balance"}, "below"),
    ({"field": "balance", "below": 5, "above": 6}, "below"),
    ({"field": "balance", "below": 10.5}, "below"),
    ({"field": "balance", "below": 10.0}, "below"),
    ({"field": "balance", "below": "10"}, "below"),
    ({"field": "balance", "above": True}, "above"),
    ({"field": "balance", "above": None}, "above"),
    ({"field": "balance", "above": 2**63}, "above"),
    ({"field": "balance", "below": -(2**63) - 1}, "below"),
    ({"field": "balance", "below": 10**30}, "below"),
    ({"field": "balance", "below": 5, "wallet_id": "w1"}, "wallet_id"),
    ([{"field": "balance", "below": 5}], "body"),
]


async def test_every_bad_body_is_a_400_and_creates_nothing(tmp_path: Path) -> None:
    async with service(tmp_path) as http:
        await wallet(http, "w1")
        for body, field in BAD_BODIES:
            response = await http.post("/v1/wallets/w1/alerts", json=body)
            assert response.status_code == 400, (body, response.text)
            problem = response.json()
            assert response.headers["content-type"].startswith("application/problem+json")
            assert problem["code"] == "invalid_request" and field in {e["field"] for e in problem["errors"]}, body
        for content, headers in ((b"{", {"Content-Type": "application/json"}),
                                 (b'{"field": "balance", "below": 1}', {"Content-Type": "text/plain"})):
            response = await http.post("/v1/wallets/w1/alerts", content=content, headers=headers)
            assert response.status_code in (400, 415), response.text
        response = await http.post("/v1/wallets/w1/alerts?x=1", json={"field": "balance", "below": 1})
        assert response.status_code == 400 and response.json()["errors"][0]["field"] == "x"
        extreme = [await http.post("/v1/wallets/w1/alerts", json={"field": "balance", name: value})
                   for name, value in (("below", -(2**63)), ("above", 2**63 - 1))]
        assert [response.status_code for response in extreme] == [201, 201]
        assert len((await http.get("/v1/wallets/w1/alerts")).json()["items"]) == 2


async def test_wallets_alerts_and_owners(tmp_path: Path) -> None:
    async with service(tmp_path) as http:
        await wallet(http, "w-alice", owner="alice")
        await wallet(http, "w-bob", owner="bob")
        alice = await user(http, "alice")
        mine = await http.post("/v1/wallets/w-alice/alerts", json={"field": "balance", "above": 1}, headers=alice)
        assert mine.status_code == 201
        theirs = await http.post("/v1/wallets/w-bob/alerts", json={"field": "balance", "above": 1})
        assert theirs.status_code == 201  # the admin may
        for method, path in (("POST", "/v1/wallets/w-bob/alerts"), ("GET", "/v1/wallets/w-bob/alerts"),
                             ("DELETE", f"/v1/alerts/{theirs.json()['id']}"),
                             ("POST", "/v1/wallets/treasury:USD/alerts"), ("GET", "/v1/wallets/treasury:USD/alerts")):
            response = await http.request(method, path, headers=alice,
                                          json={"field": "balance", "above": 1} if method == "POST" else None)
            assert response.status_code == 403 and response.json()["code"] == "forbidden", (method, path)
        for method, path, code in (("POST", "/v1/wallets/nope/alerts", "wallet_not_found"),
                                   ("GET", "/v1/wallets/nope/alerts", "wallet_not_found"),
                                   ("GET", "/v1/wallets/bad%20id/alerts", "wallet_not_found"),
                                   ("DELETE", "/v1/alerts/al_nope", "alert_not_found"),
                                   ("DELETE", "/v1/alerts/bad%20id", "alert_not_found")):
            response = await http.request(method, path, json={"field": "balance", "above": 1} if method == "POST"
                                           else None)
            assert response.status_code == 404 and response.json()["code"] == code, (method, path)
        no_token = await http.get("/v1/wallets/w-alice/alerts", headers={"Authorization": "Bearer nope"})
        assert no_token.status_code == 401
        assert len((await http.get("/v1/wallets/w-bob/alerts")).json()["items"]) == 1
        treasury = await http.post("/v1/wallets/treasury:USD/alerts", json={"field": "balance", "below": -10})
        assert treasury.status_code == 201  # the admin watches the treasury too
        assert (await http.delete(f"/v1/alerts/{mine.json()['id']}", headers=alice)).status_code == 200


async def test_a_wallet_has_at_most_the_documented_number_of_alerts(tmp_path: Path) -> None:
    async with service(tmp_path) as http:
        await wallet(http, "w1")
        for threshold in range(ALERTS_PER_WALLET_MAX):
            assert (await http.post("/v1/wallets/w1/alerts", json={"field": "balance", "below": threshold})
                    ).status_code == 201
        refused = await http.post("/v1/wallets/w1/alerts", json={"field": "balance", "below": 0})
        assert refused.status_code == 409 and refused.json()["code"] == "alert_limit_reached"
        assert str(ALERTS_PER_WALLET_MAX) in refused.json()["detail"]
        assert len((await http.get("/v1/wallets/w1/alerts")).json()["items"]) == ALERTS_PER_WALLET_MAX


@pytest.mark.parametrize("shards", [1, 4])
async def test_twenty_concurrent_transfers_crossing_a_threshold_fire_exactly_once(tmp_path: Path, shards: int) -> None:
    async with service(tmp_path, shards=shards) as http:
        await wallet(http, "payer", deposit=2000)
        await wallet(http, "hub")
        receivers = [await wallet(http, f"r{number}") for number in range(20)]
        payers = [await wallet(http, f"p{number}", deposit=100) for number in range(20)]
        low = (await http.post("/v1/wallets/payer/alerts", json={"field": "balance", "below": 1000})).json()["id"]
        high = (await http.post("/v1/wallets/hub/alerts", json={"field": "available", "above": 950})).json()["id"]
        answers: list[dict[str, Any]] = []

        async def send(source: str, target: str, key: str) -> None:
            response = await http.post("/v1/transfers", json={"from_wallet_id": source, "to_wallet_id": target,
                                                              "amount": 100}, headers={"Idempotency-Key": key})
            assert response.status_code == 201, response.text
            answers.append(response.json())

        async with anyio.create_task_group() as group:
            for number in range(20):
                group.start_soon(send, "payer", receivers[number], f"out{number}")  # 2000 -> 0
                group.start_soon(send, payers[number], "hub", f"in{number}")  # 0 -> 2000
        # A firing caused by a credit from another shard is recorded one mailbox hop after the
        # transfer's record (README, *Balance alerts*): it may follow the last 201 by a moment.
        fired = await events(http, "alert.triggered")
        with anyio.fail_after(5):
            while len(fired) < 2:
                await anyio.sleep(0.01)
                fired = await events(http, "alert.triggered")
        assert sorted(item["data"]["alert_id"] for item in fired) == sorted([low, high])
        by_alert = {item["data"]["alert_id"]: item["data"] for item in fired}
        ids = {answer["id"]: answer for answer in answers}
        assert by_alert[low]["value"] == 900 and ids[by_alert[low]["transaction_id"]]["from_wallet_id"] == "payer"
        assert by_alert[high]["value"] == 1000 and ids[by_alert[high]["transaction_id"]]["to_wallet_id"] == "hub"
        states = {item["id"]: item["state"] for path in ("payer", "hub")
                  for item in (await http.get(f"/v1/wallets/{path}/alerts")).json()["items"]}
        assert states == {low: "triggered", high: "triggered"}


async def test_the_remote_port_carries_the_alert_calls(tmp_path: Path) -> None:
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        local = LocalPort(ledger)
        path = str(tmp_path / "ledger.sock")
        listener = await anyio.create_unix_listener(path)
        remote = RemotePort(path)
        transport = trio.CancelScope()

        async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with transport:
                async with trio.open_nursery() as inner:
                    inner.start_soon(serve_port, lambda: local, listener)
                    await inner.start(remote.run)
                    task_status.started()

        await nursery.start(serve)
        await remote.connected.wait()
        from ledger.testing import setup

        await setup(ledger, ["a"], 10)
        created = await remote.create_alert(CreateAlert(alert_id="al1", wallet_id="a", field=AlertField.BALANCE,
                                                        direction=AlertDirection.BELOW, threshold=5, owner_id=None))
        assert isinstance(created, list) and isinstance(created[0], AlertCreated) and not created[0].triggered
        (view,) = await remote.alerts("a") or []
        assert view == await remote.alert("al1") == (await local.alerts("a") or [None])[0]
        assert view.owner_id == "o" and view.field == AlertField.BALANCE
        assert await remote.alerts("nope") is None and await remote.alert("al2") is None
        refused = await remote.delete_alert(DeleteAlert(alert_id="al1", owner_id="mallory"))
        assert not isinstance(refused, list)
        assert isinstance(await remote.delete_alert(DeleteAlert(alert_id="al1", owner_id="o")), list)
        assert await remote.alerts("a") == []
        transport.cancel()
        await ledger.stop()


async def test_the_answers_match_the_openapi_document(tmp_path: Path) -> None:
    from jsonschema import Draft202012Validator

    from server._openapi import build
    from tests.e2e.test_openapi_responses import validate

    document = build()
    Draft202012Validator.check_schema({"components": document["components"]})
    tags = {tag["name"] for tag in document["tags"]}
    operations = [document["paths"]["/v1/wallets/{wallet_id}/alerts"]["post"],
                  document["paths"]["/v1/wallets/{wallet_id}/alerts"]["get"],
                  document["paths"]["/v1/alerts/{alert_id}"]["delete"]]
    assert "alerts" in tags and all(operation["tags"] == ["alerts"] for operation in operations)
    async with service(tmp_path) as http:
        await wallet(http, "w1", deposit=100)
        responses = [
            await http.post("/v1/wallets/w1/alerts", json={"field": "balance", "below": 50}),
            await http.post("/v1/wallets/w1/alerts", json={"field": "balance"}),
            await http.post("/v1/wallets/nope/alerts", json={"field": "balance", "above": 1}),
            await http.get("/v1/wallets/w1/alerts"),
        ]
        await http.post("/v1/transfers", json={"from_wallet_id": "w1", "to_wallet_id": await wallet(http, "w2"),
                                               "amount": 60}, headers={"Idempotency-Key": "t"})
        responses += [await http.delete(f"/v1/alerts/{responses[0].json()['id']}"),
                      await http.delete("/v1/alerts/al_nope"), await http.get("/v1/events")]
        for threshold in range(ALERTS_PER_WALLET_MAX):
            await http.post("/v1/wallets/w2/alerts", json={"field": "available", "above": threshold})
        responses.append(await http.post("/v1/wallets/w2/alerts", json={"field": "available", "above": 0}))
        assert [response.status_code for response in responses] == [201, 400, 404, 200, 200, 404, 200, 409]
        for response in responses:
            validate(document, response)
        fired = [item for item in responses[6].json()["items"] if item["type"] == "alert.triggered"]
        assert len(fired) == 1
        Draft202012Validator({**document["components"]["schemas"]["AlertTriggered"],
                              "components": document["components"]}).validate(fired[0]["data"])
