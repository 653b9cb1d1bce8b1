"""One member of a cluster group (ADR 0013): a standby that copies the group's stream, and takes
over as the group's owner (the only writer) when the owner falls silent.

    start ──> standby: wipe the data directory, copy the stream's frames into ./wal (wal.Mirror),
              │        note the highest owner epoch seen, listen to the owner's heartbeats
              │ no heartbeat of the current epoch for TAKEOVER_AFTER_S
              v
           catch up to the stream's last sequence N, append OwnerEpoch{epoch + 1} fenced on N
              │ refused (the owner was alive after all, or another standby won): standby again
              v accepted
           owner: the ordinary ledger process (``server._serve.serve`` with ``owner=Replica``)
              recovers from the copy and serves the group's requests over NATS
              (``wallet.g<g>.rpc``, ``server._natsport``); every group commit is
              one stream message fenced on the sequence before it; every reply of the port waits
              for an accepted append sent after its call arrived (a barrier when nothing else is
              being written). A refused append means a newer owner exists: exit at once,
              answering nothing more (``EXIT_FENCED``); so does a heartbeat of a newer
              epoch (an owner resumed from a pause with nothing to write).

Why the standby keeps a copy of the log and not a live state: taking over is then the recovery
every ledger process already does, tested by every crash test, rather than a second way of
building state; the price is the replay at takeover (measured in the README). A member that
starts always starts as a standby from an empty copy: whatever its data directory held may be
ahead of the stream (a group commit written locally and refused by the fence), so only the
stream is trusted.

What the stream holds, told apart by the ``Wallet-Kind`` header: ``frames`` (one group commit:
the WAL frames as the owner wrote them), ``epoch`` (msgpack ``[epoch, node, pid]``), ``barrier``
(empty: a read's proof of ownership).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgpack

from wal import Fenced, LogUnavailable, Mirror, StreamClient

log = logging.getLogger("server.member")

HEARTBEAT_S = 0.25
TAKEOVER_AFTER_S = 2.0
# The extra time a member that just won (its epoch record read from the stream) gets to start
# beating before a standby replaces it in turn: a loaded host was seen to take more than the
# takeover delay between the record and the first heartbeat that reached the others (a
# fresh-clone suite, and eight test processes on the two cores: a double takeover each time,
# safe by the fence, but a second gap).
START_GRACE_S = 3.0
STATUS_EVERY_S = 0.5
EXIT_FENCED = 75  # EX_TEMPFAIL: replaced by a newer owner, or the log unreachable; restart as a standby
KIND = "Wallet-Kind"


def stream_name(group: int) -> str:
    return f"WALLET_G{group}"


# With several groups: the stream that sources every group's, which the events feed reads
# (ADR 0013, *Several groups, revised*, point 1).
EVENTS_STREAM = "WALLET_EVENTS"


def log_subject(group: int) -> str:
    return f"wallet.g{group}.log"


# Every member's status line, for the workers of other hosts (``server._cluster.ClusterWatch``).
STATUS_SUBJECT = "wallet.cluster.status"


def heartbeat_subject(group: int) -> str:
    return f"wallet.g{group}.hb"


def node_name(slot: str) -> str:
    return f"{socket.gethostname()}/{slot}"


def write_status(directory: Path, name: str, status: dict[str, Any]) -> None:
    """One member's line of ``GET /v1/admin/cluster``, replaced atomically."""
    temporary = directory / f".{name}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(status))
    os.replace(temporary, directory / f"{name}.json")


class Stopped(Exception):
    """A standby was asked to stop before it took over."""


class Replica:
    """The owner's side of the stream: the WAL writer's ``replicate`` hook, the port's
    ``confirm``, and the heartbeat. Fenced or cut off, it ends the process on the spot."""

    def __init__(self, client: StreamClient, *, group: int, epoch: int, last_seq: int, node: str,
                 status: Callable[..., None], exit: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self.client = client  # the owner's requests arrive on it too (``server._natsport``)
        self.group = group
        self._exit = exit or _exit_now
        self._clock = clock  # the deterministic simulation's own (tests/sim/cluster_sim.py)
        self._group = group
        self.epoch = epoch
        self._last_seq = last_seq
        self._node = node
        self._lock = threading.Lock()
        self._barriers = 0
        self._barrier: anyio.Event | None = None
        # The monotonic time at which the latest accepted append was sent: every call that
        # arrived before it is confirmed. The epoch record itself is the first.
        self._confirmed_sent = clock()
        self.lsn = 0
        self._status = status
        self._stopped = threading.Event()
        self._wake = threading.Event()  # beat now, not at the next tick (``serving``)
        self._serving = False
        self.servers: list[str] = []  # the NATS URLs, for its ports to the other groups

    # -- the WAL writer's hook (its thread) ------------------------------------------------

    def replicate(self, first_lsn: int, last_lsn: int, data: bytes) -> None:
        with self._lock:
            sent = self._clock()
            self._last_seq = self._publish(data, "frames", f"g{self._group}-e{self.epoch}-l{first_lsn}")
            self._confirmed_sent = sent
            self.lsn = last_lsn

    def _publish(self, data: bytes, kind: str, msg_id: str) -> int:
        try:
            return self._client.publish(log_subject(self._group), data, expected_last_seq=self._last_seq,
                                        msg_id=msg_id, headers={KIND: kind})
        except Fenced:
            self._exit(f"group {self._group}: the stream refused an append of epoch {self.epoch}: "
                       "a newer owner has taken over; exiting without another reply")
        except LogUnavailable as error:
            self._exit(f"group {self._group}: the stream did not acknowledge an append ({error}); "
                       "exiting (what was not acknowledged was not answered)")
        raise Fenced("this owner was replaced")  # only when ``exit`` returned (tests)

    # -- the port's confirmation (the event loop) ----------------------------------------

    def confirmed(self, arrived: float) -> bool:
        """Whether an append sent at or after ``arrived`` (this replica's clock) was accepted."""
        return self._confirmed_sent >= arrived

    async def confirm(self, arrived: float) -> None:
        while not self.confirmed(arrived):
            barrier = self._barrier
            if barrier is not None:
                await barrier.wait()
                continue
            self._barrier = barrier = anyio.Event()
            try:
                await anyio.to_thread.run_sync(self._append_barrier)
            finally:
                self._barrier = None
                barrier.set()

    def _append_barrier(self) -> None:
        with self._lock:
            sent = self._clock()
            self._barriers += 1
            self._last_seq = self._publish(b"", "barrier", f"g{self._group}-e{self.epoch}-b{self._barriers}")
            self._confirmed_sent = sent

    # -- heartbeat and status (a thread of their own) -------------------------------------

    def start(self) -> None:
        """Listens for newer owners' heartbeats; starts the heartbeat thread, and the status
        thread (the stream leader's name is a JetStream API request, which may take seconds while
        a leader is being elected: a beat must never wait for it)."""
        threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()  # first: the others wait
        self._client.subscribe_core(heartbeat_subject(self._group), self._on_heartbeat)
        threading.Thread(target=self._report, name="status", daemon=True).start()

    def serving(self) -> None:
        """The ledger answers the group's requests from now on: the heartbeats say so, and the
        next one leaves at once. Until then the owner beats (the standbys must not replace an
        owner that is still starting) with the flag off, and workers hold their calls rather than
        send them to a subject a paused, replaced owner may still be the only one listening to."""
        self._serving = True
        self._wake.set()

    def _on_heartbeat(self, data: bytes) -> None:
        """The fence stops an owner that was replaced when it next appends; one that wakes from
        a pause with nothing to write would never append, and would live on as a second owner
        while its group has no standby. A heartbeat of a newer epoch ends it too: only an owner
        whose epoch record the stream accepted beats, so it proves this one was replaced."""
        try:
            epoch = int(msgpack.unpackb(data)[0])
        except Exception:
            return
        if epoch > self.epoch:
            self._exit(f"group {self._group}: heard the heartbeat of the owner of epoch {epoch} while "
                       f"owning epoch {self.epoch}: a newer owner has taken over; exiting without another reply")

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def _beat(self) -> None:
        while not self._stopped.is_set():
            self._wake.clear()  # before the beat: a ``serving`` during it brings the next one at once
            self.beat()
            self._wake.wait(HEARTBEAT_S)

    def beat(self) -> None:
        """One heartbeat, ``[epoch, pid, node, serving]``: what the heartbeat thread does every
        ``HEARTBEAT_S``."""
        try:
            self._client.publish_core(heartbeat_subject(self._group),
                                      heartbeat(self.epoch, self._node, serving=self._serving))
        except Exception as error:  # the client reconnects by itself; the fence is what matters
            log.warning("heartbeat not sent: %s", error)

    def _report(self) -> None:
        while True:
            self._status(role="owner", epoch=self.epoch, lsn=self.lsn, leader=self._leader())
            if self._stopped.wait(STATUS_EVERY_S):
                return

    def _leader(self) -> str | None:
        try:
            return self._client.stream_leader(stream_name(self._group))
        except Exception:
            return None


def heartbeat(epoch: int, node: str, *, serving: bool) -> bytes:
    """An owner's heartbeat message (``Replica.beat``)."""
    return msgpack.packb([epoch, os.getpid(), node, serving])


def heartbeat_serving(beat: list[Any]) -> bool:
    """Whether the owner that sent ``beat`` (an unpacked heartbeat) answers requests yet; a beat
    without the flag comes from an owner that beat only once it served."""
    return len(beat) < 4 or bool(beat[3])


class Standby:
    """Copies the stream into ``data_dir/wal`` until the owner falls silent and this member wins
    the fenced epoch append. Blocking; runs before the event loop starts."""

    def __init__(self, client: StreamClient, *, group: int, data_dir: Path, node: str,
                 status: Callable[..., None], takeover_after_s: float = TAKEOVER_AFTER_S,
                 start_grace_s: float = START_GRACE_S,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 on_copied: Callable[[int], None] | None = None) -> None:
        self._client = client
        self._on_copied = on_copied  # sees the copy's last LSN after each step that copied frames
        self._clock = clock  # both injectable for the deterministic simulation (tests/sim/cluster_sim.py)
        self._sleep = sleep
        self._takeover_after_s = takeover_after_s
        self._start_grace_s = start_grace_s
        self._group = group
        self._node = node
        self._status = status
        self.mirror = Mirror(data_dir / "wal")
        self.epoch = 0
        self.seq = 0
        self._heard = clock()
        self._beats = threading.Lock()
        self._stopped = threading.Event()
        self._next_status = 0.0

    def stop(self) -> None:
        """Makes ``run`` raise ``Stopped`` at its next turn (tests; a process just exits)."""
        self._stopped.set()

    def _on_heartbeat(self, data: bytes) -> None:
        try:
            epoch = msgpack.unpackb(data)[0]
        except Exception:
            return
        with self._beats:
            # A replaced owner that was paused may still beat for a moment: only the current
            # epoch (or a newer one not yet read from the stream) keeps the standby waiting.
            if epoch >= self.epoch:
                self._heard = self._clock()

    def _apply(self, messages: list[Any]) -> None:
        for message in messages:
            kind = message.headers.get(KIND)
            if kind == "frames":
                self.mirror.append(message.data)
            elif kind == "epoch":
                epoch, node, pid = msgpack.unpackb(message.data)
                if int(epoch) > self.epoch and (node, pid) != (self._node, os.getpid()):
                    # Someone else just won: it has the takeover delay and the start's grace
                    # to start beating before this standby would try to replace it in turn.
                    with self._beats:
                        self._heard = self._clock() + self._start_grace_s
                self.epoch = max(self.epoch, int(epoch))
            self.seq = message.seq

    def run(self) -> int:
        """Returns the stream sequence of this member's accepted epoch record."""
        self.listen()
        while not self._stopped.is_set():
            seq = self.step()
            if seq is not None:
                return seq
        raise Stopped

    def listen(self) -> None:
        """Subscribes to the owner's heartbeats (``run`` does it first)."""
        self._client.subscribe_core(heartbeat_subject(self._group), self._on_heartbeat)

    def step(self) -> int | None:
        """One turn of ``run``: copies what the stream has next; when nothing was new and the
        owner has been silent for the takeover delay, catches up to the end and tries the fenced
        epoch append. Returns the sequence of the epoch record once this member won it."""
        stream = stream_name(self._group)
        try:
            messages = self._client.fetch(stream, self.seq + 1, max_messages=1000, wait_s=HEARTBEAT_S)
        except LogUnavailable as error:  # a stream just created, a leader being elected
            log.warning("group %d: reading the stream: %s; trying again", self._group, error)
            self._sleep(HEARTBEAT_S)
            return None
        self._apply(messages)
        if messages and self._on_copied is not None:
            self._on_copied(self.mirror.last_lsn)
        now = self._clock()
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY_S
            self._status(role="standby", epoch=self.epoch, lsn=self.mirror.last_lsn, leader=None)
        if messages:
            return None
        with self._beats:
            silent = now - self._heard
        if silent < self._takeover_after_s:
            return None
        # Catch up to the very end, then try to become the next epoch's owner.
        try:
            while self.seq < self._client.last_sequence(stream):
                self._apply(self._client.fetch(stream, self.seq + 1, max_messages=1000, wait_s=HEARTBEAT_S))
        except LogUnavailable as error:
            log.warning("group %d: catching up before a takeover: %s; trying again", self._group, error)
            return None
        with self._beats:
            if self._clock() - self._heard < self._takeover_after_s:
                return None  # the catch-up read another member's fresh epoch record
        epoch = self.epoch + 1
        record = msgpack.packb([epoch, self._node, os.getpid()])
        try:
            seq = self._client.publish(log_subject(self._group), record, expected_last_seq=self.seq,
                                       msg_id=f"g{self._group}-epoch-{epoch}-{self._node}-{os.getpid()}",
                                       headers={KIND: "epoch"})
        except Fenced:
            log.info("group %d: another member appended first; staying a standby", self._group)
            with self._beats:
                self._heard = self._clock() + self._start_grace_s
            return None
        except LogUnavailable as error:
            # Stored or not, nobody knows: read the stream again. Our own record found there
            # only makes the next attempt ask for the epoch after it (an epoch with no owner).
            log.warning("group %d: the epoch record's append was not acknowledged (%s); reading the "
                        "stream again", self._group, error)
            return None
        self.epoch = epoch
        self.seq = seq
        log.info("group %d: took over as the owner of epoch %d (stream sequence %d, LSN %d)",
                 self._group, epoch, seq, self.mirror.last_lsn)
        return seq


class _Abandoned(Exception):
    pass


class StandbyImages:
    """A standby's snapshots of its own copy of the log, so that a takeover replays only the
    records after the newest one instead of the whole log. Every ``every`` copied records, a
    background thread builds the next image from the previous one and the copied frames
    (``ledger.build_snapshot``, which reads a log that is still being written up to the LSN it
    was given), as ``wallet snapshot create`` would. Nothing depends on an image: a failed or
    abandoned build only means a longer replay, and a member that starts again wipes them with
    the rest of its copy. At takeover the build in progress is abandoned (``abandon``) so that
    recovery has the cores."""

    def __init__(self, data_dir: Path, *, every: int) -> None:
        self._data_dir = data_dir
        self._every = every
        self.lsn = 0  # of the newest image built
        self.built = 0
        self._thread: threading.Thread | None = None
        self._abandon = threading.Event()

    def copied(self, last_lsn: int) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        if last_lsn - self.lsn < self._every or self._abandon.is_set():
            return
        self._thread = threading.Thread(target=self._build, args=(last_lsn,), name="standby-images", daemon=True)
        self._thread.start()

    def _build(self, until_lsn: int) -> None:
        from ledger import build_snapshot

        def check(_: object) -> None:
            if self._abandon.is_set():
                raise _Abandoned

        started = time.perf_counter()
        try:
            info = build_snapshot(self._data_dir, until_lsn=until_lsn, created_at_us=int(time.time() * 1_000_000),
                                  on_frame=check)
        except _Abandoned:
            log.info("standby: the snapshot in progress was abandoned for the takeover")
            return
        except Exception:  # the takeover will replay more; the standby goes on copying
            log.exception("standby: building a snapshot at LSN %d failed", until_lsn)
            self.lsn = until_lsn  # not again at every step: after another ``every`` records
            return
        if info is not None:
            self.lsn = info.lsn
            self.built += 1
            log.info("standby: snapshot at LSN %d in %.3f s (%s)", info.lsn, time.perf_counter() - started,
                     info.path.name)

    def abandon(self) -> None:
        """Stops a build in progress (between two records; one already writing its image is
        let finish) and starts no other."""
        self._abandon.set()
        if self._thread is not None:
            self._thread.join()


class StandbyHistory:
    """A standby's history read model, kept current while it copies: a projector child process
    (``server._serve.serve_standby_history``) follows the copy, learning how far it may read
    from the 8 bytes ``copied`` writes into ``<data>/copied-lsn``. At the takeover ``stop`` kills
    it (crash-only: every SQLite transaction carries its LSN) and the new owner's projector
    resumes where it stopped, so history reads are current within the takeover instead of
    waiting, after it, for the whole log to be projected again (measured: 500,000 transfers
    made history reads wait 22.7 s after the owner's SIGKILL, past the contract's 15 s, while
    the group's other reads were back at 10.4 s). The child is started again if it exits."""

    FILE = "copied-lsn"

    def __init__(self, options: Any, data_dir: Path) -> None:
        self._options = options
        self._path = data_dir / self.FILE
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.pwrite(self._fd, bytes(8), 0)
        self._process: subprocess.Popen[bytes] | None = None
        self._started = 0.0
        self._start()

    def _start(self) -> None:
        from server._supervisor import child_command

        command = child_command("standby-history", self._options, supervisor=os.getpid(), socket_path=str(self._path))
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        self._started = time.monotonic()
        log.info("standby: started the history projector (pid %d)", self._process.pid)

    def copied(self, last_lsn: int) -> None:
        """Called by the standby (its main thread) after each step that copied frames."""
        os.pwrite(self._fd, last_lsn.to_bytes(8, "little"), 0)
        process = self._process
        if process is not None and process.poll() is not None and time.monotonic() - self._started >= 1.0:
            log.warning("standby: the history projector (pid %d) exited with status %s; starting another",
                        process.pid, process.returncode)
            self._start()

    def stop(self) -> None:
        """Kills the projector (at once: the takeover waits for nothing of it)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        os.close(self._fd)


LOG_RETRY_S = 1.0


def _log_client(servers: list[str], group: int, *, name: str, groups: int = 1,
                sleep: Callable[[float], None] = time.sleep) -> StreamClient:
    """A client of the group's stream, made if missing. A member may start before the log can
    take a stream (its nodes still starting, or electing their JetStream meta leader): it waits
    for it, saying so, rather than exit and leave that to its process manager."""
    while True:
        client = StreamClient(servers, name=name)
        try:
            client.connect()
            client.ensure_stream(stream_name(group), log_subject(group), replicas=min(3, len(servers)))
            if groups > 1:
                # Every member makes sure of it (the same config from all: the first makes it).
                client.ensure_aggregate(EVENTS_STREAM, [stream_name(number) for number in range(groups)],
                                        replicas=min(3, len(servers)))
            return client
        except Exception as error:  # unreachable, no meta leader yet, no quorum: all pass
            log.warning("group %d: the log at %s cannot be used yet (%s); trying again in %g s",
                        group, ",".join(servers), error, LOG_RETRY_S)
            client.close()
            sleep(LOG_RETRY_S)


def _exit_now(message: str) -> None:
    log.critical(message)
    logging.shutdown()
    os._exit(EXIT_FENCED)


def run_member(options: Any, *, group: int, slot: str, servers: list[str], status_dir: Path) -> int:
    """The member child process: standby until it owns the group, then the ledger process."""
    from server._serve import serve, tune_gc

    tune_gc()
    node = node_name(slot)
    status_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    published: list[StreamClient] = []  # the client, once connected: lines go to NATS too
    status = partial(_status, status_dir, f"g{group}-{slot}", group, node, published)
    status(role="starting", epoch=0, lsn=0, leader=None)
    client = _log_client(servers, group, name=f"wallet-g{group}-{slot}-{os.getpid()}",
                         groups=getattr(options, "groups", 1))
    published.append(client)
    data_dir: Path = options.data_dir
    shutil.rmtree(data_dir, ignore_errors=True)  # only the stream is trusted (module docstring)
    data_dir.mkdir(mode=0o700, parents=True)
    images = StandbyImages(data_dir, every=options.snapshot_every) if options.snapshot_every > 0 else None
    history = StandbyHistory(options, data_dir)

    def copied(last_lsn: int) -> None:
        history.copied(last_lsn)
        if images is not None:
            images.copied(last_lsn)

    standby = Standby(client, group=group, data_dir=data_dir, node=node, status=status, on_copied=copied)
    try:
        seq = standby.run()
    except BaseException:
        history.stop()
        raise
    # Beat before anything else: the other members count from the epoch record, and the
    # owner's start (process, lock, subscription) took over 2 s on a loaded host when the beat
    # waited for the subscription, and a second standby replaced the new owner.
    replica = Replica(client, group=group, epoch=standby.epoch, last_seq=seq, node=node, status=status)
    replica.servers = servers  # its ports to the other groups' owners (``server._crossing``)
    replica.lsn = standby.mirror.last_lsn
    replica.start()
    history.stop()
    if images is not None:
        images.abandon()
    standby.mirror.close()
    try:
        return anyio.run(partial(serve, options, owner=replica), backend="trio")
    finally:
        replica.stop()
        status(role="stopped", epoch=replica.epoch, lsn=replica.lsn, leader=None)
        client.close()


def _status(directory: Path, name: str, group: int, node: str, published: list[StreamClient], *, role: str,
            epoch: int, lsn: int, leader: str | None) -> None:
    """Writes this member's status line next to ``cluster up``'s table, and publishes it for the
    workers of other hosts (``server._cluster.ClusterWatch``; fire and forget)."""
    line = {"group": group, "role": role, "pid": os.getpid(), "node": node, "epoch": epoch, "lsn": lsn,
            "leader": leader, "at": time.time()}
    write_status(directory, name, line)
    for client in published:
        client.publish_nowait(STATUS_SUBJECT, json.dumps(line).encode())

