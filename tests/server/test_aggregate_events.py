"""The events feed of several groups (``server._stream_events.AggregateEvents``, ADR 0013,
*Several groups, revised*): two groups' ledgers write their streams at the same time through
real ``Replica``s on three real JetStream nodes, an aggregate stream sources both, and the feed
read from it holds every record of both exactly once, each group's in its own order, at
positions that grow, page after page and from any position. A copy made twice is read once."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from server._member import log_subject, stream_name
from server._stream_events import INDEX_BITS, AggregateEvents, source_of
from tests.server.test_stream_events import owned_ledger, write_some
from wal import StreamClient
from wal.testing import StoredMessage

AGGREGATE = "WALLET_EVENTS_TEST"
GROUPS = (1, 2)


@pytest.fixture(scope="module")
def client(nats_client: StreamClient) -> StreamClient:
    return nats_client


async def _all_events(ledger: Any) -> list[Any]:
    events, after = [], 0
    while page := await ledger.events.read(after, limit=1000):
        events.extend(event for _, event in page)
        after = page[-1][0]
    return events


def _read_all(feed: AggregateEvents, limit: int) -> list[tuple[int, Any]]:
    found: list[tuple[int, Any]] = []
    after = 0
    while True:
        page, _ = feed.page(after, limit)
        if not page:
            return found
        found.extend(page)
        after = page[-1][0]


def _mine(prefix: str, events: list[Any]) -> list[Any]:
    return [event for event in events if f"'{prefix}" in repr(event)]


async def test_the_aggregate_feed_holds_every_groups_records_once_in_each_groups_order(
        client: StreamClient, tmp_path: Path) -> None:
    owned = {group: owned_ledger(client, tmp_path / f"g{group}", group) for group in GROUPS}
    client.ensure_aggregate(AGGREGATE, [stream_name(group) for group in GROUPS])
    expected: dict[int, list[Any]] = {}
    async with anyio.create_task_group() as tasks:
        for ledger, _ in owned.values():
            await tasks.start(ledger.run)
        async with anyio.create_task_group() as writers:  # both groups at once
            for group, (ledger, replica) in owned.items():
                writers.start_soon(write_some, ledger, replica, f"g{group}w")
        for group, (ledger, _) in owned.items():
            expected[group] = await _all_events(ledger)
            await ledger.stop()
    copies = sum(client.last_sequence(stream_name(group)) for group in GROUPS)
    deadline = time.monotonic() + 10
    while client.last_sequence(AGGREGATE) < copies:
        assert time.monotonic() < deadline, "the aggregate did not copy both streams"
        time.sleep(0.05)
    assert client.last_sequence(AGGREGATE) == copies

    feed = AggregateEvents(client, AGGREGATE)
    full = _read_all(feed, 1000)
    positions = [at for at, _ in full]
    assert positions == sorted(set(positions)) and positions[0] >= 1 << INDEX_BITS
    events = [event for _, event in full]
    assert Counter(map(repr, events)) == Counter(map(repr, expected[1] + expected[2]))
    for group in GROUPS:  # each group's records in its own order
        assert _mine(f"g{group}w", events) == _mine(f"g{group}w", expected[group])
    sources = {source_of(message)[0] for message in client.fetch(AGGREGATE, 1, max_messages=1000, wait_s=0)
               if source_of(message) is not None}
    assert sources == {stream_name(group) for group in GROUPS}
    assert _read_all(feed, 1) == full and _read_all(feed, 7) == full
    # From any position, also one a page never ended at, the page continues the feed.
    for index, (at, _) in enumerate(full[:-1]):
        assert feed.page(at, 1)[0][0] == full[index + 1]
    assert feed.page(positions[-1], 10)[0] == []


def _source(message: StoredMessage) -> tuple[str, int]:
    found = source_of(message)
    assert found is not None, message.headers
    return found


class _Aggregate:
    """An aggregate stream given as its messages (``fetch`` and ``last_sequence``)."""

    def __init__(self, messages: list[StoredMessage]) -> None:
        self.messages = messages

    def last_sequence(self, stream: str) -> int:
        return len(self.messages)

    def fetch(self, stream: str, seq: int, *, max_messages: int, wait_s: float, max_bytes: int) -> list[StoredMessage]:
        return self.messages[seq - 1:seq - 1 + max_messages]


async def test_a_copy_made_again_is_read_once(client: StreamClient, tmp_path: Path) -> None:
    """A source's message copied a second time (after a leader change of the sourcing) comes
    after copies of later messages of the same source: the reader has passed its sequence and
    skips it, so no record is in the feed twice."""
    ledger, replica = owned_ledger(client, tmp_path, 5)
    client.ensure_aggregate("WALLET_EVENTS_ONCE", [stream_name(5)])
    async with anyio.create_task_group() as tasks:
        await tasks.start(ledger.run)
        await write_some(ledger, replica)
        await ledger.stop()
    deadline = time.monotonic() + 10
    while client.last_sequence("WALLET_EVENTS_ONCE") < client.last_sequence(stream_name(5)):
        assert time.monotonic() < deadline, "the aggregate did not copy the stream"
        time.sleep(0.05)
    stored = client.fetch("WALLET_EVENTS_ONCE", 1, max_messages=1000, wait_s=0)
    frames = [message for message in stored if message.headers.get("Wallet-Kind") == "frames"]
    again = frames[2]
    messages = [*stored[:10], again, *stored[10:]]
    renumbered = [StoredMessage(seq=number, data=message.data, headers=message.headers)
                  for number, message in enumerate(messages, start=1)]
    name, seq = _source(again)
    assert any(_source(message)[0] == name and _source(message)[1] > seq for message in stored[3:10]), \
        "no later message of the copy's source comes before it"
    once = [event for _, event in _read_all(AggregateEvents(_Aggregate(stored), AGGREGATE), 1000)]
    twice = [event for _, event in _read_all(AggregateEvents(_Aggregate(renumbered), AGGREGATE), 1000)]
    assert twice == once


def test_an_aggregate_gains_the_sources_of_groups_added_later(client: StreamClient) -> None:
    for group in (7, 8):
        client.ensure_stream(stream_name(group), log_subject(group))
    client.ensure_aggregate("WALLET_EVENTS_GROWN", [stream_name(7)])
    client.ensure_aggregate("WALLET_EVENTS_GROWN", [stream_name(7), stream_name(8)])
    client.publish(log_subject(8), b"", expected_last_seq=0, msg_id="g8-first", headers={"Wallet-Kind": "barrier"})
    deadline = time.monotonic() + 10
    while client.last_sequence("WALLET_EVENTS_GROWN") < 1:
        assert time.monotonic() < deadline, "the added group's stream is not copied"
        time.sleep(0.05)
    (copy,) = client.fetch("WALLET_EVENTS_GROWN", 1, max_messages=10, wait_s=0)
    assert _source(copy) == (stream_name(8), 1)
