"""Hostile input on the real server (issue "Hardening", items 3, 7, 8 and 10).

- Bodies built to be expensive to decode or to answer (millions of unknown keys, thousands of
  bad items, deep nesting) get a small ``400 invalid_request``: the decoders refuse past their
  limits and error lists stop at ``ERRORS_MAX`` entries plus a note.
- Crafted cursors, LSNs and limits outside int64 (or garbage) are ``400`` naming the parameter,
  never a 500, on every route that takes one.
- ``/metrics`` labels come from closed sets: the number of series does not grow with the number
  of methods and paths clients invent.
- A token sent to ``DELETE /v1/tokens/`` is never echoed, in the answer or in the server log.

Sizes are asserted, never times."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from ledger import ENTRY_POSITION_BITS, INT64_MAX, INT64_MIN
from server._errors import ERRORS_MAX
from tests.e2e._server import ServerProcess, started_with_assets

A, B = "hi-a", "hi-b"
MSGPACK = "application/msgpack"
SMALL_BYTES_MAX = 64 * 1024
GOOD_ITEM = {"idempotency_key": "k", "from_wallet_id": A, "to_wallet_id": B, "amount": 1}


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = started_with_assets(Path(tmp_path_factory.mktemp("hardening")) / "data", "USD")
    try:
        with process.client() as http:
            for wallet_id in (A, B):
                response = http.post("/v1/wallets", json={"id": wallet_id, "owner_id": "hi", "asset": "USD"})
                assert response.status_code == 201, response.text
            response = http.post("/v1/deposits", json={"wallet_id": A, "amount": 1000},
                                 headers={"Idempotency-Key": "hi-setup"})
            assert response.status_code == 201, response.text
        yield process
    finally:
        process.kill()


@pytest.fixture
def http(hardened: ServerProcess) -> Iterator[httpx.Client]:
    with hardened.client() as client:
        client.timeout = httpx.Timeout(120.0)  # the unfixed server took 8 s and more
        yield client


def small_400(response: httpx.Response, field: str | None = None) -> dict[str, Any]:
    """A ``400 invalid_request`` that is small, and names ``field`` when given."""
    assert len(response.content) < SMALL_BYTES_MAX, (len(response.content), response.content[:300])
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "invalid_request"
    assert 1 <= len(body["errors"]) <= ERRORS_MAX + 1
    if field is not None:
        assert field in {error["field"] for error in body["errors"]}, body
    return body


def keys(count: int, width: int) -> Iterator[str]:
    """``count`` distinct keys of ``width`` letters."""
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for number in range(count):
        key = ""
        for _ in range(width):
            number, digit = divmod(number, len(letters))
            key += letters[digit]
        yield key


def hostile_msgpack_batch(unknown: int) -> bytes:
    """A non-atomic batch whose one item is a valid transfer plus ``unknown`` unknown keys,
    each mapped to 0 (the issue's 2,000,000 keys: 14.9 MB)."""
    # {"atomic": false, "transfers": [item]}: a fixmap of 2, written by hand around the item.
    head = b"\x82" + msgpack.packb("atomic") + msgpack.packb(False) + msgpack.packb("transfers") + b"\x91"
    item = b"\xdf" + (len(GOOD_ITEM) + unknown).to_bytes(4, "big")
    item += b"".join(msgpack.packb(name) + msgpack.packb(value) for name, value in GOOD_ITEM.items())
    packed_keys = b"".join(b"\xa5" + key.encode() + b"\x00" for key in keys(unknown, 5))
    return head + item + packed_keys


# -- item 3: bodies that are expensive to decode or to answer ---------------------------------


def test_a_msgpack_batch_item_with_two_million_unknown_keys_gets_a_small_400(http: httpx.Client) -> None:
    body = hostile_msgpack_batch(2_000_000)
    assert 14_000_000 < len(body) <= 16 * 1024 * 1024
    response = http.post("/v1/transfers/batch", content=body, headers={"Content-Type": MSGPACK})
    small_400(response, "body")
    assert http.get("/health").status_code == 200


def test_a_json_body_with_110000_unknown_keys_gets_a_small_400(http: httpx.Client) -> None:
    members = ",".join(f'"{key}":0' for key in keys(110_000, 4))
    body = ('{"from_wallet_id":"' + A + '","to_wallet_id":"' + B + '","amount":1,' + members + "}").encode()
    assert len(body) <= 1024 * 1024
    response = http.post("/v1/transfers", content=body,
                         headers={"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex})
    small_400(response, "body")


def test_a_json_batch_item_with_a_million_unknown_keys_gets_a_small_400(http: httpx.Client) -> None:
    members = ",".join(f'"{key}":0' for key in keys(1_500_000, 5))
    item = json.dumps(GOOD_ITEM)[:-1] + "," + members + "}"
    body = ('{"atomic":false,"transfers":[' + item + "]}").encode()
    assert len(body) <= 16 * 1024 * 1024
    response = http.post("/v1/transfers/batch", content=body, headers={"Content-Type": "application/json"})
    small_400(response, "body")


@pytest.mark.parametrize("kind", ["json", "msgpack"])
def test_a_body_nested_past_the_decode_depth_is_a_400_for_the_whole_request(http: httpx.Client, kind: str) -> None:
    deep: Any = 0
    for _ in range(200):
        deep = {"d": deep}
    request = {"atomic": False, "transfers": [{**GOOD_ITEM, "metadata": deep}]}
    if kind == "json":
        response = http.post("/v1/transfers/batch", json=request)
    else:
        response = http.post("/v1/transfers/batch", content=msgpack.packb(request), headers={"Content-Type": MSGPACK})
    body = small_400(response, "body")
    assert "nests deeper than" in body["errors"][0]["message"]


def test_many_unknown_fields_list_the_first_errors_and_say_more_were_omitted(http: httpx.Client) -> None:
    body = {**{key: 0 for key in keys(500, 3)}, "from_wallet_id": A, "to_wallet_id": B, "amount": 1}
    response = http.post("/v1/transfers", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    errors = small_400(response)["errors"]
    assert len(errors) == ERRORS_MAX + 1
    assert all(error["message"] == "unknown field" for error in errors[:-1])
    assert errors[-1]["field"] == "errors" and "omitted" in errors[-1]["message"]
    assert len(response.json()["detail"]) < 4096


def test_an_atomic_batch_of_bad_items_lists_the_first_errors(http: httpx.Client) -> None:
    items = [{"idempotency_key": f"k{index}", "amount": "1", **{key: 0 for key in keys(30, 2)}}
             for index in range(8190)]
    response = http.post("/v1/transfers/batch", json={"atomic": True, "transfers": items})
    errors = small_400(response)["errors"]
    assert len(errors) == ERRORS_MAX + 1 and "omitted" in errors[-1]["message"]


def test_a_batch_that_repeats_one_key_8190_times_lists_the_first_repeats(http: httpx.Client) -> None:
    items = [dict(GOOD_ITEM, idempotency_key="same") for _ in range(8190)]
    response = http.post("/v1/transfers/batch", json={"atomic": False, "transfers": items})
    errors = small_400(response)["errors"]
    assert len(errors) == ERRORS_MAX + 1 and "omitted" in errors[-1]["message"]


def test_a_non_atomic_batch_of_bad_items_answers_each_within_a_bounded_size(http: httpx.Client) -> None:
    """Every item still gets its own 400, but the errors listed per item and per request are
    capped: the answer stays near the size of a batch of successes, not 30 errors per item."""
    items = [{"idempotency_key": f"k{index}", **{key: 0 for key in keys(30, 2)}} for index in range(8190)]
    response = http.post("/v1/transfers/batch", json={"atomic": False, "transfers": items})
    assert response.status_code == 200, response.text[:300]
    results = response.json()["results"]
    assert len(results) == 8190
    assert all(result["status"] == 400 for result in results)
    listed = [len(result["error"]["errors"]) for result in results]
    assert max(listed) == ERRORS_MAX + 1
    assert results[0]["error"]["errors"][-1]["field"] == "errors"
    assert results[-1]["error"]["errors"][-1]["field"] == "errors"
    assert len(response.content) < 8 * 1024 * 1024, len(response.content)


# -- item 7: cursors, LSNs and limits ---------------------------------------------------------


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


GARBAGE_NUMBERS = ["", "+5", " 5", "5 ", "1e3", "5_000", "0x10", "١٢", "5.0", "9" * 5000, "--5"]
STATEMENT_LSN_MAX = INT64_MAX >> ENTRY_POSITION_BITS
CURSOR_CASES = [
    pytest.param("/v1/wallets", "cursor", cursor("w:9223372036854775808"), id="wallets-int64-max-plus-1"),
    pytest.param("/v1/wallets", "cursor", "dzo5MjIzMzcyMDM2ODU0Nzc1ODA4", id="wallets-issue-cursor"),
    pytest.param("/v1/wallets", "cursor", cursor(f"w:{INT64_MIN - 1}"), id="wallets-int64-min-minus-1"),
    pytest.param("/v1/wallets", "cursor", cursor("w:99999999999999999999"), id="wallets-20-digits"),
    *(pytest.param("/v1/wallets", "cursor", cursor(f"w:{value}"), id=f"wallets-garbage-{index}")
      for index, value in enumerate(GARBAGE_NUMBERS)),
    pytest.param(f"/v1/wallets/{A}/transactions", "cursor", cursor("e:9223372036854775808"), id="statement-e-past"),
    pytest.param(f"/v1/wallets/{A}/transactions", "cursor", cursor("e:-1"), id="statement-e-negative"),
    pytest.param(f"/v1/wallets/{A}/transactions", "cursor", cursor(f"t:{STATEMENT_LSN_MAX + 1}"),
                 id="statement-t-past-shift"),
    pytest.param(f"/v1/wallets/{A}/transactions", "cursor", cursor("t:9223372036854775807"), id="statement-t-int64"),
    pytest.param(f"/v1/wallets/{A}/transactions", "cursor", cursor("t:-1"), id="statement-t-negative"),
    *(pytest.param(f"/v1/wallets/{A}/transactions", "cursor", cursor(f"e:{value}"), id=f"statement-garbage-{index}")
      for index, value in enumerate(GARBAGE_NUMBERS)),
    pytest.param("/v1/withdrawals", "cursor", cursor("9223372036854775808:wd_x"), id="withdrawals-past"),
    pytest.param("/v1/withdrawals", "cursor", cursor("-1:wd_x"), id="withdrawals-negative"),
    pytest.param("/v1/withdrawals", "cursor", cursor("5"), id="withdrawals-no-id"),
    pytest.param("/v1/withdrawals", "cursor", "garbage!", id="withdrawals-garbage"),
    *(pytest.param("/v1/withdrawals", "cursor", cursor(f"{value}:wd_x"), id=f"withdrawals-garbage-{index}")
      for index, value in enumerate(GARBAGE_NUMBERS)),
    *(pytest.param("/v1/events", "after", value, id=f"events-after-{index}")
      for index, value in enumerate(["9223372036854775808", "99999999999999999999", "-1", *GARBAGE_NUMBERS])),
    *(pytest.param(path, "limit", value, id=f"limit-{name}-{index}")
      for name, path in (("wallets", "/v1/wallets"), ("statement", f"/v1/wallets/{A}/transactions"),
                         ("withdrawals", "/v1/withdrawals"), ("events", "/v1/events"))
      for index, value in enumerate(["0", "-1", "9223372036854775808", *GARBAGE_NUMBERS])),
]


@pytest.mark.parametrize(("path", "name", "value"), CURSOR_CASES)
def test_a_bad_cursor_lsn_or_limit_is_a_400_naming_it(http: httpx.Client, path: str, name: str, value: str) -> None:
    small_400(http.get(path, params={name: value}), name)


@pytest.mark.parametrize("value", ["9223372036854775808", "-1", "x"])
def test_a_bad_last_event_id_is_a_400(http: httpx.Client, value: str) -> None:
    small_400(http.get("/v1/events/stream", headers={"Last-Event-ID": value}), "after")


@pytest.mark.parametrize(
    ("path", "name", "value"),
    [
        pytest.param("/v1/wallets", "cursor", cursor(f"w:{INT64_MAX}"), id="wallets-int64-max"),
        pytest.param("/v1/wallets", "cursor", cursor(f"w:{INT64_MIN}"), id="wallets-int64-min"),
        pytest.param("/v1/wallets", "cursor", cursor("w:-5"), id="wallets-negative-in-range"),
        pytest.param(f"/v1/wallets/{A}/transactions", "cursor", cursor(f"e:{INT64_MAX}"), id="statement-e-max"),
        pytest.param(f"/v1/wallets/{A}/transactions", "cursor", cursor("e:0"), id="statement-e-zero"),
        pytest.param(f"/v1/wallets/{A}/transactions", "cursor", cursor(f"t:{STATEMENT_LSN_MAX}"), id="statement-t-max"),
        pytest.param("/v1/withdrawals", "cursor", cursor(f"{INT64_MAX}:wd_x"), id="withdrawals-max"),
        pytest.param("/v1/events", "after", str(INT64_MAX), id="events-after-max"),
    ],
)
def test_a_cursor_at_the_edge_of_its_range_is_served(http: httpx.Client, path: str, name: str, value: str) -> None:
    response = http.get(path, params={name: value})
    assert response.status_code == 200, response.text


def test_the_issued_cursors_still_page_through_everything(http: httpx.Client) -> None:
    seen = []
    after = None
    while True:
        page = http.get("/v1/wallets", params={"limit": 1, **({"cursor": after} if after else {})}).json()
        seen += [item["id"] for item in page["items"]]
        after = page["next_cursor"]
        if after is None:
            break
    assert {A, B} <= set(seen)
    statement = http.get(f"/v1/wallets/{A}/transactions", params={"limit": 1}).json()
    assert statement["next_cursor"] is None or http.get(
        f"/v1/wallets/{A}/transactions", params={"cursor": statement["next_cursor"]}).status_code == 200


# -- item 8: metric labels from closed sets ---------------------------------------------------


def series(text: str) -> list[str]:
    return [line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")]


def invent(http: httpx.Client, start: int, count: int) -> None:
    for number in range(start, start + count):
        assert http.request(f"M{number:05d}X", "/health").status_code == 405
        assert http.request(f"Q{number:05d}", f"/nope/{number}").status_code in (404, 405)
        assert http.get(f"/v1/invented-{number}").status_code == 404
        assert http.request(f"P{number:05d}", f"/v1/wallets/w-{number}?n={number}").status_code == 405


def test_metric_series_do_not_grow_with_invented_methods_and_paths(server: ServerProcess) -> None:
    with server.client() as http:
        invent(http, 0, 3)
        http.get("/metrics")
        before = series(http.get("/metrics").text)
        invent(http, 3, 300)
        text = http.get("/metrics").text
    after = series(text)
    assert len(after) == len(before), sorted(set(after) - set(before))[:10]
    assert "M00100X" not in text and "invented-100" not in text and "nope/100" not in text
    assert 'method="other"' in text and 'route="unmatched"' in text
    assert re.search(r'wallet_http_requests_total\{method="other",route="/health",status="405"\} 303', text)


# -- item 10: a token is never echoed ---------------------------------------------------------


def test_deleting_a_whole_token_never_echoes_it_in_the_answer_or_the_log(hardened: ServerProcess) -> None:
    with hardened.client() as admin:
        created = admin.post("/v1/tokens", json={"owner_id": "hi-owner"}).json()
        token = created["token"]
        unknown = "wt_" + "Z" * 40
        missing = admin.delete(f"/v1/tokens/{unknown}")
        wrong_method = admin.get(f"/v1/tokens/{token}")
        revoked = admin.delete(f"/v1/tokens/{token}")
        again = admin.delete(f"/v1/tokens/{token}")
        with hardened.client(token) as user:
            after = user.get("/v1/assets")
    log = hardened.log()
    for secret in (token, unknown):
        for response in (missing, wrong_method, revoked, again):
            assert secret[:13] not in response.text, response.text
        assert secret[:13] not in log, [line for line in log.splitlines() if secret[:13] in line][:3]
    assert created["prefix"] in log  # the prefix is what the log keeps
    # A whole token is taken for what it is: the token is revoked (found by its hash).
    assert missing.status_code == 404 and missing.json()["code"] == "token_not_found"
    assert wrong_method.status_code == 405
    assert revoked.status_code == 200, revoked.text
    assert revoked.json() == {"prefix": created["prefix"], "revoked": True}
    assert again.status_code == 404 and again.json()["code"] == "token_not_found"
    assert after.status_code == 401
