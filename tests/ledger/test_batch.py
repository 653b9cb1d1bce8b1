"""Batches of transfers against a boringly simple reference: the same items sent as single
transfers one after another, in request order, to one unsharded State holding the log so far.

* ``decide_transfers`` (pure) equals deciding and applying each item in turn, and mutates nothing.
* Through the real shard actors, stepped synchronously like the simulation (1-4 shards, drain
  orders chosen by hypothesis), after every batch the invariants hold (conservation included)
  and the live state equals a replay of the log through the codec; and:

  - atomic: if the sequential run accepts every item, the batch posts the same transfers as one
    record with the same balances after; otherwise it posts nothing (digest unchanged) and names
    the first item the sequential run rejects, with its reason;
  - not atomic, one shard: the same outcomes and balances as the sequential run;
  - not atomic, several shards, no sender receiving in the batch: the same, exactly (each
    sender's items are decided in request order and see only their own debits);
  - not atomic, in general: every accepted item is what the serial state accepts at its place
    in the log; one sender's items keep request order in the log; an item differs from the
    sequential run only in the amount rows (funds, overflow: credits from other senders' items
    may or may not have landed yet), never in the others.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
from hypothesis import given, settings

from ledger import (
    INT64_MAX,
    UNRECORDED_REASONS,
    BatchFailed,
    BatchReply,
    ChangeWalletStatus,
    Clock,
    Committed,
    CreateAsset,
    CreateWallet,
    Decision,
    Duplicate,
    Event,
    Idempotency,
    Ledger,
    Reason,
    Recovered,
    Rejection,
    RequestsRefused,
    State,
    TransactionType,
    Transfer,
    Transferred,
    TransfersPosted,
    WalletStatus,
    apply,
    check_invariants,
    decide,
    decide_transfers,
    new_state,
    shard_of,
    state_digest,
)
from ledger.testing import amounts, digest, replay
from wal import ScanResult

NOW_NS = 1_790_000_000 * 10**9
NOW_US = NOW_NS // 1000
USD_WALLETS = [f"a{index}" for index in range(8)]
EUR_WALLETS = ["e0", "e1"]
EVERY_ID = [*USD_WALLETS, *EUR_WALLETS, "f0", "c0", "ghost", "treasury:USD"]
# Disjoint senders and receivers (the exact case): spread over every shard for 2-4 shards.
SENDERS = ["a0", "a1", "a4", "a5", "e0", "f0", "ghost"]
RECEIVERS = ["a2", "a3", "a6", "a7", "e1", "c0", "ghost2"]
DEPOSIT = 1000


def _transfer(number: int, source: str | None, target: str, amount: int, key: str | None = None,
              fingerprint: bytes = b"a", owner_id: str | None = None) -> Transfer:
    return Transfer(
        transaction_id=f"tx{number}", type=TransactionType.DEPOSIT if source is None else TransactionType.TRANSFER,
        from_wallet_id=source, to_wallet_id=target, amount=amount, description=None, metadata=None,
        idempotency=None if key is None else Idempotency(scope="s", key=key, fingerprint=fingerprint),
        owner_id=owner_id,
    )


def _setup() -> list[Any]:
    commands: list[Any] = [CreateAsset(code="USD", scale=2), CreateAsset(code="EUR", scale=2)]
    owners = {"a0": "o1", "a1": "o1", "a2": "o1", "a3": "o1", "a4": "o2", "a5": "o2", "a6": "o2", "a7": "o2",
              "e0": "o1", "e1": "o2", "f0": "o1", "c0": "o2"}
    for wallet_id, owner_id in owners.items():
        asset = "EUR" if wallet_id.startswith("e") else "USD"
        commands.append(CreateWallet(wallet_id=wallet_id, owner_id=owner_id, asset=asset, metadata=None,
                                     idempotency=None))
    for number, wallet_id in enumerate([*USD_WALLETS, *EUR_WALLETS, "f0"]):
        commands.append(_transfer(-1 - number, None, wallet_id, DEPOSIT))
    commands.append(ChangeWalletStatus(wallet_id="f0", status=WalletStatus.FROZEN))
    commands.append(ChangeWalletStatus(wallet_id="c0", status=WalletStatus.CLOSED))
    return commands


# -- the pure function -------------------------------------------------------------------


def _state() -> State:
    state = new_state()
    for command in _setup():
        decision = decide(state, command, NOW_US)
        assert isinstance(decision, list), (command, decision)
        for event in decision:
            apply(state, event, state.directory.lsn + 1)
    return state


def _items(ids: list[str], receivers: list[str] | None = None, *, edges: bool = True) -> st.SearchStrategy[list[Transfer]]:
    amount = st.integers(min_value=1, max_value=700) | (amounts() if edges else st.integers(1, 700))
    item = st.builds(
        lambda source, target, value, key, fingerprint, owner: (source, target, value, key, fingerprint, owner),
        st.sampled_from(ids), st.sampled_from(receivers or ids), amount,
        st.integers(min_value=0, max_value=40), st.sampled_from([b"a", b"a", b"b"]),
        st.sampled_from([None, None, None, "o1"]),
    )
    return st.lists(item, min_size=1, max_size=14, unique_by=lambda fields: fields[3]).map(
        lambda drawn: [
            _transfer(0, source, target, value, key=f"k{key}", fingerprint=fingerprint, owner_id=owner)
            for source, target, value, key, fingerprint, owner in drawn
        ]
    )


def _number(commands: list[Transfer], start: int) -> list[Transfer]:
    return [dataclasses.replace(command, transaction_id=f"tx{start + offset}") for offset, command in enumerate(commands)]


def _sequential(state: State, commands: list[Transfer]) -> list[Decision]:
    """The reference: each item decided and, if accepted, applied before the next."""
    decisions = []
    for command in commands:
        decision = decide(state, command, NOW_US)
        decisions.append(decision)
        if isinstance(decision, list):
            for event in decision:
                apply(state, event, state.directory.lsn + 1)
    return decisions


def _kind(decision: Any) -> tuple[Any, ...]:
    if isinstance(decision, Rejection):
        return ("rejected", decision.reason)
    if isinstance(decision, Duplicate):
        return ("duplicate", decision.record.lsn, decision.record.event)
    if isinstance(decision, Committed):
        return ("accepted", decision.event)
    assert isinstance(decision, list), decision
    (event,) = decision
    return ("accepted", event)


def _balances(wallets: Any) -> dict[str, tuple[int, int]]:
    return {wallet.id: (wallet.balance, wallet.held) for wallet in wallets}


@settings(max_examples=200, deadline=None)
@given(first=_items(EVERY_ID), second=_items(EVERY_ID))
def test_decide_transfers_equals_deciding_and_applying_one_by_one(first: list[Transfer], second: list[Transfer]) -> None:
    state = _state()
    # A first batch applied the reference way, so that the second meets used keys.
    _sequential(state, _number(first, 1000))
    before = digest(state)
    commands = _number(second, 2000)
    decisions = decide_transfers(state, [(command, None) for command in commands], NOW_US, {})
    assert digest(state) == before  # pure: nothing moved
    expected = _sequential(replay_of(state), commands)
    assert [_kind(d) for d in decisions] == [_kind(d) for d in expected]
    atomic = decide_transfers(state, [(command, None) for command in commands], NOW_US, {}, atomic=True)
    assert digest(state) == before
    stop = next((index for index, d in enumerate(expected) if isinstance(d, Rejection)), len(expected) - 1)
    assert [_kind(d) for d in atomic] == [_kind(d) for d in expected[: stop + 1]]


def replay_of(state: State) -> State:
    """A copy of ``state`` (through the snapshot codec, which keeps everything ``apply`` sets)."""
    from ledger import decode_state, encode_state

    return decode_state(b"".join(encode_state(state)))


def test_a_receiver_spends_what_an_earlier_item_credited_within_one_call() -> None:
    state = _state()
    everything = DEPOSIT * 3
    commands = [_transfer(1, "a0", "a1", DEPOSIT, "k1"), _transfer(2, "a1", "a2", 2 * DEPOSIT, "k2"),
                _transfer(3, "a2", "a3", everything, "k3")]
    decisions = decide_transfers(state, [(command, None) for command in commands], NOW_US, {})
    assert all(isinstance(decision, list) for decision in decisions), decisions
    assert state.wallets["a1"].balance == DEPOSIT  # untouched


def test_reservations_count_against_the_receivers_overflow() -> None:
    state = _state()
    room = INT64_MAX - state.wallets["a1"].balance  # what a1 can still receive
    commands = [_transfer(1, "a0", "a1", 100, "k1")]
    (decision,) = decide_transfers(state, [(command, None) for command in commands], NOW_US, {"a1": room - 99})
    assert isinstance(decision, Rejection) and decision.reason == Reason.BALANCE_OVERFLOW
    (decision,) = decide_transfers(state, [(command, None) for command in commands], NOW_US, {"a1": room - 100})
    assert isinstance(decision, list)


# -- through the shard actors, stepped -----------------------------------------------------


class _NoHistory:
    def backlogged(self) -> bool:
        return False


class Stepped:
    """A ledger whose actors and group commits are run by hand (no tasks), recording its log."""

    def __init__(self, path: Path, shards: int) -> None:
        recovered = Recovered(state=new_state(), history=_NoHistory(), scan=ScanResult(), seconds=0.0)  # type: ignore[arg-type]
        self.ledger = Ledger(recovered, path, shards=shards, clock=Clock(lambda: NOW_NS))
        self.log: list[Event] = []
        self.ledger.wal._sync = lambda fd: None
        self.ledger.wal._on_durable = lambda records: self.log.extend(tag for _, _, tag in records)

    def settle(self, order: list[tuple[int, int]]) -> None:
        """Drains shards in ``order`` (shard, messages), then until nothing is left; commits."""
        shards = self.ledger.shards
        for index, limit in order:
            shards[index % len(shards)].drain(limit)
            if limit == 2:
                self.ledger.wal.commit_pending()  # durability in the middle, now and then
        while not all(shard.idle() for shard in shards):
            for shard in shards:
                shard.drain(1024)
        self.ledger.wal.commit_pending()

    def execute(self, command: Any) -> Any:
        ledger = self.ledger
        count = len(ledger.shards)
        if isinstance(command, Transfer):
            reply = ledger.shards[shard_of(command.to_wallet_id, count)].submit_transfer(command)
        elif isinstance(command, CreateAsset):
            reply = ledger.shards[shard_of("treasury:" + command.code, count)].submit_command(command)
        else:
            reply = ledger.shards[shard_of(command.wallet_id, count)].submit_command(command)
        self.settle([])
        assert reply._done.is_set()
        return reply.value

    def batch(self, commands: list[Transfer], *, atomic: bool, order: list[tuple[int, int]]) -> Any:
        reply: BatchReply
        if atomic:
            reply = self.ledger.commit_atomic_now(commands)
        else:
            reply = self.ledger.submit_batch(commands)
        self.settle(order)
        assert reply.done()
        assert reply.error is None
        return reply.failed if reply.failed is not None else reply.results

    def live(self) -> list[Any]:
        return self.ledger.all_wallets()

    def check(self) -> None:
        """Invariants, and live state == a replay of the log (digest and wallet LSNs)."""
        assert not any(shard._pending for shard in self.ledger.shards)
        assert not any(shard._gathering for shard in self.ledger.shards)
        check_invariants(self.live(), self.ledger.directory)
        replayed = replay(self.log)
        assert state_digest(self.live(), self.ledger.directory) == digest(replayed)
        assert {w.id: w.lsn for w in self.live()} == {w.id: w.lsn for w in replayed.wallets.values()}


@contextmanager
def stepped(shards: int) -> Iterator[Stepped]:
    with tempfile.TemporaryDirectory() as folder:
        ledger = Stepped(Path(folder), shards)
        try:
            for command in _setup():
                outcome = ledger.execute(command)
                assert not isinstance(outcome, Rejection), (command, outcome)
            ledger.check()
            yield ledger
        finally:
            ledger.ledger.wal.release()


orders = st.lists(st.tuples(st.integers(0, 3), st.sampled_from([1, 2, 3, 50])), max_size=12)
shard_counts = st.sampled_from([1, 2, 3, 4])


def _positions(log: list[Event], start: int) -> dict[str, tuple[int, int]]:
    """Where each transfer of the records after ``start`` sits: (record, index in it)."""
    found = {}
    for number, event in enumerate(log[start:], start=start):
        transfers = event.transfers if isinstance(event, TransfersPosted) else (event,)
        for index, transfer in enumerate(transfers):
            if isinstance(transfer, Transferred):
                found[transfer.transaction_id] = (number, index)
    return found


AMOUNT_ROWS = {Reason.INSUFFICIENT_FUNDS, Reason.BALANCE_OVERFLOW}


def _compare_loosely(commands: list[Transfer], results: list[Any], expected: list[Decision]) -> None:
    for command, result, reference in zip(commands, results, expected, strict=True):
        got, want = _kind(result), _kind(reference)
        if got == want:
            continue
        # Only the amount rows may differ: money from other senders' items in flight or not.
        assert got[0] in ("accepted", "rejected") and want[0] in ("accepted", "rejected"), (command, got, want)
        if want[0] == "rejected":
            assert want[1] in AMOUNT_ROWS, (command, got, want)
        if got[0] == "rejected":
            assert got[1] in AMOUNT_ROWS, (command, got, want)


def _check_serial_places(ledger: Stepped, start: int, commands: list[Transfer], results: list[Any]) -> None:
    """Every accepted item is what the serial state accepts at its place in the log, and one
    sender's items are in request order there."""
    by_id = {command.transaction_id: command for command in commands}
    by_key = {(c.idempotency.scope, c.idempotency.key): (c, r) for c, r in zip(commands, results, strict=True)
              if c.idempotency is not None}
    serial = replay(ledger.log[:start])
    for event in ledger.log[start:]:
        if isinstance(event, RequestsRefused):
            # Final outcomes: each refusal is a rejected item's, with the answer it was given.
            for idempotency, rejection in event.refusals:
                command, result = by_key[(idempotency.scope, idempotency.key)]
                assert result is rejection, (command, result, rejection)
                assert rejection.reason not in UNRECORDED_REASONS
            apply(serial, event, serial.directory.lsn + 1)
            continue
        for transfer in event.transfers if isinstance(event, TransfersPosted) else (event,):
            assert isinstance(transfer, Transferred)
            decision = decide(serial, by_id[transfer.transaction_id], NOW_US)
            assert decision == [transfer], (transfer, decision)
            apply(serial, transfer, serial.directory.lsn + 1)
    places = _positions(ledger.log, start)
    last: dict[str, tuple[int, int]] = {}
    for command, result in zip(commands, results, strict=True):
        if isinstance(result, Committed):
            place = places[command.transaction_id]
            assert command.from_wallet_id is not None
            previous = last.get(command.from_wallet_id)
            assert previous is None or previous < place, (command, previous, place)
            last[command.from_wallet_id] = place


@settings(max_examples=120, deadline=None)
@given(shards=shard_counts, batches=st.lists(st.tuples(st.booleans(), _items(EVERY_ID), orders), min_size=1, max_size=5))
def test_batches_through_the_shards_agree_with_single_transfers_in_order(
    shards: int, batches: list[tuple[bool, list[Transfer], list[tuple[int, int]]]]
) -> None:
    with stepped(shards) as ledger:
        for number, (atomic, drawn, order) in enumerate(batches):
            commands = _number(drawn, 1000 * (number + 1))
            start = len(ledger.log)
            before = _balances(ledger.live())
            expected_state = replay(ledger.log)
            expected = _sequential(expected_state, commands)
            outcome = ledger.batch(commands, atomic=atomic, order=order)
            ledger.check()
            if atomic:
                failures = [index for index, d in enumerate(expected) if isinstance(d, Rejection)]
                if failures:
                    assert isinstance(outcome, BatchFailed), outcome
                    assert outcome.index == failures[0]
                    reference = expected[failures[0]]
                    assert isinstance(reference, Rejection)
                    assert outcome.rejection.reason == reference.reason
                    assert _balances(ledger.live()) == before
                    # Nothing posted; the failing item's rejection is recorded under its key.
                    failing = commands[failures[0]].idempotency
                    assert failing is not None
                    recorded = (reference.reason not in UNRECORDED_REASONS
                                and (failing.scope, failing.key) not in expected_state.directory.idempotency)
                    assert len(ledger.log) == start + recorded
                    if recorded:
                        (refusal,) = ledger.log[-1].refusals  # type: ignore[union-attr]
                        assert refusal == (failing, outcome.rejection)
                    continue
                assert isinstance(outcome, list), outcome
                assert [_kind(r) for r in outcome] == [_kind(d) for d in expected]
                assert len(ledger.log) - start == (1 if any(isinstance(r, Committed) for r in outcome) else 0)
                assert len({r.lsn for r in outcome if isinstance(r, Committed)}) <= 1
                assert _balances(ledger.live()) == _balances(expected_state.wallets.values())
                continue
            assert isinstance(outcome, list)
            _check_serial_places(ledger, start, commands, outcome)
            if shards == 1:
                assert [_kind(r) for r in outcome] == [_kind(d) for d in expected]
                assert _balances(ledger.live()) == _balances(expected_state.wallets.values())
            else:
                _compare_loosely(commands, outcome, expected)


@settings(max_examples=80, deadline=None)
@given(shards=shard_counts,
       batches=st.lists(st.tuples(_items(SENDERS, RECEIVERS, edges=False), orders), min_size=1, max_size=4))
def test_a_batch_whose_senders_do_not_receive_equals_single_transfers_in_order(
    shards: int, batches: list[tuple[list[Transfer], list[tuple[int, int]]]]
) -> None:
    with stepped(shards) as ledger:
        for number, (drawn, order) in enumerate(batches):
            commands = _number(drawn, 1000 * (number + 1))
            expected_state = replay(ledger.log)
            expected = _sequential(expected_state, commands)
            outcome = ledger.batch(commands, atomic=False, order=order)
            ledger.check()
            assert [_kind(r) for r in outcome] == [_kind(d) for d in expected]
            assert _balances(ledger.live()) == _balances(expected_state.wallets.values())


def test_the_wallet_ids_cover_every_shard() -> None:
    for shards in (2, 3, 4):
        assert {shard_of(wallet_id, shards) for wallet_id in SENDERS} == set(range(shards))
        assert {shard_of(wallet_id, shards) for wallet_id in RECEIVERS} == set(range(shards))


def test_an_atomic_batch_honours_reservations_of_transfers_in_flight() -> None:
    """A single transfer between two shards has reserved its amount on the receiver (step 1 ran,
    step 2 has not): an atomic batch crediting the same wallet counts the reservation."""
    with stepped(2) as ledger:
        shards = ledger.ledger.shards
        receiver = "j0"
        sender = next(f"j{n}" for n in range(1, 20) if shard_of(f"j{n}", 2) != shard_of(receiver, 2))
        ledger.execute(CreateAsset(code="JPY", scale=0))
        for wallet_id in (receiver, sender):
            ledger.execute(CreateWallet(wallet_id=wallet_id, owner_id="o1", asset="JPY", metadata=None, idempotency=None))
        assert isinstance(ledger.execute(_transfer(1, None, receiver, INT64_MAX - 10)), Committed)
        assert isinstance(ledger.execute(_transfer(2, None, sender, 10)), Committed)
        home = shards[shard_of(receiver, 2)]
        in_flight = home.submit_transfer(_transfer(3, sender, receiver, 8))
        home.drain(1)  # step 1 only: 8 reserved on the receiver
        assert home._pending == {receiver: 8}
        failed = ledger.ledger.commit_atomic_now([_transfer(4, sender, receiver, 2, "k4"),
                                                  _transfer(5, sender, receiver, 1, "k5")])
        ledger.settle([])
        assert isinstance(failed.failed, BatchFailed)
        assert failed.failed.index == 1  # MAX - 10 + 8 reserved + 2 + 1 passes int64
        assert failed.failed.rejection.reason == Reason.BALANCE_OVERFLOW
        assert isinstance(in_flight.value, Committed)
        passed = ledger.ledger.commit_atomic_now([_transfer(6, sender, receiver, 2, "k6")])
        ledger.settle([])
        assert passed.failed is None and isinstance(passed.results[0], Committed)
        assert {w.id: w.balance for w in ledger.live() if w.asset == "JPY" and w.id != "treasury:JPY"} == {
            receiver: INT64_MAX, sender: 0}
        ledger.check()


def test_a_non_atomic_part_waits_for_every_part_and_decides_in_request_order() -> None:
    """One sender, receivers on every shard: its items reach its shard in several parts, in
    whatever order the receiving shards run; they are still decided in request order."""
    with stepped(4) as ledger:
        sender = "a0"
        targets = [w for w in [*USD_WALLETS[1:], "ghost"] if shard_of(w, 4) != shard_of(sender, 4)]
        receivers = sorted({shard_of(w, 4) for w in targets})
        assert len(receivers) >= 2
        # Item 0 spends everything; every later item must then fail, whichever part comes first.
        commands = [_transfer(10, sender, targets[0], DEPOSIT, "k0")] + [
            _transfer(11 + index, sender, target, 1, f"k{index + 1}") for index, target in enumerate(targets[1:])
        ]
        # Item 0's receiving shard runs last: its part reaches the sender's shard after the others.
        first = shard_of(targets[0], 4)
        order = [(index, 1) for index in receivers if index != first] + [(first, 1)]
        results = ledger.batch(commands, atomic=False, order=order)
        assert isinstance(results[0], Committed)
        for result in results[1:]:
            assert isinstance(result, Rejection)
            assert result.reason in (Reason.INSUFFICIENT_FUNDS, Reason.RECEIVER_NOT_FOUND)
        ledger.check()


def test_a_drain_past_its_deadline_stops_after_the_message_in_hand() -> None:
    """``Shard.run`` gives each drain a time budget (``DRAIN_BUDGET_NS``) so a mailbox of batch
    parts cannot hold the event loop: a drain whose deadline has passed handles one message, the
    rest wait for the next drain, in the same order."""
    with stepped(1) as ledger:
        (shard,) = ledger.ledger.shards
        ledger.execute(CreateAsset(code="JPY", scale=0))
        ledger.execute(CreateWallet(wallet_id="j0", owner_id="o1", asset="JPY", metadata=None, idempotency=None))
        replies = [shard.submit_transfer(_transfer(n, None, "j0", n)) for n in range(1, 4)]
        assert shard.drain(1024, deadline_ns=0) == 1
        assert not shard.idle()
        ledger.settle([])
        assert [reply.value.event.amount for reply in replies] == [1, 2, 3]
        assert ledger.ledger.shards[0].state.wallets["j0"].balance == 6
