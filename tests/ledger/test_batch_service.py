"""Batches through the running ledger (actors, WAL writer and router under trio, no HTTP):
atomic batches across shards run alongside everything else without deadlock and each is one
record; shutdown waits for a batch that holds shards; a storage failure while shards are held
fails the batch and releases them; a cancelled caller cannot leave shards held or a batch half
done; and an idempotency key races between batches and single transfers execute once."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import ledger._shard as shard_module
from ledger import (
    BatchFailed,
    Committed,
    CreateAsset,
    CreateWallet,
    Duplicate,
    Idempotency,
    Ledger,
    Rejection,
    TransactionType,
    Transfer,
    Transferred,
    TransfersPosted,
    check_invariants,
    decode_event,
    recover,
    shard_of,
    state_digest,
)
from wal import ScanResult, StorageFailed, scan

HANG_GUARD_S = 60  # a deadlock fails the test instead of hanging it; never a timing assertion


def transfer(number: int, source: str | None, target: str, amount: int, key: str | None = None,
             fingerprint: bytes | None = None) -> Transfer:
    return Transfer(
        transaction_id=f"tx{number}", type=TransactionType.DEPOSIT if source is None else TransactionType.TRANSFER,
        from_wallet_id=source, to_wallet_id=target, amount=amount, description=None, metadata=None,
        idempotency=None if key is None else Idempotency(scope="s", key=key, fingerprint=fingerprint or key.encode()),
    )


async def setup(ledger: Ledger, ids: list[str], deposit: int) -> None:
    assert await ledger.create_asset(CreateAsset(code="USD", scale=2))
    for number, wallet_id in enumerate(ids):
        created = await ledger.create_wallet(
            CreateWallet(wallet_id=wallet_id, owner_id="o", asset="USD", metadata=None, idempotency=None)
        )
        assert isinstance(created, list) and created
        assert isinstance(await ledger.transfer(transfer(-1 - number, None, wallet_id, deposit)), Committed)


def log_records(path: Path) -> list[tuple[int, Any]]:
    return [(frame.lsn, decode_event(frame.payload)) for frame in scan(path / "wal", ScanResult())]


def cross_shard_ids(shards: int, count: int) -> list[str]:
    """``count`` wallet ids (or more) covering every shard."""
    ids = [f"w{index}" for index in range(count)]
    while {shard_of(wallet_id, shards) for wallet_id in ids} != set(range(shards)):
        ids.append(f"w{len(ids)}")
    return ids


async def test_atomic_batches_across_shards_run_with_everything_else_and_are_one_record_each(tmp_path: Path) -> None:
    shards = 4
    ids = cross_shard_ids(shards, 24)
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=shards)
    atomic_results: list[tuple[list[Transfer], Any]] = []
    counter = iter(range(10**6))
    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(ledger.run)
            await setup(ledger, ids, deposit=500)

            def batch(rng: random.Random, size: int) -> list[Transfer]:
                commands = []
                for _ in range(size):
                    number = next(counter)
                    source, target = rng.sample(ids, 2)
                    commands.append(transfer(number, source, target, rng.randint(1, 120), key=f"k{number}"))
                return commands

            async def client(seed: int) -> None:
                rng = random.Random(seed)
                for _ in range(12):
                    roll = rng.random()
                    if roll < 0.4:
                        commands = batch(rng, rng.randint(2, 12))
                        atomic_results.append((commands, await ledger.transfer_batch(commands, atomic=True)))
                    elif roll < 0.7:
                        await ledger.transfer_batch(batch(rng, rng.randint(1, 30)), atomic=False)
                    else:
                        (command,) = batch(rng, 1)
                        await ledger.transfer(command)

            async with trio.open_nursery() as clients:
                for seed in range(12):
                    clients.start_soon(client, seed)
            await trio.testing.wait_all_tasks_blocked()
            check_invariants(ledger.all_wallets(), ledger.directory)
            live = state_digest(ledger.all_wallets(), ledger.directory)
            assert not any(shard._hold or shard._pending or shard._gathering for shard in ledger.shards)
            await ledger.stop()
    committed = [(commands, result) for commands, result in atomic_results if isinstance(result, list)]
    failed = [result for _, result in atomic_results if isinstance(result, BatchFailed)]
    assert committed and failed  # both paths ran
    records = dict(log_records(tmp_path))
    for commands, results in committed:
        lsns = {result.lsn for result in results if isinstance(result, Committed)}
        assert len(lsns) == 1
        (lsn,) = lsns
        record = records[lsn]
        ids_in_record = [t.transaction_id for t in (record.transfers if isinstance(record, TransfersPosted) else (record,))]
        assert ids_in_record == [c.transaction_id for c in commands]  # alone, whole, in order
    posted = {t.transaction_id for event in records.values()
              for t in (event.transfers if isinstance(event, TransfersPosted) else (event,) if isinstance(event, Transferred) else ())}
    for failure in failed:
        assert failure.index is not None
    for commands, result in atomic_results:
        if isinstance(result, BatchFailed):
            assert not posted & {c.transaction_id for c in commands}
    replayed = await trio.to_thread.run_sync(recover, tmp_path)
    try:
        assert state_digest(replayed.state.wallets.values(), replayed.state.directory) == live
    finally:
        replayed.close()


def _wrap_commit(monkeypatch: pytest.MonkeyPatch, before: Callable[[list[Any]], None]) -> list[list[bool]]:
    """Runs ``before(involved)`` inside the lead's step, just before the atomic commit; records
    which involved shards were idle at that moment."""
    real = shard_module.commit_atomic
    seen: list[list[bool]] = []

    def wrapped(involved: list[Any], commands: list[Transfer], reply: Any, credits: Any = None) -> None:
        seen.append([shard.idle() for shard in involved])
        before(involved)
        real(involved, commands, reply, credits)

    monkeypatch.setattr(shard_module, "commit_atomic", wrapped)
    return seen


async def test_stop_waits_for_an_atomic_batch_that_holds_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = cross_shard_ids(2, 4)
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=2)
    source, target = next((a, b) for a in ids for b in ids if shard_of(a, 2) != shard_of(b, 2))
    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(ledger.run)
            await setup(ledger, ids, deposit=100)
            stopping: list[bool] = []
            seen = _wrap_commit(monkeypatch, lambda involved: (stopping.append(True), nursery.start_soon(ledger.stop)))
            result = await ledger.transfer_batch(
                [transfer(1, source, target, 5, "k1"), transfer(2, target, source, 1, "k2")], atomic=True
            )
            assert stopping and seen == [[False, False]]  # held shards are not idle: stop waits
            assert isinstance(result, list) and all(isinstance(r, Committed) for r in result)
        # ``run`` returned: stop completed after the batch released the shards.
        with pytest.raises(StorageFailed, match=r"stopping|closed"):
            await ledger.transfer_batch([transfer(3, source, target, 1, "k3")], atomic=True)
    records = log_records(tmp_path)
    assert isinstance(records[-1][1], TransfersPosted)


async def test_a_storage_failure_while_shards_are_held_fails_the_batch_and_releases_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = cross_shard_ids(3, 6)
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=3)
    source, target = next((a, b) for a in ids for b in ids if shard_of(a, 3) != shard_of(b, 3))
    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(ledger.run)
            await setup(ledger, ids, deposit=100)
            durable = ledger.wal.durable_lsn
            _wrap_commit(monkeypatch, lambda involved: ledger.wal._fail("disk gone (simulated)"))
            with pytest.raises(StorageFailed, match="disk gone"):
                await ledger.transfer_batch([transfer(1, source, target, 5, "k1")], atomic=True)
            assert not any(shard._hold for shard in ledger.shards)
            with pytest.raises(StorageFailed):
                await ledger.transfer_batch([transfer(2, source, target, 5, "k2")], atomic=False)
            assert await ledger.wallet(source) is not None  # reads still answer
            await ledger.stop()
    assert log_records(tmp_path)[-1][0] == durable


async def test_a_cancelled_caller_leaves_no_shard_held_and_no_batch_half_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = cross_shard_ids(4, 8)
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=4)
    pairs = [(a, b) for a in ids for b in ids if shard_of(a, 4) != shard_of(b, 4)]
    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(ledger.run)
            await setup(ledger, ids, deposit=100)
            scope = trio.CancelScope()
            _wrap_commit(monkeypatch, lambda involved: scope.cancel())
            commands = [transfer(10 + n, a, b, 1, f"k{n}") for n, (a, b) in enumerate(pairs[:6])]
            with scope:
                await ledger.transfer_batch(commands, atomic=True)
                await trio.lowlevel.checkpoint()  # where the caller sees its cancellation
            assert scope.cancelled_caught
            await trio.testing.wait_all_tasks_blocked()
            assert not any(shard._hold for shard in ledger.shards)
            # The batch went through whole: a retry answers every item from its record.
            monkeypatch.undo()
            again = await ledger.transfer_batch(commands, atomic=True)
            assert isinstance(again, list) and all(isinstance(r, Duplicate) for r in again)
            assert len({r.record.lsn for r in again}) == 1
            check_invariants(ledger.all_wallets(), ledger.directory)
            await ledger.stop()


async def test_a_key_raced_by_batches_and_single_transfers_executes_once(tmp_path: Path) -> None:
    shards = 4
    ids = cross_shard_ids(shards, 12)
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=shards)
    outcomes: dict[str, list[Any]] = {}
    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(ledger.run)
            await setup(ledger, ids, deposit=10_000)
            rng = random.Random(7)
            keys = [f"k{n}" for n in range(40)]
            bodies = {key: rng.sample(ids, 2) for key in keys}
            number = iter(range(10**6))

            def item(key: str) -> Transfer:
                source, target = bodies[key]
                return transfer(next(number), source, target, 3, key)

            async def single(key: str) -> None:
                outcomes.setdefault(key, []).append(await ledger.transfer(item(key)))

            async def batch(chosen: list[str], atomic: bool) -> None:
                results = await ledger.transfer_batch([item(key) for key in chosen], atomic=atomic)
                assert isinstance(results, list), results
                for key, result in zip(chosen, results, strict=True):
                    outcomes.setdefault(key, []).append(result)

            async with trio.open_nursery() as racers:
                for round_ in range(6):
                    chosen = rng.sample(keys, 10)
                    racers.start_soon(batch, chosen, round_ % 2 == 0)
                    racers.start_soon(batch, list(reversed(chosen)), round_ % 2 == 1)  # same keys, other order
                    for key in chosen[:4]:
                        racers.start_soon(single, key)
            await ledger.stop()
    records = log_records(tmp_path)
    executed: dict[str, int] = {}
    for _, event in records:
        for t in event.transfers if isinstance(event, TransfersPosted) else (event,) if isinstance(event, Transferred) else ():
            if t.idempotency is not None:
                executed[t.idempotency.key] = executed.get(t.idempotency.key, 0) + 1
    assert executed and all(count == 1 for count in executed.values()), executed
    for key, results in outcomes.items():
        assert not any(isinstance(r, Rejection) for r in results), results
        committed = [r for r in results if isinstance(r, Committed)]
        assert len(committed) == 1, (key, results)
        for result in results:
            if isinstance(result, Duplicate):
                assert result.record.event == committed[0].event and result.record.lsn == committed[0].lsn
