"""The events feed of cluster mode, read by an HTTP worker from its group's stream (ADR 0013).

Events are facts of the log, and the stream is the log: every ``frames`` message in it was
accepted by the fence and stored by a quorum, so a worker can serve ``GET /v1/events`` by reading
the stream itself, with no call to the owner. The feed then keeps answering while a group has no
owner (between an owner's death and its standby's takeover), a long poll no longer holds a call
at the owner for up to 30 s, and the owner's core, the cluster's scarcest, does none of it.

Positions are the log's LSNs, as in every other mode: the frames of a message carry them. To find
where ``after`` is, the reader bisects the stream's sequences on the first LSN of each ``frames``
message (``epoch`` and ``barrier`` messages hold no records and are stepped over), with probes
capped at ``PROBE_BYTES`` so that a probe does not pull whole group commits; where the previous
pages ended is remembered (``HINTS`` of them), so a reader following the feed page after page
starts at the right message at once.

Read your writes: a page reads up to the last sequence the stream's leader reported when the
page began, so anything acknowledged before the request arrived is in it, even when the replica
answering the direct gets lags by a moment (its answer is read again until it gets there).
A long poll waits on one watcher per worker (``StreamEvents.watch``), which asks the leader for
the last sequence every ``WATCH_S`` while anyone waits, and wakes every waiting reader when the
stream grew.

With several groups the feed needs one order across them, which their streams do not have:
``AggregateEvents`` reads the aggregate stream that sources every group's stream
(``StreamClient.ensure_aggregate``), at positions made of the aggregate's sequence and the
record's index in its message (ADR 0013, *Several groups, revised*). Not served yet: a cluster
of one group keeps its LSNs, and more groups are refused until transfers between them exist.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import anyio

from ledger import Event
from ledger._codec import decode_event
from ledger._events import PAGE_MAX, WAIT_MAX_S
from ledger._history import weight
from server._member import KIND
from wal import Frame, FrameError, LogUnavailable, decode, peek_lsn

log = logging.getLogger("server.stream_events")

FRAMES = "frames"  # the kind of a group commit's message (``server._member``)
PROBE_BYTES = 64 * 1024
PAGE_MESSAGES = 8
PAGE_BYTES = 8 * 1024 * 1024
HINTS = 64
WATCH_S = 0.02
LAGGING_RETRIES = 50
INDEX_BITS = 20  # an aggregate position: the message's sequence * 2^20 + the record's index in it
INDEX_MAX = (1 << INDEX_BITS) - 1
SOURCE = "Nats-Stream-Source"  # JetStream's mark on a copy: "<stream> <sequence> ..."


class FeedBroken(Exception):
    """A ``frames`` message of the stream does not decode: the stream is not the log we think."""


def frames_of(data: bytes) -> list[Frame]:
    """The verified frames of one ``frames`` message (one group commit)."""
    frames = []
    offset = 0
    while offset < len(data):
        try:
            frame = decode(data, offset)
        except FrameError as error:
            raise FeedBroken(f"a frame at byte {offset} of a stream message does not verify: {error}") from None
        frames.append(frame)
        offset += frame.size
    return frames


def _first_lsn(message: Any) -> int | None:
    """The first LSN of a ``frames`` message (read, not verified: it only steers the search;
    the page verifies every frame it returns); None for any other kind."""
    if message.headers.get(KIND) != FRAMES:
        return None
    found = peek_lsn(message.data, 0)
    if found is None:
        raise FeedBroken(f"stream message {message.seq} is shorter than a frame header")
    return found[0]


class _StreamFeed:
    """``LedgerPort.events`` over one stream: the long poll and its watcher; ``page`` (how a
    position maps to messages) is the subclass's. ``page`` blocks (a worker thread runs it);
    ``read`` and ``watch`` run on the worker's event loop."""

    def __init__(self, client: Any, stream: str) -> None:
        self._client = client
        self._stream = stream
        self._last_seq = 0  # the newest last sequence the watcher saw
        self._grew = anyio.Event()
        self._waiting = 0

    def page(self, after: int, limit: int) -> tuple[list[tuple[int, Event]], int]:
        """(the page after position ``after``, the stream's last sequence it read up to)."""
        raise NotImplementedError

    # -- the event loop ---------------------------------------------------------------------

    async def read(self, after: int, limit: int, wait_s: float) -> list[tuple[int, Event]]:
        """Records at positions > ``after``, until they hold ``limit`` transactions (whole
        records, at least one), as ``ledger.EventFeed.read``; waits up to ``wait_s`` for the
        first one. Raises ``LogUnavailable`` when the stream cannot be read."""
        assert 1 <= limit <= PAGE_MAX
        deadline = time.monotonic() + min(wait_s, WAIT_MAX_S)
        while True:
            page, end_seq = await anyio.to_thread.run_sync(self.page, after, limit)
            remaining = deadline - time.monotonic()
            if page or remaining <= 0:
                return page
            with anyio.move_on_after(remaining):
                await self._past(end_seq)

    async def _past(self, seq: int) -> None:
        self._waiting += 1
        try:
            while self._last_seq <= seq:
                await self._grew.wait()
        finally:
            self._waiting -= 1

    async def watch(self) -> None:
        """Runs for the worker's life: while a reader waits, polls the stream's last sequence and
        wakes the readers when it moved."""
        while True:
            if self._waiting:
                try:
                    last = await anyio.to_thread.run_sync(self._client.last_sequence, self._stream)
                except LogUnavailable as error:
                    log.debug("%s: last sequence unknown: %s", self._stream, error)
                else:
                    if last > self._last_seq:
                        self._last_seq = last
                        grew, self._grew = self._grew, anyio.Event()
                        grew.set()
            await anyio.sleep(WATCH_S)

    # -- a worker thread ----------------------------------------------------------------------

    def end_sequence(self) -> int:
        """The stream's last sequence, from its leader (what a page reads up to)."""
        end_seq = self._client.last_sequence(self._stream)
        self._last_seq = max(self._last_seq, end_seq)
        return int(end_seq)

    def _messages(self, seq: int, end_seq: int) -> Iterator[Any]:
        """The ``frames`` messages from ``seq`` to ``end_seq``, in order (epoch records and
        barriers hold no records)."""
        while seq <= end_seq:
            for message in self._fetch(seq, end_seq, PAGE_MESSAGES, PAGE_BYTES):
                if message.seq > end_seq:
                    return
                seq = message.seq + 1
                if message.headers.get(KIND) == FRAMES:
                    yield message

    def _fetch(self, seq: int, end_seq: int, messages: int, max_bytes: int) -> list[Any]:
        """Messages from ``seq`` (which is at most ``end_seq``); a replica that has not stored
        ``seq`` yet is asked again, for a moment."""
        for _ in range(LAGGING_RETRIES):
            found = self._client.fetch(self._stream, seq, max_messages=messages, wait_s=0.0, max_bytes=max_bytes)
            if found:
                return list(found)
            time.sleep(WATCH_S)
        raise LogUnavailable(f"{self._stream}: sequence {seq} (at most {end_seq}) not readable")


class StreamEvents(_StreamFeed):
    """The feed of one group's stream, at the group's LSNs (module docstring)."""

    def __init__(self, client: Any, stream: str) -> None:
        super().__init__(client, stream)
        self._hints: OrderedDict[int, int] = OrderedDict()  # next LSN to read -> the sequence holding it

    def page(self, after: int, limit: int) -> tuple[list[tuple[int, Event]], int]:
        end_seq = self.end_sequence()
        seq = self._locate(after + 1, end_seq)
        if seq is None:
            return [], end_seq
        found: list[tuple[int, Event]] = []
        count = 0
        following = seq
        for message in self._messages(seq, end_seq):
            following = message.seq + 1
            for frame in frames_of(message.data):
                if frame.lsn <= after:
                    continue
                if count >= limit:  # whole records: the page ended with the one before
                    self._hint(frame.lsn, message.seq)
                    return found, end_seq
                event = decode_event(frame.payload)
                found.append((frame.lsn, event))
                count += weight(event)
        if found:
            self._hint(found[-1][0] + 1, following)  # at or before the message that will hold it
        return found, end_seq

    def _hint(self, lsn: int, seq: int) -> None:
        self._hints[lsn] = seq
        self._hints.move_to_end(lsn)
        while len(self._hints) > HINTS:
            self._hints.popitem(last=False)

    def _locate(self, lsn: int, end_seq: int) -> int | None:
        """The sequence of the last ``frames`` message whose first LSN is at most ``lsn`` (the
        one holding ``lsn`` if the log reaches it); None when the stream holds no record."""
        hinted = self._hints.get(lsn)
        if hinted is not None and hinted <= end_seq:
            return hinted
        best = None
        low, high = 1, end_seq
        while low <= high:
            middle = (low + high) // 2
            probe = self._probe(middle, high)
            if probe is None:
                high = middle - 1
                continue
            seq, first = probe
            if first <= lsn:
                best = seq
                low = seq + 1
            else:
                high = middle - 1
        return best

    def _probe(self, seq: int, high: int) -> tuple[int, int] | None:
        """(sequence, first LSN) of the first ``frames`` message in ``[seq, high]``."""
        while seq <= high:
            for message in self._fetch(seq, high, 64, PROBE_BYTES):
                if message.seq > high:
                    return None
                first = _first_lsn(message)
                if first is not None:
                    return message.seq, first
                seq = message.seq + 1
        return None


def position(seq: int, index: int) -> int:
    """The feed position of record ``index`` (from 0) of aggregate message ``seq``."""
    if index > INDEX_MAX:
        raise FeedBroken(f"aggregate message {seq} holds more than {INDEX_MAX + 1} records")
    return (seq << INDEX_BITS) | index


def source_of(message: Any) -> tuple[str, int] | None:
    """(source stream, its sequence) of an aggregate's copy, from ``Nats-Stream-Source`` (the
    stream's name may carry a ``:<hash>`` suffix); None for a message without one."""
    mark = message.headers.get(SOURCE)
    if not mark:
        return None
    parts = mark.split()
    try:
        return parts[0].split(":")[0], int(parts[1])
    except (IndexError, ValueError):
        raise FeedBroken(f"aggregate message {message.seq}: {SOURCE} {mark!r} names no sequence") from None


class AggregateEvents(_StreamFeed):
    """The feed of several groups (ADR 0013, *Several groups, revised*, point 1): read from the
    aggregate stream that sources every group's stream, in the aggregate's order, which keeps
    each group's own. A position is ``position(aggregate sequence, index of the record in its
    message)``: an integer that grows in feed order, so ``after`` names a message and a record
    in it, and a page starts there with no search. A copy whose source sequence this reader
    has already passed in the same page is skipped (a source copied again after a leader
    change); the aggregate's own duplicate window, on the message ids the copies keep, is
    what stops a copy made again further apart."""

    def page(self, after: int, limit: int) -> tuple[list[tuple[int, Event]], int]:
        end_seq = self.end_sequence()
        first_seq, done_index = after >> INDEX_BITS, after & INDEX_MAX
        seq = max(first_seq, 1)
        passed: dict[str, int] = {}
        found: list[tuple[int, Event]] = []
        count = 0
        for message in self._messages(seq, end_seq):
            source = source_of(message)
            if source is not None:
                name, source_seq = source
                if source_seq <= passed.get(name, 0):
                    continue
                passed[name] = source_seq
            for index, frame in enumerate(frames_of(message.data)):
                if message.seq == first_seq and index <= done_index:
                    continue
                if count >= limit:  # whole records: the page ended with the one before
                    return found, end_seq
                event = decode_event(frame.payload)
                found.append((position(message.seq, index), event))
                count += weight(event)
        return found, end_seq
