"""The log record codec: every event type survives encode/decode with its exact field layout
(the table in ``ledger/_codec.py``), and anything else fed to ``decode_event`` raises
``CodecError``, never another exception."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import msgpack
import pytest
from hypothesis import given, settings

from ledger import (
    BATCH_ITEMS_MAX,
    CODEC_VERSION,
    INT64_MAX,
    INT64_MIN,
    AssetCreated,
    CodecError,
    Event,
    HoldCaptured,
    HoldCreated,
    HoldVoided,
    Idempotency,
    Refunded,
    TokenCreated,
    TokenRevoked,
    TransactionType,
    Transferred,
    TransfersPosted,
    VoidReason,
    WalletCreated,
    WalletStatus,
    WalletStatusChanged,
    decode_event,
    encode_event,
)
from ledger import (
    transfers_posted as _posted,
)
from ledger._codec import keyed_kind

int64s = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
texts = st.text(max_size=24)  # any unicode, surrogates excluded (they are not UTF-8)
json_values = st.recursive(
    st.none() | st.booleans() | int64s | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12,
)
metadatas = st.none() | st.dictionaries(st.text(max_size=12), json_values, max_size=5)
idempotencies = st.none() | st.builds(
    Idempotency, scope=texts, key=texts, fingerprint=st.binary(max_size=32)
)

asset_created = st.builds(AssetCreated, code=texts, scale=int64s, at_us=int64s)
wallet_created = st.builds(
    WalletCreated, wallet_id=texts, owner_id=texts, asset=texts, metadata=metadatas, at_us=int64s,
    idempotency=idempotencies,
)
wallet_status_changed = st.builds(
    WalletStatusChanged, wallet_id=texts, status=st.sampled_from(list(WalletStatus)), at_us=int64s
)
transferred = st.builds(
    Transferred, transaction_id=texts, type=st.sampled_from(list(TransactionType)), from_wallet_id=texts,
    to_wallet_id=texts, asset=texts, amount=int64s, description=st.none() | texts, metadata=metadatas,
    at_us=int64s, idempotency=idempotencies,
)
transfers_posted = st.builds(
    lambda at_us, transfers: _posted([Transferred(**{**_fields(t), "at_us": at_us}) for t in transfers], at_us),
    int64s, st.lists(transferred, min_size=1, max_size=6),
)
token_created = st.builds(TokenCreated, token_hash=st.binary(max_size=40), prefix=texts, owner_id=texts, at_us=int64s)
token_revoked = st.builds(TokenRevoked, prefix=texts, at_us=int64s)
events: st.SearchStrategy[Event] = st.one_of(
    asset_created, wallet_created, wallet_status_changed, transferred, transfers_posted, token_created,
    token_revoked,
)


def _fields(event: Any) -> dict[str, Any]:
    return {name: getattr(event, name) for name in event.__dataclass_fields__}


def _idem(idempotency: Idempotency | None) -> list[Any] | None:
    return None if idempotency is None else [idempotency.scope, idempotency.key, idempotency.fingerprint]


def layout(event: Event) -> list[Any]:
    """The payload the module docstring's table describes, field by field."""
    if isinstance(event, AssetCreated):
        return [CODEC_VERSION, 1, event.code, event.scale, event.at_us]
    if isinstance(event, WalletCreated):
        return [CODEC_VERSION, 2, event.wallet_id, event.owner_id, event.asset, event.metadata, event.at_us,
                _idem(event.idempotency)]
    if isinstance(event, WalletStatusChanged):
        return [CODEC_VERSION, 3, event.wallet_id, int(event.status), event.at_us]
    if isinstance(event, Transferred):
        return [CODEC_VERSION, 4, event.transaction_id, int(event.type), event.from_wallet_id, event.to_wallet_id,
                event.asset, event.amount, event.description, event.metadata, event.at_us,
                _idem(event.idempotency)]
    if isinstance(event, TransfersPosted):
        return [CODEC_VERSION, 7, event.at_us, [
            [t.transaction_id, int(t.type), t.from_wallet_id, t.to_wallet_id, t.asset, t.amount, t.description,
             t.metadata, _idem(t.idempotency)] for t in event.transfers
        ]]
    if isinstance(event, TokenCreated):
        return [CODEC_VERSION, 5, event.token_hash, event.prefix, event.owner_id, event.at_us]
    assert isinstance(event, TokenRevoked)
    return [CODEC_VERSION, 6, event.prefix, event.at_us]


def decodes_or_refuses(payload: bytes) -> None:
    """``decode_event`` returns an event or raises CodecError; any other exception escapes."""
    try:
        event = decode_event(payload)
    except CodecError:
        return
    assert isinstance(
        event,
        AssetCreated | WalletCreated | WalletStatusChanged | Transferred | TransfersPosted | TokenCreated
        | TokenRevoked,
    )
    if isinstance(event, TransfersPosted):
        assert 1 <= len(event.transfers) <= BATCH_ITEMS_MAX
        assert all(type(t) is Transferred and t.at_us == event.at_us for t in event.transfers)


def refuses(payload: bytes) -> None:
    with pytest.raises(CodecError):
        decode_event(payload)


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy",
    [asset_created, wallet_created, wallet_status_changed, transferred, transfers_posted, token_created,
     token_revoked],
    ids=["AssetCreated", "WalletCreated", "WalletStatusChanged", "Transferred", "TransfersPosted", "TokenCreated",
         "TokenRevoked"],
)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_round_trip(strategy: st.SearchStrategy[Event], data: st.DataObject) -> None:
    event = data.draw(strategy)
    payload = encode_event(event)
    decoded = decode_event(payload)
    assert decoded == event
    assert type(decoded) is type(event)
    if isinstance(decoded, WalletStatusChanged):
        assert type(decoded.status) is WalletStatus  # not a bare int that merely compares equal
    if isinstance(decoded, Transferred):
        assert type(decoded.type) is TransactionType
    if isinstance(decoded, TransfersPosted):
        assert type(decoded.transfers) is tuple
        assert all(type(t.type) is TransactionType for t in decoded.transfers)
    assert encode_event(decoded) == payload  # byte-stable: a re-encoded record is the same record


@settings(max_examples=200, deadline=None)
@given(event=events)
def test_payload_layout_matches_the_table(event: Event) -> None:
    assert msgpack.unpackb(encode_event(event), raw=False) == layout(event)


def test_int64_edges_round_trip() -> None:
    for value in (INT64_MIN, INT64_MIN + 1, -1, 0, 1, 2**32, INT64_MAX - 1, INT64_MAX):
        event = Transferred(
            transaction_id="t", type=TransactionType.TRANSFER, from_wallet_id="a", to_wallet_id="b",
            asset="USD", amount=value, description=None, metadata={"n": value}, at_us=value, idempotency=None,
        )
        assert decode_event(encode_event(event)) == event


# -- garbage -------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(payload=st.binary(max_size=64))
def test_random_bytes_never_raise_anything_but_codec_error(payload: bytes) -> None:
    decodes_or_refuses(payload)


@settings(max_examples=200, deadline=None)
@given(event=events, data=st.data())
def test_damaged_records_never_raise_anything_but_codec_error(event: Event, data: st.DataObject) -> None:
    payload = bytearray(encode_event(event))
    index = data.draw(st.integers(0, len(payload) - 1), label="index")
    payload[index] = data.draw(st.integers(0, 255), label="byte")
    decodes_or_refuses(bytes(payload))


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=INT64_MIN, max_value=2**64 - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(value=msgpack_values)
def test_valid_msgpack_of_any_shape_never_raises_anything_but_codec_error(value: Any) -> None:
    decodes_or_refuses(msgpack.packb(value, use_bin_type=True))


FIELD_COUNTS = {1: 3, 2: 6, 3: 3, 4: 10, 5: 4, 6: 2, 7: 2}  # per kind, from the table


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(FIELD_COUNTS)), data=st.data())
def test_any_fields_under_a_known_kind_never_raise_anything_but_codec_error(
    kind: int, data: st.DataObject
) -> None:
    count = FIELD_COUNTS[kind]
    fields = data.draw(st.lists(msgpack_values, min_size=count - 1, max_size=count + 1), label="fields")
    decodes_or_refuses(msgpack.packb([CODEC_VERSION, kind, *fields], use_bin_type=True))


SAMPLES: list[Event] = [
    AssetCreated(code="USD", scale=2, at_us=1),
    WalletCreated(wallet_id="w", owner_id="o", asset="USD", metadata=None, at_us=1,
                  idempotency=Idempotency(scope="s", key="k", fingerprint=b"f")),
    WalletStatusChanged(wallet_id="w", status=WalletStatus.FROZEN, at_us=1),
    Transferred(transaction_id="t", type=TransactionType.TRANSFER, from_wallet_id="a", to_wallet_id="b",
                asset="USD", amount=5, description="d", metadata={"k": 1}, at_us=1,
                idempotency=Idempotency(scope="s", key="k", fingerprint=b"f")),
    TokenCreated(token_hash=b"h", prefix="p", owner_id="o", at_us=1),
    TokenRevoked(prefix="p", at_us=1),
    _posted(at_us=1, transfers=(
        Transferred(transaction_id="t1", type=TransactionType.TRANSFER, from_wallet_id="a", to_wallet_id="b",
                    asset="USD", amount=5, description=None, metadata=None, at_us=1, idempotency=None),
        Transferred(transaction_id="t2", type=TransactionType.TRANSFER, from_wallet_id="b", to_wallet_id="c",
                    asset="USD", amount=3, description="d", metadata={"k": [1]}, at_us=1,
                    idempotency=Idempotency(scope="s", key="k", fingerprint=b"f")),
    )),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda event: type(event).__name__)
def test_wrong_arity_is_refused(event: Event) -> None:
    fields = layout(event)
    refuses(msgpack.packb(fields[:-1], use_bin_type=True))
    refuses(msgpack.packb([*fields, None], use_bin_type=True))
    refuses(msgpack.packb(fields[:2], use_bin_type=True))


@pytest.mark.parametrize("event", SAMPLES, ids=lambda event: type(event).__name__)
def test_truncated_and_extended_records_are_refused(event: Event) -> None:
    payload = encode_event(event)
    for end in range(len(payload)):
        refuses(payload[:end])
    refuses(payload + b"\xc0")
    refuses(payload + payload)


@pytest.mark.parametrize("version", [0, 2, CODEC_VERSION + 100, -1, "1", None, [1], b"\x01"])
def test_unknown_version_is_refused(version: Any) -> None:
    fields = layout(SAMPLES[0])
    refuses(msgpack.packb([version, *fields[1:]], use_bin_type=True))


@pytest.mark.parametrize("kind", [0, 8, 255, -1, "1", None, [4]])
def test_unknown_kind_is_refused(kind: Any) -> None:
    refuses(msgpack.packb([CODEC_VERSION, kind, "USD", 2, 1], use_bin_type=True))


@pytest.mark.parametrize(
    "value",
    [None, 0, 1, "text", b"bytes", {}, {"a": 1, "b": 2}, [], [CODEC_VERSION], msgpack.ExtType(1, b"xy")],
    ids=repr,
)
def test_wrong_top_level_shapes_are_refused(value: Any) -> None:
    refuses(msgpack.packb(value, use_bin_type=True))


@pytest.mark.parametrize(
    "fields",
    [
        [CODEC_VERSION, 3, "w", 9, 1],  # no such status
        [CODEC_VERSION, 3, "w", [1], 1],
        [CODEC_VERSION, 4, "t", 7, "a", "b", "USD", 5, None, None, 1, None],  # no such type
        [CODEC_VERSION, 4, "t", 1, "a", "b", "USD", 5, None, None, 1, ["s", "k"]],  # idempotency of 2
        [CODEC_VERSION, 2, "w", "o", "USD", None, 1, 5],  # idempotency not a list
        [CODEC_VERSION, 2, "w", "o", "USD", None, 1, ["s", "k", b"f", b"g"]],
    ],
    ids=["status", "status-list", "type", "idempotency-short", "idempotency-int", "idempotency-long"],
)
def test_bad_enums_and_idempotency_are_refused(fields: list[Any]) -> None:
    refuses(msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x91" * 5000 + b"\xc0",  # nested past the unpacker's stack
        b"\xdd\xff\xff\xff\xff",  # an array claiming 2**32 - 1 items
        b"\xd4\xff\x00",  # a timestamp ext of the wrong length
        b"\x81\x01\x02",  # a map with an int key (strict_map_key)
    ],
    ids=["empty", "c1", "deep", "huge-array", "bad-timestamp", "int-key"],
)
def test_malformed_msgpack_is_refused(payload: bytes) -> None:
    refuses(payload)


@pytest.mark.parametrize(
    "fields",
    [
        [CODEC_VERSION, 6, 123, "x"],  # TokenRevoked: prefix an int, at_us a str
        [CODEC_VERSION, 1, "USD", "2", 1],  # AssetCreated: scale a str
        [CODEC_VERSION, 4, "t", 1, "a", "b", "USD", "5", None, None, 1, None],  # amount a str
        [True, True, "USD", 2, 1],  # version and kind booleans (True == 1)
    ],
    ids=["prefix-int", "scale-str", "amount-str", "bool-version"],
)
def test_wrong_field_types_are_refused(fields: list[Any]) -> None:
    refuses(msgpack.packb(fields, use_bin_type=True))


GOOD_ITEM = ["t", 1, "a", "b", "USD", 5, None, None, None]


def _with_item(index: int, value: Any) -> list[Any]:
    return [*GOOD_ITEM[:index], value, *GOOD_ITEM[index + 1 :]]


@pytest.mark.parametrize(
    "fields",
    [
        [CODEC_VERSION, 7, 1, []],  # no transfers
        [CODEC_VERSION, 7, 1, [GOOD_ITEM] * (BATCH_ITEMS_MAX + 1)],  # more than a batch holds
        [CODEC_VERSION, 7, 1, GOOD_ITEM],  # a transfer where the list should be
        [CODEC_VERSION, 7, 1, {"t": GOOD_ITEM}],
        [CODEC_VERSION, 7, 1, [GOOD_ITEM[:-1]]],  # a transfer missing its idempotency
        [CODEC_VERSION, 7, 1, [[*GOOD_ITEM, 1]]],  # a transfer with one field too many
        [CODEC_VERSION, 7, 1, [GOOD_ITEM, "t"]],
        [CODEC_VERSION, 7, "1", [GOOD_ITEM]],  # at_us a string
        [CODEC_VERSION, 7, 1, [_with_item(5, "5")]],  # amount a string
        [CODEC_VERSION, 7, 1, [_with_item(1, 9)]],  # no such type
    ],
    ids=["empty", "too-many", "flat", "map", "short-item", "long-item", "item-str", "at-str", "amount-str",
         "type"],
)
def test_bad_transfers_records_are_refused(fields: list[Any]) -> None:
    refuses(msgpack.packb(fields, use_bin_type=True))


def test_a_full_batch_record_round_trips() -> None:
    item = SAMPLES[-1]
    assert isinstance(item, TransfersPosted)
    full = _posted(item.transfers[:1] * BATCH_ITEMS_MAX, 1)
    assert decode_event(encode_event(full)) == full


# -- the kind of a record an idempotency key answers with, from its first bytes ---------------

_KEY = Idempotency(scope="s", key="k", fingerprint=b"f")
_MOVE = {"from_wallet_id": "a", "to_wallet_id": "b", "asset": "USD", "amount": 5, "description": None,
         "metadata": None, "idempotency": _KEY}
_HOLD_EVENTS: list[Event] = [
    HoldCreated(transaction_id="t", type=TransactionType.TRANSFER, at_us=1, deadline_us=2, destination=None, **_MOVE),
    HoldCaptured(transaction_id="t", type=TransactionType.TRANSFER, held_amount=5, created_at_us=1,
                 created_lsn=1, at_us=2, reference=None, **_MOVE),
    HoldVoided(transaction_id="t", type=TransactionType.TRANSFER, created_at_us=1, created_lsn=1, at_us=2,
               reason=VoidReason.EXPIRED, detail=None, **_MOVE),
    Refunded(transaction_id="r", refund_of="t", original_amount=5, at_us=2, **_MOVE),
]


@given(event=events | st.sampled_from(_HOLD_EVENTS))
def test_keyed_kind_reads_the_kind_of_an_encoded_record(event: Event) -> None:
    payload = encode_event(event)
    keyed = isinstance(event, Transferred | WalletCreated | HoldCreated | HoldCaptured | HoldVoided | Refunded)
    if keyed:
        assert keyed_kind(payload) == msgpack.unpackb(payload)[1]
    else:
        with pytest.raises(CodecError):
            keyed_kind(payload)


def test_keyed_kind_reads_past_a_16_bit_array_header() -> None:
    payload = encode_event(_HOLD_EVENTS[1])  # 16 fields: msgpack's array 16 header (3 bytes)
    assert payload[0] == 0xDC
    assert keyed_kind(payload) == msgpack.unpackb(payload)[1]


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x93", b"\x93\x01", b"\x00\x01\x04", msgpack.packb([2, 4, "x"]), msgpack.packb([1, 7, "x"]),
     msgpack.packb({"1": 4}), b"\xdc\x00", b"\xdc\x00\x03\x01"],
    ids=["empty", "header-only", "no-kind", "not-an-array", "version", "batch-kind", "map", "short-16",
         "short-16-kind"],
)
def test_keyed_kind_refuses_what_is_not_a_keyed_record(payload: bytes) -> None:
    with pytest.raises(CodecError):
        keyed_kind(payload)
