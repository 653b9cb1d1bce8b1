"""Bad input at the edge, as one table per endpoint: every case gets its exact status and
``code``, a 400 names the offending field in ``errors``, nothing moves (every balance, the
treasuries included, every wallet and every asset are the same before and after), and no case
is ever answered with a 500. Then bad query parameters.

One server per module, with a fixed set of wallets that no case may touch."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e._server import ServerProcess

A, B, EURO, FROZEN = "bi-a", "bi-b", "bi-euro", "bi-frozen"
FUNDS = 10_000
PROBLEM_FIELDS = {"type", "title", "status", "code", "detail"}
BAD_IDS: list[tuple[str, Any]] = [
    ("65-chars", "x" * 65),
    ("space", "a b"),
    ("slash", "a/b"),
    ("non-ascii", "é"),
    ("empty", ""),
    ("reserved", "treasury:USD"),
    ("integer", 5),
    ("null", None),
]


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(Path(tmp_path_factory.mktemp("bad-input")) / "data")
    process.start()
    try:
        with process.client() as http:
            for code in ("USD", "EUR"):
                assert http.post("/v1/assets", json={"code": code, "scale": 2}).status_code == 201
            for wallet_id, asset in ((A, "USD"), (B, "USD"), (EURO, "EUR"), (FROZEN, "USD")):
                response = http.post("/v1/wallets", json={"id": wallet_id, "owner_id": "bi-owner", "asset": asset})
                assert response.status_code == 201, response.text
                response = http.post(
                    "/v1/deposits", json={"wallet_id": wallet_id, "amount": FUNDS},
                    headers={"Idempotency-Key": f"setup-{wallet_id}"},
                )
                assert response.status_code == 201, response.text
            assert http.post(f"/v1/wallets/{FROZEN}/freeze").status_code == 200
        yield process
    finally:
        process.kill()


@pytest.fixture(scope="module")
def http(bad_server: ServerProcess) -> Iterator[httpx.Client]:
    with bad_server.client() as client:
        yield client


def snapshot(http: httpx.Client) -> dict[str, Any]:
    """Every wallet (treasuries included) with its balance, hold and status, and every asset."""
    wallets: dict[str, tuple[int, int, str]] = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor is not None:
            params["cursor"] = cursor
        response = http.get("/v1/wallets", params=params)
        assert response.status_code == 200, response.text
        for item in response.json()["items"]:
            wallets[item["id"]] = (item["balance"], item["held"], item["status"])
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
    assets = http.get("/v1/assets").json()["items"]
    for asset in assets:
        item = http.get(f"/v1/wallets/{asset['treasury_wallet_id']}").json()
        wallets[item["id"]] = (item["balance"], item["held"], item["status"])
    assert sum(balance for balance, _, _ in wallets.values()) == 0
    return {"wallets": wallets, "assets": sorted((asset["code"], asset["scale"]) for asset in assets)}


def check_problem(response: httpx.Response, status: int, code: str, fields: set[str] | None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0].strip() == "application/problem+json"
    body = response.json()
    assert PROBLEM_FIELDS <= set(body), body
    assert (body["status"], body["code"]) == (status, code), body
    assert body["title"] and body["detail"] and body["type"]
    if fields is not None:
        assert {error["field"] for error in body["errors"]} == fields, body
        assert all(isinstance(error["message"], str) and error["message"] for error in body["errors"])


def raw(base: dict[str, Any], drop: tuple[str, ...] = (), /, **literals: str) -> bytes:
    """``base`` as JSON text, with some values replaced by (or added as) literal JSON text."""
    parts = [
        f"{json.dumps(name)}: {literals.pop(name) if name in literals else json.dumps(value)}"
        for name, value in base.items() if name not in drop
    ]
    parts += [f"{json.dumps(name)}: {text}" for name, text in literals.items()]
    return ("{" + ", ".join(parts) + "}").encode()


@dataclass(frozen=True)
class Case:
    path: str
    body: bytes
    status: int
    code: str
    fields: set[str] | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = "application/json"
    key: bool = True  # send a fresh Idempotency-Key


def send(http: httpx.Client, case: Case) -> httpx.Response:
    headers: dict[str, Any] = {}
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    if case.key:
        headers["Idempotency-Key"] = "bi-" + uuid.uuid4().hex
    headers.update(case.headers)
    return http.post(case.path, content=case.body, headers=headers)


def separate_client(http: httpx.Client) -> httpx.Client:
    """For requests the server answers early with 413: it closes that connection afterwards."""
    return httpx.Client(base_url=http.base_url, headers=http.headers, timeout=30.0)


def run(http: httpx.Client, case: Case) -> None:
    before = snapshot(http)
    if case.status == 413:
        with separate_client(http) as once:
            response = send(once, case)
    else:
        response = send(http, case)
    check_problem(response, case.status, case.code, case.fields)
    assert snapshot(http) == before


# -- the tables ----------------------------------------------------------------------------------

TRANSFER = {"from_wallet_id": A, "to_wallet_id": B, "amount": 10}
DEPOSIT = {"wallet_id": A, "amount": 10}
AMOUNTS = [
    ("float-10.0", "10.0"), ("float-10.5", "10.5"), ("exponent-1e3", "1e3"), ("exponent-1E3", "1E3"),
    ("string", '"10"'), ("true", "true"), ("false", "false"), ("null", "null"), ("zero", "0"),
    ("negative-zero", "-0"), ("negative", "-1"), ("int64-max-plus-1", str(2**63)),
    ("minus-int64-min", str(-(2**63))), ("huge", str(2**64)), ("list", "[10]"), ("object", '{"value": 10}'),
]
CONSTANTS = ["NaN", "Infinity", "-Infinity"]


def body_cases(path: str, base: dict[str, Any], id_fields: tuple[str, ...]) -> list[Any]:
    cases: list[Any] = []

    def add(name: str, case: Case, *marks: Any) -> None:
        cases.append(pytest.param(case, id=name, marks=marks))

    for name, literal in AMOUNTS:
        add(f"amount-{name}", Case(path, raw(base, amount=literal), 400, "invalid_request", {"amount"}))
    for constant in CONSTANTS:
        add(f"amount-{constant}", Case(path, raw(base, amount=constant), 400, "invalid_request", {"body"}))
    add(
        "amount-4301-digits",
        Case(path, raw(base, amount="9" * 4301), 400, "invalid_request", {"amount"}),
    )
    for name in base:
        add(f"missing-{name}", Case(path, raw(base, (name,)), 400, "invalid_request", {name}))
    add("missing-all", Case(path, b"{}", 400, "invalid_request", set(base)))
    add("unknown-field", Case(path, raw(base, currency='"USD"'), 400, "invalid_request", {"currency"}))
    add("unknown-fields-and-bad-amount", Case(
        path, raw(base, amount='"1"', extra="1", other="2"), 400, "invalid_request", {"amount", "extra", "other"}
    ))
    duplicated = raw(base)[:-1] + b', "amount": 20}'
    add("duplicate-key", Case(path, duplicated, 400, "invalid_request", {"amount"}))
    for name, body in (
        ("truncated", raw(base)[:-1]), ("empty", b""), ("single-quotes", b"{'amount': 10}"),
        ("trailing-comma", raw(base)[:-1] + b",}"), ("two-documents", raw(base) + raw(base)),
        ("comment", b"/* x */" + raw(base)), ("array", json.dumps([base]).encode()), ("null", b"null"),
        ("string", b'"x"'), ("number", b"10"), ("non-utf8", raw(base)[:-1] + b', "description": "\xff\xfe"}'),
        ("utf16", json.dumps(base).encode("utf-16")), ("deep-nesting", b"[" * 100_000 + b"]" * 100_000),
    ):
        add(f"body-{name}", Case(path, body, 400, "invalid_request", {"body"}))
    add("nan-in-metadata", Case(path, raw(base, metadata='{"x": NaN}'), 400, "invalid_request", {"body"}))
    for name, literal, bad in (
        ("lone-surrogate", '"\\ud800"', "description"),
        ("lone-low-surrogate", '"ok \\udfff"', "description"),
        ("number", "5", "description"),
        ("object", "{}", "description"),
        ("too-long", json.dumps("x" * 1025), "description"),
    ):
        add(f"description-{name}", Case(path, raw(base, description=literal), 400, "invalid_request", {bad}))
    for name, literal in (
        ("list", "[1]"), ("string", '"x"'), ("number", "1"), ("lone-surrogate-value", '{"k": "\\ud800"}'),
        ("lone-surrogate-key", '{"\\ud800": 1}'), ("too-deep", '{"a":' * 10 + "1" + "}" * 10),
        ("int-over-64-bits", '{"n": 18446744073709551616}'), ("too-big", json.dumps({"x": "y" * 5000})),
    ):
        add(f"metadata-{name}", Case(path, raw(base, metadata=literal), 400, "invalid_request", {"metadata"}))
    for id_field in id_fields:
        for name, value in BAD_IDS:
            add(f"{id_field}-{name}", Case(path, raw(base, **{id_field: json.dumps(value)}), 400, "invalid_request", {id_field}))
    for name, content_type in (("text-plain", "text/plain"), ("form", "application/x-www-form-urlencoded"),
                               ("json-lookalike", "application/jsonx"), ("missing", None)):
        add(f"content-type-{name}", Case(path, raw(base), 415, "unsupported_media_type", content_type=content_type))
    padding = json.dumps("x" * (1024 * 1024)).encode()
    add("body-over-1MiB", Case(path, raw(base)[:-1] + b', "description": ' + padding + b"}", 413, "payload_too_large"))
    for name, value in (("129-chars", "k" * 129), ("tab", "a\tb"), ("latin-1", b"caf\xe9"), ("empty", "")):
        add(f"idempotency-key-{name}", Case(
            path, raw(base), 400, "invalid_request", {"Idempotency-Key"}, headers={"Idempotency-Key": value}
        ))
    add("idempotency-key-missing", Case(path, raw(base), 400, "idempotency_key_missing", key=False))
    return cases


TRANSFER_CASES = [
    *body_cases("/v1/transfers", TRANSFER, ("from_wallet_id", "to_wallet_id")),
    pytest.param(Case("/v1/transfers", raw(TRANSFER, to_wallet_id=json.dumps(A)), 422, "same_wallet"), id="self-transfer"),
    pytest.param(Case("/v1/transfers", raw(TRANSFER, from_wallet_id='"bi-ghost"'), 404, "wallet_not_found"), id="unknown-sender"),
    pytest.param(Case("/v1/transfers", raw(TRANSFER, to_wallet_id='"bi-ghost"'), 404, "wallet_not_found"), id="unknown-receiver"),
    pytest.param(Case("/v1/transfers", raw(TRANSFER, to_wallet_id=json.dumps(EURO)), 422, "asset_mismatch"), id="asset-mismatch"),
    pytest.param(Case("/v1/transfers", raw(TRANSFER, amount=str(FUNDS + 1)), 422, "insufficient_funds"), id="insufficient-funds"),
    pytest.param(Case("/v1/transfers", raw(TRANSFER, from_wallet_id=json.dumps(FROZEN)), 409, "wallet_frozen"), id="frozen-sender"),
]
DEPOSIT_CASES = [
    *body_cases("/v1/deposits", DEPOSIT, ("wallet_id",)),
    pytest.param(Case("/v1/deposits", raw(DEPOSIT, amount=str(2**63 - 1)), 422, "balance_overflow"), id="balance-overflow"),
]
WALLET = {"id": "bi-new", "owner_id": "bi-owner", "asset": "USD"}
WALLET_CASES = [
    *(pytest.param(Case("/v1/wallets", raw(WALLET, **{name: json.dumps(value)}), 400, "invalid_request", {name}, key=False),
                   id=f"{name}-{label}")
      for name in ("id", "owner_id") for label, value in BAD_IDS),
    *(pytest.param(Case("/v1/wallets", raw(WALLET, asset=literal), 400, "invalid_request", {"asset"}, key=False),
                   id=f"asset-{label}")
      for label, literal in (("colon", '"US:D"'), ("empty", '""'), ("integer", "5"), ("null", "null"))),
    pytest.param(Case("/v1/wallets", raw(WALLET, asset='"NOPE"'), 422, "asset_not_found", key=False), id="unknown-asset"),
    pytest.param(Case("/v1/wallets", raw(WALLET, owner_id='"someone-else"', id=json.dumps(A)), 409, "wallet_exists", key=False),
                 id="existing-id-other-owner"),
    pytest.param(Case("/v1/wallets", raw(WALLET, ("owner_id",)), 400, "invalid_request", {"owner_id"}, key=False),
                 id="missing-owner"),
    pytest.param(Case("/v1/wallets", raw(WALLET, ("asset",)), 400, "invalid_request", {"asset"}, key=False),
                 id="missing-asset"),
    pytest.param(Case("/v1/wallets", raw(WALLET, balance="100"), 400, "invalid_request", {"balance"}, key=False),
                 id="unknown-field"),
    pytest.param(Case("/v1/wallets", raw(WALLET, metadata="[1]"), 400, "invalid_request", {"metadata"}, key=False),
                 id="metadata-list"),
    pytest.param(Case("/v1/wallets", raw(WALLET)[:-1] + b', "owner_id": "x"}', 400, "invalid_request", {"owner_id"}, key=False),
                 id="duplicate-key"),
    pytest.param(Case("/v1/wallets", b"[]", 400, "invalid_request", {"body"}, key=False), id="array"),
    pytest.param(Case("/v1/wallets", raw(WALLET), 415, "unsupported_media_type", key=False, content_type="text/plain"),
                 id="text-plain"),
    pytest.param(Case("/v1/wallets", raw(WALLET), 415, "unsupported_media_type", key=False, content_type=None),
                 id="no-content-type"),
    pytest.param(Case("/v1/wallets", raw(WALLET), 400, "invalid_request", {"Idempotency-Key"}, key=False,
                      headers={"Idempotency-Key": "k" * 129}), id="idempotency-key-129-chars"),
]
ASSET = {"code": "BIX", "scale": 2}
ASSET_CASES = [
    *(pytest.param(Case("/v1/assets", raw(ASSET, scale=literal), 400, "invalid_request", {"scale"}, key=False),
                   id=f"scale-{label}")
      for label, literal in (("negative", "-1"), ("19", "19"), ("string", '"2"'), ("float", "2.0"),
                             ("true", "true"), ("null", "null"))),
    *(pytest.param(Case("/v1/assets", raw(ASSET, code=literal), 400, "invalid_request", {"code"}, key=False),
                   id=f"code-{label}")
      for label, literal in (("space", '"a b"'), ("65-chars", json.dumps("X" * 65)), ("colon", '"US:D"'),
                             ("empty", '""'), ("integer", "5"), ("non-ascii", '"É"'))),
    pytest.param(Case("/v1/assets", raw(ASSET, ("scale",)), 400, "invalid_request", {"scale"}, key=False),
                 id="missing-scale"),
    pytest.param(Case("/v1/assets", raw(ASSET, treasury='"x"'), 400, "invalid_request", {"treasury"}, key=False),
                 id="unknown-field"),
    pytest.param(Case("/v1/assets", raw({"code": "USD", "scale": 4}), 409, "asset_exists", key=False), id="other-scale"),
    pytest.param(Case("/v1/assets", raw(ASSET), 415, "unsupported_media_type", key=False, content_type="text/plain"),
                 id="text-plain"),
]
TOKEN_CASES = [
    pytest.param(Case("/v1/tokens", b"{}", 400, "invalid_request", {"owner_id"}, key=False), id="missing-owner"),
    pytest.param(Case("/v1/tokens", b'{"owner_id": "treasury:x"}', 400, "invalid_request", {"owner_id"}, key=False),
                 id="reserved-owner"),
    pytest.param(Case("/v1/tokens", b'{"owner_id": "a b"}', 400, "invalid_request", {"owner_id"}, key=False),
                 id="bad-owner"),
    pytest.param(Case("/v1/tokens", b'{"owner_id": "x", "scope": "admin"}', 400, "invalid_request", {"scope"}, key=False),
                 id="unknown-field"),
]
STATUS_CASES = [
    pytest.param(Case(f"/v1/wallets/{A}/freeze", b"[]", 400, "invalid_request", {"body"}, key=False), id="freeze-array"),
    pytest.param(Case(f"/v1/wallets/{A}/close", b"{", 400, "invalid_request", {"body"}, key=False), id="close-malformed"),
    pytest.param(Case(f"/v1/wallets/{A}/freeze", b"{}", 415, "unsupported_media_type", key=False, content_type="text/plain"),
                 id="freeze-text-plain"),
    pytest.param(Case(f"/v1/wallets/{A}/close", b"", 409, "wallet_not_empty", key=False), id="close-not-empty"),
    pytest.param(Case("/v1/wallets/treasury:USD/freeze", b"", 403, "forbidden", key=False), id="freeze-treasury"),
    pytest.param(Case("/v1/wallets/bi-ghost/freeze", b"", 404, "wallet_not_found", key=False), id="freeze-unknown"),
    pytest.param(
        Case(f"/v1/wallets/{A}/unfreeze", b'{"reason": "x"}', 400, "invalid_request", {"reason"}, key=False),
        id="unfreeze-unknown-field",
    ),
]


@pytest.mark.parametrize("case", TRANSFER_CASES)
def test_transfer_bad_input(http: httpx.Client, case: Case) -> None:
    run(http, case)


@pytest.mark.parametrize("case", DEPOSIT_CASES)
def test_deposit_bad_input(http: httpx.Client, case: Case) -> None:
    run(http, case)


@pytest.mark.parametrize("case", WALLET_CASES)
def test_wallet_bad_input(http: httpx.Client, case: Case) -> None:
    run(http, case)
    assert http.get("/v1/wallets/bi-new").status_code == 404


@pytest.mark.parametrize("case", ASSET_CASES)
def test_asset_bad_input(http: httpx.Client, case: Case) -> None:
    run(http, case)


@pytest.mark.parametrize("case", TOKEN_CASES)
def test_token_bad_input(http: httpx.Client, case: Case) -> None:
    run(http, case)


@pytest.mark.parametrize("case", STATUS_CASES)
def test_status_change_bad_input(http: httpx.Client, case: Case) -> None:
    before = http.get(f"/v1/wallets/{A}").json()
    run(http, case)
    assert http.get(f"/v1/wallets/{A}").json() == before


def test_body_over_1mib_sent_chunked_is_413(http: httpx.Client) -> None:
    """No Content-Length: the limit holds while the body streams in."""
    before = snapshot(http)

    def chunks() -> Iterator[bytes]:
        yield raw(DEPOSIT)[:-1] + b', "description": "'
        for _ in range(17):
            yield b"x" * 65536
        yield b'"}'

    with separate_client(http) as once:
        response = once.post(
            "/v1/deposits", content=chunks(),
            headers={"Content-Type": "application/json", "Idempotency-Key": "bi-" + uuid.uuid4().hex},
        )
    check_problem(response, 413, "payload_too_large", None)
    assert snapshot(http) == before


def test_413_tells_the_client_the_connection_closes(http: httpx.Client) -> None:
    body = raw(DEPOSIT)[:-1] + b', "description": ' + json.dumps("x" * (1024 * 1024)).encode() + b"}"
    with separate_client(http) as once:
        response = once.post(
            "/v1/deposits", content=body,
            headers={"Content-Type": "application/json", "Idempotency-Key": "bi-" + uuid.uuid4().hex},
        )
    check_problem(response, 413, "payload_too_large", None)
    assert response.headers.get("connection", "").lower() == "close"


def test_a_rejected_key_is_not_burnt(http: httpx.Client) -> None:
    """A request refused by validation records nothing: its key still works for a good one."""
    idempotency_key = "bi-" + uuid.uuid4().hex
    bad = http.post("/v1/transfers", json={**TRANSFER, "amount": 0}, headers={"Idempotency-Key": idempotency_key})
    check_problem(bad, 400, "invalid_request", {"amount"})
    good = http.post("/v1/transfers", json={**TRANSFER, "amount": 1}, headers={"Idempotency-Key": idempotency_key})
    assert good.status_code == 201, good.text
    back = http.post("/v1/transfers", json={"from_wallet_id": B, "to_wallet_id": A, "amount": 1},
                     headers={"Idempotency-Key": "bi-" + uuid.uuid4().hex})
    assert back.status_code == 201, back.text


def test_deposit_to_unknown_wallet_is_404(server: ServerProcess) -> None:
    """On a server of its own: the bug leaves the process hung."""
    with server.client() as http:
        assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
        response = http.post(
            "/v1/deposits", json={"wallet_id": "bi-ghost", "amount": 10},
            headers={"Idempotency-Key": "ghost"}, timeout=3.0,
        )
        check_problem(response, 404, "wallet_not_found", None)
        assert http.get("/v1/wallets/treasury:USD").json()["balance"] == 0


# -- query parameters -----------------------------------------------------------------------------

QUERY_CASES = [
    *(pytest.param(path, {"limit": value}, "limit", id=f"{name}-limit-{value or 'empty'}")
      for name, path in (("wallets", "/v1/wallets"), ("statement", f"/v1/wallets/{A}/transactions"))
      for value in ("0", "1001", "abc", "-1", "1.5", "", " 5", "1e2")),
    pytest.param("/v1/wallets", {"cursor": "garbage!"}, "cursor", id="wallets-cursor-garbage"),
    pytest.param("/v1/wallets", {"cursor": "dDox"}, "cursor", id="wallets-cursor-of-statement"),
    pytest.param("/v1/wallets", {"cursor": ""}, "cursor", id="wallets-cursor-empty"),
    pytest.param(f"/v1/wallets/{A}/transactions", {"cursor": "garbage"}, "cursor", id="statement-cursor-garbage"),
    pytest.param(f"/v1/wallets/{A}/transactions", {"cursor": "dzox"}, "cursor", id="statement-cursor-of-wallets"),
    pytest.param(f"/v1/wallets/{A}/transactions", {"cursor": "é"}, "cursor", id="statement-cursor-non-ascii"),
    pytest.param("/v1/wallets", {"owner_id": "a b"}, "owner_id", id="wallets-bad-owner"),
    pytest.param("/v1/wallets", {"asset": "x" * 65}, "asset", id="wallets-bad-asset"),
    *(pytest.param(f"/v1/wallets/{A}/balance", {"as_of": value}, "as_of", id=f"as-of-{value or 'empty'}")
      for value in ("garbage", "", "2026-13-01T00:00:00Z", "2026-01-01T00:00:00", "2026-01-01", "yesterday")),
    *(pytest.param(path, {"foo": "1"}, "foo", id=f"unknown-parameter-{name}")
      for name, path in (
          ("wallets", "/v1/wallets"), ("wallet", f"/v1/wallets/{A}"), ("assets", "/v1/assets"),
          ("balance", f"/v1/wallets/{A}/balance"), ("statement", f"/v1/wallets/{A}/transactions"),
          ("transaction", "/v1/transactions/tx_x"),
      )),
    pytest.param(
        "/v1/wallets", {"limit": "²"}, "limit", id="limit-superscript-two",
    ),
    pytest.param(
        "/v1/wallets", {"limit": "9" * 5000}, "limit", id="limit-5000-digits",
    ),
]


@pytest.mark.parametrize(("path", "params", "bad"), QUERY_CASES)
def test_bad_query_parameter(http: httpx.Client, path: str, params: dict[str, str], bad: str) -> None:
    check_problem(http.get(path, params=params), 400, "invalid_request", {bad})


@pytest.mark.parametrize(
    "as_of", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"], ids=["after-year-9999", "before-year-1"]
)
def test_as_of_out_of_range_is_not_a_500(http: httpx.Client, as_of: str) -> None:
    response = http.get(f"/v1/wallets/{A}/balance", params={"as_of": as_of})
    assert response.status_code in (200, 400), response.text


@pytest.mark.parametrize(
    "as_of",
    [
        "9999-12-31T23:59:59Z",
        "1970-01-01T00:00:00+14:00",
        pytest.param(
            "0001-01-01T00:00:00Z",
        ),
    ],
)
def test_as_of_at_the_edges_of_the_calendar(http: httpx.Client, as_of: str) -> None:
    response = http.get(f"/v1/wallets/{A}/balance", params={"as_of": as_of})
    assert response.status_code == 200, response.text
    assert response.json()["balance"] == (FUNDS if as_of.startswith("9999") else 0)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", response.json()["as_of"]), response.json()
