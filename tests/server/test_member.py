"""A cluster group's members (``server._member``) over the in-memory stream (``wal.testing.
FakeStream``, JetStream's fence and duplicate window): the standby's copy, the fenced takeover,
two standbys racing, a replaced owner stopping without appending, and reads confirmed by a
barrier. The same code runs against real NATS nodes in ``tests/e2e/test_cluster.py``."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import anyio
import msgpack
import pytest

import wal
from server import _member
from server._member import (
    KIND,
    START_GRACE_S,
    Replica,
    Standby,
    Stopped,
    heartbeat_serving,
    heartbeat_subject,
    log_subject,
    stream_name,
)
from wal.testing import FakeStream, StoredMessage, all_frames, payload_for

GROUP = 0


def _quiet(**status: Any) -> None:
    pass


def _standby(stream: FakeStream, directory: Path, name: str, after_s: float = 0.3) -> Standby:
    client = stream.client()
    client.ensure_stream(stream_name(GROUP), log_subject(GROUP))
    return Standby(client, group=GROUP, data_dir=directory, node=name, status=_quiet, takeover_after_s=after_s)


class Exited(Exception):
    pass


def _owner(stream: FakeStream, standby: Standby, seq: int, exits: list[str]) -> Replica:
    def record(message: str) -> None:
        exits.append(message)
        raise Exited(message)

    return Replica(standby._client, group=GROUP, epoch=standby.epoch, last_seq=seq, node="n",
                   status=_quiet, exit=record)


async def _write(directory: Path, replica: Replica, batches: list[list[bytes]]) -> None:
    log = wal.WriteAheadLog(directory, next_lsn=1, parent=wal.ZERO_CHECKSUM, replicate=replica.replicate)
    async with anyio.create_task_group() as group:
        group.start_soon(log.run)
        for batch in batches:
            for payload in batch:
                log.append(payload)
            await log.flush()
        log.close()
    log.release()


def _epochs(stream: FakeStream) -> list[int]:
    return [msgpack.unpackb(m.data)[0] for m in stream.streams[stream_name(GROUP)] if m.headers[KIND] == "epoch"]


async def test_a_standby_copies_the_log_waits_while_the_owner_beats_then_takes_over(tmp_path: Path) -> None:
    stream = FakeStream()
    first = _standby(stream, tmp_path / "a", "a")
    seq = first.run()  # an empty, silent stream: the first member owns epoch 1
    assert first.epoch == 1 and seq == 1
    exits: list[str] = []
    owner = _owner(stream, first, seq, exits)
    owner.start()
    batches = [[payload_for(lsn) for lsn in range(start, start + 4)] for start in range(1, 30, 4)]
    await _write(tmp_path / "a-log", owner, batches)
    second = _standby(stream, tmp_path / "b", "b")
    taken: list[int] = []
    thread = threading.Thread(target=lambda: taken.append(second.run()), daemon=True)
    thread.start()
    await anyio.sleep(1.0)  # three takeover delays, the owner beating all along
    assert not taken and _epochs(stream) == [1]
    owner.stop()  # silent from now on
    thread.join(timeout=5)
    assert taken and second.epoch == 2 and _epochs(stream) == [1, 2]
    second.mirror.close()
    copied, written = all_frames(tmp_path / "b" / "wal"), all_frames(tmp_path / "a-log")
    assert [(f.lsn, f.checksum) for f in copied] == [(f.lsn, f.checksum) for f in written]
    # The old owner's next group commit is refused by the fence: it exits, appending nothing.
    length = len(stream.streams[stream_name(GROUP)])
    with pytest.raises(Exited):
        owner.replicate(33, 33, b"late")
    assert "a newer owner has taken over" in exits[0]
    assert len(stream.streams[stream_name(GROUP)]) == length


def test_two_standbys_racing_one_epoch_has_one_owner(tmp_path: Path) -> None:
    for round_ in range(10):
        stream = FakeStream()
        members = [_standby(stream, tmp_path / f"{round_}-{name}", name, after_s=0.05) for name in "ab"]
        won: list[Standby] = []

        def run(member: Standby, won: list[Standby] = won) -> None:
            try:
                member.run()
                won.append(member)
            except Stopped:
                pass

        threads = [threading.Thread(target=run, args=(member,), daemon=True) for member in members]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 5
        while not won and time.monotonic() < deadline:
            time.sleep(0.01)
        for member in members:
            if member not in won:
                member.stop()
        for thread in threads:
            thread.join(timeout=5)
        # The loser saw the winner's record and would ask for epoch 2 only after the takeover delay
        # with no heartbeat; it was stopped before that, so exactly one epoch-1 owner exists.
        assert len(won) >= 1 and _epochs(stream)[0] == 1 and _epochs(stream).count(1) == 1


async def test_replies_wait_for_a_barrier_sent_after_they_arrived(tmp_path: Path) -> None:
    stream = FakeStream()
    member = _standby(stream, tmp_path / "a", "a")
    seq = member.run()
    exits: list[str] = []
    owner = _owner(stream, member, seq, exits)
    arrived = time.monotonic()
    async with anyio.create_task_group() as group:
        for _ in range(20):  # concurrent replies share barriers
            group.start_soon(owner.confirm, arrived)
    barriers = [m for m in stream.streams[stream_name(GROUP)] if m.headers[KIND] == "barrier"]
    assert 1 <= len(barriers) <= 2
    await owner.confirm(arrived)  # already confirmed: no new append
    assert len([m for m in stream.streams[stream_name(GROUP)] if m.headers[KIND] == "barrier"]) == len(barriers)
    # Someone else appends (a newer owner): the next confirmation is refused and the owner exits.
    client = stream.client()
    client.publish(log_subject(GROUP), msgpack.packb([2, "b", 1]), expected_last_seq=client.last_sequence(stream_name(GROUP)),
                   msg_id="newer", headers={KIND: "epoch"})
    with pytest.raises(Exited):
        await owner.confirm(time.monotonic())
    assert exits


def test_an_unreachable_log_stops_the_owner(tmp_path: Path) -> None:
    stream = FakeStream()
    member = _standby(stream, tmp_path / "a", "a")
    exits: list[str] = []
    owner = _owner(stream, member, member.run(), exits)
    stream.unavailable = True
    with pytest.raises(Exited):
        owner.replicate(1, 1, b"x")
    assert "did not acknowledge" in exits[0]


def test_a_standby_steps_on_an_injected_clock(tmp_path: Path) -> None:
    """``Standby.step`` is one turn of ``run``: the takeover delay counts on the clock it is
    given (the deterministic simulation's), a heartbeat of the current epoch restarts it."""
    stream = FakeStream()
    stream.idle_wait = lambda seconds: None
    now = [0.0]
    client = stream.client()
    client.ensure_stream(stream_name(GROUP), log_subject(GROUP))
    member = Standby(client, group=GROUP, data_dir=tmp_path / "a", node="a", status=_quiet,
                     takeover_after_s=2.0, clock=lambda: now[0], sleep=lambda seconds: None)
    member.listen()
    assert member.step() is None
    now[0] = 1.9
    assert member.step() is None
    client.publish_core(heartbeat_subject(GROUP), msgpack.packb([0, 1, "x"]))
    now[0] = 3.8
    assert member.step() is None and _epochs(stream) == []
    now[0] = 3.9
    assert member.step() == 1 and member.epoch == 1 and _epochs(stream) == [1]


@pytest.mark.parametrize("during_catch_up", [False, True])
def test_a_standby_gives_a_member_that_just_won_the_takeover_delay(tmp_path: Path, during_catch_up: bool) -> None:
    """With two standbys, the one that lost the race reads the winner's epoch record; however
    long its own wait for a heartbeat has been, the winner gets the takeover delay to start
    beating before this standby tries to replace it, and the start's grace as well (a loaded
    host took longer than the delay from the record to the first beat heard), also when the
    record arrives while it catches up just before its own epoch append."""
    stream = FakeStream()
    now = [0.0]
    client = stream.client()
    client.ensure_stream(stream_name(GROUP), log_subject(GROUP))
    member = Standby(client, group=GROUP, data_dir=tmp_path / f"b{during_catch_up}", node="b",
                     status=_quiet, takeover_after_s=2.0, clock=lambda: now[0], sleep=lambda seconds: None)
    member.listen()

    def win() -> None:
        client.publish(log_subject(GROUP), msgpack.packb([1, "a", 1]), expected_last_seq=0, msg_id="a-1",
                       headers={KIND: "epoch"})

    now[0] = 3.0  # silent for longer than the delay
    if during_catch_up:
        # The record lands just after the standby's own fetch found nothing (the fake calls
        # ``idle_wait`` then): the catch-up before its epoch append is what reads it.
        def win_once(seconds: float) -> None:
            stream.idle_wait = lambda seconds: None
            win()

        stream.idle_wait = win_once
    else:
        stream.idle_wait = lambda seconds: None
        win()
        assert member.step() is None  # copies the winner's record
    assert member.step() is None and _epochs(stream) == [1], during_catch_up
    now[0] = 5.1  # the takeover delay since the record, but not the start's grace as well
    assert member.step() is None and _epochs(stream) == [1]
    now[0] = 3.0 + 2.0 + START_GRACE_S - 0.1
    assert member.step() is None and _epochs(stream) == [1]
    now[0] = 3.0 + 2.0 + START_GRACE_S + 0.1  # the winner never beat: this standby takes over after all
    assert member.step() is not None and _epochs(stream) == [1, 2]


def test_a_standby_whose_epoch_record_lost_its_ack_takes_over_with_the_next(tmp_path: Path) -> None:
    """The epoch append stored but not acknowledged (LogUnavailable): the standby reads the
    stream again rather than ending its process, sees its own record, and wins the next epoch.
    (Found by the cluster simulation: the error used to escape ``Standby.run``.)"""
    stream = FakeStream()
    lost: list[int] = []

    def lose_the_first_epoch_ack(message: StoredMessage) -> bool:
        if message.headers[KIND] == "epoch" and not lost:
            lost.append(message.seq)
            return True
        return False

    stream.lose_ack = lose_the_first_epoch_ack
    member = _standby(stream, tmp_path / "a", "a", after_s=0.05)
    assert member.run() == 2
    assert lost == [1] and _epochs(stream) == [1, 2] and member.epoch == 2


def test_reads_of_an_unavailable_stream_are_retried(tmp_path: Path) -> None:
    stream = FakeStream()
    stream.idle_wait = lambda seconds: None
    stream.reads_unavailable = True
    now = [10.0]
    client = stream.client()
    client.ensure_stream(stream_name(GROUP), log_subject(GROUP))
    slept: list[float] = []
    member = Standby(client, group=GROUP, data_dir=tmp_path / "a", node="a", status=_quiet,
                     takeover_after_s=0.0, clock=lambda: now[0], sleep=slept.append)
    assert member.step() is None and slept and _epochs(stream) == []
    stream.reads_unavailable = False
    assert member.step() == 1

async def test_a_replaced_owner_with_nothing_to_write_exits_on_the_newer_owners_heartbeat(tmp_path: Path) -> None:
    """Found by the cluster crash loop's pause: an owner paused while idle, replaced, then resumed
    never met the fence (it had nothing to append) and lived on as a second owner, the group
    without a standby. The newer owner's heartbeat now ends it, without an append."""
    stream = FakeStream()
    first = _standby(stream, tmp_path / "a", "a")
    exits: list[str] = []
    old = _owner(stream, first, first.run(), exits)
    old.start()
    second = _standby(stream, tmp_path / "b", "b", after_s=0.2)
    old.stop()  # paused: silent, but alive and still subscribed
    seq = second.run()
    assert second.epoch == 2 and not exits
    length = len(stream.streams[stream_name(GROUP)])
    old._on_heartbeat(msgpack.packb([1, 999, "a"]))  # its own epoch's beat (or an older one): no effect
    assert not exits
    new = Replica(second._client, group=GROUP, epoch=second.epoch, last_seq=seq, node="b", status=_quiet)
    new.start()
    try:
        deadline = time.monotonic() + 5
        while not exits and time.monotonic() < deadline:
            await anyio.sleep(0.01)
    finally:
        new.stop()
    assert exits and "a newer owner has taken over" in exits[0], exits
    assert len(stream.streams[stream_name(GROUP)]) == length, "the replaced owner appended"


class _LeaderHangs:
    """A client whose stream-leader query (a JetStream API request) hangs until released, as
    one may for seconds while the stream elects a leader."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.release = threading.Event()
        self.asked = threading.Event()

    def stream_leader(self, stream: str) -> str | None:
        self.asked.set()
        self.release.wait(30)
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _wait_until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.01)


def test_an_owner_beats_while_starting_says_when_it_serves_and_never_waits_for_its_status(tmp_path: Path) -> None:
    """A new owner beats from the moment it won (the standbys count their delay from its epoch
    record), with the flag that tells workers it does not serve yet; ``serving`` turns the flag
    on. The status line asks the stream for its leader, which may hang for seconds: a beat must
    never wait for it (a double takeover under load was traced to this wait)."""
    stream = FakeStream()
    first = _standby(stream, tmp_path / "a", "a")
    seq = first.run()
    hangs = _LeaderHangs(first._client)
    beats: list[list[Any]] = []
    stream.client().subscribe_core(heartbeat_subject(GROUP), lambda data: beats.append(msgpack.unpackb(data)))
    replica = Replica(hangs, group=GROUP, epoch=first.epoch, last_seq=seq, node="a", status=_quiet)  # type: ignore[arg-type]
    replica.start()
    try:
        assert hangs.asked.wait(10)
        _wait_until(lambda: len(beats) >= 4)  # the status thread is still stuck in its query
        assert not hangs.release.is_set()
        assert all(beat[0] == first.epoch and not heartbeat_serving(beat) for beat in beats)
        replica.serving()
        _wait_until(lambda: heartbeat_serving(beats[-1]))
    finally:
        hangs.release.set()
        replica.stop()
    assert heartbeat_serving([1, 2, "a"]), "a beat without the flag is from an owner that beat only once serving"


def test_a_member_waits_for_a_log_that_cannot_take_its_stream_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """A member started before the log's nodes (or before they elected a JetStream meta
    leader) tries again, saying so, instead of exiting with a traceback."""
    stream = FakeStream()
    attempts: list[str] = []
    closed: list[int] = []

    class Starting:
        def __init__(self, servers: list[str], *, name: str) -> None:
            self._client = stream.client()

        def connect(self) -> None:
            attempts.append("connect")
            if len(attempts) == 1:
                raise wal.LogUnavailable("connection refused")

        def ensure_stream(self, *args: Any, **kwargs: Any) -> None:
            attempts.append("ensure")
            if len(attempts) == 3:
                raise wal.LogUnavailable("no meta leader")
            self._client.ensure_stream(*args, **kwargs)

        def close(self) -> None:
            closed.append(1)

    slept: list[float] = []
    monkeypatch.setattr(_member, "StreamClient", Starting)
    client = _member._log_client(["nats://nowhere:4222"], GROUP, name="m", sleep=slept.append)
    assert attempts == ["connect", "connect", "ensure", "connect", "ensure"]
    assert len(closed) == 2 and slept == [_member.LOG_RETRY_S] * 2
    assert isinstance(client, Starting) and stream_name(GROUP) in stream.streams
