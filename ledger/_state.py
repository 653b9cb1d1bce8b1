"""The ledger's replicated state: the data the state machine decides against and mutates.

Stdlib only: no trio, no I/O, no clock, no randomness.

State is split the way the shard actors own it: a ``Directory`` (assets, tokens, idempotency
records: small, shared, mutated only inside an actor's synchronous step and always in log
order) and a ``State`` per shard holding the wallets that shard owns. A full replay uses one
``State`` holding every wallet.

The state machine around it: ``ledger._decide`` (``decide_*``: pure, total, returns events, a
``Rejection`` or a ``Duplicate``), ``ledger._apply`` (``apply*``: the only mutators) and
``ledger._invariants`` (``check_invariants``, ``state_digest``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ledger._model import (
    Alert,
    AlertFired,
    Asset,
    BatchPrepared,
    Hold,
    IdempotencyRecord,
    RefundTally,
    Reservation,
    Token,
    TransferRow,
    Wallet,
    Withdrawal,
)


@dataclass(slots=True)
class Directory:
    """Assets, tokens and idempotency records: one per process, mutated in log order."""

    assets: dict[str, Asset] = field(default_factory=dict)
    tokens: dict[bytes, Token] = field(default_factory=dict)
    token_prefixes: dict[str, bytes] = field(default_factory=dict)
    # Insertion order is LSN order, so expiry pops from the front.
    idempotency: dict[tuple[str, str], IdempotencyRecord] = field(default_factory=dict)
    # Not state (no digest, no snapshot): older records brought back from the on-disk index
    # for requests in flight (``ledger._key_index``), and the ``at_us`` of the oldest record in
    # memory when expiry last looked (0: unknown), so that expiry does not walk the front of a
    # big dict on every record.
    recalled: dict[tuple[str, str], IdempotencyRecord] = field(default_factory=dict)
    idempotency_front_us: int = 0
    # Routing indexes, derived from the shards' holds and withdrawals (rebuilt on load):
    # pending hold -> (sender, receiver, amount); withdrawal -> its wallet.
    hold_routes: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    withdrawal_wallets: dict[str, str] = field(default_factory=dict)
    # Alert -> its wallet (routes DELETE /v1/alerts/{id} to the wallet's shard).
    alert_wallets: dict[str, str] = field(default_factory=dict)
    lsn: int = 0
    at_us: int = 0
    # Transfers between ledger groups (ADR 0013). ``transit``: this group's transit account per
    # asset (credited by what its wallets send to other groups, debited by what they receive
    # from them; a group's wallets, treasury and transit sum to zero). ``owed``: transfers this
    # group committed whose receiver (in another group) has not yet been seen to credit them,
    # by id, with that wallet. ``aborted``: reserved transfers this group will never commit.
    transit: dict[str, int] = field(default_factory=dict)
    owed: dict[str, str] = field(default_factory=dict)
    aborted: set[str] = field(default_factory=set)
    # Atomic batches whose senders are in several groups (ADR 0013). ``prepared``: this group's
    # parts held and not yet posted or released, by batch id, with the LSN of the record;
    # ``prepared_keys`` and ``prepared_ids`` the keys and transaction ids of their items
    # (derived: ``index_holds``). ``decided``: the batches this group coordinates, by id,
    # committed or not (kept, as ``aborted`` is).
    prepared: dict[str, tuple[BatchPrepared, int]] = field(default_factory=dict)
    prepared_keys: dict[tuple[str, str], str] = field(default_factory=dict)
    prepared_ids: dict[str, str] = field(default_factory=dict)
    decided: dict[str, bool] = field(default_factory=dict)
    # Which group of how many this ledger is (``GroupConfigured``, the log's first record in a
    # cluster of several groups). Above 1, a transfer whose receiver this group does not hold
    # is one to another group: its credit goes to transit.
    group: int = 0
    groups: int = 1


@dataclass(slots=True)
class State:
    directory: Directory
    wallets: dict[str, Wallet] = field(default_factory=dict)
    # Pending holds whose sender this state owns, and withdrawals of its wallets.
    holds: dict[str, Hold] = field(default_factory=dict)
    withdrawals: dict[str, Withdrawal] = field(default_factory=dict)
    # Balance alerts of its wallets, by id; ``watched`` lists them per wallet and holds only
    # wallets that have alerts, so a change of any other wallet costs one lookup in an empty or
    # small dict. ``crossings`` are the firings owed by changes applied and not yet recorded by
    # an ``AlertsTriggered`` record (empty between steps, except after recovery from a log cut
    # between a change and its firing: ``ledger._apply`` explains).
    alerts: dict[str, Alert] = field(default_factory=dict)
    watched: dict[str, list[Alert]] = field(default_factory=dict)
    crossings: list[AlertFired] = field(default_factory=list)
    # Refunded so far, by original transaction id, for the originals whose receiver this state
    # owns (every refund of one debits that wallet, so its shard decides the cap alone). Only
    # originals refunded at least once have an entry; entries are never dropped (a fully
    # refunded original must keep refusing).
    refunded: dict[str, RefundTally] = field(default_factory=dict)
    # Incoming transfers from other groups reserved on this state's wallets, by transaction id,
    # and their sum per wallet (derived: ``index_holds`` rebuilds it).
    reservations: dict[str, Reservation] = field(default_factory=dict)
    reserved_in: dict[str, int] = field(default_factory=dict)


def index_holds(directory: Directory, states: Iterable[State]) -> None:
    """Rebuilds the directory's routing indexes from the states' holds, withdrawals and alerts
    (and each state's ``watched`` from its alerts)."""
    directory.hold_routes.clear()
    directory.withdrawal_wallets.clear()
    directory.alert_wallets.clear()
    directory.prepared_keys.clear()
    directory.prepared_ids.clear()
    for batch, (prepared, _) in directory.prepared.items():
        for row in prepared.rows:
            directory.prepared_ids[row[0]] = batch
            if row[8] is not None:
                directory.prepared_keys[(row[8][0], row[8][1])] = batch
    for state in states:
        state.watched.clear()
        state.reserved_in.clear()
        state.reserved_in.update(reserved_in(directory, state))
        for alert in state.alerts.values():
            directory.alert_wallets[alert.id] = alert.wallet_id
            state.watched.setdefault(alert.wallet_id, []).append(alert)
        for hold in state.holds.values():
            directory.hold_routes[hold.transaction_id] = (hold.from_wallet_id, hold.to_wallet_id, hold.amount)
        for withdrawal in state.withdrawals.values():
            directory.withdrawal_wallets[withdrawal.id] = withdrawal.wallet_id


def reserved_in(directory: Directory, state: State) -> dict[str, int]:
    """What is reserved on ``state``'s wallets as receivers: its reservations of transfers from
    other groups, and what the prepared parts of batches credit them (ADR 0013)."""
    reserved: dict[str, int] = {}
    for reservation in state.reservations.values():
        reserved[reservation.wallet_id] = reserved.get(reservation.wallet_id, 0) + reservation.amount
    for prepared, _ in directory.prepared.values():
        for wallet_id, amount in prepared_effects(prepared.rows, state.wallets.__contains__)[1].items():
            reserved[wallet_id] = reserved.get(wallet_id, 0) + amount
    return reserved


def prepared_effects(rows: tuple[TransferRow, ...], here: Callable[[str], bool]) -> tuple[dict[str, int], dict[str, int]]:
    """What a prepared part of a batch keeps, per wallet of this group (``here``): the amount
    held on it, the most its balance falls below where it started at any point of the rows in
    order (a wallet may spend what an earlier row credited it, so only that dip must stay
    spendable, and the rows then post in order on any balance the holds protected), and the
    amount reserved on it as a receiver (all it receives; not closable meanwhile)."""
    moved: dict[str, int] = {}
    held: dict[str, int] = {}
    incoming: dict[str, int] = {}
    for row in rows:
        sender_id, receiver_id, amount = row[2], row[3], row[5]
        left = moved[sender_id] = moved.get(sender_id, 0) - amount
        if -left > held.get(sender_id, 0):
            held[sender_id] = -left
        if here(receiver_id):
            moved[receiver_id] = moved.get(receiver_id, 0) + amount
            incoming[receiver_id] = incoming.get(receiver_id, 0) + amount
    return held, incoming


def new_state() -> State:
    return State(directory=Directory())

