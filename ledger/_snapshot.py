"""The ledger's snapshot codec: a whole ``State`` to a stream of msgpack chunks and back.

``snapshots/`` stores the bytes and never looks inside; this module owns what they mean. It must
never do I/O, and ``decode_state`` must never raise anything but ``CodecError`` (a body reaches
it only after its checksum verified, so garbage here is a bug or a foreign file). The image is
exact: everything ``apply`` can set is stored, including what ``state_digest`` leaves out
(wallet ``lsn``, the idempotency records' ``at_us`` and events, the directory's ``at_us``, dict
order of assets, tokens and idempotency records). Pair it with the digest: the caller stores
``state_digest`` in the snapshot header and compares it after decoding, then runs
``check_invariants``.

The body is a sequence of msgpack objects, one per entity, so decoding holds one entity's bytes
at a time. ``encode_state`` yields them in chunks of at most ``CHUNK_RECORDS`` entities.

    object       | fields (a msgpack array)                                         | count
    -------------|------------------------------------------------------------------|-----------
    header       | version, directory lsn, directory at_us, assets, tokens,         | 1
                 | idempotency records, wallets, holds, withdrawals, alerts,        |
                 | crossings, refusals, refund tallies (the counts)                 |
    asset        | code, scale, created_at_us                                       | assets
    token        | token_hash, prefix, owner_id, created_at_us                      | tokens
    idempotency  | scope, key, fingerprint, lsn, at_us, event (``encode_event``)    | records
    wallet       | id, owner_id, asset, metadata, balance, held, status,            | wallets
                 | created_at_us, updated_at_us, lsn                                |
    hold         | transaction_id, type, from, to, asset, amount, description,      | holds
                 | metadata, created_at_us, deadline_us, lsn                        |
    withdrawal   | id, wallet_id, asset, amount, destination, status, attempts,     | withdrawals
                 | last_error, next_attempt_at_us, reference, created_at_us,        |
                 | updated_at_us, lsn                                               |
    alert        | id, wallet_id, field, direction, threshold, triggered,           | alerts
                 | created_at_us, lsn                                               |
    crossing     | alert_id, wallet_id, field, direction, threshold, value,         | crossings
                 | transaction_id (a firing owed: ``State.crossings``)              |
    refusal      | scope, key, fingerprint, lsn, at_us, reason, detail              | refusals
    refund tally | transaction_id (the original), wallet_id, original_amount,       | tallies
                 | refunded (``State.refunded``)                                    |
    limits count | (version 4) how many wallets follow in the limits section        | 1
    limits       | wallet_id, overdraft, daily, monthly, floor (nil, nil, nil, nil  | that many
                 | without limits), day (nil: never spent), spent_day, spent_month  |
    groups       | (version 5) group, groups, transit [[asset, amount]], owed        | 1
                 | [[transaction, wallet]], aborted [transaction], reservations     |
                 | [[transaction, wallet, asset, amount, from wallet, from group,   |
                 | description, metadata, at_us, lsn (, refund_of: a refund's;      |
                 | , refund_of nil, capture_of: a hold's capture)]],                |
                 | each sorted (, prepared [[BatchPrepared payload, lsn]], decided  |
                 | [[batch, committed]]: only when a batch of several sending       |
                 | groups is prepared or was decided here)                          |

Version 1 (before holds) had no hold or withdrawal counts or entities; version 2 (before
balance alerts) no alert or crossing counts or entities; version 3 (before final outcomes,
refunds and wallet limits) no refusal or refund tally counts, no refusals, tallies or limits
section (a wallet loads without limits and without spending); all still decode.

Version 5 is written only by a ledger that is one group of several (ADR 0013): version 4 and
the groups object at the end; a ledger of one group still writes version 4.

Version 4 added three sections after the crossings. Refusals: the idempotency records of
refused requests (final outcomes, whose ``event`` is the ``Rejection``; ``reason`` is the
``Reason`` value, as in the log's kind 18), in LSN order; the idempotency section then holds
only the records of accepted requests (its count says how many), and decoding merges the two by
LSN back into the directory's one log-ordered dict (a refusal and an acceptance never share a
record, so never an LSN). Refund tallies, sorted by the original's id. Then the limits section,
last, with its own count (not in the header); it holds the wallets that have limits or spent,
sorted by id. Alerts are in
creation (LSN) order, the order ``State.watched`` evaluates them in; crossings in the order owed.
Holds and withdrawals are sorted by id; the directory's routing indexes are rebuilt from them.

Assets, tokens and idempotency records keep their dict order (log order, which replay
reproduces; idempotency expiry depends on it). Wallets are sorted by id: their dict order
depends on the shard layout, and a snapshot must not. ``token_prefixes`` is rebuilt from the
tokens. A new field goes at the end of its array with a new ``SNAPSHOT_CODEC_VERSION``, and the
decoder keeps the branches for the old versions.

The state must not change while the ``encode_state`` iterator is being consumed (it is lazy);
the caller encodes from a copy or from inside the owning actor's step.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from typing import Any

import msgpack

from ledger._codec import CodecError, decode_event, encode_event, keyed_kind
from ledger._model import (
    DAY_US,
    INT64_MAX,
    INT64_MIN,
    Alert,
    AlertDirection,
    AlertField,
    AlertFired,
    Asset,
    BatchPrepared,
    Hold,
    IdempotencyRecord,
    Limits,
    Reason,
    RefundTally,
    Rejection,
    Reservation,
    Token,
    TransactionType,
    Wallet,
    WalletStatus,
    Withdrawal,
    WithdrawalStatus,
    spend_window,
)
from ledger._state import Directory, State, index_holds

SNAPSHOT_CODEC_VERSION = 4
# What a group of a cluster of several groups writes: version 4 and one section more (ADR 0013).
GROUPED_CODEC_VERSION = 5
# Entities per chunk: bounds the memory a chunk takes while it is written, at a cost of one
# list join per chunk (one chunk per entity would be a write call per entity).
CHUNK_RECORDS = 10_000
# No entity may pack larger than this, or the decoder's buffer refuses it. The largest is an
# idempotency record: an event (itself within the WAL's 16 MiB payload limit) plus its key.
ENTITY_BYTES_MAX = 17 * 1024 * 1024

_HEADER_FIELDS = {1: 7, 2: 9, 3: 11, 4: 13, 5: 13}

assert CHUNK_RECORDS >= 1
assert ENTITY_BYTES_MAX > 16 * 1024 * 1024


def count_records(state: State) -> int:
    """How many entities ``encode_state`` writes (the snapshot header's record count; the
    limits section's count object is not an entity)."""
    directory = state.directory
    return (len(directory.assets) + len(directory.tokens) + len(directory.idempotency) + len(state.wallets)
            + len(state.holds) + len(state.withdrawals) + len(state.alerts) + len(state.crossings)
            + _limited_count(state) + len(state.refunded))


def _limited(wallet: Wallet) -> bool:
    return wallet.limits is not None or wallet.window is not None


def _limited_count(state: State) -> int:
    return sum(1 for wallet in state.wallets.values() if _limited(wallet))


def encode_state(state: State) -> Iterator[bytes]:
    """The snapshot body of ``state``, lazily, in chunks of at most ``CHUNK_RECORDS`` entities
    (the first chunk is the header alone)."""
    directory = state.directory
    assert len(directory.tokens) == len(directory.token_prefixes)
    lsn = directory.lsn
    refused = sum(1 for record in directory.idempotency.values() if type(record.source) is Rejection)
    counts = (len(directory.assets), len(directory.tokens), len(directory.idempotency) - refused, len(state.wallets),
              len(state.holds), len(state.withdrawals), len(state.alerts), len(state.crossings), refused,
              len(state.refunded))
    limited_count = _limited_count(state)
    packer = msgpack.Packer(use_bin_type=True)
    # A ledger of one group writes version 4 (byte for byte as before groups existed); a group
    # of a cluster of several, version 5 with its section at the end.
    grouped = directory.groups > 1
    yield packer.pack([GROUPED_CODEC_VERSION if grouped else SNAPSHOT_CODEC_VERSION, lsn, directory.at_us, *counts])

    def entities() -> Iterator[Any]:
        for asset in directory.assets.values():
            yield [asset.code, asset.scale, asset.created_at_us]
        for token in directory.tokens.values():
            yield [token.token_hash, token.prefix, token.owner_id, token.created_at_us]
        for (scope, key), record in directory.idempotency.items():
            source = record.source
            if type(source) is bytes and record.position < 0:  # loaded from an image: its encoding
                yield [scope, key, record.fingerprint, record.lsn, record.at_us, source]
            elif type(source) is not Rejection:
                outcome = record.event
                assert not isinstance(outcome, Rejection)
                yield [scope, key, record.fingerprint, record.lsn, record.at_us, encode_event(outcome)]
        # Only the ids are copied and sorted (a reference each), not the wallets.
        for wallet_id in sorted(state.wallets):
            wallet = state.wallets[wallet_id]
            yield [
                wallet.id, wallet.owner_id, wallet.asset, wallet.metadata, wallet.balance,
                wallet.held, int(wallet.status), wallet.created_at_us, wallet.updated_at_us, wallet.lsn,
            ]
        for transaction_id in sorted(state.holds):
            hold = state.holds[transaction_id]
            yield [
                hold.transaction_id, int(hold.type), hold.from_wallet_id, hold.to_wallet_id, hold.asset,
                hold.amount, hold.description, hold.metadata, hold.created_at_us, hold.deadline_us, hold.lsn,
            ]
        for withdrawal_id in sorted(state.withdrawals):
            withdrawal = state.withdrawals[withdrawal_id]
            yield [
                withdrawal.id, withdrawal.wallet_id, withdrawal.asset, withdrawal.amount,
                withdrawal.destination, int(withdrawal.status), withdrawal.attempts,
                withdrawal.last_error, withdrawal.next_attempt_at_us, withdrawal.reference,
                withdrawal.created_at_us, withdrawal.updated_at_us, withdrawal.lsn,
            ]
        for alert in sorted(state.alerts.values(), key=lambda alert: alert.lsn):
            yield [
                alert.id, alert.wallet_id, int(alert.field), int(alert.direction), alert.threshold,
                alert.triggered, alert.created_at_us, alert.lsn,
            ]
        for firing in state.crossings:
            yield [
                firing.alert_id, firing.wallet_id, int(firing.field), int(firing.direction), firing.threshold,
                firing.value, firing.transaction_id,
            ]
        if refused:
            for (scope, key), record in directory.idempotency.items():
                refusal = record.source
                if type(refusal) is Rejection:
                    yield [scope, key, record.fingerprint, record.lsn, record.at_us, refusal.reason.value,
                           refusal.detail]
        for transaction_id in sorted(state.refunded):
            tally = state.refunded[transaction_id]
            yield [transaction_id, tally.wallet_id, tally.original_amount, tally.refunded]
        # Version 4: wallet limits and spend windows, a section of its own.
        yield limited_count
        for wallet_id in sorted(state.wallets):
            wallet = state.wallets[wallet_id]
            if _limited(wallet):
                limits, window = wallet.limits, wallet.window
                yield [
                    wallet.id,
                    *((None, None, None, None) if limits is None
                      else (limits.overdraft, limits.daily, limits.monthly, limits.floor)),
                    None if window is None else window.day, wallet.spent_day, wallet.spent_month,
                ]
        if grouped:
            # Version 5: the group's part of transfers between groups (ADR 0013), one object.
            yield [
                directory.group, directory.groups, sorted(directory.transit.items()),
                sorted(directory.owed.items()), sorted(directory.aborted),
                [[reservation.transaction_id, reservation.wallet_id, reservation.asset, reservation.amount,
                  reservation.from_wallet_id, reservation.from_group, reservation.description,
                  reservation.metadata, reservation.at_us, reservation.lsn,
                  *(() if reservation.capture_of is None and reservation.refund_of is None
                    else (reservation.refund_of,) if reservation.capture_of is None
                    else (reservation.refund_of, reservation.capture_of))]
                 for reservation in sorted(state.reservations.values(), key=lambda r: r.transaction_id)],
                # Batches of several sending groups, only when there are any: the parts prepared
                # here ([record payload, LSN], by batch id) and the decisions of the batches
                # this group coordinated ([batch, committed], sorted).
                *(() if not directory.prepared and not directory.decided else (
                    [[encode_event(prepared), lsn] for _, (prepared, lsn) in sorted(directory.prepared.items())],
                    sorted([batch, committed] for batch, committed in directory.decided.items()),
                )),
            ]

    chunk: list[bytes] = []
    written = 0
    for entity in entities():
        packed = packer.pack(entity)
        assert len(packed) <= ENTITY_BYTES_MAX, (entity[0], len(packed))
        chunk.append(packed)
        written += 1
        if len(chunk) == CHUNK_RECORDS:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)
    assert written == sum(counts) + 1 + limited_count + grouped
    # The state changed under a lazy consumer: the image would mix two LSNs.
    assert directory.lsn == lsn, (directory.lsn, lsn)


# -- decode --------------------------------------------------------------------------------


def _int(value: Any, what: str, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    # type() and not isinstance(): msgpack decodes true/false as bool, a subclass of int.
    if type(value) is not int or not low <= value <= high:
        raise CodecError(f"{what}: expected an integer in [{low}, {high}], got {value!r:.80}")
    return value


def _str(value: Any, what: str) -> str:
    if type(value) is not str:
        raise CodecError(f"{what}: expected a string, got {value!r:.80}")
    return value


def _bytes(value: Any, what: str) -> bytes:
    if type(value) is not bytes:
        raise CodecError(f"{what}: expected bytes, got {value!r:.80}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if type(value) is not list:
        raise CodecError(f"{what}: expected an array, got {value!r:.80}")
    return value


def _fields(value: Any, size: int, what: str) -> list[Any]:
    if type(value) is not list or len(value) != size:
        raise CodecError(f"{what}: expected an array of {size}, got {value!r:.80}")
    return value


def decode_state(body: bytes, *, decode_events: bool = False) -> State:
    """The state whose snapshot body is ``body``. Raises ``CodecError`` if it does not decode.

    The records that idempotency keys answer with stay encoded; their kind is checked from their
    first bytes (the body's checksum has already ruled out damage), and with ``decode_events``
    each is decoded in full as well (``wallet snapshot verify``: about twice the time)."""
    try:
        return _decode(body, decode_events)
    except CodecError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, msgpack.UnpackException) as error:
        # msgpack's own errors (OutOfData: truncated), bad UTF-8 (a ValueError), unknown enums.
        raise CodecError(f"undecodable snapshot: {type(error).__name__}: {error}") from None


_REASONS = {reason.value: reason for reason in Reason}


def _merge_refusals(directory: Directory, unpacker: msgpack.Unpacker, count: int) -> None:
    """Reads ``count`` refusal entities and merges them with the accepted requests' records into
    one dict in LSN order (both arrive in it; they never share an LSN)."""
    refusals: list[tuple[tuple[str, str], IdempotencyRecord]] = []
    previous_lsn = 0
    for _ in range(count):
        scope, key, fingerprint, record_lsn, record_at_us, reason, detail = _fields(
            unpacker.unpack(), 7, "refusal"
        )
        found = _REASONS.get(_str(reason, "refusal reason"))
        if found is None:
            raise CodecError(f"unknown refusal reason {reason!r:.80}")
        record = IdempotencyRecord(
            fingerprint=_bytes(fingerprint, "refusal fingerprint"),
            # Non-decreasing: the refusals of one step share its record's LSN.
            lsn=_int(record_lsn, "refusal lsn", max(previous_lsn, 1), directory.lsn),
            at_us=_int(record_at_us, "refusal at_us"),
            source=Rejection(reason=found, detail=_str(detail, "refusal detail")),
        )
        previous_lsn = record.lsn
        refusals.append(((_str(scope, "refusal scope"), _str(key, "refusal key")), record))
    merged: dict[tuple[str, str], IdempotencyRecord] = {}
    accepted = iter(directory.idempotency.items())
    pending = next(accepted, None)
    for key, record in refusals:
        while pending is not None and pending[1].lsn < record.lsn:
            merged[pending[0]] = pending[1]
            pending = next(accepted, None)
        if pending is not None and pending[1].lsn == record.lsn:
            raise CodecError(f"refusal of {key!r} shares LSN {record.lsn} with an accepted request")
        if key in merged or key in directory.idempotency:
            raise CodecError(f"idempotency key {key!r} appears twice")
        merged[key] = record
    while pending is not None:
        merged[pending[0]] = pending[1]
        pending = next(accepted, None)
    directory.idempotency = merged


def _decode(body: bytes, decode_events: bool) -> State:
    unpacker = msgpack.Unpacker(
        io.BytesIO(body), raw=False, strict_map_key=True, use_list=True,
        max_buffer_size=ENTITY_BYTES_MAX,
    )
    header = unpacker.unpack()
    if type(header) is not list or not header:
        raise CodecError(f"snapshot header: expected an array, got {header!r:.80}")
    version = header[0]
    if type(version) is not int or version not in _HEADER_FIELDS:
        raise CodecError(f"unknown snapshot codec version {version!r:.80}")
    fields = _fields(header, _HEADER_FIELDS[version], "snapshot header")
    if version == 1:
        fields += [0, 0]
    if version <= 2:
        fields += [0, 0]
    if version <= 3:
        fields += [0, 0]
    (_, lsn, at_us, assets_count, tokens_count, records_count, wallets_count, holds_count, withdrawals_count,
     alerts_count, crossings_count, refusals_count, tallies_count) = fields
    directory = Directory(lsn=_int(lsn, "lsn", 0), at_us=_int(at_us, "at_us"))
    for value, what in (
        (assets_count, "asset count"),
        (tokens_count, "token count"),
        (records_count, "idempotency count"),
        (wallets_count, "wallet count"),
        (holds_count, "hold count"),
        (withdrawals_count, "withdrawal count"),
        (alerts_count, "alert count"),
        (crossings_count, "crossing count"),
        (refusals_count, "refusal count"),
        (tallies_count, "refund tally count"),
    ):
        # A count past the body's length is garbage, and would only fail later, slowly.
        _int(value, what, 0, len(body))

    for _ in range(assets_count):
        code, scale, created_at_us = _fields(unpacker.unpack(), 3, "asset")
        asset = Asset(code=_str(code, "asset code"), scale=_int(scale, "scale"),
                      created_at_us=_int(created_at_us, "asset created_at_us"))
        if asset.code in directory.assets:
            raise CodecError(f"asset {asset.code!r} appears twice")
        directory.assets[asset.code] = asset

    for _ in range(tokens_count):
        token_hash, prefix, owner_id, created_at_us = _fields(unpacker.unpack(), 4, "token")
        token = Token(token_hash=_bytes(token_hash, "token hash"), prefix=_str(prefix, "token prefix"),
                      owner_id=_str(owner_id, "token owner"),
                      created_at_us=_int(created_at_us, "token created_at_us"))
        if token.token_hash in directory.tokens or token.prefix in directory.token_prefixes:
            raise CodecError(f"token {token.prefix!r} appears twice")
        directory.tokens[token.token_hash] = token
        directory.token_prefixes[token.prefix] = token.token_hash

    previous_lsn = 0
    for _ in range(records_count):
        scope, key, fingerprint, record_lsn, record_at_us, payload = _fields(
            unpacker.unpack(), 6, "idempotency record"
        )
        payload = _bytes(payload, "idempotency event")
        keyed_kind(payload)  # a kind of record a key may answer with (``KEYED_KINDS``)
        if decode_events:
            decode_event(payload)  # and every field of it
        record = IdempotencyRecord(
            fingerprint=_bytes(fingerprint, "fingerprint"),
            # Non-decreasing: the items of one batch record share its LSN.
            lsn=_int(record_lsn, "idempotency lsn", max(previous_lsn, 1), directory.lsn),
            at_us=_int(record_at_us, "idempotency at_us"),
            # Kept encoded (a fraction of the memory of the event), decoded only for a retry's
            # answer.
            source=payload,
        )
        previous_lsn = record.lsn
        # The scope interned: one string for the many keys that share it (as ``record_keys``).
        idempotency_key = (sys.intern(_str(scope, "idempotency scope")), _str(key, "idempotency key"))
        if idempotency_key in directory.idempotency:
            raise CodecError(f"idempotency key {idempotency_key!r} appears twice")
        directory.idempotency[idempotency_key] = record

    wallets: dict[str, Wallet] = {}
    owners: dict[str, str] = {}
    previous_id: str | None = None
    for _ in range(wallets_count):
        (wallet_id, owner_id, asset_code, metadata, balance, held, status, created_at_us,
         updated_at_us, wallet_lsn) = _fields(unpacker.unpack(), 10, "wallet")
        wallet_id = _str(wallet_id, "wallet id")
        # Sorted and unique by construction; anything else was not written by encode_state.
        if previous_id is not None and wallet_id <= previous_id:
            raise CodecError(f"wallet {wallet_id!r} out of order after {previous_id!r}")
        previous_id = wallet_id
        if metadata is not None and type(metadata) is not dict:
            raise CodecError(f"wallet {wallet_id!r} metadata: expected a map, got {metadata!r:.80}")
        # Memory: a million wallets share a few asset codes and fewer owners than wallets, and
        # most were never updated: share equal strings and ints instead of one copy each.
        asset_code = _str(asset_code, "wallet asset")
        known = directory.assets.get(asset_code)
        owner_id = _str(owner_id, "wallet owner")
        owner_id = owners.setdefault(owner_id, owner_id)
        created_at_us = _int(created_at_us, "wallet created_at_us")
        updated_at_us = _int(updated_at_us, "wallet updated_at_us")
        wallets[wallet_id] = Wallet(
            id=wallet_id,
            owner_id=owner_id,
            asset=asset_code if known is None else known.code,
            metadata=metadata,
            balance=_int(balance, "balance"),
            held=_int(held, "held", 0),
            status=WalletStatus(_int(status, "status")),
            created_at_us=created_at_us,
            updated_at_us=created_at_us if updated_at_us == created_at_us else updated_at_us,
            lsn=_int(wallet_lsn, "wallet lsn", 0, directory.lsn),
        )

    holds: dict[str, Hold] = {}
    for _ in range(holds_count):
        (transaction_id, type_, from_id, to_id, asset_code, amount, description, metadata, created_at_us,
         deadline_us, hold_lsn) = _fields(unpacker.unpack(), 11, "hold")
        transaction_id = _str(transaction_id, "hold id")
        if holds and transaction_id <= next(reversed(holds)):
            raise CodecError(f"hold {transaction_id!r} out of order")
        if description is not None:
            _str(description, "hold description")
        if metadata is not None and type(metadata) is not dict:
            raise CodecError(f"hold {transaction_id!r} metadata: expected a map")
        holds[transaction_id] = Hold(
            transaction_id=transaction_id, type=TransactionType(_int(type_, "hold type")),
            from_wallet_id=_str(from_id, "hold sender"), to_wallet_id=_str(to_id, "hold receiver"),
            asset=_str(asset_code, "hold asset"), amount=_int(amount, "hold amount", 1),
            description=description, metadata=metadata,
            created_at_us=_int(created_at_us, "hold created_at_us"),
            deadline_us=_int(deadline_us, "hold deadline_us"),
            lsn=_int(hold_lsn, "hold lsn", 1, directory.lsn),
        )

    withdrawals: dict[str, Withdrawal] = {}
    for _ in range(withdrawals_count):
        (withdrawal_id, wallet_id, asset_code, amount, destination, status, attempts, last_error,
         next_attempt_at_us, reference, created_at_us, updated_at_us, withdrawal_lsn) = _fields(
            unpacker.unpack(), 13, "withdrawal"
        )
        withdrawal_id = _str(withdrawal_id, "withdrawal id")
        if withdrawals and withdrawal_id <= next(reversed(withdrawals)):
            raise CodecError(f"withdrawal {withdrawal_id!r} out of order")
        if type(destination) is not dict:
            raise CodecError(f"withdrawal {withdrawal_id!r} destination: expected a map")
        for optional, what in ((last_error, "last_error"), (reference, "reference")):
            if optional is not None:
                _str(optional, f"withdrawal {what}")
        withdrawals[withdrawal_id] = Withdrawal(
            id=withdrawal_id, wallet_id=_str(wallet_id, "withdrawal wallet"),
            asset=_str(asset_code, "withdrawal asset"), amount=_int(amount, "withdrawal amount", 1),
            destination=destination, status=WithdrawalStatus(_int(status, "withdrawal status")),
            attempts=_int(attempts, "attempts", 0), last_error=last_error,
            next_attempt_at_us=_int(next_attempt_at_us, "next_attempt_at_us"), reference=reference,
            created_at_us=_int(created_at_us, "withdrawal created_at_us"),
            updated_at_us=_int(updated_at_us, "withdrawal updated_at_us"),
            lsn=_int(withdrawal_lsn, "withdrawal lsn", 1, directory.lsn),
        )

    alerts: dict[str, Alert] = {}
    previous_alert_lsn = 0
    for _ in range(alerts_count):
        alert_id, wallet_id, field, direction, threshold, triggered, created_at_us, alert_lsn = _fields(
            unpacker.unpack(), 8, "alert"
        )
        alert_id = _str(alert_id, "alert id")
        if alert_id in alerts:
            raise CodecError(f"alert {alert_id!r} appears twice")
        if type(triggered) is not bool:
            raise CodecError(f"alert {alert_id!r} triggered: expected a boolean")
        alert = Alert(
            id=alert_id, wallet_id=_str(wallet_id, "alert wallet"), field=AlertField(_int(field, "alert field")),
            direction=AlertDirection(_int(direction, "alert direction")), threshold=_int(threshold, "threshold"),
            triggered=triggered, created_at_us=_int(created_at_us, "alert created_at_us"),
            # Creation order: ``State.watched`` evaluates a wallet's alerts in it.
            lsn=_int(alert_lsn, "alert lsn", previous_alert_lsn + 1, directory.lsn),
        )
        previous_alert_lsn = alert.lsn
        alerts[alert_id] = alert

    crossings: list[AlertFired] = []
    for _ in range(crossings_count):
        alert_id, wallet_id, field, direction, threshold, value, transaction_id = _fields(
            unpacker.unpack(), 7, "crossing"
        )
        crossings.append(AlertFired(
            alert_id=_str(alert_id, "crossing alert"), wallet_id=_str(wallet_id, "crossing wallet"),
            field=AlertField(_int(field, "crossing field")),
            direction=AlertDirection(_int(direction, "crossing direction")),
            threshold=_int(threshold, "crossing threshold"), value=_int(value, "crossing value"),
            transaction_id=_str(transaction_id, "crossing transaction"),
        ))

    if refusals_count:
        _merge_refusals(directory, unpacker, refusals_count)

    refunded: dict[str, RefundTally] = {}
    for _ in range(tallies_count):
        transaction_id, wallet_id, original_amount, refunded_amount = _fields(unpacker.unpack(), 4, "refund tally")
        transaction_id = _str(transaction_id, "refund tally transaction")
        if refunded and transaction_id <= next(reversed(refunded)):
            raise CodecError(f"refund tally {transaction_id!r} out of order")
        original_amount = _int(original_amount, "refund tally original amount", 1)
        refunded[transaction_id] = RefundTally(
            wallet_id=_str(wallet_id, "refund tally wallet"), original_amount=original_amount,
            refunded=_int(refunded_amount, "refund tally refunded", 1, original_amount),
        )

    if version >= 4:
        limited_count = _int(unpacker.unpack(), "limits count", 0, len(wallets))
        previous_limited: str | None = None
        for _ in range(limited_count):
            (wallet_id, overdraft, daily, monthly, floor, day, spent_day, spent_month) = _fields(
                unpacker.unpack(), 8, "limits"
            )
            wallet_id = _str(wallet_id, "limits wallet")
            if previous_limited is not None and wallet_id <= previous_limited:
                raise CodecError(f"limits of {wallet_id!r} out of order")
            previous_limited = wallet_id
            wallet = wallets.get(wallet_id)
            if wallet is None:
                raise CodecError(f"limits of unknown wallet {wallet_id!r}")
            if overdraft is not None:
                wallet.limits = Limits(
                    overdraft=_int(overdraft, "overdraft limit", 0),
                    daily=None if daily is None else _int(daily, "daily limit", 1),
                    monthly=None if monthly is None else _int(monthly, "monthly limit", 1),
                    floor=_int(floor, "limits floor"),
                )
            if day is not None:
                wallet.window = spend_window(_int(day, "spend day", -(2**40), 2**40) * DAY_US)
            wallet.spent_day = _int(spent_day, "spent today", 0)
            wallet.spent_month = _int(spent_month, "spent this month", 0)
            if wallet.spent_day == wallet.spent_month:
                wallet.spent_month = wallet.spent_day  # one int object for both (memory, like apply)

    reservations: dict[str, Reservation] = {}
    if version >= 5:
        section = unpacker.unpack()
        prepared_parts: Any = []
        decisions: Any = []
        if type(section) is list and len(section) == 8:  # batches of several sending groups
            prepared_parts, decisions = section[6], section[7]
            section = section[:6]
        group, groups, transit, owed, aborted, reserved = _fields(section, 6, "groups")
        directory.groups = _int(groups, "groups", 2, 1 << 16)
        directory.group = _int(group, "group", 0, directory.groups - 1)
        for pair in _list(transit, "transit"):
            asset, amount = _fields(pair, 2, "transit")
            directory.transit[_str(asset, "transit asset")] = _int(amount, "transit amount")
        for pair in _list(owed, "owed"):
            transaction_id, wallet_id = _fields(pair, 2, "owed")
            directory.owed[_str(transaction_id, "owed transaction")] = _str(wallet_id, "owed wallet")
        directory.aborted.update(_str(item, "aborted transaction") for item in _list(aborted, "aborted"))
        for item in _list(prepared_parts, "prepared batches"):
            payload, prepared_lsn = _fields(item, 2, "prepared batch")
            if type(payload) is not bytes:
                raise CodecError("prepared batch: the record is not bytes")
            prepared = decode_event(payload)
            if not isinstance(prepared, BatchPrepared):
                raise CodecError("prepared batch: not a BatchPrepared record")
            directory.prepared[prepared.batch] = (prepared, _int(prepared_lsn, "prepared lsn", 1, directory.lsn))
        for item in _list(decisions, "decided batches"):
            batch, committed = _fields(item, 2, "decided batch")
            if type(committed) is not bool:
                raise CodecError("decided batch: committed is not a boolean")
            directory.decided[_str(batch, "decided batch")] = committed
        for item in _list(reserved, "reservations"):
            # A refund's reservation has an eleventh field, the refunded transaction; a hold's
            # capture a twelfth, the hold (its eleventh nil).
            refund_of = capture_of = None
            if type(item) is list and len(item) in (11, 12):
                if len(item) == 12:
                    capture_of = _str(item[11], "reservation capture_of")
                    refund_of = None if item[10] is None else _str(item[10], "reservation refund_of")
                else:
                    refund_of = _str(item[10], "reservation refund_of")
                item = item[:10]
            (transaction_id, wallet_id, asset, amount, from_id, from_group, description, metadata, reserved_at,
             reserved_lsn) = _fields(item, 10, "reservation")
            if (description is not None and type(description) is not str) or (
                    metadata is not None and type(metadata) is not dict):
                raise CodecError("reservation: description or metadata of the wrong type")
            reservation = Reservation(
                transaction_id=_str(transaction_id, "reservation transaction"),
                wallet_id=_str(wallet_id, "reservation wallet"), asset=_str(asset, "reservation asset"),
                amount=_int(amount, "reservation amount", 1), from_wallet_id=_str(from_id, "reservation sender"),
                from_group=_int(from_group, "reservation group", 0), description=description, metadata=metadata,
                at_us=_int(reserved_at, "reservation at_us"),
                lsn=_int(reserved_lsn, "reservation lsn", 1, directory.lsn), refund_of=refund_of,
                capture_of=capture_of,
            )
            if reservation.wallet_id not in wallets:
                raise CodecError(f"reservation of unknown wallet {reservation.wallet_id!r}")
            reservations[reservation.transaction_id] = reservation
    if unpacker.tell() != len(body):
        raise CodecError(f"{len(body) - unpacker.tell()} bytes after the last entity")
    state = State(directory=directory, wallets=wallets, holds=holds, withdrawals=withdrawals, alerts=alerts,
                  crossings=crossings, refunded=refunded, reservations=reservations)
    index_holds(directory, [state])
    return state
