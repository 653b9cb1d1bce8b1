"""The ledger service: the shard actors, the WAL writer and the router between them.

This is a shell around the pure state machine. ``open_ledger`` recovers the state from the log
(``ledger._recovery``: scan, decode, ``apply``, check the invariants) and partitions the wallets
among the shards; ``Ledger.run`` runs the WAL writer and one task per shard; the async methods
route each request to the shard that owns it and wait for the durable answer.

Concurrent requests with the same idempotency key are serialised here (``_in_flight``): the
second waits until the first is durable and is then answered from the idempotency record by the
state machine, so a key never executes twice. The wait is shielded from cancellation: a client
that hangs up does not release the key before its command is decided. A request the ledger
refused is answered the same way: its refusal is recorded under the key (``ledger._decide``,
final outcomes), so the waiting duplicate gets the same rejection.

Batch items do not go through ``_in_flight``. What makes a key execute at most once is the
commit-point check: ``decide_transfer`` consults the directory's idempotency records and
``apply_directory`` adds the new one in the same synchronous step, on whichever shard commits
(and a duplicate is answered only once its original record is durable). The guard only makes a
concurrent second request wait instead of being decided against the first's record; for
batches it would cost an event per item, and two batches taking overlapping keys in different
orders could wait on each other forever.

Atomic batches that span shards are serialised by ``_atomic_lock``: only one at a time holds
(pauses) shards, so two can never wait on each other (``ledger._batch``, ADR 0004).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from ledger import _apply, _decide, _invariants, _state
from ledger._batch import (
    _AtomicLead,
    _CreditGroup,
    _DebitPart,
    _Pause,
    commit_atomic,
    settle_prepared,
)
from ledger._codec import encode_event
from ledger._decide import CreditCheck, Decision
from ledger._events import EventFeed
from ledger._history import History, weight
from ledger._key_index import KeyIndex, trim
from ledger._key_tier import KeyTier
from ledger._messages import REMOTE, Aborted, BatchReply, Reply, _Commands, _DebitStep, shard_of
from ledger._model import (
    BATCH_ITEMS_MAX,
    AbortTransfers,
    AdvanceWithdrawal,
    Alert,
    AlertView,
    Asset,
    BatchFailed,
    ChangeWalletStatus,
    Committed,
    CompleteWithdrawal,
    CreateAlert,
    CreateAsset,
    CreateToken,
    CreateWallet,
    DecideBatch,
    DeleteAlert,
    Duplicate,
    GroupConfigured,
    Hold,
    Idempotency,
    ItemOutcome,
    Reason,
    Refund,
    RefundTally,
    Rejection,
    RequestWithdrawal,
    Reservation,
    ReserveCredit,
    ResolveHold,
    RevokeToken,
    SettleReservation,
    SettleTransit,
    Token,
    TransactionType,
    Transfer,
    UpdateWallet,
    Wallet,
    WalletStatus,
    Withdrawal,
    WithdrawalStatus,
    treasury_id,
)
from ledger._projector import RemoteProjection
from ledger._recovery import Recovered, recover
from ledger._shard import Shard
from ledger._state import Directory, State, reserved_in
from wal import REPLICATED_BATCH_BYTES_MAX, Replicate, StorageFailed, WriteAheadLog

log = logging.getLogger("ledger")

SHARDS_DEFAULT = 4


def _no_sync(fd: int) -> None:
    """The local fsync of a replicated log: skipped (the stream is what is durable)."""


class Clock:
    """Microseconds since the epoch, never going backwards within a process, so record
    timestamps are non-decreasing in LSN order (``balance?as_of`` relies on it)."""

    def __init__(self, source: Callable[[], int] = time.time_ns, *, start_us: int = 0) -> None:
        self._source = source
        self._last_us = start_us

    def __call__(self) -> int:
        now_us = self._source() // 1000
        if now_us <= self._last_us:
            return self._last_us
        self._last_us = now_us
        return now_us


@dataclass(frozen=True, slots=True, kw_only=True)
class WalletView:
    """A copy of a wallet taken inside its actor (the live object keeps changing)."""

    id: str
    owner_id: str
    asset: str
    balance: int
    held: int
    status: WalletStatus
    metadata: dict[str, Any] | None
    created_at_us: int
    updated_at_us: int
    lsn: int
    overdraft_limit: int = 0
    daily_limit: int | None = None
    monthly_limit: int | None = None
    # What it spent in the UTC day and month of the ledger's clock when the copy was taken.
    spent_daily: int = 0
    spent_monthly: int = 0

    @property
    def available(self) -> int:
        return self.balance - self.held

    @classmethod
    def of(cls, wallet: Wallet, now_us: int = 0) -> WalletView:
        limits = wallet.limits
        daily, monthly = wallet.spent_at(now_us)
        return cls(
            id=wallet.id, owner_id=wallet.owner_id, asset=wallet.asset, balance=wallet.balance,
            held=wallet.held, status=wallet.status, metadata=wallet.metadata,
            created_at_us=wallet.created_at_us, updated_at_us=wallet.updated_at_us, lsn=wallet.lsn,
            overdraft_limit=0 if limits is None else limits.overdraft,
            daily_limit=None if limits is None else limits.daily,
            monthly_limit=None if limits is None else limits.monthly,
            spent_daily=daily, spent_monthly=monthly,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WithdrawalView:
    """A copy of a withdrawal taken inside its actor."""

    id: str
    wallet_id: str
    owner_id: str
    asset: str
    amount: int
    destination: dict[str, Any]
    status: WithdrawalStatus
    attempts: int
    last_error: str | None
    next_attempt_at_us: int
    reference: str | None
    created_at_us: int
    updated_at_us: int
    lsn: int

    @classmethod
    def of(cls, withdrawal: Withdrawal, owner_id: str) -> WithdrawalView:
        return cls(
            id=withdrawal.id, wallet_id=withdrawal.wallet_id, owner_id=owner_id, asset=withdrawal.asset,
            amount=withdrawal.amount, destination=withdrawal.destination, status=withdrawal.status,
            attempts=withdrawal.attempts, last_error=withdrawal.last_error,
            next_attempt_at_us=withdrawal.next_attempt_at_us, reference=withdrawal.reference,
            created_at_us=withdrawal.created_at_us, updated_at_us=withdrawal.updated_at_us,
            lsn=withdrawal.lsn,
        )


def _withdrawal_view(withdrawal_id: str) -> Callable[[State], WithdrawalView | None]:
    def read(state: State) -> WithdrawalView | None:
        withdrawal = state.withdrawals.get(withdrawal_id)
        if withdrawal is None:
            return None
        return WithdrawalView.of(withdrawal, state.wallets[withdrawal.wallet_id].owner_id)

    return read


def _withdrawal_views(
    statuses: frozenset[WithdrawalStatus] | None, owner_id: str | None
) -> Callable[[State], list[WithdrawalView]]:
    def read(state: State) -> list[WithdrawalView]:
        views = []
        for withdrawal in state.withdrawals.values():
            if statuses is not None and withdrawal.status not in statuses:
                continue
            owner = state.wallets[withdrawal.wallet_id].owner_id
            if owner_id is not None and owner != owner_id:
                continue
            views.append(WithdrawalView.of(withdrawal, owner))
        return views

    return read


def _alert_views(wallet_id: str) -> Callable[[State], list[AlertView] | None]:
    """The wallet's alerts in creation order (None: no such wallet)."""

    def read(state: State) -> list[AlertView] | None:
        wallet = state.wallets.get(wallet_id)
        if wallet is None:
            return None
        return [AlertView.of(alert, wallet.owner_id) for alert in state.watched.get(wallet_id, ())]

    return read


def _alert_view(alert_id: str) -> Callable[[State], AlertView | None]:
    def read(state: State) -> AlertView | None:
        alert = state.alerts.get(alert_id)
        return None if alert is None else AlertView.of(alert, state.wallets[alert.wallet_id].owner_id)

    return read


def _alerts_lsn(views: list[AlertView] | AlertView | None) -> int:
    """An alert's ``triggered`` changes with its wallet, so a read waits for the wallet too."""
    return 0 if views is None else max((view.lsn for view in ([views] if isinstance(views, AlertView) else views)),
                                       default=0)


def _withdrawal_lsn(view: WithdrawalView | None) -> int:
    return 0 if view is None else view.lsn


def _withdrawals_lsn(views: list[WithdrawalView]) -> int:
    return max((view.lsn for view in views), default=0)


HOLD_TIMER_S = 0.2  # how often the timer looks for holds past their deadline


def _wallet_view(wallet_id: str, clock: Callable[[], int]) -> Callable[[State], WalletView | None]:
    def read(state: State) -> WalletView | None:
        wallet = state.wallets.get(wallet_id)
        return None if wallet is None else WalletView.of(wallet, clock())

    return read


def _views(wallet_ids: list[str], clock: Callable[[], int]) -> Callable[[State], list[WalletView]]:
    def read(state: State) -> list[WalletView]:
        now_us = clock()
        return [WalletView.of(state.wallets[wallet_id], now_us) for wallet_id in wallet_ids]

    return read


def _view_lsn(view: WalletView | None) -> int:
    return 0 if view is None else view.lsn


def _views_lsn(views: list[WalletView]) -> int:
    return max((view.lsn for view in views), default=0)


class Ledger:
    def __init__(
        self,
        recovered: Recovered,
        data_dir: Path,
        *,
        shards: int = SHARDS_DEFAULT,
        clock: Clock | None = None,
        segment_bytes_max: int | None = None,
        mailbox_capacity: int | None = None,
        memory_keys: int | None = None,
        replicate: Replicate | None = None,
        group: int = 0,
        groups: int = 1,
    ) -> None:
        """``group`` and ``groups``: this ledger is group ``group`` of a cluster of ``groups``
        (ADR 0013); its log says so from its first record, and it cannot change. ``memory_keys``: keep at most that many idempotency records in memory and the older
        ones in ``<data>/idempotency.sqlite3`` (``ledger._key_tier``); None keeps them all in
        memory (tests, tools, the simulation). ``replicate``: cluster mode (``server._member``):
        each group commit is durable once replicated, not once fsynced here."""
        assert shards >= 1
        self.data_dir = data_dir
        result = recovered.scan
        # The read model: projected here (one process), or by the projector process, whose
        # progress ``RemoteProjection`` tracks (``--workers N``).
        self.history: History | RemoteProjection = (
            recovered.history if recovered.history is not None
            else RemoteProjection(durable_lsn=result.next_lsn - 1)
        )
        self.directory: Directory = recovered.state.directory
        self.keys: KeyTier | None = None
        if memory_keys is not None:
            key_index = KeyIndex.open(data_dir)
            key_index.cut(result.next_lsn - 1)
            dropped = trim(self.directory, key_index.through_lsn)
            if dropped:
                log.info("idempotency: %d recovered records are in the on-disk index (through LSN %d)",
                         dropped, key_index.through_lsn)
            self.keys = KeyTier(self.directory, key_index, memory_keys=memory_keys)
        self.clock = clock or Clock(start_us=self.directory.at_us)
        options: dict[str, Any] = {}
        if segment_bytes_max is not None:
            options["segment_bytes_max"] = segment_bytes_max
        if replicate is not None:
            # The quorum's fsync is the durability; this copy is the owner's cache of the
            # stream, rebuilt from the stream when the process starts again.
            options.update(replicate=replicate, batch_bytes_max=REPLICATED_BATCH_BYTES_MAX,
                           sync=_no_sync)
        self.wal = WriteAheadLog(
            data_dir / "wal",
            next_lsn=result.next_lsn,
            parent=result.last_checksum,
            tail_path=result.tail_path,
            tail_offset=result.tail_offset,
            on_durable=self._durable,
            **options,
        )
        self.events = EventFeed(data_dir / "wal", durable_lsn=result.next_lsn - 1)
        directory = self.directory
        self._group_record: GroupConfigured | None = None
        if (directory.group, directory.groups) != (group, groups):
            if directory.groups != 1 or directory.lsn != 0:
                raise ValueError(
                    f"this log belongs to group {directory.group} of {directory.groups}, "
                    f"not group {group} of {groups}: the group table never changes on a cluster")
            assert groups > 1 and 0 <= group < groups, (group, groups)
            self._group_record = GroupConfigured(group=group, groups=groups, at_us=self.clock())
        states = [State(directory=self.directory) for _ in range(shards)]
        for wallet_id, wallet in recovered.state.wallets.items():
            states[shard_of(wallet_id, shards)].wallets[wallet_id] = wallet
        for transaction_id, hold in recovered.state.holds.items():
            states[shard_of(hold.from_wallet_id, shards)].holds[transaction_id] = hold
        for withdrawal_id, withdrawal in recovered.state.withdrawals.items():
            states[shard_of(withdrawal.wallet_id, shards)].withdrawals[withdrawal_id] = withdrawal
        for alert_id, alert in recovered.state.alerts.items():  # creation order, kept per shard
            states[shard_of(alert.wallet_id, shards)].alerts[alert_id] = alert
        for firing in recovered.state.crossings:
            states[shard_of(firing.wallet_id, shards)].crossings.append(firing)
        for transaction_id, tally in recovered.state.refunded.items():
            states[shard_of(tally.wallet_id, shards)].refunded[transaction_id] = tally
        for transaction_id, reservation in recovered.state.reservations.items():
            states[shard_of(reservation.wallet_id, shards)].reservations[transaction_id] = reservation
        _state.index_holds(self.directory, states)
        self.shards: list[Shard] = []
        shard_options: dict[str, Any] = {}
        if mailbox_capacity is not None:
            shard_options["capacity"] = mailbox_capacity
        for index in range(shards):
            self.shards.append(
                Shard(index, state=states[index], wal=self.wal, clock=self.clock, peers=self.shards,
                      backlogged=self._backlogged, **shard_options)
            )
        self._in_flight: dict[tuple[str, str], anyio.Event] = {}
        self._batch_ids = itertools.count(1)
        # Records made durable by this process, a batch record counting one per transfer.
        self.durable_transactions = 0
        self._atomic_lock = anyio.Lock()
        self._stopped = False

    # -- lifecycle -----------------------------------------------------------------------

    def _durable(self, records: list[tuple[int, bytes, Any]]) -> None:
        self.durable_transactions += sum(weight(tag) for _, _, tag in records)
        self.history.feed(records)
        self.events.feed(records)

    def _backlogged(self) -> bool:
        return self.wal.backlogged() or self.history.backlogged()

    def fire_owed_alerts(self) -> int:
        """Records the firings recovery found owed (a crash kept a change and lost the firing
        record that followed it: ``ledger._apply``), before any command; returns how many
        records. ``run`` calls it; so does the simulation, which runs no tasks."""
        return sum(shard.fire() for shard in self.shards)

    def begin(self) -> None:
        """What ``run`` does before any actor runs (the simulations call it directly): a new
        group's log gets its first record, and the alert firings a crash cut off are recorded."""
        record = self._group_record
        if record is not None and self.wal.failed is None:
            # The log's first record (``__init__`` checked that it is empty).
            _apply.apply_directory(self.directory, record, self.wal.append(encode_event(record), record))
            self._group_record = None
        if self.wal.failed is None:
            self.fire_owed_alerts()

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Runs the WAL writer, the history projector and the shard actors until ``stop`` (or
        a crash of any). On the way out the log is flushed and the projector drained."""
        await self.history.attach()
        self.begin()
        async with anyio.create_task_group() as group:
            group.start_soon(self._run_log)
            group.start_soon(self.history.run)
            async with anyio.create_task_group() as actors:
                for shard in self.shards:
                    actors.start_soon(shard.run)
                timer = anyio.CancelScope()
                group.start_soon(self._expire_holds, timer)
                keys = anyio.CancelScope()
                if self.keys is not None:
                    group.start_soon(self._run_keys, self.keys, keys)
                task_status.started()
            timer.cancel()
            keys.cancel()
            # Actors stopped: everything they appended is queued; the writer drains and returns.
            self.wal.close()
        self.wal.release()
        await self.history.aclose()

    async def _expire_holds(self, scope: anyio.CancelScope) -> None:
        """Wakes the shards whose earliest hold deadline has passed. The deadlines are state
        (restored by recovery), so a hold expires also when its deadline fell while the server
        was down: the first tick after the restart voids it."""
        with scope:
            while True:
                now_us = self.clock()
                for shard in self.shards:
                    deadline = shard.next_deadline_us()
                    if deadline is not None and deadline <= now_us:
                        shard.tick()
                await anyio.sleep(HOLD_TIMER_S)

    async def _run_keys(self, tier: KeyTier, scope: anyio.CancelScope) -> None:
        try:
            with scope:
                await tier.run(self.wal)
        finally:
            tier.close()

    async def _run_log(self) -> None:
        try:
            await self.wal.run()
        finally:
            self.history.close()

    async def stop(self) -> None:
        """Stops the actors once every mailbox is empty, so no transfer is left half way and the
        live state equals the log; ``run`` then flushes the log and drains the projector. Call
        when no request can arrive any more (after the HTTP server has drained and the payout
        workers have ended). A call that comes anyway is refused with StorageFailed: idle
        mailboxes do not mean idle callers (one may be waiting for the log to answer its last
        command and make its next call when it wakes), and a stopped actor would never answer."""
        while not all(shard.idle() for shard in self.shards):
            await anyio.sleep(0.001)
        # All idle at one instant of a single-threaded loop: no message is in flight anywhere
        # (a shard held by an atomic batch is not idle).
        self._stopped = True
        for shard in self.shards:
            shard.stop()

    def ready(self) -> str | None:
        """None when requests can be served, else why not."""
        failed = self.wal.failed
        return None if failed is None else f"storage failed: {failed}"

    # -- routing -------------------------------------------------------------------------

    def _shard(self, wallet_id: str) -> Shard:
        return self.shards[shard_of(wallet_id, len(self.shards))]

    async def _wait(self, reply: Reply | BatchReply) -> Any:
        # Shielded: once submitted, a command runs to its decision whatever the caller does.
        with anyio.CancelScope(shield=True):
            return await reply.wait()

    async def _keyed(self, idempotency: Any, submit: Callable[[], Reply]) -> Any:
        if idempotency is None:
            return await self._wait(submit())
        key = (idempotency.scope, idempotency.key)
        while (running := self._in_flight.get(key)) is not None:
            await running.wait()
        done = self._in_flight[key] = anyio.Event()
        tier = self.keys
        try:
            if tier is None:
                return await self._wait(submit())
            async with tier.holding((key,)):
                return await self._wait(submit())
        finally:
            del self._in_flight[key]
            done.set()

    async def transfer(self, command: Transfer) -> ItemOutcome:
        shard = self._shard(command.to_wallet_id)
        return await self._keyed(command.idempotency, lambda: shard.submit_transfer(command))

    async def refund(self, command: Refund) -> ItemOutcome:
        """Refunds (part of) a posted transaction: a transfer from its receiver back to its
        sender, credit side first, decided with the cap on the receiver's shard."""
        shard = self._shard(command.to_wallet_id)
        return await self._keyed(command.idempotency, lambda: shard.submit_transfer(command))

    async def create_wallet(self, command: CreateWallet) -> Decision:
        shard = self._shard(command.wallet_id)
        return await self._keyed(command.idempotency, lambda: shard.submit_command(command))

    async def transfer_batch(self, commands: list[Transfer], *, atomic: bool,
                             credits: list[CreditCheck | None] | None = None) -> list[ItemOutcome] | BatchFailed:
        """Posts a batch of transfers (1 to ``BATCH_ITEMS_MAX``, each with a sender, idempotency
        keys distinct within the batch). Raises Overloaded (at once, nothing done) or
        StorageFailed.

        Not atomic: one outcome per item in request order, ``Committed`` / ``Duplicate`` /
        ``Rejection``. Items that share a sender are decided in request order, each after the
        effects of the accepted ones before it; items of different senders are decided as
        concurrent single transfers would be (one may or may not see another's credit).

        Atomic: every item is decided in request order after the effects of the ones before it,
        and either all pass (a list of ``Committed`` / ``Duplicate``: the new ones are one
        record, so a crash keeps all of them or none) or nothing is posted and the answer is
        ``BatchFailed`` with the first failing item.

        ``credits`` (atomic only, a group of several, ADR 0013): per item, None when its receiver
        lives in this group, else the verdict of the receiver's group, which reserved the credit
        (``reserve_credit``); such an item's credit goes to the transit account, as
        ``transfer_across`` does. Every item is then ``Aborted`` if the receiver's group had any
        of them aborted: the batch cannot commit whole, and nothing was appended.
        """
        assert 1 <= len(commands) <= BATCH_ITEMS_MAX, len(commands)
        assert credits is None or (atomic and self.directory.groups > 1 and len(credits) == len(commands))
        keys = [(c.idempotency.scope, c.idempotency.key) for c in commands if c.idempotency is not None]
        assert len(set(keys)) == len(keys), "idempotency keys repeat within the batch"
        tier = self.keys
        if tier is None or not keys:
            return await self._post_batch(commands, atomic=atomic, credits=credits)
        async with tier.holding(keys):
            return await self._post_batch(commands, atomic=atomic, credits=credits)

    async def _post_batch(self, commands: list[Transfer], *, atomic: bool,
                          credits: list[CreditCheck | None] | None) -> list[ItemOutcome] | BatchFailed:
        if atomic:
            return await self._atomic(commands, credits)
        return await self._wait(self.submit_batch(commands))

    def submit_batch(self, commands: list[Transfer]) -> BatchReply:
        """The synchronous half of a non-atomic batch: one message per receiving shard, or
        Overloaded for the whole batch before anything is sent. (The simulation calls it.)"""
        return self._submit_parts(commands, None)

    def _submit_parts(self, commands: list[Transfer], credits: list[CreditCheck | None] | None) -> BatchReply:
        """A non-atomic batch's messages, or Overloaded before any is sent. An item whose
        receiver lives in this group (no ``credits``, or None there) goes to its receiving shard
        first (the credit checks, ``_CreditGroup``), which forwards it to the sending shard; an
        item whose receiver is in another group, with that group's verdict in ``credits``, goes
        straight to its sending shard (``REMOTE``). A sending shard gathers its parts and
        decides all its items in one step, in request order."""
        shards = len(self.shards)
        groups: dict[int, list[tuple[int, Transfer, int]]] = {}
        senders: dict[int, set[int]] = {}  # sending shard -> the receiving shards that forward to it
        remote: dict[int, list[Any]] = {}  # sending shard -> its items to other groups
        for position, command in enumerate(commands):
            assert command.from_wallet_id is not None  # no deposits in batches
            debit_shard = shard_of(command.from_wallet_id, shards)
            credit = None if credits is None else credits[position]
            if credit is not None:
                assert command.hold_timeout_s is None, command
                remote.setdefault(debit_shard, []).append((position, command, credit, False, REMOTE))
                continue
            credit_shard = shard_of(command.to_wallet_id, shards)
            group = groups.get(credit_shard)
            if group is None:
                groups[credit_shard] = [(position, command, debit_shard)]
            else:
                group.append((position, command, debit_shard))
            senders.setdefault(debit_shard, set()).add(credit_shard)
        self._check_running()
        for index in groups.keys() | remote.keys():
            self.shards[index].check_room()
        # Nothing below can refuse: every mailbox has room and nothing runs in between.
        parts = {debit_shard: len(senders.get(debit_shard, ())) + (debit_shard in remote)
                 for debit_shard in senders.keys() | remote.keys()}
        reply = BatchReply(len(commands), waiting=len(parts))
        batch = next(self._batch_ids)
        for index, items in groups.items():
            self.shards[index].submit_group(_CreditGroup(batch, items, parts, reply))
        for index, part in remote.items():
            self.shards[index].submit_part(_DebitPart(batch, part, parts[index], reply))
        return reply

    async def _atomic(self, commands: list[Transfer],
                      credits: list[CreditCheck | None] | None = None) -> list[ItemOutcome] | BatchFailed:
        reply = BatchReply(len(commands), waiting=1)
        await self._stepped(self._involved(commands, credits), reply, commands, credits)
        return await self._wait(reply)

    def _involved(self, commands: list[Transfer], credits: list[CreditCheck | None] | None) -> list[int]:
        """The shards an atomic step over ``commands`` touches: each sender's, and each
        receiver's that lives in this group (no verdict in ``credits``)."""
        shards = len(self.shards)
        remote = [False] * len(commands) if credits is None else [credit is not None for credit in credits]
        return sorted(
            {shard_of(wallet_id, shards) for command, elsewhere in zip(commands, remote, strict=True)
             for wallet_id in (command.from_wallet_id, None if elsewhere else command.to_wallet_id)
             if wallet_id is not None}
        )

    async def _stepped(self, involved: list[int], reply: BatchReply, commands: list[Transfer],
                       credits: list[CreditCheck | None] | None,
                       step: Callable[[list[Shard]], None] | None = None) -> None:
        """Runs ``commit_atomic`` (or ``step``) over the ``involved`` shards with none of them
        mid-step: inside the step of the only one, or in the lead's task while the others are
        paused (``ledger._batch``). Returns once it ran; ``reply`` then waits for the log."""
        if len(involved) == 1:
            self._check_running()
            self.shards[involved[0]].submit_atomic(commands, reply, credits, step)
            return
        held = [self.shards[index] for index in involved]
        async with self._atomic_lock:
            self._check_running()
            for shard in held:
                shard.check_room()
            # Once the shards are asked to pause, see it through whatever the caller does.
            with anyio.CancelScope(shield=True):
                pause = _Pause(waiting=len(held) - 1, paused=anyio.Event(), released=anyio.Event())
                lead, *others = held
                for shard in others:
                    shard.pause(pause)
                lead.lead(_AtomicLead(commands, held, pause, reply, credits, step))
                await pause.released.wait()

    def _check_running(self) -> None:
        """Raises StorageFailed when nothing may be submitted: the log failed or closed, or the
        actors were stopped (a message to a stopped actor would never be answered)."""
        if self._stopped:
            raise StorageFailed("the ledger is stopping")
        self.wal.check_writable()

    def commit_atomic_now(self, commands: list[Transfer],
                          credits: list[CreditCheck | None] | None = None) -> BatchReply:
        """An atomic batch decided and committed at once, for callers that know no shard is in
        the middle of a step (the simulations, which run no tasks)."""
        reply = BatchReply(len(commands), waiting=1)
        commit_atomic(self.shards, commands, reply, credits)
        return reply

    # -- atomic batches whose senders are in several groups (ADR 0013) ---------------------

    async def prepare_batch(self, batch: str, coordinator: int, commands: list[Transfer],
                            credits: list[CreditCheck | None]) -> list[Any] | BatchFailed:
        """Prepare, at one of the sending groups of an atomic batch whose senders are in several
        groups: this group's items (all its senders'; ``credits`` as for ``transfer_batch``),
        decided whole in request order as an atomic batch is, and held rather than posted (one
        ``BatchPrepared``). Per item, ``Duplicate`` (its key answered before) or ``Held``;
        ``BatchFailed`` (the first failing item among these, nothing held, nothing recorded);
        ``Aborted`` for every item when one of its ids was aborted here (a receiving group asked
        about it first). ``coordinator`` is the group that decides the batch."""
        assert self.directory.groups > 1 and len(commands) == len(credits) and commands
        keys = [(c.idempotency.scope, c.idempotency.key) for c in commands if c.idempotency is not None]
        assert len(set(keys)) == len(keys), "idempotency keys repeat within the batch"
        involved = self._involved(commands, credits)
        reply = BatchReply(len(commands), waiting=1)

        def step(shards_: list[Shard]) -> None:
            commit_atomic(shards_, commands, reply, credits, prepare=(batch, coordinator))

        tier = self.keys
        if tier is None or not keys:
            await self._stepped(involved, reply, commands, credits, step)
        else:
            async with tier.holding(keys):
                await self._stepped(involved, reply, commands, credits, step)
        result: list[Any] | BatchFailed = await self._wait(reply)
        return result

    def prepare_batch_now(self, batch: str, coordinator: int, commands: list[Transfer],
                          credits: list[CreditCheck | None]) -> BatchReply:
        """``prepare_batch`` at once, for callers that know no shard is mid-step (the
        simulations), without its hold of the keys."""
        reply = BatchReply(len(commands), waiting=1)
        commit_atomic(self.shards, commands, reply, credits, prepare=(batch, coordinator))
        return reply

    def settle_batch_now(self, batch: str, committed: bool) -> BatchReply:
        """``settle_batch`` at once (as ``prepare_batch_now``): its answer is the reply's
        results, or ``failed`` for a part released or ended before."""
        found = self.directory.prepared.get(batch)
        reply = BatchReply(1 if found is None else len(found[0].rows), waiting=1)
        settle_prepared(self.shards, batch, committed, reply)
        return reply

    async def settle_batch(self, batch: str, committed: bool) -> list[Committed] | None:
        """Ends this group's prepared part of ``batch`` as its coordinator decided: posted, one
        ``Committed`` per item in the order they were prepared; released, or ended before, None."""
        found = self.directory.prepared.get(batch)
        if found is None:
            return None
        prepared, _ = found
        shards = len(self.shards)
        involved = sorted({shard_of(wallet_id, shards) for row in prepared.rows for wallet_id in (row[2], row[3])})
        reply = BatchReply(len(prepared.rows), waiting=1)
        await self._stepped(involved, reply, [], None,
                            lambda shards_: settle_prepared(shards_, batch, committed, reply))
        results = await self._wait(reply)
        return results if isinstance(results, list) else None

    async def decide_batch(self, batch: str, committed: bool) -> bool:
        """At the coordinator of ``batch``: decides it ``committed`` or not unless it was decided
        before, and answers the decision that stands, once durable."""
        await self._wait(self.shards[0].submit_command(DecideBatch(batch=batch, committed=committed)))
        return self.directory.decided[batch]

    def prepared_batches(self) -> list[tuple[str, int, int]]:
        """This group's prepared parts not yet ended: (batch, coordinator, at_us)."""
        return [(batch, prepared.coordinator, prepared.at_us) for batch, (prepared, _) in self.directory.prepared.items()]

    # -- transfers between ledger groups (ADR 0013) ----------------------------------------

    async def reserve_credit(self, command: ReserveCredit) -> CreditCheck:
        """Prepare, at the receiver's group: the verdict (the receiver's asset, or the reason it
        may not receive), given once the reservation is durable."""
        decision = await self._wait(self._shard(command.to_wallet_id).submit_command(command))
        return self._verdict(command, decision)

    def _verdict(self, command: ReserveCredit, decision: Decision) -> CreditCheck:
        """A prepare's answer: the receiver's asset, and the refusal if it was refused."""
        wallet = self._shard(command.to_wallet_id).state.wallets.get(command.to_wallet_id)
        asset = None if wallet is None else wallet.asset
        if isinstance(decision, Rejection):
            return CreditCheck(asset=asset, failure=decision)
        assert asset is not None
        return CreditCheck(asset=asset, failure=None)

    async def transfer_across(self, command: Transfer, credit: CreditCheck) -> ItemOutcome | Aborted:
        """Commit, at the sender's group, of a transfer whose receiver (in another group) was
        prepared with ``credit`` as its verdict: decided like any transfer on the sender's
        shard; accepted, its credit goes to this group's transit account and the group owes it
        to the receiver's. ``Aborted`` when the receiver's group has had it aborted."""
        assert self.directory.groups > 1
        assert command.type == TransactionType.TRANSFER, command  # a hold too: nothing reserved for it
        sender = command.from_wallet_id
        assert sender is not None
        outcome: ItemOutcome | Aborted = await self._keyed(
            command.idempotency, lambda: self._submit_remote(sender, command, credit))
        return outcome

    def _submit_remote(self, wallet_id: str, command: Transfer | Refund | ResolveHold, credit: CreditCheck) -> Reply:
        """The debit step, on ``wallet_id``'s shard, of a movement whose receiver is in another
        group (``REMOTE``) that gave ``credit`` as its verdict."""
        shard = self._shard(wallet_id)
        shard._wal.check_writable()
        reply = Reply()
        shard._submit(_DebitStep(command, credit, REMOTE, 0, reply))
        return reply

    # The same steps for many transfers at once (a batch's items between two groups): one
    # message per shard, decided in one step each, instead of a task and a message per item.

    async def reserve_credits(self, commands: list[ReserveCredit]) -> list[CreditCheck]:
        """``reserve_credit`` of each, in one step per receiving shard; verdicts in order."""
        decisions = await self._commands([(command.to_wallet_id, command) for command in commands])
        return [self._verdict(command, decision) for command, decision in zip(commands, decisions, strict=True)]

    async def settle_reservations(self, items: list[tuple[str, str, bool]]) -> list[bool]:
        """``settle_reservation`` of each (id, wallet, credit), in one step per shard."""
        decisions = await self._commands([
            (wallet_id, SettleReservation(transaction_id=transaction_id, wallet_id=wallet_id, credit=credit))
            for transaction_id, wallet_id, credit in items])
        return [bool(decision) for decision in decisions]

    async def transfers_across(self, commands: list[Transfer],
                               credits: list[CreditCheck | None]) -> list[ItemOutcome | Aborted]:
        """A non-atomic batch of this group's senders whose receivers may be in other groups:
        per item, None when its receiver lives here, else the verdict of the receiver's group,
        which reserved the credit (``transfer_across`` of each such item). Decided as any
        non-atomic batch: one step per sending shard, a sender's items in request order after
        the accepted ones before them, whichever group receives them; its accepted items one
        record."""
        assert self.directory.groups > 1 and len(commands) == len(credits)
        if not commands:
            return []
        keys = [(c.idempotency.scope, c.idempotency.key) for c in commands if c.idempotency is not None]
        assert len(set(keys)) == len(keys), "idempotency keys repeat"
        tier = self.keys
        if tier is None or not keys:
            return await self._across_parts(commands, credits)
        async with tier.holding(keys):
            return await self._across_parts(commands, credits)

    async def _across_parts(self, commands: list[Transfer],
                            credits: list[CreditCheck | None]) -> list[ItemOutcome | Aborted]:
        result = await self._wait(self.submit_across(commands, credits))
        assert isinstance(result, list)
        return result

    def submit_across(self, commands: list[Transfer], credits: list[CreditCheck | None]) -> BatchReply:
        """The synchronous half of ``transfers_across`` (without its hold of the keys): the
        messages of ``_submit_parts``, or Overloaded before anything is sent. (The simulation
        calls it.)"""
        assert len(commands) == len(credits)
        return self._submit_parts(commands, credits)

    async def _commands(self, commands: list[tuple[str, Any]]) -> list[Decision]:
        """Unkeyed commands, each to the shard of its wallet id, one message per shard."""
        if not commands:
            return []
        result = await self._wait(self.submit_commands(commands))
        assert isinstance(result, list)
        return result

    def submit_commands(self, commands: list[tuple[str, Any]]) -> BatchReply:
        """The synchronous half of ``_commands`` (at least one). (The simulation calls it.)"""
        shards = len(self.shards)
        by_shard: dict[int, list[tuple[int, Any]]] = {}
        for position, (wallet_id, command) in enumerate(commands):
            by_shard.setdefault(shard_of(wallet_id, shards), []).append((position, command))
        self._check_running()
        for index in by_shard:
            self.shards[index].check_room()
        reply = BatchReply(len(commands), waiting=len(by_shard))
        for index, items in by_shard.items():
            self.shards[index].submit_commands(_Commands(items, reply))
        return reply

    async def refund_across(self, command: Refund, credit: CreditCheck) -> ItemOutcome | Aborted:
        """Commit, at the group of the refunding wallet (the original's receiver), of a refund
        whose receiver (the original's sender) is in another group, which reserved it with
        ``credit`` as its verdict: decided as any refund on the refunding wallet's shard (the
        cap is kept there); accepted, the money goes to the transit account and is owed, as for
        ``transfer_across``. ``command.amount`` must be the reserved amount (None only when
        nothing is left to refund: refused before the verdict is looked at)."""
        assert self.directory.groups > 1
        outcome: ItemOutcome | Aborted = await self._keyed(
            command.idempotency, lambda: self._submit_remote(command.from_wallet_id, command, credit))
        return outcome

    async def capture_across(self, transaction_id: str, *, reservation: str, amount: int | None,
                             owner_id: str | None, idempotency: Idempotency | None,
                             credit: CreditCheck) -> ItemOutcome | Aborted:
        """Commit, at the sender's group, of the capture of a hold whose receiver is in another
        group, which reserved the captured amount under ``reservation`` (this attempt's own id)
        with ``credit`` as its verdict: decided as any capture on the sender's shard; accepted,
        the captured amount goes to the transit account and is owed under ``reservation``.
        ``Aborted`` when the receiver's group had that reservation aborted."""
        assert self.directory.groups > 1
        outcome: ItemOutcome | Aborted = await self._keyed(idempotency, lambda: self.submit_capture_across(
            transaction_id, reservation=reservation, amount=amount, owner_id=owner_id, idempotency=idempotency,
            credit=credit))
        return outcome

    def submit_capture_across(self, transaction_id: str, *, reservation: str, amount: int | None,
                              owner_id: str | None, idempotency: Idempotency | None, credit: CreditCheck) -> Reply:
        """The synchronous half of ``capture_across``. (The simulation calls it.)"""
        route = self.directory.hold_routes.get(transaction_id)
        if route is None:
            return self._not_pending(transaction_id, idempotency)
        from_wallet_id, to_wallet_id, _ = route
        return self._submit_remote(from_wallet_id, ResolveHold(
            transaction_id=transaction_id, capture=True, amount=amount, from_wallet_id=from_wallet_id,
            to_wallet_id=to_wallet_id, owner_id=owner_id, idempotency=idempotency, reservation=reservation,
        ), credit)

    def hold_route(self, transaction_id: str) -> tuple[str, str, int] | None:
        """A pending hold's (sender, receiver, held amount), or None."""
        route = self.directory.hold_routes.get(transaction_id)
        return None if route is None else (route[0], route[1], route[2])

    async def credit_check(self, wallet_id: str, amount: int) -> CreditCheck:
        """The credit-side checks of ``amount`` to ``wallet_id`` as they stand, appending
        nothing: what a hold from another group is created with (its capture checks again, as
        inside one group)."""
        verdict: CreditCheck = await self._wait(self.submit_credit_check(wallet_id, amount))
        return verdict

    def submit_credit_check(self, wallet_id: str, amount: int) -> Reply:
        """The synchronous half of ``credit_check``. (The simulation calls it.)"""
        shard = self._shard(wallet_id)
        return shard.submit_query(
            lambda state: _decide.check_credit_to(state, wallet_id, amount, pending=shard._pending.get(wallet_id, 0)),
            lambda _: 0)

    async def refund_remaining(self, refund_of: str, wallet_id: str, original_amount: int) -> int:
        """What is left to refund of ``refund_of`` (received by ``wallet_id``, posted for
        ``original_amount``) as its refunding wallet's shard counts it now."""
        left: int = await self._wait(self.submit_refund_remaining(refund_of, wallet_id, original_amount))
        return left

    def submit_refund_remaining(self, refund_of: str, wallet_id: str, original_amount: int) -> Reply:
        """The synchronous half of ``refund_remaining``. (The simulation calls it.)"""

        def remaining(state: State) -> int:
            tally = state.refunded.get(refund_of)
            return original_amount if tally is None else tally.original_amount - tally.refunded

        return self._shard(wallet_id).submit_query(remaining, lambda _: 0)

    async def settle_reservation(self, transaction_id: str, wallet_id: str, *, credit: bool) -> bool:
        """Credits or releases a reservation; False when it was gone already."""
        decision = await self._wait(self._shard(wallet_id).submit_command(
            SettleReservation(transaction_id=transaction_id, wallet_id=wallet_id, credit=credit)))
        return bool(decision)

    async def settle_transit(self, transaction_ids: list[str]) -> None:
        """The receivers credited these transfers: this group stops owing them."""
        await self._wait(self.shards[0].submit_command(SettleTransit(transaction_ids=tuple(transaction_ids))))

    async def resolve_transfers(self, transaction_ids: list[str]) -> dict[str, bool]:
        """Presumed abort, for a receiver's group that holds reservations of these transfers:
        each is True (committed here: the receiver credits it) or False (aborted here for
        good: the receiver releases it), durably so before the answer. A transfer of a batch
        of several sending groups that this group holds prepared is left out (not yet known:
        ask again later; its coordinator's decision ends it, ``resolved``)."""
        await self._wait(self.shards[0].submit_command(AbortTransfers(transaction_ids=tuple(transaction_ids))))
        return resolved(self.directory, transaction_ids)

    def owed(self) -> dict[str, str]:
        """Committed transfers to other groups not yet credited there: id -> receiving wallet."""
        return dict(self.directory.owed)

    def all_reservations(self) -> list[Reservation]:
        return [reservation for shard in self.shards for reservation in shard.state.reservations.values()]

    async def change_status(self, command: ChangeWalletStatus) -> Decision:
        return await self._wait(self._shard(command.wallet_id).submit_command(command))

    async def update_wallet(self, command: UpdateWallet) -> Decision:
        return await self._wait(self._shard(command.wallet_id).submit_command(command))

    async def create_asset(self, command: CreateAsset) -> Decision:
        return await self._wait(self._shard(treasury_id(command.code)).submit_command(command))

    async def create_token(self, command: CreateToken) -> Decision:
        return await self._wait(self.shards[0].submit_command(command))

    async def revoke_token(self, command: RevokeToken) -> Decision:
        return await self._wait(self.shards[0].submit_command(command))

    async def resolve_hold(
        self, transaction_id: str, *, capture: bool, amount: int | None, owner_id: str | None,
        idempotency: Idempotency | None,
    ) -> ItemOutcome:
        """Captures or voids a pending transfer. ``Rejection(NOT_PENDING)`` when no pending
        hold has that id (the caller tells "not pending" from "no such transaction")."""

        def submit() -> Reply:
            route = self.directory.hold_routes.get(transaction_id)
            if route is None:
                return self._not_pending(transaction_id, idempotency)
            from_wallet_id, to_wallet_id, held = route
            command = ResolveHold(
                transaction_id=transaction_id, capture=capture, amount=amount,
                from_wallet_id=from_wallet_id, to_wallet_id=to_wallet_id, owner_id=owner_id,
                idempotency=idempotency,
            )
            if capture:
                return self._shard(to_wallet_id).submit_transfer(command, route_amount=held)
            return self._shard(from_wallet_id).submit_command(command)

        return await self._keyed(idempotency, submit)

    def _not_pending(self, transaction_id: str, idempotency: Idempotency | None) -> Reply:
        """No pending hold: a replay of a resolution that happened (or of a recorded refusal),
        or not pending. This NOT_PENDING is not recorded under the key (final outcomes): no
        shard holds the transaction, so nothing here can tell it from another owner's (the
        route answers 403) or an unknown id (404), neither of which may be recorded; and it can
        never change (a resolved hold stays resolved)."""
        decision = _decide.check_idempotency(self.directory, idempotency) or Rejection(
            reason=Reason.NOT_PENDING, detail=f"transfer {transaction_id} is not pending"
        )
        reply = Reply()
        lsn = decision.record.lsn if isinstance(decision, Duplicate) else self.wal.last_lsn
        reply.value = decision
        self.wal.check_writable()
        self.wal.call_when_durable(lsn, reply._wake)
        return reply

    async def request_withdrawal(self, command: RequestWithdrawal) -> ItemOutcome:
        shard = self._shard(command.wallet_id)
        return await self._keyed(command.idempotency, lambda: shard.submit_command(command))

    async def advance_withdrawal(self, command: AdvanceWithdrawal) -> Decision | Committed:
        """An admin's or a payout worker's step: the events it appended, or ``Committed`` when
        the step voided the hold alone (a refusal)."""
        wallet_id = self.directory.withdrawal_wallets.get(command.withdrawal_id)
        if wallet_id is None:
            return Rejection(
                reason=Reason.WITHDRAWAL_NOT_FOUND, detail=f"withdrawal {command.withdrawal_id} does not exist"
            )
        return await self._wait(self._shard(wallet_id).submit_command(command))

    async def complete_withdrawal(self, withdrawal_id: str, reference: str | None) -> Decision:
        """The bank paid: capture the hold into the treasury (credit-first, like a transfer)."""
        wallet_id = self.directory.withdrawal_wallets.get(withdrawal_id)
        route = self.directory.hold_routes.get(withdrawal_id)
        if wallet_id is None or route is None:
            return Rejection(
                reason=Reason.WITHDRAWAL_NOT_PAYABLE, detail=f"withdrawal {withdrawal_id} holds nothing"
            )
        _, treasury, amount = route
        asset = treasury.removeprefix("treasury:")
        command = CompleteWithdrawal(
            withdrawal_id=withdrawal_id, wallet_id=wallet_id, asset=asset, amount=amount, reference=reference
        )
        assert treasury_id(asset) == treasury
        return await self._wait(self._shard(treasury).submit_transfer(command))

    async def create_alert(self, command: CreateAlert) -> Decision:
        return await self._wait(self._shard(command.wallet_id).submit_command(command))

    async def delete_alert(self, command: DeleteAlert) -> Decision:
        wallet_id = self.directory.alert_wallets.get(command.alert_id)
        if wallet_id is None:
            return Rejection(reason=Reason.ALERT_NOT_FOUND, detail=f"alert {command.alert_id} does not exist")
        return await self._wait(self._shard(wallet_id).submit_command(command))

    async def alerts(self, wallet_id: str) -> list[AlertView] | None:
        """The wallet's alerts, oldest first; None when the wallet does not exist."""
        return await self._wait(self._shard(wallet_id).submit_query(_alert_views(wallet_id), _alerts_lsn))

    async def alert(self, alert_id: str) -> AlertView | None:
        wallet_id = self.directory.alert_wallets.get(alert_id)
        if wallet_id is None:
            return None
        return await self._wait(self._shard(wallet_id).submit_query(_alert_view(alert_id), _alerts_lsn))

    async def withdrawal(self, withdrawal_id: str) -> WithdrawalView | None:
        wallet_id = self.directory.withdrawal_wallets.get(withdrawal_id)
        if wallet_id is None:
            return None
        shard = self._shard(wallet_id)
        return await self._wait(shard.submit_query(_withdrawal_view(withdrawal_id), _withdrawal_lsn))

    async def withdrawals(
        self, *, statuses: frozenset[WithdrawalStatus] | None = None, owner_id: str | None = None
    ) -> list[WithdrawalView]:
        """Every withdrawal with one of ``statuses`` (all when None), oldest first."""
        replies = [
            shard.submit_query(_withdrawal_views(statuses, owner_id), _withdrawals_lsn) for shard in self.shards
        ]
        found: list[WithdrawalView] = []
        for reply in replies:
            found.extend(await self._wait(reply))
        found.sort(key=lambda view: (view.created_at_us, view.id))
        return found

    async def wallet(self, wallet_id: str) -> WalletView | None:
        shard = self._shard(wallet_id)
        return await self._wait(shard.submit_query(_wallet_view(wallet_id, self.clock), _view_lsn))

    async def wallets(self, wallet_ids: list[str]) -> list[WalletView]:
        """Views of existing wallets, in the order given."""
        groups: dict[int, list[str]] = {}
        for wallet_id in wallet_ids:
            groups.setdefault(shard_of(wallet_id, len(self.shards)), []).append(wallet_id)
        replies = [
            self.shards[index].submit_query(_views(ids, self.clock), _views_lsn) for index, ids in groups.items()
        ]
        found: dict[str, WalletView] = {}
        for reply in replies:
            for view in await self._wait(reply):
                found[view.id] = view
        return [found[wallet_id] for wallet_id in wallet_ids]

    # -- directory reads (the directory is only mutated inside actor steps) ----------------

    def token(self, token_hash: bytes) -> Token | None:
        return self.directory.tokens.get(token_hash)

    def assets(self) -> list[Asset]:
        return sorted(self.directory.assets.values(), key=lambda asset: asset.code)

    def asset(self, code: str) -> Asset | None:
        return self.directory.assets.get(code)

    def all_wallets(self) -> list[Wallet]:
        """Every wallet, for the invariant checker and tests. Not for request paths."""
        return [wallet for shard in self.shards for wallet in shard.wallets().values()]

    def all_holds(self) -> list[Hold]:
        """Every pending hold, for the invariant checker and tests. Not for request paths."""
        return [hold for shard in self.shards for hold in shard.state.holds.values()]

    def all_withdrawals(self) -> list[Withdrawal]:
        return [withdrawal for shard in self.shards for withdrawal in shard.state.withdrawals.values()]

    def all_alerts(self) -> list[Alert]:
        return [alert for shard in self.shards for alert in shard.state.alerts.values()]

    def all_refunded(self) -> list[tuple[str, RefundTally]]:
        """Every original's refunded-so-far tally (and on which shard it must live)."""
        found = []
        for shard in self.shards:
            for transaction_id, tally in shard.state.refunded.items():
                assert shard_of(tally.wallet_id, len(self.shards)) == shard.index, (transaction_id, tally)
                found.append((transaction_id, tally))
        return found

    def merged_state(self) -> State:
        """One ``State`` holding every shard's wallets, pending holds and withdrawals over the
        shared directory: the inverse of the partition in ``__init__``, and what a snapshot of
        the live ledger must encode. It shares the live objects, so use it only while the actors
        are stopped (or idle with nothing running in between). Not for request paths."""
        state = State(directory=self.directory)
        for shard in self.shards:
            assert shard.state.directory is self.directory
            assert state.wallets.keys().isdisjoint(shard.state.wallets)
            assert state.holds.keys().isdisjoint(shard.state.holds)
            assert state.withdrawals.keys().isdisjoint(shard.state.withdrawals)
            assert state.alerts.keys().isdisjoint(shard.state.alerts)
            assert state.refunded.keys().isdisjoint(shard.state.refunded)
            state.wallets.update(shard.state.wallets)
            state.refunded.update(shard.state.refunded)
            state.holds.update(shard.state.holds)
            state.reservations.update(shard.state.reservations)
            state.withdrawals.update(shard.state.withdrawals)
            state.crossings.extend(shard.state.crossings)
        state.reserved_in.update(reserved_in(self.directory, state))
        # Alerts in creation order (the order each wallet evaluates its own in).
        for alert in sorted(self.all_alerts(), key=lambda alert: alert.lsn):
            state.alerts[alert.id] = alert
            state.watched.setdefault(alert.wallet_id, []).append(alert)
        return state

    def check_invariants(self) -> None:
        """``check_invariants`` over the live shards (call when they are idle)."""
        _invariants.check_invariants(self.all_wallets(), self.directory, self.all_holds(), self.all_withdrawals(),
                                     self.all_alerts(), self.all_refunded(), self.all_reservations())

    def digest(self) -> str:
        return _invariants.state_digest(
            self.all_wallets(), self.directory, self.all_holds(), self.all_withdrawals(), self.all_alerts(),
            [firing for shard in self.shards for firing in shard.state.crossings], self.all_refunded(),
            self.all_reservations(),
        )


def resolved(directory: Directory, transaction_ids: list[str]) -> dict[str, bool]:
    """``resolve_transfers``'s answer once its aborts are durable: committed (owed) or not, for
    each transfer not held in a prepared batch. A batch's part is posted or released only after
    its coordinator's decision is durable, so an answer read from it (even from a record not yet
    durable here) never changes: a lost post or release is redone from that decision."""
    owed = directory.owed
    prepared = directory.prepared_ids
    return {transaction_id: transaction_id in owed for transaction_id in transaction_ids
            if transaction_id not in prepared}


def open_ledger(data_dir: Path, **options: Any) -> Ledger:
    recovered = recover(data_dir)
    for message in recovered.scan.torn:
        log.warning("recovery: %s", message)
    return Ledger(recovered, data_dir, **options)
