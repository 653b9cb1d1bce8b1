"""The messages between HTTP workers and the ledger process, as bytes: a sans-IO module (no
sockets, no event loop), tested on bytes the way h11 is, so the same messages can travel over
a Unix socket today and another transport later.

A **frame** is a 4-byte big-endian length followed by that many bytes of MessagePack: an array
of messages. A sender puts every message that is waiting into one frame (one ``write`` per
burst, not per request); a receiver feeds whatever bytes arrived and takes out every complete
message.

    message                         fields
    ------------------------------  ----------------------------------------------------------
    [REQUEST, id, method, args, auth]  ``id`` a correlation number unique per connection and
                                       direction; ``method`` a name the ledger serves; ``args``
                                       a list; ``auth`` the SHA-256 of the caller's user token
                                       (checked against the live token table before the
                                       method runs, so a revoked token stops at once), or nil
    [REPLY, id, value]                 the method's result
    [FAILED, id, code, detail]         the method refused or failed: ``code`` from ``FAILURES``
    [PUSH, topic, value]               unsolicited news from the ledger (no reply)

Values are MessagePack with four extension types, so the ledger's frozen value objects cross
whole: 1 a registered dataclass (its registry name, then its fields in declaration order),
2 a registered enum member (name, value), 3 a tuple, 4 a frozenset. Only the types registered
here decode: anything else is a ``ProtocolError``, never an arbitrary object.

Bounds: a frame is at most ``FRAME_BYTES_MAX``; a longer length prefix is a protocol error
(the connection is closed, nothing is guessed).
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Callable, Iterable
from typing import Any

import msgpack

from ledger import (
    CodecError,
    Entry,
    TransactionRow,
    WalletView,
    WithdrawalView,
    _model,
    decode_event,
)

REQUEST = 0
REPLY = 1
FAILED = 2
PUSH = 3

LENGTH = struct.Struct(">I")
# A batch of 8190 transfers with metadata encodes to a few MiB; the bound is far above that
# and far below what would hurt.
FRAME_BYTES_MAX = 64 * 1024 * 1024

# Why a request failed, as codes both sides agree on (the worker maps them to HTTP).
FAILURES = (
    "overloaded",        # a mailbox was full: nothing was done
    "storage_failed",    # the log cannot be written: nothing was done, or the outcome is unknown
    "unauthorized",      # the token was revoked or never existed
    "history_lagging",   # the read model did not reach the durable LSN in time
    "gone",              # events older than the log keeps (detail: the oldest LSN available)
    "not_ready",         # the ledger is still recovering or stopping
    "bad_request",       # a method or arguments the ledger does not serve (a bug in the caller)
    "internal",          # a bug in the ledger process (logged there)
)

_EXT_DATACLASS = 1
_EXT_ENUM = 2
_EXT_TUPLE = 3
_EXT_FROZENSET = 4
_EXT_BATCH_RECORD = 5  # a TransfersPosted as its log encoding (``ledger._codec``): one copy, not a value per row


class ProtocolError(Exception):
    """The peer sent bytes that are not this protocol: close the connection."""


class Failed(Exception):
    """A request the ledger answered with FAILED."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


# -- the registry of types that may cross ----------------------------------------------------


def _registered_dataclasses() -> list[type]:
    found = [
        value for value in vars(_model).values()
        if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == _model.__name__
    ]
    found += [WalletView, WithdrawalView, TransactionRow, Entry]
    return sorted(found, key=lambda cls: cls.__name__)


def _registered_enums() -> list[type[enum.Enum]]:
    found = [
        value for value in vars(_model).values()
        if isinstance(value, type) and issubclass(value, enum.Enum) and value.__module__ == _model.__name__
        and len(value) > 0
    ]
    return sorted(found, key=lambda cls: cls.__name__)


_DATACLASSES: dict[str, tuple[type, tuple[str, ...]]] = {
    cls.__name__: (cls, tuple(field.name for field in dataclasses.fields(cls)))
    for cls in _registered_dataclasses()
}
_DATACLASS_NAMES = {cls: name for name, (cls, _) in _DATACLASSES.items()}
_BUILDERS: dict[str, Callable[..., Any]] = {}
_ENUMS: dict[str, type[enum.Enum]] = {cls.__name__: cls for cls in _registered_enums()}
_ENUM_NAMES = {cls: name for name, cls in _ENUMS.items()}
assert len(_DATACLASS_NAMES) == len(_DATACLASSES), "two registered dataclasses share a name"
assert len(_ENUM_NAMES) == len(_ENUMS), "two registered enums share a name"


def register(cls: type) -> None:
    """Lets another dataclass cross (a type of the transport's own, such as a status)."""
    assert dataclasses.is_dataclass(cls)
    name = cls.__name__
    assert _DATACLASSES.get(name, (cls,))[0] is cls, f"another {name} is registered"
    _DATACLASSES[name] = (cls, tuple(field.name for field in dataclasses.fields(cls)))
    _DATACLASS_NAMES[cls] = name


def _builder(name: str) -> Callable[..., Any]:
    build = _BUILDERS.get(name)
    if build is None:
        cls, names = _DATACLASSES[name]
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        if params.frozen and "__slots__" in cls.__dict__ and "__post_init__" not in cls.__dict__:
            build = _model.frozen_builder(cls)
        else:
            def build(*values: Any, _cls: Any = cls, _names: tuple[str, ...] = names) -> Any:
                return _cls(**dict(zip(_names, values, strict=True)))
        _BUILDERS[name] = build
    return build


def _default(value: Any) -> Any:
    kind = type(value)
    # An outcome that points into a batch record crosses as the one transfer it stands for, not
    # with the whole record (up to a thousand rows); one kept encoded crosses decoded.
    if kind is _model.TransfersPosted and value.payload is not None:
        return msgpack.ExtType(_EXT_BATCH_RECORD, value.payload)
    if kind is _model.Committed and value.position >= 0:
        value = _model.new_committed(value.event, value.lsn, -1)
    elif kind is _model.IdempotencyRecord and (value.position >= 0 or type(value.source) is bytes):
        value = _model.new_idempotency_record(value.fingerprint, value.lsn, value.at_us, value.event, -1)
    name = _DATACLASS_NAMES.get(kind)
    if name is not None:
        _, names = _DATACLASSES[name]
        fields = [name, *(getattr(value, field) for field in names)]
        return msgpack.ExtType(_EXT_DATACLASS, _pack(fields))
    enum_name = _ENUM_NAMES.get(kind)
    if enum_name is not None:
        return msgpack.ExtType(_EXT_ENUM, _pack([enum_name, value.value]))
    if kind is tuple:
        return msgpack.ExtType(_EXT_TUPLE, _pack(list(value)))
    if kind is frozenset:
        return msgpack.ExtType(_EXT_FROZENSET, _pack(sorted(value, key=repr)))
    raise TypeError(f"{kind.__name__} cannot cross the wire")


def _ext(code: int, data: bytes) -> Any:
    if code == _EXT_BATCH_RECORD:
        try:
            record = decode_event(data)
        except CodecError as error:
            raise ProtocolError(f"a batch record that does not decode: {error}") from None
        if type(record) is not _model.TransfersPosted:
            raise ProtocolError(f"a batch record that is a {type(record).__name__}")
        return record
    values = _unpack(data)
    if code == _EXT_DATACLASS:
        if not isinstance(values, list) or not values or values[0] not in _DATACLASSES:
            raise ProtocolError("an unknown value type")
        name, *fields = values
        if len(fields) != len(_DATACLASSES[name][1]):
            raise ProtocolError(f"{name} with {len(fields)} fields")
        return _builder(name)(*fields)
    if code == _EXT_ENUM:
        if not isinstance(values, list) or len(values) != 2 or values[0] not in _ENUMS:
            raise ProtocolError("an unknown enum")
        try:
            return _ENUMS[values[0]](values[1])
        except ValueError:
            raise ProtocolError(f"no {values[0]} {values[1]!r}") from None
    if code == _EXT_TUPLE and isinstance(values, list):
        return tuple(values)
    if code == _EXT_FROZENSET and isinstance(values, list):
        return frozenset(values)
    raise ProtocolError(f"extension type {code}")


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, use_bin_type=True, strict_types=True)


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, ext_hook=_ext, raw=False, strict_map_key=False)
    except ProtocolError:
        raise
    except Exception as error:  # msgpack's own errors and what a builder refuses
        raise ProtocolError(f"undecodable: {error}") from None


def encode_value(value: Any) -> bytes:
    """One value as the wire carries it (for tests and other transports)."""
    return _pack(value)


def decode_value(data: bytes) -> Any:
    return _unpack(data)


# -- frames ------------------------------------------------------------------------------------


def frame(messages: Iterable[list[Any]]) -> bytes:
    """The bytes of one frame carrying ``messages`` (each already a list as in the table)."""
    payload = _pack(list(messages))
    if len(payload) > FRAME_BYTES_MAX:
        raise ValueError(f"a frame of {len(payload)} bytes is over {FRAME_BYTES_MAX}")
    return LENGTH.pack(len(payload)) + payload


def request(correlation: int, method: str, args: list[Any], auth: bytes | None = None) -> list[Any]:
    return [REQUEST, correlation, method, args, auth]


def reply(correlation: int, value: Any) -> list[Any]:
    return [REPLY, correlation, value]


def failed(correlation: int, code: str, detail: str) -> list[Any]:
    assert code in FAILURES, code
    return [FAILED, correlation, code, detail]


def push(topic: str, value: Any) -> list[Any]:
    return [PUSH, topic, value]


class Decoder:
    """Bytes in, messages out. ``feed`` what the transport delivered; ``messages`` returns every
    message of every complete frame so far, in order. Raises ``ProtocolError`` on bytes that
    are not frames of this protocol (the connection is beyond repair then)."""

    def __init__(self, *, frame_bytes_max: int = FRAME_BYTES_MAX) -> None:
        self._buffer = bytearray()
        self._frame_bytes_max = frame_bytes_max

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def messages(self) -> list[list[Any]]:
        found: list[list[Any]] = []
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= LENGTH.size:
            (length,) = LENGTH.unpack_from(buffer, offset)
            if length > self._frame_bytes_max:
                raise ProtocolError(f"a frame of {length} bytes is over {self._frame_bytes_max}")
            end = offset + LENGTH.size + length
            if len(buffer) < end:
                break
            batch = _unpack(bytes(buffer[offset + LENGTH.size:end]))
            if not isinstance(batch, list):
                raise ProtocolError("a frame is not an array of messages")
            for message in batch:
                found.append(_checked(message))
            offset = end
        if offset:
            del buffer[:offset]
        return found


def _checked(message: Any) -> list[Any]:
    if not isinstance(message, list) or not message:
        raise ProtocolError("a message is not an array")
    kind = message[0]
    if kind == REQUEST:
        if (len(message) != 5 or type(message[1]) is not int or type(message[2]) is not str
                or type(message[3]) is not list or not (message[4] is None or type(message[4]) is bytes)):
            raise ProtocolError("a malformed request")
    elif kind == REPLY:
        if len(message) != 3 or type(message[1]) is not int:
            raise ProtocolError("a malformed reply")
    elif kind == FAILED:
        if (len(message) != 4 or type(message[1]) is not int or message[2] not in FAILURES
                or type(message[3]) is not str):
            raise ProtocolError("a malformed failure")
    elif kind == PUSH:
        if len(message) != 3 or type(message[1]) is not str:
            raise ProtocolError("a malformed push")
    else:
        raise ProtocolError(f"message kind {kind!r}")
    return message


# -- batches, packed --------------------------------------------------------------------------
#
# A batch of transfers crosses as rows of plain values rather than one extension value per
# object: a batch of 1000 items is 3,000 nested objects the generic codec would pack and build
# one by one (measured: encoding and decoding them was 38% of the ledger process's CPU under
# batch load). The rows carry the same fields, and the same objects are rebuilt on the other
# side with the ledger's fast builders.
#
#   transfer row  [transaction_id, type, from, to, amount, description, metadata,
#                  scope, key, fingerprint, owner_id, hold_timeout_s]   (scope None: no key)
#   outcome row   [0, lsn, *transferred]                 Committed
#                 [1, fingerprint, lsn, at_us, *transferred]  Duplicate of a transfer
#                 [2, reason name, detail]               Rejection
#                 [3, value]                             anything else, generically encoded
#   transferred   [transaction_id, type, from, to, asset, amount, description, metadata, at_us,
#                  scope, key, fingerprint]


def pack_transfers(commands: list[Any]) -> list[list[Any]]:
    rows = []
    for c in commands:
        key = c.idempotency
        rows.append([
            c.transaction_id, int(c.type), c.from_wallet_id, c.to_wallet_id, c.amount, c.description,
            c.metadata, None if key is None else key.scope, None if key is None else key.key,
            None if key is None else key.fingerprint, c.owner_id, c.hold_timeout_s,
        ])
    return rows


# The enum's call costs more than the rest of a row; a table of its members does not.
_TRANSACTION_TYPES = {kind.value: kind for kind in _model.TransactionType}


def unpack_transfers(rows: list[Any]) -> list[Any]:
    if type(rows) is not list:
        raise ProtocolError("transfer rows are not a list")
    build, key_of, kinds = _model.new_transfer, _model.new_idempotency, _TRANSACTION_TYPES
    commands = []
    try:
        for row in rows:
            tid, type_, source, target, amount, description, metadata, scope, key, fingerprint, owner, hold = row
            idempotency = None if scope is None else key_of(scope, key, fingerprint)
            commands.append(build(tid, kinds[type_], source, target, amount, description, metadata,
                                  idempotency, owner, hold))
    except (TypeError, ValueError, KeyError) as error:
        raise ProtocolError(f"a malformed transfer row: {error}") from None
    return commands


def _row_of(row: Any, at_us: int) -> list[Any]:
    """A transfer's packed row from its ``TransferRow`` and time (the unpacking is
    ``_transferred``)."""
    (tid, type_, source, target, asset, amount, description, metadata, key) = row
    if key is None:
        return [tid, int(type_), source, target, asset, amount, description, metadata, at_us, None, None, None]
    return [tid, int(type_), source, target, asset, amount, description, metadata, at_us, *key]


def _movement_row(source: Any, position: int) -> list[Any] | None:
    """The packed row of an outcome's transfer (``Committed`` or ``IdempotencyRecord``: source
    and position), from its batch record's row when it has one (no ``Transferred`` built); None
    when the outcome is not a transfer (it crosses generically)."""
    if position >= 0:
        record = _model.posted_record(source)
        return _row_of(record.rows[position], record.at_us)
    event = _model.outcome_of(source, position)
    if type(event) is not _model.Transferred:
        return None
    return _row_of(_model.transfer_row(event), event.at_us)


def _transferred(row: list[Any]) -> Any:
    tid, type_, source, target, asset, amount, description, metadata, at_us, scope, key, fingerprint = row
    idempotency = None if scope is None else _model.new_idempotency(scope, key, fingerprint)
    return _model.new_transferred(tid, _TRANSACTION_TYPES[type_], source, target, asset, amount,
                                  description, metadata, at_us, idempotency)


def pack_outcomes(outcomes: list[Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for outcome in outcomes:
        kind = type(outcome)
        row: list[Any] | None = None
        if kind is _model.Committed:
            row = _movement_row(outcome.source, outcome.position)
            if row is not None:
                rows.append([0, outcome.lsn, *row])
        elif kind is _model.Duplicate:
            record = outcome.record
            row = _movement_row(record.source, record.position)
            if row is not None:
                rows.append([1, record.fingerprint, record.lsn, record.at_us, *row])
        elif kind is _model.Rejection:
            rows.append([2, outcome.reason.name, outcome.detail])
            continue
        if row is None:
            rows.append([3, outcome])
    return rows


def unpack_outcomes(rows: list[Any]) -> list[Any]:
    if type(rows) is not list:
        raise ProtocolError("outcome rows are not a list")
    outcomes: list[Any] = []
    try:
        for row in rows:
            tag = row[0]
            if tag == 0:
                outcomes.append(_model.new_committed(_transferred(row[2:]), row[1], -1))
            elif tag == 1:
                record = _model.new_idempotency_record(row[1], row[2], row[3], _transferred(row[4:]), -1)
                outcomes.append(_model.Duplicate(record=record))
            elif tag == 2:
                outcomes.append(_model.Rejection(reason=_model.Reason[row[1]], detail=row[2]))
            elif tag == 3:
                outcomes.append(row[1])
            else:
                raise ProtocolError(f"outcome tag {tag!r}")
    except (TypeError, ValueError, KeyError, IndexError) as error:
        raise ProtocolError(f"a malformed outcome row: {error}") from None
    return outcomes
