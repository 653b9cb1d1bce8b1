"""The ledger's shells (actors, WAL writer, history projector and queries, run and stop) on every
event loop ``wallet serve --loop`` offers, in process.

pytest-trio's ``trio_mode`` claims every ``async def`` test for trio, so these are plain tests
that start the loop themselves with ``anyio.run`` and the server's own backend mapping."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import anyio
import pytest

from ledger import Committed, Ledger, Rejection, check_invariants, recover, state_digest
from ledger.testing import setup, transfer
from server._config import LOOPS
from server._serve import backend_of


def running_loop_name() -> str:
    try:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]
    except RuntimeError:
        return "trio"


@pytest.mark.parametrize("loop", LOOPS)
def test_the_ledger_runs_serves_history_and_stops_on_every_loop(tmp_path: Path, loop: str) -> None:
    ids = [f"w{index}" for index in range(12)]

    async def main() -> tuple[str, list[Committed]]:
        assert running_loop_name() == loop
        ledger = Ledger(await anyio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=3)
        outcomes: list[object] = []
        async with anyio.create_task_group() as group:
            await group.start(ledger.run)
            # aiosqlite runs natively on an asyncio loop; under trio through its own thread.
            assert (ledger.history._thread is None) == (loop != "trio")
            await setup(ledger, ids, deposit=100)

            async def client(seed: int) -> None:
                rng = random.Random(seed)
                for index in range(25):
                    source, target = rng.sample(ids, 2)
                    outcomes.append(await ledger.transfer(transfer(seed * 1000 + index, source, target, rng.randint(1, 60))))

            async with anyio.create_task_group() as clients:
                for seed in range(8):
                    clients.start_soon(client, seed)
            committed = [outcome for outcome in outcomes if isinstance(outcome, Committed)]
            assert committed and any(isinstance(outcome, Rejection) for outcome in outcomes)
            # History reads while serving: read-your-writes, then the rows themselves.
            await ledger.history.wait_projected(ledger.wal.durable_lsn)
            last = max(committed, key=lambda outcome: outcome.lsn)  # replies arrive in any order
            row = await ledger.history.transaction(last.event.transaction_id)
            assert row is not None and row.lsn == last.lsn
            entries = await ledger.history.entries(last.event.to_wallet_id, before=None, limit=1)
            assert entries[0].lsn == last.lsn
            # A cancelled query leaves the connection usable.
            with anyio.move_on_after(0):
                await ledger.history.transaction("anything")
            assert await ledger.history.transaction("missing") is None
            await ledger.stop()
        check_invariants(ledger.all_wallets(), ledger.directory)
        assert ledger.history.applied_lsn == ledger.wal.durable_lsn == ledger.wal.last_lsn
        return state_digest(ledger.all_wallets(), ledger.directory), committed

    backend, options = backend_of(loop)
    live, committed = anyio.run(main, backend=backend, backend_options=options)
    replayed = recover(tmp_path)  # after a clean stop: the log and the read model are complete
    try:
        assert state_digest(replayed.state.wallets.values(), replayed.state.directory) == live
        assert replayed.history.applied_lsn == replayed.scan.next_lsn - 1
    finally:
        replayed.close()
    assert len({outcome.event.transaction_id for outcome in committed}) == len(committed)
