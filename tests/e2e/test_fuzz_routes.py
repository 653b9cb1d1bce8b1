"""Hypothesis-generated bodies, headers and paths against every route of the real server: no
answer is ever a 5xx, every error is problem+json with a code, and money is still conserved."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests._budget import scaled
from tests.e2e._server import ADMIN_TOKEN, ServerProcess

ROUTES = [
    ("POST", "/v1/assets"), ("GET", "/v1/assets"), ("POST", "/v1/tokens"), ("DELETE", "/v1/tokens/{id}"),
    ("POST", "/v1/wallets"), ("GET", "/v1/wallets"), ("GET", "/v1/wallets/{id}"),
    ("POST", "/v1/wallets/{id}/freeze"), ("POST", "/v1/wallets/{id}/unfreeze"), ("POST", "/v1/wallets/{id}/close"),
    ("GET", "/v1/wallets/{id}/balance"), ("GET", "/v1/wallets/{id}/transactions"),
    ("POST", "/v1/deposits"), ("POST", "/v1/transfers"), ("POST", "/v1/transfers/batch"),
    ("GET", "/v1/transactions/{id}"),
    ("POST", "/v1/admin/snapshots"), ("GET", "/health"), ("GET", "/ready"),
    ("POST", "/v1/transfers/{id}/capture"), ("POST", "/v1/transfers/{id}/void"),
    ("POST", "/v1/withdrawals"), ("GET", "/v1/withdrawals"), ("GET", "/v1/withdrawals/{id}"),
    ("POST", "/v1/withdrawals/{id}/retry"),
    ("POST", "/v1/wallets/{id}/alerts"), ("GET", "/v1/wallets/{id}/alerts"), ("DELETE", "/v1/alerts/{id}"),
]
FIELDS = ["code", "scale", "owner_id", "id", "asset", "metadata", "wallet_id", "amount", "description",
          "from_wallet_id", "to_wallet_id", "hold", "timeout_s", "destination", "x", "atomic", "transfers",
          "idempotency_key", "field", "below", "above"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False), st.text(max_size=70),
    st.sampled_from(["fz-a", "fz-b", "USD", "treasury:USD", "system", "", "a" * 65]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
bodies = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=6).map(lambda body: json.dumps(body).encode()),
    st.binary(max_size=200),
    values.map(lambda value: json.dumps(value).encode()),
)
path_ids = st.one_of(st.sampled_from(["fz-a", "fz-b", "treasury:USD", "nope", "%00", "..", "a" * 70]),
                     st.text(alphabet="abc:_-.%", min_size=1, max_size=10))
tokens = st.sampled_from([ADMIN_TOKEN, ADMIN_TOKEN, "nope", ""])
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", None,
                                 "application/msgpack", "application/json;;"])
# Header values with leading or trailing whitespace cannot be sent (h11 refuses them client-side).
keys = st.one_of(st.none(), st.text(max_size=20).filter(lambda key: key.isprintable() and key.isascii()
                                                       and key == key.strip()),
                 st.sampled_from(["k1", "k2", "k" * 129]))
queries = st.dictionaries(st.sampled_from(["limit", "cursor", "owner_id", "asset", "as_of", "type", "status",
                                           "since", "until", "zzz"]), st.text(max_size=12), max_size=3)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(Path(tmp_path_factory.mktemp("fuzz")) / "data")
    server.start()
    with server.client() as http:
        assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
        for wallet_id in ("fz-a", "fz-b"):
            assert http.post("/v1/wallets", json={"id": wallet_id, "owner_id": wallet_id, "asset": "USD"}).status_code == 201
            response = http.post("/v1/deposits", json={"wallet_id": wallet_id, "amount": 1000},
                                 headers={"Idempotency-Key": f"seed-{wallet_id}"})
            assert response.status_code == 201
    try:
        yield server
    finally:
        server.kill()


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json"), response.headers
        body: Any = response.json()
        assert body["status"] == response.status_code and body["code"], body


@settings(max_examples=scaled(120, 800), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), path_id=path_ids, body=bodies, token=tokens, content_type=content_types,
       key=keys, query=queries)
def test_no_input_makes_a_5xx(fuzz_server: ServerProcess, route: tuple[str, str], path_id: str, body: bytes,
                              token: str, content_type: str | None, key: str | None, query: dict[str, str]) -> None:
    method, template = route
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if key is not None:
        headers["Idempotency-Key"] = key
    path = template.replace("{id}", path_id)
    with httpx.Client(base_url=fuzz_server.url, timeout=30) as http:
        check(http.request(method, path, content=body if method != "GET" else None, headers=headers, params=query))


# Batch-shaped bodies: mostly valid items around the two funded wallets, some of every kind of
# wrong, in JSON or MessagePack (whose values include bin, floats and ext types).
batch_values = st.one_of(values, st.binary(max_size=4), st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=3)))
batch_items = st.one_of(
    st.fixed_dictionaries(
        {"idempotency_key": st.text(max_size=10) | st.sampled_from(["k1", "k2"]),
         "from_wallet_id": st.sampled_from(["fz-a", "fz-b", "nope", "treasury:USD"]),
         "to_wallet_id": st.sampled_from(["fz-a", "fz-b", "nope"]),
         "amount": st.integers(min_value=-5, max_value=2**64) | st.sampled_from([1, 2, 3, 1.0])},
        optional={"description": batch_values, "metadata": batch_values, "x": batch_values},
    ),
    batch_values,
)
batch_bodies = st.fixed_dictionaries(
    {"atomic": st.booleans() | batch_values, "transfers": st.lists(batch_items, max_size=6) | batch_values},
    optional={"x": batch_values},
)


@settings(max_examples=scaled(100, 600), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=batch_bodies, as_msgpack=st.booleans(), accept=st.sampled_from([None, "application/msgpack", "*/*"]),
       token=tokens)
def test_no_batch_makes_a_5xx(fuzz_server: ServerProcess, body: Any, as_msgpack: bool, accept: str | None,
                             token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if accept is not None:
        headers["Accept"] = accept
    encoders = [("application/msgpack", lambda: msgpack.packb(body, use_bin_type=True)),
                ("application/json", lambda: json.dumps(body).encode())]
    content = None
    for media_type, encode in encoders if as_msgpack else encoders[::-1]:
        try:  # bin has no JSON form, integers past 64 bits no MessagePack one
            content = encode()
        except (TypeError, ValueError, OverflowError):
            continue
        headers["Content-Type"] = media_type
        break
    assume(content is not None)
    with httpx.Client(base_url=fuzz_server.url, timeout=30) as http:
        response = http.post("/v1/transfers/batch", content=content, headers=headers)
    check(response)
    if response.status_code == 200:
        results = (msgpack.unpackb(response.content, raw=False)
                   if response.headers["content-type"] == "application/msgpack" else response.json())["results"]
        assert len(results) == len(body["transfers"])
        assert all(result["status"] == 201 or 400 <= result["status"] < 500 for result in results)


def test_money_is_conserved_after_the_fuzzing(fuzz_server: ServerProcess) -> None:
    with fuzz_server.client() as http:
        wallets = http.get("/v1/wallets", params={"limit": "1000"}).json()["items"]
        treasury = http.get("/v1/wallets/treasury:USD").json()["balance"]
        usd = sum(wallet["balance"] for wallet in wallets if wallet["asset"] == "USD")
        assert usd + treasury == 0
        assert all(wallet["balance"] >= 0 for wallet in wallets)
