"""The deterministic simulation of cluster mode (ADR 0013, issue 14): one ledger group of 2-3
members over one in-memory stream (``wal.testing.FakeStream``: JetStream's fence and duplicate
window), driven by one seed, single-threaded and exactly reproducible.

The owner is a real ``Ledger`` (built as ``sim.Simulation`` builds it, with its workload of
every command type and client retries with idempotency keys) whose WAL's ``replicate`` hook is a
real ``server._member.Replica`` publishing each group commit to the stream, fenced on the
previous sequence. The standbys are real ``Standby`` objects copying the stream into their own
directory (``wal.Mirror``) one ``step`` at a time; a takeover is what ``run_member`` does: the
fenced epoch append, then ``ledger.recover`` of the copy. Time is simulated: the members' clock
(heartbeats, the takeover delay, reads' confirmation) is the simulation's, advanced by the seed,
and the ledger's wall clock is the one ``sim.Simulation`` keeps. Replies reach clients only when
``Replica.confirmed`` says an append sent after they arrived was accepted (the port's
``confirm``; a barrier is appended when nothing else was).

Faults, chosen by the seed:

- owner crash (SIGKILL): its process and its directory vanish; it comes back as a standby with
  an empty copy; a standby takes over after the takeover delay;
- owner pause (SIGSTOP): it is not stepped (nor beats) for a while, short or past the takeover
  delay; stepped again after a takeover, its next append (a group commit, or a read's barrier)
  must be refused by the fence and it must exit without answering anything more;
- lost ack: an append is stored, but its publisher gets ``LogUnavailable`` (an owner exits; the
  change is not acknowledged and may or may not survive; its client retries with its key);
- the stream unavailable for a while (leader loss): appends and reads raise ``LogUnavailable``;
- standby restart: it copies the stream again from an empty directory;
- heartbeats lost (the owner cut from the standbys, not from the stream): a standby takes over
  from an owner that keeps working; its next append must be refused.

The oracle, after every fault, at every takeover and at the end:

1. every acknowledged command is in the stream's frames at the LSN it was acknowledged with;
2. no two owners ever both append: every frames or barrier message after epoch record E was
   published by E's owner (message ids carry the epoch; E's record names the member the
   simulation saw win it), epochs only grow, so nothing of epoch e follows record e+1;
3. a replay of the whole stream (its frames written into a fresh directory, then
   ``ledger.recover``) equals the state of every live owner that has nothing unreplicated (a
   replaced owner: the stream up to its last commit), and the invariants hold; at a takeover and
   at the end every check of ``sim.Simulation.check_recovered`` runs too (keys, refunds,
   alerts, limits, atomic batches);
4. money is conserved: per asset, the wallets' balances add up to what came in from the
   treasury minus what went back to it, counted record by record over the stream;
5. no idempotency key executed twice (``check_recovered``, over the whole stream).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgpack

import wal
from ledger import (
    HoldCaptured,
    Ledger,
    decode_event,
    digest_state,
    is_treasury,
    recover,
)
from server._member import KIND, Replica, Standby, heartbeat_subject, log_subject, stream_name
from tests.sim.sim import Pending, Simulation, SimulationFailed, Stats, transfers_of
from wal import Mirror, MirrorError
from wal.testing import FakeStream, StoredMessage, all_frames

GROUP = 0
STREAM = stream_name(GROUP)


class OwnerExited(Exception):
    """The ``exit`` of a member's ``Replica``: the process ends here (``os._exit`` in a real one)."""


@dataclass
class ClusterFaults:
    """Chances per step (the members' clock advances up to 20 ms a step)."""

    crash: float = 0.001
    pause: float = 0.001
    lost_ack: float = 0.0015
    unavailable: float = 0.0008
    standby_restart: float = 0.001
    heartbeats_lost: float = 0.0008


@dataclass
class ClusterStats(Stats):
    members: int = 0
    takeovers: int = 0
    owner_crashes: int = 0
    pauses: int = 0
    paused_past_takeover: int = 0
    fenced_after_pause: int = 0  # a paused owner, stepped again, refused by the fence
    fenced: int = 0  # every owner exit on a refused append
    lost_acks: int = 0
    unavailable: int = 0  # windows of leader loss
    exits_unavailable: int = 0  # owner exits on LogUnavailable (lost acks and leader loss)
    standby_restarts: int = 0
    heartbeats_lost: int = 0  # windows in which the owner runs but no standby hears it
    fenced_running: int = 0  # an owner that was never paused, refused by the fence
    barriers: int = 0
    stream_messages: int = 0
    checks: int = 0
    compared: int = 0  # live owners' states compared with a replay of the stream
    answered_by_replaced: int = 0  # replies of a replaced owner that its confirmation allowed


@dataclass
class Member:
    name: str
    directory: Path
    standby: Standby | None = None
    ledger: Ledger | None = None
    replica: Replica | None = None
    recovered: Any = None
    pending: list[Pending] = field(default_factory=list)  # a replaced owner's (the current's: Simulation.pending)
    paused_until: float | None = None
    replaced_while_paused: bool = False
    next_beat: float = 0.0
    starts: int = 0

    # What a member process does, for both simulations (``groups_sim`` has several groups).

    def start_standby(self, stream: FakeStream, group: int, *, takeover_after_s: float,
                      clock: Callable[[], float]) -> None:
        """The process starts: an empty copy, then tail the stream."""
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(mode=0o700, parents=True)
        self.starts += 1
        self.standby = Standby(stream.client(), group=group, data_dir=self.directory, node=self.name, status=quiet,
                               takeover_after_s=takeover_after_s, clock=clock, sleep=lambda seconds: None)
        self.standby.listen()

    def stop_standby(self, stream: FakeStream, group: int) -> None:
        standby = self.standby
        assert standby is not None
        stream.listeners[heartbeat_subject(group)].remove(standby._on_heartbeat)
        standby.mirror.close()
        self.standby = None

    def won(self, stream: FakeStream, group: int, seq: int, *, clock: Callable[[], float]) -> tuple[int, Replica]:
        """``run_member`` after ``Standby.run`` returned ``seq``: the epoch won, and the
        Replica that publishes the owner's group commits (the ledger is the caller's)."""
        standby = self.standby
        assert standby is not None
        epoch, copied = standby.epoch, standby.mirror.last_lsn
        self.stop_standby(stream, group)
        replica = Replica(stream.client(), group=group, epoch=epoch, last_seq=seq, node=self.name, status=quiet,
                          exit=_exit, clock=clock)
        replica.lsn = copied
        return epoch, replica

    def end(self) -> None:
        """The process is gone, or the run ends: what it held is let go."""
        if self.recovered is not None:
            self.recovered.close()
        if self.ledger is not None:
            self.ledger.wal.release()
        if self.standby is not None:
            self.standby.mirror.close()
        self.ledger = self.replica = self.recovered = self.standby = None
        self.paused_until = None
        self.replaced_while_paused = False


class StreamFaults:
    """The stream's two faults, for both simulations: an ack lost (the next append is stored,
    its publisher told ``LogUnavailable``) and the stream unavailable (leader loss)."""

    stream: FakeStream
    stats: Any  # with ``lost_acks``
    lose_next_ack: bool = False

    def _lose_ack(self, message: StoredMessage) -> bool:
        if self.lose_next_ack:
            self.lose_next_ack = False
            self.stats.lost_acks += 1
            return True
        return False

    def set_unavailable(self, unavailable: bool) -> None:
        self.stream.unavailable = self.stream.reads_unavailable = unavailable


def quiet(**status: Any) -> None:
    pass


def _exit(message: str) -> None:
    raise OwnerExited(message)


class ClusterSimulation(Simulation, StreamFaults):
    def __init__(self, seed: int, *, steps: int, faults: ClusterFaults | None = None,
                 members: int | None = None) -> None:
        super().__init__(seed, steps=steps)
        self.cluster_faults = faults or ClusterFaults()
        self.stats: ClusterStats = ClusterStats()
        self.stream = FakeStream()
        self.stream.idle_wait = lambda seconds: None
        self.stream.lose_ack = self._lose_ack
        self.client = self.stream.client()
        self.client.ensure_stream(STREAM, log_subject(GROUP))
        self.mono_us = 0
        self.takeover_after_s = self.rng.choice([0.5, 1.0, 2.0])
        count = members or self.rng.choice([2, 3])
        self.stats.members = count
        self.members = [Member(name=f"m{index}", directory=self.root / f"m{index}") for index in range(count)]
        self.owner: Member | None = None  # the member clients reach (the newest epoch's owner)
        self.winners: dict[int, str] = {}  # epoch -> the member the simulation saw win it
        self.lose_next_ack = False
        self.unavailable_until: float | None = None
        self.beats_lost_until: float | None = None

    def fail(self, message: str) -> SimulationFailed:
        return SimulationFailed(f"cluster seed {self.seed}: {message} "
                                f"(replay with SIM_SEED={self.seed} SIM_KIND=cluster make sim)")

    # -- the members' clock ----------------------------------------------------------------

    def mono(self) -> float:
        """Seconds, strictly increasing at every reading (so an append sent after a call
        arrived has a later time), advanced by the seed between steps."""
        self.mono_us += 1
        return self.mono_us / 1e6

    # -- members ---------------------------------------------------------------------------

    def start_standby(self, member: Member) -> None:
        member.start_standby(self.stream, GROUP, takeover_after_s=self.takeover_after_s, clock=self.mono)

    def take_over(self, member: Member, seq: int) -> None:
        """``run_member`` after ``Standby.run`` returned: a Replica, recovery of the copy, the
        ledger with the Replica as its WAL's ``replicate``."""
        self.stats.takeovers += 1
        epoch, replica = member.won(self.stream, GROUP, seq, clock=self.mono)
        self.winners[epoch] = member.name
        previous = self.owner
        if previous is not None:
            # Still a process (paused, or about to learn it was replaced): its replies wait with it.
            assert previous.ledger is not None
            previous.pending = self.pending
            if previous.paused_until is not None:
                previous.replaced_while_paused = True
                self.stats.paused_past_takeover += 1
        self.pending = []
        recovered = recover(member.directory)
        ledger = self.new_ledger(recovered, member.directory, replicate=replica.replicate)
        member.ledger, member.replica, member.recovered = ledger, replica, recovered
        member.next_beat = 0.0
        self.owner = member
        self.ledger, self.recovered, self.data = ledger, recovered, member.directory
        if ledger.wal.next_lsn - 1 != self.stream_last_lsn():
            raise self.fail(f"{member.name} took over with LSN {ledger.wal.next_lsn - 1}, the stream has "
                            f"{self.stream_last_lsn()}")
        self.check()
        replica.serving()
        self.serve()  # with the whole of sim.Simulation's oracle, over the copy

    def end_owner(self, member: Member) -> None:
        """The owner's process is gone (killed, or exited): nothing it had not answered is
        answered; its clients retry. It comes back as a standby."""
        pending = self.pending if member is self.owner else member.pending
        self.unanswered.extend(item.command for item in pending)
        member.pending = []
        if member is self.owner:
            self.pending = []
            self.owner = None
            self.ledger = None
            self.recovered = None
        member.end()
        self.start_standby(member)

    def as_owner(self, member: Member, action: Any) -> None:
        """Runs what may append for ``member``; an ``OwnerExited`` ends its process."""
        try:
            action()
        except OwnerExited as exit:
            message = str(exit)
            if "newer owner" in message:
                self.stats.fenced += 1
                if member.replaced_while_paused:
                    self.stats.fenced_after_pause += 1
                else:
                    self.stats.fenced_running += 1
            else:
                self.stats.exits_unavailable += 1
            self.end_owner(member)
            self.check()

    def barrier(self, member: Member) -> None:
        assert member.replica is not None
        self.stats.barriers += 1
        member.replica._append_barrier()

    def unconfirmed(self, member: Member, pending: list[Pending]) -> bool:
        assert member.replica is not None
        return any(item.reply._done.is_set() and not member.replica.confirmed(item.arrived) for item in pending)

    # -- the workload, through the owner ---------------------------------------------------

    def submit(self, command: Any) -> None:
        count = len(self.pending)
        super().submit(command)
        arrived = self.mono()
        for item in self.pending[count:]:
            item.arrived = arrived

    def settle(self) -> None:
        """Answers clients: a finished reply of a running owner once its confirmation holds."""
        current = self.pending
        for member in self.members:
            if member.ledger is None or member.paused_until is not None:
                continue
            replica = member.replica
            assert replica is not None
            pending = current if member is self.owner else member.pending
            held = [item for item in pending if item.reply._done.is_set() and item.reply.error is None
                    and not replica.confirmed(item.arrived)]
            waiting = {id(item) for item in held}
            self.pending = [item for item in pending if id(item) not in waiting]
            answered = self.stats.acknowledged + self.stats.rejected
            super().settle()
            self.pending.extend(held)
            if member is not self.owner:
                # Confirmed by an accepted append sent after they arrived (reads of a committed
                # state, or commits accepted before the takeover): allowed, and counted.
                self.stats.answered_by_replaced += self.stats.acknowledged + self.stats.rejected - answered
            if member is self.owner:
                current = self.pending
            else:
                member.pending = self.pending
        self.pending = current

    # -- one step --------------------------------------------------------------------------

    def step(self) -> None:
        rng = self.rng
        self.mono_us += rng.randint(0, 20_000)
        now = self.mono()
        self.beat(now)
        roll = rng.random()
        owner = self.owner
        if roll < 0.75:
            if owner is not None and owner.paused_until is None:
                ledger = owner.ledger
                assert ledger is not None
                self.as_owner(owner, lambda: self.act(ledger, rng.random()))
        elif roll < 0.85:
            # Reads and answers without an append of their own: a barrier confirms them.
            if owner is not None and owner.paused_until is None and self.unconfirmed(owner, self.pending):
                self.as_owner(owner, partial(self.barrier, owner))
        else:
            for member in self.members:
                if member.ledger is not None and member is not owner and member.paused_until is None:
                    self.step_replaced(member)
        self.now_ns += rng.randint(0, 10**6)
        for member in self.members:
            standby = member.standby
            if standby is not None and rng.random() < 0.5:
                try:
                    seq = standby.step()
                except MirrorError as error:  # the real standby's check: the stream forked
                    raise self.fail(f"{member.name}'s copy refused the stream: {error}") from None
                if seq is not None:
                    self.take_over(member, seq)
        self.settle()
        self.inject_faults(self.mono())

    def step_replaced(self, member: Member) -> None:
        """A replaced owner that runs again: it finishes what it was doing (its shards, its
        group commit) or a read reaches it through an old connection (a barrier)."""
        ledger = member.ledger
        assert ledger is not None
        roll = self.rng.random()
        if roll < 0.4:
            self.as_owner(member, lambda: ledger.shards[self.rng.randrange(len(ledger.shards))].drain(100))
        elif roll < 0.8 and ledger.wal.last_lsn > ledger.wal.durable_lsn:
            self.as_owner(member, ledger.wal.commit_pending)
        else:
            self.as_owner(member, partial(self.barrier, member))

    def beat(self, now: float) -> None:
        if self.beats_lost_until is not None:
            return  # the owner is cut from the standbys, not from the stream
        for member in self.members:
            replica = member.replica
            if replica is not None and member.paused_until is None and now >= member.next_beat:
                replica.beat()
                member.next_beat = now + 0.25

    def inject_faults(self, now: float) -> None:
        rng = self.rng
        faults = self.cluster_faults
        for member in self.members:  # pauses end
            if member.paused_until is not None and now >= member.paused_until:
                member.paused_until = None
        if self.unavailable_until is not None and now >= self.unavailable_until:
            self.unavailable_until = None
            self.set_unavailable(False)
        if self.beats_lost_until is not None and now >= self.beats_lost_until:
            self.beats_lost_until = None
        owner = self.owner
        if owner is not None and rng.random() < faults.crash:
            self.stats.owner_crashes += 1
            self.end_owner(owner)
            self.check()
        elif owner is not None and owner.paused_until is None and rng.random() < faults.pause:
            self.stats.pauses += 1
            owner.paused_until = now + rng.choice([0.1, 1.5, 3.0]) * self.takeover_after_s
            self.check()
        if not self.lose_next_ack and rng.random() < faults.lost_ack:
            self.lose_next_ack = True
        if self.unavailable_until is None and rng.random() < faults.unavailable:
            self.stats.unavailable += 1
            self.unavailable_until = now + rng.choice([0.05, 0.5, 3.0])
            self.set_unavailable(True)
            self.check()
        if self.beats_lost_until is None and rng.random() < faults.heartbeats_lost:
            self.stats.heartbeats_lost += 1
            self.beats_lost_until = now + rng.choice([0.5, 1.5, 3.0]) * self.takeover_after_s
            self.check()
        standbys = [member for member in self.members if member.standby is not None]
        if standbys and rng.random() < faults.standby_restart:
            self.stats.standby_restarts += 1
            member = rng.choice(standbys)
            member.stop_standby(self.stream, GROUP)
            self.start_standby(member)
            self.check()

    # -- the oracle ------------------------------------------------------------------------

    def messages(self) -> list[StoredMessage]:
        return self.stream.streams[STREAM]

    def stream_last_lsn(self) -> int:
        for message in reversed(self.messages()):
            if message.headers[KIND] == "frames":
                return all_frames_of(message.data)[-1]
        return 0

    def check_epochs(self) -> None:
        """Oracle 2 over the whole stream."""
        error = epoch_error(self.messages(), self.winners, GROUP)
        if error is not None:
            raise self.fail(error)

    def replay(self, name: str, until_lsn: int | None = None) -> Path:
        """The stream's frames (up to ``until_lsn``) written into a fresh data directory."""
        directory = self.root / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(mode=0o700)
        try:
            write_frames(self.messages(), directory, until_lsn)
        except MirrorError as error:
            raise self.fail(f"the stream's frames do not make one log: {error}") from None
        return directory

    def check(self) -> None:
        """Oracles 1-4 against the stream (5 and the rest at takeovers and at the end)."""
        self.stats.checks += 1
        self.stats.stream_messages = len(self.messages())
        self.check_epochs()
        directory = self.replay("replay")
        by_lsn = {frame.lsn: decode_event(frame.payload) for frame in all_frames(directory / "wal")}
        self.check_acks(by_lsn, "from the stream")
        replayed = recover(directory, project_history=False)
        self.check_money(replayed.state, by_lsn)
        last = max(by_lsn, default=0)
        for member in self.members:
            ledger = member.ledger
            if (ledger is None or ledger.wal.last_lsn != ledger.wal.durable_lsn
                    or not all(shard.idle() for shard in ledger.shards)):
                continue  # unreplicated records or credits in flight: no stream has its state
            self.stats.compared += 1
            ledger.check_invariants()
            if ledger.wal.durable_lsn == last:
                expected = digest_state(replayed.state)
            elif member is self.owner or ledger.wal.durable_lsn > last:
                raise self.fail(f"{member.name} has LSN {ledger.wal.durable_lsn} replicated, the stream {last}")
            else:  # a replaced owner: the stream up to its last commit
                expected = digest_state(recover(self.replay("prefix", ledger.wal.durable_lsn),
                                                 project_history=False).state)
            if ledger.digest() != expected:
                raise self.fail(f"{member.name}'s state differs from a replay of the stream to LSN {ledger.wal.durable_lsn}")

    def check_money(self, state: Any, by_lsn: dict[int, Any]) -> None:
        """Oracle 4: per asset, the wallets hold what came from the treasury minus what went
        back to it (deposits minus withdrawals, refunds and fees both ways)."""
        net: dict[str, int] = {}
        for event in by_lsn.values():
            moves = [*transfers_of(event), *((event,) if isinstance(event, HoldCaptured) else ())]
            for move in moves:
                if is_treasury(move.from_wallet_id):
                    net[move.asset] = net.get(move.asset, 0) + move.amount
                if is_treasury(move.to_wallet_id):
                    net[move.asset] = net.get(move.asset, 0) - move.amount
        held: dict[str, int] = {}
        for wallet in state.wallets.values():
            if not is_treasury(wallet.id):
                held[wallet.asset] = held.get(wallet.asset, 0) + wallet.balance
        for asset in set(net) | set(held):
            if net.get(asset, 0) != held.get(asset, 0):
                raise self.fail(f"{asset}: the wallets hold {held.get(asset, 0)}, the stream moved "
                                f"{net.get(asset, 0)} out of the treasury")

    # -- the run ---------------------------------------------------------------------------

    def finish(self) -> None:
        """The end: faults stop, the stream comes back, a paused owner resumes; the current owner
        (or a standby taking over) commits everything, then the whole oracle runs."""
        self.cluster_faults = ClusterFaults(crash=0, pause=0, lost_ack=0, unavailable=0, standby_restart=0,
                                            heartbeats_lost=0)
        self.lose_next_ack = False
        self.beats_lost_until = None
        self.set_unavailable(False)
        self.unavailable_until = None
        for member in self.members:
            member.paused_until = None
        for _ in range(100_000):
            owner = self.owner
            if owner is not None and owner.ledger is not None and not any(
                    member.ledger is not None and member is not owner for member in self.members):
                ledger = owner.ledger
                for shard in ledger.shards:
                    shard.drain(1_000_000)
                if ledger.wal.last_lsn == ledger.wal.durable_lsn:
                    if not self.unconfirmed(owner, self.pending):
                        break
                    self.as_owner(owner, partial(self.barrier, owner))
                else:
                    self.as_owner(owner, ledger.wal.commit_pending)
                self.settle()
                continue
            self.step()
        else:
            raise self.fail("no owner took over and settled at the end")
        self.settle()
        self.check()
        # The whole of sim.Simulation's oracle over the stream (keys, refunds, alerts, limits).
        self.data = self.replay("final")
        self.check_recovered()

    def run(self) -> ClusterStats:
        try:
            for member in self.members:
                self.start_standby(member)
            for _ in range(self.steps):
                self.stats.steps += 1
                self.step()
            self.finish()
            return self.stats
        finally:
            for member in self.members:
                member.end()
            self.ledger = self.recovered = None
            shutil.rmtree(self.root, ignore_errors=True)


def all_frames_of(data: bytes) -> list[int]:
    """The LSNs of the frames of one stream message."""
    lsns = []
    offset = 0
    while offset < len(data):
        frame = wal.decode(data, offset)
        lsns.append(frame.lsn)
        offset += frame.size
    return lsns


def epoch_error(messages: list[StoredMessage], winners: dict[int, str], group: int) -> str | None:
    """Oracle 2 over one group's stream: epochs only grow, each epoch record names the member
    the simulation saw win it, and every other message was published by the owner of the epoch
    whose record precedes it (message ids carry the epoch). The first breach, or None."""
    of_id = re.compile(rf"g{group}-e(\d+)-[lb]\d+$")
    epoch = 0
    for message in messages:
        kind = message.headers[KIND]
        if kind == "epoch":
            number, node, _ = msgpack.unpackb(message.data)
            if number <= epoch:
                return f"epoch record {number} at sequence {message.seq} after epoch {epoch}"
            winner = winners.get(number)
            if winner is not None and winner != node:
                return f"epoch {number}'s record names {node}, {winner} took over with it"
            epoch = number
            continue
        match = of_id.match(message.headers["Nats-Msg-Id"])
        if match is None or int(match.group(1)) != epoch:
            return (f"a {kind} message ({message.headers['Nats-Msg-Id']}) at sequence {message.seq} "
                    f"follows the record of epoch {epoch}: two owners appended")
        if winners.get(epoch) is None:
            return f"a {kind} message of epoch {epoch}, which no member won"
    return None


def write_frames(messages: list[StoredMessage], directory: Path, until_lsn: int | None = None) -> None:
    """A stream's frames (up to ``until_lsn``) written as a log into ``directory``/wal.
    Raises ``MirrorError`` when they do not make one log."""
    mirror = Mirror(directory / "wal")
    try:
        for message in messages:
            if message.headers[KIND] != "frames":
                continue
            if until_lsn is not None and all_frames_of(message.data)[0] > until_lsn:
                break
            mirror.append(message.data)
    finally:
        mirror.close()
