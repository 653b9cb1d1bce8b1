"""The batch-shaped hot path: a non-atomic batch part decided and applied as a batch.

Stdlib only, pure like ``ledger._decide`` and ``ledger._apply`` (``decide_part`` mutates
nothing; ``apply_part`` and ``apply_credits`` are mutators in the sense of ``ledger._apply``).
They give exactly the answers and the state of the per-item path they replace
(``decide_transfers`` with ``decide_transfer``, then ``apply_directory``, ``apply_debit`` and
``apply_credit`` per transfer); ``tests/ledger/test_part.py`` checks that on random batches
against that path, kept as the reference.

Why: a batch item used to cost about ten function calls, each paying CPython's call overhead
and looking the same wallets and dicts up again (``docs/performance.md``, "Batch-shaped hot
path"). Here one loop per part runs every check of the rejection-order table
(``ledger._decide``) inline for the common case: a fresh key (row 0), both wallets present
(rows 1, 2), the owner (1b), two wallets (3), one asset (4), an open sender (5) and receiver
(6), the funds of a wallet without limits (7) and the receiver's int64 bound (8). An item that
fails any of these tests, or whose sender has limits (row 7b and the overdraft), is a treasury
(its own overflow row) or asks for a hold, is decided by ``decide_transfer`` itself, with the
same ``moved`` and ``spent`` carried: every rejection, with its reason and detail, comes from
the one implementation of the table, and no check is skipped on either path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ledger._apply import (
    _expire_idempotency,
    _spend,
    _watch,
    apply_credit,
    apply_debit,
    apply_directory,
    apply_sent_across,
    record_keys,
)
from ledger._decide import _PASSED, CreditCheck, Decision, decide_transfer
from ledger._decide import check_credit as _check_credit
from ledger._model import (
    BATCH_ITEMS_MAX,
    DAY_US,
    INT64_MAX,
    INT64_MIN,
    SPENDING_TYPES,
    TREASURY_PREFIX,
    Duplicate,
    Event,
    Rejection,
    Transfer,
    Transferred,
    TransferRow,
    TransfersPosted,
    WalletStatus,
    transfer_row,
)
from ledger._state import State

# What ``decide_part`` answers per item: the accepted transfer as the row its record will hold
# (``TransferRow``, a plain tuple: not wrapped in a list as ``Decision`` is, and no
# ``Transferred`` built), or the rejection or replay.
PartOutcome = TransferRow | Rejection | Duplicate

# Bound once (a global read is cheaper than an enum member read through its class). A sender
# passes row 5 on the inline path only if its status is this very member; anything else goes to
# ``decide_transfer``.
_ACTIVE = WalletStatus.ACTIVE
_CLOSED = WalletStatus.CLOSED
_SPENDING = SPENDING_TYPES


def decide_part(
    state: State,
    items: Sequence[tuple[Transfer, CreditCheck | None]],
    now_us: int,
    pending: Mapping[str, int],
) -> list[PartOutcome]:
    """``decide_transfers`` (not atomic) for a batch part, item by item the same outcomes.

    ``items`` as there: each command with the receiving shard's verdict, or None when the
    receiver lives in ``state`` (checked here, counting ``pending`` and earlier items)."""
    directory = state.directory
    records = directory.idempotency
    recalled = directory.recalled
    prepared = directory.prepared_keys  # keys of batches in progress: ``check_idempotency``
    wallets = state.wallets
    moved: dict[str, int] = {}
    spent: dict[str, int] = {}  # only senders with limits, as in ``decide_transfers``
    outcomes: list[PartOutcome] = []
    append = outcomes.append
    for command, credit in items:
        sender_id = command.from_wallet_id
        assert sender_id is not None  # batches carry no deposits
        to_wallet_id = command.to_wallet_id
        amount = command.amount
        idempotency = command.idempotency
        # The common case, every row inline; ``fast`` stays True only if each test passed.
        fast = command.hold_timeout_s is None and 1 <= amount <= INT64_MAX
        if fast and idempotency is not None:
            key = (idempotency.scope, idempotency.key)
            fast = key not in records and key not in recalled and not (prepared and key in prepared)  # row 0
        sender = wallets.get(sender_id) if fast else None
        sender_moved = moved.get(sender_id, 0)
        if sender is not None:
            owner_id = command.owner_id
            fast = (
                (owner_id is None or sender.owner_id == owner_id)  # 1b
                and sender_id != to_wallet_id  # 3
                and sender.status is _ACTIVE  # 5
                and sender.limits is None  # 7b and the overdraft: ``check_debit``
                and not sender_id.startswith(TREASURY_PREFIX)  # a treasury: its own row 8
                and sender.balance - sender.held + sender_moved >= amount  # 7
            )
        else:
            fast = False
        if fast:
            assert sender is not None
            if credit is None:
                receiver = wallets.get(to_wallet_id)
                fast = (
                    receiver is not None  # 2
                    and receiver.status != _CLOSED  # 6
                    and receiver.asset == sender.asset  # 4
                    and receiver.balance + pending.get(to_wallet_id, 0) + moved.get(to_wallet_id, 0) + amount
                    <= INT64_MAX  # 8
                )
            else:
                fast = credit.failure is None and credit.asset == sender.asset  # 2, 6, 8 there; 4
        if fast:
            assert sender is not None
            # After this point the item is accepted (the row of what ``decide_transfer`` builds).
            append((
                command.transaction_id, command.type, sender_id, to_wallet_id, sender.asset,
                amount, command.description, command.metadata,
                None if idempotency is None else (idempotency.scope, idempotency.key, idempotency.fingerprint),
            ))
            moved[sender_id] = sender_moved - amount
            if credit is None:
                moved[to_wallet_id] = moved.get(to_wallet_id, 0) + amount
            continue
        # Any other case: the reference decides, with the same carried effects.
        receiver_here = credit is None
        if credit is None:
            credit = _check_credit(
                state, command, pending=pending.get(to_wallet_id, 0) + moved.get(to_wallet_id, 0)
            )
        decision: Decision = decide_transfer(
            state, command, now_us, credit, moved=sender_moved, spent=spent.get(sender_id, 0) if spent else 0
        )
        if isinstance(decision, list):
            (event,) = decision
            assert isinstance(event, Transferred)
            append(transfer_row(event))
            moved[sender_id] = sender_moved - amount
            if wallets[sender_id].limits is not None:
                spent[sender_id] = spent.get(sender_id, 0) + amount
            if receiver_here:
                moved[to_wallet_id] = moved.get(to_wallet_id, 0) + amount
        else:
            append(decision)
    return outcomes


def check_credit(state: State, command: Transfer, pending: int) -> CreditCheck:
    """``ledger._decide.check_credit`` (rows 2, 6, 8 on the receiver's shard: step 1 of a batch
    item whose sender lives elsewhere), the passing case inline: the shared passed value of the
    receiver's asset. Any other case, and an asset not seen yet, asks ``check_credit``."""
    wallet = state.wallets.get(command.to_wallet_id)
    if wallet is not None and wallet.status != _CLOSED and wallet.balance + pending + command.amount <= INT64_MAX:
        passed = _PASSED.get(wallet.asset)
        if passed is not None:
            return passed
    return _check_credit(state, command, pending=pending)


def apply_part(state: State, record: TransfersPosted, local: Sequence[bool], lsn: int) -> None:
    """Applies a ``TransfersPosted`` record appended at ``lsn`` on the sender's shard: what
    ``apply_directory`` does with the record, then ``apply_debit`` of each transfer and, when
    ``local[i]``, its ``apply_credit`` (the receiver lives here too), in order, with the same
    asserts and alert evaluations. Works on the record's rows: no ``Transferred`` is built."""
    rows = record.rows
    at_us = record.at_us
    assert len(rows) == len(local)
    directory = state.directory
    assert lsn == directory.lsn + 1, (lsn, directory.lsn)
    assert 1 <= len(rows) <= BATCH_ITEMS_MAX, len(rows)
    directory.lsn = lsn
    if at_us > directory.at_us:
        directory.at_us = at_us
    record_keys(directory, record, lsn)
    _expire_idempotency(directory)
    wallets = state.wallets
    watched = state.watched
    day = at_us // DAY_US
    for (transaction_id, type_, from_wallet_id, to_wallet_id, asset, amount, _, _, _), here in zip(
        rows, local, strict=True
    ):
        # ``apply_debit``
        sender = wallets[from_wallet_id]
        assert sender.asset == asset
        if sender.id.startswith(TREASURY_PREFIX):
            assert sender.balance - amount >= INT64_MIN
        else:
            limits = sender.limits
            assert sender.balance - sender.held - amount >= (0 if limits is None else -limits.overdraft)
            if type_ in _SPENDING:
                window = sender.window
                if window is not None and window.day == day:
                    spent_month = sender.spent_month
                    if sender.spent_day == spent_month:
                        sender.spent_day = sender.spent_month = spent_month + amount
                    else:
                        sender.spent_day += amount
                        sender.spent_month = spent_month + amount
                else:
                    _spend(sender, amount, at_us)
        sender.balance -= amount
        if sender.updated_at_us < at_us:
            sender.updated_at_us = at_us
        if sender.lsn < lsn:
            sender.lsn = lsn
        if watched and sender.id in watched:
            _watch(state, sender, transaction_id)
        if here:
            # ``apply_credit``
            receiver = wallets[to_wallet_id]
            assert receiver.asset == asset
            assert receiver.balance + amount <= INT64_MAX
            receiver.balance += amount
            if receiver.updated_at_us < at_us:
                receiver.updated_at_us = at_us
            if receiver.lsn < lsn:
                receiver.lsn = lsn
            if watched and receiver.id in watched:
                _watch(state, receiver, transaction_id)


def apply_part_of_group(state: State, record: TransfersPosted, lsn: int) -> None:
    """``apply_part`` on replay in a group of several (ADR 0013): a row whose receiver is not in
    ``state`` is an atomic batch's item to another group, credited to the transit account."""
    wallets = state.wallets
    local = [row[3] in wallets for row in record.rows]
    apply_part(state, record, local, lsn)
    if not all(local):
        for transfer, here in zip(record.transfers, local, strict=True):
            if not here:
                apply_sent_across(state.directory, transfer)


def apply_posted(state: State, record: Event, local: Sequence[bool], lsn: int) -> None:
    """Applies a batch part's record (``ledger._batch._records``: a ``TransfersPosted``, or a
    lone ``Transferred``) appended at ``lsn`` on the sender's shard; ``local`` as in
    ``apply_part``."""
    if type(record) is TransfersPosted:
        apply_part(state, record, local, lsn)
        return
    assert type(record) is Transferred and len(local) == 1
    apply_directory(state.directory, record, lsn)
    apply_debit(state, record, lsn)
    if local[0]:
        apply_credit(state, record, lsn)


# Step 3 of a batch item whose receiver lives on another shard: its row, the record's time and
# LSN.
Credit = tuple[TransferRow, int, int]


def apply_credits(state: State, credits: Sequence[Credit]) -> None:
    """``apply_credit`` of each (row, time, LSN), in order: step 3 of a batch part on the
    receiving shard."""
    wallets = state.wallets
    watched = state.watched
    for row, at_us, lsn in credits:
        amount = row[5]
        receiver = wallets[row[3]]
        assert receiver.asset == row[4]
        assert receiver.balance + amount <= INT64_MAX
        receiver.balance += amount
        if receiver.updated_at_us < at_us:
            receiver.updated_at_us = at_us
        if receiver.lsn < lsn:
            receiver.lsn = lsn
        if watched and receiver.id in watched:
            _watch(state, receiver, row[0])
