"""The ledger's own codec for log records: events to msgpack payload bytes and back.

A payload is a msgpack array ``[CODEC_VERSION, kind, field, ...]`` with the fields in the order
of the tables below. Every field a version once wrote stays decodable: a new field goes at the
end with a new version, and ``decode`` keeps the branches for the old ones. ``wal/`` never sees
inside a payload.

    kind | event                | fields after the kind
    -----|----------------------|---------------------------------------------------------------
    1    | AssetCreated         | code, scale, at_us
    2    | WalletCreated        | wallet_id, owner_id, asset, metadata, at_us, idempotency
    3    | WalletStatusChanged  | wallet_id, status, at_us
    4    | Transferred          | transaction_id, type, from, to, asset, amount, description,
         |                      | metadata, at_us, idempotency
    5    | TokenCreated         | token_hash, prefix, owner_id, at_us
    6    | TokenRevoked         | prefix, at_us
    7    | TransfersPosted      | at_us, [[transaction_id, type, from, to, asset, amount,
         |                      |          description, metadata, idempotency], ...]
    11   | HoldCreated          | transaction_id, type, from, to, asset, amount, description,
         |                      | metadata, at_us, deadline_us, destination, idempotency
    12   | HoldCaptured         | transaction_id, type, from, to, asset, amount, held_amount,
         |                      | description, metadata, created_at_us, created_lsn, at_us,
         |                      | reference, idempotency
    13   | HoldVoided           | transaction_id, type, from, to, asset, amount, description,
         |                      | metadata, created_at_us, created_lsn, at_us, reason, detail,
         |                      | idempotency
    14   | WithdrawalUpdated    | withdrawal_id, wallet_id, status, attempts, last_error,
         |                      | next_attempt_at_us, at_us
    15   | AlertCreated         | alert_id, wallet_id, field, direction, threshold, triggered,
         |                      | at_us
    16   | AlertDeleted         | alert_id, wallet_id, at_us
    17   | AlertsTriggered      | at_us, [[alert_id, wallet_id, field, direction, threshold,
         |                      |          value, transaction_id], ...]
    18   | RequestsRefused      | at_us, [[scope, key, fingerprint, reason, detail], ...]
    19   | Refunded             | transaction_id, refund_of, from, to, asset, amount,
         |                      | original_amount, description, metadata, at_us, idempotency
    20   | WalletUpdated        | wallet_id, overdraft_limit, daily_limit, monthly_limit,
         |                      | metadata, at_us (a spend limit nil: none)

Kinds 15-17 (balance alerts) came after the first logs were written: those logs hold none, and
still decode (``tests/fixtures/log-v1``). ``field`` is ``AlertField`` (0 available, 1 balance),
``direction`` is ``AlertDirection`` (0 below, 1 above), ``triggered`` a boolean. Kinds 18-20
came later still, and older logs hold none of them:

- 18 (final outcomes: a keyed request the ledger refused): ``reason`` is the ``Reason``
  member's value (a string: ``"insufficient_funds"``, ``"wallet_not_found:receiver"``), as
  stable as the API's codes. ``encode_outcome`` / ``decode_outcome`` store one idempotency
  record's outcome on its own (the on-disk key index): an event as above, or a refusal as a
  kind 18 payload holding that one refusal.
- 19 (refunds): its transaction type is implied (``REFUND``); ``original_amount`` is the
  refunded transaction's posted amount, so replay rebuilds the refunded-so-far tally from the
  log alone (ADR 0011).
- 20 (wallet limits and metadata).

``idempotency`` is ``nil`` or ``[scope, key, fingerprint]``. A ``TransfersPosted`` record holds
1 to ``BATCH_ITEMS_MAX`` transfers, each a ``Transferred`` without its ``at_us`` (the record's);
the time is written once and the whole record is one msgpack array, so a batch pays for one
encode call and one frame checksum.

Kinds 21-28 are written only by a ledger that is one group of several (ADR 0013): 21
``GroupConfigured``, 22-25 the steps of a transfer between groups (reservation, settlement,
transit settled, aborted), and 26-28 those of an atomic batch whose senders are in several
groups: ``BatchPrepared`` (batch, coordinator, at_us, then the rows as in kind 7),
``BatchDecided`` (batch, committed, at_us) and ``BatchReleased`` (batch, at_us). A kind 7 record
that posts such a batch's part carries the batch's id as a fourth field (``settles``).
"""

from __future__ import annotations

from typing import Any

import msgpack

from ledger._model import (
    BATCH_ITEMS_MAX,
    FIRINGS_PER_RECORD_MAX,
    AlertCreated,
    AlertDeleted,
    AlertDirection,
    AlertField,
    AlertFired,
    AlertsTriggered,
    AssetCreated,
    BatchDecided,
    BatchPrepared,
    BatchReleased,
    CreditReserved,
    Event,
    GroupConfigured,
    HoldCaptured,
    HoldCreated,
    HoldVoided,
    Idempotency,
    Reason,
    Refunded,
    Rejection,
    RequestsRefused,
    ReservationSettled,
    TokenCreated,
    TokenRevoked,
    TransactionType,
    Transferred,
    TransferRow,
    TransfersAborted,
    TransfersPosted,
    TransitSettled,
    VoidReason,
    WalletCreated,
    WalletStatus,
    WalletStatusChanged,
    WalletUpdated,
    WithdrawalStatus,
    WithdrawalUpdated,
    new_idempotency,
)

CODEC_VERSION = 1
_ASSET_CREATED = 1
_WALLET_CREATED = 2
_WALLET_STATUS_CHANGED = 3
_TRANSFERRED = 4
_TOKEN_CREATED = 5
_TOKEN_REVOKED = 6
_TRANSFERS_POSTED = 7
_HOLD_CREATED = 11
_HOLD_CAPTURED = 12
_HOLD_VOIDED = 13
_WITHDRAWAL_UPDATED = 14
_ALERT_CREATED = 15
_ALERT_DELETED = 16
_ALERTS_TRIGGERED = 17
_REQUESTS_REFUSED = 18
_WALLET_UPDATED = 20
_REFUNDED = 19
# Transfers between ledger groups (ADR 0013).
_GROUP_CONFIGURED = 21
_CREDIT_RESERVED = 22
_RESERVATION_SETTLED = 23
_TRANSIT_SETTLED = 24
_TRANSFERS_ABORTED = 25
_BATCH_PREPARED = 26
_BATCH_DECIDED = 27
_BATCH_RELEASED = 28

_packb = msgpack.Packer(use_bin_type=True).pack


class CodecError(Exception):
    """A payload that verified its checksum but does not decode: a bug or a foreign file."""


# The kinds of record an idempotency record may answer with.
KEYED_KINDS = frozenset({_TRANSFERRED, _WALLET_CREATED, _HOLD_CREATED, _HOLD_CAPTURED, _HOLD_VOIDED, _REFUNDED})


def keyed_kind(payload: bytes) -> int:
    """The kind of record ``payload`` encodes, read from its first bytes alone (a msgpack array
    header, then the codec version and the kind, one byte each), when it is a kind an
    idempotency record may hold; raises CodecError otherwise. A snapshot load checks its keys'
    records this way: decoding them all was half of the load (``decode_event`` checks the rest
    when a retry's answer is built, and ``wallet snapshot verify`` decodes them all)."""
    size = len(payload)
    first = payload[0] if size else 0
    at = 1 if 0x90 <= first <= 0x9F else 3 if first == 0xDC else size
    if at + 2 > size or payload[at] != CODEC_VERSION or payload[at + 1] not in KEYED_KINDS:
        raise CodecError(f"not a record an idempotency record may hold: {payload[:8]!r}")
    return payload[at + 1]


def _idem_out(idempotency: Idempotency | None) -> list[Any] | None:
    if idempotency is None:
        return None
    return [idempotency.scope, idempotency.key, idempotency.fingerprint]


def _int(value: Any) -> int:
    if type(value) is not int:
        raise CodecError(f"expected an integer, found {type(value).__name__}")
    return value


def _str(value: Any) -> str:
    if type(value) is not str:
        raise CodecError(f"expected a string, found {type(value).__name__}")
    return value


def _optional_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _last_optional(rest: list[Any], what: str) -> str | None:
    """An optional last field: absent, or one string."""
    if not rest:
        return None
    if len(rest) != 1:
        raise CodecError(f"a {what} record has {len(rest)} fields too many")
    return _str(rest[0])


def _reservation_tail(refund_of: str | None, capture_of: str | None) -> tuple[Any, ...]:
    """A reservation record's optional last fields: nothing for a transfer, ``refund_of`` for a
    refund, nil and ``capture_of`` for a hold's capture."""
    if capture_of is not None:
        return (refund_of, capture_of)
    return () if refund_of is None else (refund_of,)


def _reservation_of(tail: list[Any]) -> tuple[str | None, str | None]:
    if len(tail) == 2:
        refund_of = _optional_str(tail[0])
        return refund_of, _str(tail[1])
    return _last_optional(tail, "reservation"), None


def _bytes(value: Any) -> bytes:
    if type(value) is not bytes:
        raise CodecError(f"expected bytes, found {type(value).__name__}")
    return value


def _metadata(value: Any) -> dict[str, Any] | None:
    if value is not None and type(value) is not dict:
        raise CodecError(f"expected a map or nil, found {type(value).__name__}")
    return value


def _idem_in(value: Any) -> Idempotency | None:
    if value is None:
        return None
    if type(value) is not list or len(value) != 3:
        raise CodecError("idempotency must be nil or [scope, key, fingerprint]")
    scope, key, fingerprint = value
    if type(scope) is not str or type(key) is not str or type(fingerprint) is not bytes:
        raise CodecError("idempotency is [string, string, bytes]")
    return new_idempotency(scope, key, fingerprint)


_TRANSACTION_TYPES = {kind.value: kind for kind in TransactionType}


def _transfers_posted(at_us: int, items: Any, payload: bytes, settles: str | None = None) -> TransfersPosted:
    # The one record that carries up to a thousand transfers, so replay and the projector spend
    # their time here: the field checks are inline (one ``type`` test each, the same rules as
    # ``_str``, ``_int`` and friends), the type comes from a table, not the enum's call, and each
    # item becomes a ``TransferRow`` tuple, not a ``Transferred``.
    if type(items) is not list or not 1 <= len(items) <= BATCH_ITEMS_MAX:
        raise CodecError(f"a transfers record holds 1 to {BATCH_ITEMS_MAX} transfers")
    kinds = _TRANSACTION_TYPES
    rows: list[TransferRow] = []
    append = rows.append
    for item in items:
        if type(item) is not list or len(item) != 9:
            raise CodecError("a transfer in a transfers record is an array of 9 fields")
        (transaction_id, type_, from_id, to_id, asset, amount, description, metadata, idem) = item
        if (type(transaction_id) is not str or type(from_id) is not str or type(to_id) is not str
                or type(asset) is not str or type(amount) is not int or type(type_) is not int):
            raise CodecError("a transfer in a transfers record has a field of the wrong type")
        kind = kinds.get(type_)
        if kind is None:
            raise CodecError(f"unknown transaction type {type_}")
        if description is not None and type(description) is not str:
            raise CodecError(f"expected a string or nil, found {type(description).__name__}")
        if metadata is not None and type(metadata) is not dict:
            raise CodecError(f"expected a map or nil, found {type(metadata).__name__}")
        if idem is not None:
            if (type(idem) is not list or len(idem) != 3 or type(idem[0]) is not str or type(idem[1]) is not str
                    or type(idem[2]) is not bytes):
                raise CodecError("idempotency is nil or [string, string, bytes]")
            append((transaction_id, kind, from_id, to_id, asset, amount, description, metadata,
                    (idem[0], idem[1], idem[2])))
        else:
            append((transaction_id, kind, from_id, to_id, asset, amount, description, metadata, None))
    return TransfersPosted(rows=tuple(rows), at_us=at_us, payload=payload, settles=settles)


def encode_event(event: Event) -> bytes:
    if isinstance(event, Transferred):
        return _packb(
            [
                CODEC_VERSION, _TRANSFERRED, event.transaction_id, int(event.type),
                event.from_wallet_id, event.to_wallet_id, event.asset, event.amount,
                event.description, event.metadata, event.at_us, _idem_out(event.idempotency),
            ]
        )
    if isinstance(event, WalletCreated):
        return _packb(
            [
                CODEC_VERSION, _WALLET_CREATED, event.wallet_id, event.owner_id, event.asset,
                event.metadata, event.at_us, _idem_out(event.idempotency),
            ]
        )
    if isinstance(event, WalletStatusChanged):
        return _packb(
            [CODEC_VERSION, _WALLET_STATUS_CHANGED, event.wallet_id, int(event.status), event.at_us]
        )
    if isinstance(event, AssetCreated):
        return _packb([CODEC_VERSION, _ASSET_CREATED, event.code, event.scale, event.at_us])
    if isinstance(event, TokenCreated):
        return _packb(
            [CODEC_VERSION, _TOKEN_CREATED, event.token_hash, event.prefix, event.owner_id, event.at_us]
        )
    if isinstance(event, TransfersPosted):
        # The rows as they are: tuples are written as arrays, and the type enum (an int
        # subclass) as its value, so the record is one packing call.
        assert 1 <= len(event.rows) <= BATCH_ITEMS_MAX, len(event.rows)
        if event.settles is not None:  # a group's part of a batch of several sending groups
            return _packb([CODEC_VERSION, _TRANSFERS_POSTED, event.at_us, event.rows, event.settles])
        return _packb([CODEC_VERSION, _TRANSFERS_POSTED, event.at_us, event.rows])
    if isinstance(event, TokenRevoked):
        return _packb([CODEC_VERSION, _TOKEN_REVOKED, event.prefix, event.at_us])
    if isinstance(event, HoldCreated):
        return _packb(
            [
                CODEC_VERSION, _HOLD_CREATED, event.transaction_id, int(event.type),
                event.from_wallet_id, event.to_wallet_id, event.asset, event.amount,
                event.description, event.metadata, event.at_us, event.deadline_us,
                event.destination, _idem_out(event.idempotency),
            ]
        )
    if isinstance(event, HoldCaptured):
        return _packb(
            [
                CODEC_VERSION, _HOLD_CAPTURED, event.transaction_id, int(event.type),
                event.from_wallet_id, event.to_wallet_id, event.asset, event.amount,
                event.held_amount, event.description, event.metadata, event.created_at_us,
                event.created_lsn, event.at_us, event.reference, _idem_out(event.idempotency),
                *(() if event.reservation is None else (event.reservation,)),
            ]
        )
    if isinstance(event, HoldVoided):
        return _packb(
            [
                CODEC_VERSION, _HOLD_VOIDED, event.transaction_id, int(event.type),
                event.from_wallet_id, event.to_wallet_id, event.asset, event.amount,
                event.description, event.metadata, event.created_at_us, event.created_lsn,
                event.at_us, int(event.reason), event.detail, _idem_out(event.idempotency),
            ]
        )
    if isinstance(event, WithdrawalUpdated):
        return _packb(
            [
                CODEC_VERSION, _WITHDRAWAL_UPDATED, event.withdrawal_id, event.wallet_id,
                int(event.status), event.attempts, event.last_error, event.next_attempt_at_us,
                event.at_us,
            ]
        )
    if isinstance(event, AlertCreated):
        return _packb(
            [
                CODEC_VERSION, _ALERT_CREATED, event.alert_id, event.wallet_id, int(event.field),
                int(event.direction), event.threshold, event.triggered, event.at_us,
            ]
        )
    if isinstance(event, AlertDeleted):
        return _packb([CODEC_VERSION, _ALERT_DELETED, event.alert_id, event.wallet_id, event.at_us])
    if isinstance(event, AlertsTriggered):
        assert 1 <= len(event.firings) <= FIRINGS_PER_RECORD_MAX, len(event.firings)
        return _packb(
            [
                CODEC_VERSION, _ALERTS_TRIGGERED, event.at_us,
                [[firing.alert_id, firing.wallet_id, int(firing.field), int(firing.direction), firing.threshold,
                  firing.value, firing.transaction_id] for firing in event.firings],
            ]
        )
    if isinstance(event, RequestsRefused):
        assert 1 <= len(event.refusals) <= BATCH_ITEMS_MAX, len(event.refusals)
        return _packb(
            [
                CODEC_VERSION, _REQUESTS_REFUSED, event.at_us,
                [(idempotency.scope, idempotency.key, idempotency.fingerprint, rejection.reason.value,
                  rejection.detail) for idempotency, rejection in event.refusals],
            ]
        )
    if isinstance(event, WalletUpdated):
        return _packb(
            [
                CODEC_VERSION, _WALLET_UPDATED, event.wallet_id, event.overdraft_limit, event.daily_limit,
                event.monthly_limit, event.metadata, event.at_us,
            ]
        )
    if isinstance(event, Refunded):
        return _packb(
            [
                CODEC_VERSION, _REFUNDED, event.transaction_id, event.refund_of, event.from_wallet_id,
                event.to_wallet_id, event.asset, event.amount, event.original_amount, event.description,
                event.metadata, event.at_us, _idem_out(event.idempotency),
            ]
        )
    if isinstance(event, CreditReserved):
        return _packb(
            [
                CODEC_VERSION, _CREDIT_RESERVED, event.transaction_id, event.wallet_id, event.asset, event.amount,
                event.from_wallet_id, event.from_group, event.description, event.metadata, event.at_us,
                *_reservation_tail(event.refund_of, event.capture_of),
            ]
        )
    if isinstance(event, ReservationSettled):
        return _packb(
            [
                CODEC_VERSION, _RESERVATION_SETTLED, event.transaction_id, event.wallet_id, event.asset,
                event.amount, event.from_wallet_id, event.from_group, event.description, event.metadata,
                event.reserved_at_us, event.credited, event.at_us,
                *_reservation_tail(event.refund_of, event.capture_of),
            ]
        )
    if isinstance(event, TransitSettled):
        return _packb([CODEC_VERSION, _TRANSIT_SETTLED, list(event.transaction_ids), event.at_us])
    if isinstance(event, TransfersAborted):
        return _packb([CODEC_VERSION, _TRANSFERS_ABORTED, list(event.transaction_ids), event.at_us])
    if isinstance(event, GroupConfigured):
        return _packb([CODEC_VERSION, _GROUP_CONFIGURED, event.group, event.groups, event.at_us])
    if isinstance(event, BatchPrepared):
        assert 1 <= len(event.rows) <= BATCH_ITEMS_MAX, len(event.rows)
        return _packb([CODEC_VERSION, _BATCH_PREPARED, event.batch, event.coordinator, event.at_us, event.rows])
    if isinstance(event, BatchDecided):
        return _packb([CODEC_VERSION, _BATCH_DECIDED, event.batch, event.committed, event.at_us])
    if isinstance(event, BatchReleased):
        return _packb([CODEC_VERSION, _BATCH_RELEASED, event.batch, event.at_us])
    raise AssertionError(f"unknown event {event!r}")


def _ids(value: Any) -> tuple[str, ...]:
    if type(value) is not list or not value:
        raise CodecError("expected a non-empty array of transaction ids")
    return tuple(_str(item) for item in value)


def encode_outcome(outcome: Event | Rejection, at_us: int, idempotency: Idempotency) -> bytes:
    """One idempotency record's outcome alone (``IdempotencyRecord.event``): its event, or a
    refusal as a one-refusal kind 18 payload."""
    if isinstance(outcome, Rejection):
        return encode_event(RequestsRefused(refusals=((idempotency, outcome),), at_us=at_us))
    return encode_event(outcome)


def decode_outcome(payload: bytes) -> Event | Rejection:
    """The inverse of ``encode_outcome``. Raises CodecError."""
    event = decode_event(payload)
    if isinstance(event, RequestsRefused):
        if len(event.refusals) != 1:
            raise CodecError("a stored refusal holds exactly one rejection")
        return event.refusals[0][1]
    return event


_REASONS = {reason.value: reason for reason in Reason}


def _requests_refused(at_us: int, items: Any) -> RequestsRefused:
    if type(items) is not list or not 1 <= len(items) <= BATCH_ITEMS_MAX:
        raise CodecError(f"a refusals record holds 1 to {BATCH_ITEMS_MAX} refusals")
    refusals = []
    for item in items:
        if type(item) is not list or len(item) != 5:
            raise CodecError("a refusal is an array of 5 fields")
        scope, key, fingerprint, reason, detail = item
        found = _REASONS.get(_str(reason))
        if found is None:
            raise CodecError(f"unknown rejection reason {reason!r:.80}")
        idempotency = _idem_in([scope, key, fingerprint])
        assert idempotency is not None
        refusals.append((idempotency, Rejection(reason=found, detail=_str(detail))))
    return RequestsRefused(refusals=tuple(refusals), at_us=at_us)


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise CodecError(f"expected a boolean, found {type(value).__name__}")
    return value


def _alerts_triggered(at_us: int, items: Any) -> AlertsTriggered:
    if type(items) is not list or not 1 <= len(items) <= FIRINGS_PER_RECORD_MAX:
        raise CodecError(f"an alerts record holds 1 to {FIRINGS_PER_RECORD_MAX} firings")
    firings = []
    for item in items:
        if type(item) is not list or len(item) != 7:
            raise CodecError("a firing is an array of 7 fields")
        alert_id, wallet_id, field, direction, threshold, value, transaction_id = item
        firings.append(AlertFired(
            alert_id=_str(alert_id), wallet_id=_str(wallet_id), field=AlertField(_int(field)),
            direction=AlertDirection(_int(direction)), threshold=_int(threshold), value=_int(value),
            transaction_id=_str(transaction_id),
        ))
    return AlertsTriggered(firings=tuple(firings), at_us=at_us)


def decode_event(payload: bytes) -> Event:
    """Decodes a payload, checking every field's type: a record that decodes is one ``apply``
    can take. Anything else raises CodecError (never another exception)."""
    try:
        fields = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        if type(fields) is not list or len(fields) < 2:
            raise CodecError("a record is an array [version, kind, ...]")
        version, kind, *rest = fields
        if _int(version) != CODEC_VERSION:
            raise CodecError(f"unknown record version {version}")
        kind = _int(kind)
        if kind == _TRANSFERRED:
            (transaction_id, type_, from_id, to_id, asset, amount, description, metadata, at_us,
             idem) = rest
            return Transferred(
                transaction_id=_str(transaction_id), type=TransactionType(_int(type_)),
                from_wallet_id=_str(from_id), to_wallet_id=_str(to_id), asset=_str(asset),
                amount=_int(amount), description=_optional_str(description),
                metadata=_metadata(metadata), at_us=_int(at_us), idempotency=_idem_in(idem),
            )
        if kind == _WALLET_CREATED:
            wallet_id, owner_id, asset, metadata, at_us, idem = rest
            return WalletCreated(
                wallet_id=_str(wallet_id), owner_id=_str(owner_id), asset=_str(asset),
                metadata=_metadata(metadata), at_us=_int(at_us), idempotency=_idem_in(idem),
            )
        if kind == _WALLET_STATUS_CHANGED:
            wallet_id, status, at_us = rest
            return WalletStatusChanged(
                wallet_id=_str(wallet_id), status=WalletStatus(_int(status)), at_us=_int(at_us)
            )
        if kind == _ASSET_CREATED:
            code, scale, at_us = rest
            return AssetCreated(code=_str(code), scale=_int(scale), at_us=_int(at_us))
        if kind == _TOKEN_CREATED:
            token_hash, prefix, owner_id, at_us = rest
            return TokenCreated(
                token_hash=_bytes(token_hash), prefix=_str(prefix), owner_id=_str(owner_id),
                at_us=_int(at_us),
            )
        if kind == _TOKEN_REVOKED:
            prefix, at_us = rest
            return TokenRevoked(prefix=_str(prefix), at_us=_int(at_us))
        if kind == _HOLD_CREATED:
            (transaction_id, type_, from_id, to_id, asset, amount, description, metadata, at_us,
             deadline_us, destination, idem) = rest
            return HoldCreated(
                transaction_id=_str(transaction_id), type=TransactionType(_int(type_)),
                from_wallet_id=_str(from_id), to_wallet_id=_str(to_id), asset=_str(asset),
                amount=_int(amount), description=_optional_str(description),
                metadata=_metadata(metadata), at_us=_int(at_us), deadline_us=_int(deadline_us),
                destination=_metadata(destination), idempotency=_idem_in(idem),
            )
        if kind == _HOLD_CAPTURED:
            (transaction_id, type_, from_id, to_id, asset, amount, held_amount, description,
             metadata, created_at_us, created_lsn, at_us, reference, idem, *reservation) = rest
            return HoldCaptured(
                transaction_id=_str(transaction_id), type=TransactionType(_int(type_)),
                from_wallet_id=_str(from_id), to_wallet_id=_str(to_id), asset=_str(asset),
                amount=_int(amount), held_amount=_int(held_amount),
                description=_optional_str(description), metadata=_metadata(metadata),
                created_at_us=_int(created_at_us), created_lsn=_int(created_lsn), at_us=_int(at_us),
                reference=_optional_str(reference), idempotency=_idem_in(idem),
                reservation=_last_optional(reservation, "capture"),
            )
        if kind == _HOLD_VOIDED:
            (transaction_id, type_, from_id, to_id, asset, amount, description, metadata,
             created_at_us, created_lsn, at_us, reason, detail, idem) = rest
            return HoldVoided(
                transaction_id=_str(transaction_id), type=TransactionType(_int(type_)),
                from_wallet_id=_str(from_id), to_wallet_id=_str(to_id), asset=_str(asset),
                amount=_int(amount), description=_optional_str(description),
                metadata=_metadata(metadata), created_at_us=_int(created_at_us),
                created_lsn=_int(created_lsn), at_us=_int(at_us), reason=VoidReason(_int(reason)), detail=_optional_str(detail),
                idempotency=_idem_in(idem),
            )
        if kind == _WITHDRAWAL_UPDATED:
            (withdrawal_id, wallet_id, status, attempts, last_error, next_attempt_at_us,
             at_us) = rest
            return WithdrawalUpdated(
                withdrawal_id=_str(withdrawal_id), wallet_id=_str(wallet_id),
                status=WithdrawalStatus(_int(status)), attempts=_int(attempts),
                last_error=_optional_str(last_error), next_attempt_at_us=_int(next_attempt_at_us),
                at_us=_int(at_us),
            )
        if kind == _TRANSFERS_POSTED:
            if len(rest) == 3:  # a group's part of a batch of several sending groups
                at_us, items, settles = rest
                return _transfers_posted(_int(at_us), items, payload, _str(settles))
            at_us, items = rest
            return _transfers_posted(_int(at_us), items, payload)
        if kind == _ALERT_CREATED:
            alert_id, wallet_id, field, direction, threshold, triggered, at_us = rest
            return AlertCreated(
                alert_id=_str(alert_id), wallet_id=_str(wallet_id), field=AlertField(_int(field)),
                direction=AlertDirection(_int(direction)), threshold=_int(threshold),
                triggered=_bool(triggered), at_us=_int(at_us),
            )
        if kind == _ALERT_DELETED:
            alert_id, wallet_id, at_us = rest
            return AlertDeleted(alert_id=_str(alert_id), wallet_id=_str(wallet_id), at_us=_int(at_us))
        if kind == _ALERTS_TRIGGERED:
            at_us, items = rest
            return _alerts_triggered(_int(at_us), items)
        if kind == _REQUESTS_REFUSED:
            at_us, items = rest
            return _requests_refused(_int(at_us), items)
        if kind == _WALLET_UPDATED:
            wallet_id, overdraft_limit, daily_limit, monthly_limit, metadata, at_us = rest
            return WalletUpdated(
                wallet_id=_str(wallet_id), overdraft_limit=_int(overdraft_limit),
                daily_limit=None if daily_limit is None else _int(daily_limit),
                monthly_limit=None if monthly_limit is None else _int(monthly_limit),
                metadata=_metadata(metadata), at_us=_int(at_us),
            )
        if kind == _REFUNDED:
            (transaction_id, refund_of, from_id, to_id, asset, amount, original_amount, description,
             metadata, at_us, idem) = rest
            return Refunded(
                transaction_id=_str(transaction_id), refund_of=_str(refund_of), from_wallet_id=_str(from_id),
                to_wallet_id=_str(to_id), asset=_str(asset), amount=_int(amount),
                original_amount=_int(original_amount), description=_optional_str(description),
                metadata=_metadata(metadata), at_us=_int(at_us), idempotency=_idem_in(idem),
            )
        if kind == _CREDIT_RESERVED:
            # A refund's reservation carries the refunded transaction's id after the others.
            (transaction_id, wallet_id, asset, amount, from_id, from_group, description, metadata,
             at_us, *tail) = rest
            refund_of, capture_of = _reservation_of(tail)
            return CreditReserved(
                transaction_id=_str(transaction_id), wallet_id=_str(wallet_id), asset=_str(asset),
                amount=_int(amount), from_wallet_id=_str(from_id), from_group=_int(from_group),
                description=_optional_str(description), metadata=_metadata(metadata), at_us=_int(at_us),
                refund_of=refund_of, capture_of=capture_of,
            )
        if kind == _RESERVATION_SETTLED:
            (transaction_id, wallet_id, asset, amount, from_id, from_group, description, metadata,
             reserved_at_us, credited, at_us, *tail) = rest
            refund_of, capture_of = _reservation_of(tail)
            return ReservationSettled(
                transaction_id=_str(transaction_id), wallet_id=_str(wallet_id), asset=_str(asset),
                amount=_int(amount), from_wallet_id=_str(from_id), from_group=_int(from_group),
                description=_optional_str(description), metadata=_metadata(metadata),
                reserved_at_us=_int(reserved_at_us), credited=_bool(credited), at_us=_int(at_us),
                refund_of=refund_of, capture_of=capture_of,
            )
        if kind == _TRANSIT_SETTLED:
            ids, at_us = rest
            return TransitSettled(transaction_ids=_ids(ids), at_us=_int(at_us))
        if kind == _TRANSFERS_ABORTED:
            ids, at_us = rest
            return TransfersAborted(transaction_ids=_ids(ids), at_us=_int(at_us))
        if kind == _GROUP_CONFIGURED:
            group, groups, at_us = rest
            return GroupConfigured(group=_int(group), groups=_int(groups), at_us=_int(at_us))
        if kind == _BATCH_PREPARED:
            batch, coordinator, at_us, items = rest
            rows = _transfers_posted(_int(at_us), items, payload).rows
            return BatchPrepared(batch=_str(batch), coordinator=_int(coordinator), rows=rows, at_us=_int(at_us))
        if kind == _BATCH_DECIDED:
            batch, committed, at_us = rest
            return BatchDecided(batch=_str(batch), committed=_bool(committed), at_us=_int(at_us))
        if kind == _BATCH_RELEASED:
            batch, at_us = rest
            return BatchReleased(batch=_str(batch), at_us=_int(at_us))
    except CodecError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as error:
        raise CodecError(f"undecodable record: {error}") from None
    raise CodecError(f"unknown record kind {kind}")
