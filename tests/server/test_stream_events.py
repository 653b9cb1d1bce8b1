"""The events feed of cluster mode read from the group's stream (``server._stream_events``):
page for page what the owner's own feed (``ledger.EventFeed``) answers, over a stream written by
a real ledger through a real ``Replica`` (frames, the epoch record, read barriers between them),
with probes and pages shrunk so that the search steps over barriers and across messages."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from ledger import open_ledger
from ledger.testing import setup, transfer
from server import _stream_events
from server._member import Replica, Standby, log_subject, stream_name
from server._stream_events import StreamEvents
from wal.testing import FakeStream

GROUP = 0


def _quiet(**status: Any) -> None:
    pass


def owned_ledger(client: Any, directory: Path, group: int = GROUP) -> tuple[Any, Replica]:
    """A ledger in ``directory`` whose group commits go to group ``group``'s stream through a
    real ``Replica`` that won the group's first epoch (``client``: a fake or a real stream's)."""
    client.ensure_stream(stream_name(group), log_subject(group))
    member = Standby(client, group=group, data_dir=directory / "copy", node=f"g{group}", status=_quiet,
                     takeover_after_s=0)
    seq = member.run()
    member.mirror.close()
    replica = Replica(client, group=group, epoch=member.epoch, last_seq=seq, node=f"g{group}", status=_quiet,
                      exit=lambda message: pytest.fail(message))
    return open_ledger(directory / "owner", replicate=replica.replicate), replica


async def write_some(ledger: Any, replica: Replica, prefix: str = "w") -> None:
    """Deposits, transfers, barriers between them and atomic and non-atomic batches."""
    ids = [f"{prefix}{number}" for number in range(6)]
    await setup(ledger, ids, 1000)
    number = 0
    for round_ in range(5):
        for index, source in enumerate(ids):
            number += 1
            await ledger.transfer(transfer(number, source, ids[(index + 1) % len(ids)], 1 + round_))
        await replica.confirm(time.monotonic())  # a barrier: a message without records
        commands = [transfer(1000 + number * 10 + k, ids[k], ids[(k + 2) % len(ids)], 1) for k in range(4)]
        await ledger.transfer_batch(commands, atomic=round_ % 2 == 0)


@pytest.mark.parametrize("shrunk", [False, True])
async def test_every_page_equals_the_owners_feed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  shrunk: bool) -> None:
    if shrunk:  # one message a fetch: the search and the page step over barriers one by one
        monkeypatch.setattr(_stream_events, "PAGE_MESSAGES", 1)
        monkeypatch.setattr(_stream_events, "PROBE_BYTES", 1)
    stream = FakeStream()
    ledger, replica = owned_ledger(stream.client(), tmp_path)
    async with anyio.create_task_group() as group:
        await group.start(ledger.run)
        await write_some(ledger, replica)
        kinds = [message.headers["Wallet-Kind"] for message in stream.streams[stream_name(GROUP)]]
        assert kinds.count("barrier") >= 5 and kinds[0] == "epoch" and kinds.count("frames") > 10
        durable = ledger.wal.durable_lsn
        feed = StreamEvents(stream.client(), stream_name(GROUP))
        cold = StreamEvents(stream.client(), stream_name(GROUP))  # no hints: every page searched
        for limit in (1, 3, 7, 1000):
            after = 0
            while True:
                expected = await ledger.events.read(after, limit=limit)
                got, _ = feed.page(after, limit)
                assert got == expected, (after, limit)
                assert cold.page(after, limit)[0] == expected
                if not got:
                    break
                after = got[-1][0]
            assert after == durable
        for after in range(0, durable + 2):  # from anywhere, not only where a page ended
            assert cold.page(after, 2)[0] == await ledger.events.read(after, limit=2)
        await ledger.stop()


async def test_a_long_poll_wakes_when_the_stream_grows(tmp_path: Path) -> None:
    stream = FakeStream()
    ledger, _ = owned_ledger(stream.client(), tmp_path)
    async with anyio.create_task_group() as group:
        await group.start(ledger.run)
        await setup(ledger, ["a", "b"], 10)
        feed = StreamEvents(stream.client(), stream_name(GROUP))
        group.start_soon(feed.watch)
        durable = ledger.wal.durable_lsn
        assert await feed.read(durable, 10, 0) == []  # nothing newer, no wait
        started = time.monotonic()
        with anyio.move_on_after(0.3):
            await feed.read(durable, 10, 5)
        assert time.monotonic() - started >= 0.29  # it waited while nothing came

        found: list[Any] = []

        async def reader() -> None:
            found.extend(await feed.read(durable, 10, 5))

        group.start_soon(reader)
        await anyio.sleep(0.1)
        assert not found
        await ledger.transfer(transfer(1, "a", "b", 3))
        with anyio.fail_after(2):
            while not found:
                await anyio.sleep(0.01)
        assert [lsn for lsn, _ in found] == [durable + 1]
        assert found == await ledger.events.read(durable, limit=10)
        await ledger.stop()
        group.cancel_scope.cancel()
