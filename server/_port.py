"""What the HTTP routes may ask of the ledger: one interface, two implementations.

- ``LocalPort`` runs in the ledger's own process, over the live ``Ledger`` (the one-process
  mode, ``--workers 0``, and the ledger side of the multi-process mode).
- ``RemotePort`` runs in an HTTP worker and carries every call over the local transport
  (``server._wire`` frames on a Unix socket) to ``serve_port`` in the ledger process, which
  calls the ``LocalPort`` there. In a cluster, ``server._natsport.NatsPort`` carries the same
  frames over NATS to the group's owner. Both are ``RemoteCalls``: the methods are written
  once, a transport adds how a call travels; and both ledger sides run a request through
  ``Calls``, the one path from a REQUEST to its REPLY or FAILED.

Both raise the same exceptions (``Overloaded``, ``StorageFailed``, ``HistoryLagging``,
``Gone``, ``Unavailable``, ``Unauthorized``), so a route reads the same in both modes.

Reads of the history read model wait until it shows everything that was durable when the
call arrived in the ledger process, which is after the caller saw any write it made: a read
after a write sees it (read-your-writes holds across workers). In one process the wait and the
query run there. With workers, a worker reads SQLite itself through a read-only connection
(``RemotePort(history_path=...)``), after one call, ``wait_projected``, which the ledger process
answers once the projector process has committed the durable LSN of its arrival
(``ledger._projector``); the projector reports its progress and learns the durable LSN through
``sync_projection``.

Revocation is immediate across workers: a call made for a user token carries the token's hash
(``current_auth``), and the ledger process checks it against the live token table before the
method runs.

``LedgerPort`` is what the routes see of either: a Protocol both classes satisfy (mypy checks it
below), with the ledger's own result types, so no ``Any`` reaches a route.

Coalescing, both ways: a ``RemotePort`` queues calls and its sender writes everything queued
since its last write as one frame (one syscall for a burst of requests); ``serve_port`` does the
same with replies, which are sent only once what they report is durable (the ledger's own
replies wait for the fsync).
"""

from __future__ import annotations

import contextvars
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
from prometheus_client import CollectorRegistry, generate_latest

from ledger import (
    Aborted,
    AdvanceWithdrawal,
    AlertView,
    Asset,
    BatchFailed,
    ChangeWalletStatus,
    Committed,
    CreateAlert,
    CreateAsset,
    CreateToken,
    CreateWallet,
    CreditCheck,
    Decision,
    DeleteAlert,
    Entry,
    Event,
    Gone,
    Held,
    History,
    HistoryLagging,
    Idempotency,
    ItemOutcome,
    Ledger,
    Overloaded,
    PayoutStep,
    Refund,
    Rejection,
    RemoteProjection,
    RequestWithdrawal,
    ReserveCredit,
    RevokeToken,
    Token,
    TransactionQuery,
    TransactionRow,
    TransactionStatus,
    TransactionType,
    Transfer,
    UpdateWallet,
    WalletView,
    WithdrawalStatus,
    WithdrawalView,
    is_treasury,
)
from server import _wire as w
from server._observe import register_ledger_collectors
from wal import StorageFailed

log = logging.getLogger("server.port")

# The SHA-256 of the user token the current request acts for (None: the admin, or no caller).
current_auth: contextvars.ContextVar[bytes | None] = contextvars.ContextVar("current_auth", default=None)

CALLS_IN_FLIGHT_MAX = 16_384  # per worker connection, in the ledger process
RECEIVE_BYTES = 1 << 20
CONNECT_WAIT_S = 2.0  # how long a call waits for the worker's connection to the ledger


class Unavailable(Exception):
    """The ledger process cannot be reached (it is down, restarting or recovering)."""


class Unauthorized(Exception):
    """The token a call was made for is no longer valid."""


@dataclass(frozen=True, slots=True)
class Status:
    """``/ready``'s view of the ledger: None when it serves, else why not."""

    reason: str | None
    durable_lsn: int


w.register(Status)
w.register(TransactionQuery)
w.register(CreditCheck)
w.register(Aborted)
w.register(Held)


class LedgerPort(Protocol):
    """What a route may ask of the ledger, in either mode, and what it gets back.

    A money movement (transfer, capture or void, withdrawal request) answers an ``ItemOutcome``:
    ``Committed`` with its event and LSN, ``Duplicate`` for a replayed key, or ``Rejection``. A
    command decided on one shard answers a ``Decision``: the events it appended (none when
    there was nothing to do), ``Duplicate`` or ``Rejection``; a withdrawal step that voided the
    hold alone answers ``Committed``. Every reply comes once what it reports is durable."""

    async def transfer(self, command: Transfer) -> ItemOutcome: ...
    async def transfer_batch(self, commands: list[Transfer], atomic: bool) -> list[ItemOutcome] | BatchFailed: ...
    async def create_wallet(self, command: CreateWallet) -> Decision: ...
    async def change_status(self, command: ChangeWalletStatus) -> Decision: ...
    async def update_wallet(self, command: UpdateWallet) -> Decision: ...
    async def create_asset(self, command: CreateAsset) -> Decision: ...
    async def create_token(self, command: CreateToken) -> Decision: ...
    async def revoke_token(self, command: RevokeToken) -> Decision: ...
    async def resolve_hold(self, transaction_id: str, capture: bool, amount: int | None,
                           owner_id: str | None, idempotency: Idempotency | None) -> ItemOutcome: ...
    async def request_withdrawal(self, command: RequestWithdrawal) -> ItemOutcome: ...
    async def refund(self, command: Refund) -> ItemOutcome: ...
    async def advance_withdrawal(self, command: AdvanceWithdrawal) -> Decision | Committed: ...
    async def create_alert(self, command: CreateAlert) -> Decision: ...
    async def delete_alert(self, command: DeleteAlert) -> Decision: ...
    async def alerts(self, wallet_id: str) -> list[AlertView] | None: ...
    async def alert(self, alert_id: str) -> AlertView | None: ...
    async def wallet(self, wallet_id: str) -> WalletView | None: ...
    async def wallets(self, wallet_ids: list[str]) -> list[WalletView]: ...
    async def withdrawal(self, withdrawal_id: str) -> WithdrawalView | None: ...
    async def withdrawals(self, statuses: frozenset[WithdrawalStatus] | None,
                          owner_id: str | None) -> list[WithdrawalView]: ...
    async def token(self, token_hash: bytes) -> Token | None: ...
    async def asset(self, code: str) -> Asset | None: ...
    async def assets(self) -> list[Asset]: ...
    async def transaction(self, transaction_id: str) -> TransactionRow | None: ...
    async def entries(self, wallet_id: str, before: int | None, limit: int, type_: TransactionType | None,
                      status: TransactionStatus | None, since_us: int | None,
                      until_us: int | None) -> list[Entry]: ...
    async def balance_at(self, wallet_id: str, at_us: int) -> int: ...
    async def search_transactions(self, query: TransactionQuery) -> tuple[list[TransactionRow], int | None]: ...
    async def wallet_ids(self, owner_id: str | None, asset: str | None, after_lsn: int,
                         limit: int) -> list[tuple[int, str]]: ...
    async def events(self, after: int, limit: int, wait_s: float) -> list[tuple[int, Event]]: ...
    async def status(self) -> Status: ...
    async def take_snapshot(self) -> tuple[int | None, int]: ...


class ReadOnlyHistory:
    """A read-only connection to a read model another task or process writes, opened at the
    first read (the file may not exist before) and shared by every read after it."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._history: History | None = None
        self._lock = anyio.Lock()

    async def get(self) -> History:
        if self._history is None:
            async with self._lock:
                if self._history is None:
                    history = await anyio.to_thread.run_sync(History.open_readonly, self._path)
                    await history.attach()
                    self._history = history
        return self._history

    async def aclose(self) -> None:
        history, self._history = self._history, None
        if history is not None:
            await history.aclose()


class LocalPort:
    """The port over a ``Ledger`` in this process. ``snapshotter`` and ``payouts`` are the
    server's components around it (absent in tools and tests that run the ledger alone)."""

    def __init__(self, ledger: Ledger, *, snapshotter: Any = None, payouts: Any = None,
                 history_path: Path | None = None) -> None:
        self.ledger = ledger
        self.snapshotter = snapshotter
        self.payouts = payouts
        self._registry: CollectorRegistry | None = None
        # A cluster owner (``server._serve``): a projector task of this process writes the read
        # model, and history reads through this port query it read-only, as a worker would.
        self._read_only = ReadOnlyHistory(history_path) if history_path is not None else None

    # -- commands ----------------------------------------------------------------------------

    async def transfer(self, command: Transfer) -> ItemOutcome:
        return await self.ledger.transfer(command)

    async def transfer_batch(self, commands: list[Transfer], atomic: bool) -> list[ItemOutcome] | BatchFailed:
        return await self.ledger.transfer_batch(commands, atomic=atomic)

    async def transfer_row(self, row: list[Any]) -> list[Any]:
        """``transfer`` with its command and outcome as packed rows (``server._wire``)."""
        (command,) = w.unpack_transfers([row])
        (packed,) = w.pack_outcomes([await self.ledger.transfer(command)])
        return packed

    async def transfer_batch_rows(self, rows: list[Any], atomic: bool) -> Any:
        """``transfer_batch`` with its commands and outcomes as packed rows (``server._wire``):
        what a worker calls."""
        outcome = await self.ledger.transfer_batch(w.unpack_transfers(rows), atomic=atomic)
        if isinstance(outcome, list):
            return w.pack_outcomes(outcome)
        return outcome  # BatchFailed: one small value

    async def create_wallet(self, command: CreateWallet) -> Decision:
        return await self.ledger.create_wallet(command)

    async def change_status(self, command: ChangeWalletStatus) -> Decision:
        return await self.ledger.change_status(command)

    async def update_wallet(self, command: UpdateWallet) -> Decision:
        return await self.ledger.update_wallet(command)

    async def create_asset(self, command: CreateAsset) -> Decision:
        return await self.ledger.create_asset(command)

    async def create_token(self, command: CreateToken) -> Decision:
        return await self.ledger.create_token(command)

    async def revoke_token(self, command: RevokeToken) -> Decision:
        return await self.ledger.revoke_token(command)

    async def resolve_hold(self, transaction_id: str, capture: bool, amount: int | None,
                           owner_id: str | None, idempotency: Idempotency | None) -> ItemOutcome:
        return await self.ledger.resolve_hold(
            transaction_id, capture=capture, amount=amount, owner_id=owner_id, idempotency=idempotency
        )

    async def refund(self, command: Refund) -> ItemOutcome:
        return await self.ledger.refund(command)

    async def request_withdrawal(self, command: RequestWithdrawal) -> ItemOutcome:
        """A new withdrawal goes to the payout workers at once (a replayed key does not: its
        withdrawal was submitted when it was new)."""
        decision = await self.ledger.request_withdrawal(command)
        if isinstance(decision, Committed) and self.payouts is not None:
            self.payouts.submit(decision.event.transaction_id)
        return decision

    async def advance_withdrawal(self, command: AdvanceWithdrawal) -> Decision | Committed:
        """An admin's step on a withdrawal; a re-queued one goes to the payout workers."""
        decision = await self.ledger.advance_withdrawal(command)
        if (command.step == PayoutStep.RETRY and not isinstance(decision, Rejection)
                and self.payouts is not None):
            self.payouts.submit(command.withdrawal_id)
        return decision

    async def create_alert(self, command: CreateAlert) -> Decision:
        return await self.ledger.create_alert(command)

    async def delete_alert(self, command: DeleteAlert) -> Decision:
        return await self.ledger.delete_alert(command)

    # -- state reads -------------------------------------------------------------------------

    async def alerts(self, wallet_id: str) -> list[AlertView] | None:
        return await self.ledger.alerts(wallet_id)

    async def alert(self, alert_id: str) -> AlertView | None:
        return await self.ledger.alert(alert_id)

    async def wallet(self, wallet_id: str) -> WalletView | None:
        view = await self.ledger.wallet(wallet_id)
        directory = self.ledger.directory
        if view is not None and directory.groups > 1 and is_treasury(wallet_id):
            # One group's part of a treasury: its treasury wallet and its transit account (a
            # group's wallets, treasury and transit sum to zero; ``server._groups`` sums parts).
            view = dataclasses.replace(view, balance=view.balance + directory.transit.get(view.asset, 0))
        return view

    async def wallets(self, wallet_ids: list[str]) -> list[WalletView]:
        return await self.ledger.wallets(wallet_ids)

    async def withdrawal(self, withdrawal_id: str) -> WithdrawalView | None:
        return await self.ledger.withdrawal(withdrawal_id)

    async def withdrawals(self, statuses: frozenset[WithdrawalStatus] | None,
                          owner_id: str | None) -> list[WithdrawalView]:
        return await self.ledger.withdrawals(statuses=statuses, owner_id=owner_id)

    async def token(self, token_hash: bytes) -> Token | None:
        return self.ledger.token(token_hash)

    async def asset(self, code: str) -> Asset | None:
        return self.ledger.asset(code)

    async def assets(self) -> list[Asset]:
        return self.ledger.assets()

    # -- transfers between ledger groups (ADR 0013; ``server._groups`` drives them) ----------

    async def reserve_credit(self, command: ReserveCredit) -> CreditCheck:
        return await self.ledger.reserve_credit(command)

    async def transfer_across(self, command: Transfer, credit: CreditCheck) -> ItemOutcome | Aborted:
        return await self.ledger.transfer_across(command, credit)

    async def settle_reservation(self, transaction_id: str, wallet_id: str, credit: bool) -> bool:
        return await self.ledger.settle_reservation(transaction_id, wallet_id, credit=credit)

    async def settle_transit(self, transaction_ids: list[str]) -> None:
        await self.ledger.settle_transit(transaction_ids)

    async def refund_across(self, command: Refund, credit: CreditCheck) -> ItemOutcome | Aborted:
        return await self.ledger.refund_across(command, credit)

    async def capture_across(self, transaction_id: str, reservation: str, amount: int | None, owner_id: str | None,
                             idempotency: Idempotency | None, credit: CreditCheck) -> ItemOutcome | Aborted:
        return await self.ledger.capture_across(transaction_id, reservation=reservation, amount=amount,
                                                owner_id=owner_id, idempotency=idempotency, credit=credit)

    async def hold_route(self, transaction_id: str) -> tuple[str, str, int] | None:
        return self.ledger.hold_route(transaction_id)

    async def credit_check(self, wallet_id: str, amount: int) -> CreditCheck:
        return await self.ledger.credit_check(wallet_id, amount)

    async def refund_remaining(self, refund_of: str, wallet_id: str, original_amount: int) -> int:
        return await self.ledger.refund_remaining(refund_of, wallet_id, original_amount)

    async def resolve_transfers(self, transaction_ids: list[str]) -> dict[str, bool]:
        return await self.ledger.resolve_transfers(transaction_ids)

    # The same, for many transfers in one call (a batch's items between groups): each goes
    # through the shards as it would alone, all at once; answers in the order asked.

    async def reserve_credits(self, commands: list[ReserveCredit]) -> list[CreditCheck]:
        return await self.ledger.reserve_credits(commands)

    async def transfers_across(self, commands: list[Transfer], credits: list[CreditCheck | None]) -> list[Any]:
        """A non-atomic batch of this group's senders; an item with a verdict in ``credits``
        goes to another group (``Ledger.transfers_across``)."""
        return await self.ledger.transfers_across(commands, credits)

    async def transfer_batch_across(self, commands: list[Transfer],
                                    credits: list[CreditCheck | None]) -> list[Any] | BatchFailed:
        """An atomic batch whose senders are all in this group and whose items with a verdict
        in ``credits`` go to other groups (``Ledger.transfer_batch``)."""
        return await self.ledger.transfer_batch(commands, atomic=True, credits=credits)

    async def settle_reservations(self, items: list[tuple[str, str, bool]]) -> list[bool]:
        return await self.ledger.settle_reservations([(str(transaction_id), str(wallet_id), bool(credit))
                                                      for transaction_id, wallet_id, credit in items])

    # An atomic batch whose senders are in several groups: each sending group's part.

    async def prepare_batch(self, batch: str, coordinator: int, commands: list[Transfer],
                            credits: list[CreditCheck | None]) -> list[Any] | BatchFailed:
        return await self.ledger.prepare_batch(batch, coordinator, commands, credits)

    async def decide_batch(self, batch: str, committed: bool) -> bool:
        return await self.ledger.decide_batch(batch, committed)

    async def settle_batch(self, batch: str, committed: bool) -> list[Any] | None:
        return await self.ledger.settle_batch(batch, committed)

    # -- the history read model (each waits until it shows what was durable on arrival) ------

    async def wait_projected(self) -> int:
        """Waits until the read model shows everything durable now; returns that LSN. What a
        worker of ``--workers N`` calls before it reads SQLite itself. Raises HistoryLagging."""
        lsn = self.ledger.wal.durable_lsn
        await self.ledger.history.wait_projected(lsn)
        return lsn

    async def sync_projection(self, applied_lsn: int, wait_s: float, linger_s: float = 0) -> int:
        """The projector process reports the LSN it committed; returns the durable LSN (see
        ``ledger.RemoteProjection.sync``)."""
        projection = self.ledger.history
        if not isinstance(projection, RemoteProjection):
            raise RuntimeError("this ledger projects its own history: there is no projector process to sync")
        return await projection.sync(applied_lsn, wait_s, linger_s)

    async def _projected(self) -> History:
        history = self.ledger.history
        if isinstance(history, History):
            await history.wait_projected(self.ledger.wal.durable_lsn)
            return history
        if self._read_only is None:
            raise RuntimeError("the history read model is read by the workers, not through the ledger process")
        await history.wait_projected(self.ledger.wal.durable_lsn)
        return await self._read_only.get()

    async def aclose(self) -> None:
        """Closes the read-only read model, if it was opened."""
        if self._read_only is not None:
            await self._read_only.aclose()

    async def transaction(self, transaction_id: str) -> TransactionRow | None:
        return await (await self._projected()).transaction(transaction_id)

    async def entries(self, wallet_id: str, before: int | None, limit: int, type_: TransactionType | None,
                      status: TransactionStatus | None, since_us: int | None,
                      until_us: int | None) -> list[Entry]:
        history = await self._projected()
        return await history.entries(
            wallet_id, before=before, limit=limit, type_=type_, status=status, since_us=since_us,
            until_us=until_us,
        )

    async def balance_at(self, wallet_id: str, at_us: int) -> int:
        return await (await self._projected()).balance_at(wallet_id, at_us)

    async def search_transactions(self, query: TransactionQuery) -> tuple[list[TransactionRow], int | None]:
        """A page of ``GET /v1/transactions`` and the position the next one starts below."""
        return await (await self._projected()).search(query)

    async def wallet_ids(self, owner_id: str | None, asset: str | None, after_lsn: int,
                         limit: int) -> list[tuple[int, str]]:
        history = await self._projected()
        return await history.wallet_ids(owner_id=owner_id, asset=asset, after_lsn=after_lsn, limit=limit)

    # -- events, operations ------------------------------------------------------------------

    async def events(self, after: int, limit: int, wait_s: float) -> list[tuple[int, Event]]:
        return await self.ledger.events.read(after, limit=limit, wait_s=wait_s)

    async def status(self) -> Status:
        return Status(self.ledger.ready(), self.ledger.wal.durable_lsn)

    async def take_snapshot(self) -> tuple[int | None, int]:
        """(the LSN of a new snapshot or None when none was due, the newest snapshot's LSN)."""
        lsn = await self.snapshotter.take()
        return lsn, self.snapshotter.last_lsn

    def metrics(self) -> str:
        """The ledger's own series (mailboxes, WAL, history, snapshots, payouts) as Prometheus
        text, read from ``statistics()`` now: what an HTTP worker's ``/metrics`` adds to the
        series the processes share through files (``server._scrape``)."""
        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            register_ledger_collectors(self._registry, lambda: self)
        return generate_latest(self._registry).decode()


# The methods a worker may call, by name: the LocalPort's public coroutines and functions.
METHODS = (
    "transfer", "transfer_batch", "transfer_batch_rows", "transfer_row",
    "create_wallet", "change_status", "update_wallet", "create_asset", "create_token",
    "revoke_token", "resolve_hold", "request_withdrawal", "advance_withdrawal", "refund",
    "create_alert", "delete_alert", "alerts", "alert",
    "wallet", "wallets", "withdrawal", "withdrawals", "token", "asset", "assets", "transaction",
    "entries", "balance_at", "search_transactions", "wallet_ids", "events", "status", "take_snapshot",
    "metrics", "wait_projected", "sync_projection",
    "reserve_credit", "transfer_across", "settle_reservation", "settle_transit", "resolve_transfers",
    "reserve_credits", "transfers_across", "settle_reservations", "transfer_batch_across",
    "prepare_batch", "decide_batch", "settle_batch",
    "refund_across", "refund_remaining", "capture_across", "hold_route", "credit_check",
)
assert all(callable(getattr(LocalPort, name, None)) for name in METHODS)

# Exceptions that cross as FAILED, and back.
_FAILURE_OF: list[tuple[type[BaseException], str]] = [
    (Overloaded, "overloaded"),
    (StorageFailed, "storage_failed"),
    (HistoryLagging, "history_lagging"),
    (Unauthorized, "unauthorized"),
    (Unavailable, "not_ready"),
]


def _failure(error: BaseException) -> tuple[str, str]:
    if isinstance(error, Gone):
        return "gone", str(error.oldest_lsn)
    for kind, code in _FAILURE_OF:
        if isinstance(error, kind):
            return code, str(error)
    raise error


def _exception(code: str, detail: str) -> BaseException:
    if code == "gone":
        return Gone(int(detail))
    for kind, known in _FAILURE_OF:
        if known == code:
            return kind(detail)
    return RuntimeError(f"the ledger process failed a call: {code}: {detail}")


class _Outbox:
    """Messages waiting to be sent on one channel, sent as one frame per wake-up: every message
    queued while the sender was busy, or in the same moment, shares a frame (one syscall, or
    one NATS message, for a burst, not one per message)."""

    def __init__(self) -> None:
        self._messages: list[list[Any]] = []
        self._ready = anyio.Event()

    def put(self, message: list[Any]) -> None:
        self._messages.append(message)
        self._ready.set()

    def clear(self) -> None:
        self._messages.clear()

    async def take(self) -> list[list[Any]]:
        """Waits for messages, lets everything ready in this same moment join, returns them all."""
        while True:
            await self._ready.wait()
            self._ready = anyio.Event()
            await anyio.lowlevel.checkpoint()
            messages, self._messages = self._messages, []
            if messages:
                return messages

    async def send_forever(self, stream: anyio.abc.ByteStream) -> None:
        while True:
            await stream.send(w.frame(await self.take()))


# -- the ledger side -----------------------------------------------------------------------------


# Cluster mode: waits until the owner's ownership has been confirmed by a fenced append sent
# after the given ``time.monotonic()`` (``server._member.Replica.confirm``).
Confirm = Callable[[float], Awaitable[None]]


async def serve_port(port_of: Callable[[], LocalPort | None], listener: anyio.abc.Listener[Any],
                     *, confirm: Confirm | None = None) -> None:
    """Serves every worker connection of ``listener`` until cancelled. ``port_of`` gives the
    port once the ledger has recovered (None before: calls fail ``not_ready``). With
    ``confirm`` (a cluster owner), no reply leaves before an append made after its call arrived
    was accepted by the log's fence: an owner that a newer one replaced without its knowing (a
    long pause) cannot answer from superseded state."""

    async def handle(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            await _Connection(port_of, stream, confirm).run()

    async with listener:
        await listener.serve(handle)


class Calls:
    """The one code path of a request in the ledger process, whatever carried it (a worker's
    Unix socket connection, ``_Connection``; a NATS message, ``server._natsport``): decode it,
    check the method and this caller's in-flight limit, check the token it acts for, call the
    ``LocalPort`` method, wait for ``confirm`` (cluster mode), and hand the REPLY or FAILED to
    ``send``. One instance per caller: the in-flight limit is a caller's."""

    def __init__(self, port_of: Callable[[], LocalPort | None], send: Callable[[list[Any]], None],
                 confirm: Confirm | None = None) -> None:
        self._port_of = port_of
        self._send = send
        self._confirm = confirm
        self.in_flight = 0

    def dispatch(self, group: anyio.abc.TaskGroup, message: list[Any]) -> None:
        """Starts the call ``message`` asks for in ``group``, or refuses it at once."""
        if message[0] != w.REQUEST:
            raise w.ProtocolError("only requests travel to the ledger")
        _, correlation, method, args, auth = message
        if method not in METHODS:
            self._send(w.failed(correlation, "bad_request", f"no method {method!r}"))
            return
        if self.in_flight >= CALLS_IN_FLIGHT_MAX:
            self._send(w.failed(correlation, "overloaded", f"{self.in_flight} calls in flight from this worker"))
            return
        self.in_flight += 1
        group.start_soon(self._call, correlation, method, args, auth)

    def refuse(self, message: list[Any], detail: str) -> None:
        """Answers the call ``message`` asks for with ``not_ready`` (``Unavailable``) at once."""
        if message[0] != w.REQUEST:
            raise w.ProtocolError("only requests travel to the ledger")
        self._send(w.failed(message[1], "not_ready", detail))

    async def _call(self, correlation: int, method: str, args: list[Any], auth: bytes | None) -> None:
        arrived = time.monotonic()
        try:
            port = self._port_of()
            if port is None:
                raise Unavailable("the ledger is recovering")
            if auth is not None and port.ledger.token(auth) is None:
                raise Unauthorized("unknown or revoked token")
            result = getattr(port, method)(*args)
            if isinstance(result, Awaitable):
                result = await result
            if self._confirm is not None:
                await self._confirm(arrived)
            self._send(w.reply(correlation, result))
        except anyio.get_cancelled_exc_class():
            raise
        except TypeError as error:
            log.exception("a worker called %s with arguments it does not take", method)
            self._send(w.failed(correlation, "bad_request", str(error)))
        except Exception as error:
            try:
                code, detail = _failure(error)
            except Exception:
                log.exception("the call %s failed", method)
                code, detail = "internal", f"{type(error).__name__} in the ledger process (logged there)"
            if self._confirm is not None and not isinstance(error, Unavailable):
                await self._confirm(arrived)  # a refusal is a read of the state too
            self._send(w.failed(correlation, code, detail))
        finally:
            self.in_flight -= 1


class _Connection:
    """One worker's Unix socket connection: frames in, ``Calls``, coalesced frames out."""

    def __init__(self, port_of: Callable[[], LocalPort | None], stream: anyio.abc.ByteStream,
                 confirm: Confirm | None = None) -> None:
        self._stream = stream
        self._outbox = _Outbox()
        self._calls = Calls(port_of, self._outbox.put, confirm)

    async def run(self) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(self._send_loop)
            decoder = w.Decoder()
            try:
                while True:
                    data = await self._stream.receive(RECEIVE_BYTES)
                    decoder.feed(data)
                    for message in decoder.messages():
                        self._calls.dispatch(group, message)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            except w.ProtocolError as error:
                log.error("a worker sent bytes that are not the protocol (%s): closing its connection", error)
            # The worker is gone: its calls still run to their decisions (the ledger shields
            # them), but nobody waits for the answers.
            group.cancel_scope.cancel()

    async def _send_loop(self) -> None:
        try:
            await self._outbox.send_forever(self._stream)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass


# -- the worker side -----------------------------------------------------------------------------


class RemoteCalls:
    """The port in a process other than the ledger's: every method is a call to the ledger
    process, carried by a transport subclass (``RemotePort``: a Unix socket on this host;
    ``server._natsport.NatsPort``: NATS request/reply to a cluster group's owner on any host),
    which provides ``run``, ``_call`` and ``reachable``. A call the transport cannot settle (the
    ledger process is down, restarting, replaced, or went silent while the call was in flight)
    raises ``Unavailable``: a money movement's outcome is then unknown to this worker, and the
    client retries with its idempotency key, which is what keys are for."""

    def __init__(self, *, history_path: Path | None = None) -> None:
        # With a path, history reads query SQLite here, read-only, after ``wait_projected``.
        self._history_path = history_path
        self._read_only = ReadOnlyHistory(history_path) if history_path is not None else None
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Call] = {}
        self._outbox = _Outbox()
        self.connected = anyio.Event()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        raise NotImplementedError

    async def _call(self, method: str, *args: Any) -> Any:
        raise NotImplementedError

    def reachable(self) -> bool:
        """Whether a call could be sent now (``/ready`` says why not without trying)."""
        raise NotImplementedError

    async def _send(self, call: _Call, method: str, args: tuple[Any, ...]) -> Any:
        """Queues the request ``method(*args)`` for the transport's next message and waits for
        ``call`` to be settled (by its answer, or by the transport's rules)."""
        correlation = next(self._ids)
        self._waiting[correlation] = call
        self._outbox.put(w.request(correlation, method, list(args), current_auth.get()))
        try:
            return await call.wait()
        finally:
            self._waiting.pop(correlation, None)

    def _settle(self, messages: list[list[Any]]) -> None:
        """Resolves the waiting calls the REPLY and FAILED ``messages`` answer (others are
        calls given up on already: dropped)."""
        for message in messages:
            kind = message[0]
            if kind == w.REPLY:
                call = self._waiting.pop(message[1], None)
                if call is not None:
                    call.succeed(message[2])
            elif kind == w.FAILED:
                call = self._waiting.pop(message[1], None)
                if call is not None:
                    call.fail(_exception(message[2], message[3]))

    def _fail_all(self, reason: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for call in waiting.values():
            call.fail(Unavailable(reason))

    # The methods of LocalPort, one call each.

    async def transfer(self, command: Transfer) -> ItemOutcome:
        (row,) = w.pack_transfers([command])
        (outcome,) = w.unpack_outcomes([await self._call("transfer_row", row)])
        return outcome

    async def transfer_batch(self, commands: list[Transfer], atomic: bool) -> list[ItemOutcome] | BatchFailed:
        outcome = await self._call("transfer_batch_rows", w.pack_transfers(commands), atomic)
        if isinstance(outcome, list):
            return w.unpack_outcomes(outcome)
        assert isinstance(outcome, BatchFailed)
        return outcome

    async def create_wallet(self, command: CreateWallet) -> Decision:
        return await self._call("create_wallet", command)

    async def change_status(self, command: ChangeWalletStatus) -> Decision:
        return await self._call("change_status", command)

    async def update_wallet(self, command: UpdateWallet) -> Decision:
        return await self._call("update_wallet", command)

    async def create_asset(self, command: CreateAsset) -> Decision:
        return await self._call("create_asset", command)

    async def create_token(self, command: CreateToken) -> Decision:
        return await self._call("create_token", command)

    async def revoke_token(self, command: RevokeToken) -> Decision:
        return await self._call("revoke_token", command)

    async def resolve_hold(self, transaction_id: str, capture: bool, amount: int | None,
                           owner_id: str | None, idempotency: Idempotency | None) -> ItemOutcome:
        return await self._call("resolve_hold", transaction_id, capture, amount, owner_id, idempotency)

    async def request_withdrawal(self, command: RequestWithdrawal) -> ItemOutcome:
        return await self._call("request_withdrawal", command)

    async def refund(self, command: Refund) -> ItemOutcome:
        return await self._call("refund", command)

    async def advance_withdrawal(self, command: AdvanceWithdrawal) -> Decision | Committed:
        return await self._call("advance_withdrawal", command)

    async def create_alert(self, command: CreateAlert) -> Decision:
        return await self._call("create_alert", command)

    async def delete_alert(self, command: DeleteAlert) -> Decision:
        return await self._call("delete_alert", command)

    async def alerts(self, wallet_id: str) -> list[AlertView] | None:
        return await self._call("alerts", wallet_id)

    async def alert(self, alert_id: str) -> AlertView | None:
        return await self._call("alert", alert_id)

    async def wallet(self, wallet_id: str) -> WalletView | None:
        return await self._call("wallet", wallet_id)

    async def reserve_credit(self, command: ReserveCredit) -> CreditCheck:
        return await self._call("reserve_credit", command)

    async def transfer_across(self, command: Transfer, credit: CreditCheck) -> ItemOutcome | Aborted:
        return await self._call("transfer_across", command, credit)

    async def settle_reservation(self, transaction_id: str, wallet_id: str, credit: bool) -> bool:
        return await self._call("settle_reservation", transaction_id, wallet_id, credit)

    async def settle_transit(self, transaction_ids: list[str]) -> None:
        await self._call("settle_transit", transaction_ids)

    async def refund_across(self, command: Refund, credit: CreditCheck) -> ItemOutcome | Aborted:
        return await self._call("refund_across", command, credit)

    async def capture_across(self, transaction_id: str, reservation: str, amount: int | None, owner_id: str | None,
                             idempotency: Idempotency | None, credit: CreditCheck) -> ItemOutcome | Aborted:
        return await self._call("capture_across", transaction_id, reservation, amount, owner_id, idempotency, credit)

    async def hold_route(self, transaction_id: str) -> tuple[str, str, int] | None:
        route = await self._call("hold_route", transaction_id)
        return None if route is None else (str(route[0]), str(route[1]), int(route[2]))

    async def credit_check(self, wallet_id: str, amount: int) -> CreditCheck:
        return await self._call("credit_check", wallet_id, amount)

    async def refund_remaining(self, refund_of: str, wallet_id: str, original_amount: int) -> int:
        return int(await self._call("refund_remaining", refund_of, wallet_id, original_amount))

    async def resolve_transfers(self, transaction_ids: list[str]) -> dict[str, bool]:
        return await self._call("resolve_transfers", transaction_ids)

    async def reserve_credits(self, commands: list[ReserveCredit]) -> list[CreditCheck]:
        return list(await self._call("reserve_credits", commands))

    async def transfers_across(self, commands: list[Transfer], credits: list[CreditCheck | None]) -> list[Any]:
        return list(await self._call("transfers_across", commands, credits))

    async def settle_reservations(self, items: list[tuple[str, str, bool]]) -> list[bool]:
        return list(await self._call("settle_reservations", items))

    async def transfer_batch_across(self, commands: list[Transfer],
                                    credits: list[CreditCheck | None]) -> list[Any] | BatchFailed:
        return await self._call("transfer_batch_across", commands, credits)

    async def prepare_batch(self, batch: str, coordinator: int, commands: list[Transfer],
                            credits: list[CreditCheck | None]) -> list[Any] | BatchFailed:
        return await self._call("prepare_batch", batch, coordinator, commands, credits)

    async def decide_batch(self, batch: str, committed: bool) -> bool:
        return bool(await self._call("decide_batch", batch, committed))

    async def settle_batch(self, batch: str, committed: bool) -> list[Any] | None:
        return await self._call("settle_batch", batch, committed)

    async def wallets(self, wallet_ids: list[str]) -> list[WalletView]:
        return await self._call("wallets", wallet_ids)

    async def withdrawal(self, withdrawal_id: str) -> WithdrawalView | None:
        return await self._call("withdrawal", withdrawal_id)

    async def withdrawals(self, statuses: frozenset[WithdrawalStatus] | None,
                          owner_id: str | None) -> list[WithdrawalView]:
        return await self._call("withdrawals", statuses, owner_id)

    async def token(self, token_hash: bytes) -> Token | None:
        return await self._call("token", token_hash)

    async def asset(self, code: str) -> Asset | None:
        return await self._call("asset", code)

    async def assets(self) -> list[Asset]:
        return await self._call("assets")

    async def wait_projected(self) -> int:
        lsn: int = await self._call("wait_projected")
        return lsn

    async def sync_projection(self, applied_lsn: int, wait_s: float, linger_s: float = 0) -> int:
        lsn: int = await self._call("sync_projection", applied_lsn, wait_s, linger_s)
        return lsn

    async def _read_model(self) -> History:
        """The local read-only read model, once it shows what was durable on arrival."""
        assert self._read_only is not None
        await self.wait_projected()
        return await self._read_only.get()

    async def aclose(self) -> None:
        """Closes the read-only read model, if it was opened."""
        if self._read_only is not None:
            await self._read_only.aclose()

    async def transaction(self, transaction_id: str) -> TransactionRow | None:
        if self._history_path is not None:
            return await (await self._read_model()).transaction(transaction_id)
        return await self._call("transaction", transaction_id)

    async def entries(self, wallet_id: str, before: int | None, limit: int, type_: TransactionType | None,
                      status: TransactionStatus | None, since_us: int | None,
                      until_us: int | None) -> list[Entry]:
        if self._history_path is not None:
            history = await self._read_model()
            return await history.entries(wallet_id, before=before, limit=limit, type_=type_, status=status,
                                         since_us=since_us, until_us=until_us)
        return await self._call("entries", wallet_id, before, limit, type_, status, since_us, until_us)

    async def balance_at(self, wallet_id: str, at_us: int) -> int:
        if self._history_path is not None:
            return await (await self._read_model()).balance_at(wallet_id, at_us)
        return await self._call("balance_at", wallet_id, at_us)

    async def search_transactions(self, query: TransactionQuery) -> tuple[list[TransactionRow], int | None]:
        if self._history_path is not None:
            return await (await self._read_model()).search(query)
        rows, before = await self._call("search_transactions", query)
        return list(rows), before

    async def wallet_ids(self, owner_id: str | None, asset: str | None, after_lsn: int,
                         limit: int) -> list[tuple[int, str]]:
        if self._history_path is not None:
            history = await self._read_model()
            return await history.wallet_ids(owner_id=owner_id, asset=asset, after_lsn=after_lsn, limit=limit)
        return [(lsn, wallet_id) for lsn, wallet_id in await self._call("wallet_ids", owner_id, asset, after_lsn, limit)]

    async def events(self, after: int, limit: int, wait_s: float) -> list[tuple[int, Event]]:
        return [(lsn, event) for lsn, event in await self._call("events", after, limit, wait_s)]

    async def status(self) -> Status:
        if not self.reachable():
            return Status("the ledger process is not reachable", 0)
        status: Status = await self._call("status")
        return status

    async def take_snapshot(self) -> tuple[int | None, int]:
        lsn, last = await self._call("take_snapshot")
        return lsn, last

    async def metrics(self) -> str:
        text: str = await self._call("metrics")
        return text


class RemotePort(RemoteCalls):
    """The port in an HTTP worker of ``--workers N`` (and in the projector and webhooks
    processes): calls to the ledger process over the Unix socket at ``path``. ``run`` keeps the
    connection (reconnecting while the ledger process restarts); a call made while it is down,
    or in flight when it dropped, raises ``Unavailable``."""

    def __init__(self, path: str, *, reconnect_s: float = 0.1, history_path: Path | None = None) -> None:
        super().__init__(history_path=history_path)
        self._path = path
        self._reconnect_s = reconnect_s
        self._stream: anyio.abc.ByteStream | None = None
        self.connections = 0

    def reachable(self) -> bool:
        return self._stream is not None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            try:
                stream = await anyio.connect_unix(self._path)
            except OSError:
                if not started:
                    task_status.started()
                    started = True
                await anyio.sleep(self._reconnect_s)
                continue
            self._stream = stream
            self.connections += 1
            self.connected.set()
            if not started:
                task_status.started()
                started = True
            try:
                async with stream, anyio.create_task_group() as group:
                    group.start_soon(self._outbox.send_forever, stream)
                    await self._receive_loop(stream)
                    group.cancel_scope.cancel()
            finally:
                self._stream = None
                self.connected = anyio.Event()
                self._outbox.clear()
                self._fail_all("the connection to the ledger process dropped")
            log.warning("the ledger process closed the connection; reconnecting")

    async def _receive_loop(self, stream: anyio.abc.ByteStream) -> None:
        decoder = w.Decoder()
        try:
            while True:
                decoder.feed(await stream.receive(RECEIVE_BYTES))
                self._settle(decoder.messages())
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        except w.ProtocolError as error:
            log.error("the ledger process sent bytes that are not the protocol (%s)", error)

    async def _call(self, method: str, *args: Any) -> Any:
        if self._stream is None:
            # A worker that just started (or whose ledger is restarting) connects within a few
            # tenths of a second: a request that arrives meanwhile waits for that, not a 503.
            with anyio.move_on_after(CONNECT_WAIT_S):
                await self.connected.wait()
        if self._stream is None:
            raise Unavailable("the ledger process is not reachable")
        return await self._send(_Call(), method, args)


if TYPE_CHECKING:  # both halves are the port the routes use (checked by mypy, never run)
    _LOCAL: type[LedgerPort] = LocalPort
    _REMOTE: type[LedgerPort] = RemotePort


class _Call:
    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def succeed(self, value: Any) -> None:
        self._value = value
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> Any:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
