"""Real responses of a full flow, validated against the schemas ``/openapi.json`` documents for
their operation and status: the document describes the API the server really speaks."""

from __future__ import annotations

import re
from typing import Any

import httpx
import msgpack
from jsonschema import Draft202012Validator

from tests.e2e._server import ServerProcess


def operation_for(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    for template, item in document["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return item[method.lower()]  # type: ignore[no-any-return]
    raise AssertionError(f"{method} {path} is not documented")


def validate(document: dict[str, Any], response: httpx.Response) -> None:
    request = response.request
    operation = operation_for(document, request.method, request.url.path)
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, f"{request.method} {request.url.path} answered undocumented {response.status_code}"
    media_type = response.headers["content-type"].split(";")[0]
    schema = documented["content"][media_type]["schema"]
    root = {**schema, "components": document["components"]}
    body = msgpack.unpackb(response.content, raw=False) if media_type == "application/msgpack" else response.json()
    Draft202012Validator(root).validate(body)


def test_every_answer_of_a_full_flow_matches_the_document(server: ServerProcess) -> None:
    with server.client() as http:
        document = http.get("/openapi.json").json()
        assert document["openapi"].startswith("3.1")
        Draft202012Validator.check_schema({"components": document["components"]})
        key = iter(range(10**6))

        def call(method: str, path: str, **options: Any) -> httpx.Response:
            if method == "POST" and path in ("/v1/deposits", "/v1/transfers"):
                options.setdefault("headers", {})["Idempotency-Key"] = f"k{next(key)}"
            response = http.request(method, path, **options)
            validate(document, response)
            return response

        call("POST", "/v1/assets", json={"code": "USD", "scale": 2})
        call("POST", "/v1/assets", json={"code": "USD", "scale": 2})
        call("POST", "/v1/assets", json={"code": "USD", "scale": 3})
        call("GET", "/v1/assets")
        for wallet_id in ("oa", "ob"):
            call("POST", "/v1/wallets", json={"id": wallet_id, "owner_id": wallet_id, "asset": "USD", "metadata": {"k": 1}})
        call("POST", "/v1/wallets", json={"id": "oa", "owner_id": "oa", "asset": "USD"})
        call("POST", "/v1/wallets", json={"owner_id": "oc", "asset": "EUR"})
        deposit = call("POST", "/v1/deposits", json={"wallet_id": "oa", "amount": 500, "description": "in"}).json()
        call("POST", "/v1/transfers", json={"from_wallet_id": "oa", "to_wallet_id": "ob", "amount": 200})
        call("POST", "/v1/transfers", json={"from_wallet_id": "oa", "to_wallet_id": "ob", "amount": 10**6})
        call("POST", "/v1/transfers", json={"from_wallet_id": "oa", "to_wallet_id": "oa", "amount": 1})
        call("POST", "/v1/transfers", json={"from_wallet_id": "oa", "to_wallet_id": "zz", "amount": 1})
        call("POST", "/v1/transfers", json={"from_wallet_id": "oa", "to_wallet_id": "ob", "amount": 1.5})
        call("GET", f"/v1/transactions/{deposit['id']}")
        call("GET", "/v1/transactions/nope")
        call("GET", "/v1/transactions", params={"wallet_id": "oa", "limit": "1"})
        call("GET", "/v1/transactions", params={"metadata.k": "x", "min_amount": "1"})
        call("GET", "/v1/transactions", params={"min_amount": "0"})
        call("GET", "/v1/transactions", params={"wallet_id": "zz"})
        call("GET", "/v1/wallets/oa")
        call("GET", "/v1/wallets", params={"owner_id": "oa", "limit": "1"})
        call("GET", "/v1/wallets/oa/transactions", params={"limit": "1"})
        call("GET", "/v1/wallets/oa/balance", params={"as_of": deposit["created_at"]})
        call("GET", "/v1/wallets/oa/balance")
        call("POST", "/v1/wallets/ob/freeze")
        call("POST", "/v1/wallets/ob/unfreeze")
        call("POST", "/v1/wallets/ob/close")
        token = call("POST", "/v1/tokens", json={"owner_id": "oa"}).json()
        call("DELETE", f"/v1/tokens/{token['prefix']}")
        call("POST", "/v1/wallets", json={"id": "od", "owner_id": "od", "asset": "USD"})
        batch = {"atomic": False, "transfers": [
            {"idempotency_key": "b1", "from_wallet_id": "oa", "to_wallet_id": "zz", "amount": 1},
            {"idempotency_key": "b2", "from_wallet_id": "oa", "to_wallet_id": "od", "amount": 1.5},
            {"idempotency_key": "b3", "from_wallet_id": "oa", "to_wallet_id": "od", "amount": 1},
        ]}
        call("POST", "/v1/transfers/batch", json=batch)
        call("POST", "/v1/transfers/batch", json={**batch, "atomic": True})
        call("POST", "/v1/transfers/batch", json={"atomic": True, "transfers": [
            {"idempotency_key": "b4", "from_wallet_id": "oa", "to_wallet_id": "zz", "amount": 1}]})
        call("POST", "/v1/transfers/batch", content=msgpack.packb({**batch, "atomic": False}),
             headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"})
        call("POST", "/v1/transfers/batch", content=b"x", headers={"Content-Type": "text/plain"})
        call("POST", "/v1/admin/snapshots")
        validate(document, http.get("/v1/wallets/oa", headers={"Authorization": "Bearer wrong"}))
