"""What travels between the router and the shard actors: the single-command messages of the
credit-first protocol (``_CreditStep``, ``_DebitStep``, ``_ApplyCredit``), ``_Tick``, ``_Query``
and ``_Command``; the replies (``Reply``, ``BatchReply``) the actors resolve once the log is
durable; ``Overloaded``; and ``shard_of``, which names the shard that owns a wallet.

The protocol these messages carry is described in ``ledger._shard``; the batch messages are in
``ledger._batch``. Plain data: nothing here touches a wallet.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from ledger._decide import CreditCheck, refund_reservation
from ledger._model import (
    AbortTransfers,
    AdvanceWithdrawal,
    BatchFailed,
    ChangeWalletStatus,
    CompleteWithdrawal,
    CreateAlert,
    CreateAsset,
    CreateToken,
    CreateWallet,
    DecideBatch,
    DeleteAlert,
    ExpireHolds,
    HoldCaptured,
    Refund,
    Refunded,
    RequestWithdrawal,
    ReserveCredit,
    ResolveHold,
    RevokeToken,
    SettleReservation,
    SettleTransit,
    Transfer,
    Transferred,
    UpdateWallet,
    treasury_id,
)
from ledger._state import State
from wal import StorageFailed


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
Movement = Transfer | ResolveHold | CompleteWithdrawal | Refund
# Commands decided on one shard alone.
LocalCommand = (
    CreateWallet | ChangeWalletStatus | CreateAsset | CreateToken | RevokeToken | ResolveHold
    | ExpireHolds | RequestWithdrawal | AdvanceWithdrawal | CreateAlert | DeleteAlert | UpdateWallet
    | ReserveCredit | SettleReservation | SettleTransit | AbortTransfers | DecideBatch
)
# ``_DebitStep.credit_shard`` of a transfer whose receiver is in another ledger group: its
# verdict came from that group's prepare, and its credit goes to this group's transit account.
REMOTE = -1


@dataclass(frozen=True, slots=True)
class Aborted:
    """The reply to a commit whose reservation the receiver's group had asked this group to
    abort (ADR 0013): it can never be committed; the caller prepares again."""

    transaction_id: str


@dataclass(frozen=True, slots=True)
class Held:
    """The reply for an item of a batch of several sending groups that this group prepared
    (``Ledger.prepare_batch``): held until the coordinator's decision, posted or released."""

    transaction_id: str


def credit_target(command: Movement, route_amount: int = 0) -> tuple[str, int, bool]:
    """(wallet credited, amount, whether step 1 reserves it) for a movement."""
    if isinstance(command, Transfer):
        return command.to_wallet_id, command.amount, command.hold_timeout_s is None
    if isinstance(command, ResolveHold):
        assert command.capture
        return command.to_wallet_id, command.amount or route_amount, True
    if isinstance(command, Refund):
        # Without an amount, the original's bounds what is left; the debit takes at most it.
        return command.to_wallet_id, refund_reservation(command), True
    return treasury_id(command.asset), command.amount, True
class BatchReply:
    """Where the shards leave a batch's outcomes: ``results[i]`` for item i, or ``failed`` for
    an atomic batch that posted nothing. ``waiting`` counts the reports still to come (one per
    sending shard, or one for an atomic batch), each made once what it wrote or judged against
    is durable; ``wait`` returns after the last."""

    __slots__ = ("_done", "error", "failed", "results", "waiting")

    def __init__(self, size: int, *, waiting: int) -> None:
        assert size >= 1
        assert waiting >= 1
        self._done = anyio.Event()
        self.results: list[Any] = [None] * size
        self.failed: BatchFailed | None = None
        self.waiting = waiting
        self.error: str | None = None

    def _report(self, error: str | None) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.waiting -= 1
        assert self.waiting >= 0
        if self.waiting == 0:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> list[Any] | BatchFailed:
        await self._done.wait()
        if self.error is not None:
            raise StorageFailed(self.error)
        if self.failed is not None:
            return self.failed
        assert all(result is not None for result in self.results)
        return self.results



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
    event: Transferred | HoldCaptured | Refunded | None  # None: step 2 refused, only release
    wallet_id: str
    amount: int  # the amount reserved in step 1 (a refund may credit less: ``credit_target``)
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


@dataclass(slots=True)
class _Commands:
    """Many unkeyed commands for one shard, decided in order in one step: (index in the reply's
    results, command). The steps of many transfers between groups (ADR 0013)."""

    commands: list[tuple[int, LocalCommand]]
    reply: BatchReply


