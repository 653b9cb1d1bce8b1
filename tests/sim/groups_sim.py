"""The deterministic simulation of cluster mode with several ledger groups (ADR 0013, issue 14):
2-3 groups, each of 2 members over its own stream of one in-memory JetStream
(``wal.testing.FakeStream``), and the transfers between them, driven by one seed,
single-threaded and exactly reproducible.

Each group is what ``tests/sim/cluster_sim.py`` simulates for one: real ``Standby`` objects
copying the stream, a takeover by the fenced epoch append, then a real ``Ledger`` recovered from
the copy, its WAL's ``replicate`` hook a real ``Replica``. What is new here is the traffic
between the groups (single transfers, batches and atomic batches, within and between groups;
refunds, holds, their captures and voids between groups),
run the way the HTTP worker's router runs it (``server._groups``), one call at a time: a
transfer between groups reserves the credit at the receiver's group, commits at the sender's
(its record is the commit point), settles the reservation at the receiver's and the transit at
the sender's (a batch's items between two groups: one call per step for all; an atomic batch:
each receiving group reserves its items, the sending group decides the batch whole); and the owners' background work (``server._crossing``, whose
choice of what is due is the one used here: ``Crossing.due_owed`` and ``due_reservations``)
credits what a worker left owed and resolves reservations whose commit never came (presumed
abort). A call reaches the group's current owner and is answered only once that owner's
``Replica.confirmed`` holds for it (as the port's ``confirm``); an owner that dies or is fenced
never answers, and the worker gets ``Unavailable``. Workers also stop between any two calls (a
worker process killed), and clients retry what was not answered with its idempotency key, as a
new request (a new transaction id), maybe after a takeover.

Faults, chosen by the seed, per group: owner crash, owner pause (short, or past the takeover and
then resumed: fenced), heartbeats lost (a takeover from a running owner: fenced), standby
restart; for the whole log: a lost ack (stored, but its publisher exits), and the log unavailable
for a while (leader loss).

The oracle, after every fault and at the end:

1. every acknowledged command is in its group's stream at the LSN it was acknowledged with;
2. no two owners of a group ever both append (``cluster_sim.epoch_error``);
3. a replay of each group's stream equals the state of each of its live owners with nothing
   unreplicated (a replaced one: the stream up to its last commit), invariants included;
4. between groups, read from the streams: a credit of a transfer from another group
   (``ReservationSettled``, credited) is in the receiver's stream at most once and only for a
   transfer committed in the sender's stream, for its wallet and amount; nothing committed was
   aborted; per asset, every group's wallets, treasury part and transit account sum to zero
   (the ledger's invariant), and the transit accounts of all groups add up to exactly what is
   committed and not yet credited;
5. an atomic batch is in one record of its sending group whole, or nowhere; the refunds of a
   transaction never add up past its amount; a hold is captured or voided once;
   no idempotency key was executed twice (committed more than once in the sender's stream), and
   a key answered twice answered the same transaction;
6. at the end, once the owners' background work has run: every committed transfer between
   groups was credited exactly once, no reservation is left, nothing is owed, every transit
   account is zero.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from ledger import (
    Aborted,
    AbortTransfers,
    BatchDecided,
    BatchFailed,
    BatchPrepared,
    BatchReleased,
    Clock,
    Committed,
    CreateAsset,
    CreateWallet,
    CreditReserved,
    DecideBatch,
    Duplicate,
    HoldCaptured,
    HoldVoided,
    Idempotency,
    Ledger,
    Overloaded,
    Refund,
    Refunded,
    Rejection,
    ReservationSettled,
    ReserveCredit,
    ResolveHold,
    SettleReservation,
    SettleTransit,
    TransactionStatus,
    TransactionType,
    Transfer,
    TransfersAborted,
    TransfersPosted,
    decode_event,
    digest_state,
    is_treasury,
    recover,
    resolved,
    shard_of,
)
from ledger._messages import BatchReply, Reply
from server._crossing import Crossing
from server._groups import _batch_outcomes, _posted_at, _prepared_parts, group_of
from server._member import KIND, log_subject, stream_name
from tests.sim.cluster_sim import (
    Member,
    OwnerExited,
    StreamFaults,
    all_frames_of,
    epoch_error,
    write_frames,
)
from tests.sim.sim import SimulationFailed, transfers_of
from wal import MirrorError, StorageFailed
from wal.testing import FakeStream, StoredMessage, all_frames

ASSET = "USD"
START = 100_000  # what each wallet is given at the start


class Unavailable(Exception):
    """A call got no answer: its owner died, was fenced, or its group has none now (a worker's
    ``503``)."""


@dataclass
class GroupsFaults:
    crash: float = 0.0015
    pause: float = 0.0015
    lost_ack: float = 0.002
    unavailable: float = 0.0008
    standby_restart: float = 0.001
    heartbeats_lost: float = 0.001
    stall: float = 0.005  # an owner's append hangs (a leader election), then is stored or fails
    worker_stops: float = 0.01  # per call a worker is about to make


@dataclass
class GroupsStats:
    steps: int = 0
    groups: int = 0
    takeovers: int = 0
    owner_crashes: int = 0
    pauses: int = 0
    fenced: int = 0
    lost_acks: int = 0
    unavailable: int = 0
    exits_unavailable: int = 0
    standby_restarts: int = 0
    heartbeats_lost: int = 0
    stalls: int = 0
    stalls_failed: int = 0  # stalled appends that failed in the end (never stored; the owner exits)
    barriers: int = 0
    acknowledged: int = 0
    across_acknowledged: int = 0  # transfers between groups answered Committed to their client
    unanswered: int = 0  # keyed requests that got 503 (or whose worker stopped): retried with the keys
    duplicates: int = 0  # keyed retries answered with the first execution
    atomic_across: int = 0  # atomic batches between groups committed whole
    atomic_groups: int = 0  # of those, batches whose senders are in several groups
    parts_ended: int = 0  # parts of such batches an owner posted or released after asking
    refunds_across: int = 0
    captures_across: int = 0
    aborted: int = 0  # commits refused because the receiver's group had them aborted
    workers_stopped: int = 0
    owed_credited: int = 0  # credits the owners' background work asked for
    reservations_resolved: int = 0  # reservations it settled after asking the sender's group
    checks: int = 0
    compared: int = 0


@dataclass
class Group:
    number: int
    members: list[Member]
    owner: Member | None = None
    winners: dict[int, str] = field(default_factory=dict)
    beats_lost_until: float | None = None
    stalled_until: float | None = None  # the owner's group commit in flight until then
    crossing: Crossing | None = None  # the owner's background work's choice of what is due


@dataclass
class Ask:
    """What a worker sends one group: ``submit`` puts it in the owner's ledger; the answer is
    ``read`` of the reply's value (the same ledger) once it is answered and confirmed."""

    group: int
    submit: Callable[[Ledger], Reply | BatchReply]
    read: Callable[[Ledger, Any], Any] = lambda ledger, value: value
    to: Ledger | None = None  # an owner's call to its own ledger (not to whoever owns the group now)


@dataclass
class Request:
    commands: list[Transfer]
    batch: bool = False
    atomic: bool = False


@dataclass
class Call:
    member: Member
    ledger: Ledger
    reply: Reply | BatchReply
    arrived: float
    ask: Ask


Work = Generator[Ask, Any, None]


@dataclass
class Worker:
    work: Work
    ask: Ask | None = None
    call: Call | None = None
    role: tuple[str, int] | None = None  # ("setup" or "crossing", group): one at a time of each


class GroupsSimulation(StreamFaults):
    def __init__(self, seed: int, *, steps: int, faults: GroupsFaults | None = None,
                 groups: int | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.steps = steps
        self.faults = faults or GroupsFaults()
        self.stats = GroupsStats()
        self.root = Path(tempfile.mkdtemp(prefix=f"sim-groups-{seed}-"))
        self.count = groups or self.rng.choice([2, 3])
        self.stats.groups = self.count
        self.shards = self.rng.choice([1, 2, 3])
        self.stream = FakeStream()
        self.stream.idle_wait = lambda seconds: None
        self.stream.lose_ack = self._lose_ack
        self.lose_next_ack = False
        self.unavailable_until: float | None = None
        client = self.stream.client()
        self.groups: list[Group] = []
        for number in range(self.count):
            client.ensure_stream(stream_name(number), log_subject(number))
            self.groups.append(Group(number, [Member(name=f"g{number}m{index}", directory=self.root / f"g{number}m{index}")
                                              for index in range(2)]))
        self.takeover_after_s = self.rng.choice([0.5, 1.0, 2.0])
        self.mono_us = 0
        self.now_ns = 1_790_000_000 * 10**9
        self.wallets: dict[int, list[str]] = {number: [] for number in range(self.count)}
        for n in range(200):
            wallet_id = f"w{n}"
            mine = self.wallets[group_of(wallet_id, self.count)]
            if len(mine) < 3:
                mine.append(wallet_id)
        self.workers: list[Worker] = []
        self.counter = 0
        # The clients' record: acknowledged (group, LSN, transaction id or None); the first
        # transaction each key was answered with; keys whose request got no answer (retried).
        self.acks: list[tuple[int, int, str | None]] = []
        self.answered_by_key: dict[str, str] = {}
        self.retry: list[Request] = []
        self.refundable: list[Transfer] = []  # acknowledged transfers between groups
        self.holds: list[Transfer] = []  # acknowledged holds between groups (maybe resolved since)
        # Every one sent: (id, key, sending group) per item.
        self.atomic_batches: list[list[tuple[str, str | None, int]]] = []
        self.ready: set[int] = set()  # groups whose asset and wallets (with money) are acknowledged

    def fail(self, message: str) -> SimulationFailed:
        return SimulationFailed(f"groups seed {self.seed}: {message} "
                                f"(replay with SIM_SEED={self.seed} SIM_KIND=groups make sim)")

    def mono(self) -> float:
        self.mono_us += 1
        return self.mono_us / 1e6

    # -- members ---------------------------------------------------------------------------

    def start_standby(self, group: Group, member: Member) -> None:
        member.start_standby(self.stream, group.number, takeover_after_s=self.takeover_after_s, clock=self.mono)

    def take_over(self, group: Group, member: Member, seq: int) -> None:
        self.stats.takeovers += 1
        epoch, replica = member.won(self.stream, group.number, seq, clock=self.mono)
        group.winners[epoch] = member.name
        recovered = recover(member.directory, project_history=False)
        ledger = Ledger(recovered, member.directory, shards=self.shards, replicate=replica.replicate,
                        group=group.number, groups=self.count,
                        clock=Clock(lambda: self.now_ns, start_us=recovered.state.directory.at_us))
        ledger.wal._on_durable = None
        member.ledger, member.replica, member.recovered = ledger, replica, recovered
        member.next_beat = 0.0
        previous = group.owner
        if previous is not None and previous.paused_until is not None:
            previous.replaced_while_paused = True
        group.owner = member
        if ledger.wal.next_lsn - 1 != self.stream_last_lsn(group.number):
            raise self.fail(f"{member.name} took over with LSN {ledger.wal.next_lsn - 1}, the stream has "
                            f"{self.stream_last_lsn(group.number)}")
        ledger.check_invariants()
        self.check()
        ledger.begin()
        group.crossing = Crossing(ledger, {}, owed_after_s=0.05, reserved_after_s=0.02, clock=self.mono)
        replica.serving()

    def end_owner(self, group: Group, member: Member) -> None:
        """The process is gone: every call it had is unanswered (its workers get Unavailable)."""
        if member is group.owner:
            group.owner = None
            group.crossing = None
        member.end()
        self.start_standby(group, member)

    def as_owner(self, group: Group, member: Member, action: Callable[[], Any]) -> None:
        try:
            action()
        except OwnerExited as exit:
            if "newer owner" in str(exit):
                self.stats.fenced += 1
            else:
                self.stats.exits_unavailable += 1
            self.end_owner(group, member)
            self.check()

    def running(self, member: Member) -> bool:
        return member.ledger is not None and member.paused_until is None

    # -- workers ---------------------------------------------------------------------------

    def start(self, work: Work, role: tuple[str, int] | None = None) -> None:
        if role is not None and any(worker.role == role for worker in self.workers):
            work.close()
            return
        worker = Worker(work, role=role)
        self.advance(worker, None)
        if worker.ask is not None:
            self.workers.append(worker)

    def advance(self, worker: Worker, answer: Any, error: Exception | None = None) -> None:
        """Gives the worker its answer (or the error); it makes its next call, or ends."""
        worker.call = None
        try:
            worker.ask = worker.work.throw(error) if error is not None else worker.work.send(answer)
        except StopIteration:
            worker.ask = None
        except Unavailable:  # the worker answered its client 503 and ended
            worker.ask = None

    def step_worker(self, worker: Worker) -> None:
        ask = worker.ask
        assert ask is not None
        call = worker.call
        if call is None:
            if self.rng.random() < self.faults.worker_stops:
                self.stats.workers_stopped += 1
                worker.work.close()
                worker.ask = None
                return
            group = self.groups[ask.group]
            owner = group.owner
            if ask.to is not None:
                owner = next((member for member in group.members if member.ledger is ask.to), None)
                if owner is None:
                    self.advance(worker, None, Unavailable("this owner's process is gone"))
                    return
            if owner is None or not self.running(owner):
                if self.rng.random() < 0.05:  # the worker's wait for an owner ran out
                    self.advance(worker, None, Unavailable(f"group {ask.group} has no owner"))
                return
            assert owner.ledger is not None
            try:
                reply = ask.submit(owner.ledger)
            except (Overloaded, StorageFailed) as error:
                self.advance(worker, None, Unavailable(str(error)))
                return
            worker.call = Call(owner, owner.ledger, reply, self.mono(), ask)
            return
        member = call.member
        if member.ledger is not call.ledger:  # the process it went to is gone
            self.advance(worker, None, Unavailable("the owner went away"))
            return
        reply = call.reply
        if not reply._done.is_set() or member.paused_until is not None:
            return
        assert member.replica is not None
        if reply.error is not None:
            self.advance(worker, None, Unavailable(reply.error))
        elif member.replica.confirmed(call.arrived):
            self.advance(worker, ask.read(call.ledger, _value(reply)))

    # -- the workload: the router's steps, one call at a time ------------------------------

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def setup(self, number: int) -> Work:
        """An asset's part, the group's wallets, money in each (retried until all answered)."""
        commands: list[Any] = [CreateAsset(code=ASSET, scale=2)]
        commands += [CreateWallet(wallet_id=wallet_id, owner_id="o", asset=ASSET, metadata=None, idempotency=None)
                     for wallet_id in self.wallets[number]]
        commands += [Transfer(transaction_id=f"dep-{wallet_id}", type=TransactionType.DEPOSIT, from_wallet_id=None,
                              to_wallet_id=wallet_id, amount=START, description=None, metadata=None,
                              idempotency=Idempotency(scope="admin", key=f"dep-{wallet_id}",
                                                      fingerprint=f"dep-{wallet_id}".encode()))
                     for wallet_id in self.wallets[number]]
        for command in commands:
            yield from self.until_answered(number, command)
        self.ready.add(number)

    def until_answered(self, number: int, command: Any) -> Work:
        while True:
            try:
                yield Ask(number, lambda ledger, c=command: self.submit_local(ledger, c))
                return
            except Unavailable:
                continue

    def submit_local(self, ledger: Ledger, command: Any) -> Reply:
        shards = len(ledger.shards)
        if isinstance(command, Transfer):
            return ledger.shards[shard_of(command.to_wallet_id, shards)].submit_transfer(command)
        if isinstance(command, CreateAsset):
            return ledger.shards[shard_of("treasury:" + command.code, shards)].submit_command(command)
        wallet_id = (command.wallet_id if isinstance(command, CreateWallet | SettleReservation)
                     else command.from_wallet_id if isinstance(command, ResolveHold) else command.to_wallet_id)
        return ledger.shards[shard_of(wallet_id, shards)].submit_command(command)

    def transfer(self, sender: int | None = None) -> Transfer:
        rng = self.rng
        ready = sorted(self.ready)
        sender = rng.choice(ready) if sender is None else sender
        receiver = rng.choice(ready) if rng.random() < 0.3 else rng.choice([g for g in ready if g != sender] or ready)
        from_wallet = rng.choice(self.wallets[sender])
        to_wallet = rng.choice([w for w in self.wallets[receiver] if w != from_wallet])
        amount = rng.choice([1, 7, 100, 2_500, 40_000, 250_000])  # the last two often refused
        key = self.next_id("k") if rng.random() < 0.7 else None
        return Transfer(transaction_id=self.next_id("tx"), type=TransactionType.TRANSFER, from_wallet_id=from_wallet,
                        to_wallet_id=to_wallet, amount=amount, description=None, metadata=None,
                        idempotency=None if key is None else Idempotency(scope="s", key=key, fingerprint=key.encode()))

    def request(self) -> Request:
        """A single transfer, a batch, or an atomic batch (its senders in one group or in
        several; its receivers anywhere)."""
        roll = self.rng.random()
        if roll < 0.6:
            return Request([self.transfer()])
        sender = self.rng.choice(sorted(self.ready))
        one_sender = roll < 0.8 and self.rng.random() < 0.6  # else an atomic batch's senders spread
        commands = [self.transfer(sender if one_sender else None) for _ in range(self.rng.randint(2, 4))]
        return Request(commands, batch=True, atomic=roll < 0.8)

    def client(self, request: Request) -> Work:
        """One request of a client, through a worker; unanswered, retried later with its keys."""
        if request.atomic:
            self.atomic_batches.append([(command.transaction_id, None if command.idempotency is None
                                         else command.idempotency.key, self.group_of(command.from_wallet_id))
                                        for command in request.commands])
        try:
            outcomes = yield from self.route(request)
        except (Unavailable, GeneratorExit):
            if any(command.idempotency is not None for command in request.commands):
                self.stats.unanswered += 1
                self.retry.append(request)
            raise
        self.answered(request, outcomes)

    def route(self, request: Request) -> Generator[Ask, Any, Any]:
        """``GroupRouter.transfer`` and ``transfer_batch``: the outcomes in request order (a
        ``BatchFailed`` for an atomic batch refused whole)."""
        commands = request.commands
        sides = [(self.group_of(command.from_wallet_id), self.group_of(command.to_wallet_id)) for command in commands]
        if not request.batch:
            (sender, receiver), = sides
            if sender == receiver:
                outcome = yield Ask(sender, lambda ledger: self.submit_local(ledger, commands[0]))
                return [outcome]
            return (yield from self.across(commands[0], sender, receiver))
        groups = {group for pair in sides for group in pair}
        if len(groups) == 1:
            group = groups.pop()
            if request.atomic:
                return (yield Ask(group, lambda ledger: _atomic_now(ledger, commands, None)))
            return (yield Ask(group, lambda ledger: ledger.submit_batch(commands)))
        if request.atomic:
            if len({sender for sender, _ in sides}) > 1:
                return (yield from self.atomic_of_groups(commands, sides))
            return (yield from self.atomic_across(commands, sides))
        outcomes: list[Any] = [None] * len(commands)
        by_sender: dict[int, list[int]] = {}
        for index, (sender, _) in enumerate(sides):
            by_sender.setdefault(sender, []).append(index)
        # The router sends the parts at once; here one after the other (one interleaving of it).
        for sender, indexes in by_sender.items():
            part = [commands[index] for index in indexes]
            if all(sides[index][1] == sender for index in indexes):
                results = yield Ask(sender, lambda ledger, part=part: ledger.submit_batch(part))
            else:
                results = yield from self.from_group(part, sender)
            for index, outcome in zip(indexes, results, strict=True):
                outcomes[index] = outcome
        return outcomes

    def group_of(self, wallet_id: str | None) -> int:
        assert wallet_id is not None
        return group_of(wallet_id, self.count)

    def across(self, command: Transfer, sender: int, receiver: int) -> Generator[Ask, Any, Any]:
        """``GroupRouter._across``: prepare at the receiver's group, commit at the sender's,
        settle the reservation (and the transit) for the worker's part."""
        reservation = ReserveCredit(
            transaction_id=command.transaction_id, to_wallet_id=command.to_wallet_id, amount=command.amount,
            from_wallet_id=command.from_wallet_id or "", from_group=sender, description=None, metadata=None)
        verdict = yield Ask(receiver, lambda ledger: self.submit_local(ledger, reservation),
                            lambda ledger, decision: ledger._verdict(reservation, decision))
        outcome = yield Ask(sender, lambda ledger: ledger._submit_remote(command.from_wallet_id or "", command, verdict))
        if verdict.failure is None:
            yield from self.settle(sender, receiver, [
                (command.transaction_id, command.to_wallet_id, isinstance(outcome, Committed))])
        if isinstance(outcome, Aborted):
            self.stats.aborted += 1
            raise Unavailable("aborted by the receiver's group")
        return [outcome]

    def receivers(self, commands: list[Transfer], sender: int) -> dict[int, list[int]]:
        """``GroupRouter._receivers``: the items of ``commands`` by the other group receiving them."""
        remote: dict[int, list[int]] = {}
        for index, command in enumerate(commands):
            receiver = self.group_of(command.to_wallet_id)
            if receiver != sender:
                remote.setdefault(receiver, []).append(index)
        return remote

    def prepare(self, commands: list[Transfer], sender: int,
                remote: dict[int, list[int]]) -> Generator[Ask, Any, list[Any]]:
        """``GroupRouter._prepare``: each receiving group reserves its items' credits (one call
        each); None for an item that stays in ``sender``."""
        credits: list[Any] = [None] * len(commands)
        for receiver, indexes in remote.items():
            reservations = [ReserveCredit(
                transaction_id=commands[index].transaction_id, to_wallet_id=commands[index].to_wallet_id,
                amount=commands[index].amount, from_wallet_id=commands[index].from_wallet_id or "", from_group=sender,
                description=None, metadata=None) for index in indexes]
            verdicts = yield Ask(receiver, lambda ledger, r=reservations: ledger.submit_commands(
                [(reservation.to_wallet_id, reservation) for reservation in r]),
                lambda ledger, decisions, r=reservations: [ledger._verdict(reservation, decision)
                                                           for reservation, decision in zip(r, decisions, strict=True)])
            for index, verdict in zip(indexes, verdicts, strict=True):
                credits[index] = verdict
        return credits

    def from_group(self, commands: list[Transfer], sender: int) -> Generator[Ask, Any, Any]:
        """``GroupRouter._from_group``: a sending group's part of a non-atomic batch, some of
        it to other groups: prepared at each receiving group, decided whole at the sender's
        (its items that stay too, a sender's items in request order), settled."""
        remote = self.receivers(commands, sender)
        credits = yield from self.prepare(commands, sender, remote)
        outcomes = yield Ask(sender, lambda ledger: ledger.submit_across(commands, credits))
        for receiver, indexes in remote.items():
            yield from self.settle(sender, receiver, [
                (commands[index].transaction_id, commands[index].to_wallet_id, isinstance(outcomes[index], Committed))
                for index in indexes if credits[index].failure is None])
        if any(isinstance(outcome, Aborted) for outcome in outcomes):
            self.stats.aborted += 1
            raise Unavailable("aborted by a receiver's group")
        return outcomes

    def atomic_across(self, commands: list[Transfer], sides: list[tuple[int, int]]) -> Generator[Ask, Any, Any]:
        """``GroupRouter._atomic_across``: every receiving group reserves its items' credits
        (one call each), the sending group decides the batch whole with those verdicts, each
        receiving group credits or releases."""
        sender = sides[0][0]
        assert all(pair[0] == sender for pair in sides)
        remote = self.receivers(commands, sender)
        credits = yield from self.prepare(commands, sender, remote)
        result = yield Ask(sender, lambda ledger: _atomic_now(ledger, commands, credits))
        for receiver, indexes in remote.items():
            yield from self.settle(sender, receiver, [
                (commands[index].transaction_id, commands[index].to_wallet_id,
                 isinstance(result, list) and isinstance(result[index], Committed))
                for index in indexes if credits[index].failure is None])
        if isinstance(result, list) and any(isinstance(outcome, Aborted) for outcome in result):
            self.stats.aborted += 1
            raise Unavailable("an atomic batch aborted by a receiver's group")
        return result

    def decide(self, coordinator: int, batch: str, committed: bool, to: Ledger | None = None) -> Generator[Ask, Any, Any]:
        """``Ledger.decide_batch`` at the coordinator: the decision that stands."""
        return (yield Ask(coordinator, lambda ledger: ledger.shards[0].submit_command(
            DecideBatch(batch=batch, committed=committed)), lambda ledger, _: ledger.directory.decided[batch], to=to))

    def atomic_of_groups(self, commands: list[Transfer], sides: list[tuple[int, int]]) -> Generator[Ask, Any, Any]:
        """``GroupRouter._atomic_of_groups``: the receiving groups reserve, every sending group
        prepares its part, the first item's group decides, every sending group posts or
        releases its part, the receiving groups credit or release."""
        coordinator = sides[0][0]
        batch = self.next_id("batch")
        parts: dict[int, list[int]] = {}
        for index, (sender, _) in enumerate(sides):
            parts.setdefault(sender, []).append(index)
        credits: list[Any] = [None] * len(commands)
        remotes: dict[int, dict[int, list[int]]] = {}
        for sender, indexes in parts.items():
            part = [commands[index] for index in indexes]
            remotes[sender] = self.receivers(part, sender)
            verdicts = yield from self.prepare(part, sender, remotes[sender])
            for index, verdict in zip(indexes, verdicts, strict=True):
                credits[index] = verdict
        prepared: dict[int, Any] = {}
        try:
            for sender, indexes in parts.items():
                prepared[sender] = yield Ask(sender, lambda ledger, ix=indexes: ledger.prepare_batch_now(
                    batch, coordinator, [commands[index] for index in ix], [credits[index] for index in ix]))
        except Unavailable:
            yield from self.abandon(batch, coordinator, commands, parts, credits, remotes)
            raise
        failure, aborted, holding = _prepared_parts(parts, prepared)
        committed = False
        if holding:
            committed = yield from self.decide(coordinator, batch, failure is None and not aborted)
        posted: dict[int, list[Any]] = {}
        unsettled: set[int] = set()
        for sender in holding:
            try:
                result = yield Ask(sender, lambda ledger: ledger.settle_batch_now(batch, committed))
            except Unavailable:
                unsettled.add(sender)
                continue
            if committed:
                if isinstance(result, BatchFailed):
                    unsettled.add(sender)
                else:
                    posted[sender] = result
        for sender, indexes in parts.items():
            if committed and sender in unsettled:
                continue  # those items stay reserved: the receivers' owners ask their sending group
            yield from self.settle_parts(sender, [commands[index] for index in indexes], remotes[sender],
                                         [credits[index] for index in indexes],
                                         _posted_at(prepared[sender], sender in posted))
        if failure is not None:
            return failure
        if aborted or (holding and not committed):
            self.stats.aborted += 1
            raise Unavailable("an atomic batch aborted before it was decided")
        if unsettled:
            raise Unavailable("committed; a group posts its part later")
        if holding:
            self.stats.atomic_groups += 1
        return _batch_outcomes(len(commands), parts, prepared, posted)

    def abandon(self, batch: str, coordinator: int, commands: list[Transfer], parts: dict[int, list[int]],
                credits: list[Any], remotes: dict[int, dict[int, list[int]]]) -> Generator[Ask, Any, None]:
        """``GroupRouter._abandon``."""
        try:
            if (yield from self.decide(coordinator, batch, False)):
                return
        except Unavailable:
            return
        for sender in parts:
            try:
                yield Ask(sender, lambda ledger: ledger.settle_batch_now(batch, False))
            except Unavailable:
                pass
        for sender, indexes in parts.items():
            yield from self.settle_parts(sender, [commands[index] for index in indexes], remotes[sender],
                                         [credits[index] for index in indexes], lambda index: False)

    def settle_parts(self, sender: int, commands: list[Transfer], remote: dict[int, list[int]], credits: list[Any],
                     committed: Callable[[int], bool]) -> Generator[Ask, Any, None]:
        """``GroupRouter._settle_all``, one receiving group after the other."""
        for receiver, indexes in remote.items():
            yield from self.settle(sender, receiver, [
                (commands[index].transaction_id, commands[index].to_wallet_id, committed(index))
                for index in indexes if credits[index].failure is None])

    def settle(self, sender: int, receiver: int, settle: list[tuple[str, str, bool]]) -> Generator[Ask, Any, None]:
        """``GroupRouter._settle``: the receiver's group credits or releases, then the sender's
        stops owing what was credited; a group that cannot leaves it to the owners."""
        if not settle:
            return
        try:
            yield Ask(receiver, lambda ledger: ledger.submit_commands([
                (wallet_id, SettleReservation(transaction_id=transaction_id, wallet_id=wallet_id, credit=credit))
                for transaction_id, wallet_id, credit in settle]))
            credited = tuple(transaction_id for transaction_id, _, credit in settle if credit)
            if credited:
                yield Ask(sender, lambda ledger: ledger.shards[0].submit_command(
                    SettleTransit(transaction_ids=credited)))
        except Unavailable:
            pass

    def answered(self, request: Request, outcomes: Any) -> None:
        self.stats.acknowledged += 1
        if isinstance(outcomes, BatchFailed):
            return
        if request.atomic and all(isinstance(outcome, Committed) for outcome in outcomes) and len(
                {self.group_of(command.to_wallet_id) for command in request.commands}) > 1:
            self.stats.atomic_across += 1
        for command, outcome in zip(request.commands, outcomes, strict=True):
            key = None if command.idempotency is None else command.idempotency.key
            sender = self.group_of(command.from_wallet_id)
            if isinstance(outcome, Committed):
                self.acks.append((sender, outcome.lsn, command.transaction_id))
                if self.group_of(command.to_wallet_id) != sender:
                    self.stats.across_acknowledged += 1
                    self.refundable.append(command)
                if key is not None:
                    if key in self.answered_by_key and self.answered_by_key[key] != command.transaction_id:
                        raise self.fail(f"key {key} executed as {command.transaction_id} after "
                                        f"{self.answered_by_key[key]}")
                    self.answered_by_key[key] = command.transaction_id
            elif isinstance(outcome, Duplicate):
                self.stats.duplicates += 1
                first = getattr(outcome.record.event, "transaction_id", None)
                if key is not None and first is not None:
                    known = self.answered_by_key.setdefault(key, first)
                    if known != first:
                        raise self.fail(f"key {key} answered {first}, first answered {known}")
            else:
                assert isinstance(outcome, Rejection), outcome

    def money_back(self) -> Work:
        """A refund of an acknowledged transfer between groups (of part of it, all of it, or what
        is left), a hold between groups, or a capture or void of one (each capture attempt under
        an id of its own), as ``GroupRouter.refund`` and ``resolve_hold`` run them. Unkeyed: an
        unanswered one is not retried."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.3 and self.refundable:
            original = rng.choice(self.refundable)
            yield from self.refund(original, rng.choice([None, 1, original.amount // 2 + 1, original.amount]))
        elif roll < 0.5 or not self.holds:
            sender = rng.choice(sorted(self.ready))
            command = replace(self.transfer(sender), transaction_id=self.next_id("h"), hold_timeout_s=3600,
                              idempotency=None)
            sender_group, receiver_group = self.group_of(command.from_wallet_id), self.group_of(command.to_wallet_id)
            if sender_group == receiver_group:
                return
            verdict = yield Ask(receiver_group, lambda ledger: ledger.submit_credit_check(command.to_wallet_id,
                                                                                        command.amount))
            created = yield Ask(sender_group, lambda ledger: ledger._submit_remote(
                command.from_wallet_id or "", command, verdict))
            if isinstance(created, Committed):
                self.acks.append((sender_group, created.lsn, None))
                self.holds.append(command)
        else:
            hold = rng.choice(self.holds)
            sender, receiver = self.group_of(hold.from_wallet_id), self.group_of(hold.to_wallet_id)
            if roll < 0.9:
                yield from self.capture(hold, sender, receiver, rng.choice([None, 1, hold.amount // 2 + 1]))
            else:
                void = ResolveHold(transaction_id=hold.transaction_id, capture=False, amount=None,
                                   from_wallet_id=hold.from_wallet_id or "", to_wallet_id=hold.to_wallet_id,
                                   owner_id=None, idempotency=None)
                yield Ask(sender, lambda ledger: self.submit_local(ledger, void))

    def refund(self, original: Transfer, amount: int | None) -> Work:
        refunding, receiving = self.group_of(original.to_wallet_id), self.group_of(original.from_wallet_id)
        command = Refund(transaction_id=self.next_id("rf"), refund_of=original.transaction_id,
                         from_wallet_id=original.to_wallet_id, to_wallet_id=original.from_wallet_id or "",
                         amount=amount, original_type=TransactionType.TRANSFER,
                         original_status=TransactionStatus.POSTED, original_amount=original.amount, description=None,
                         metadata=None, idempotency=None)
        if amount is None:
            command = replace(command, amount=(yield Ask(refunding, lambda ledger: ledger.submit_refund_remaining(
                original.transaction_id, original.to_wallet_id, original.amount))))
            if command.amount == 0:
                return
        reservation = ReserveCredit(transaction_id=command.transaction_id, to_wallet_id=command.to_wallet_id,
                                    amount=command.amount or 0, from_wallet_id=command.from_wallet_id,
                                    from_group=refunding, description=None, metadata=None,
                                    refund_of=original.transaction_id)
        verdict = yield Ask(receiving, lambda ledger: self.submit_local(ledger, reservation),
                            lambda ledger, decision: ledger._verdict(reservation, decision))
        outcome = yield Ask(refunding, lambda ledger: ledger._submit_remote(command.from_wallet_id, command, verdict))
        if verdict.failure is None:
            yield from self.settle(refunding, receiving, [(command.transaction_id, command.to_wallet_id,
                                                           isinstance(outcome, Committed))])
        if isinstance(outcome, Committed):
            self.acks.append((refunding, outcome.lsn, command.transaction_id))
            self.stats.refunds_across += 1

    def capture(self, hold: Transfer, sender: int, receiver: int, amount: int | None) -> Work:
        route = yield Ask(sender, lambda ledger: _answered(ledger.hold_route(hold.transaction_id)))
        if route is None:
            return  # resolved already: the router would find no group with it and ask for a void's answer
        from_wallet_id, to_wallet_id, held = route
        attempt = self.next_id("cap_")
        reservation = ReserveCredit(transaction_id=attempt, to_wallet_id=to_wallet_id,
                                    amount=held if amount is None else amount, from_wallet_id=from_wallet_id,
                                    from_group=sender, description=None, metadata=None,
                                    capture_of=hold.transaction_id)
        verdict = yield Ask(receiver, lambda ledger: self.submit_local(ledger, reservation),
                            lambda ledger, decision: ledger._verdict(reservation, decision))
        outcome = yield Ask(sender, lambda ledger: ledger.submit_capture_across(
            hold.transaction_id, reservation=attempt, amount=amount, owner_id=None, idempotency=None, credit=verdict))
        if verdict.failure is None:
            yield from self.settle(sender, receiver, [(attempt, to_wallet_id, isinstance(outcome, Committed))])
        if isinstance(outcome, Committed):
            self.acks.append((sender, outcome.lsn, hold.transaction_id))
            self.stats.captures_across += 1

    # -- the owners' background work (``server._crossing``), one call at a time -------------

    def crossing(self, number: int) -> Work:
        group = self.groups[number]
        crossing = group.crossing
        owner = group.owner
        if crossing is None or owner is None or not self.running(owner):  # a paused process runs nothing
            return
        ledger = owner.ledger
        owed = crossing.due_owed()
        due = crossing.due_reservations()
        done = []
        for transaction_id, wallet_id in owed:
            settle = SettleReservation(transaction_id=transaction_id, wallet_id=wallet_id, credit=True)
            try:
                yield Ask(group_of(wallet_id, self.count), lambda ledger, s=settle: self.submit_local(ledger, s))
            except Unavailable:
                continue
            done.append(transaction_id)
            self.stats.owed_credited += 1
        if done:  # to its own ledger, as ``Crossing`` does
            yield Ask(number, lambda ledger: ledger.shards[0].submit_command(SettleTransit(transaction_ids=tuple(done))),
                      to=ledger)
        for sender, reservations in due.items():
            ids = tuple(transaction_id for transaction_id, _ in reservations)
            try:
                answers = yield Ask(sender, lambda ledger, ids=ids: ledger.shards[0].submit_command(
                    AbortTransfers(transaction_ids=ids)), lambda ledger, _, ids=ids: resolved(ledger.directory, list(ids)))
            except Unavailable:
                continue
            for transaction_id, wallet_id in reservations:
                if transaction_id not in answers:
                    continue  # held in a batch not yet decided: asked again later
                settle = SettleReservation(transaction_id=transaction_id, wallet_id=wallet_id,
                                           credit=answers[transaction_id])
                yield Ask(number, lambda ledger, s=settle: self.submit_local(ledger, s), to=ledger)
                self.stats.reservations_resolved += 1
        for batch, coordinator in crossing.due_prepared():
            try:
                committed = yield from self.decide(coordinator, batch, False,
                                                   to=ledger if coordinator == number else None)
            except Unavailable:
                continue
            yield Ask(number, lambda ledger, b=batch, c=committed: ledger.settle_batch_now(b, c), to=ledger)
            self.stats.parts_ended += 1

    # -- one step --------------------------------------------------------------------------

    def step(self) -> None:
        rng = self.rng
        self.mono_us += rng.randint(0, 20_000)
        self.now_ns += rng.randint(0, 10**6)
        now = self.mono()
        self.beat(now)
        roll = rng.random()
        for number in range(self.count):
            if number not in self.ready:
                self.start(self.setup(number), ("setup", number))
        if roll < 0.25 and len(self.ready) == self.count:
            if self.retry and rng.random() < 0.3:
                retried = self.retry.pop(rng.randrange(len(self.retry)))
                self.start(self.client(Request([replace(command, transaction_id=self.next_id("tx"))
                                                for command in retried.commands], retried.batch, retried.atomic)))
            elif rng.random() < 0.3:
                self.start(self.money_back())
            else:
                self.start(self.client(self.request()))
        elif roll < 0.3:
            number = rng.randrange(self.count)
            self.start(self.crossing(number), ("crossing", number))
        for worker in list(self.workers):
            if rng.random() < 0.5:
                self.step_worker(worker)
        self.workers = [worker for worker in self.workers if worker.ask is not None]
        for group in self.groups:
            self.step_group(group)
        self.inject_faults(self.mono())

    def step_group(self, group: Group) -> None:
        rng = self.rng
        for member in group.members:
            if not self.running(member):
                continue
            ledger = member.ledger
            assert ledger is not None
            roll = rng.random()
            if roll < 0.5:
                shard = ledger.shards[rng.randrange(len(ledger.shards))]
                self.as_owner(group, member, partial(shard.drain, rng.choice([1, 5, 100])))
            elif roll < 0.8 and ledger.wal.last_lsn > ledger.wal.durable_lsn and (
                    member is not group.owner or group.stalled_until is None):
                self.as_owner(group, member, ledger.wal.commit_pending)
            elif roll < 0.9 and (self.unconfirmed(member) or member is not group.owner):
                # A read's proof of ownership; or one reaching a replaced owner through an old
                # connection (which it must find refused).
                self.stats.barriers += 1
                assert member.replica is not None
                self.as_owner(group, member, member.replica._append_barrier)
        for member in group.members:
            standby = member.standby
            if standby is not None and rng.random() < 0.5:
                try:
                    seq = standby.step()
                except MirrorError as error:
                    raise self.fail(f"{member.name}'s copy refused the stream: {error}") from None
                if seq is not None:
                    self.take_over(group, member, seq)

    def unconfirmed(self, member: Member) -> bool:
        assert member.replica is not None
        return any(worker.call is not None and worker.call.member is member and worker.call.reply._done.is_set()
                   and not member.replica.confirmed(worker.call.arrived) for worker in self.workers)

    def beat(self, now: float) -> None:
        for group in self.groups:
            if group.beats_lost_until is not None:
                continue
            for member in group.members:
                if member.replica is not None and member.paused_until is None and now >= member.next_beat:
                    member.replica.beat()
                    member.next_beat = now + 0.25

    def inject_faults(self, now: float) -> None:
        rng = self.rng
        faults = self.faults
        if self.unavailable_until is not None and now >= self.unavailable_until:
            self.unavailable_until = None
            self.set_unavailable(False)
        for group in self.groups:
            for member in group.members:
                if member.paused_until is not None and now >= member.paused_until:
                    member.paused_until = None
            if group.stalled_until is not None and now >= group.stalled_until:
                group.stalled_until = None
                owner = group.owner
                if owner is not None and owner.ledger is not None and rng.random() < 0.5:
                    # The append in flight failed: nothing of it is stored; the owner exits.
                    self.stats.stalls_failed += 1
                    self.set_unavailable(True)
                    self.as_owner(group, owner, owner.ledger.wal.commit_pending)
                    self.set_unavailable(self.unavailable_until is not None)
            elif group.owner is not None and rng.random() < faults.stall:
                self.stats.stalls += 1
                group.stalled_until = now + rng.choice([0.1, 0.5, 1.5])
            if group.beats_lost_until is not None and now >= group.beats_lost_until:
                group.beats_lost_until = None
            owner = group.owner
            if owner is not None and rng.random() < faults.crash:
                self.stats.owner_crashes += 1
                self.end_owner(group, owner)
                self.check()
            elif owner is not None and owner.paused_until is None and rng.random() < faults.pause:
                self.stats.pauses += 1
                owner.paused_until = now + rng.choice([0.1, 1.5, 3.0]) * self.takeover_after_s
            if group.beats_lost_until is None and rng.random() < faults.heartbeats_lost:
                self.stats.heartbeats_lost += 1
                group.beats_lost_until = now + rng.choice([0.5, 1.5, 3.0]) * self.takeover_after_s
            standbys = [member for member in group.members if member.standby is not None]
            if standbys and rng.random() < faults.standby_restart:
                self.stats.standby_restarts += 1
                member = rng.choice(standbys)
                member.stop_standby(self.stream, group.number)
                self.start_standby(group, member)
        if not self.lose_next_ack and rng.random() < faults.lost_ack:
            self.lose_next_ack = True
        if self.unavailable_until is None and rng.random() < faults.unavailable:
            self.stats.unavailable += 1
            self.unavailable_until = now + rng.choice([0.05, 0.5, 3.0])
            self.set_unavailable(True)
            self.check()

    # -- the oracle ------------------------------------------------------------------------

    def messages(self, number: int) -> list[StoredMessage]:
        return self.stream.streams[stream_name(number)]

    def stream_last_lsn(self, number: int) -> int:
        for message in reversed(self.messages(number)):
            if message.headers[KIND] == "frames":
                return all_frames_of(message.data)[-1]
        return 0

    def replay(self, number: int, name: str, until_lsn: int | None = None) -> Path:
        directory = self.root / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(mode=0o700)
        try:
            write_frames(self.messages(number), directory, until_lsn)
        except MirrorError as error:
            raise self.fail(f"group {number}: the stream's frames do not make one log: {error}") from None
        return directory

    def check(self) -> None:
        self.stats.checks += 1
        records: list[dict[int, Any]] = []
        transit: dict[str, int] = {}
        for group in self.groups:
            error = epoch_error(self.messages(group.number), group.winners, group.number)
            if error is not None:
                raise self.fail(f"group {group.number}: {error}")
            directory = self.replay(group.number, "replay")
            by_lsn = {frame.lsn: decode_event(frame.payload) for frame in all_frames(directory / "wal")}
            records.append(by_lsn)
            replayed = recover(directory, project_history=False)
            try:
                state = replayed.state
                for asset, amount in state.directory.transit.items():
                    transit[asset] = transit.get(asset, 0) + amount
                self.compare(group, digest_state(state), max(by_lsn, default=0))
            finally:
                replayed.close()
        self.check_acks(records)
        self.check_between(records, transit)

    def compare(self, group: Group, replayed: str, last: int) -> None:
        """Oracle 3 for each live owner of the group with nothing unreplicated."""
        for member in group.members:
            ledger = member.ledger
            if (ledger is None or ledger.wal.last_lsn != ledger.wal.durable_lsn
                    or not all(shard.idle() for shard in ledger.shards)):
                continue
            self.stats.compared += 1
            ledger.check_invariants()
            if ledger.wal.durable_lsn == last:
                expected = replayed
            elif member is group.owner or ledger.wal.durable_lsn > last:
                raise self.fail(f"{member.name} has LSN {ledger.wal.durable_lsn} replicated, the stream {last}")
            else:
                prefix = recover(self.replay(group.number, "prefix", ledger.wal.durable_lsn), project_history=False)
                try:
                    expected = digest_state(prefix.state)
                finally:
                    prefix.close()
            if ledger.digest() != expected:
                raise self.fail(f"{member.name}'s state differs from a replay of group {group.number}'s stream "
                                f"to LSN {ledger.wal.durable_lsn}")

    def check_acks(self, records: list[dict[int, Any]]) -> None:
        """Oracle 1."""
        for number, lsn, transaction_id in self.acks:
            event = records[number].get(lsn)
            if event is None:
                raise self.fail(f"group {number}: LSN {lsn}, acknowledged, is not in the stream")
            ids = {move.transaction_id for move in transfers_of(event)}
            if isinstance(event, HoldCaptured | HoldVoided):
                ids.add(event.transaction_id)
            if transaction_id is not None and transaction_id not in ids:
                raise self.fail(f"group {number}: LSN {lsn} does not hold {transaction_id}, acknowledged there")

    def check_between(self, records: list[dict[int, Any]], transit: dict[str, int]) -> None:
        """Oracles 4 and 5 over every group's stream."""
        committed: dict[str, tuple[str, int]] = {}  # between groups: id -> (receiving wallet, amount)
        keys: dict[str, str] = {}
        aborted: set[str] = set()
        credited: dict[str, int] = {}
        in_transit: dict[str, int] = {}
        located: dict[str, tuple[int, int]] = {}  # every posted transfer: id -> (group, LSN)
        refunded: dict[str, int] = {}
        resolved: set[str] = set()  # holds captured or voided
        parts: dict[tuple[int, str], BatchPrepared] = {}  # (group, batch) -> its part held there
        ended: dict[tuple[int, str], bool] = {}  # -> posted (True) or released
        decided: dict[str, tuple[int, bool]] = {}  # batch -> (coordinating group, committed)
        for number, by_lsn in enumerate(records):
            for lsn, event in by_lsn.items():
                if isinstance(event, HoldCaptured | HoldVoided):
                    if event.transaction_id in resolved:
                        raise self.fail(f"hold {event.transaction_id} resolved twice")
                    resolved.add(event.transaction_id)
                if isinstance(event, HoldCaptured) and event.reservation is not None:
                    # Captured to another group: owed under the attempt's id.
                    committed[event.reservation] = (event.to_wallet_id, event.amount)
                    in_transit[event.asset] = in_transit.get(event.asset, 0) + event.amount
                for move in transfers_of(event):
                    located[move.transaction_id] = (number, lsn)
                    if isinstance(move, Refunded):
                        refunded[move.refund_of] = refunded.get(move.refund_of, 0) + move.amount
                        if refunded[move.refund_of] > move.original_amount:
                            raise self.fail(f"refunds of {move.refund_of} add up to {refunded[move.refund_of]}, "
                                            f"past its {move.original_amount}")
                    key = None if move.idempotency is None else move.idempotency.key
                    if key is not None and not key.startswith("dep-"):
                        if key in keys:
                            raise self.fail(f"key {key} executed twice: {keys[key]} and {move.transaction_id}")
                        keys[key] = move.transaction_id
                    if not is_treasury(move.to_wallet_id) and group_of(move.to_wallet_id, self.count) != number:
                        if move.transaction_id in aborted:
                            raise self.fail(f"group {number} committed {move.transaction_id} after aborting it")
                        committed[move.transaction_id] = (move.to_wallet_id, move.amount)
                        in_transit[move.asset] = in_transit.get(move.asset, 0) + move.amount
                if isinstance(event, TransfersAborted):
                    aborted.update(event.transaction_ids)
                # Batches of several sending groups: each part held once, ended once.
                if isinstance(event, BatchPrepared):
                    if (number, event.batch) in parts:
                        raise self.fail(f"group {number} prepared batch {event.batch} twice")
                    parts[number, event.batch] = event
                elif isinstance(event, BatchReleased) or (isinstance(event, TransfersPosted) and event.settles):
                    batch = event.batch if isinstance(event, BatchReleased) else event.settles
                    assert batch is not None
                    if (number, batch) not in parts or (number, batch) in ended:
                        raise self.fail(f"group {number} ended batch {batch}, not held there")
                    ended[number, batch] = isinstance(event, TransfersPosted)
                    if isinstance(event, BatchReleased):
                        aborted.update(row[0] for row in parts[number, batch].rows)
                elif isinstance(event, BatchDecided):
                    if event.batch in decided:
                        raise self.fail(f"batch {event.batch} decided twice")
                    decided[event.batch] = (number, event.committed)
        for (number, batch), posted in ended.items():
            # A part is posted only if its coordinator decided the batch committed, and
            # released only if it decided it not.
            if decided.get(batch) != (parts[number, batch].coordinator, posted):
                raise self.fail(f"group {number} {'posted' if posted else 'released'} batch {batch}; its "
                                f"coordinator decided {decided.get(batch)}")
        held = {row[0] for key, part in parts.items() if key not in ended for row in part.rows}
        for number, by_lsn in enumerate(records):
            for event in by_lsn.values():
                if isinstance(event, ReservationSettled) and event.credited:
                    if committed.get(event.transaction_id) != (event.wallet_id, event.amount):
                        raise self.fail(f"group {number} credited {event.transaction_id} ({event.amount} to "
                                        f"{event.wallet_id}), which no sender's stream committed so")
                    credited[event.transaction_id] = credited.get(event.transaction_id, 0) + 1
                    if credited[event.transaction_id] > 1:
                        raise self.fail(f"group {number} credited {event.transaction_id} twice")
                    in_transit[event.asset] -= event.amount
                elif isinstance(event, CreditReserved) and event.from_group == number:
                    raise self.fail(f"group {number} reserved {event.transaction_id} from itself")
        for batch in self.atomic_batches:
            # Each sending group's items in one record or nowhere, and every group's or none
            # (while another group still holds its part: that one not yet). An item whose key
            # another transaction executed (a retry's) is a duplicate, posted before.
            places: dict[int, set[Any]] = {}
            for transaction_id, key, sender in batch:
                if key is None or keys.get(key, transaction_id) == transaction_id:
                    places.setdefault(sender, set()).add(located.get(transaction_id))
            posted = {sender for sender, where in places.items() if where != {None}}
            if any(len(where) > 1 for where in places.values()) or (posted and any(
                    sender not in posted and not any(transaction_id in held for transaction_id, _, g in batch
                                                     if g == sender) for sender in places)):
                raise self.fail(f"an atomic batch is posted in part, or in several records: {batch} at {places}")
        for asset in set(transit) | set(in_transit):
            if transit.get(asset, 0) != in_transit.get(asset, 0):
                raise self.fail(f"{asset}: the transit accounts hold {transit.get(asset, 0)}, the streams have "
                                f"{in_transit.get(asset, 0)} committed and not credited")
        self.committed, self.credited = committed, credited

    # -- the run ---------------------------------------------------------------------------

    def finish(self) -> None:
        """Faults stop, workers finish or give up; the owners' background work runs until
        nothing is owed or reserved; then the whole oracle and oracle 6."""
        self.faults = GroupsFaults(crash=0, pause=0, lost_ack=0, unavailable=0, standby_restart=0,
                                   heartbeats_lost=0, worker_stops=0, stall=0)
        self.lose_next_ack = False
        self.set_unavailable(False)
        self.unavailable_until = None
        for group in self.groups:
            group.beats_lost_until = group.stalled_until = None
            for member in group.members:
                member.paused_until = None
        self.retry.clear()
        for _ in range(20_000):
            settled = all(
                group.owner is not None and group.owner.ledger is not None
                and not any(m.ledger is not None and m is not group.owner for m in group.members)
                and not group.owner.ledger.owed() and not group.owner.ledger.all_reservations()
                and not group.owner.ledger.directory.prepared
                and group.owner.ledger.wal.last_lsn == group.owner.ledger.wal.durable_lsn
                for group in self.groups)
            if settled and not self.workers and len(self.ready) == self.count:
                break
            self.mono_us += 50_000
            self.now_ns += 50_000_000
            if self.rng.random() < 0.2:
                number = self.rng.randrange(self.count)
                self.start(self.crossing(number), ("crossing", number))
            self.step_workers_and_groups()
        else:
            raise self.fail(f"the groups did not settle at the end: {self.unsettled()}")
        self.check()
        for transaction_id in self.committed:
            if self.credited.get(transaction_id) != 1:
                raise self.fail(f"{transaction_id} was committed and credited {self.credited.get(transaction_id, 0)} "
                                "times at the end")
        # Each group's transit account holds what it sent minus what it received; together, zero.
        transit = sum(group.owner.ledger.directory.transit.get(ASSET, 0) for group in self.groups
                      if group.owner is not None and group.owner.ledger is not None)
        if transit != 0:
            raise self.fail(f"the transit accounts hold {transit} together at the end")

    def unsettled(self) -> str:
        parts = [f"{len(self.workers)} workers, groups ready {sorted(self.ready)}"]
        for group in self.groups:
            owner = group.owner
            ledger = None if owner is None else owner.ledger
            parts.append(f"group {group.number}: owner {None if owner is None else owner.name}, "
                         f"others {[m.name for m in group.members if m.ledger is not None and m is not owner]}"
                         + ("" if ledger is None else f", owed {ledger.owed()}, reserved "
                            f"{[r.transaction_id for r in ledger.all_reservations()]}, "
                            f"LSN {ledger.wal.durable_lsn}/{ledger.wal.last_lsn}"))
        return "; ".join(parts)

    def step_workers_and_groups(self) -> None:
        now = self.mono()
        self.beat(now)
        for worker in list(self.workers):
            self.step_worker(worker)
        self.workers = [worker for worker in self.workers if worker.ask is not None]
        for group in self.groups:
            self.step_group(group)
        for group in self.groups:
            for member in group.members:
                if member.paused_until is not None and now >= member.paused_until:
                    member.paused_until = None

    def run(self) -> GroupsStats:
        try:
            for group in self.groups:
                for member in group.members:
                    self.start_standby(group, member)
            for _ in range(self.steps):
                self.stats.steps += 1
                self.step()
            self.finish()
            return self.stats
        finally:
            for group in self.groups:
                for member in group.members:
                    member.end()
            shutil.rmtree(self.root, ignore_errors=True)




def _value(reply: Reply | BatchReply) -> Any:
    if isinstance(reply, BatchReply):
        return reply.failed if reply.failed is not None else reply.results
    return reply.value


def _answered(value: Any) -> Reply:
    """A reply answered at once from the owner's memory (a read the port answers without the
    actors); it still waits for the owner's confirmation, as every reply of the port does."""
    reply = Reply()
    reply.value = value
    reply._wake(None)
    return reply


def _atomic_now(ledger: Ledger, commands: list[Transfer], credits: list[Any] | None) -> BatchReply:
    """``Ledger.transfer_batch(..., atomic=True)`` at once: no shard is in the middle of a step
    between two steps of the simulation (what the pause gives the lead shard in the server)."""
    ledger.wal.check_writable()
    return ledger.commit_atomic_now(commands, credits)
