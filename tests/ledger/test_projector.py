"""The history projector of ``--workers N`` (``ledger._projector``), in one process for the test:
a ``Ledger`` that does not project (``recover(project_history=False)``, ``RemoteProjection``)
and a ``Projector`` tailing its log, joined by ``sync`` as the port joins them across processes.

The reference is the in-process projector: a copy of the log recovered with
``project_history=True`` must give the same read model. One test per row of the start-up table
in the module docstring, and the ledger side's promises (no backlog, reads wait for a commit)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing

from ledger import (
    Committed,
    History,
    HistoryLagging,
    Ledger,
    Projector,
    RemoteProjection,
    build_snapshot,
    recover,
    remove_covered,
)
from ledger._projector import LINGER_RECORDS_MAX
from ledger.testing import setup, transfer
from wal import list_segments

IDS = [f"w{index}" for index in range(6)]


def _ledger(data: Path) -> Ledger:
    return Ledger(recover(data, project_history=False), data, shards=2, segment_bytes_max=1024)


async def _transfers(ledger: Ledger, start: int, count: int) -> None:
    for number in range(start, start + count):
        source, target = IDS[number % len(IDS)], IDS[(number * 5 + 1) % len(IDS)]
        if source == target:
            target = IDS[(number + 1) % len(IDS)]
        assert isinstance(await ledger.transfer(transfer(number, source, target, 1 + number % 7)), Committed)
    items = [transfer(10_000 + start + index, IDS[index % 3], IDS[3 + index % 3], 2) for index in range(20)]
    outcomes = await ledger.transfer_batch(items, atomic=False)
    assert isinstance(outcomes, list) and all(isinstance(outcome, Committed) for outcome in outcomes)


async def _run_projector(group: Any, data: Path, ledger: Ledger, **options: Any) -> anyio.CancelScope:
    assert isinstance(ledger.history, RemoteProjection)
    projector = Projector(data, ledger.history.sync, **options)
    scope = anyio.CancelScope()

    async def run() -> None:
        with scope:
            await projector.run()

    group.start_soon(run)
    return scope


def _dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the read model, in key order."""
    with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as connection:
        return {
            "transactions": connection.execute("SELECT * FROM transactions ORDER BY id").fetchall(),
            "entries": connection.execute("SELECT * FROM entries ORDER BY wallet_id, pos").fetchall(),
            "balances": connection.execute("SELECT * FROM balances ORDER BY wallet_id").fetchall(),
            "wallets": connection.execute("SELECT * FROM wallets ORDER BY lsn").fetchall(),
            "applied": connection.execute("SELECT value FROM meta WHERE key = 'applied_lsn'").fetchall(),
        }


def _reference(data: Path, tmp_path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The read model the in-process projector builds from the same log."""
    copy = tmp_path / "reference"
    shutil.copytree(data / "wal", copy / "wal")
    if (data / "snapshots").exists():
        shutil.copytree(data / "snapshots", copy / "snapshots")
    recover(copy).close()
    return _dump(copy / "history.sqlite3")


async def test_the_ledger_of_workers_never_opens_the_read_model(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    async with anyio.create_task_group() as group:
        await group.start(ledger.run)
        await setup(ledger, IDS, deposit=1000)
        await _transfers(ledger, 0, 30)
        assert not ledger.history.backlogged()
        await ledger.stop()
    assert not (tmp_path / "history.sqlite3").exists()
    assert ledger.history.applied_lsn == 0  # nobody reported: compaction keeps every segment


async def test_the_projector_builds_what_the_in_process_projector_builds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ledger = _ledger(data)
    async with anyio.create_task_group() as group:
        await group.start(ledger.run)
        await _run_projector(group, data, ledger, batch_max=7)  # many small SQLite transactions
        await setup(ledger, IDS, deposit=1000)
        await _transfers(ledger, 0, 60)
        await ledger.history.wait_projected(ledger.wal.durable_lsn)
        # What a worker does: a read-only connection, then the same queries.
        reader = History.open_readonly(data / "history.sqlite3")
        try:
            entries = await reader.entries(IDS[0], before=None, limit=1000)
            assert entries and entries[0].lsn <= ledger.wal.durable_lsn
        finally:
            await anyio.to_thread.run_sync(reader.stop_thread)
        await ledger.stop()
        group.cancel_scope.cancel()
    assert len(list_segments(data / "wal")) > 3  # it followed segment rolls
    assert _dump(data / "history.sqlite3") == _reference(data, tmp_path)


async def test_it_resumes_after_its_stored_lsn_exactly_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ledger = _ledger(data)
    async with anyio.create_task_group() as group:
        await group.start(ledger.run)
        first = await _run_projector(group, data, ledger, batch_max=5)
        await setup(ledger, IDS, deposit=1000)
        await _transfers(ledger, 0, 40)
        first.cancel()  # killed wherever it was: mid-batch, or waiting for the ledger
        await trio.testing.wait_all_tasks_blocked()
        stopped_at = ledger.history.applied_lsn
        await _transfers(ledger, 100, 40)
        with pytest.raises(HistoryLagging):
            await ledger.history.wait_projected(ledger.wal.durable_lsn, timeout_s=0)
        await _run_projector(group, data, ledger)
        await ledger.history.wait_projected(ledger.wal.durable_lsn)
        assert ledger.history.applied_lsn == ledger.wal.durable_lsn > stopped_at
        await ledger.stop()
        group.cancel_scope.cancel()
    assert _dump(data / "history.sqlite3") == _reference(data, tmp_path)


async def test_a_read_model_ahead_of_the_log_is_rebuilt(tmp_path: Path) -> None:
    """The log was cut (``wallet wal repair``) below what the read model holds."""
    data = tmp_path / "data"
    ledger = _ledger(data)
    async with anyio.create_task_group() as group:
        await group.start(ledger.run)
        await setup(ledger, IDS, deposit=1000)
        await _transfers(ledger, 0, 10)
        await ledger.stop()
    history = History.open(data / "history.sqlite3")
    history.stop_thread()
    with sqlite3.connect(data / "history.sqlite3") as connection:
        connection.execute("INSERT OR REPLACE INTO meta VALUES ('applied_lsn', 1000000)")
        connection.execute("INSERT INTO transactions VALUES (999999 << 13, 'ghost', 999999, 0, 'a', 'b', 'USD', 1, NULL, NULL, 1, 0, NULL, 0)")
    ledger = _ledger(data)
    async with anyio.create_task_group() as group:
        await group.start(ledger.run)
        assert isinstance(ledger.history, RemoteProjection)
        # Until it has rebuilt, the read model counts as empty: readers wait.
        assert await ledger.history.sync(1_000_000, 0) == ledger.wal.durable_lsn
        assert ledger.history.applied_lsn == 0
        await _run_projector(group, data, ledger)
        await ledger.history.wait_projected(ledger.wal.durable_lsn)
        await ledger.stop()
        group.cancel_scope.cancel()
    assert _dump(data / "history.sqlite3") == _reference(data, tmp_path)


async def test_a_log_compacted_past_the_read_model_seeds_it_from_the_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    ledger = _ledger(data)
    async with anyio.create_task_group() as group:
        await group.start(ledger.run)
        await setup(ledger, IDS, deposit=1000)
        await _transfers(ledger, 0, 40)
        for at_us in (1, 2):  # two snapshots, so the older one's floor lets segments go
            await _transfers(ledger, 1000 * at_us, 20)
            await anyio.to_thread.run_sync(
                lambda at_us=at_us: build_snapshot(data, until_lsn=ledger.wal.durable_lsn, created_at_us=at_us)
            )
        removed = remove_covered(data, history_lsn=ledger.wal.durable_lsn, archive=False)
        assert removed and list_segments(data / "wal")[0][0] > 1
        await _transfers(ledger, 5000, 10)
        await _run_projector(group, data, ledger)  # no read model at all, the log starts late
        await ledger.history.wait_projected(ledger.wal.durable_lsn)
        live = {view.id: view.balance for view in await ledger.wallets(IDS)}
        await ledger.stop()
        group.cancel_scope.cancel()
    assert "cannot be rebuilt; continuing from the snapshot's balances" in caplog.text
    with sqlite3.connect(data / "history.sqlite3") as connection:
        projected = dict(connection.execute("SELECT wallet_id, balance FROM balances").fetchall())
        last = dict(connection.execute(
            "SELECT wallet_id, balance_after FROM entries e WHERE pos = "
            "(SELECT MAX(pos) FROM entries WHERE wallet_id = e.wallet_id)"
        ).fetchall())
    assert {wallet_id: projected[wallet_id] for wallet_id in IDS} == live
    assert {wallet_id: last[wallet_id] for wallet_id in IDS} == live  # statements continue from the image


async def test_remote_projection_reads_wait_for_a_reported_commit() -> None:
    projection = RemoteProjection(durable_lsn=10)
    assert not projection.backlogged()
    with pytest.raises(HistoryLagging):
        await projection.wait_projected(5, timeout_s=0)
    done: list[int] = []

    async def reader() -> None:
        await projection.wait_projected(10)
        done.append(projection.applied_lsn)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert await projection.sync(7, 0) == 10
        await trio.testing.wait_all_tasks_blocked()
        assert done == []  # 7 is not 10
        assert await projection.sync(10, 0) == 10  # caught up: no wait asked for
    assert done == [10]


async def test_remote_projection_sync_waits_until_the_log_moves(autojump_clock: Any) -> None:
    projection = RemoteProjection(durable_lsn=3)
    answers: list[int] = []

    async def projector() -> None:
        answers.append(await projection.sync(3, 2.0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(projector)
        await trio.testing.wait_all_tasks_blocked()
        assert answers == []
        projection.feed([(4, b"", None), (5, b"", None)])
    assert answers == [5]
    assert await projection.sync(5, 2.0) == 5  # nothing new: answers after the wait
    assert trio.current_time() >= 2.0



async def test_remote_projection_sync_lingers_until_more_gathers_or_a_reader_waits(autojump_clock: Any) -> None:
    projection = RemoteProjection(durable_lsn=10)
    # Past the applied LSN, nobody reading: it lingers the whole time asked for.
    started = trio.current_time()
    assert await projection.sync(5, 0, 0.05) == 10
    assert trio.current_time() - started == pytest.approx(0.05)
    # A reader arriving ends the linger at once, and gets its answer from the next commit.
    answers: list[int] = []
    read: list[int] = []

    async def projector() -> None:
        answers.append(await projection.sync(10, 1.0, 30.0))

    async def reader() -> None:
        await projection.wait_projected(11)
        read.append(projection.applied_lsn)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(projector)
        await trio.testing.wait_all_tasks_blocked()
        projection.feed([(11, b"", None)])
        await trio.testing.wait_all_tasks_blocked()
        assert answers == []  # lingering: one record is not worth a commit
        lingering_since = trio.current_time()
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert answers == [11] and trio.current_time() == lingering_since
        assert read == []
        assert await projection.sync(11, 0, 30.0) == 11  # caught up: nothing to linger for
    assert read == [11]
    # A large backlog ends it too.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(projector)
        await trio.testing.wait_all_tasks_blocked()
        projection.feed([(lsn, b"", None) for lsn in range(12, 12 + LINGER_RECORDS_MAX)])
        await trio.testing.wait_all_tasks_blocked()
        assert answers[-1] == 11 + LINGER_RECORDS_MAX
