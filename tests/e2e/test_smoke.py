"""The API's happy path on each event loop (``--loop``): every shell a request touches (the actors,
the WAL writer, the history projector and its queries, the event feed, the readiness probe)."""

from tests.e2e._server import ServerProcess, on_each_loop


@on_each_loop
def test_server_serves_a_deposit_and_a_transfer(server: ServerProcess) -> None:
    with server.client() as http:
        assert http.get("/ready").status_code == 200
        assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
        for name in ("a", "b"):
            assert http.post("/v1/wallets", json={"id": name, "owner_id": name, "asset": "USD"}).status_code == 201
        response = http.post("/v1/deposits", json={"wallet_id": "a", "amount": 100}, headers={"Idempotency-Key": "d"})
        assert response.status_code == 201, response.text
        transfer = {"from_wallet_id": "a", "to_wallet_id": "b", "amount": 40}
        response = http.post("/v1/transfers", json=transfer, headers={"Idempotency-Key": "t"})
        assert response.status_code == 201, response.text
        posted = response.json()
        again = http.post("/v1/transfers", json=transfer, headers={"Idempotency-Key": "t"})
        assert again.status_code == 201 and again.json() == posted  # replayed, not executed twice
        assert http.get("/v1/wallets/a").json()["balance"] == 60
        assert http.get("/v1/wallets/b").json()["balance"] == 40
        # The history read model (SQLite through aiosqlite: natively on asyncio loops).
        assert http.get(f"/v1/transactions/{posted['id']}").json() == posted
        statement = http.get("/v1/wallets/b/transactions").json()["items"]
        assert [(item["transaction_id"], item["balance_after"]) for item in statement] == [(posted["id"], 40)]
        listed = http.get("/v1/wallets", params={"owner_id": "a"}).json()["items"]
        assert [wallet["id"] for wallet in listed] == ["a"]
        # The event feed, woken by the group commit.
        events = http.get("/v1/events", params={"after": "0"}).json()["items"]
        assert [event["type"] for event in events][-2:] == ["deposit.posted", "transfer.posted"]
