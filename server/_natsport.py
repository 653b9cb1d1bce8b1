"""Workers reach a cluster group's owner over NATS request/reply (ADR 0013, *How workers reach an
owner*): no table of owners, no socket path, so a worker may run on any host that reaches NATS.

    worker (``NatsPort``)                                  owner (``serve_nats``)
    calls ─> _Outbox ─> one frame of REQUESTs ──────────>  wallet.g<g>.rpc (only the owner subscribes)
             publish, reply to <inbox>.<n>                 each REQUEST through ``_port.Calls``
                                                           (method, in-flight, token, LocalPort, confirm)
    <inbox>.* <────── one frame of REPLY/FAILED ────────  replies grouped by worker: one message per
                                                           worker per moment, to its newest <inbox>.<n>

The payloads are ``server._wire`` frames, the same messages as on the Unix socket of
``--workers N``; this module only carries them. The owner subscribes without a queue group:
should a replaced owner still be subscribed (paused, not yet dead), a request reaches both, and
the replaced one can answer nothing (every reply waits for ``confirm``, whose fenced append is
refused: it exits). A queue group would hand half the requests to the paused one alone.

What settles a call, on the worker (a call settled by ``Unavailable`` is a 503 with
``Retry-After: 1``; a money call's outcome is then unknown to the worker, and the client retries
with its idempotency key, as after a dropped socket):

===================================================  =============================================
what the worker sees                                 the calls it settles
===================================================  =============================================
a REPLY or FAILED on ``<inbox>.*``                   that call, with its answer
a message with header ``Status: 503`` on             every call published in frame ``n``:
``<inbox>.<n>`` (NATS: no responders)                ``Unavailable`` at once (no owner subscribed)
no heartbeat on ``wallet.g<g>.hb`` for               every call waiting that long: ``Unavailable``
``silence_s`` (the standby's takeover delay) since   (the owner died or was cut off; a standby is
the call was sent or the last heartbeat              taking over by the same rule)
a heartbeat of an epoch newer than the one known     every call sent under an older known epoch:
when the call was sent                               ``Unavailable`` (its owner was replaced)
a call made when no heartbeat has come for           that call, before it is sent: ``Unavailable``
``silence_s``                                        (the rule above would fail it anyway)
a call made while the newest owner's heartbeats say  held (not sent) until a heartbeat says it
it does not serve yet (it is recovering)             serves, then sent; ``Unavailable`` after
                                                     ``start_wait_s``
``call_timeout_s`` since the call was sent           that call: ``Unavailable`` (the backstop)
===================================================  =============================================

Threads: the NATS connection is ``wal.StreamClient``'s (nats-py on its own asyncio thread);
messages cross into this process's event loop (trio, or asyncio under ``--loop``) through that
loop's thread-safe ``run_sync_soon`` / ``call_soon_threadsafe``, and leave through
``StreamClient.publish_nowait``, so neither loop ever waits for the other.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import anyio
import anyio.abc
import msgpack

from ledger import Event
from server import _wire as w
from server._member import (
    HEARTBEAT_S,
    TAKEOVER_AFTER_S,
    heartbeat_serving,
    heartbeat_subject,
    stream_name,
)
from server._port import (
    CONNECT_WAIT_S,
    Calls,
    Confirm,
    LocalPort,
    RemoteCalls,
    Unavailable,
    _Call,
)
from server._stream_events import StreamEvents
from wal import LogUnavailable, StreamClient, call_soon_threadsafe

log = logging.getLogger("server.natsport")

# A backstop: longer than any call waits when its owner is alive. An owner gives up on an
# unacknowledged append after 30 s and exits (the publish's own bound, with its last attempt and
# a request's timeout: under 38 s); the events feed's 30 s long poll no longer waits at the
# owner (``server._stream_events``), which is what made this 60 s before.
CALL_TIMEOUT_S = 45.0
START_WAIT_S = 5.0  # how long a call is held while the newest owner recovers (the takeover's replay)
# One NATS message's frame, at most; a burst larger than that goes out as several messages.
# Under the nodes' max_payload (24 MiB, ``server._natsnodes``) with room for the headers.
RPC_MESSAGE_BYTES_MAX = 8 * 1024 * 1024
NO_RESPONDERS = "503"
RECONNECT_S = 1.0  # between attempts to make the first connection to NATS
WORKERS_REMEMBERED_MAX = 256  # the owner forgets idle workers' in-flight counters past this


def rpc_subject(group: int) -> str:
    return f"wallet.g{group}.rpc"


def _frames(messages: list[list[Any]]) -> Iterator[tuple[list[list[Any]], bytes]]:
    """``messages`` as frames of at most ``RPC_MESSAGE_BYTES_MAX`` (split in halves until each
    fits; a single message larger than that is sent alone: the nodes take up to 24 MiB), each
    with the messages it carries."""
    data = w.frame(messages)
    if len(data) <= RPC_MESSAGE_BYTES_MAX or len(messages) == 1:
        yield messages, data
        return
    half = len(messages) // 2
    yield from _frames(messages[:half])
    yield from _frames(messages[half:])


def _unframe(data: bytes) -> list[list[Any]]:
    """The messages of one NATS payload, which must be whole frames. Raises ProtocolError."""
    decoder = w.Decoder()
    decoder.feed(data)
    messages = decoder.messages()
    if decoder.buffered:
        raise w.ProtocolError(f"{decoder.buffered} bytes after the last whole frame")
    return messages


def _threadsafe() -> Callable[..., None]:
    """A function that runs ``fn(*args)`` soon on the current event loop, from any thread, and
    never blocks; a call after the loop ended is dropped. ``fn`` must not raise (an exception in
    trio's ``run_sync_soon`` ends the run): one that does is logged."""

    def guarded(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("handling a NATS message failed")

    call_soon = call_soon_threadsafe()

    def threadsafe(fn: Callable[..., None], *args: Any) -> None:
        try:
            call_soon(partial(guarded, fn, *args))
        except RuntimeError:  # the loop has ended (trio's RunFinishedError is one)
            pass

    return threadsafe


# -- the worker side ---------------------------------------------------------------------------


class _Sent(_Call):
    """A call, and what the rules of the module docstring need to know of it."""

    __slots__ = ("epoch", "frame", "sent")

    def __init__(self, sent: float, epoch: int) -> None:
        super().__init__()
        self.sent = sent
        self.epoch = epoch  # of the owner the worker knew when sending: 0 for none yet
        self.frame = 0  # the number of the NATS message that carried it, once sent


class NatsPort(RemoteCalls):
    """The port of an HTTP worker in cluster mode: calls to group ``group``'s owner over NATS
    (module docstring). History reads go to the owner, which keeps the read model; the events
    feed is read from the group's stream by the worker itself (``server._stream_events``), so
    it answers also while the group has no owner."""

    def __init__(self, servers: list[str], *, group: int, silence_s: float = TAKEOVER_AFTER_S,
                 call_timeout_s: float = CALL_TIMEOUT_S, tick_s: float = HEARTBEAT_S,
                 start_wait_s: float = START_WAIT_S) -> None:
        super().__init__()
        assert servers
        assert silence_s > 0 and call_timeout_s > 0 and tick_s > 0 and start_wait_s >= 0
        self._start_wait_s = start_wait_s
        self._servers = servers
        self._group = group
        self._subject = rpc_subject(group)
        self._silence_s = silence_s
        self._call_timeout_s = call_timeout_s
        self._tick_s = tick_s
        self._client: StreamClient | None = None
        self._events: StreamEvents | None = None
        self._inbox = ""
        self._frame_numbers = 0
        self._epoch = 0  # the newest owner epoch heard of
        self._heard = time.monotonic()  # the last heartbeat of that epoch (or the start)
        # Set while the owner of ``_epoch`` serves (its heartbeats say so; none heard yet: set,
        # and NATS's no-responders tells of an owner that is not subscribed).
        self._serves = anyio.Event()
        self._serves.set()
        self.held = 0  # calls that waited for a new owner to serve
        self.frames_sent = 0
        self.no_responders = 0

    def reachable(self) -> bool:
        return self.connected.is_set()

    @property
    def epoch(self) -> int:
        """The newest owner epoch this worker has heard a heartbeat of (0: none yet)."""
        return self._epoch

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()  # as RemotePort: a worker serves (503s) while NATS is unreachable
        threadsafe = _threadsafe()
        client = await self._connect()
        try:
            self._inbox = await anyio.to_thread.run_sync(client.new_inbox)
            await anyio.to_thread.run_sync(
                client.subscribe_messages, f"{self._inbox}.*",
                lambda subject, _reply, headers, data: threadsafe(self._on_answer, subject, headers, data))
            await anyio.to_thread.run_sync(
                client.subscribe_core, heartbeat_subject(self._group),
                lambda data: threadsafe(self._on_heartbeat, data, time.monotonic()))
            self._client = client
            self._events = StreamEvents(client, stream_name(self._group))
            self._heard = time.monotonic()
            self.connected.set()
            log.info("reaching group %d's owner over NATS on %s (replies to %s.*)", self._group, self._subject,
                     self._inbox)
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch)
                group.start_soon(self._events.watch)
                while True:
                    self._publish(await self._outbox.take())
        finally:
            self._client = None
            self._events = None
            self.connected = anyio.Event()
            self._outbox.clear()
            self._fail_all("the worker's NATS port stopped")
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(client.close)

    async def _connect(self) -> StreamClient:
        while True:
            client = StreamClient(self._servers, name=f"wallet-worker-g{self._group}-{os.getpid()}")
            try:
                await anyio.to_thread.run_sync(client.connect)
                return client
            except Exception as error:
                log.warning("cannot reach NATS at %s (%s); trying again", ",".join(self._servers), error)
                await anyio.to_thread.run_sync(client.close)
                await anyio.sleep(RECONNECT_S)

    def _publish(self, messages: list[list[Any]]) -> None:
        client = self._client
        assert client is not None
        for carried, data in _frames(messages):
            self._frame_numbers += 1
            number = self._frame_numbers
            for message in carried:
                call = self._waiting.get(message[1])
                if isinstance(call, _Sent):
                    call.frame = number
            client.publish_nowait(self._subject, data, reply=f"{self._inbox}.{number}")
            self.frames_sent += 1

    def _on_answer(self, subject: str, headers: dict[str, str] | None, data: bytes) -> None:
        status = None if headers is None else headers.get("Status")
        if status is not None:
            if status != NO_RESPONDERS:
                log.warning("NATS answered %s on %s; ignored", status, subject)
                return
            self.no_responders += 1
            number = int(subject.rpartition(".")[2])
            self._fail_where(lambda call: call.frame == number,
                             f"group {self._group} has no owner serving it now (NATS: no responders)")
            return
        try:
            self._settle(_unframe(data))
        except w.ProtocolError as error:
            log.error("group %d's owner sent bytes that are not the protocol (%s)", self._group, error)

    def _on_heartbeat(self, data: bytes, heard: float) -> None:
        try:
            beat = msgpack.unpackb(data)
            epoch = int(beat[0])
            serving = heartbeat_serving(beat)
        except Exception:
            return
        if epoch < self._epoch:
            return  # a replaced owner, paused, beating for a moment more: not ours
        self._heard = heard
        if epoch > self._epoch:
            known, self._epoch = self._epoch, epoch
            if self._serves.is_set() and not serving:
                self._serves = anyio.Event()
            if known:
                self._fail_where(lambda call: 0 < call.epoch < epoch,
                                 f"group {self._group}'s owner was replaced (epoch {epoch} now)")
        if serving:
            self._serves.set()

    async def _watch(self) -> None:
        while True:
            await anyio.sleep(self._tick_s)
            self._expire(time.monotonic())

    def _expire(self, now: float) -> None:
        """Fails the calls that the silence and timeout rules (module docstring) give up on."""
        heard = self._heard
        self._fail_where(lambda call: now - max(call.sent, heard) >= self._silence_s,
                         f"group {self._group}'s owner fell silent (no heartbeat for {self._silence_s:g} s)")
        self._fail_where(lambda call: now - call.sent >= self._call_timeout_s,
                         f"group {self._group}'s owner did not answer within {self._call_timeout_s:g} s")

    def _fail_where(self, predicate: Callable[[_Sent], bool], reason: str) -> None:
        doomed = [correlation for correlation, call in self._waiting.items()
                  if isinstance(call, _Sent) and predicate(call)]
        for correlation in doomed:
            self._waiting.pop(correlation).fail(Unavailable(reason))

    async def events(self, after: int, limit: int, wait_s: float) -> list[tuple[int, Event]]:
        """The feed from the group's stream, not from the owner (class docstring)."""
        if not self.connected.is_set():
            with anyio.move_on_after(CONNECT_WAIT_S):
                await self.connected.wait()
        events = self._events
        if events is None:
            raise Unavailable("NATS is not reachable from this worker")
        try:
            return await events.read(after, limit, wait_s)
        except LogUnavailable as error:
            raise Unavailable(f"group {self._group}'s stream cannot be read now: {error}") from None

    async def _call(self, method: str, *args: Any) -> Any:
        if not self.connected.is_set():
            with anyio.move_on_after(CONNECT_WAIT_S):
                await self.connected.wait()
        if not self.connected.is_set():
            raise Unavailable("NATS is not reachable from this worker")
        now = time.monotonic()
        if now - self._heard >= self._silence_s:
            # The rule below would fail it ``silence_s`` from now: no owner has beaten for that
            # long (NATS may still route to a subscription of a host it has not yet noticed is
            # gone, so no-responders cannot be counted on), and a new owner beats first.
            raise Unavailable(f"group {self._group} has no owner now (no heartbeat for {self._silence_s:g} s)")
        if not self._serves.is_set():
            # A new owner won and is recovering. Sent now, the call could reach only the owner
            # it replaced, if that one is paused and still subscribed, and wait for the backstop.
            self.held += 1
            with anyio.move_on_after(self._start_wait_s):
                while not self._serves.is_set():
                    await self._serves.wait()  # replaced when a newer owner begins; loop
            if not self._serves.is_set():
                raise Unavailable(f"group {self._group}'s new owner (epoch {self._epoch}) is still "
                                  f"recovering after {self._start_wait_s:g} s")
            now = time.monotonic()
        return await self._send(_Sent(now, self._epoch), method, args)


# -- the owner side ----------------------------------------------------------------------------


class _Replies:
    """The owner's replies on their way back, grouped by worker (a reply subject without its
    last token, ``<inbox>``): everything ready for one worker in the same moment is one NATS
    message, as ``_Outbox`` does for a socket. Each worker has its own ``Calls`` (its in-flight
    limit)."""

    def __init__(self, client: StreamClient, port_of: Callable[[], LocalPort | None],
                 confirm: Confirm | None) -> None:
        self._client = client
        self._port_of = port_of
        self._confirm = confirm
        self._callers: dict[str, Calls] = {}
        self._reply_to: dict[str, str] = {}
        self._pending: dict[str, list[list[Any]]] = {}
        self._ready = anyio.Event()

    def caller(self, reply: str) -> Calls:
        worker = reply.rpartition(".")[0] or reply
        self._reply_to[worker] = reply  # any subject under <inbox>.* reaches the worker
        calls = self._callers.get(worker)
        if calls is None:
            if len(self._callers) >= WORKERS_REMEMBERED_MAX:
                self._forget_idle()
            calls = self._callers[worker] = Calls(self._port_of, partial(self._put, worker), self._confirm)
        return calls

    def _forget_idle(self) -> None:
        for worker in [worker for worker, calls in self._callers.items()
                       if calls.in_flight == 0 and worker not in self._pending]:
            del self._callers[worker]
            del self._reply_to[worker]

    def _put(self, worker: str, message: list[Any]) -> None:
        self._pending.setdefault(worker, []).append(message)
        self._ready.set()

    async def send_forever(self) -> None:
        while True:
            await self._ready.wait()
            self._ready = anyio.Event()
            await anyio.lowlevel.checkpoint()  # let everything ready in this moment join
            self.flush()

    def flush(self) -> None:
        """Sends every reply waiting, one message per worker (or a few, when large)."""
        pending, self._pending = self._pending, {}
        for worker, messages in pending.items():
            reply = self._reply_to.get(worker)
            if reply is None:
                continue
            for _, data in _frames(messages):
                self._client.publish_nowait(reply, data)


async def serve_nats(client: StreamClient, group: int, port_of: Callable[[], LocalPort | None], *,
                     confirm: Confirm | None = None, stop: anyio.Event | None = None, drain_s: float = 0.0,
                     task_status: anyio.abc.TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serves group ``group``'s requests from ``wallet.g<g>.rpc`` until cancelled, or until
    ``stop`` is set: then it refuses what arrives (``not_ready``: the worker answers 503 at
    once), drains its subscription (after which workers get NATS's no-responders until the
    next owner subscribes), gives the calls in hand up to ``drain_s`` to be answered, and
    returns. ``port_of`` and ``confirm`` as for ``serve_port``: no reply leaves before a fenced
    append made after its request arrived was accepted."""
    threadsafe = _threadsafe()
    send, receive = anyio.create_memory_object_stream[tuple[str, bytes]](math.inf)

    def deliver(reply: str, data: bytes) -> None:
        try:
            send.send_nowait((reply, data))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # gone: the worker's silence and timeout rules settle the call

    def arrived(_subject: str, reply: str, _headers: dict[str, str] | None, data: bytes) -> None:
        threadsafe(deliver, reply, data)

    subject = rpc_subject(group)
    unsubscribe = await anyio.to_thread.run_sync(partial(client.subscribe_messages, subject, arrived, drain=True))
    subscribed = True
    stopping = False

    async def unsubscribe_once() -> None:
        nonlocal subscribed
        if subscribed:
            subscribed = False
            try:
                await anyio.to_thread.run_sync(unsubscribe)
            except Exception as error:  # the connection is going: so is the subscription
                log.debug("unsubscribing from %s: %r", subject, error)

    replies = _Replies(client, port_of, confirm)
    taken = anyio.Event()

    async def take(calls: anyio.abc.TaskGroup) -> None:
        async for reply, data in receive:
            if not reply:
                log.error("a request on %s without a reply subject: dropped", subject)
                continue
            caller = replies.caller(reply)
            try:
                for message in _unframe(data):
                    if stopping:
                        caller.refuse(message, f"the owner of group {group} is stopping")
                    else:
                        caller.dispatch(calls, message)
            except w.ProtocolError as error:
                log.error("a worker sent bytes that are not the protocol on %s (%s): dropped", subject, error)
        taken.set()

    task_status.started([f"nats:{subject}"])
    try:
        async with send, receive, anyio.create_task_group() as tasks:
            tasks.start_soon(replies.send_forever)
            with anyio.CancelScope() as draining:
                async with anyio.create_task_group() as calls:
                    tasks.start_soon(take, calls)
                    if stop is None:
                        await anyio.sleep_forever()
                    else:
                        await stop.wait()
                        stopping = True  # from here on ``take`` refuses, and starts nothing in ``calls``
                        draining.deadline = anyio.current_time() + drain_s
                        await unsubscribe_once()  # the node sends no more; what it sent is queued here
                        threadsafe(send.close)  # after those: ``take`` refuses them all, then ends
            if draining.cancelled_caught:
                log.warning("%s: calls still running %.1f s after the stop were abandoned", subject, drain_s)
            with anyio.move_on_after(drain_s):
                await taken.wait()
            replies.flush()
            tasks.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await unsubscribe_once()
