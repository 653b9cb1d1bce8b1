"""The replicated log's client: fenced appends to a NATS JetStream stream, reads, heartbeats.

It owns one nats-py connection, which runs on asyncio, in its own daemon thread with its own
event loop; every public method is a plain blocking call, safe from any thread (the WAL writer's
thread, ``anyio.to_thread`` from trio, a test). It never touches the caller's event loop, and it
moves bytes only: it knows nothing of the ledger (ADR 0013).

``publish`` is the fence. Every append carries ``Nats-Expected-Last-Sequence`` (the stream's
leader refuses it with error 10071 unless the stream ends there) and ``Nats-Msg-Id`` (the stream
keeps ids for ``DUPLICATE_WINDOW_S`` and answers a repeated id with the original sequence).
It returns a sequence only once JetStream said the message is stored by a quorum, and never for
a message it has not seen in the stream. The outcomes, in the order they are checked:

================================  ==========================================================
what the leader answered          what ``publish`` does
================================  ==========================================================
ack, not a duplicate              return its sequence (it is ``expected_last_seq + 1``)
ack, duplicate                    read that sequence from the leader; ours: return it;
                                  not readable yet: retry (below)
10071 wrong last sequence         read ``expected_last_seq + 1`` from the leader; ours (an
                                  earlier attempt landed): return it; someone else's: raise
                                  ``Fenced``; nothing there: retry
timeout, no responders, 503/500,  uncertain: retry with the same id and fence until
connection lost or reconnecting   ``timeout_s`` has passed, then raise ``LogUnavailable``
(also: the connection dropped     (an attempt does not wait for an answer that was due on
while the attempt waited)         a connection that is gone)
any other refusal (400)           ``ValueError``: the caller sent what can never be stored
================================  ==========================================================

Measured on 2.15.1 (``tests/wal/test_jetstream.py``): a repeated id with a stale fence gets the
duplicate ack, not 10071 (the dedupe check comes first); the 10071 row still matters when the
duplicate window has passed or the id left the leader's memory in a leader change.

Reads use batched direct gets (``allow_direct``), which any replica answers, so a read may lag
the leader by a moment but only ever shows committed messages; ``message`` and the fence's
checks use the leader's own get, which cannot lag. A consumer per read was the alternative: a
create and a delete per call, for nothing a batch of direct gets does not already give.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

log = logging.getLogger("wal.jetstream")

T = TypeVar("T")

# One group commit is one message. Kept equal to server/_natsnodes.py's PAYLOAD_BYTES_MAX (wal/
# may not import server/); headers share that limit, so the stream's limit is the same number.
MESSAGE_BYTES_MAX = 24 * 1024 * 1024
# How long the stream remembers a Nats-Msg-Id: the longest a retry of one publish may take.
DUPLICATE_WINDOW_S = 120.0
# One attempt's wait for an ack: long enough for a quorum fsync of a full message on a healthy
# cluster, short enough that a request lost with a dead leader is retried soon after a new one
# is elected.
ATTEMPT_TIMEOUT_S = 2.0
ATTEMPT_BYTES_PER_S = 32 * 1024 * 1024
RETRY_PAUSE_S = 0.05
RECONNECT_WAIT_S = 0.25
# Requests other than publish (stream info, gets): one round trip to the leader or a replica.
REQUEST_TIMEOUT_S = 5.0
# A fetch asks for at most this much in one batch (it always gets at least one message).
FETCH_BYTES_MAX = 64 * 1024 * 1024
FETCH_POLL_S = 0.025
# What the nats-py client may buffer while reconnecting: a couple of full messages.
CLIENT_PENDING_BYTES_MAX = 64 * 1024 * 1024

WRONG_LAST_SEQUENCE = 10071
NO_PEERS = 10005  # "no suitable peers for placement": too few nodes up and current to place a stream
ENSURE_RETRY_S = 0.25
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
MSG_ID = "Nats-Msg-Id"
# Headers a direct get adds to the stored ones; ``StoredMessage.headers`` are what was published.
_DIRECT_GET_HEADERS = frozenset(
    {
        "Nats-Stream",
        "Nats-Subject",
        "Nats-Sequence",
        "Nats-Time-Stamp",
        "Nats-Num-Pending",
        "Nats-Last-Sequence",
    }
)


class Fenced(Exception):
    """Someone else appended at the sequence this publish expected: a newer owner exists."""


class LogUnavailable(Exception):
    """JetStream gave no answer in time: the outcome of a publish could not be settled, or a
    read could not be served. Nothing was reported as stored."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMessage:
    seq: int
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


# Failures after which a publish may or may not have been stored: resolved by retrying.
_UNCERTAIN: tuple[type[BaseException], ...] = (
    asyncio.TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.UnexpectedEOF,
)


class StreamClient:
    """A blocking, thread-safe JetStream client on its own asyncio thread."""

    def __init__(self, servers: list[str], *, name: str) -> None:
        assert servers
        self._servers = list(servers)
        self._name = name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"nats-{name}", daemon=True
        )
        self._nc: Client | None = None
        self._streams_by_subject: dict[str, str] = {}
        # Set (and replaced) when the connection drops: an answer due on it will never come.
        self._lost: asyncio.Event | None = None
        self._publishing: set[asyncio.Task[None]] = set()  # ``publish_nowait``'s, until done

    # -- lifecycle -------------------------------------------------------------------------

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connects to any of ``servers``; afterwards the client reconnects forever on its own."""
        assert self._nc is None, "already connected"
        self._thread.start()

        async def errored(error: Exception) -> None:
            log.debug("nats client %s: %r", self._name, error)

        async def disconnected() -> None:
            lost, self._lost = self._lost, asyncio.Event()
            if lost is not None:
                lost.set()

        async def connect() -> Client:
            self._lost = asyncio.Event()
            return await nats.connect(
                self._servers,
                name=self._name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=RECONNECT_WAIT_S,
                connect_timeout=2,
                pending_size=CLIENT_PENDING_BYTES_MAX,
                error_cb=errored,
                disconnected_cb=disconnected,
            )

        self._nc = self._call(connect(), timeout_s)

    def close(self) -> None:
        """Closes the connection and ends the thread. The client cannot be used again."""
        if self._nc is not None:
            nc = self._nc
            try:
                self._call(nc.close(), REQUEST_TIMEOUT_S)
            except Exception as error:  # closing is best effort; the thread ends either way
                log.debug("closing nats client %s: %r", self._name, error)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(REQUEST_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()

    # -- streams ---------------------------------------------------------------------------

    def ensure_stream(self, stream: str, subject: str, *, replicas: int = 3, timeout_s: float = 30) -> None:
        """Creates ``stream`` on ``subject`` if it does not exist: file storage, ``replicas``
        copies, no limits (the log is never discarded behind a reader), direct gets allowed.
        While the nodes cannot place it yet (a node just restarted is "offline" to the others
        for a moment; JetStream still electing its meta leader) it tries again, for up to
        ``timeout_s``."""

        def same(info: Any) -> bool:
            assert info.config.subjects == [subject], (stream, info.config.subjects, subject)
            return True

        self._ensure(self._config(stream, replicas, subjects=[subject]), same, timeout_s)
        self._streams_by_subject[subject] = stream

    def ensure_aggregate(self, stream: str, sources: list[str], *, replicas: int = 3, timeout_s: float = 30) -> None:
        """Creates ``stream`` as an aggregate of the streams ``sources`` (ADR 0013, *Several
        groups, revised*): no subject of its own; JetStream copies every source's messages
        into it, each source in its order, headers kept, with ``Nats-Stream-Source`` naming the
        source and its sequence. A reader's stream, off the commit path. An existing aggregate
        with other sources gets these (a group added); as ``ensure_stream`` otherwise."""
        wanted = sorted(sources)

        def same(info: Any) -> bool:
            return sorted(source.name for source in info.config.sources or []) == wanted

        config = self._config(stream, replicas, sources=[api.StreamSource(name=name) for name in wanted])
        self._ensure(config, same, timeout_s)

    @staticmethod
    def _config(stream: str, replicas: int, **where: Any) -> api.StreamConfig:
        return api.StreamConfig(
            name=stream,
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            num_replicas=replicas,
            max_msg_size=MESSAGE_BYTES_MAX,
            duplicate_window=DUPLICATE_WINDOW_S,
            allow_direct=True,
            **where,
        )

    def _ensure(self, config: api.StreamConfig, same: Callable[[Any], bool], timeout_s: float) -> None:
        """Adds the stream of ``config``, or updates it when ``same`` says the existing one
        differs; placement failures are retried for up to ``timeout_s``."""

        name = config.name
        assert name is not None

        async def ensure(js: Any) -> None:
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                await js.add_stream(config)
                return
            if not same(info):
                await js.update_stream(config)

        self._placed(f"stream {name}", ensure, timeout_s)

    def _placed(self, what: str, ensure: Callable[[Any], Coroutine[Any, Any, None]], timeout_s: float) -> None:
        """Runs ``ensure(jetstream)`` until it passes, for up to ``timeout_s`` while the nodes
        cannot place what it makes yet (a node just restarted is "offline" to the others for a
        moment; JetStream still electing its meta leader)."""

        async def run() -> None:
            js = self._client().jetstream(timeout=REQUEST_TIMEOUT_S)
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    await ensure(js)
                    return
                except (nats.js.errors.ServiceUnavailableError, nats.js.errors.BadRequestError) as error:
                    transient = isinstance(error, nats.js.errors.ServiceUnavailableError) or error.err_code == NO_PEERS
                    if not transient or time.monotonic() >= deadline:
                        raise
                    log.info("%s cannot be placed yet (%s); trying again", what, error.description)
                    await asyncio.sleep(ENSURE_RETRY_S)

        self._call(run(), timeout_s + 2 * REQUEST_TIMEOUT_S)

    def last_sequence(self, stream: str) -> int:
        """The stream's last sequence as its leader knows it (0 when empty)."""
        info = self._request(self._jsm().stream_info(stream))
        return int(info.state.last_seq)

    def stream_leader(self, stream: str) -> str | None:
        """The server name of the stream's leader, None while it has none."""
        info = self._request(self._jsm().stream_info(stream))
        return None if info.cluster is None else info.cluster.leader

    # -- a key-value bucket: small records shared by processes on any host -----------------

    def ensure_bucket(self, bucket: str, *, replicas: int = 3, timeout_s: float = 30) -> None:
        """Creates the key-value bucket ``bucket`` (JetStream KV, one value kept per key,
        ``replicas`` copies, stored with the nodes' ``sync_interval: always`` like the log) if it
        does not exist; placement failures are retried as for ``ensure_stream``."""

        async def ensure(js: Any) -> None:
            try:
                await js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                await js.create_key_value(bucket=bucket, history=1, replicas=replicas, storage=api.StorageType.FILE)

        self._placed(f"bucket {bucket}", ensure, timeout_s)

    def get_value(self, bucket: str, key: str) -> tuple[bytes, int] | None:
        """The value of ``key`` and its revision; None when it has none (never written, or
        deleted)."""

        async def get() -> tuple[bytes, int] | None:
            kv = await self._client().jetstream(timeout=REQUEST_TIMEOUT_S).key_value(bucket)
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:  # KeyDeletedError is one
                return None
            return entry.value or b"", int(entry.revision or 0)

        return self._request(get())

    def put_value(self, bucket: str, key: str, value: bytes, *, last: int) -> int | None:
        """Writes ``value`` if ``key``'s revision is still ``last`` (0: it has no value yet):
        the new revision, or None when another writer came first (read again and retry)."""

        async def put() -> int | None:
            kv = await self._client().jetstream(timeout=REQUEST_TIMEOUT_S).key_value(bucket)
            try:
                if last == 0:
                    return int(await kv.create(key, value))
                return int(await kv.update(key, value, last=last))
            except nats.js.errors.KeyWrongLastSequenceError:
                return None

        return self._request(put())

    def delete_value(self, bucket: str, key: str) -> None:
        async def delete() -> None:
            kv = await self._client().jetstream(timeout=REQUEST_TIMEOUT_S).key_value(bucket)
            await kv.delete(key)

        self._request(delete())

    # -- the fenced append -----------------------------------------------------------------

    def publish(
        self,
        subject: str,
        data: bytes,
        *,
        expected_last_seq: int,
        msg_id: str,
        headers: dict[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> int:
        """Appends ``data`` as the message right after ``expected_last_seq``; returns its
        sequence once a quorum stored it. Raises ``Fenced`` or ``LogUnavailable`` (see the table
        in the module docstring)."""
        assert expected_last_seq >= 0
        assert msg_id
        stream = self._stream_of(subject)
        all_headers = dict(headers or {})
        all_headers[EXPECTED_LAST_SEQUENCE] = str(expected_last_seq)
        all_headers[MSG_ID] = msg_id
        attempt_s = ATTEMPT_TIMEOUT_S + len(data) / ATTEMPT_BYTES_PER_S
        deadline = time.monotonic() + timeout_s
        return self._call(
            self._publish(
                stream, subject, data, all_headers, expected_last_seq, msg_id, attempt_s, deadline
            ),
            timeout_s + attempt_s + REQUEST_TIMEOUT_S,
        )

    async def _publish(
        self,
        stream: str,
        subject: str,
        data: bytes,
        headers: dict[str, str],
        expected_last_seq: int,
        msg_id: str,
        attempt_s: float,
        deadline: float,
    ) -> int:
        last_problem = "no attempt"
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                outcome = await self._attempt(
                    stream,
                    subject,
                    data,
                    headers,
                    expected_last_seq,
                    msg_id,
                    min(attempt_s, remaining),
                )
            except LogUnavailable as error:  # a resolving read failed: still uncertain
                outcome = str(error)
            if isinstance(outcome, int):
                return outcome
            last_problem = outcome
            log.debug("%s: publish of %r uncertain, retrying: %s", stream, msg_id, outcome)
            await asyncio.sleep(min(RETRY_PAUSE_S, max(0.0, deadline - time.monotonic())))
        raise LogUnavailable(f"{stream}: publish of {msg_id!r} unresolved: {last_problem}")

    async def _attempt(
        self,
        stream: str,
        subject: str,
        data: bytes,
        headers: dict[str, str],
        expected_last_seq: int,
        msg_id: str,
        timeout_s: float,
    ) -> int | str:
        """One publish and what settles it: the stored sequence, or why it is still uncertain."""
        js = self._client().jetstream()
        assert self._lost is not None
        try:
            ack = await _unless_lost(
                js.publish(subject, data, timeout=timeout_s, headers=dict(headers)), self._lost
            )
        except nats.js.errors.APIError as error:
            if error.err_code != WRONG_LAST_SEQUENCE:
                if isinstance(error, _UNCERTAIN):
                    return str(error)
                raise ValueError(f"JetStream refused the message: {error}") from None
            # Someone is at our sequence: our own earlier attempt, or a newer owner.
            found = await self._leader_get(stream, expected_last_seq + 1)
            if found is None:
                return f"{error} and nothing at {expected_last_seq + 1} yet"
            if found.headers.get(MSG_ID) != msg_id:
                raise Fenced(
                    f"{stream}: sequence {expected_last_seq + 1} is "
                    f"{found.headers.get(MSG_ID)!r}, not {msg_id!r}"
                ) from None
            return found.seq
        except _UNCERTAIN as error:
            return repr(error)
        if not ack.duplicate:
            assert ack.seq == expected_last_seq + 1, (ack.seq, expected_last_seq)
            return int(ack.seq)
        # A duplicate ack names the first attempt's sequence: prove it is stored.
        found = await self._leader_get(stream, ack.seq)
        if found is None or found.headers.get(MSG_ID) != msg_id:
            return f"duplicate ack for {ack.seq} not readable as ours yet"
        assert found.seq == expected_last_seq + 1, (found.seq, expected_last_seq)
        return found.seq

    # -- reads -----------------------------------------------------------------------------

    def message(self, stream: str, seq: int) -> StoredMessage | None:
        """The message at ``seq`` as the stream's leader has it, None if there is none."""
        assert seq >= 1
        return self._call(self._leader_get(stream, seq), 2 * REQUEST_TIMEOUT_S)

    async def _leader_get(self, stream: str, seq: int) -> StoredMessage | None:
        try:
            raw = await asyncio.wait_for(self._jsm().get_msg(stream, seq=seq), REQUEST_TIMEOUT_S)
        except nats.js.errors.NotFoundError:
            return None
        except _UNCERTAIN as error:
            raise LogUnavailable(f"{stream}: reading {seq}: {error!r}") from None
        assert raw.seq == seq, (raw.seq, seq)
        headers = {str(k): str(v) for k, v in (raw.headers or {}).items()}
        return StoredMessage(seq=seq, data=raw.data or b"", headers=headers)

    def fetch(
        self, stream: str, from_seq: int, *, max_messages: int = 1000, wait_s: float = 1.0,
        max_bytes: int = FETCH_BYTES_MAX,
    ) -> list[StoredMessage]:
        """The stored messages from ``from_seq`` on, in order, at most ``max_messages`` and
        about ``max_bytes`` (always at least one message when there is one); waits up to
        ``wait_s`` for the first one; an empty list if none came."""
        assert from_seq >= 1
        assert max_messages >= 1 and max_bytes >= 1
        return self._call(
            self._fetch(stream, from_seq, max_messages, max_bytes, time.monotonic() + wait_s),
            wait_s + 2 * REQUEST_TIMEOUT_S,
        )

    async def _fetch(
        self, stream: str, from_seq: int, max_messages: int, max_bytes: int, deadline: float
    ) -> list[StoredMessage]:
        while True:
            found = await self._direct_batch(stream, from_seq, max_messages, max_bytes)
            if found or time.monotonic() >= deadline:
                return found
            # Direct gets cannot wait; an idle tail polls. A long-lived consumer per tail would
            # push instead; it is the next step if idle standbys' polling ever shows up.
            await asyncio.sleep(min(FETCH_POLL_S, max(0.0, deadline - time.monotonic())))

    async def _direct_batch(
        self, stream: str, from_seq: int, max_messages: int, max_bytes: int = FETCH_BYTES_MAX
    ) -> list[StoredMessage]:
        nc = self._client()
        inbox = nc.new_inbox()
        subscription = await nc.subscribe(inbox)
        request = {"seq": from_seq, "batch": max_messages, "max_bytes": max_bytes}
        found: list[StoredMessage] = []
        try:
            await nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox
            )
            while True:
                reply = await subscription.next_msg(timeout=REQUEST_TIMEOUT_S)
                status = (reply.headers or {}).get("Status")
                if status is not None:
                    # 204 "EOB" ends a batch; 404 means nothing at or after from_seq.
                    if status not in ("204", "404"):
                        raise LogUnavailable(f"{stream}: direct get answered {status}")
                    return found
                stored = _stored(reply)
                assert stored.seq == (found[-1].seq + 1 if found else stored.seq)
                assert stored.seq >= from_seq
                found.append(stored)
        except _UNCERTAIN as error:
            raise LogUnavailable(f"{stream}: reading from {from_seq}: {error!r}") from None
        finally:
            await subscription.unsubscribe()

    # -- core NATS (heartbeats, the workers' requests) ---------------------------------------

    def publish_core(self, subject: str, data: bytes) -> None:
        """Fire and forget, as a heartbeat wants: no ack, lost when no one listens."""
        self._call(self._client().publish(subject, data), REQUEST_TIMEOUT_S)

    def publish_nowait(self, subject: str, data: bytes, *, reply: str = "") -> None:
        """Queues a core publish on the client's loop and returns at once, without waiting for
        that loop: what an event loop of the caller's own (trio) may call. Nothing reports
        back: a message the connection could not take is logged and lost, as any core message
        may be (the request/reply layer above settles lost calls by its own rules)."""
        try:
            self._loop.call_soon_threadsafe(self._publish_soon, subject, data, reply)
        except RuntimeError:  # the loop was closed: the client is closed
            log.debug("nats client %s: publish on %s after close dropped", self._name, subject)

    def _publish_soon(self, subject: str, data: bytes, reply: str) -> None:
        task = self._loop.create_task(self._client().publish(subject, data, reply=reply))
        self._publishing.add(task)
        task.add_done_callback(self._published)

    def _published(self, task: asyncio.Task[None]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("nats client %s: a core publish failed: %r", self._name, task.exception())

    def new_inbox(self) -> str:
        """A subject no other connection uses: the prefix of this client's reply subjects."""
        return self._client().new_inbox()

    def subscribe_core(self, subject: str, callback: Callable[[bytes], None]) -> Callable[[], None]:
        """Calls ``callback(data)`` in the client's thread for every message on ``subject``
        (it must not block); returns a function that unsubscribes."""
        return self.subscribe_messages(subject, lambda _subject, _reply, _headers, data: callback(data))

    def subscribe_messages(
        self, subject: str, callback: Callable[[str, str, dict[str, str] | None, bytes], None],
        *, drain: bool = False,
    ) -> Callable[[], None]:
        """``subscribe_core`` with the whole message: ``callback(subject, reply, headers,
        data)`` (``subject`` may be a wildcard's match; ``headers`` carries the server's
        ``Status`` on a no-responders answer). With ``drain``, the function returned drains
        rather than unsubscribes: it returns once the server has stopped sending and every
        message it sent before has been given to ``callback`` (none is dropped on the way)."""

        async def deliver(msg: Msg) -> None:
            try:
                callback(msg.subject, msg.reply, msg.headers, msg.data)
            except Exception:  # a broken callback must not end the subscription
                log.exception("core subscription callback on %s failed", subject)

        async def subscribe() -> Any:
            subscribed = await self._client().subscribe(subject, cb=deliver)
            # A round trip: once it returns, the node this client is connected to routes the
            # subject here (a cluster owner starts beating only then: ``server._serve.serve``).
            await self._client().flush(int(REQUEST_TIMEOUT_S))
            return subscribed

        subscription = self._call(subscribe(), 2 * REQUEST_TIMEOUT_S)

        def unsubscribe() -> None:
            stop = subscription.drain() if drain else subscription.unsubscribe()
            self._call(stop, 2 * REQUEST_TIMEOUT_S)

        return unsubscribe

    # -- inside ----------------------------------------------------------------------------

    def _client(self) -> Client:
        assert self._nc is not None, "connect() first"
        return self._nc

    def _jsm(self) -> Any:
        return self._client().jsm(timeout=REQUEST_TIMEOUT_S)

    def _stream_of(self, subject: str) -> str:
        stream = self._streams_by_subject.get(subject)
        if stream is None:
            stream = self._request(self._jsm().find_stream_name_by_subject(subject))
            self._streams_by_subject[subject] = stream
        return stream

    def _request(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """One request/reply round trip; no answer in time is ``LogUnavailable``."""

        async def bounded() -> T:
            try:
                return await asyncio.wait_for(coroutine, REQUEST_TIMEOUT_S)
            except _UNCERTAIN as error:
                raise LogUnavailable(repr(error)) from None

        return self._call(bounded(), 2 * REQUEST_TIMEOUT_S)

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Runs ``coroutine`` on the client's loop and waits for it from this (other) thread."""
        assert threading.current_thread() is not self._thread, "would wait for itself"
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise LogUnavailable(f"no answer within {timeout_s} s") from None


async def _unless_lost(coroutine: Coroutine[Any, Any, T], lost: asyncio.Event) -> T:
    """``coroutine``'s result, unless the connection drops first: the answer to a request sent
    on it would have come back on it, so without this the attempt would wait out its whole
    timeout (seen: a 2 s stall of every append when the node the owner was connected to was
    SIGKILLed). Raises ``ConnectionReconnectingError`` then, which is uncertain: retried."""
    task = asyncio.ensure_future(coroutine)
    waiter = asyncio.ensure_future(lost.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    raise nats.errors.ConnectionReconnectingError


def _stored(reply: Msg) -> StoredMessage:
    headers = reply.headers or {}
    return StoredMessage(
        seq=int(headers["Nats-Sequence"]),
        data=reply.data,
        headers={str(k): str(v) for k, v in headers.items() if str(k) not in _DIRECT_GET_HEADERS},
    )
