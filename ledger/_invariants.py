"""The ledger's invariants and digests: ``check_invariants`` (O(N), after recovery and after
every step of the property tests) and ``state_digest`` (independent of dict order and shard
layout), over wallets, holds and withdrawals, with their one-``State`` forms ``check_state`` and
``digest_state``.

Stdlib only: no trio, no I/O, no clock, no randomness.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from ledger._model import (
    ALERTS_PER_WALLET_MAX,
    INT64_MAX,
    INT64_MIN,
    SYSTEM_OWNER,
    Alert,
    AlertFired,
    Hold,
    IdempotencyRecord,
    RefundTally,
    Rejection,
    Reservation,
    TransactionType,
    Wallet,
    WalletStatus,
    Withdrawal,
    WithdrawalStatus,
    is_treasury,
    treasury_id,
)
from ledger._state import Directory, State, prepared_effects, reserved_in


def check_invariants(
    wallets: Iterable[Wallet],
    directory: Directory,
    holds: Iterable[Hold] = (),
    withdrawals: Iterable[Withdrawal] = (),
    alerts: Iterable[Alert] = (),
    refunded: Iterable[tuple[str, RefundTally]] = (),
    reservations: Iterable[Reservation] = (),
) -> None:
    """O(N) check of the ledger's invariants over every wallet, hold, withdrawal and alert (pass
    all of them: a wallet's ``held`` must equal the sum of its holds). Raises AssertionError."""
    totals: dict[str, int] = {}
    treasuries = set()
    held: dict[str, int] = {}
    wallets = list(wallets)
    # Parts of batches of several sending groups, prepared here (ADR 0013): what they hold and
    # reserve, and the indexes of their ids and keys.
    incoming: dict[str, int] = {}
    if directory.prepared:
        ids = {wallet.id for wallet in wallets}
        prepared_ids: dict[str, str] = {}
        prepared_keys: dict[tuple[str, str], str] = {}
        for batch, (prepared, lsn) in directory.prepared.items():
            assert prepared.batch == batch and 1 <= lsn <= directory.lsn and prepared.rows, (batch, lsn)
            holding, receiving = prepared_effects(prepared.rows, ids.__contains__)
            for wallet_id, amount in holding.items():
                held[wallet_id] = held.get(wallet_id, 0) + amount
            for wallet_id, amount in receiving.items():
                incoming[wallet_id] = incoming.get(wallet_id, 0) + amount
            for row in prepared.rows:
                assert row[2] in ids and row[0] not in directory.owed and row[0] not in directory.aborted, row
                prepared_ids[row[0]] = batch
                if row[8] is not None:
                    key = (row[8][0], row[8][1])
                    assert key not in directory.idempotency, key
                    prepared_keys[key] = batch
        assert prepared_ids == directory.prepared_ids and prepared_keys == directory.prepared_keys
    else:
        assert not directory.prepared_ids and not directory.prepared_keys
    hold_count = 0
    withdrawal_holds: set[str] = set()
    for hold in holds:
        hold_count += 1
        assert hold.amount >= 1, hold
        assert directory.hold_routes.get(hold.transaction_id) == (
            hold.from_wallet_id, hold.to_wallet_id, hold.amount
        ), hold
        held[hold.from_wallet_id] = held.get(hold.from_wallet_id, 0) + hold.amount
        if hold.type == TransactionType.WITHDRAWAL:
            assert hold.deadline_us == 0, hold
            assert hold.to_wallet_id == treasury_id(hold.asset), hold
            withdrawal_holds.add(hold.transaction_id)
        else:
            assert hold.type == TransactionType.TRANSFER, hold
            assert hold.deadline_us > hold.created_at_us, hold
    assert hold_count == len(directory.hold_routes)
    withdrawal_count = 0
    for withdrawal in withdrawals:
        withdrawal_count += 1
        assert directory.withdrawal_wallets.get(withdrawal.id) == withdrawal.wallet_id, withdrawal
        open_ = withdrawal.status not in (WithdrawalStatus.COMPLETED, WithdrawalStatus.FAILED)
        # A withdrawal holds its amount exactly while it is not over.
        assert (withdrawal.id in withdrawal_holds) == open_, withdrawal
        assert withdrawal.attempts >= 0, withdrawal
        if withdrawal.status == WithdrawalStatus.PENDING:
            assert withdrawal.attempts == 0, withdrawal
    assert withdrawal_count == len(directory.withdrawal_wallets)
    assert withdrawal_holds <= set(directory.withdrawal_wallets)
    alert_count = 0
    alerted: dict[str, list[Alert]] = {}
    for alert in alerts:
        alert_count += 1
        assert directory.alert_wallets.get(alert.id) == alert.wallet_id, alert
        assert INT64_MIN <= alert.threshold <= INT64_MAX, alert
        assert alert.lsn <= directory.lsn, alert
        alerted.setdefault(alert.wallet_id, []).append(alert)
    assert alert_count == len(directory.alert_wallets)
    by_id: dict[str, Wallet] = {}
    for wallet in wallets:
        by_id[wallet.id] = wallet
        watching = alerted.pop(wallet.id, ())
        assert len(watching) <= ALERTS_PER_WALLET_MAX, wallet
        for alert in watching:
            # ``triggered`` follows the condition after every change (and at creation).
            assert alert.triggered == alert.holds(wallet), (alert, wallet)
        assert wallet.held == held.pop(wallet.id, 0), wallet
        assert wallet.asset in directory.assets, wallet
        assert INT64_MIN <= wallet.balance <= INT64_MAX, wallet
        assert 0 <= wallet.held, wallet
        assert wallet.lsn <= directory.lsn, wallet
        if is_treasury(wallet.id):
            treasuries.add(wallet.asset)
            assert wallet.id == treasury_id(wallet.asset), wallet
            assert wallet.owner_id == SYSTEM_OWNER, wallet
            assert wallet.held == 0, wallet
            assert wallet.limits is None and wallet.window is None, wallet
        else:
            assert wallet.owner_id != SYSTEM_OWNER, wallet
            limits = wallet.limits
            if limits is None:
                assert wallet.held <= wallet.balance, wallet
                assert wallet.available >= 0, wallet
            else:
                # A debit takes ``available`` down to -overdraft at most; lowering the limit
                # below a deficit keeps that deficit as the floor (``Limits.floor``), and
                # nothing else lowers ``available``.
                assert 0 <= limits.overdraft <= INT64_MAX, wallet
                assert limits.floor <= -limits.overdraft, wallet
                assert limits.daily is None or limits.daily >= 1, wallet
                assert limits.monthly is None or limits.monthly >= 1, wallet
                assert wallet.available >= limits.floor, (wallet, limits)
            # Spending: never negative, a day's within its month's, none without a window.
            assert 0 <= wallet.spent_day <= wallet.spent_month, wallet
            assert wallet.window is not None or wallet.spent_month == 0, wallet
        if wallet.status == WalletStatus.CLOSED:
            assert wallet.balance == 0, wallet
        totals[wallet.asset] = totals.get(wallet.asset, 0) + wallet.balance
    assert not held, f"holds on unknown wallets: {sorted(held)}"
    reserved: dict[str, int] = dict(incoming)
    for wallet_id, amount in incoming.items():
        credited = by_id[wallet_id]
        assert credited.status != WalletStatus.CLOSED and credited.balance + amount <= INT64_MAX, credited
    for reservation in reservations:
        # Incoming transfers from other groups (ADR 0013): on open wallets of their asset.
        assert reservation.amount >= 1, reservation
        receiver = by_id.get(reservation.wallet_id)
        assert receiver is not None, reservation
        assert receiver.asset == reservation.asset and receiver.status != WalletStatus.CLOSED, (receiver, reservation)
        reserved[receiver.id] = reserved.get(receiver.id, 0) + reservation.amount
        assert receiver.balance + reserved[receiver.id] <= INT64_MAX, (receiver, reservation)
    if directory.groups == 1:
        assert not directory.transit and not directory.owed and not directory.aborted and not reserved
        assert not directory.prepared and not directory.decided
    assert not directory.owed.keys() & directory.aborted, sorted(directory.owed.keys() & directory.aborted)
    for asset, amount in directory.transit.items():
        # A group's wallets, treasury and transit account sum to zero.
        totals[asset] = totals.get(asset, 0) + amount
    for transaction_id, tally in refunded:
        # Refunds of one original never sum past its posted amount.
        assert 1 <= tally.refunded <= tally.original_amount, (transaction_id, tally)
    assert not alerted, f"alerts on unknown wallets: {sorted(alerted)}"
    for asset in directory.assets:
        assert asset in treasuries, f"asset {asset} has no treasury wallet"
        assert totals.get(asset, 0) == 0, f"asset {asset} sums to {totals.get(asset)}, not 0"
    for token_hash, token in directory.tokens.items():
        assert directory.token_prefixes[token.prefix] == token_hash
    assert len(directory.tokens) == len(directory.token_prefixes)
    previous = 0
    for record in directory.idempotency.values():
        assert record.lsn >= previous  # the items of one batch record share its LSN
        previous = record.lsn
        assert record.lsn <= directory.lsn


_DIGEST_CHUNK = 4096


def wallet_line(wallet: Wallet) -> str:
    """What a wallet adds to the digest: ``repr((id, owner, asset, balance, held, status,
    created, updated, sorted metadata items))``, spelled out."""
    metadata = sorted(wallet.metadata.items(), key=str) if wallet.metadata else []
    return (f"({wallet.id!r}, {wallet.owner_id!r}, {wallet.asset!r}, {wallet.balance!r}, {wallet.held!r}, "
            f"{int(wallet.status)!r}, {wallet.created_at_us!r}, {wallet.updated_at_us!r}, {metadata!r})")


def key_line(key: tuple[str, str], record: IdempotencyRecord) -> str:
    """What an idempotency record adds: ``repr((key, fingerprint, lsn))``, and the reason and
    detail of a refusal after them, spelled out."""
    scope, name = key
    outcome = record.source
    if type(outcome) is Rejection:  # a refused request's key (final outcomes)
        return (f"(({scope!r}, {name!r}), {record.fingerprint!r}, {record.lsn!r}, "
                f"{outcome.reason.value!r}, {outcome.detail!r})")
    return f"(({scope!r}, {name!r}), {record.fingerprint!r}, {record.lsn!r})"


def _hash_lines(digest: Any, lines: list[str]) -> None:
    """Feeds ``lines`` to ``digest`` as one update (the bytes of each ``update`` call in turn)
    and empties the list."""
    digest.update("".join(lines).encode())
    lines.clear()


def state_digest(
    wallets: Iterable[Wallet],
    directory: Directory,
    holds: Iterable[Hold] = (),
    withdrawals: Iterable[Withdrawal] = (),
    alerts: Iterable[Alert] = (),
    crossings: Iterable[AlertFired] = (),
    refunded: Iterable[tuple[str, RefundTally]] = (),
    reservations: Iterable[Reservation] = (),
) -> str:
    """A digest of everything the state holds, independent of dict order and shard layout.
    (No holds, withdrawals or alerts digest exactly as before they existed.)"""
    digest = hashlib.blake2b(digest_size=16)
    # Each item's text is the ``repr`` of a tuple, spelled out as an f-string (the same text,
    # at about half the cost: no tuple built, no generic repr), and hashed in chunks (one
    # update per item cost as much again at a million idempotency keys).
    lines: list[str] = []
    for wallet in sorted(wallets, key=lambda w: w.id):
        lines.append(wallet_line(wallet))
        if wallet.limits is not None:
            # Wallets without limits digest as before limits existed (so the digests of old logs
            # hold): their spending decides nothing until they get limits, and then it is here.
            lines.append(repr((wallet.limits, None if wallet.window is None else wallet.window.day,
                               wallet.spent_day, wallet.spent_month)))
        if len(lines) >= _DIGEST_CHUNK:
            _hash_lines(digest, lines)
    _hash_lines(digest, lines)
    for code in sorted(directory.assets):
        digest.update(repr(directory.assets[code]).encode())
    for prefix in sorted(directory.token_prefixes):
        digest.update(repr(directory.tokens[directory.token_prefixes[prefix]]).encode())
    idempotency = directory.idempotency
    for key in sorted(idempotency):  # keys are distinct: the order of the items
        lines.append(key_line(key, idempotency[key]))
        if len(lines) >= _DIGEST_CHUNK:
            _hash_lines(digest, lines)
    _hash_lines(digest, lines)
    for hold in sorted(holds, key=lambda hold: hold.transaction_id):
        digest.update(
            repr((hold.transaction_id, int(hold.type), hold.from_wallet_id, hold.to_wallet_id, hold.asset,
                  hold.amount, hold.description, json.dumps(hold.metadata, sort_keys=True),
                  hold.created_at_us, hold.deadline_us)).encode()
        )
    for withdrawal in sorted(withdrawals, key=lambda withdrawal: withdrawal.id):
        fields = [json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
                  for value in withdrawal.key()]
        digest.update(repr(fields).encode())
    for alert in sorted(alerts, key=lambda alert: alert.id):
        digest.update(repr(alert.key()).encode())
    for firing in sorted(crossings, key=repr):
        digest.update(repr(("owed", firing)).encode())
    for transaction_id, tally in sorted(refunded, key=lambda item: item[0]):
        digest.update(repr(("refunded", transaction_id, tally.wallet_id, tally.original_amount,
                            tally.refunded)).encode())
    if directory.groups > 1:
        # A ledger of one group digests as before groups existed.
        digest.update(repr(("group", directory.group, directory.groups, sorted(directory.transit.items()),
                            sorted(directory.owed.items()), sorted(directory.aborted))).encode())
        for reservation in sorted(reservations, key=lambda reservation: reservation.transaction_id):
            digest.update(repr(("reserved", reservation.transaction_id, reservation.wallet_id, reservation.asset,
                                reservation.amount, reservation.from_wallet_id, reservation.from_group,
                                reservation.description, json.dumps(reservation.metadata, sort_keys=True),
                                reservation.at_us, reservation.refund_of, reservation.capture_of)).encode())
        # Batches of several sending groups: only when there are any, so that a digest stored
        # before they existed still matches.
        for batch, (prepared, lsn) in sorted(directory.prepared.items()):
            digest.update(repr(("prepared", batch, prepared.coordinator, prepared.at_us, lsn, [
                (*row[:7], json.dumps(row[7], sort_keys=True), row[8]) for row in prepared.rows])).encode())
        if directory.decided:
            digest.update(repr(("decided", sorted(directory.decided.items()))).encode())
    digest.update(repr(directory.lsn).encode())
    return digest.hexdigest()


def check_state(state: State) -> None:
    check_invariants(state.wallets.values(), state.directory, state.holds.values(), state.withdrawals.values(),
                     state.alerts.values(), state.refunded.items(), state.reservations.values())
    reserved = reserved_in(state.directory, state)
    assert reserved == state.reserved_in, (reserved, state.reserved_in)
    for wallet_id, watching in state.watched.items():
        assert watching, wallet_id
        assert all(alert.wallet_id == wallet_id and state.alerts.get(alert.id) is alert for alert in watching)
    assert sum(map(len, state.watched.values())) == len(state.alerts)
    for firing in state.crossings:
        assert firing.wallet_id in state.wallets, firing


def digest_state(state: State) -> str:
    return state_digest(state.wallets.values(), state.directory, state.holds.values(), state.withdrawals.values(),
                        state.alerts.values(), state.crossings, state.refunded.items(), state.reservations.values())

