from tests.e2e._server import ServerProcess


def test_server_serves_a_deposit_and_a_transfer(server: ServerProcess) -> None:
    with server.client() as http:
        assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
        for name in ("a", "b"):
            assert http.post("/v1/wallets", json={"id": name, "owner_id": name, "asset": "USD"}).status_code == 201
        response = http.post("/v1/deposits", json={"wallet_id": "a", "amount": 100}, headers={"Idempotency-Key": "d"})
        assert response.status_code == 201, response.text
        response = http.post(
            "/v1/transfers", json={"from_wallet_id": "a", "to_wallet_id": "b", "amount": 40},
            headers={"Idempotency-Key": "t"},
        )
        assert response.status_code == 201, response.text
        assert http.get("/v1/wallets/a").json()["balance"] == 60
        assert http.get("/v1/wallets/b").json()["balance"] == 40
