"""Shard actors: one task per shard, the only code that touches that shard's wallets.

A shard has two mailboxes. The external one is bounded (``MAILBOX_CAPACITY``): a full one
refuses at once with ``Overloaded`` so callers answer ``503 overloaded`` instead of queueing
without bound. The internal one carries the second and third steps of transfers that span two
shards; it is never refused (refusing would strand a reservation) and is bounded by
construction: each external command causes at most two internal messages.

The actor drains what is waiting in one go (internal first, so in-flight transfers finish and
release their reservations), and for each message decides with the pure state machine, appends
the accepted event to the WAL and applies it, **in the same step, with no await in between**:
log order is therefore a serial order of everything any client can observe. Replies are
released by the WAL writer once the record is durable; a rejection waits for the log as it was
when it was decided, so it never reveals state that a crash could still take back.

Transfers across shards, without locks (``ledger._state`` has the check order):

    1. receiver's shard: ``check_credit``; if it passes, reserve the incoming amount
       (``pending``) so no overflow or close can invalidate the verdict.
    2. sender's shard: ``decide_transfer`` with that verdict; if accepted, append the record
       and apply the debit and the directory part: this is the commit point.
    3. receiver's shard: apply the credit (or just drop the reservation if step 2 refused).

Between 2 and 3 the receiver's balance lags the log by one mailbox hop; the money is not
spendable there before step 3, and step 3's effects come after the record in the log, so the
log stays a valid serial order. A refused transfer leaves no record.

Holds follow the same three steps. Creating one (``Transfer`` with ``hold_timeout_s``) checks
the receiver in step 1 but reserves nothing, since nothing reaches it yet; the hold then lives
in the sender's shard. Capturing it (``ResolveHold``) and completing a withdrawal
(``CompleteWithdrawal``, whose receiver is the treasury) are steps 1-3 again, with the
captured amount. Voiding, expiring and the other payout steps touch only the sender's shard.
Each shard keeps a heap of its holds' deadlines; the ledger's timer posts ``_Tick`` to a
shard whose earliest deadline has passed, and the shard voids what is due at its own clock.
"""

from __future__ import annotations

import heapq
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel

from ledger import _state
from ledger._codec import encode_event
from ledger._model import (
    AdvanceWithdrawal,
    ChangeWalletStatus,
    Committed,
    CompleteWithdrawal,
    CreateAsset,
    CreateToken,
    CreateWallet,
    Duplicate,
    Event,
    ExpireHolds,
    HoldCaptured,
    HoldCreated,
    HoldVoided,
    RequestWithdrawal,
    ResolveHold,
    RevokeToken,
    Transfer,
    Transferred,
    Wallet,
    WithdrawalUpdated,
    treasury_id,
)
from ledger._state import CreditCheck, State
from wal import StorageFailed, WriteAheadLog

MAILBOX_CAPACITY = 8192
DRAIN_MAX = 1024  # messages handled before the actor yields to the event loop


def shard_of(wallet_id: str, shards: int) -> int:
    """Stable across processes and restarts (unlike the salted built-in ``hash``)."""
    return zlib.crc32(wallet_id.encode()) % shards


class Overloaded(Exception):
    """The shard's mailbox (or the log's backlog) is full; try again shortly."""


class Reply:
    """Where an actor leaves the outcome of one command; the caller awaits ``wait``."""

    __slots__ = ("_done", "error", "lsn", "value")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self.value: Any = None
        self.lsn = 0
        self.error: str | None = None

    def _wake(self, error: str | None) -> None:
        self.error = error
        self._done.set()

    async def wait(self) -> Any:
        await self._done.wait()
        if self.error is not None:
            raise StorageFailed(self.error)
        return self.value


# Commands that run the credit-first protocol.
Movement = Transfer | ResolveHold | CompleteWithdrawal
# Commands decided on one shard alone.
LocalCommand = (
    CreateWallet | ChangeWalletStatus | CreateAsset | CreateToken | RevokeToken | ResolveHold
    | ExpireHolds | RequestWithdrawal | AdvanceWithdrawal
)


def credit_target(command: Movement, route_amount: int = 0) -> tuple[str, int, bool]:
    """(wallet credited, amount, whether step 1 reserves it) for a movement."""
    if isinstance(command, Transfer):
        return command.to_wallet_id, command.amount, command.hold_timeout_s is None
    if isinstance(command, ResolveHold):
        assert command.capture
        return command.to_wallet_id, command.amount or route_amount, True
    return treasury_id(command.asset), command.amount, True


@dataclass(slots=True)
class _CreditStep:
    command: Movement
    reply: Reply
    route_amount: int = 0  # a capture without an amount captures the hold's (router's view)


@dataclass(slots=True)
class _DebitStep:
    command: Movement
    credit: CreditCheck
    credit_shard: int
    reserved: int  # the amount step 1 reserved on the credit shard (0: none)
    reply: Reply


@dataclass(slots=True)
class _ApplyCredit:
    event: Transferred | HoldCaptured | None  # None: step 2 refused, only release
    wallet_id: str
    amount: int  # the amount reserved in step 1
    lsn: int


@dataclass(slots=True)
class _Tick:
    """Void the holds whose deadline passed (posted by the ledger's timer)."""


@dataclass(slots=True)
class _Query:
    function: Callable[[State], Any]
    wait_lsn: Callable[[Any], int]
    reply: Reply


@dataclass(slots=True)
class _Command:
    command: LocalCommand
    reply: Reply


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardStatistics:
    index: int
    wallets: int
    mailbox_depth: int
    internal_depth: int
    pending_credits: int
    messages: int
    drains: int
    overloaded: int


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
        self._messages = 0
        self._drains = 0
        self._overloaded = 0
        self._handlers: dict[type, Callable[[Any], None]] = {
            _CreditStep: self._on_credit_step,
            _DebitStep: self._on_debit_step,
            _ApplyCredit: self._on_apply_credit,
            _Query: self._on_query,
            _Command: self._on_command,
            _Tick: self._on_tick,
        }

    # -- submitting ----------------------------------------------------------------------

    def _submit(self, message: Any) -> None:
        if len(self._external) >= self._capacity or self._backlogged():
            self._overloaded += 1
            raise Overloaded(f"shard {self.index} mailbox is full")
        self._external.append(message)
        if self._sleeping:
            self._sleeping = False
            self._wakeup.set()

    def _post(self, message: Any) -> None:
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

    def submit_query(self, function: Callable[[State], Any], wait_lsn: Callable[[Any], int]) -> Reply:
        """Runs ``function(state)`` in the actor; the reply waits until ``wait_lsn(result)``
        is durable so a read never shows what a crash could take back."""
        reply = Reply()
        self._submit(_Query(function, wait_lsn, reply))
        return reply

    # -- the actor -----------------------------------------------------------------------

    def stop(self) -> None:
        """``run`` returns once both mailboxes are empty (in-flight transfers finished)."""
        self._stopping = True
        if self._sleeping:
            self._sleeping = False
            self._wakeup.set()

    def idle(self) -> bool:
        return not self._internal and not self._external

    async def run(self) -> None:
        while True:
            if not self._internal and not self._external:
                if self._stopping:
                    return
                self._wakeup = anyio.Event()
                self._sleeping = True
                await self._wakeup.wait()
                continue
            self.drain(DRAIN_MAX)
            await anyio.lowlevel.checkpoint()

    def drain(self, limit: int) -> int:
        """Handles up to ``limit`` waiting messages, internal ones first, in one synchronous
        step; returns how many. (``run`` calls it; the simulation calls it directly.)"""
        handlers = self._handlers
        internal = self._internal
        external = self._external
        handled = 0
        while (internal or external) and handled < limit:
            message = internal.popleft() if internal else external.popleft()
            handlers[type(message)](message)
            handled += 1
        self._drains += 1
        self._messages += handled
        return handled

    def _resolve(self, reply: Reply, value: Any, lsn: int) -> None:
        reply.value = value
        reply.lsn = lsn
        self._wal.call_when_durable(lsn, reply._wake)

    def _commit(self, event: Event) -> int:
        """Appends the event; the caller applies it in the same step."""
        return self._wal.append(encode_event(event), event)

    def _answer(self, reply: Reply, decision: _state.Decision) -> None:
        """Resolves a reply for a decision that appended nothing: a replay answers once its
        original is durable; a rejection once the log it was judged against is durable."""
        if isinstance(decision, Duplicate):
            self._resolve(reply, decision, decision.record.lsn)
        else:
            self._resolve(reply, decision, self._wal.last_lsn)

    def _on_credit_step(self, message: _CreditStep) -> None:
        command = message.command
        wallet_id, amount, reserves = credit_target(command, message.route_amount)
        pending = self._pending.get(wallet_id, 0)
        credit = _state.check_credit_to(self.state, wallet_id, amount, pending=pending)
        sender_id: str | None
        if isinstance(command, Transfer):
            sender_id = command.from_wallet_id
            if sender_id is None and credit.asset is not None:
                sender_id = treasury_id(credit.asset)
        elif isinstance(command, ResolveHold):
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
        now_us = self._clock()
        decision: _state.Decision
        if isinstance(command, Transfer):
            decision = _state.decide_transfer(self.state, command, now_us, credit)
        elif isinstance(command, ResolveHold):
            decision = _state.decide_capture(self.state, command, now_us, credit)
        else:
            decision = _state.decide_complete_withdrawal(self.state, command, now_us, credit)
        if not isinstance(decision, list):
            if reserved:
                self._peers[credit_shard]._post(_ApplyCredit(None, credited, reserved, 0))
            self._answer(reply, decision)
            return
        (event,) = decision
        lsn = self._commit(event)
        _state.apply_directory(self.state.directory, event, lsn)
        if isinstance(event, Transferred):
            _state.apply_debit(self.state, event, lsn)
        else:
            self._apply_sender(event, lsn)
        if isinstance(event, HoldCreated):
            # Nothing reaches the receiver yet, and step 1 reserved nothing.
            assert not reserved
        else:
            assert isinstance(event, Transferred | HoldCaptured)
            if credit_shard == self.index:
                _state.apply_credit(self.state, event, lsn)
            else:
                # A capture may take less than step 1 reserved (the router's view was stale
                # only if the hold is gone, and then the capture was refused above).
                assert reserved == event.amount, (reserved, event.amount)
                self._peers[credit_shard]._post(_ApplyCredit(event, event.to_wallet_id, reserved, lsn))
        self._resolve(reply, Committed(event=event, lsn=lsn), lsn)

    def _apply_sender(self, event: Event, lsn: int) -> None:
        """``apply_sender`` plus this shard's deadline heap."""
        _state.apply_sender(self.state, event, lsn)
        if isinstance(event, HoldCreated) and event.deadline_us:
            heapq.heappush(self._deadlines, (event.deadline_us, event.transaction_id))

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
        decision = _state.decide_expire(self.state, ExpireHolds(transaction_ids=tuple(due)), now_us)
        assert isinstance(decision, list)
        for event in decision:
            lsn = self._commit(event)
            _state.apply_directory(self.state.directory, event, lsn)
            self._apply_sender(event, lsn)

    def _on_apply_credit(self, message: _ApplyCredit) -> None:
        assert message.event is None or message.event.amount == message.amount
        remaining = self._pending[message.wallet_id] - message.amount
        assert remaining >= 0
        if remaining:
            self._pending[message.wallet_id] = remaining
        else:
            del self._pending[message.wallet_id]
        if message.event is not None:
            _state.apply_credit(self.state, message.event, message.lsn)

    def _on_query(self, message: _Query) -> None:
        value = message.function(self.state)
        lsn = min(message.wait_lsn(value), self._wal.last_lsn)
        self._resolve(message.reply, value, lsn)

    def _on_command(self, message: _Command) -> None:
        command = message.command
        state = self.state
        if self._wal.failed is not None:
            message.reply._wake(self._wal.failed)
            return
        now_us = self._clock()
        decision: _state.Decision
        if isinstance(command, CreateWallet):
            decision = _state.decide_create_wallet(state, command, now_us)
        elif isinstance(command, ChangeWalletStatus):
            pending = self._pending.get(command.wallet_id, 0)
            decision = _state.decide_change_status(state, command, now_us, pending=pending)
        elif isinstance(command, CreateAsset):
            decision = _state.decide_create_asset(state, command, now_us)
        elif isinstance(command, CreateToken):
            decision = _state.decide_create_token(state, command, now_us)
        elif isinstance(command, RevokeToken):
            decision = _state.decide_revoke_token(state, command, now_us)
        elif isinstance(command, ResolveHold):
            decision = _state.decide_void(state, command, now_us)
        elif isinstance(command, ExpireHolds):
            decision = _state.decide_expire(state, command, now_us)
        elif isinstance(command, RequestWithdrawal):
            decision = _state.decide_request_withdrawal(state, command, now_us)
        else:
            decision = _state.decide_advance_withdrawal(state, command, now_us)
        if not isinstance(decision, list) or not decision:
            self._answer(message.reply, decision)
            return
        lsn = 0
        for event in decision:
            lsn = self._commit(event)
            _state.apply_directory(state.directory, event, lsn)
            if isinstance(event, HoldCreated | HoldVoided | WithdrawalUpdated):
                self._apply_sender(event, lsn)
            else:
                _state.apply_wallets(state, event, lsn)
        if len(decision) == 1 and isinstance(decision[0], HoldCreated | HoldVoided):
            self._resolve(message.reply, Committed(event=decision[0], lsn=lsn), lsn)
        else:
            self._resolve(message.reply, decision, lsn)

    def wallets(self) -> dict[str, Wallet]:
        return self.state.wallets

    def statistics(self) -> ShardStatistics:
        return ShardStatistics(
            index=self.index,
            wallets=len(self.state.wallets),
            mailbox_depth=len(self._external),
            internal_depth=len(self._internal),
            pending_credits=len(self._pending),
            messages=self._messages,
            drains=self._drains,
            overloaded=self._overloaded,
        )

