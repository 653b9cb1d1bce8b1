"""The batch route's validation, without a server: the fast per-item predicate never accepts what
the single-transfer route's validators refuse and gives the same values; the request's shape
errors (one test per row); strict MessagePack decoding; repeated keys; item fingerprints that
do not depend on the wire format."""

from __future__ import annotations

import json
from typing import Any

import hypothesis.strategies as st
import msgpack
import pytest
from hypothesis import given, settings

from ledger import AMOUNT_MAX, BATCH_ITEMS_MAX
from server import _validate as v
from server._errors import ApiError
from server.api._batches import item_fingerprint

GOOD = {"idempotency_key": "k-1", "from_wallet_id": "alice", "to_wallet_id": "bob", "amount": 250}

IDS = ["treasury:USD", "treasury:", "", "a b", "x" * 64, "x" * 65, "é", "a\x00", 5, None, b"alice"]
# Per field: values at and past every edge of its rule (and of its type).
EDGES: dict[str, list[Any]] = {
    "idempotency_key": ["", "k", " ", "~" * 128, "~" * 129, "k\x7f", "k\n", "é", 5, None, b"k"],
    "from_wallet_id": IDS,
    "to_wallet_id": IDS,
    "amount": [0, -1, 1, AMOUNT_MAX, AMOUNT_MAX + 1, 2**64, 1.0, 10.5, True, False, "1", None, [1]],
    "description": [None, "", "d" * 1024, "d" * 1025, "\ud800", "é" * 1024, 5, b"d", ["d"]],
    "metadata": [None, {}, {"a": 1.5}, {"a": float("nan")}, {"a": 2**63}, {b"x": 1}, {"a": b"b"}, [], "m", 1],
}


@st.composite
def items(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 30)) == 0:
        return draw(st.sampled_from([None, 1, "item", [GOOD], b"item", 1.5]))
    item: dict[Any, Any] = {}
    for name, edges in EDGES.items():
        roll = draw(st.integers(0, 9))
        if roll == 0:
            continue  # missing
        if roll <= 3:
            item[name] = draw(st.sampled_from(edges))
        elif name in GOOD:
            item[name] = GOOD[name]
    if draw(st.integers(0, 15)) == 0:
        item[draw(st.sampled_from(["extra", b"amount", "Amount"]))] = 1
    return item


@settings(max_examples=600, deadline=None)
@given(item=items())
def test_the_fast_path_agrees_with_the_single_transfer_validators(item: Any) -> None:
    (fast,) = v.batch_items([item])
    slow = v._batch_item(0, item)
    assert fast == slow
    if isinstance(fast, tuple):
        _, source, target, amount, _, _ = fast
        assert type(amount) is int and 1 <= amount <= AMOUNT_MAX
        assert not source.startswith("treasury:") and not target.startswith("treasury:")
        json.dumps(list(fast))  # every value can reach the log and the response
    else:
        assert fast and all(error["field"].startswith("transfers[0]") for error in fast)


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name, edges in EDGES.items() for value in edges],
    ids=[f"{name}={value!r:.20}" for name, edges in EDGES.items() for value in edges],
)
def test_every_edge_of_every_field_agrees_with_the_single_transfer_validators(name: str, value: Any) -> None:
    item = {**GOOD, name: value}
    (fast,) = v.batch_items([item])
    assert fast == v._batch_item(0, item)
    missing = {key: item[key] for key in item if key != name}
    (fast,) = v.batch_items([missing])
    assert fast == v._batch_item(0, missing)


def test_errors_name_the_item_and_its_field() -> None:
    (errors,) = v.batch_items([{**GOOD, "amount": 10.0}, {**GOOD, "idempotency_key": "k-2"}][:1])
    assert errors == [{"field": "transfers[0].amount",
                       "message": "must be an integer number of minor units, not a float"}]
    assert v.batch_items([GOOD, "x"])[1] == [{"field": "transfers[1]", "message": "must be an object, not a string"}]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ([], "body", "must be an object"),
        ({"atomic": False, "transfers": [GOOD], "extra": 1}, "extra", "unknown field"),
        ({"transfers": [GOOD]}, "atomic", "is required"),
        ({"atomic": "true", "transfers": [GOOD]}, "atomic", "must be true or false"),
        ({"atomic": 1, "transfers": [GOOD]}, "atomic", "must be true or false"),
        ({"atomic": False}, "transfers", "is required"),
        ({"atomic": False, "transfers": {"0": GOOD}}, "transfers", "must be an array"),
        ({"atomic": False, "transfers": []}, "transfers", "must hold 1 to"),
        ({"atomic": False, "transfers": [GOOD] * (BATCH_ITEMS_MAX + 1)}, "transfers", "must hold 1 to"),
    ],
    ids=["not-object", "unknown-field", "atomic-missing", "atomic-string", "atomic-int", "transfers-missing",
         "transfers-map", "transfers-empty", "transfers-too-many"],
)
def test_the_shape_of_the_request_is_checked_as_a_whole(body: Any, field: str, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        v.batch_request(body)
    assert caught.value.status == 400 and caught.value.code == "invalid_request"
    assert caught.value.errors is not None
    assert any(error["field"] == field and error["message"].startswith(message) for error in caught.value.errors)


def test_a_full_batch_has_the_right_shape() -> None:
    atomic, values = v.batch_request({"atomic": True, "transfers": [GOOD] * BATCH_ITEMS_MAX})
    assert atomic is True and len(values) == BATCH_ITEMS_MAX


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "malformed MessagePack"),
        (b"\xc1", "malformed MessagePack"),
        (msgpack.packb({"atomic": True}) + b"\x00", "bytes after"),
        (b"\x81\xa1a\xa3\xff\xfe\xfd", "malformed MessagePack"),  # a string that is not UTF-8
        (b"\x81\x01\x02", "malformed MessagePack"),  # an int map key
        (b"\x82\xa1a\x01\xa1a\x02", "duplicate key"),
        (b"\x91" * 5000 + b"\xc0", "nests deeper than"),  # nested past the unpacker's stack
    ],
    ids=["empty", "c1", "trailing", "utf8", "int-key", "duplicate-key", "deep"],
)
def test_messagepack_is_decoded_strictly(payload: bytes, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        v._decode_msgpack(payload)
    assert caught.value.status == 400 and message in caught.value.detail


def test_messagepack_values_meet_the_same_rules_as_json() -> None:
    decoded = v._decode_msgpack(msgpack.packb({"atomic": False, "transfers": [
        {**GOOD, "amount": 10.0},  # a float: refused even though it is whole
        {**GOOD, "idempotency_key": "k-2", "amount": True},
        {**GOOD, "idempotency_key": "k-3", "from_wallet_id": b"alice"},  # bin is not a string
        {**GOOD, "idempotency_key": "k-4", "metadata": {"x": 1.5, "y": [1, "z"]}},
        {**GOOD, "idempotency_key": "k-5", "metadata": {b"x": 1}},
        {**GOOD, "idempotency_key": "k-6", "metadata": {"x": msgpack.ExtType(1, b"a")}},
        {**GOOD, "idempotency_key": "k-7", "amount": 2**64 - 1},
    ]}, use_bin_type=True))
    _, values = v.batch_request(decoded)
    results = v.batch_items(values)
    assert [r[0]["field"] if isinstance(r, list) else "ok" for r in results] == [
        "transfers[0].amount", "transfers[1].amount", "transfers[2].from_wallet_id", "ok",
        "transfers[4].metadata", "transfers[5].metadata", "transfers[6].amount",
    ]
    assert results[3] == ("k-4", "alice", "bob", 250, None, {"x": 1.5, "y": [1, "z"]})


def test_a_key_twice_in_one_batch_is_named() -> None:
    values = [GOOD, {**GOOD, "idempotency_key": "k-2"}, {**GOOD, "amount": "bad"}, "x", {"idempotency_key": 5}]
    assert v.repeated_keys(values) == [{
        "field": "transfers[2].idempotency_key",
        "message": "repeats transfers[0].idempotency_key: every item needs its own key",
    }]
    assert v.repeated_keys(values[1:]) == []


def test_an_item_fingerprint_is_the_item_as_validated_whatever_the_wire() -> None:
    from_json = v._decode_json(json.dumps({**GOOD, "metadata": {"a": 1, "b": [1.5]}}).encode())
    from_msgpack = v._decode_msgpack(msgpack.packb({**GOOD, "metadata": {"b": [1.5], "a": 1}}))
    (json_item,) = v.batch_items([from_json])
    (msgpack_item,) = v.batch_items([from_msgpack])
    assert isinstance(json_item, tuple) and isinstance(msgpack_item, tuple)
    assert item_fingerprint(json_item) == item_fingerprint(msgpack_item)
    (plain,) = v.batch_items([GOOD])
    (with_null,) = v.batch_items([{**GOOD, "description": None, "metadata": None}])
    assert isinstance(plain, tuple) and isinstance(with_null, tuple)
    assert item_fingerprint(plain) == item_fingerprint(with_null)
    (other_key,) = v.batch_items([{**GOOD, "idempotency_key": "another"}])
    assert isinstance(other_key, tuple)
    assert item_fingerprint(other_key) == item_fingerprint(plain)  # the key is not part of the body
    for change in ({"amount": 251}, {"to_wallet_id": "carol"}, {"description": "x"}, {"metadata": {"a": 1.0}}):
        (changed,) = v.batch_items([{**GOOD, **change}])
        assert isinstance(changed, tuple)
        assert item_fingerprint(changed) != item_fingerprint(plain), change


async def test_batch_requests_past_their_bound_are_503_at_once() -> None:
    import httpx

    from server.api import Deps, build_app

    deps = Deps.build(admin_token="admin", batches_in_flight_max=2)
    transport = httpx.ASGITransport(app=build_app(deps))
    headers = {"Authorization": "Bearer admin"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as http:
        response = await http.post("/v1/transfers/batch", json={"atomic": False})  # 400, before the ledger
        assert response.status_code == 400
        assert deps.batches.in_flight == 0  # released on the way out, whatever the answer
        deps.batches.in_flight = 2  # two others are being handled
        response = await http.post("/v1/transfers/batch", json={"atomic": False, "transfers": [GOOD]})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["code"] == "overloaded"
