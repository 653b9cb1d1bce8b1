"""Idempotency records past the memory cap live in ``<data>/idempotency.sqlite3`` and still
answer: a retried key replays its original outcome (single requests and batch items, across a
restart and a snapshot), a reused key with another request is still refused, memory stays at
the cap, and a key a request holds cannot move to disk under it."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ledger import (
    Committed,
    Duplicate,
    Idempotency,
    KeyIndex,
    Ledger,
    Reason,
    Rejection,
    TransactionType,
    Transfer,
    build_snapshot,
    recover,
)
from ledger._key_index import read_through_lsn, trim
from ledger.testing import setup, transfer
from wal import StorageFailed

CAP = 5
KEYS = 40


async def _open(data: Path, memory_keys: int | None = CAP) -> Ledger:
    return Ledger(await trio.to_thread.run_sync(recover, data), data, shards=4, memory_keys=memory_keys)


async def _spilled(ledger: Ledger) -> None:
    """Waits until the background spill brought memory down to the cap."""
    with trio.fail_after(10):
        while len(ledger.directory.idempotency) > CAP:
            await trio.sleep(0.02)


async def _balances(ledger: Ledger, ids: list[str]) -> dict[str, int]:
    return {wallet_id: (await ledger.wallet(wallet_id)).balance for wallet_id in ids}


def _reused(number: int, key: str) -> Transfer:
    """Transfer ``tx<number>`` a -> b under ``key`` with a fingerprint no earlier request had."""
    return Transfer(
        transaction_id=f"tx{number}", type=TransactionType.TRANSFER, from_wallet_id="a", to_wallet_id="b",
        amount=2, description=None, metadata=None,
        idempotency=Idempotency(scope="s", key=key, fingerprint=b"another request"),
    )


async def test_keys_past_the_cap_move_to_disk_and_still_replay(tmp_path: Path) -> None:
    ledger = await _open(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b", "c"], deposit=1000)
        originals = [await ledger.transfer(transfer(n, "a", "b", 1, key=f"k{n}")) for n in range(KEYS)]
        assert all(isinstance(outcome, Committed) for outcome in originals)
        await _spilled(ledger)
        assert ledger.keys is not None and ledger.keys.index.through_lsn > 0
        before = await _balances(ledger, ["a", "b"])
        assert ledger.keys.filter is not None and ledger.keys.filter.keys >= KEYS - CAP
        for n, original in enumerate(originals):
            # A retry under the same key, even with a new transaction id, replays the original.
            again = await ledger.transfer(transfer(1000 + n, "a", "b", 1, key=f"k{n}"))
            assert isinstance(again, Duplicate), (n, again)
            assert isinstance(original, Committed)
            assert again.record.event == original.event and again.record.lsn == original.lsn
        refused = await ledger.transfer(_reused(2000, "k0"))
        assert isinstance(refused, Rejection) and refused.reason == Reason.IDEMPOTENCY_KEY_REUSED
        assert await _balances(ledger, ["a", "b"]) == before
        # What was brought back for the requests is gone with them; memory stayed at the cap.
        assert not ledger.directory.recalled
        assert len(ledger.directory.idempotency) <= CAP
        # A fresh key is not looked up: the filter knows every key on disk.
        skipped = ledger.keys.skipped
        assert isinstance(await ledger.transfer(transfer(2001, "a", "b", 1, key="fresh")), Committed)
        assert ledger.keys.skipped == skipped + 1
        await ledger.stop()


async def test_batch_items_with_keys_on_disk_are_duplicates(tmp_path: Path) -> None:
    ledger = await _open(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b", "c"], deposit=1000)
        for n in range(KEYS):
            assert isinstance(await ledger.transfer(transfer(n, "a", "b", 1, key=f"k{n}")), Committed)
        await _spilled(ledger)
        before = await _balances(ledger, ["a", "b", "c"])
        items = [transfer(3000 + n, "a", "b", 1, key=f"k{n}") for n in range(3)]
        items.append(transfer(3100, "a", "c", 5, key="fresh"))
        outcomes = await ledger.transfer_batch(items, atomic=False)
        assert isinstance(outcomes, list)
        assert [type(outcome) for outcome in outcomes] == [Duplicate, Duplicate, Duplicate, Committed]
        atomic = await ledger.transfer_batch(
            [transfer(4000, "a", "b", 1, key="k5"), transfer(4001, "a", "c", 5, key="fresh2")], atomic=True
        )
        assert isinstance(atomic, list)
        assert [type(outcome) for outcome in atomic] == [Duplicate, Committed]
        after = await _balances(ledger, ["a", "b", "c"])
        assert after == {"a": before["a"] - 10, "b": before["b"], "c": before["c"] + 10}
        await ledger.stop()


async def test_restart_and_snapshot_keep_both_tiers(tmp_path: Path) -> None:
    ledger = await _open(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=1000)
        originals = [await ledger.transfer(transfer(n, "a", "b", 1, key=f"k{n}")) for n in range(KEYS)]
        await _spilled(ledger)
        await ledger.stop()
    through = read_through_lsn(tmp_path)
    assert through > 0
    # A snapshot built from the log leaves out what the index holds.
    info = await trio.to_thread.run_sync(
        lambda: build_snapshot(tmp_path, until_lsn=None, created_at_us=1)
    )
    assert info is not None
    recovered = await trio.to_thread.run_sync(recover, tmp_path)
    try:
        assert all(record.lsn > through for record in recovered.state.directory.idempotency.values())
    finally:
        recovered.close()
    ledger = await _open(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        assert len(ledger.directory.idempotency) <= CAP
        for n in (0, 17, KEYS - 1):
            again = await ledger.transfer(transfer(5000 + n, "a", "b", 1, key=f"k{n}"))
            original = originals[n]
            assert isinstance(again, Duplicate) and isinstance(original, Committed)
            assert again.record.event == original.event
        await ledger.stop()


async def test_a_pinned_key_stays_in_memory_until_released(tmp_path: Path) -> None:
    ledger = await _open(tmp_path, memory_keys=None)  # no background spill: driven by hand below
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=1000)
        for n in range(10):
            assert isinstance(await ledger.transfer(transfer(n, "a", "b", 1, key=f"k{n}")), Committed)
        from ledger import KeyTier

        tier = KeyTier(ledger.directory, await trio.to_thread.run_sync(KeyIndex.open, tmp_path), memory_keys=2)
        key = ("s", "k0")
        tier.pin([key])
        while await tier.spill_once(ledger.wal):
            pass
        # k0 is on disk but its request still holds it in memory; the others left.
        assert key in ledger.directory.idempotency
        assert len(ledger.directory.idempotency) == 2  # the cap counts it
        found = await trio.to_thread.run_sync(tier.index.lookup, [key, ("s", "k1"), ("s", "nope")], 0)
        assert set(found) == {key, ("s", "k1")}
        tier.unpin([key])
        assert key not in ledger.directory.idempotency
        tier.close()
        await ledger.stop()


async def test_an_unreadable_index_fails_the_request_and_posts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = await _open(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=1000)
        for n in range(KEYS):
            await ledger.transfer(transfer(n, "a", "b", 1, key=f"k{n}"))
        await _spilled(ledger)
        assert ledger.keys is not None

        def broken(*_: object) -> None:
            raise OSError("disk gone")

        monkeypatch.setattr(ledger.keys.index, "lookup", broken)
        before = await _balances(ledger, ["a", "b"])
        with pytest.raises(StorageFailed):
            await ledger.transfer(transfer(6000, "a", "b", 1, key="k0"))
        with pytest.raises(StorageFailed):
            await ledger.transfer_batch([transfer(6001, "a", "b", 1, key="k1")], atomic=False)
        assert await _balances(ledger, ["a", "b"]) == before
        await ledger.stop()


def test_index_expiry_horizon_and_cut(tmp_path: Path) -> None:
    from ledger import IdempotencyRecord

    index = KeyIndex.open(tmp_path)
    event = _committed_event()
    records = [(("s", f"k{n}"), IdempotencyRecord(fingerprint=b"f", lsn=n + 1, at_us=1000 * n, source=event))
               for n in range(10)]
    index.write(records, through_lsn=10)
    assert index.maybe_holds and index.through_lsn == 10
    everything = [key for key, _ in records]
    assert len(index.lookup(everything, horizon_us=0)) == 10
    # Expired rows do not answer even before they are deleted, and are then deleted.
    assert set(index.lookup(everything, horizon_us=5000)) == {("s", f"k{n}") for n in range(5, 10)}
    assert index.expire(5000) == 5
    assert len(index.lookup(everything, horizon_us=0)) == 5
    # A log cut back to LSN 8 forgets the keys of the records it lost.
    index.cut(8)
    assert index.through_lsn == 8
    assert set(index.lookup(everything, horizon_us=0)) == {("s", f"k{n}") for n in range(5, 8)}
    index.close()
    reopened = KeyIndex.open(tmp_path)
    assert reopened.through_lsn == 8 and reopened.maybe_holds
    reopened.close()
    assert read_through_lsn(tmp_path) == 8
    assert (tmp_path / "idempotency.sqlite3").stat().st_mode & 0o077 == 0


def test_trim_drops_exactly_the_covered_prefix() -> None:
    from ledger import IdempotencyRecord, new_state

    state = new_state()
    event = _committed_event()
    for n in range(6):
        state.directory.idempotency[("s", f"k{n}")] = IdempotencyRecord(
            fingerprint=b"f", lsn=n // 2 + 1, at_us=n, source=event
        )
    assert trim(state.directory, 2) == 4
    assert list(state.directory.idempotency) == [("s", "k4"), ("s", "k5")]


def _committed_event() -> object:
    from ledger import Transferred

    return Transferred(
        transaction_id="t", type=TransactionType.TRANSFER, from_wallet_id="a", to_wallet_id="b", asset="USD",
        amount=1, description=None, metadata=None, at_us=1, idempotency=None,
    )


def test_the_filter_has_no_false_negatives_and_few_false_positives() -> None:
    from ledger._key_tier import KeyFilter

    key_filter = KeyFilter(capacity=1000)  # grows several times below
    added = [("owner", f"key-{n}") for n in range(50_000)]
    for key in added:
        key_filter.add(key)
    assert all(key in key_filter for key in added)
    false_positives = sum(("owner", f"other-{n}") in key_filter for n in range(50_000))
    assert false_positives < 50_000 * 0.02, false_positives


async def test_a_spill_that_falls_behind_refuses_keyed_requests_only(tmp_path: Path) -> None:
    from ledger import IdempotencyRecord, Overloaded
    from ledger._key_tier import SPILL_CHUNK

    ledger = await _open(tmp_path, memory_keys=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=1000)
        event = _committed_event()
        lsn = ledger.wal.durable_lsn + 1_000_000  # never durable: the spill cannot move them
        for n in range(2 + SPILL_CHUNK + 1):  # more than twice the cap, plus a chunk
            ledger.directory.idempotency[("x", f"k{n}")] = IdempotencyRecord(
                fingerprint=b"f", lsn=lsn, at_us=0, source=event
            )
        with pytest.raises(Overloaded):
            await ledger.transfer(transfer(1, "a", "b", 1, key="new"))
        with pytest.raises(Overloaded):
            await ledger.transfer_batch([transfer(2, "a", "b", 1, key="new2")], atomic=False)
        # Reads and requests without keys go on.
        assert (await ledger.wallet("a")).balance == 1000
        assert isinstance(await ledger.transfer(transfer(3, "a", "b", 1)), Committed)
        for n in range(SPILL_CHUNK):
            del ledger.directory.idempotency[("x", f"k{n}")]
        assert isinstance(await ledger.transfer(transfer(4, "a", "b", 1, key="new")), Committed)
        for key in [key for key in ledger.directory.idempotency if key[0] == "x"]:
            del ledger.directory.idempotency[key]
        await ledger.stop()
