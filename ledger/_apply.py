"""The ledger state machine's mutators: ``apply`` and its parts (the only code that changes a
``State`` or the ``Directory``).

Stdlib only: no trio, no I/O, no clock, no randomness. Replay calls ``apply`` alone, so history
never depends on today's rules (``ledger._decide``). The shard actors call the parts that land
on their side of a record: ``apply_directory`` once per record in LSN order, ``apply_debit`` /
``apply_sender`` on the sender's shard, ``apply_credit`` on the receiver's, ``apply_wallets``
for the rest. Each asserts what must hold; ``ledger._invariants`` checks the whole.

Balance alerts are evaluated here, in the mutators, after every change of a watched wallet's
``balance`` or ``held`` (``_watch``): an alert's ``triggered`` follows its condition, and a change
that makes the condition true (false before) owes one firing, added to ``State.crossings``. The
shard that applied the change records what is owed as an ``AlertsTriggered`` record in the same
synchronous step (``Shard._fire``), and applying that record (``apply_alerts``) pays it.

Why this is exactly once: a wallet's changes are applied on its shard in LSN order (a credit
from another shard arrives in the order its record was appended, and an atomic batch first
applies the credits queued before it: ``Shard.take_queued_credits``), so replay sees the same
crossings as the live shard, and the firing records pay them. The firing record is the next
record the shard appends after the change, in the same step, but for a credit from another shard
it follows the transfer's record at a later LSN: a crash can keep the change and lose its firing.
Replay then ends with the crossing still owed in ``State.crossings``, and the ledger records it
before serving (``Ledger.fire_owed_alerts``); a firing that is in the log is paid on replay and
never owed again. Firings thus never depend on today's rules: they are facts in the log.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from ledger._model import (
    BATCH_ITEMS_MAX,
    DAY_US,
    IDEMPOTENCY_RETENTION_US,
    INT64_MAX,
    INT64_MIN,
    SPENDING_TYPES,
    SYSTEM_OWNER,
    Alert,
    AlertCreated,
    AlertDeleted,
    AlertDirection,
    AlertField,
    AlertsTriggered,
    Asset,
    AssetCreated,
    BatchDecided,
    BatchPrepared,
    BatchReleased,
    CreditReserved,
    Event,
    GroupConfigured,
    Hold,
    HoldCaptured,
    HoldCreated,
    HoldVoided,
    Limits,
    Refunded,
    RefundTally,
    RequestsRefused,
    Reservation,
    ReservationSettled,
    Token,
    TokenCreated,
    TokenRevoked,
    TransactionType,
    Transferred,
    TransferRow,
    TransfersAborted,
    TransfersPosted,
    TransitSettled,
    VoidReason,
    Wallet,
    WalletCreated,
    WalletStatus,
    WalletStatusChanged,
    WalletUpdated,
    Withdrawal,
    WithdrawalStatus,
    WithdrawalUpdated,
    counts_as_spend,
    is_treasury,
    new_alert_fired,
    new_idempotency_record,
    spend_window,
    treasury_id,
)
from ledger._state import Directory, State, prepared_effects


def apply_directory(directory: Directory, event: Event, lsn: int) -> None:
    """The part of an event that lands in the directory. Called once per record, in LSN
    order, by whichever actor appended it."""
    assert lsn == directory.lsn + 1, (lsn, directory.lsn)
    directory.lsn = lsn
    if event.at_us > directory.at_us:
        directory.at_us = event.at_us
    if isinstance(event, TransfersPosted):
        assert 1 <= len(event.rows) <= BATCH_ITEMS_MAX, len(event.rows)
        if event.settles is not None:
            prepared, _ = _end_prepared(directory, event.settles)
            assert prepared.rows == event.rows, (prepared.rows, event.rows)
        record_keys(directory, event, lsn)
        _expire_idempotency(directory)
    elif isinstance(event, Transferred | WalletCreated | HoldCreated | HoldCaptured | HoldVoided | Refunded):
        if event.idempotency is not None:
            key = (event.idempotency.scope, event.idempotency.key)
            assert key not in directory.idempotency
            directory.idempotency[key] = new_idempotency_record(event.idempotency.fingerprint, lsn, event.at_us, event, -1)
            _expire_idempotency(directory)
        if isinstance(event, HoldCreated):
            assert event.transaction_id not in directory.hold_routes
            directory.hold_routes[event.transaction_id] = (event.from_wallet_id, event.to_wallet_id, event.amount)
            if event.type == TransactionType.WITHDRAWAL:
                assert event.transaction_id not in directory.withdrawal_wallets
                directory.withdrawal_wallets[event.transaction_id] = event.from_wallet_id
        elif isinstance(event, HoldCaptured | HoldVoided):
            del directory.hold_routes[event.transaction_id]
    elif isinstance(event, RequestsRefused):
        # Final outcomes: each refused key answers with its rejection from now on, kept and
        # expired exactly like the records of accepted requests.
        assert 1 <= len(event.refusals) <= BATCH_ITEMS_MAX, len(event.refusals)
        records = directory.idempotency
        at_us = event.at_us
        for idempotency, rejection in event.refusals:
            key = (idempotency.scope, idempotency.key)
            assert key not in records
            records[key] = new_idempotency_record(idempotency.fingerprint, lsn, at_us, rejection, -1)
        _expire_idempotency(directory)
    elif isinstance(event, ReservationSettled):
        if event.credited:
            directory.transit[event.asset] = directory.transit.get(event.asset, 0) - event.amount
    elif isinstance(event, TransitSettled):
        for transaction_id in event.transaction_ids:
            del directory.owed[transaction_id]
    elif isinstance(event, TransfersAborted):
        for transaction_id in event.transaction_ids:
            assert transaction_id not in directory.owed
            directory.aborted.add(transaction_id)
    elif isinstance(event, BatchPrepared):
        assert directory.groups > 1 and event.batch not in directory.prepared, event.batch
        directory.prepared[event.batch] = (event, lsn)
        for row in event.rows:
            assert row[0] not in directory.prepared_ids and row[0] not in directory.aborted, row
            directory.prepared_ids[row[0]] = event.batch
            if row[8] is not None:
                key = (row[8][0], row[8][1])
                assert key not in directory.idempotency and key not in directory.prepared_keys, key
                directory.prepared_keys[key] = event.batch
    elif isinstance(event, BatchDecided):
        assert directory.groups > 1 and event.batch not in directory.decided, event.batch
        directory.decided[event.batch] = event.committed
    elif isinstance(event, BatchReleased):
        prepared, _ = _end_prepared(directory, event.batch)
        directory.aborted.update(row[0] for row in prepared.rows)
    elif isinstance(event, GroupConfigured):
        assert directory.groups == 1 and event.groups > 1 and 0 <= event.group < event.groups, event
        directory.group = event.group
        directory.groups = event.groups
    elif isinstance(event, AssetCreated):
        assert event.code not in directory.assets
        directory.assets[event.code] = Asset(code=event.code, scale=event.scale, created_at_us=event.at_us)
    elif isinstance(event, TokenCreated):
        assert event.token_hash not in directory.tokens
        directory.tokens[event.token_hash] = Token(
            token_hash=event.token_hash, prefix=event.prefix, owner_id=event.owner_id, created_at_us=event.at_us
        )
        directory.token_prefixes[event.prefix] = event.token_hash
    elif isinstance(event, TokenRevoked):
        token_hash = directory.token_prefixes.pop(event.prefix)
        del directory.tokens[token_hash]
    elif isinstance(event, AlertCreated):
        assert event.alert_id not in directory.alert_wallets
        directory.alert_wallets[event.alert_id] = event.wallet_id
    elif isinstance(event, AlertDeleted):
        assert directory.alert_wallets[event.alert_id] == event.wallet_id
        del directory.alert_wallets[event.alert_id]


_POSITIONS = tuple(range(BATCH_ITEMS_MAX))  # (compiled by mypyc, a record stores its position unboxed)


def record_keys(directory: Directory, record: TransfersPosted, lsn: int) -> None:
    """The idempotency records of ``record``'s keyed transfers, appended at ``lsn``: each points
    at its row (``IdempotencyRecord.position``) of the record's payload, which they share."""
    records = directory.idempotency
    at_us = record.at_us
    payload = record.payload
    source: TransfersPosted | bytes = record if payload is None else payload
    # Memory per key: the scope is interned (many keys share it, and a decoded record has its own
    # copy per row) and the position is one of the shared ints (above 256 each would be its own).
    intern = sys.intern
    assert len(record.rows) <= len(_POSITIONS)
    for position, row in zip(_POSITIONS, record.rows, strict=False):
        idempotency = row[8]
        if idempotency is not None:
            key = (intern(idempotency[0]), idempotency[1])
            assert key not in records
            records[key] = new_idempotency_record(idempotency[2], lsn, at_us, source, position)


def _expire_idempotency(directory: Directory) -> None:
    horizon = directory.at_us - IDEMPOTENCY_RETENTION_US
    if horizon < directory.idempotency_front_us:
        # Nothing can have expired. Finding the front of a dict walks the holes that deletions
        # from the front left (until CPython's next resize): hundreds of microseconds once
        # hundreds of thousands of records expired or moved to the on-disk index.
        return
    records = directory.idempotency
    while records:
        key = next(iter(records))
        at_us = records[key].at_us
        if at_us >= horizon:
            directory.idempotency_front_us = at_us
            return
        del records[key]
    directory.idempotency_front_us = 0


_BALANCE = AlertField.BALANCE
_BELOW = AlertDirection.BELOW


def _watch(state: State, wallet: Wallet, transaction_id: str) -> None:
    """Evaluates the alerts of ``wallet`` after ``transaction_id`` changed it (callers look
    ``wallet.id`` up in ``state.watched`` first: most wallets have no alert)."""
    for alert in state.watched[wallet.id]:
        value = wallet.balance if alert.field == _BALANCE else wallet.balance - wallet.held
        holds = value < alert.threshold if alert.direction == _BELOW else value > alert.threshold
        if holds == alert.triggered:
            continue
        alert.triggered = holds
        if holds:  # a crossing: false before this change, true after it
            state.crossings.append(new_alert_fired(
                alert.id, alert.wallet_id, alert.field, alert.direction, alert.threshold, value, transaction_id
            ))


_SPENDING = SPENDING_TYPES


def _floor(wallet: Wallet) -> int:
    """How low ``available`` may be now (``Limits.floor``; 0 without limits)."""
    limits = wallet.limits
    return 0 if limits is None else limits.floor


def _debit_floor(wallet: Wallet) -> int:
    """How low a debit may take ``available``: minus the overdraft limit."""
    limits = wallet.limits
    return 0 if limits is None else -limits.overdraft


def _spend(wallet: Wallet, amount: int, at_us: int) -> None:
    """Counts a debit at ``at_us`` in the wallet's spend windows: a later day starts the daily
    total at 0 (a later month the monthly too); an earlier moment counts in the wallet's own,
    later, window (timestamps do not go backwards, but replay must not depend on it)."""
    window = wallet.window
    if window is None or window.day != at_us // DAY_US:  # not the wallet's window: look it up
        now = spend_window(at_us)
        if window is None or now.day > window.day:
            if window is None or now.month != window.month:
                wallet.spent_month = 0
            wallet.spent_day = 0
            wallet.window = now
    spent_month = wallet.spent_month
    if wallet.spent_day == spent_month:
        # One int object for both totals while the month's spending is all today's (most
        # wallets, most days): 32 bytes less per wallet than two equal ints.
        wallet.spent_day = wallet.spent_month = spent_month + amount
    else:
        wallet.spent_day += amount
        wallet.spent_month = spent_month + amount


def _unspend(wallet: Wallet, amount: int, created_at_us: int) -> None:
    """Gives back what a hold created at ``created_at_us`` releases (voided, expired or captured
    for less): to the day and month it was counted in, while they are still the wallet's
    windows. A release in a later window gives nothing back to that window (the new window's
    spending is its own; the old window is over)."""
    window = wallet.window
    if window is None:
        return  # a hold from before spending was tracked (a version 3 snapshot)
    created = spend_window(created_at_us)
    if created.day == window.day:
        wallet.spent_day = max(0, wallet.spent_day - amount)
    if created.month == window.month:
        wallet.spent_month = max(0, wallet.spent_month - amount)


def apply_debit(state: State, event: Transferred | Refunded, lsn: int, *, held: bool = False) -> None:
    """The sender's side of a transfer. ``held``: a row of a prepared part of a batch, posted
    once its holds were let go; it was decided against the overdraft limit of that moment, and
    a limit lowered since keeps the wallet's floor (``Limits.floor``), so that is its bound, as
    for a hold's capture."""
    sender = state.wallets[event.from_wallet_id]
    assert sender.asset == event.asset
    if is_treasury(sender.id):
        assert sender.balance - event.amount >= INT64_MIN
    else:
        limits = sender.limits
        amount = event.amount
        assert sender.available - amount >= (0 if limits is None else limits.floor if held else -limits.overdraft)
        if event.type in _SPENDING:  # ``counts_as_spend``, inline: once per transfer
            window = sender.window
            if window is not None and window.day == event.at_us // DAY_US:
                # ``_spend`` inline for the usual case (the wallet already spent today).
                spent_month = sender.spent_month
                if sender.spent_day == spent_month:
                    sender.spent_day = sender.spent_month = spent_month + amount
                else:
                    sender.spent_day += amount
                    sender.spent_month = spent_month + amount
            else:
                _spend(sender, amount, event.at_us)
    sender.balance -= event.amount
    # max(): on a live shard a credit can arrive after later records touched the same wallet
    # (the cross-shard lag); the result must equal replay in LSN order.
    sender.updated_at_us = max(sender.updated_at_us, event.at_us)
    sender.lsn = max(sender.lsn, lsn)
    if state.watched and sender.id in state.watched:
        _watch(state, sender, event.transaction_id)


def _touch(wallet: Wallet, at_us: int, lsn: int) -> None:
    wallet.updated_at_us = max(wallet.updated_at_us, at_us)
    wallet.lsn = max(wallet.lsn, lsn)


def apply_sender(state: State, event: Event, lsn: int) -> None:
    """The part of a hold or withdrawal event that lands on the sender's shard."""
    if isinstance(event, HoldCreated):
        sender = state.wallets[event.from_wallet_id]
        assert not is_treasury(sender.id)
        assert sender.asset == event.asset
        assert sender.available - event.amount >= _debit_floor(sender)
        assert event.transaction_id not in state.holds
        sender.held += event.amount
        if counts_as_spend(event.type):
            _spend(sender, event.amount, event.at_us)
        _touch(sender, event.at_us, lsn)
        if state.watched and sender.id in state.watched:
            _watch(state, sender, event.transaction_id)
        state.holds[event.transaction_id] = Hold(
            transaction_id=event.transaction_id, type=event.type, from_wallet_id=event.from_wallet_id,
            to_wallet_id=event.to_wallet_id, asset=event.asset, amount=event.amount,
            description=event.description, metadata=event.metadata, created_at_us=event.at_us,
            deadline_us=event.deadline_us, lsn=lsn,
        )
        if event.type == TransactionType.WITHDRAWAL:
            assert event.destination is not None
            assert event.transaction_id not in state.withdrawals
            state.withdrawals[event.transaction_id] = Withdrawal(
                id=event.transaction_id, wallet_id=event.from_wallet_id, asset=event.asset,
                amount=event.amount, destination=event.destination, created_at_us=event.at_us, lsn=lsn,
            )
    elif isinstance(event, HoldCaptured | HoldVoided):
        hold = state.holds.pop(event.transaction_id)
        assert event.created_lsn == hold.lsn
        sender = state.wallets[hold.from_wallet_id]
        assert sender.held >= hold.amount
        sender.held -= hold.amount
        if isinstance(event, HoldCaptured):
            assert 1 <= event.amount <= hold.amount
            assert event.held_amount == hold.amount
            sender.balance -= event.amount
            # Capturing never lowers ``available`` (the held amount was already out of it).
            assert sender.available >= _floor(sender)
            released = hold.amount - event.amount
        else:
            assert event.amount == hold.amount
            released = hold.amount
        if released and counts_as_spend(hold.type):
            _unspend(sender, released, hold.created_at_us)
        _touch(sender, event.at_us, lsn)
        if state.watched and sender.id in state.watched:
            _watch(state, sender, event.transaction_id)
        if hold.type == TransactionType.WITHDRAWAL:
            withdrawal = state.withdrawals[hold.transaction_id]
            if isinstance(event, HoldCaptured):
                assert withdrawal.status == WithdrawalStatus.PROCESSING
                withdrawal.status = WithdrawalStatus.COMPLETED
                withdrawal.reference = event.reference
            else:
                assert event.reason == VoidReason.REFUSED
                withdrawal.status = WithdrawalStatus.FAILED
                withdrawal.last_error = event.detail
            withdrawal.next_attempt_at_us = 0
            withdrawal.updated_at_us = event.at_us
            withdrawal.lsn = lsn
    else:
        assert isinstance(event, WithdrawalUpdated)
        withdrawal = state.withdrawals[event.withdrawal_id]
        assert withdrawal.status not in (WithdrawalStatus.COMPLETED, WithdrawalStatus.FAILED)
        withdrawal.status = event.status
        withdrawal.attempts = event.attempts
        withdrawal.last_error = event.last_error
        withdrawal.next_attempt_at_us = event.next_attempt_at_us
        withdrawal.updated_at_us = event.at_us
        withdrawal.lsn = lsn


def apply_refund(state: State, event: Refunded, lsn: int) -> None:
    """The part of a refund that lands on the refunding wallet's shard: the debit, and the
    original's refunded-so-far tally (which that shard keeps: ``State.refunded``)."""
    apply_debit(state, event, lsn)
    tally = state.refunded.get(event.refund_of)
    refunded = event.amount if tally is None else tally.refunded + event.amount
    if tally is not None:
        assert tally.wallet_id == event.from_wallet_id, (tally, event)
        assert tally.original_amount == event.original_amount, (tally, event)
    assert 1 <= refunded <= event.original_amount, (refunded, event)
    state.refunded[event.refund_of] = RefundTally(
        wallet_id=event.from_wallet_id, original_amount=event.original_amount, refunded=refunded
    )


def apply_credit(state: State, event: Transferred | HoldCaptured | Refunded, lsn: int) -> None:
    receiver = state.wallets[event.to_wallet_id]
    assert receiver.asset == event.asset
    assert receiver.balance + event.amount <= INT64_MAX
    receiver.balance += event.amount
    receiver.updated_at_us = max(receiver.updated_at_us, event.at_us)
    receiver.lsn = max(receiver.lsn, lsn)
    if state.watched and receiver.id in state.watched:
        _watch(state, receiver, event.transaction_id)


def apply_sent_across(directory: Directory, event: Transferred | Refunded | HoldCaptured) -> None:
    """The credit side of a transfer (a refund, a hold's capture) to another group (its receiver
    is not here): the money goes to this group's transit account, and the group owes the
    receiver's group the credit, under the id the receiver's group reserved it with (a
    capture's attempt id, else the transaction's)."""
    assert directory.groups > 1, event
    owed_id = event.reservation if isinstance(event, HoldCaptured) else event.transaction_id
    assert owed_id is not None and owed_id not in directory.aborted, event
    directory.transit[event.asset] = directory.transit.get(event.asset, 0) + event.amount
    assert owed_id not in directory.owed, event
    directory.owed[owed_id] = event.to_wallet_id


def _end_prepared(directory: Directory, batch: str) -> tuple[BatchPrepared, int]:
    """Forgets a prepared part of a batch (posted or released) and its keys and ids."""
    prepared, lsn = directory.prepared.pop(batch)
    for row in prepared.rows:
        del directory.prepared_ids[row[0]]
        if row[8] is not None:
            del directory.prepared_keys[(row[8][0], row[8][1])]
    return prepared, lsn


def apply_prepared(state: State, reserved: Callable[[str], dict[str, int] | None], rows: tuple[TransferRow, ...],
                   at_us: int, lsn: int, *, hold: bool) -> None:
    """The wallets' side of a prepared part of a batch of several sending groups
    (``BatchPrepared``): with ``hold``, what ``prepared_effects`` names is held on the senders
    (not spendable) and reserved on this group's receivers (not closable); without, both are let
    go (before its ``TransfersPosted`` posts the rows, or when ``BatchReleased`` releases them).
    ``state`` holds the wallets (and their alerts); ``reserved`` gives the ``reserved_in`` of
    the shard that owns a wallet, None for a wallet of another group. Replay and the live shards
    call it alike."""
    held, incoming = prepared_effects(rows, lambda wallet_id: reserved(wallet_id) is not None)
    transaction_id = rows[0][0]
    for wallet_id, amount in held.items():
        wallet = state.wallets[wallet_id]
        if hold:
            assert wallet.available - amount >= _debit_floor(wallet), (wallet, amount)
            wallet.held += amount
        else:
            assert wallet.held >= amount, (wallet, amount)
            wallet.held -= amount
        _touch(wallet, at_us, lsn)
        if state.watched and wallet_id in state.watched:
            _watch(state, wallet, transaction_id)
    for wallet_id, amount in incoming.items():
        receiving = reserved(wallet_id)
        assert receiving is not None
        left = receiving.get(wallet_id, 0) + (amount if hold else -amount)
        assert left >= 0
        if left:
            receiving[wallet_id] = left
        else:
            del receiving[wallet_id]


def apply_reservation(state: State, event: CreditReserved | ReservationSettled, lsn: int) -> None:
    """The part of a reservation record that lands on the shard of its wallet."""
    wallet = state.wallets[event.wallet_id]
    assert wallet.asset == event.asset
    if isinstance(event, CreditReserved):
        assert wallet.status != WalletStatus.CLOSED
        assert event.transaction_id not in state.reservations
        reserved = state.reserved_in.get(wallet.id, 0) + event.amount
        assert wallet.balance + reserved <= INT64_MAX
        state.reserved_in[wallet.id] = reserved
        state.reservations[event.transaction_id] = Reservation(
            transaction_id=event.transaction_id, wallet_id=event.wallet_id, asset=event.asset,
            amount=event.amount, from_wallet_id=event.from_wallet_id, from_group=event.from_group,
            description=event.description, metadata=event.metadata, at_us=event.at_us, lsn=lsn,
            refund_of=event.refund_of, capture_of=event.capture_of,
        )
        return
    reservation = state.reservations.pop(event.transaction_id)
    assert (reservation.wallet_id, reservation.amount) == (event.wallet_id, event.amount), (reservation, event)
    left = state.reserved_in[wallet.id] - event.amount
    if left:
        state.reserved_in[wallet.id] = left
    else:
        del state.reserved_in[wallet.id]
    if event.credited:
        assert wallet.balance + event.amount <= INT64_MAX
        wallet.balance += event.amount
        _touch(wallet, event.at_us, lsn)
        if state.watched and wallet.id in state.watched:
            _watch(state, wallet, event.transaction_id)


def apply_alerts(state: State, event: AlertCreated | AlertDeleted | AlertsTriggered, lsn: int) -> None:
    """The part of an alert record that lands on the shard owning the alert's wallet."""
    if isinstance(event, AlertCreated):
        wallet = state.wallets[event.wallet_id]
        assert event.alert_id not in state.alerts
        alert = Alert(
            id=event.alert_id, wallet_id=event.wallet_id, field=event.field, direction=event.direction,
            threshold=event.threshold, triggered=event.triggered, created_at_us=event.at_us, lsn=lsn,
        )
        # ``triggered`` is the record's (decided against the wallet as the live shard had it,
        # which is what replay rebuilds): a fact, not re-decided.
        assert wallet.id == alert.wallet_id
        state.alerts[alert.id] = alert
        state.watched.setdefault(alert.wallet_id, []).append(alert)
    elif isinstance(event, AlertDeleted):
        alert = state.alerts.pop(event.alert_id)
        watching = state.watched[alert.wallet_id]
        watching.remove(alert)
        if not watching:
            del state.watched[alert.wallet_id]
    else:
        # Pays what the changes before it owed. Tolerant on purpose: were a firing ever not owed
        # here (it cannot be while changes apply in LSN order), recovery must not refuse a log
        # that recorded a firing; ``tests/sim`` checks that each one was owed.
        crossings = state.crossings
        for firing in event.firings:
            if firing in crossings:
                crossings.remove(firing)


def apply_wallets(state: State, event: Event, lsn: int) -> None:
    """The part of a non-transfer event that lands on wallets (all on the same shard)."""
    if isinstance(event, WalletCreated):
        assert event.wallet_id not in state.wallets
        state.wallets[event.wallet_id] = Wallet(
            id=event.wallet_id,
            owner_id=event.owner_id,
            asset=state.directory.assets[event.asset].code,  # one string per asset, not per wallet
            metadata=event.metadata,
            created_at_us=event.at_us,
            lsn=lsn,
        )
    elif isinstance(event, WalletStatusChanged):
        wallet = state.wallets[event.wallet_id]
        assert wallet.status != WalletStatus.CLOSED
        if event.status == WalletStatus.CLOSED:
            assert wallet.balance == 0
            assert wallet.held == 0
            assert wallet.id not in state.reserved_in
        wallet.status = event.status
        wallet.updated_at_us = max(wallet.updated_at_us, event.at_us)
        wallet.lsn = max(wallet.lsn, lsn)
    elif isinstance(event, WalletUpdated):
        wallet = state.wallets[event.wallet_id]
        assert wallet.status != WalletStatus.CLOSED
        assert not is_treasury(wallet.id)
        assert 0 <= event.overdraft_limit <= INT64_MAX
        assert event.daily_limit is None or event.daily_limit >= 1
        assert event.monthly_limit is None or event.monthly_limit >= 1
        floor = min(-event.overdraft_limit, wallet.available)
        if floor == 0 and event.daily_limit is None and event.monthly_limit is None:
            wallet.limits = None  # the defaults: the hot path's one attribute test
        else:
            wallet.limits = Limits(overdraft=event.overdraft_limit, daily=event.daily_limit,
                                   monthly=event.monthly_limit, floor=floor)
        wallet.metadata = event.metadata
        wallet.updated_at_us = max(wallet.updated_at_us, event.at_us)
        wallet.lsn = max(wallet.lsn, lsn)
    elif isinstance(event, AssetCreated):
        wallet_id = treasury_id(event.code)
        assert wallet_id not in state.wallets
        state.wallets[wallet_id] = Wallet(
            id=wallet_id, owner_id=SYSTEM_OWNER, asset=event.code, metadata=None,
            created_at_us=event.at_us, lsn=lsn,
        )


def _reserved_here(state: State) -> Callable[[str], dict[str, int] | None]:
    def reserved(wallet_id: str) -> dict[str, int] | None:
        return state.reserved_in if wallet_id in state.wallets else None
    return reserved


def apply(state: State, event: Event, lsn: int) -> None:
    """Applies a whole record to a state that owns every wallet it touches (replay)."""
    if isinstance(event, BatchReleased):
        rows = state.directory.prepared[event.batch][0].rows
        apply_directory(state.directory, event, lsn)
        apply_prepared(state, _reserved_here(state), rows, event.at_us, lsn, hold=False)
        return
    apply_directory(state.directory, event, lsn)
    if isinstance(event, BatchPrepared):
        apply_prepared(state, _reserved_here(state), event.rows, event.at_us, lsn, hold=True)
        return
    if isinstance(event, Transferred):
        apply_debit(state, event, lsn)
        if state.directory.groups > 1 and event.to_wallet_id not in state.wallets:
            apply_sent_across(state.directory, event)
        else:
            apply_credit(state, event, lsn)
    elif isinstance(event, CreditReserved | ReservationSettled):
        apply_reservation(state, event, lsn)
    elif isinstance(event, TransfersPosted):
        across = state.directory.groups > 1
        if event.settles is not None:  # a prepared part of a batch, posted: its holds let go first
            apply_prepared(state, _reserved_here(state), event.rows, event.at_us, lsn, hold=False)
        held = event.settles is not None
        for transfer in event.transfers:  # the reference path: ``ledger._part.apply_part`` is the fast one
            apply_debit(state, transfer, lsn, held=held)
            if across and transfer.to_wallet_id not in state.wallets:  # an atomic batch's item to another group
                apply_sent_across(state.directory, transfer)
            else:
                apply_credit(state, transfer, lsn)
    elif isinstance(event, HoldCreated | HoldVoided | WithdrawalUpdated):
        apply_sender(state, event, lsn)
    elif isinstance(event, HoldCaptured):
        apply_sender(state, event, lsn)
        if event.reservation is not None:  # captured to another group
            apply_sent_across(state.directory, event)
        else:
            apply_credit(state, event, lsn)
    elif isinstance(event, Refunded):
        apply_refund(state, event, lsn)
        if state.directory.groups > 1 and event.to_wallet_id not in state.wallets:  # to another group
            apply_sent_across(state.directory, event)
        else:
            apply_credit(state, event, lsn)
    elif isinstance(event, AlertCreated | AlertDeleted | AlertsTriggered):
        apply_alerts(state, event, lsn)
    elif not isinstance(event, RequestsRefused | GroupConfigured | TransitSettled | TransfersAborted
                        | BatchDecided):
        apply_wallets(state, event, lsn)  # (those five land in the directory alone)

