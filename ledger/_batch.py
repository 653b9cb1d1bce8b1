"""Batches on the shard actors: their messages, how a batch part's accepted transfers become
records (``_records``), and the atomic commit (``commit_atomic``).

Batches (``Ledger.transfer_batch``; ``docs/adr/0004-atomic-batches.md``):

- Not atomic: one ``_CreditGroup`` per receiving shard with the items whose receivers it owns,
  in request order. It runs step 1 for the items whose sender lives on another shard and
  forwards one ``_DebitPart`` per sending shard. A sending shard keeps the parts of a batch
  until it has all of them (their number travels with them), merges them back into request
  order and decides them in one step (``decide_transfers``): items that share a sender are
  decided in request order, each after the effects of the accepted ones before it. The accepted
  ones become one ``TransfersPosted`` record (halved only if it would not fit in a frame); step
  3 goes back as one ``_ApplyCredits`` per receiving shard. One reply per sending shard, once
  the log it wrote or judged against is durable. In a ledger of several groups
  (``Ledger.transfers_across``) an item whose receiver is in another group skips step 1 here
  (its group reserved the credit): it goes straight to its sending shard as one more part of
  the batch, so a sender's items are decided in request order wherever they go.
- Atomic, every wallet on one shard: one ``_AtomicBatch``, decided and committed in one step.
- Atomic, several shards: the ledger (holding its atomic lock, so only one such batch holds
  shards at a time) posts ``_Pause`` to every involved shard but the lead, which gets
  ``_AtomicLead``. A paused shard acknowledges and stops draining until released; the lead
  stops too, waits until the others have paused, runs ``commit_atomic`` over all their wallets
  in its own task (a bug there crashes an actor, as anywhere else) and releases them. Only the
  lead waits, and only for shards that are not waiting for anyone, so this cannot deadlock.

``commit_atomic`` decides every item in order against the involved wallets (counting each
shard's reservations and the effects of the items before it) and appends one record for the
whole batch, or no money record: a torn tail drops a batch whole. When an item fails, its
rejection is recorded under that item's key (final outcomes, ``ledger._decide``): the same batch
retried fails at the same item with the same answer, even if it would pass now. The other items
record nothing (none was decided on its own), so their keys stay free.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from ledger import _apply, _decide
from ledger._codec import encode_event
from ledger._decide import CreditCheck
from ledger._messages import Aborted, BatchReply, Held, shard_of
from ledger._model import (
    Alert,
    BatchFailed,
    BatchPrepared,
    BatchReleased,
    Duplicate,
    Reason,
    Rejection,
    Transfer,
    Transferred,
    TransferRow,
    TransfersPosted,
    Wallet,
    new_committed,
    transfer_row,
    transferred_of,
    transfers_posted,
)
from ledger._part import Credit
from ledger._state import State
from wal import PAYLOAD_BYTES_MAX

if TYPE_CHECKING:
    from ledger._shard import Shard

# A batch record's payload at most (a frame's limit): a non-atomic group that would pass it is
# split into several records; an atomic batch that would is refused (RECORD_TOO_LARGE).
RECORD_BYTES_MAX = PAYLOAD_BYTES_MAX

# A batch's money record: one transfer alone, or several.
_Posted = Transferred | TransfersPosted


@dataclass(slots=True)
class _CreditGroup:
    """Step 1 for the items of a batch whose receivers this shard owns, in request order:
    (index in the batch, command, the sender's shard). ``parts`` tells each sending shard how
    many ``_DebitPart`` messages of this batch it gets."""

    batch: int
    items: list[tuple[int, Transfer, int]]
    parts: dict[int, int]
    reply: BatchReply


# An item of a ``_DebitPart``: index in the batch, command, the receiving shard's verdict (None:
# the receiver lives on the sending shard and is checked there), whether step 1 reserved the
# amount, the receiving shard.
_PartItem = tuple[int, Transfer, CreditCheck | None, bool, int]
_position = operator.itemgetter(0)


@dataclass(slots=True)
class _DebitPart:
    batch: int
    items: list[_PartItem]
    parts: int
    reply: BatchReply


@dataclass(slots=True)
class _ApplyCredits:
    """Step 3 for the items of a batch part: credits to apply (row, time, LSN) and reservations of
    refused items to drop (wallet id, amount)."""

    credits: list[Credit]
    releases: list[tuple[str, int]]


@dataclass(slots=True)
class _AtomicBatch:
    """An atomic batch whose wallets all live on this shard (``credits`` as in ``commit_atomic``),
    or another ``step`` over them (a part of a batch of several sending groups)."""

    commands: list[Transfer]
    reply: BatchReply
    credits: list[CreditCheck | None] | None = None
    step: Callable[[list[Shard]], None] | None = None


@dataclass(slots=True)
class _Pause:
    """A multi-shard atomic batch's hold on the shards it involves (the lead's own hold is the
    ``_AtomicLead``). ``waiting`` counts the shards that have not paused yet."""

    waiting: int
    paused: anyio.Event
    released: anyio.Event


@dataclass(slots=True)
class _AtomicLead:
    commands: list[Transfer]
    involved: list[Shard]
    pause: _Pause
    reply: BatchReply
    credits: list[CreditCheck | None] | None = None
    step: Callable[[list[Shard]], None] | None = None  # instead of ``commit_atomic``




def _encoded(record: _Posted) -> tuple[bytes, _Posted]:
    """``record``'s payload, and the record itself, a ``TransfersPosted`` carrying the payload
    (which its idempotency records then keep instead of its rows)."""
    payload = encode_event(record)
    if isinstance(record, TransfersPosted):
        record = TransfersPosted(rows=record.rows, at_us=record.at_us, payload=payload, settles=record.settles)
    return payload, record


def _records(rows: list[TransferRow], at_us: int) -> list[tuple[bytes, _Posted, int]]:
    """The records for a batch part's accepted transfers (``decide_part``'s rows): (payload,
    record, how many transfers). One record, a lone transfer being a plain ``Transferred``;
    halved until each fits in a frame (only metadata-heavy batches near the 16 MiB body limit
    come close)."""
    if not rows:
        return []
    record: Transferred | TransfersPosted = (
        transferred_of(rows[0], at_us) if len(rows) == 1 else TransfersPosted(rows=tuple(rows), at_us=at_us)
    )
    payload, record = _encoded(record)
    if len(payload) <= RECORD_BYTES_MAX or len(rows) == 1:
        return [(payload, record, len(rows))]
    half = len(rows) // 2
    return _records(rows[:half], at_us) + _records(rows[half:], at_us)


def commit_atomic(involved: list[Shard], commands: list[Transfer], reply: BatchReply,
                  credits: list[CreditCheck | None] | None = None, *,
                  prepare: tuple[str, int] | None = None) -> None:
    """Decides an atomic batch and, if every item passes, commits it as one record.

    ``credits`` (a ledger of several groups, ADR 0013): for each item, None when its receiver
    lives in this group, else the verdict of the receiver's group, which reserved the credit.
    Such an item is decided with that verdict as its credit side and, committed, credits this
    group's transit account (owed to the receiver's group), as a single transfer between groups
    does. ``Aborted`` for every item when the receiver's group had any of them aborted (nothing
    is appended: the batch cannot commit whole).

    ``prepare`` (batch id, coordinating group): this group's part of an atomic batch whose
    senders are in several groups. Decided the same way, but the new items are held, not
    posted: one ``BatchPrepared`` record (``reply.results`` ``Held`` for them, ``Duplicate`` for
    the others); ``settle_prepared`` posts or releases them once the coordinator decided. A failing
    item's rejection is not recorded under its key (the batch's first failure is known only to
    the worker, across the groups).

    ``involved`` must own every wallet the batch names, and none of them may be in the middle of
    a step: this runs inside the step of the only one (``_AtomicBatch``), or in the lead's task
    while the others are paused, or between steps (the simulation). Items are decided in
    request order against the live wallets without touching them (``decide_transfers``): each
    after the effects of the ones before it, counting what each shard reserved for transfers in
    flight. The first rejection ends it: nothing is appended and ``reply.failed`` names the
    item, answered once the log it was judged against is durable. Otherwise the new items become
    one record, applied to the wallets of every involved shard in the same step, and duplicates
    answer their original outcome.
    """
    lead = involved[0]
    wal = lead._wal
    if _log_failed(wal, reply):
        return
    given = credits is not None
    if credits is None:
        credits = [None] * len(commands)
    assert len(credits) == len(commands)
    aborted = lead.state.directory.aborted
    if aborted and any((credit is not None or prepare is not None) and command.transaction_id in aborted
                       for command, credit in zip(commands, credits, strict=True)):
        # The receiver's group asked, and was told, that one of these will never commit.
        reply.results[:] = [Aborted(command.transaction_id) for command in commands]
        wal.call_when_durable(wal.last_lsn, reply._report)
        return
    for shard in involved:
        # Credits of earlier records first, so every wallet sees its changes in LSN order.
        shard.take_queued_credits()
    view, pending = _view(involved, [(command.from_wallet_id, None if credit is not None else command.to_wallet_id)
                                     for command, credit in zip(commands, credits, strict=True)])
    now_us = lead._clock()
    decisions = _decide.decide_transfers(view, list(zip(commands, credits, strict=True)), now_us, pending, atomic=True)
    last = decisions[-1]
    if isinstance(last, Rejection):
        index = len(decisions) - 1
        # The failing item's rejection is final under its key (the others were never decided
        # alone and record nothing), so the same batch retried fails at the same item again.
        idempotency = commands[index].idempotency
        if (prepare is None and idempotency is not None
                and _decide.refusal_recorded(view.directory, idempotency, last)):
            lead.refuse([(idempotency, last)], now_us)
        # A key of a batch still in progress elsewhere: the whole request waits (409), as for
        # a key in flight; the item did not fail.
        reply.failed = BatchFailed(index=None if last.reason == Reason.REQUEST_IN_PROGRESS else index,
                                   rejection=last)
        wal.call_when_durable(wal.last_lsn, reply._report)
        return
    assert len(decisions) == len(commands)
    events: list[Transferred] = []
    for decision in decisions:
        if isinstance(decision, list):
            (event,) = decision
            assert isinstance(event, Transferred)
            events.append(event)
    lsn = 0
    if events:
        record: _Posted | BatchPrepared = (
            BatchPrepared(batch=prepare[0], coordinator=prepare[1], rows=tuple(map(transfer_row, events)),
                          at_us=now_us) if prepare is not None
            else events[0] if len(events) == 1 else transfers_posted(events, now_us))
        if isinstance(record, BatchPrepared):
            payload = encode_event(record)
        else:
            payload, record = _encoded(record)
        if len(payload) > RECORD_BYTES_MAX:
            reply.failed = BatchFailed(index=None, rejection=Rejection(
                reason=Reason.RECORD_TOO_LARGE,
                detail=f"the batch encodes to {len(payload)} bytes; an atomic batch must fit in one "
                       f"log record of at most {RECORD_BYTES_MAX} bytes (send fewer items or less metadata)",
            ))
            wal.call_when_durable(wal.last_lsn, reply._report)
            return
        # After this point the batch must be committed.
        lsn = wal.append(payload, record)
        _apply.apply_directory(view.directory, record, lsn)
        if isinstance(record, BatchPrepared):
            _apply.apply_prepared(view, _reserved_on(involved), record.rows, now_us, lsn, hold=True)
        else:
            # Only a batch of a group of several has items to other groups (``credits`` given).
            remote = {command.transaction_id for command, credit in zip(commands, credits, strict=True)
                      if credit is not None} if given else set()
            for event in events:
                _apply.apply_debit(view, event, lsn)
                if event.transaction_id in remote:
                    _apply.apply_sent_across(view.directory, event)
                else:
                    _apply.apply_credit(view, event, lsn)
        _fire(wal, view, now_us)
    results = reply.results
    for position, decision in enumerate(decisions):
        if isinstance(decision, list):
            event = decision[0]
            assert isinstance(event, Transferred)
            results[position] = Held(event.transaction_id) if prepare is not None else new_committed(event, lsn, -1)
        else:
            assert isinstance(decision, Duplicate)
            results[position] = decision
    wal.call_when_durable(wal.last_lsn, reply._report)


def _log_failed(wal: Any, reply: BatchReply) -> bool:
    """Answers ``reply`` with the log's failure, if it failed (nothing may be decided then)."""
    failed = wal.failed
    if failed is not None:
        reply._report(failed)
        return True
    return False


def _view(involved: list[Shard], sides: list[tuple[str | None, str | None]]) -> tuple[State, dict[str, int]]:
    """The involved shards' wallets named by ``sides`` (sender, receiver of this group or None)
    with their alerts, as one state (the same objects), and what each receiving shard reserved
    for transfers in flight to them."""
    lead = involved[0]
    peers = lead._peers
    shards = len(peers)
    owned = {shard.index for shard in involved}
    wallets: dict[str, Wallet] = {}
    pending: dict[str, int] = {}
    watched: dict[str, list[Alert]] = {}
    for sender_id, receiver_id in sides:
        assert sender_id is not None
        sender_shard = shard_of(sender_id, shards)
        assert sender_shard in owned
        sender = peers[sender_shard].state.wallets.get(sender_id)
        if sender is not None:
            wallets[sender_id] = sender
        alerts = peers[sender_shard].state.watched.get(sender_id)
        if alerts is not None:
            watched[sender_id] = alerts
        if receiver_id is None:
            continue  # the receiver lives in another group
        receiver_shard = shard_of(receiver_id, shards)
        assert receiver_shard in owned
        receiver = peers[receiver_shard].state.wallets.get(receiver_id)
        if receiver is not None:
            wallets[receiver_id] = receiver
        reserved = peers[receiver_shard]._pending.get(receiver_id)
        if reserved:
            pending[receiver_id] = reserved
        alerts = peers[receiver_shard].state.watched.get(receiver_id)
        if alerts is not None:
            watched[receiver_id] = alerts
    # The involved wallets and their alerts (the same objects): firings owed go to the view.
    return State(directory=lead.state.directory, wallets=wallets, watched=watched), pending


def _reserved_on(involved: list[Shard]) -> Callable[[str], dict[str, int] | None]:
    """``apply_prepared``'s ``reserved``: the ``reserved_in`` of the shard that owns a wallet of
    this group (one of ``involved``), None for a wallet of another group."""
    peers = involved[0]._peers

    def reserved(wallet_id: str) -> dict[str, int] | None:
        state = peers[shard_of(wallet_id, len(peers))].state
        return state.reserved_in if wallet_id in state.wallets else None

    return reserved


def _fire(wal: Any, view: State, now_us: int) -> None:
    """In the same step as the changes: the firings they owe, recorded."""
    for firing in _decide.decide_firings(view, now_us):
        firing_lsn = wal.append(encode_event(firing), firing)
        _apply.apply_directory(view.directory, firing, firing_lsn)
        _apply.apply_alerts(view, firing, firing_lsn)
    assert not view.crossings


# ``settle_prepared``'s answer for a part it released, or that had ended already.
_ENDED = BatchFailed(index=None, rejection=Rejection(reason=Reason.NOT_PENDING, detail="the batch's part is not held"))


def settle_prepared(involved: list[Shard], batch: str, committed: bool, reply: BatchReply) -> None:
    """Ends this group's prepared part of ``batch`` once its coordinator decided it: posted
    (one ``TransfersPosted`` with ``settles``, the rows exactly as prepared: the holds let go,
    then each row debited and credited here or, to another group, to the transit account and
    owed) with ``reply.results`` one ``Committed`` per row; or released (``BatchReleased``: the
    holds and reservations let go, the rows' ids aborted here). Released, or gone already (ended
    before), ``reply.failed`` is ``_ENDED``. ``involved`` as for ``commit_atomic``: every shard
    owning a wallet of the part, none mid-step; ``reply`` sized for the part's rows."""
    lead = involved[0]
    wal = lead._wal
    if _log_failed(wal, reply):
        return
    directory = lead.state.directory
    found = directory.prepared.get(batch)
    if found is None:
        reply.failed = _ENDED
        wal.call_when_durable(wal.last_lsn, reply._report)
        return
    prepared, _ = found
    for shard in involved:
        shard.take_queued_credits()
    reserved = _reserved_on(involved)
    view, _ = _view(involved, [(row[2], row[3] if reserved(row[3]) is not None else None) for row in prepared.rows])
    now_us = lead._clock()
    if not committed:
        released = BatchReleased(batch=batch, at_us=now_us)
        lsn = wal.append(encode_event(released), released)
        _apply.apply_directory(directory, released, lsn)
        _apply.apply_prepared(view, reserved, prepared.rows, now_us, lsn, hold=False)
        _fire(wal, view, now_us)
        reply.failed = _ENDED
        wal.call_when_durable(wal.last_lsn, reply._report)
        return
    payload, posted = _encoded(TransfersPosted(rows=prepared.rows, at_us=now_us, settles=batch))
    assert isinstance(posted, TransfersPosted)
    lsn = wal.append(payload, posted)
    _apply.apply_directory(directory, posted, lsn)
    _apply.apply_prepared(view, reserved, posted.rows, now_us, lsn, hold=False)
    for transfer in posted.transfers:
        _apply.apply_debit(view, transfer, lsn, held=True)
        if transfer.to_wallet_id in view.wallets:
            _apply.apply_credit(view, transfer, lsn)
        else:
            _apply.apply_sent_across(directory, transfer)
    _fire(wal, view, now_us)
    reply.results[:] = [new_committed(posted, lsn, position) for position in range(len(posted.rows))]
    wal.call_when_durable(wal.last_lsn, reply._report)
