"""The decoders' limits and the capped error lists, without a server (issue "Hardening", item 3;
the real server's answers are in ``tests/e2e/test_hardening_input.py``).

Each limit has a row at the limit (accepted) and one past it (refused with a ``body`` error
naming the limit); a hostile MessagePack body is refused before it becomes a large structure
(measured with tracemalloc); error lists stop at ``ERRORS_MAX`` entries plus a note."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import msgpack
import pytest

from ledger import BATCH_ITEMS_MAX, METADATA_BYTES_MAX
from server import _validate as v
from server._errors import ERRORS_MAX, ApiError, invalid

GOOD = {"idempotency_key": "k-1", "from_wallet_id": "alice", "to_wallet_id": "bob", "amount": 250}


def refused(decode: Any, payload: bytes) -> str:
    """The message of the single ``body`` error the decoder answers ``payload`` with."""
    with pytest.raises(ApiError) as caught:
        decode(payload)
    error = caught.value
    assert error.status == 400 and error.code == "invalid_request"
    assert error.errors is not None and len(error.errors) == 1 and error.errors[0]["field"] == "body"
    return error.errors[0]["message"]


def nested(depth: int) -> Any:
    """A value whose containers nest ``depth`` levels (alternating maps and arrays)."""
    value: Any = 0
    for level in range(depth):
        value = {"d": value} if level % 2 else [value]
    return value


DECODERS = {
    "json": (v._decode_json, lambda value: json.dumps(value).encode()),
    "msgpack": (v._decode_msgpack, msgpack.packb),
}


@pytest.mark.parametrize("kind", DECODERS)
def test_a_map_at_the_limit_is_decoded_and_one_past_it_is_refused(kind: str) -> None:
    decode, encode = DECODERS[kind]
    at_limit = {f"k{index}": index for index in range(v.DECODE_MAP_ENTRIES_MAX)}
    assert decode(encode(at_limit)) == at_limit
    message = refused(decode, encode({**at_limit, "one-more": 0}))
    assert f"at most {v.DECODE_MAP_ENTRIES_MAX}" in message


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("where", ["top", "in-object", "in-array"])
def test_an_array_at_the_limit_is_decoded_and_one_past_it_is_refused(kind: str, where: str) -> None:
    decode, encode = DECODERS[kind]

    def place(array: list[int]) -> Any:
        return {"top": array, "in-object": {"a": array}, "in-array": [[array]]}[where]

    at_limit = place([0] * v.DECODE_ARRAY_ITEMS_MAX)
    assert decode(encode(at_limit)) == at_limit
    message = refused(decode, encode(place([0] * (v.DECODE_ARRAY_ITEMS_MAX + 1))))
    assert f"at most {v.DECODE_ARRAY_ITEMS_MAX}" in message


@pytest.mark.parametrize("kind", DECODERS)
def test_nesting_at_the_limit_is_decoded_and_one_level_deeper_is_refused(kind: str) -> None:
    decode, encode = DECODERS[kind]
    assert decode(encode(nested(v.DECODE_DEPTH_MAX))) == nested(v.DECODE_DEPTH_MAX)
    deepest = b"[" * 5000 + b"0" + b"]" * 5000 if kind == "json" else b"\x91" * 5000 + b"\x00"
    for payload in (encode(nested(v.DECODE_DEPTH_MAX + 1)), encode(nested(400)), deepest):
        assert f"nests deeper than {v.DECODE_DEPTH_MAX} levels" in refused(decode, payload)


@pytest.mark.parametrize("header", [b"\xdb", b"\xc6", b"\xc9"], ids=["str", "bin", "ext"])
def test_a_msgpack_string_past_the_limit_is_refused_from_its_header(header: bytes) -> None:
    length = v.DECODE_STRING_BYTES_MAX + 1
    payload = header + length.to_bytes(4, "big") + (b"\x01" if header == b"\xc9" else b"") + b"x" * length
    assert f"at most {v.DECODE_STRING_BYTES_MAX}" in refused(v._decode_msgpack, payload)
    assert v._decode_msgpack(msgpack.packb("x" * v.DECODE_STRING_BYTES_MAX)) == "x" * v.DECODE_STRING_BYTES_MAX


def test_a_msgpack_map_header_past_the_limit_is_refused_before_its_entries_are_read() -> None:
    """The header alone (no entries follow) is enough: the unpacker never gets to them."""
    message = refused(v._decode_msgpack, b"\xdf" + (2_000_000).to_bytes(4, "big"))
    assert "2000000" in message and f"at most {v.DECODE_MAP_ENTRIES_MAX}" in message
    message = refused(v._decode_msgpack, b"\xdd" + (2_000_000).to_bytes(4, "big"))
    assert f"at most {v.DECODE_ARRAY_ITEMS_MAX}" in message


def test_the_issues_msgpack_body_is_refused_in_little_memory() -> None:
    """One batch item with 2,000,000 unknown keys (14.9 MB): refused having allocated almost
    nothing beyond the body (before the fix: a dict of 2,000,000 entries and as many errors)."""
    item = b"\xdf" + (4 + 2_000_000).to_bytes(4, "big") + msgpack.packb(GOOD)[1:]
    body = (b"\x82" + msgpack.packb("atomic") + msgpack.packb(False) + msgpack.packb("transfers") + b"\x91" + item
            + b"".join(b"\xa6" + b"%06d" % number + b"\x00" for number in range(2_000_000)))
    assert len(body) > 14_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ApiError) as caught:
            v._decode_msgpack(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, peak
    assert caught.value.errors is not None and len(caught.value.errors) == 1


def test_a_json_object_past_the_limit_is_refused_before_it_becomes_a_dict_or_errors() -> None:
    members = ",".join(f'"k{index}":0' for index in range(110_000))
    body = ('{"from_wallet_id":"a","to_wallet_id":"b","amount":1,' + members + "}").encode()
    assert f"at most {v.DECODE_MAP_ENTRIES_MAX}" in refused(v._decode_json, body)


def test_duplicate_keys_are_still_refused_with_their_name() -> None:
    with pytest.raises(ApiError) as caught:
        v._decode_json(b'{"a": 1, "a": 2}')
    assert caught.value.errors == [{"field": "a", "message": "duplicate key"}]


def test_a_valid_full_batch_with_metadata_decodes_in_both_formats() -> None:
    deep: Any = {"x": 1}
    for _ in range(5):  # metadata at its deepest: 8 levels, the leaf included
        deep = {"d": deep}
    item = {**GOOD, "description": "é" * 1024, "metadata": {"deep": deep, "list": [0] * 1000}}
    request = {"atomic": True, "transfers": [dict(item, idempotency_key=f"k{i}") for i in range(100)]}
    for decode, encode in DECODERS.values():
        decoded = decode(encode(request))
        assert all(isinstance(result, tuple) for result in v.batch_items(v.batch_request(decoded)[1]))


# -- error lists ------------------------------------------------------------------------------


def test_invalid_lists_at_most_errors_max_and_says_more_were_omitted() -> None:
    errors = [{"field": f"f{index}", "message": "bad"} for index in range(ERRORS_MAX + 5)]
    error = invalid(errors)
    assert error.errors is not None and len(error.errors) == ERRORS_MAX + 1
    assert error.errors[:ERRORS_MAX] == errors[:ERRORS_MAX]
    assert error.errors[-1]["field"] == "errors" and "omitted" in error.errors[-1]["message"]
    assert "f20" not in error.detail and "omitted" in error.detail
    assert invalid(errors[:ERRORS_MAX]).errors == errors[:ERRORS_MAX]


class CountingDict(dict):  # type: ignore[type-arg]
    """A dict that counts how many of its keys were looked at."""

    looked = 0

    def __iter__(self) -> Any:
        for key in super().__iter__():
            CountingDict.looked += 1
            yield key


def test_fields_stops_at_the_first_errors() -> None:
    body = CountingDict({f"u{index}": 0 for index in range(1000)})
    CountingDict.looked = 0
    with pytest.raises(ApiError) as caught:
        v.fields(body, {"amount": (True, v.amount)})
    assert caught.value.errors is not None and len(caught.value.errors) == ERRORS_MAX + 1
    assert CountingDict.looked <= ERRORS_MAX + 1


def test_a_batch_item_lists_at_most_errors_max_errors() -> None:
    item = {f"u{index}": 0 for index in range(500)}
    (errors,) = v.batch_items([item])
    assert isinstance(errors, list) and len(errors) == ERRORS_MAX + 1
    assert errors[-1]["field"] == "errors"


def test_past_the_batch_budget_each_bad_item_lists_its_first_error() -> None:
    items = [{f"u{index}": 0 for index in range(30)} for _ in range(BATCH_ITEMS_MAX)]
    results = v.batch_items(items)
    listed = [len(result) for result in results if isinstance(result, list)]
    assert len(listed) == BATCH_ITEMS_MAX
    assert sum(listed) <= v.BATCH_ERRORS_MAX + 2 * BATCH_ITEMS_MAX
    assert listed[0] == ERRORS_MAX + 1 and listed[-1] == 2


def test_repeated_keys_stop_at_the_first_errors() -> None:
    errors = v.repeated_keys([GOOD] * BATCH_ITEMS_MAX)
    assert len(errors) == ERRORS_MAX + 1


def test_unknown_query_parameters_are_capped() -> None:
    class Request:
        query_params = {f"p{index}": "1" for index in range(500)}

    with pytest.raises(ApiError) as caught:
        v.query(Request(), set())  # type: ignore[arg-type]
    assert caught.value.errors is not None and len(caught.value.errors) == ERRORS_MAX + 1


class CountingList(list):  # type: ignore[type-arg]
    """A list that counts how many of its items were looked at."""

    looked = 0

    def __iter__(self) -> Any:
        for item in super().__iter__():
            CountingList.looked += 1
            yield item


def test_metadata_too_large_is_refused_without_walking_all_of_it() -> None:
    CountingList.looked = 0
    with pytest.raises(ApiError) as caught:
        v.metadata("metadata", {"a": CountingList([0] * 100_000)})
    assert caught.value.errors == [{"field": "metadata", "message": f"must encode to at most {METADATA_BYTES_MAX} bytes"}]
    assert CountingList.looked <= METADATA_BYTES_MAX + 1
