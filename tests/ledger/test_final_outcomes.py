"""A key's outcome is final (API.md, *Idempotency*): a keyed request the ledger refuses is
recorded under its key (a ``RequestsRefused`` record), so the same key and request get the same
rejection again, even once it would pass, across a restart, a snapshot and a move to the on-disk
tier; another request under the key is ``IDEMPOTENCY_KEY_REUSED``. ``UNRECORDED_REASONS``
(403 forbidden among them) record nothing: a fixed request under the same key goes through.
Batches: every refused keyed item of a non-atomic batch is recorded, one record per shard step;
an atomic batch records its failing item only."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import msgpack
import pytest
import trio
from hypothesis import given, settings

from ledger import (
    CODEC_VERSION,
    UNRECORDED_REASONS,
    AssetCreated,
    BatchFailed,
    CodecError,
    Committed,
    CreateWallet,
    Duplicate,
    Idempotency,
    Ledger,
    Reason,
    Rejection,
    RequestsRefused,
    RequestWithdrawal,
    TransactionType,
    Transfer,
    WalletCreated,
    apply,
    build_snapshot,
    decode_event,
    decode_state,
    digest_state,
    encode_event,
    encode_state,
    load_base,
    new_state,
    read_records,
    recover,
    shard_of,
)
from ledger._codec import decode_outcome, encode_outcome
from ledger.testing import setup, transfer
from tests.ledger.test_batch import USD_WALLETS, stepped
from wal import ScanResult

CAP = 5


async def _open(data: Path, *, shards: int = 4, memory_keys: int | None = None) -> Ledger:
    return Ledger(await trio.to_thread.run_sync(recover, data), data, shards=shards, memory_keys=memory_keys)


def _keyed(number: int, source: str | None, target: str, amount: int, key: str, *, body: bytes = b"same",
           owner_id: str | None = None) -> Transfer:
    """Transfer ``tx<number>`` under ``key``; ``body`` stands for what the request asked (its
    fingerprint), so a retry of the same request keeps it and a changed request changes it."""
    return Transfer(
        transaction_id=f"tx{number}", type=TransactionType.DEPOSIT if source is None else TransactionType.TRANSFER,
        from_wallet_id=source, to_wallet_id=target, amount=amount, description=None, metadata=None,
        idempotency=Idempotency(scope="s", key=key, fingerprint=body), owner_id=owner_id,
    )


async def _balances(ledger: Ledger, ids: list[str]) -> dict[str, int]:
    return {view.id: view.balance for view in await ledger.wallets(ids)}


def _refusal_records(data: Path) -> list[RequestsRefused]:
    return [event for _, event in read_records(data / "wal", ScanResult(), after_lsn=0)
            if isinstance(event, RequestsRefused)]


async def test_a_refused_transfer_stays_refused_after_a_deposit(tmp_path: Path) -> None:
    ledger = await _open(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=10)
        lsn = ledger.directory.lsn
        first = await ledger.transfer(_keyed(1, "a", "b", 50, "k"))
        assert isinstance(first, Rejection) and first.reason == Reason.INSUFFICIENT_FUNDS
        assert ledger.directory.lsn == lsn + 1  # one record: the refusal under "k"
        assert isinstance(await ledger.transfer(transfer(2, None, "a", 100)), Committed)
        before = await _balances(ledger, ["a", "b"])
        assert before == {"a": 110, "b": 10}
        # The same request again (a new transaction id, as the route makes one per call).
        again = await ledger.transfer(_keyed(3, "a", "b", 50, "k"))
        assert again == first
        reused = await ledger.transfer(_keyed(4, "a", "b", 5, "k", body=b"another"))
        assert isinstance(reused, Rejection) and reused.reason == Reason.IDEMPOTENCY_KEY_REUSED
        assert await _balances(ledger, ["a", "b"]) == before  # nothing moved
        # It would pass now: a fresh key posts it.
        assert isinstance(await ledger.transfer(_keyed(5, "a", "b", 50, "fresh")), Committed)
        await ledger.stop()
    (record,) = _refusal_records(tmp_path)
    assert record.refusals == ((Idempotency(scope="s", key="k", fingerprint=b"same"), first),)
    # Replay (a restart), then a snapshot that covers the refusal: the same answer each time.
    ledger = await _open(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        assert await ledger.transfer(_keyed(6, "a", "b", 50, "k")) == first
        await ledger.stop()
    assert await trio.to_thread.run_sync(lambda: build_snapshot(tmp_path, until_lsn=None, created_at_us=1))
    base = await trio.to_thread.run_sync(load_base, tmp_path)
    assert base.state.directory.idempotency[("s", "k")].event == first
    ledger = await _open(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        assert await ledger.transfer(_keyed(7, "a", "b", 50, "k")) == first
        assert await _balances(ledger, ["a", "b"]) == {"a": 60, "b": 60}
        await ledger.stop()


async def test_a_duplicate_waiting_in_flight_gets_the_same_refusal(tmp_path: Path) -> None:
    ledger = await _open(tmp_path)
    answers: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=10)
        lsn = ledger.directory.lsn
        async with trio.open_nursery() as callers:
            for number in range(3):
                callers.start_soon(lambda n=number: _append(answers, ledger.transfer(_keyed(n, "a", "b", 50, "k"))))
        assert len(answers) == 3 and answers[0] == answers[1] == answers[2]
        assert isinstance(answers[0], Rejection) and answers[0].reason == Reason.INSUFFICIENT_FUNDS
        assert ledger.directory.lsn == lsn + 1  # decided once, recorded once
        await ledger.stop()


async def _append(answers: list[Any], call: Any) -> None:
    answers.append(await call)


async def test_the_senders_shard_records_a_cross_shard_refusal(tmp_path: Path) -> None:
    """The receiver is missing (its shard's credit-side failure), then created and funded: the
    key still answers 404, and nothing reaches it."""
    sender = "a"
    receiver = next(f"r{n}" for n in range(50) if shard_of(f"r{n}", 4) != shard_of(sender, 4))
    ledger = await _open(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, [sender], deposit=100)
        first = await ledger.transfer(_keyed(1, sender, receiver, 5, "k"))
        assert isinstance(first, Rejection) and first.reason == Reason.RECEIVER_NOT_FOUND
        await ledger.create_wallet(CreateWallet(wallet_id=receiver, owner_id="o", asset="USD", metadata=None,
                                                idempotency=None))
        assert await ledger.transfer(_keyed(2, sender, receiver, 5, "k")) == first
        # A deposit refused for a missing wallet is final too (the treasury's shard decides).
        deposit = await ledger.transfer(_keyed(3, None, "ghost", 5, "d"))
        assert isinstance(deposit, Rejection) and deposit.reason == Reason.RECEIVER_NOT_FOUND
        await ledger.create_wallet(CreateWallet(wallet_id="ghost", owner_id="o", asset="USD", metadata=None,
                                                idempotency=None))
        assert await ledger.transfer(_keyed(4, None, "ghost", 5, "d")) == deposit
        assert await _balances(ledger, [sender, receiver, "ghost"]) == {sender: 100, receiver: 0, "ghost": 0}
        await ledger.stop()


async def test_forbidden_is_not_recorded_so_a_fixed_request_goes_through(tmp_path: Path) -> None:
    ledger = await _open(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=100)
        lsn = ledger.directory.lsn
        refused = await ledger.transfer(_keyed(1, "a", "b", 5, "k", owner_id="mallory"))
        assert isinstance(refused, Rejection) and refused.reason == Reason.FORBIDDEN
        assert Reason.FORBIDDEN in UNRECORDED_REASONS
        assert ledger.directory.lsn == lsn and ("s", "k") not in ledger.directory.idempotency
        fixed = await ledger.transfer(_keyed(2, "a", "b", 5, "k", body=b"fixed", owner_id="o"))
        assert isinstance(fixed, Committed)
        await ledger.stop()


async def test_holds_and_withdrawals_keep_their_refusals(tmp_path: Path) -> None:
    ledger = await _open(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=100)
        held = await ledger.transfer(dataclasses.replace(_keyed(1, "a", "b", 30, "h"), hold_timeout_s=3600))
        assert isinstance(held, Committed)
        too_much = await ledger.resolve_hold("tx1", capture=True, amount=31, owner_id=None,
                                             idempotency=Idempotency(scope="s", key="c", fingerprint=b"31"))
        assert isinstance(too_much, Rejection) and too_much.reason == Reason.AMOUNT_EXCEEDS_HOLD
        voided = await ledger.resolve_hold("tx1", capture=False, amount=None, owner_id=None,
                                           idempotency=Idempotency(scope="s", key="v", fingerprint=b""))
        assert isinstance(voided, Committed)
        # The hold is gone (the router answers), the key still has its first answer.
        again = await ledger.resolve_hold("tx1", capture=True, amount=31, owner_id=None,
                                          idempotency=Idempotency(scope="s", key="c", fingerprint=b"31"))
        assert again == too_much
        withdrawal = RequestWithdrawal(withdrawal_id="wd1", wallet_id="a", amount=500, destination={"iban": "x"},
                                       owner_id=None, idempotency=Idempotency(scope="s", key="w", fingerprint=b"500"))
        first = await ledger.request_withdrawal(withdrawal)
        assert isinstance(first, Rejection) and first.reason == Reason.INSUFFICIENT_FUNDS
        assert isinstance(await ledger.transfer(transfer(2, None, "a", 1000)), Committed)
        assert await ledger.request_withdrawal(dataclasses.replace(withdrawal, withdrawal_id="wd2")) == first
        assert await ledger.withdrawals() == []
        await ledger.stop()


async def test_a_batch_records_its_refused_items_in_one_record_per_shard_step(tmp_path: Path) -> None:
    ledger = await _open(tmp_path, shards=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=700)
        # 1,000 items of 1 from a: 700 pass, the last 300 find a empty.
        items = [_keyed(1000 + n, "a", "b", 1, f"i{n}") for n in range(1000)]
        lsn = ledger.directory.lsn
        outcomes = await ledger.transfer_batch(items, atomic=False)
        assert isinstance(outcomes, list)
        refused = [outcome for outcome in outcomes if isinstance(outcome, Rejection)]
        assert len(refused) == 300 and all(r.reason == Reason.INSUFFICIENT_FUNDS for r in refused)
        assert ledger.directory.lsn == lsn + 2  # the transfers' record and one for the refusals
        assert isinstance(await ledger.transfer(transfer(1, None, "a", 1000)), Committed)
        again = await ledger.transfer_batch([dataclasses.replace(item, transaction_id=f"r{n}")
                                             for n, item in enumerate(items)], atomic=False)
        assert isinstance(again, list)
        assert [type(outcome) for outcome in again] == [Duplicate] * 700 + [Rejection] * 300
        assert again[700:] == outcomes[700:]
        assert await _balances(ledger, ["a", "b"]) == {"a": 1000, "b": 1400}
        await ledger.stop()
    (record,) = _refusal_records(tmp_path)
    assert [idempotency.key for idempotency, _ in record.refusals] == [f"i{n}" for n in range(700, 1000)]


async def test_an_atomic_batch_records_its_failing_item_only(tmp_path: Path) -> None:
    """The rule: the failing item's rejection is final under its key, so the same batch retried
    fails at the same item with the same answer; the others were never decided alone and stay
    free."""
    ledger = await _open(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b", "c"], deposit=100)
        batch = [_keyed(1, "a", "b", 60, "x1"), _keyed(2, "a", "c", 60, "x2"), _keyed(3, "b", "c", 1, "x3")]
        failed = await ledger.transfer_batch(batch, atomic=True)
        assert isinstance(failed, BatchFailed) and failed.index == 1
        assert failed.rejection.reason == Reason.INSUFFICIENT_FUNDS
        assert isinstance(await ledger.transfer(transfer(4, None, "a", 1000)), Committed)
        retried = await ledger.transfer_batch([dataclasses.replace(c, transaction_id=f"r{n}")
                                               for n, c in enumerate(batch)], atomic=True)
        assert retried == failed
        assert await _balances(ledger, ["a", "b", "c"]) == {"a": 1100, "b": 100, "c": 100}
        assert ("s", "x1") not in ledger.directory.idempotency and ("s", "x3") not in ledger.directory.idempotency
        # Without the refused item, the others' keys post.
        posted = await ledger.transfer_batch([batch[0], batch[2]], atomic=True)
        assert isinstance(posted, list) and all(isinstance(outcome, Committed) for outcome in posted)
        await ledger.stop()


async def test_refusals_past_the_memory_cap_replay_from_disk(tmp_path: Path) -> None:
    ledger = await _open(tmp_path, memory_keys=CAP)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await setup(ledger, ["a", "b"], deposit=10)
        refused = [await ledger.transfer(_keyed(n, "a", "b", 50 + n, f"k{n}")) for n in range(20)]
        assert all(isinstance(outcome, Rejection) for outcome in refused)
        with trio.fail_after(10):
            while len(ledger.directory.idempotency) > CAP:
                await trio.sleep(0.02)
        assert ledger.keys is not None and ledger.keys.index.through_lsn > 0
        assert isinstance(await ledger.transfer(transfer(100, None, "a", 10_000)), Committed)
        for n in (0, 7, 13):
            assert ("s", f"k{n}") not in ledger.directory.idempotency  # on disk only
            assert await ledger.transfer(_keyed(200 + n, "a", "b", 50 + n, f"k{n}")) == refused[n]
        outcomes = await ledger.transfer_batch([_keyed(300, "a", "b", 51, "k1"), _keyed(301, "a", "b", 1, "new")],
                                               atomic=False)
        assert isinstance(outcomes, list) and outcomes[0] == refused[1] and isinstance(outcomes[1], Committed)
        await ledger.stop()
    ledger = await _open(tmp_path, memory_keys=CAP)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        assert await ledger.transfer(_keyed(400, "a", "b", 52, "k2")) == refused[2]
        assert await _balances(ledger, ["a", "b"]) == {"a": 10_009, "b": 11}
        await ledger.stop()


# -- a property: through the actors, a key's first outcome is its only one -------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), st.sampled_from(USD_WALLETS[:4]), st.integers(1, 3000)),
        st.tuples(st.just("transfer"), st.sampled_from([*USD_WALLETS[:4], "f0", "ghost", "e0"]),
                  st.sampled_from([*USD_WALLETS[:4], "c0", "ghost"]), st.integers(1, 3000),
                  st.integers(0, 6), st.sampled_from([b"a", b"a", b"b"]), st.sampled_from([None, None, "o2"])),
    ),
    min_size=1, max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(shards=st.sampled_from([1, 3]), ops=_ops)
def test_a_recorded_refusal_never_posts_later(shards: int, ops: list[tuple[Any, ...]]) -> None:
    with stepped(shards) as ledger:
        first: dict[str, tuple[bytes, Any]] = {}  # key -> (fingerprint, its recorded outcome)
        for number, op in enumerate(ops):
            if op[0] == "deposit":
                assert isinstance(ledger.execute(transfer(90_000 + number, None, op[1], op[2])), Committed)
                continue
            _, source, target, amount, key, body, owner_id = op
            command = _keyed(number, source, target, amount, f"k{key}", body=body, owner_id=owner_id)
            outcome = ledger.execute(command)
            known = first.get(f"k{key}")
            if known is None:
                if isinstance(outcome, Committed):
                    first[f"k{key}"] = (body, outcome.event)
                else:
                    assert isinstance(outcome, Rejection)
                    if outcome.reason not in UNRECORDED_REASONS:
                        first[f"k{key}"] = (body, outcome)
                continue
            if known[0] != body:
                assert isinstance(outcome, Rejection) and outcome.reason == Reason.IDEMPOTENCY_KEY_REUSED
            elif isinstance(known[1], Rejection):
                assert outcome == known[1], (command, outcome, known)
            else:
                assert isinstance(outcome, Duplicate) and outcome.record.event == known[1]
        ledger.check()
        # In the log: each key is used once, by a posting or by a refusal.
        used = [idempotency.key for event in ledger.log if isinstance(event, RequestsRefused)
                for idempotency, _ in event.refusals]
        used += [event.idempotency.key for event in ledger.log
                 if getattr(event, "idempotency", None) is not None and event.idempotency.scope == "s"]
        assert sorted(used) == sorted(first)


# -- the codec and the snapshot ---------------------------------------------------------------

_refusals = st.lists(
    st.tuples(st.builds(Idempotency, scope=st.text(max_size=8), key=st.text(max_size=8),
                        fingerprint=st.binary(max_size=16)),
              st.builds(Rejection, reason=st.sampled_from(list(Reason)), detail=st.text(max_size=20))),
    min_size=1, max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(refusals=_refusals, at_us=st.integers(0, 2**62))
def test_a_refusals_record_round_trips_as_the_table_says(refusals: list[Any], at_us: int) -> None:
    event = RequestsRefused(refusals=tuple(refusals), at_us=at_us)
    payload = encode_event(event)
    assert msgpack.unpackb(payload) == [CODEC_VERSION, 18, at_us, [
        [idempotency.scope, idempotency.key, idempotency.fingerprint, rejection.reason.value, rejection.detail]
        for idempotency, rejection in refusals
    ]]
    assert decode_event(payload) == event
    idempotency, rejection = refusals[0]
    assert decode_outcome(encode_outcome(rejection, at_us, idempotency)) == rejection


@pytest.mark.parametrize("items", [
    [], [["s", "k", b"f", "no_such_reason", "d"]], [["s", "k", b"f", "insufficient_funds"]],
    [["s", "k", "not bytes", "insufficient_funds", "d"]], [["s", "k", b"f", "insufficient_funds", None]], "x",
])
def test_a_damaged_refusals_record_is_a_codec_error(items: Any) -> None:
    with pytest.raises(CodecError):
        decode_event(msgpack.packb([CODEC_VERSION, 18, 5, items]))


def test_a_snapshot_keeps_refusals_in_log_order_and_a_version_3_body_still_decodes() -> None:
    state = new_state()
    refusal = Rejection(reason=Reason.INSUFFICIENT_FUNDS, detail="no")
    # Interleaved: refusal at LSN 1, an accepted key at 3 (after the asset at 2), a refusal at 4.
    apply(state, RequestsRefused(refusals=((Idempotency(scope="s", key="r1", fingerprint=b"1"), refusal),),
                                 at_us=1), 1)
    apply(state, AssetCreated(code="USD", scale=2, at_us=2), 2)
    apply(state, WalletCreated(wallet_id="w", owner_id="o", asset="USD", metadata=None, at_us=3,
                               idempotency=Idempotency(scope="s", key="ok", fingerprint=b"2")), 3)
    apply(state, RequestsRefused(refusals=((Idempotency(scope="s", key="r2", fingerprint=b"3"), refusal),
                                           (Idempotency(scope="t", key="r3", fingerprint=b"4"), refusal)),
                                 at_us=4), 4)
    body = b"".join(encode_state(state))
    decoded = decode_state(body)
    assert list(decoded.directory.idempotency) == [("s", "r1"), ("s", "ok"), ("s", "r2"), ("t", "r3")]
    assert decoded.directory.idempotency == state.directory.idempotency
    assert digest_state(decoded) == digest_state(state)
    # Version 3 (before refusals): the same body without them decodes, with the accepted key only.
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(body)
    header, *entities = list(unpacker)
    assert header[0] == 4 and header[-2:] == [3, 0] and header[5] == 1  # 3 refusals, no refund tallies
    assert entities[-1] == 0  # the limits section's count: no wallet has limits or spent
    old = decode_state(msgpack.packb([3, *header[1:-2]]) + b"".join(msgpack.packb(e) for e in entities[:-4]))
    assert list(old.directory.idempotency) == [("s", "ok")]
