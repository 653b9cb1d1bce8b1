"""The worker <-> ledger protocol on bytes: frames, message shapes, the value codec, bounds."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import (
    BatchFailed,
    Committed,
    Duplicate,
    Idempotency,
    IdempotencyRecord,
    Reason,
    Rejection,
    TransactionType,
    Transfer,
    Transferred,
    TransfersPosted,
    WalletStatus,
    WalletView,
    WithdrawalStatus,
    decode_event,
    encode_event,
    transfers_posted,
)
from server import _wire as w


def _transfer(index: int = 0) -> Transfer:
    return Transfer(
        transaction_id=f"tx_{index}", type=TransactionType.TRANSFER, from_wallet_id="a",
        to_wallet_id="b", amount=2**63 - 1, description=None, metadata={"k": [1, "x", None]},
        idempotency=Idempotency(scope="admin", key=f"k{index}", fingerprint=b"\x00" * 16),
        owner_id=None, hold_timeout_s=None,
    )


def _transferred() -> Transferred:
    return Transferred(
        transaction_id="tx_1", type=TransactionType.DEPOSIT, from_wallet_id="treasury:USD",
        to_wallet_id="w", asset="USD", amount=5, description="d", metadata=None, at_us=1,
        idempotency=None,
    )


VALUES = [
    _transfer(),
    Rejection(reason=Reason.INSUFFICIENT_FUNDS, detail="no"),
    Committed(source=_transferred(), lsn=7),
    Duplicate(record=IdempotencyRecord(fingerprint=b"f", lsn=3, at_us=4, source=_transferred())),
    BatchFailed(index=None, rejection=Rejection(reason=Reason.SAME_WALLET, detail="x")),
    WalletView(id="w", owner_id="o", asset="USD", balance=-(2**63), held=0, status=WalletStatus.FROZEN,
               metadata={"a": {"b": True}}, created_at_us=1, updated_at_us=2, lsn=3),
    frozenset({WithdrawalStatus.DEAD, WithdrawalStatus.PENDING}),
    ("a", 1, None),
    [None, True, b"bytes", "text", {"nested": [1, 2]}],
]


@pytest.mark.parametrize("value", VALUES, ids=lambda value: type(value).__name__)
def test_values_cross_whole(value: object) -> None:
    decoded = w.decode_value(w.encode_value(value))
    assert decoded == value
    assert type(decoded) is type(value)


def test_a_type_that_is_not_registered_does_not_cross() -> None:
    class Secret:
        pass

    with pytest.raises(TypeError):
        w.encode_value(Secret())


def test_unknown_dataclass_and_enum_names_are_refused() -> None:
    forged = msgpack.packb(msgpack.ExtType(1, msgpack.packb(["os.system", "rm"])))
    with pytest.raises(w.ProtocolError):
        w.decode_value(forged)
    forged_enum = msgpack.packb(msgpack.ExtType(2, msgpack.packb(["Reason", 10_000])))
    with pytest.raises(w.ProtocolError):
        w.decode_value(forged_enum)
    wrong_arity = msgpack.packb(msgpack.ExtType(1, msgpack.packb(["Rejection", 1])))
    with pytest.raises(w.ProtocolError):
        w.decode_value(wrong_arity)


def test_one_frame_carries_many_messages_in_order() -> None:
    messages = [w.request(i, "transfer", [_transfer(i)], b"h" * 32) for i in range(100)]
    messages.append(w.reply(5, None))
    messages.append(w.failed(6, "overloaded", "full"))
    messages.append(w.push("tokens", [b"x"]))
    data = w.frame(messages)
    decoder = w.Decoder()
    decoder.feed(data)
    assert decoder.messages() == messages
    assert decoder.buffered == 0


@given(st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20))
def test_frames_split_anywhere_decode_the_same(cuts: list[int]) -> None:
    frames = [w.frame([w.request(i, "wallet", [f"w{i}"])]) for i in range(5)]
    data = b"".join(frames)
    decoder = w.Decoder()
    got = []
    offset = 0
    for cut in cuts:
        decoder.feed(data[offset:offset + cut])
        offset += cut
        got += decoder.messages()
    decoder.feed(data[offset:])
    got += decoder.messages()
    assert got == [w.request(i, "wallet", [f"w{i}"]) for i in range(5)]


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    data = w.frame([w.reply(1, "x")])
    decoder = w.Decoder()
    decoder.feed(data[:-1])
    assert decoder.messages() == []
    decoder.feed(data[-1:])
    assert decoder.messages() == [w.reply(1, "x")]


def test_a_length_over_the_bound_is_refused_before_the_bytes_arrive() -> None:
    decoder = w.Decoder(frame_bytes_max=1024)
    decoder.feed(w.LENGTH.pack(1025))
    with pytest.raises(w.ProtocolError):
        decoder.messages()


@pytest.mark.parametrize(
    "payload",
    [
        {"not": "a list"},
        [["not a message"]],
        [[w.REQUEST, 1, "m"]],                     # too short
        [[w.REQUEST, "1", "m", [], None]],         # id not an int
        [[w.REQUEST, 1, "m", [], "not bytes"]],    # auth not bytes
        [[w.FAILED, 1, "invented_code", "x"]],
        [[w.REPLY, 1]],
        [[9, 1, 2]],
    ],
)
def test_malformed_messages_are_protocol_errors(payload: object) -> None:
    body = msgpack.packb(payload)
    decoder = w.Decoder()
    decoder.feed(w.LENGTH.pack(len(body)) + body)
    with pytest.raises(w.ProtocolError):
        decoder.messages()


def test_garbage_is_a_protocol_error() -> None:
    decoder = w.Decoder()
    decoder.feed(w.LENGTH.pack(3) + b"\xc1\xc1\xc1")
    with pytest.raises(w.ProtocolError):
        decoder.messages()


def test_int_enums_keep_their_type_inside_values() -> None:
    view = VALUES[5]
    decoded = w.decode_value(w.encode_value(view))
    assert type(decoded.status) is WalletStatus
    assert type(w.decode_value(w.encode_value([TransactionType.TRANSFER]))[0]) is TransactionType


# -- batches, packed ---------------------------------------------------------------------------


def _outcomes() -> list[object]:
    keyed = Transferred(
        transaction_id="tx_2", type=TransactionType.TRANSFER, from_wallet_id="a", to_wallet_id="b",
        asset="USD", amount=2**63 - 1, description=None, metadata={"m": [1]}, at_us=-5,
        idempotency=Idempotency(scope="owner:o", key="k", fingerprint=b"\x01" * 16),
    )
    return [
        Committed(source=keyed, lsn=9),
        Committed(source=_transferred(), lsn=10),
        Duplicate(record=IdempotencyRecord(fingerprint=b"f" * 16, lsn=3, at_us=4, source=keyed)),
        Rejection(reason=Reason.INSUFFICIENT_FUNDS, detail="w has 1 available, 5 requested"),
        Rejection(reason=Reason.IDEMPOTENCY_KEY_REUSED, detail="x"),
        # Not a shape the rows know: crosses generically, whole.
        Duplicate(record=IdempotencyRecord(fingerprint=b"g", lsn=1, at_us=2, source=Rejection(
            reason=Reason.SAME_WALLET, detail="odd"))),
    ]


def test_packed_transfers_and_outcomes_cross_whole() -> None:
    commands = [_transfer(index) for index in range(3)]
    commands.append(Transfer(
        transaction_id="tx_h", type=TransactionType.TRANSFER, from_wallet_id="a", to_wallet_id="b", amount=1,
        description="d", metadata=None, idempotency=None, owner_id="o", hold_timeout_s=30,
    ))
    rows = w.decode_value(w.encode_value(w.pack_transfers(commands)))
    assert w.unpack_transfers(rows) == commands
    outcomes = _outcomes()
    decoded = w.unpack_outcomes(w.decode_value(w.encode_value(w.pack_outcomes(outcomes))))
    assert decoded == outcomes
    assert [type(outcome) for outcome in decoded] == [type(outcome) for outcome in outcomes]
    assert type(decoded[0].event.type) is TransactionType


def test_outcomes_that_point_into_a_batch_record_cross_as_their_transfer() -> None:
    """A batch item's ``Committed`` and a replayed key's record refer to their row of the
    ``TransfersPosted`` record; they cross as that one transfer, packed or generic, never with
    the rest of the record."""
    keyed = Idempotency(scope="owner:o", key="k", fingerprint=b"\x01" * 16)
    moves = [Transferred(transaction_id=f"tx_{n}", type=TransactionType.TRANSFER, from_wallet_id="a",
                         to_wallet_id="b", asset="USD", amount=n + 1, description=None, metadata={"n": [n]},
                         at_us=7, idempotency=keyed if n == 2 else None) for n in range(500)]
    record = transfers_posted(moves, 7)
    outcomes: list[object] = [
        Committed(source=record, lsn=4, position=0),
        Committed(source=record, lsn=4, position=2),
        Duplicate(record=IdempotencyRecord(fingerprint=keyed.fingerprint, lsn=4, at_us=7, source=record, position=2)),
    ]
    assert [outcome.event for outcome in outcomes[:2]] == [moves[0], moves[2]]  # type: ignore[attr-defined]
    packed = w.encode_value(w.pack_outcomes(outcomes))
    decoded = w.unpack_outcomes(w.decode_value(packed))
    assert decoded == outcomes
    assert decoded[1].event == moves[2] and decoded[2].record.event == moves[2]
    for outcome in outcomes:
        generic = w.encode_value(outcome)
        assert w.decode_value(generic) == outcome
        assert len(generic) < 400  # the one transfer, not the record's 500 rows
    assert len(w.encode_value(record)) > 10_000


def test_a_batch_record_crosses_as_its_log_encoding_and_keys_answer_from_it() -> None:
    """A batch record that has its payload crosses as those bytes (one copy, not a value per
    row) and arrives equal, payload and all; a replayed key whose record keeps only the payload
    packs its transfer like any other."""
    moves = [Transferred(transaction_id=f"tx_{n}", type=TransactionType.TRANSFER, from_wallet_id="a",
                         to_wallet_id="b", asset="USD", amount=n + 1, description=None, metadata=None, at_us=3,
                         idempotency=Idempotency(scope="s", key=f"k{n}", fingerprint=b"f")) for n in range(300)]
    plain = transfers_posted(moves, 3)
    payload = encode_event(plain)
    record = decode_event(payload)
    assert isinstance(record, TransfersPosted) and record.payload == payload
    crossed = w.decode_value(w.encode_value([(5, record)]))
    assert crossed == [(5, record)] and crossed[0][1].payload == payload
    assert len(w.encode_value(record)) < len(payload) + 16 < len(w.encode_value(plain))
    duplicate = Duplicate(record=IdempotencyRecord(fingerprint=b"f", lsn=5, at_us=3, source=payload, position=7))
    (decoded,) = w.unpack_outcomes(w.decode_value(w.encode_value(w.pack_outcomes([duplicate]))))
    assert decoded == duplicate and decoded.record.event == moves[7]
    loaded = Duplicate(record=IdempotencyRecord(fingerprint=b"f", lsn=5, at_us=3, source=encode_event(moves[7])))
    packed = w.pack_outcomes([loaded])
    assert packed[0][0] == 1  # a row, as a transfer: a key loaded from a snapshot keeps the event's bytes
    assert w.unpack_outcomes(w.decode_value(w.encode_value(packed))) == [loaded]
    with pytest.raises(w.ProtocolError):
        w.decode_value(msgpack.packb(msgpack.ExtType(5, payload[:-3])))


@pytest.mark.parametrize("rows", [{"a": 1}, [[1, 2]], [[0]], [[2, "NO_SUCH_REASON", "x"]], [[7, 1]],
                                  [[0, 1, *([None] * 12)]]])
def test_malformed_rows_are_protocol_errors(rows: object) -> None:
    with pytest.raises(w.ProtocolError):
        if rows and isinstance(rows, list) and len(rows[0]) == 2 and rows[0][0] == 1:
            w.unpack_transfers(rows)
        else:
            w.unpack_outcomes(rows)  # type: ignore[arg-type]
    with pytest.raises(w.ProtocolError):
        w.unpack_transfers([[1, 2]])
