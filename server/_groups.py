"""Several ledger groups (ADR 0013): the group table, and the port an HTTP worker uses to reach
them all (``GroupRouter``), which drives the two-phase commit of a transfer between groups.

**The group table** is static: ``group_of(wallet_id, groups)`` is a keyed hash of the id, not
of its shard (``ledger.shard_of``), so that the wallets of one group still spread over all of
its shards. It is part of the cluster's configuration and never changes on a live cluster (each
group's log says which group it is: ``ledger.GroupConfigured``). A treasury id (``treasury:X``)
names a wallet that every group has (its part of the treasury).

**Where each call goes** (ADR 0013, *Several groups, revised*, point 4): a call about a wallet to
that wallet's group; a transfer whose two wallets are in two groups through the protocol below;
assets and tokens to every group (each group's wallets need their asset, and each owner checks
the tokens of the calls it serves), answered by group 0; a treasury's balance summed over the
groups (each group's treasury part and transit account); what is named by an id the worker did
not make (alerts, holds, withdrawals, transactions) asked of every group.

**A transfer between groups** (sender's wallet in group A, receiver's in group B):
1. B ``reserve_credit``: the receiver's checks and a durable reservation, or the reason not;
2. A ``transfer_across`` with that verdict: the commit point, and where the key is recorded (a
   refusal of B's is recorded there too, in the check order of ADR 0001);
3. B ``settle_reservation``: committed, the credit; refused or a replayed key, the release.
Then A stops owing it (``settle_transit``, batched off the client's path). The answer waits for
step 3 so that a read of the receiver after the ``201`` shows the money; a step this worker
cannot finish (a group without owner, or this worker's death) is finished by the owners
(``server._crossing``).

**An atomic batch across groups** keeps its all-or-nothing meaning when every item's sender is
in one group A: each other group reserves the credits of its items (step 1, one call per group),
A decides the whole batch in request order with those verdicts and posts it as one record (step
2: the commit point of every item), each other group credits or releases (step 3).

**An atomic batch whose senders are in several groups** is a two-phase commit whose commit
point is a decision record in the group of the first item's sender (the coordinator): the
receiving groups reserve the credits of the items that leave their sender's group; every
sending group prepares its part (its items decided whole in request order, then held: the
senders' amounts not spendable, its receivers' not closable, the keys in progress: one
``BatchPrepared``) or fails it; the coordinator records the decision (``BatchDecided``,
committed only if every part was prepared); every sending group posts its part
(``TransfersPosted`` that ``settles`` it) or releases it; the receiving groups credit or
release. A part held longer than its owners wait is ended by them: they ask the coordinator,
whose first decision stands (it decides "not committed" if it has none: presumed abort).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.abc

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
    Held,
    ItemOutcome,
    Reason,
    Refund,
    Rejection,
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
from server._member import EVENTS_STREAM
from server._port import RemoteCalls, Status, Unavailable
from server._stream_events import INDEX_MAX, AggregateEvents, position
from wal import LogUnavailable, StreamClient

log = logging.getLogger("groups")

T = TypeVar("T")

# How long the answer to a transfer between groups waits for the receiver's credit when the
# receiver's group cannot be reached: the transfer is committed, the owners finish the credit.
CREDIT_WAIT_S = 2.0
# The sender's group is told what its receivers credited at most this often, in one call.
SETTLE_EVERY_S = 0.05


class AggregateFeed:
    """The events of every group, read from the aggregate stream by this process itself, on a
    NATS connection of its own: the workers' feed and the webhook dispatcher's."""

    def __init__(self, servers: list[str]) -> None:
        self._servers = servers
        self._events: AggregateEvents | None = None

    async def run(self) -> None:
        client = StreamClient(self._servers, name=f"wallet-events-{os.getpid()}")
        while True:
            try:
                await anyio.to_thread.run_sync(client.connect)
                break
            except Exception as error:
                log.warning("the events feed cannot reach NATS yet (%s)", error)
                await anyio.sleep(1.0)
        try:
            self._events = AggregateEvents(client, EVENTS_STREAM)
            await self._events.watch()
        finally:
            self._events = None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(client.close)

    async def end(self) -> int:
        """The position of the last event the aggregate holds now: what comes after it is
        later in the feed (a webhook endpoint created now starts there)."""
        events = self._events
        if events is None:
            raise Unavailable("the events feed cannot reach NATS from this process now")
        try:
            seq = await anyio.to_thread.run_sync(events.end_sequence)
        except LogUnavailable as error:
            raise Unavailable(f"the events stream cannot be read now: {error}") from None
        return position(seq, INDEX_MAX)

    async def status(self) -> Status:
        """What a webhook dispatcher asks for its lag: the feed's end (``end``)."""
        return Status(None, await self.end())

    async def events(self, after: int, limit: int, wait_s: float) -> list[tuple[int, Event]]:
        events = self._events
        if events is None:
            raise Unavailable("the events feed cannot reach NATS from this process now")
        try:
            return await events.read(after, limit, wait_s)
        except LogUnavailable as error:
            raise Unavailable(f"the events stream cannot be read now: {error}") from None


def _reservation(command: Transfer, sender: int) -> ReserveCredit:
    """Step 1 of ``command`` (a transfer from group ``sender``) at its receiver's group."""
    assert command.from_wallet_id is not None
    return ReserveCredit(
        transaction_id=command.transaction_id, to_wallet_id=command.to_wallet_id, amount=command.amount,
        from_wallet_id=command.from_wallet_id, from_group=sender, description=command.description,
        metadata=command.metadata,
    )


async def _all(calls: list[tuple[Callable[..., Awaitable[None]], tuple[Any, ...]]]) -> None:
    """Runs every ``function(*args)`` at once; once all have ended, raises the first error."""
    errors: list[BaseException] = []

    async def guarded(function: Callable[..., Awaitable[None]], args: tuple[Any, ...]) -> None:
        try:
            await function(*args)
        except Exception as error:  # raised below as itself (not in a group), once every part ended
            errors.append(error)

    async with anyio.create_task_group() as group:
        for function, args in calls:
            group.start_soon(guarded, function, args)
    if errors:
        raise errors[0]


def _prepared_parts(parts: dict[int, list[int]], prepared: dict[int, list[Any] | BatchFailed]
                    ) -> tuple[BatchFailed | None, bool, list[int]]:
    """What the sending groups' answers to a prepare say: the batch's failure (``_first_failure``),
    whether a part was aborted (an id asked about first), and the groups that hold a part."""
    aborted = any(isinstance(outcome, Aborted) for result in prepared.values() if isinstance(result, list)
                  for outcome in result)
    holding = [sender for sender, result in prepared.items()
               if isinstance(result, list) and any(isinstance(outcome, Held) for outcome in result)]
    return _first_failure(parts, prepared), aborted, holding


def _batch_outcomes(size: int, parts: dict[int, list[int]], prepared: dict[int, list[Any] | BatchFailed],
                    posted: dict[int, list[Any]]) -> list[Any]:
    """A committed batch's answer in request order: each held item's posted outcome, the others'
    (duplicates) as prepared answered them."""
    outcomes: list[Any] = [None] * size
    for sender, indexes in parts.items():
        result = prepared[sender]
        assert isinstance(result, list)
        new = iter(posted.get(sender, ()))
        for index, outcome in zip(indexes, result, strict=True):
            outcomes[index] = next(new) if isinstance(outcome, Held) else outcome
    return outcomes


def _first_failure(parts: dict[int, list[int]], prepared: dict[int, list[Any] | BatchFailed]) -> BatchFailed | None:
    """The batch's failure: one of the whole request (no index: a key still in progress, a part
    too large for a record) first, else the first failing item in request order over the sending
    groups' parts (each part stops at its own first failure), its index in the whole batch."""
    first: BatchFailed | None = None
    for sender, result in prepared.items():
        if isinstance(result, BatchFailed):
            index = None if result.index is None else parts[sender][result.index]
            if first is None or index is None or (first.index is not None and index < first.index):
                first = BatchFailed(index=index, rejection=result.rejection)
    return first


def _posted_at(result: list[Any] | BatchFailed | None, posted: bool) -> Callable[[int], bool]:
    """Whether the item at an index of a sending group's part was posted by this batch."""
    def credited(index: int) -> bool:
        return posted and isinstance(result, list) and isinstance(result[index], Held)
    return credited


def group_of(wallet_id: str, groups: int) -> int:
    """The group of a (non-treasury) wallet: static, independent of the shard layout."""
    if groups == 1:
        return 0
    digest = hashlib.blake2b(wallet_id.encode(), digest_size=8, person=b"wallet-group").digest()
    return int.from_bytes(digest, "little") % groups


class GroupRouter:
    """The ledger port of an HTTP worker in front of ``len(ports)`` groups (module docstring):
    each call goes to its group's port, or to several."""

    def __init__(self, ports: Sequence[RemoteCalls], *, servers: list[str] | None = None) -> None:
        """``servers``: the NATS URLs, for the events feed, which is read from the aggregate
        stream by the worker itself (none: no feed)."""
        assert len(ports) >= 2
        self.ports = list(ports)
        self._feed = AggregateFeed(servers) if servers else None
        self.groups = len(ports)
        self.connected = anyio.Event()
        self._settled: list[list[str]] = [[] for _ in ports]
        self._settle_wake = anyio.Event()

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as group:
            for port in self.ports:
                await group.start(port.run)
            group.start_soon(self._connected)
            group.start_soon(self.settle_forever)
            if self._feed is not None:
                group.start_soon(self._feed.run)
            task_status.started()

    async def _connected(self) -> None:
        for port in self.ports:
            await port.connected.wait()
        self.connected.set()

    def reachable(self) -> bool:
        return all(port.reachable() for port in self.ports)

    async def aclose(self) -> None:
        for port in self.ports:
            await port.aclose()

    def _of(self, wallet_id: str) -> RemoteCalls:
        return self.ports[group_of(wallet_id, self.groups)]

    async def _first(self, ask: Callable[[RemoteCalls], Awaitable[T]], found: Callable[[T], bool]) -> T:
        """Asks every group in turn until one answers what ``found`` accepts; else the last
        answer. A group that cannot be reached fails the whole question (``Unavailable``):
        the answer could be in it."""
        answer: Any = None
        for port in self.ports:
            answer = await ask(port)
            if found(answer):
                return answer
        return answer

    async def _everywhere(self, ask: Callable[[RemoteCalls], Awaitable[T]]) -> list[T]:
        """Asks every group at once; all answers, in group order."""
        answers: list[Any] = [None] * self.groups
        errors: list[BaseException] = []

        async def one(index: int) -> None:
            try:
                answers[index] = await ask(self.ports[index])
            except Exception as error:  # raised below as itself, not in an exception group
                errors.append(error)

        async with anyio.create_task_group() as group:
            for index in range(self.groups):
                group.start_soon(one, index)
        if errors:
            raise errors[0]
        return answers

    # -- money movements -----------------------------------------------------------------

    async def transfer(self, command: Transfer) -> ItemOutcome:
        receiver = group_of(command.to_wallet_id, self.groups)
        if command.from_wallet_id is None:  # a deposit: the receiver's group and treasury part
            return await self.ports[receiver].transfer(command)
        sender = group_of(command.from_wallet_id, self.groups)
        if sender == receiver:
            return await self.ports[sender].transfer(command)
        if command.hold_timeout_s is not None:
            # A hold: created at the sender's group with the receiver's checks as they stand;
            # nothing reaches (or is reserved at) the receiver's group before a capture.
            verdict = await self.ports[receiver].credit_check(command.to_wallet_id, command.amount)
            created = await self.ports[sender].transfer_across(command, verdict)
            assert not isinstance(created, Aborted), created  # a new transaction id is never aborted
            return created
        return await self._across(command, sender, receiver)

    async def _across(self, command: Transfer, sender: int, receiver: int) -> ItemOutcome:
        assert command.from_wallet_id is not None
        verdict = await self.ports[receiver].reserve_credit(_reservation(command, sender))
        # A refused prepare reserved nothing; the sender's group still decides (its own checks
        # may come first in the check order, and the key records the outcome).
        outcome: ItemOutcome | Aborted = await self.ports[sender].transfer_across(command, verdict)
        if verdict.failure is not None:
            assert not isinstance(outcome, Committed | Aborted), outcome
            return outcome
        committed = isinstance(outcome, Committed)
        with anyio.move_on_after(CREDIT_WAIT_S):
            try:
                await self.ports[receiver].settle_reservation(command.transaction_id, command.to_wallet_id,
                                                              committed)
                if committed:
                    self._settled[sender].append(command.transaction_id)
                    self._settle_wake.set()
            except Unavailable as error:
                # The owners finish it: the receiver's asks the sender's what was decided.
                log.info("transfer %s: group %d could not settle its reservation now (%s)",
                         command.transaction_id, receiver, error)
        if isinstance(outcome, Aborted):
            raise Unavailable(f"transfer {command.transaction_id} was aborted by its receiver's group; retry")
        return outcome

    async def settle_forever(self) -> None:
        """Tells each sender group, in one call per group, which of its transfers are credited."""
        while True:
            await self._settle_wake.wait()
            self._settle_wake = anyio.Event()
            await anyio.sleep(SETTLE_EVERY_S)
            for index, settled in enumerate(self._settled):
                if not settled:
                    continue
                self._settled[index] = []
                try:
                    await self.ports[index].settle_transit(settled)
                except Exception as error:  # the owner finds them owed and asks again
                    log.info("group %d: could not settle %d transfers now (%s)", index, len(settled), error)

    async def transfer_batch(self, commands: list[Transfer], atomic: bool) -> list[ItemOutcome] | BatchFailed:
        """A batch inside one group goes to it whole. A non-atomic batch across groups is
        decided by each sending group at once, its items as one batch wherever they go: the
        items to other groups through the protocol of a single transfer, many per call
        (``_from_group``), so a sender's items are decided in request order as inside one
        group; answers in request order."""
        if not commands:
            return []
        sides = [self._sides(command) for command in commands]
        groups = {group for pair in sides for group in pair}
        if len(groups) == 1:
            return await self.ports[groups.pop()].transfer_batch(commands, atomic)
        if atomic:
            return await self._atomic_across(commands, sides)
        outcomes: list[Any] = [None] * len(commands)
        by_sender: dict[int, list[int]] = {}
        for index, (sender, _) in enumerate(sides):
            by_sender.setdefault(sender, []).append(index)

        async def send(sender: int, indexes: list[int]) -> None:
            part = [commands[index] for index in indexes]
            if all(sides[index][1] == sender for index in indexes):
                result = await self.ports[sender].transfer_batch(part, False)
                assert not isinstance(result, BatchFailed)
            else:
                result = await self._from_group(part, sender)
            for index, outcome in zip(indexes, result, strict=True):
                outcomes[index] = outcome

        await _all([(send, (sender, indexes)) for sender, indexes in by_sender.items()])
        return outcomes

    def _receivers(self, commands: list[Transfer], sender: int) -> dict[int, list[int]]:
        """The indexes of the items of ``commands`` (all from group ``sender``) by the other
        group that receives them."""
        remote: dict[int, list[int]] = {}
        for index, command in enumerate(commands):
            receiver = group_of(command.to_wallet_id, self.groups)
            if receiver != sender:
                remote.setdefault(receiver, []).append(index)
        return remote

    async def _prepare(self, commands: list[Transfer], sender: int,
                       remote: dict[int, list[int]]) -> list[CreditCheck | None]:
        """Step 1 at every receiving group at once (one call each): per item, the verdict of
        its receiver's group, or None for an item that stays in ``sender``. A group that cannot
        prepare raises (Unavailable) once the others ended; what they reserved is then aborted
        by the owners (presumed abort)."""
        credits: list[CreditCheck | None] = [None] * len(commands)

        async def prepare(receiver: int, indexes: list[int]) -> None:
            verdicts = await self.ports[receiver].reserve_credits(
                [_reservation(commands[index], sender) for index in indexes])
            for index, verdict in zip(indexes, verdicts, strict=True):
                credits[index] = verdict

        await _all([(prepare, (receiver, indexes)) for receiver, indexes in remote.items()])
        return credits

    async def _settle_all(self, commands: list[Transfer], sender: int, remote: dict[int, list[int]],
                          credits: list[CreditCheck | None], committed: Callable[[int], bool]) -> None:
        """Step 3 at every receiving group at once, for the items it reserved: the credit of
        those ``committed`` says were committed, the release of the others."""

        async def settle(receiver: int, indexes: list[int]) -> None:
            await self._settle(sender, receiver, [
                (commands[index].transaction_id, commands[index].to_wallet_id, committed(index))
                for index in indexes if (verdict := credits[index]) is not None and verdict.failure is None])

        await _all([(settle, (receiver, indexes)) for receiver, indexes in remote.items()])

    async def _from_group(self, commands: list[Transfer], sender: int) -> list[ItemOutcome]:
        """A non-atomic batch of group ``sender``'s wallets, some to other groups: each
        receiving group reserves its items' credits, the sending group decides all the items
        in one call (those that stay in it too), each receiving group credits or releases."""
        remote = self._receivers(commands, sender)
        credits = await self._prepare(commands, sender, remote)
        outcomes = await self.ports[sender].transfers_across(commands, credits)
        await self._settle_all(commands, sender, remote, credits,
                               lambda index: isinstance(outcomes[index], Committed))
        answers: list[ItemOutcome] = []
        for command, outcome in zip(commands, outcomes, strict=True):
            if isinstance(outcome, Aborted):
                raise Unavailable(f"transfer {command.transaction_id} was aborted by its receiver's group; retry")
            answers.append(outcome)
        return answers

    async def _atomic_across(self, commands: list[Transfer], sides: list[tuple[int, int]]
                             ) -> list[ItemOutcome] | BatchFailed:
        """An atomic batch whose wallets are in several groups (the module's docstring)."""
        sender = sides[0][0]
        if any(other != sender for other, _ in sides):
            return await self._atomic_of_groups(commands, sides)
        remote = self._receivers(commands, sender)
        # A group that cannot prepare fails the batch (503) before anything is decided.
        credits = await self._prepare(commands, sender, remote)
        result = await self.ports[sender].transfer_batch_across(commands, credits)
        await self._settle_all(commands, sender, remote, credits,
                               lambda index: isinstance(result, list) and isinstance(result[index], Committed))
        if isinstance(result, list) and any(isinstance(outcome, Aborted) for outcome in result):
            raise Unavailable("an atomic batch was aborted by a receiver's group; retry")
        return result

    async def _atomic_of_groups(self, commands: list[Transfer], sides: list[tuple[int, int]]
                                ) -> list[ItemOutcome] | BatchFailed:
        """An atomic batch whose senders are in several groups (the module's docstring): the
        first item's group coordinates; the receiving groups reserve, every sending group
        prepares its part, the coordinator decides, every sending group posts or releases its
        part, the receiving groups credit or release."""
        coordinator = sides[0][0]
        batch = f"b-{secrets.token_hex(12)}"
        parts: dict[int, list[int]] = {}
        for index, (sender, _) in enumerate(sides):
            parts.setdefault(sender, []).append(index)
        credits: list[CreditCheck | None] = [None] * len(commands)
        remotes: dict[int, dict[int, list[int]]] = {}

        async def reserve(sender: int, indexes: list[int]) -> None:
            part = [commands[index] for index in indexes]
            remote = remotes[sender] = self._receivers(part, sender)
            for index, verdict in zip(indexes, await self._prepare(part, sender, remote), strict=True):
                credits[index] = verdict

        # A group that cannot reserve fails the batch (503) before any part is held: what the
        # others reserved is released by their owners (its sender's group aborts it when asked).
        await _all([(reserve, (sender, indexes)) for sender, indexes in parts.items()])
        prepared: dict[int, list[Any] | BatchFailed] = {}

        async def prepare(sender: int, indexes: list[int]) -> None:
            prepared[sender] = await self.ports[sender].prepare_batch(
                batch, coordinator, [commands[index] for index in indexes], [credits[index] for index in indexes])

        try:
            await _all([(prepare, (sender, indexes)) for sender, indexes in parts.items()])
        except Exception:  # unreachable, overloaded: the parts prepared elsewhere are released
            await self._abandon(batch, coordinator, commands, parts, credits, remotes)
            raise
        failure, aborted, holding = _prepared_parts(parts, prepared)
        committed = False
        if holding:
            # Unavailable here leaves the outcome unknown: the owners finish it either way.
            committed = await self.ports[coordinator].decide_batch(batch, failure is None and not aborted)
        posted: dict[int, list[Any]] = {}
        unsettled: set[int] = set()

        async def settle(sender: int) -> None:
            try:
                result = await self.ports[sender].settle_batch(batch, committed)
            except Unavailable as error:
                log.info("batch %s: group %d cannot end its part now (%s)", batch, sender, error)
                unsettled.add(sender)
                return
            if committed:
                if result is None:  # its owners posted it first
                    unsettled.add(sender)
                else:
                    posted[sender] = result

        await _all([(settle, (sender,)) for sender in holding])
        # The receiving groups credit what was posted and release what will never be; the items
        # of a committed part not posted yet stay reserved (their receivers' owners ask their
        # sending group, which answers once it posted them).
        await _all([(self._settle_all, ([commands[index] for index in parts[sender]], sender, remotes[sender],
                                        [credits[index] for index in parts[sender]],
                                        _posted_at(prepared[sender], sender in posted)))
                    for sender in parts if not (committed and sender in unsettled)])
        if failure is not None:
            return failure
        if aborted or (holding and not committed):
            raise Unavailable("an atomic batch was aborted by a group before it was decided; retry")
        if unsettled:
            raise Unavailable(f"batch {batch} is committed; a group posts its part later; retry with the keys")
        return _batch_outcomes(len(commands), parts, prepared, posted)

    async def _abandon(self, batch: str, coordinator: int, commands: list[Transfer], parts: dict[int, list[int]],
                       credits: list[CreditCheck | None], remotes: dict[int, dict[int, list[int]]]) -> None:
        """A batch some sending group could not prepare: decided not committed if the
        coordinator can be reached, then every part released and every reservation too; what
        cannot be done now is left to the owners (presumed abort)."""
        try:
            if await self.ports[coordinator].decide_batch(batch, False):
                return  # cannot be: only this worker asks to commit it
        except Exception as error:  # the caller raises its own error
            log.info("batch %s: left to the owners (%s)", batch, error)
            return

        async def release(sender: int) -> None:
            try:
                await self.ports[sender].settle_batch(batch, False)
            except Exception as error:  # its owners ask the coordinator: not committed
                log.info("batch %s: group %d releases its part later (%s)", batch, sender, error)

        await _all([(release, (sender,)) for sender in parts])
        await _all([(self._settle_all, ([commands[index] for index in parts[sender]], sender, remotes[sender],
                                        [credits[index] for index in parts[sender]], lambda index: False))
                    for sender in parts])

    def _sides(self, command: Transfer) -> tuple[int, int]:
        receiver = group_of(command.to_wallet_id, self.groups)
        if command.from_wallet_id is None:
            return receiver, receiver
        return group_of(command.from_wallet_id, self.groups), receiver

    async def _settle(self, sender: int, receiver: int, settle: list[tuple[str, str, bool]]) -> None:
        """Step 3 for many transfers from ``sender`` to ``receiver``: (id, receiving wallet,
        whether it was committed). A group that cannot now leaves them to the owners."""
        if not settle:
            return
        with anyio.move_on_after(CREDIT_WAIT_S):
            try:
                await self.ports[receiver].settle_reservations(settle)
                self._settled[sender] += [transaction_id for transaction_id, _, credited in settle if credited]
                self._settle_wake.set()
            except Unavailable as error:
                log.info("%d transfers: group %d could not settle their reservations now (%s)", len(settle),
                         receiver, error)

    async def refund(self, command: Refund) -> ItemOutcome:
        """A refund goes back from the original's receiver to its sender. Inside one group (or
        to a treasury, which every group has a part of) to the refunding wallet's group; between
        groups through the protocol of a transfer, decided by the refunding wallet's group, which
        keeps the cap. The reservation is for an exact amount: without one the refund takes what
        is left as the refunding group counts it just before (a refund racing it may then make
        this one exceed what is left, where inside one group it would take less)."""
        sender = group_of(command.from_wallet_id, self.groups)
        receiver = group_of(command.to_wallet_id, self.groups)
        if sender == receiver or is_treasury(command.to_wallet_id):
            return await self.ports[sender].refund(command)
        if command.amount is None:
            left = await self.ports[sender].refund_remaining(command.refund_of, command.from_wallet_id,
                                                             command.original_amount)
            if left == 0:
                # Nothing left (and nothing ever will be): the refunding group refuses it, and
                # records that under the key, before it would look at a receiver's verdict.
                refused = await self.ports[sender].refund_across(command, CreditCheck(asset=None, failure=None))
                assert not isinstance(refused, Aborted | Committed), refused
                return refused
            command = dataclasses.replace(command, amount=left)
        assert command.amount is not None
        verdict = await self.ports[receiver].reserve_credit(ReserveCredit(
            transaction_id=command.transaction_id, to_wallet_id=command.to_wallet_id, amount=command.amount,
            from_wallet_id=command.from_wallet_id, from_group=sender, description=command.description,
            metadata=command.metadata, refund_of=command.refund_of,
        ))
        outcome = await self.ports[sender].refund_across(command, verdict)
        if verdict.failure is None:
            await self._settle(sender, receiver, [(command.transaction_id, command.to_wallet_id,
                                                   isinstance(outcome, Committed))])
        if isinstance(outcome, Aborted):
            raise Unavailable(f"refund {command.transaction_id} was aborted by its receiver's group; retry")
        return outcome

    async def resolve_hold(self, transaction_id: str, capture: bool, amount: int | None, owner_id: str | None,
                           idempotency: Any) -> ItemOutcome:
        """A void is the hold's sender group's alone. A capture whose receiver is in another
        group is the protocol of a transfer, under an id of this attempt's own (ADR 0013: every
        attempt of one hold would otherwise share the hold's id), for the captured amount."""
        if capture:
            routes = await self._everywhere(lambda port: port.hold_route(transaction_id))
            for sender, route in enumerate(routes):
                if route is not None and (receiver := group_of(route[1], self.groups)) != sender:
                    return await self._capture_across(transaction_id, amount, owner_id, idempotency, route,
                                                      sender, receiver)
        return await self._first(
            lambda port: port.resolve_hold(transaction_id, capture, amount, owner_id, idempotency),
            lambda outcome: not (isinstance(outcome, Rejection) and outcome.reason == Reason.NOT_PENDING))

    async def _capture_across(self, transaction_id: str, amount: int | None, owner_id: str | None,
                              idempotency: Any, route: tuple[str, str, int], sender: int,
                              receiver: int) -> ItemOutcome:
        from_wallet_id, to_wallet_id, held = route
        attempt = "cap_" + secrets.token_hex(12)
        verdict = await self.ports[receiver].reserve_credit(ReserveCredit(
            transaction_id=attempt, to_wallet_id=to_wallet_id, amount=held if amount is None else amount,
            from_wallet_id=from_wallet_id, from_group=sender, description=None, metadata=None,
            capture_of=transaction_id,
        ))
        outcome = await self.ports[sender].capture_across(transaction_id, attempt, amount, owner_id, idempotency,
                                                          verdict)
        if verdict.failure is None:
            # Only this attempt can commit under its id: credit it if it did, else release it.
            await self._settle(sender, receiver, [(attempt, to_wallet_id, isinstance(outcome, Committed))])
        if isinstance(outcome, Aborted):
            raise Unavailable(f"a capture of {transaction_id} was aborted by its receiver's group; retry")
        return outcome

    async def request_withdrawal(self, command: RequestWithdrawal) -> ItemOutcome:
        return await self._of(command.wallet_id).request_withdrawal(command)

    async def advance_withdrawal(self, command: AdvanceWithdrawal) -> Decision | Committed:
        return await self._first(
            lambda port: port.advance_withdrawal(command),
            lambda outcome: not (isinstance(outcome, Rejection) and outcome.reason == Reason.WITHDRAWAL_NOT_FOUND))

    # -- wallets, alerts -----------------------------------------------------------------

    async def create_wallet(self, command: CreateWallet) -> Decision:
        return await self._of(command.wallet_id).create_wallet(command)

    async def change_status(self, command: ChangeWalletStatus) -> Decision:
        return await self._of(command.wallet_id).change_status(command)

    async def update_wallet(self, command: UpdateWallet) -> Decision:
        return await self._of(command.wallet_id).update_wallet(command)

    async def create_alert(self, command: CreateAlert) -> Decision:
        return await self._of(command.wallet_id).create_alert(command)

    async def delete_alert(self, command: DeleteAlert) -> Decision:
        return await self._first(
            lambda port: port.delete_alert(command),
            lambda outcome: not (isinstance(outcome, Rejection) and outcome.reason == Reason.ALERT_NOT_FOUND))

    async def alerts(self, wallet_id: str) -> list[AlertView] | None:
        return await self._of(wallet_id).alerts(wallet_id)

    async def alert(self, alert_id: str) -> AlertView | None:
        return await self._first(lambda port: port.alert(alert_id), lambda view: view is not None)

    async def wallet(self, wallet_id: str) -> WalletView | None:
        if not is_treasury(wallet_id):
            return await self._of(wallet_id).wallet(wallet_id)
        # Every group's part (its treasury and its transit account: ``LocalPort.wallet``).
        parts = await self._everywhere(lambda port: port.wallet(wallet_id))
        if any(part is None for part in parts):
            return None
        views = [part for part in parts if part is not None]
        return dataclasses.replace(
            views[0], balance=sum(view.balance for view in views), held=sum(view.held for view in views),
            updated_at_us=max(view.updated_at_us for view in views), lsn=max(view.lsn for view in views))

    async def wallets(self, wallet_ids: list[str]) -> list[WalletView]:
        by_group: dict[int, list[str]] = {}
        for wallet_id in wallet_ids:
            by_group.setdefault(group_of(wallet_id, self.groups), []).append(wallet_id)
        found: dict[str, WalletView] = {}
        for group, ids in by_group.items():
            for view in await self.ports[group].wallets(ids):
                found[view.id] = view
        return [found[wallet_id] for wallet_id in wallet_ids if wallet_id in found]

    async def wallet_ids(self, owner_id: str | None, asset: str | None, after_lsn: int,
                         limit: int) -> list[tuple[int, str]]:
        """Pages over every group in one order: a wallet's position is its creation LSN times
        the group count plus its group (the cursor the route makes is such a position)."""
        after, after_group = divmod(after_lsn, self.groups) if after_lsn else (0, -1)
        merged: list[tuple[int, str]] = []
        for group, port in enumerate(self.ports):
            since = after - 1 if group > after_group else after
            for lsn, wallet_id in await port.wallet_ids(owner_id, asset, max(0, since), limit):
                if (lsn, group) > (after, after_group):
                    merged.append((lsn * self.groups + group, wallet_id))
        merged.sort()
        return merged[:limit]

    async def balance_at(self, wallet_id: str, at_us: int) -> int:
        return await self._of(wallet_id).balance_at(wallet_id, at_us)

    async def entries(self, wallet_id: str, before: int | None, limit: int, type_: TransactionType | None,
                      status: TransactionStatus | None, since_us: int | None, until_us: int | None) -> list[Entry]:
        return await self._of(wallet_id).entries(wallet_id, before, limit, type_, status, since_us, until_us)

    # -- withdrawals, transactions ---------------------------------------------------------

    async def withdrawal(self, withdrawal_id: str) -> WithdrawalView | None:
        return await self._first(lambda port: port.withdrawal(withdrawal_id), lambda view: view is not None)

    async def withdrawals(self, statuses: frozenset[WithdrawalStatus] | None,
                          owner_id: str | None) -> list[WithdrawalView]:
        parts = await self._everywhere(lambda port: port.withdrawals(statuses, owner_id))
        return sorted((view for part in parts for view in part), key=lambda view: (view.created_at_us, view.id))

    async def transaction(self, transaction_id: str) -> TransactionRow | None:
        """The sender's group's row: the receiver's group of a transfer between groups keeps a
        copy for its statements, made at its credit (a later LSN)."""
        rows = await self._everywhere(lambda port: port.transaction(transaction_id))
        found = [(group, row) for group, row in enumerate(rows) if row is not None]
        for group, row in found:
            if is_treasury(row.from_wallet_id) or group_of(row.from_wallet_id, self.groups) == group:
                return row
        return found[0][1] if found else None

    async def search_transactions(
            self, query: TransactionQuery) -> tuple[list[TransactionRow], int | tuple[int, int, int] | None]:
        """Every group's rows in one order, newest first: by time, then group, then position in
        the group (within a group time never goes back as positions grow). Each group gives its
        first ``limit`` rows below the cursor; the page is the first ``limit`` of them all, and
        the cursor the last of those. The receiver's group's copy of a transfer between groups
        (for its statements) is left out: the row is the sender group's."""
        below = query.below
        if query.before is not None:
            raise Unavailable("this cursor was given out by a server of one ledger group")

        def asked(group: int) -> TransactionQuery:
            if below is None:
                return dataclasses.replace(query, below=None)
            at_us, cursor_group, position = below
            if group == cursor_group:
                return dataclasses.replace(query, below=None, before=position)
            until = at_us - 1 if group > cursor_group else at_us
            return dataclasses.replace(query, below=None,
                                       until_us=until if query.until_us is None else min(query.until_us, until))

        pages = await self._everywhere_indexed(lambda group, port: port.search_transactions(asked(group)))
        candidates = sorted(((row.at_us, group, row.position, row) for group, (rows, _) in enumerate(pages)
                             for row in rows), key=lambda item: item[:3], reverse=True)
        taken = candidates[:query.limit]
        more = len(candidates) > query.limit or any(next_before is not None for _, next_before in pages)
        rows = [row for _, group, _, row in taken
                if is_treasury(row.from_wallet_id) or group_of(row.from_wallet_id, self.groups) == group]
        return rows, (taken[-1][:3] if taken and more else None)

    async def _everywhere_indexed(self, ask: Callable[[int, RemoteCalls], Awaitable[T]]) -> list[T]:
        return await self._everywhere(lambda port: ask(self.ports.index(port), port))

    # -- the directory: assets and tokens, in every group ---------------------------------

    async def create_asset(self, command: CreateAsset) -> Decision:
        answers = [await port.create_asset(command) for port in self.ports]
        return answers[0]

    async def create_token(self, command: CreateToken) -> Decision:
        answers = [await port.create_token(command) for port in self.ports]
        return answers[0]

    async def revoke_token(self, command: RevokeToken) -> Decision:
        answers = [await port.revoke_token(command) for port in self.ports]
        return answers[0]

    async def token(self, token_hash: bytes) -> Token | None:
        return await self._any(lambda port: port.token(token_hash))

    async def asset(self, code: str) -> Asset | None:
        return await self._any(lambda port: port.asset(code))

    async def assets(self) -> list[Asset]:
        return await self._any(lambda port: port.assets())

    async def _any(self, ask: Callable[[RemoteCalls], Awaitable[T]]) -> T:
        """What every group holds alike (assets, tokens): group 0's answer, or while it has no
        owner the next group's, so that the groups that serve go on serving."""
        for port in self.ports[:-1]:
            try:
                return await ask(port)
            except Unavailable:
                continue
        return await ask(self.ports[-1])

    # -- operations ----------------------------------------------------------------------

    async def events(self, after: int, limit: int, wait_s: float) -> list[tuple[int, Event]]:
        """The feed of every group, from the aggregate stream (its positions: ADR 0013)."""
        if self._feed is None:
            raise Unavailable("this worker has no events feed")
        return await self._feed.events(after, limit, wait_s)

    async def status(self) -> Status:
        statuses = await self._everywhere(lambda port: port.status())
        reasons = [f"group {group}: {status.reason}" for group, status in enumerate(statuses) if status.reason]
        # The feed's positions are the aggregate stream's (ADR 0013): what ``/ready`` and a new
        # webhook endpoint's start mean by "durable so far".
        durable = await self._feed.end() if self._feed is not None else max(s.durable_lsn for s in statuses)
        return Status("; ".join(reasons) or None, durable)

    async def take_snapshot(self) -> tuple[int | None, int]:
        answers = await self._everywhere(lambda port: port.take_snapshot())
        return answers[0]

    async def metrics(self) -> str:
        """Every group owner's series, each labelled with its ``group`` (one family per name)."""
        from prometheus_client.exposition import generate_latest
        from prometheus_client.parser import text_string_to_metric_families
        from prometheus_client.samples import Sample

        texts = await self._everywhere(lambda port: port.metrics())
        families: dict[str, Any] = {}
        for group, text in enumerate(texts):
            for family in text_string_to_metric_families(text):
                labelled = [Sample(sample.name, {**sample.labels, "group": str(group)}, sample.value, sample.timestamp,
                                   sample.exemplar) for sample in family.samples]
                found = families.get(family.name)
                if found is None:
                    family.samples = labelled
                    families[family.name] = family
                else:
                    found.samples.extend(labelled)

        class _Registry:
            def collect(self) -> Any:
                return iter(families.values())

        return generate_latest(_Registry()).decode()

    async def wait_projected(self) -> int:
        return max(await self._everywhere(lambda port: port.wait_projected()))
