"""Shard actors: one task per shard, the only code that touches that shard's wallets.

A shard has two mailboxes. The external one is bounded (``MAILBOX_CAPACITY``): a full one
refuses at once with ``Overloaded`` so callers answer ``503 overloaded`` instead of queueing
without bound. The internal one carries the second and third steps of transfers that span two
shards; it is never refused (refusing would strand a reservation) and is bounded by
construction: each external command causes at most two internal messages.

The actor drains what is waiting in one go (credits from other shards first, so each wallet
changes in LSN order; then internal, so in-flight transfers finish and
release their reservations), and for each message decides with the pure state machine, appends
the accepted event to the WAL and applies it, **in the same step, with no await in between**:
log order is therefore a serial order of everything any client can observe. Replies are
released by the WAL writer once the record is durable; a rejection waits for the log as it was
when it was decided, so it never reveals state that a crash could still take back.

Transfers across shards, without locks (``ledger._decide`` has the check order):

    1. receiver's shard: ``check_credit``; if it passes, reserve the incoming amount
       (``pending``) so no overflow or close can invalidate the verdict.
    2. sender's shard: ``decide_transfer`` with that verdict; if accepted, append the record
       and apply the debit and the directory part: this is the commit point.
    3. receiver's shard: apply the credit (or just drop the reservation if step 2 refused).

Between 2 and 3 the receiver's balance lags the log by one mailbox hop; the money is not
spendable there before step 3, and step 3's effects come after the record in the log, so the
log stays a valid serial order. A refused transfer leaves no money record; if it carried an
idempotency key (and its reason is final: ``ledger._decide``), the shard that decided it appends
one ``RequestsRefused`` record in the same step (for a cross-shard transfer, the sender's shard,
which also decides the receiver's credit-side failures) and answers once that is durable.

Holds follow the same three steps. Creating one (``Transfer`` with ``hold_timeout_s``) checks
the receiver in step 1 but reserves nothing, since nothing reaches it yet; the hold then lives
in the sender's shard. Capturing it (``ResolveHold``) and completing a withdrawal
(``CompleteWithdrawal``, whose receiver is the treasury) are steps 1-3 again, with the
captured amount. Voiding, expiring and the other payout steps touch only the sender's shard.
Each shard keeps a heap of its holds' deadlines; the ledger's timer posts ``_Tick`` to a
shard whose earliest deadline has passed, and the shard voids what is due at its own clock.

Batches (``Ledger.transfer_batch``) go through the same mailboxes; their messages, how their
records are cut and the atomic commit are in ``ledger._batch``. The message types and replies
are in ``ledger._messages``.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel

from ledger import _apply, _decide, _part
from ledger._batch import (
    _ApplyCredits,
    _AtomicBatch,
    _AtomicLead,
    _CreditGroup,
    _DebitPart,
    _PartItem,
    _Pause,
    _position,
    _records,
    commit_atomic,
)
from ledger._codec import encode_event
from ledger._decide import CreditCheck
from ledger._messages import (
    REMOTE,
    Aborted,
    BatchReply,
    LocalCommand,
    Movement,
    Overloaded,
    Reply,
    _ApplyCredit,
    _Command,
    _Commands,
    _CreditStep,
    _DebitStep,
    _Query,
    _Tick,
    credit_target,
    shard_of,
)
from ledger._model import (
    AlertCreated,
    AlertDeleted,
    AlertsTriggered,
    BatchDecided,
    ChangeWalletStatus,
    Committed,
    CompleteWithdrawal,
    CreditReserved,
    Duplicate,
    Event,
    ExpireHolds,
    GroupConfigured,
    HoldCaptured,
    HoldCreated,
    HoldVoided,
    Idempotency,
    Refund,
    Refunded,
    Rejection,
    RequestsRefused,
    ReservationSettled,
    ReserveCredit,
    ResolveHold,
    Transfer,
    Transferred,
    TransferRow,
    TransfersAborted,
    TransitSettled,
    Wallet,
    WithdrawalUpdated,
    new_committed,
    transferred_of,
    treasury_id,
)
from ledger._part import Credit
from ledger._state import State
from wal import StorageFailed, WriteAheadLog

MAILBOX_CAPACITY = 8192
DRAIN_MAX = 1024  # messages handled before the actor yields to the event loop
# ... or once a drain has taken this long: a batch part of a thousand items is one message, and
# a mailbox of such parts held the event loop for hundreds of milliseconds under batch load.
# Cutting a drain short changes nothing but what runs in between: the next drain goes on in
# the same order.
DRAIN_BUDGET_NS = 5_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardStatistics:
    index: int
    wallets: int
    mailbox_depth: int
    internal_depth: int
    pending_credits: int
    batches_gathering: int
    messages: int
    drains: int
    overloaded: int
    alerts_fired: int  # balance-alert firings this shard recorded since it started


class Shard:
    def __init__(
        self,
        index: int,
        *,
        state: State,
        wal: WriteAheadLog,
        clock: Callable[[], int],
        peers: list[Shard],
        capacity: int = MAILBOX_CAPACITY,
        backlogged: Callable[[], bool] | None = None,
    ) -> None:
        self.index = index
        self.state = state
        self._wal = wal
        self._clock = clock
        self._peers = peers
        self._capacity = capacity
        self._backlogged = backlogged or wal.backlogged
        self._external: deque[Any] = deque()
        self._internal: deque[Any] = deque()
        # Step 3 of transfers from other shards (``_ApplyCredit``, ``_ApplyCredits``): their
        # records are in the log already, so they are applied before anything else this shard
        # does (``drain``). That keeps each wallet's changes in LSN order: a debit step queued
        # before a credit would otherwise append a later record and apply it first, and balance
        # alerts, which judge each change in order, would see another history than replay.
        self._credits: deque[Any] = deque()
        self._wakeup = anyio.Event()
        self._sleeping = False
        self._stopping = False
        # Incoming amounts reserved by step 1 of cross-shard transfers, per wallet.
        self._pending: dict[str, int] = {}
        # (deadline_us, transaction id) of this shard's expiring holds; entries of holds that
        # were resolved meanwhile are dropped when they reach the top.
        self._deadlines = [(hold.deadline_us, hold.transaction_id)
                           for hold in state.holds.values() if hold.deadline_us]
        heapq.heapify(self._deadlines)
        # Batch parts received while others of the same batch are still on their way.
        self._gathering: dict[int, list[list[_PartItem]]] = {}
        # Set while a multi-shard atomic batch holds this shard: it does not drain.
        self._hold: _Pause | _AtomicLead | None = None
        self._messages = 0
        self._drains = 0
        self._overloaded = 0
        self._alerts_fired = 0
        self._handlers: dict[type, Callable[[Any], None]] = {
            _CreditStep: self._on_credit_step,
            _DebitStep: self._on_debit_step,
            _ApplyCredit: self._on_apply_credit,
            _Query: self._on_query,
            _Command: self._on_command,
            _Commands: self._on_commands,
            _Tick: self._on_tick,
            _CreditGroup: self._on_credit_group,
            _DebitPart: self._on_debit_part,
            _ApplyCredits: self._on_apply_credits,
            _AtomicBatch: self._on_atomic_batch,
            _Pause: self._on_pause,
            _AtomicLead: self._on_atomic_lead,
        }

    # -- submitting ----------------------------------------------------------------------

    def check_room(self) -> None:
        """Raises Overloaded when the mailbox is full or the log (or a projection) is behind."""
        if len(self._external) >= self._capacity or self._backlogged():
            self._overloaded += 1
            raise Overloaded(f"shard {self.index} mailbox is full")

    def _submit(self, message: Any) -> None:
        if self._stopping:
            # ``run`` returns once the mailboxes are empty and never looks again: a message
            # queued now would never be answered and its caller (waiting shielded) would wait
            # forever. Callers may still come: a payout worker whose shielded wait for the log
            # ended after ``Ledger.stop`` makes its next call with no checkpoint in between.
            raise StorageFailed("the ledger is stopping")
        self.check_room()
        self._external.append(message)
        if self._sleeping:
            self._sleeping = False
            self._wakeup.set()

    def _post(self, message: Any) -> None:
        if type(message) is _ApplyCredit or type(message) is _ApplyCredits:
            self._credits.append(message)
        else:
            self._internal.append(message)
        if self._sleeping:
            self._sleeping = False
            self._wakeup.set()

    def submit_transfer(self, command: Movement, *, route_amount: int = 0) -> Reply:
        """Step 1 of a movement; call on the shard of the wallet it credits."""
        self._wal.check_writable()
        reply = Reply()
        self._submit(_CreditStep(command, reply, route_amount))
        return reply

    def next_deadline_us(self) -> int | None:
        """The earliest deadline among this shard's holds (possibly of one already resolved)."""
        return self._deadlines[0][0] if self._deadlines else None

    def tick(self) -> None:
        """Asks the actor to void its holds that are due (never refused: internal mailbox)."""
        self._post(_Tick())

    def submit_command(self, command: LocalCommand) -> Reply:
        self._wal.check_writable()
        reply = Reply()
        self._submit(_Command(command, reply))
        return reply

    def submit_commands(self, message: _Commands) -> None:
        """Many unkeyed commands in one step (the caller checked the room)."""
        self._wal.check_writable()
        self._submit(message)

    def submit_part(self, part: _DebitPart) -> None:
        """Steps 2 of many transfers to other groups whose senders live here (the caller
        checked the room)."""
        self._wal.check_writable()
        self._submit(part)

    def submit_group(self, group: _CreditGroup) -> None:
        """Step 1 of a non-atomic batch for the items this shard receives."""
        self._wal.check_writable()
        self._submit(group)

    def submit_atomic(self, commands: list[Transfer], reply: BatchReply,
                      credits: list[CreditCheck | None] | None = None,
                      step: Callable[[list[Shard]], None] | None = None) -> None:
        """An atomic batch whose every wallet in this group lives on this shard (or ``step``
        over this shard alone instead)."""
        self._wal.check_writable()
        self._submit(_AtomicBatch(commands, reply, credits, step))

    def pause(self, pause: _Pause) -> None:
        """Asks the shard to stop after what it is doing until ``pause.released``."""
        self._post(pause)

    def lead(self, message: _AtomicLead) -> None:
        """Asks the shard to stop, wait until the other involved shards have, and commit."""
        self._post(message)

    def submit_query(self, function: Callable[[State], Any], wait_lsn: Callable[[Any], int]) -> Reply:
        """Runs ``function(state)`` in the actor; the reply waits until ``wait_lsn(result)``
        is durable so a read never shows what a crash could take back."""
        reply = Reply()
        self._submit(_Query(function, wait_lsn, reply))
        return reply

    # -- the actor -----------------------------------------------------------------------

    def stop(self) -> None:
        """``run`` returns once both mailboxes are empty (in-flight transfers finished); from
        now on ``submit_*`` raises StorageFailed instead of queueing what would never be
        answered."""
        self._stopping = True
        if self._sleeping:
            self._sleeping = False
            self._wakeup.set()

    def idle(self) -> bool:
        return not self._credits and not self._internal and not self._external and self._hold is None

    async def run(self) -> None:
        while True:
            hold = self._hold
            if hold is not None:
                await self._held(hold)
                self._hold = None
                continue
            if not self._credits and not self._internal and not self._external:
                if self._stopping:
                    return
                self._wakeup = anyio.Event()
                self._sleeping = True
                await self._wakeup.wait()
                continue
            self.drain(DRAIN_MAX, deadline_ns=time.perf_counter_ns() + DRAIN_BUDGET_NS)
            await anyio.lowlevel.checkpoint()

    def drain(self, limit: int, *, deadline_ns: int | None = None) -> int:
        """Handles up to ``limit`` waiting messages, credits then internal ones first, in one synchronous
        step, stopping early once ``time.perf_counter_ns()`` passes ``deadline_ns``; returns
        how many. (``run`` calls it; the simulation calls it directly, without a deadline.)"""
        handlers = self._handlers
        credits = self._credits
        internal = self._internal
        external = self._external
        state = self.state
        handled = 0
        while (credits or internal or external) and handled < limit and self._hold is None:
            message = credits.popleft() if credits else internal.popleft() if internal else external.popleft()
            handlers[type(message)](message)
            if state.crossings:
                # Firings owed by the changes this message applied: recorded in the same step.
                self.fire()
            handled += 1
            if deadline_ns is not None and time.perf_counter_ns() >= deadline_ns:
                break
        self._drains += 1
        self._messages += handled
        return handled

    def fire(self) -> int:
        """Appends and applies the records that pay the firings this shard owes
        (``State.crossings``, filled by ``ledger._apply`` as changes are applied); returns how
        many. Called in the step that applied the changes. With the log failed nothing is
        appended: the firings stay owed and recovery records them (``Ledger.fire_owed_alerts``)."""
        state = self.state
        if not state.crossings or self._wal.failed is not None:
            return 0
        records = _decide.decide_firings(state, self._clock())
        for record in records:
            lsn = self._commit(record)
            _apply.apply_directory(state.directory, record, lsn)
            _apply.apply_alerts(state, record, lsn)
            self._alerts_fired += len(record.firings)
        assert not state.crossings, state.crossings
        return len(records)

    def take_queued_credits(self) -> None:
        """Applies now the credits waiting for this shard (step 3 of transfers whose records
        are already in the log). An atomic batch calls it on every shard it involves before it
        decides: a paused shard does not drain, and a credit that reached it meanwhile came from
        a record appended before the batch's, so it must apply first (LSN order per wallet)."""
        credits = self._credits
        while credits:
            message = credits.popleft()
            if type(message) is _ApplyCredit:
                self._on_apply_credit(message)
            else:
                self._on_apply_credits(message)
        if self.state.crossings:
            self.fire()

    def _resolve(self, reply: Reply, value: Any, lsn: int) -> None:
        reply.value = value
        reply.lsn = lsn
        self._wal.call_when_durable(lsn, reply._wake)

    def _commit(self, event: Event) -> int:
        """Appends the event; the caller applies it in the same step."""
        return self._wal.append(encode_event(event), event)

    def _answer(self, reply: Reply, decision: _decide.Decision, idempotency: Idempotency | None,
                now_us: int) -> None:
        """Resolves a reply for a decision that appended no money record: a replay answers once
        its original is durable; a rejection once the log it was judged against is durable, and
        a final one (``_decide.refusal_recorded``) once the record of it under its key is."""
        if isinstance(decision, Duplicate):
            self._resolve(reply, decision, decision.record.lsn)
            return
        if (idempotency is not None and isinstance(decision, Rejection)
                and _decide.refusal_recorded(self.state.directory, idempotency, decision)):
            self.refuse([(idempotency, decision)], now_us)
        self._resolve(reply, decision, self._wal.last_lsn)

    def refuse(self, refusals: list[tuple[Idempotency, Rejection]], now_us: int) -> int:
        """Appends and applies one ``RequestsRefused`` record for the refusals of this step
        (each a key with no record yet); returns its LSN. The caller is inside its step."""
        assert 1 <= len(refusals)
        record = RequestsRefused(refusals=tuple(refusals), at_us=now_us)
        lsn = self._commit(record)
        _apply.apply_directory(self.state.directory, record, lsn)
        return lsn

    def _on_credit_step(self, message: _CreditStep) -> None:
        command = message.command
        wallet_id, amount, reserves = credit_target(command, message.route_amount)
        pending = self._pending.get(wallet_id, 0)
        credit = _decide.check_credit_to(self.state, wallet_id, amount, pending=pending)
        sender_id: str | None
        if isinstance(command, Transfer):
            sender_id = command.from_wallet_id
            if sender_id is None and credit.asset is not None:
                sender_id = treasury_id(credit.asset)
        elif isinstance(command, ResolveHold | Refund):
            sender_id = command.from_wallet_id
        else:
            sender_id = command.wallet_id
        shards = len(self._peers)
        target = self.index if sender_id is None else shard_of(sender_id, shards)
        if target == self.index:
            self._decide_debit(command, credit, message.reply, credit_shard=self.index, reserved=0)
            return
        reserved = amount if reserves and credit.failure is None else 0
        if reserved:
            self._pending[wallet_id] = pending + reserved
        self._peers[target]._post(_DebitStep(command, credit, self.index, reserved, message.reply))

    def _on_debit_step(self, message: _DebitStep) -> None:
        self._decide_debit(
            message.command, message.credit, message.reply,
            credit_shard=message.credit_shard, reserved=message.reserved,
        )

    def _decide_debit(
        self, command: Movement, credit: CreditCheck, reply: Reply, *, credit_shard: int, reserved: int
    ) -> None:
        credited = credit_target(command)[0]
        failed = self._wal.failed
        if failed is not None:
            if reserved:
                self._peers[credit_shard]._post(_ApplyCredit(None, credited, reserved, 0))
            reply._wake(failed)
            return
        if credit_shard == REMOTE:
            assert isinstance(command, Transfer | Refund | ResolveHold), command
            reserved_as = command.reservation if isinstance(command, ResolveHold) else command.transaction_id
            if reserved_as in self.state.directory.aborted:
                # The receiver's group asked, and was told, that this will never commit.
                self._resolve(reply, Aborted(command.transaction_id), self._wal.last_lsn)
                return
        now_us = self._clock()
        decision: _decide.Decision
        if isinstance(command, Transfer):
            decision = _decide.decide_transfer(self.state, command, now_us, credit)
        elif isinstance(command, ResolveHold):
            decision = _decide.decide_capture(self.state, command, now_us, credit)
        elif isinstance(command, Refund):
            decision = _decide.decide_refund(self.state, command, now_us, credit)
        else:
            decision = _decide.decide_complete_withdrawal(self.state, command, now_us, credit)
        if not isinstance(decision, list):
            if reserved:
                self._peers[credit_shard]._post(_ApplyCredit(None, credited, reserved, 0))
            self._answer(reply, decision, command.idempotency if not isinstance(command, CompleteWithdrawal)
                         else None, now_us)
            return
        (event,) = decision
        lsn = self._commit(event)
        _apply.apply_directory(self.state.directory, event, lsn)
        if isinstance(event, Transferred):
            _apply.apply_debit(self.state, event, lsn)
        elif isinstance(event, Refunded):
            _apply.apply_refund(self.state, event, lsn)
        else:
            self._apply_sender(event, lsn)
        if isinstance(event, HoldCreated):
            # Nothing reaches the receiver yet, and step 1 reserved nothing.
            assert not reserved
        else:
            assert isinstance(event, Transferred | HoldCaptured | Refunded)
            if credit_shard == REMOTE:
                assert isinstance(event, Transferred | Refunded | HoldCaptured), event
                _apply.apply_sent_across(self.state.directory, event)
            elif credit_shard == self.index:
                _apply.apply_credit(self.state, event, lsn)
            else:
                # A capture never takes less than step 1 reserved (the router's view was stale
                # only if the hold is gone, and then the capture was refused above); a refund
                # without an amount reserved the original's and may take less (what was left).
                if isinstance(event, Refunded):
                    assert 1 <= event.amount <= reserved, (reserved, event.amount)
                else:
                    assert reserved == event.amount, (reserved, event.amount)
                self._peers[credit_shard]._post(_ApplyCredit(event, event.to_wallet_id, reserved, lsn))
        self._resolve(reply, Committed(source=event, lsn=lsn), lsn)

    def _apply_sender(self, event: Event, lsn: int) -> None:
        """``apply_sender`` plus this shard's deadline heap."""
        _apply.apply_sender(self.state, event, lsn)
        if isinstance(event, HoldCreated) and event.deadline_us:
            heapq.heappush(self._deadlines, (event.deadline_us, event.transaction_id))

    def _commit_local(self, events: list[Event]) -> int:
        """Appends and applies the events of a decision that touches this shard alone (wallet,
        asset, token, void, expiry and payout steps); returns the last LSN."""
        lsn = 0
        for event in events:
            lsn = self._commit(event)
            _apply.apply_directory(self.state.directory, event, lsn)
            if isinstance(event, HoldCreated | HoldVoided | WithdrawalUpdated):
                self._apply_sender(event, lsn)
            elif isinstance(event, AlertCreated | AlertDeleted | AlertsTriggered):
                _apply.apply_alerts(self.state, event, lsn)
            elif isinstance(event, CreditReserved | ReservationSettled):
                _apply.apply_reservation(self.state, event, lsn)
            elif not isinstance(event, GroupConfigured | TransitSettled | TransfersAborted | BatchDecided):
                _apply.apply_wallets(self.state, event, lsn)
        return lsn

    def _on_tick(self, message: _Tick) -> None:
        if self._wal.failed is not None:
            return
        now_us = self._clock()
        deadlines = self._deadlines
        due = []
        while deadlines and deadlines[0][0] <= now_us:
            _, transaction_id = heapq.heappop(deadlines)
            if transaction_id in self.state.holds:
                due.append(transaction_id)
        if not due:
            return
        decision = _decide.decide_expire(self.state, ExpireHolds(transaction_ids=tuple(due)), now_us)
        assert isinstance(decision, list)
        self._commit_local(decision)

    def _release(self, wallet_id: str, amount: int) -> None:
        remaining = self._pending[wallet_id] - amount
        assert remaining >= 0
        if remaining:
            self._pending[wallet_id] = remaining
        else:
            del self._pending[wallet_id]

    def _on_apply_credit(self, message: _ApplyCredit) -> None:
        event = message.event
        if isinstance(event, Refunded):
            assert event.amount <= message.amount
        else:
            assert event is None or event.amount == message.amount
        self._release(message.wallet_id, message.amount)
        if message.event is not None:
            _apply.apply_credit(self.state, message.event, message.lsn)

    # -- batches -------------------------------------------------------------------------

    def _on_credit_group(self, message: _CreditGroup) -> None:
        state = self.state
        pending = self._pending
        index = self.index
        parts: dict[int, list[_PartItem]] = {}
        for position, command, debit_shard in message.items:
            item: _PartItem
            if debit_shard == index:
                item = (position, command, None, False, index)
            else:
                to_wallet_id = command.to_wallet_id
                reserved_before = pending.get(to_wallet_id, 0)
                credit = _part.check_credit(state, command, reserved_before)
                reserved = credit.failure is None
                if reserved:
                    pending[to_wallet_id] = reserved_before + command.amount
                item = (position, command, credit, reserved, index)
            part = parts.get(debit_shard)
            if part is None:
                parts[debit_shard] = [item]
            else:
                part.append(item)
        for debit_shard, items in parts.items():
            self._peers[debit_shard]._post(
                _DebitPart(message.batch, items, message.parts[debit_shard], message.reply)
            )

    def _on_debit_part(self, message: _DebitPart) -> None:
        items = message.items
        if message.parts > 1:
            gathered = self._gathering.get(message.batch)
            if gathered is None:
                self._gathering[message.batch] = [items]
                return
            gathered.append(items)
            if len(gathered) < message.parts:
                return
            del self._gathering[message.batch]
            items = sorted((item for part in gathered for item in part), key=_position)
        self._decide_part(items, message.reply)

    def _decide_part(self, items: list[_PartItem], reply: BatchReply) -> None:
        """Steps 2 of every item of a batch whose sender lives here, in request order. An item
        whose receiving shard is ``REMOTE`` is a transfer to another group (ADR 0013), its
        credit the verdict of the receiver's group: accepted, its credit goes to the transit
        account; ``Aborted`` if that group had it aborted."""
        wal = self._wal
        credits: dict[int, list[Credit]] = {}
        releases: dict[int, list[tuple[str, int]]] = {}
        failed = wal.failed
        if failed is not None:
            for _, command, _, reserved, credit_shard in items:
                if reserved:
                    releases.setdefault(credit_shard, []).append((command.to_wallet_id, command.amount))
            self._send_credits(credits, releases)
            reply._report(failed)
            return
        state = self.state
        now_us = self._clock()
        results = reply.results
        directory = state.directory
        aborted = directory.aborted
        if aborted and any(item[4] == REMOTE and item[1].transaction_id in aborted for item in items):
            for item in items:
                if item[4] == REMOTE and item[1].transaction_id in aborted:
                    results[item[0]] = Aborted(item[1].transaction_id)
            items = [item for item in items if results[item[0]] is None]
        # The batch-shaped path (``ledger._part``): every check of ``decide_transfers``, inline.
        outcomes = _part.decide_part(state, [(item[1], item[2]) for item in items], now_us, self._pending)
        accepted: list[_PartItem] = []
        rows: list[TransferRow] = []
        refusals: list[tuple[Idempotency, Rejection]] = []
        for item, outcome in zip(items, outcomes, strict=True):
            if type(outcome) is tuple:
                accepted.append(item)
                rows.append(outcome)
                continue
            assert type(outcome) is Rejection or type(outcome) is Duplicate
            results[item[0]] = outcome
            if item[3]:
                releases.setdefault(item[4], []).append((item[1].to_wallet_id, item[1].amount))
            idempotency = item[1].idempotency
            if (idempotency is not None and type(outcome) is Rejection
                    and _decide.refusal_recorded(directory, idempotency, outcome)):
                refusals.append((idempotency, outcome))
        # After this point every accepted item is appended and applied in this same step.
        start = 0
        index = self.index
        for payload, record, count in _records(rows, now_us):
            lsn = wal.append(payload, record)
            stop = start + count
            local = [item[4] == index for item in accepted[start:stop]]
            _part.apply_posted(state, record, local, lsn)
            # A lone transfer is its own record; a row of a TransfersPosted is at its position.
            lone = count == 1
            for offset in range(start, stop):
                item = accepted[offset]
                credit_shard = item[4]
                if credit_shard == REMOTE:
                    _apply.apply_sent_across(directory, transferred_of(rows[offset], now_us))
                elif credit_shard != index:
                    assert item[3]
                    credits.setdefault(credit_shard, []).append((rows[offset], now_us, lsn))
                results[item[0]] = new_committed(record, lsn, -1 if lone else offset - start)
            start = stop
        assert start == len(rows)
        if refusals:
            # The part's refused keys, one record for all of them (distinct keys: the batch's
            # keys are distinct, and each had no record when it was decided).
            self.refuse(refusals, now_us)
        self._send_credits(credits, releases)
        # Rejections were judged against the log as it is now; duplicates' originals are in it.
        wal.call_when_durable(wal.last_lsn, reply._report)

    def _send_credits(
        self, credits: dict[int, list[Credit]], releases: dict[int, list[tuple[str, int]]]
    ) -> None:
        for shard in sorted(credits.keys() | releases.keys()):
            self._peers[shard]._post(_ApplyCredits(credits.get(shard, []), releases.get(shard, [])))

    def _on_apply_credits(self, message: _ApplyCredits) -> None:
        for wallet_id, amount in message.releases:
            self._release(wallet_id, amount)
        credits = message.credits
        for row, _, _ in credits:
            self._release(row[3], row[5])
        _part.apply_credits(self.state, credits)

    def _on_atomic_batch(self, message: _AtomicBatch) -> None:
        if message.step is not None:
            message.step([self])
            return
        commit_atomic([self], message.commands, message.reply, message.credits)

    def _on_pause(self, message: _Pause) -> None:
        assert self._hold is None
        self._hold = message
        message.waiting -= 1
        assert message.waiting >= 0
        if message.waiting == 0:
            message.paused.set()

    def _on_atomic_lead(self, message: _AtomicLead) -> None:
        assert self._hold is None
        self._hold = message

    async def _held(self, hold: _Pause | _AtomicLead) -> None:
        if isinstance(hold, _Pause):
            await hold.released.wait()
            return
        if hold.pause.waiting:
            await hold.pause.paused.wait()
        # Should this raise (a bug), the others stay paused while the crash takes the process
        # down: nothing may act on a half-applied batch.
        if hold.step is not None:
            hold.step(hold.involved)
        else:
            commit_atomic(hold.involved, hold.commands, hold.reply, hold.credits)
        hold.pause.released.set()

    def _on_query(self, message: _Query) -> None:
        value = message.function(self.state)
        lsn = min(message.wait_lsn(value), self._wal.last_lsn)
        self._resolve(message.reply, value, lsn)

    def _on_command(self, message: _Command) -> None:
        command = message.command
        if self._wal.failed is not None:
            message.reply._wake(self._wal.failed)
            return
        now_us = self._clock()
        decision = self._decide_command(command, now_us)
        if not isinstance(decision, list) or not decision:
            self._answer(message.reply, decision, getattr(command, "idempotency", None), now_us)
            return
        lsn = self._commit_local(decision)
        if len(decision) == 1 and isinstance(decision[0], HoldCreated | HoldVoided):
            self._resolve(message.reply, Committed(source=decision[0], lsn=lsn), lsn)
        else:
            self._resolve(message.reply, decision, lsn)

    def _on_commands(self, message: _Commands) -> None:
        """Each command as ``_on_command`` would, without keys; one report once the log that
        holds (or judged) the last of them is durable."""
        wal = self._wal
        reply = message.reply
        if wal.failed is not None:
            reply._report(wal.failed)
            return
        now_us = self._clock()
        results = reply.results
        for index, command in message.commands:
            assert getattr(command, "idempotency", None) is None, command
            decision = self._decide_command(command, now_us)
            if isinstance(decision, list) and decision:
                self._commit_local(decision)
            results[index] = decision
        wal.call_when_durable(wal.last_lsn, reply._report)

    def _decide_command(self, command: LocalCommand, now_us: int) -> _decide.Decision:
        state = self.state
        decision: _decide.Decision
        if isinstance(command, ChangeWalletStatus):
            # The local commands that need this shard's reservations too.
            pending = self._pending.get(command.wallet_id, 0)
            decision = _decide.decide_change_status(state, command, now_us, pending=pending)
        elif isinstance(command, ReserveCredit):
            pending = self._pending.get(command.to_wallet_id, 0)
            decision = _decide.decide_reserve_credit(state, command, now_us, pending=pending)
        else:
            assert not isinstance(command, ResolveHold) or not command.capture  # captures move money
            decision = _decide.decide(state, command, now_us)
        return decision

    def wallets(self) -> dict[str, Wallet]:
        return self.state.wallets

    def statistics(self) -> ShardStatistics:
        return ShardStatistics(
            index=self.index,
            wallets=len(self.state.wallets),
            mailbox_depth=len(self._external),
            internal_depth=len(self._internal) + len(self._credits),
            pending_credits=len(self._pending),
            batches_gathering=len(self._gathering),
            messages=self._messages,
            drains=self._drains,
            overloaded=self._overloaded,
            alerts_fired=self._alerts_fired,
        )
