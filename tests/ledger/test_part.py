"""The batch-shaped hot path (``ledger._part``) against the per-item path it replaced, kept here as
the reference: ``decide_transfers`` (each item through ``decide_transfer``), then per record
``apply_directory`` and per transfer ``apply_debit`` and ``apply_credit``.

Random wallets (two assets, two owners, with and without overdraft and spend limits, frozen and
closed, balances near int64, balance alerts), split between the deciding shard and another one
(cross-shard items carry the other shard's step-1 verdict and reservation, same-shard items are
checked in the part, with reservations of transfers in flight), and three batches in a row at
random times (the day may change, spend windows roll) whose keys repeat earlier items' keys with
the same request (replays), with another request (reuse) and earlier refusals' keys (final
outcomes). Both paths run the same shard steps around the part (step 1, the refusals record,
step 3 on the other shard, the alert firings); they must give the same outcome per item, the
same log records byte for byte, and the same states (``digest_state`` of both shards, alerts'
crossings included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from ledger import _model
from ledger._apply import apply, apply_alerts, apply_credit, apply_debit, apply_directory
from ledger._batch import _records
from ledger._codec import decode_event, encode_event
from ledger._decide import (
    CreditCheck,
    check_credit,
    check_idempotency,
    decide,
    decide_firings,
    decide_transfers,
    refusal_recorded,
)
from ledger._invariants import digest_state
from ledger._model import (
    DAY_US,
    INT64_MAX,
    AlertDirection,
    AlertField,
    ChangeWalletStatus,
    CreateAlert,
    CreateAsset,
    CreateWallet,
    Event,
    Idempotency,
    Rejection,
    RequestsRefused,
    TransactionType,
    Transfer,
    Transferred,
    TransfersPosted,
    WalletStatus,
    transfer_row,
    transferred_of,
    transfers_posted,
)
from ledger._part import Credit, PartOutcome, apply_credits, apply_posted, decide_part
from ledger._part import check_credit as part_check_credit
from ledger._state import State, new_state
from ledger.testing import amounts
from tests._budget import scaled

NOW_US = 1_700_000_000_000_000
MISSING = "zz"  # a wallet id nobody has


@dataclass(frozen=True)
class WalletSpec:
    wallet_id: str
    home: bool  # on the deciding shard (else on the other)
    asset: str
    owner: str
    deposit: int
    overdraft: int
    daily: int | None
    monthly: int | None
    status: WalletStatus
    alert: tuple[AlertField, AlertDirection, int] | None


@st.composite
def wallet_specs(draw: Any) -> list[WalletSpec]:
    count = draw(st.integers(min_value=2, max_value=7))
    specs = []
    for number in range(count):
        status = draw(st.sampled_from([WalletStatus.ACTIVE] * 8 + [WalletStatus.FROZEN, WalletStatus.CLOSED]))
        limited = draw(st.booleans())
        specs.append(WalletSpec(
            wallet_id=f"w{number}",
            home=draw(st.sampled_from([True, True, False])),
            asset=draw(st.sampled_from(["USD"] * 5 + ["EUR"])),
            owner=draw(st.sampled_from(["o1", "o2"])),
            deposit=0 if status == WalletStatus.CLOSED else draw(
                st.sampled_from([0, 5, 100, 1000, 1000, 1000, INT64_MAX - 50, INT64_MAX])),
            overdraft=draw(st.sampled_from([0, 50, 1000])) if limited else 0,
            daily=draw(st.sampled_from([None, 30, 500])) if limited else None,
            monthly=draw(st.sampled_from([None, 60, 2000])) if limited else None,
            status=status,
            alert=draw(st.none() | st.tuples(
                st.sampled_from(list(AlertField)), st.sampled_from(list(AlertDirection)),
                st.sampled_from([-60, 0, 3, 50, 95, 990, 1100]) | st.integers(min_value=-100, max_value=1200))),
        ))
    return specs


@st.composite
def batches(draw: Any, home_ids: list[str], ids: list[str]) -> list[list[Transfer]]:
    """Three batches, sent mostly by the deciding shard's wallets; keys are distinct within a
    batch and repeat across them."""
    targets = [*ids * 4, MISSING]
    senders = [*home_ids * 8, MISSING, "treasury:USD"]
    result = []
    number = 0
    for _ in range(3):
        size = draw(st.integers(min_value=1, max_value=16))
        batch = []
        keys: set[str] = set()
        for _ in range(size):
            key = draw(st.none() | st.sampled_from([f"k{n}" for n in range(8)]))
            if key in keys:
                key = None
            if key is not None:
                keys.add(key)
            source = draw(st.sampled_from(senders))
            batch.append(Transfer(
                transaction_id=f"tx{number}", type=TransactionType.TRANSFER, from_wallet_id=source,
                to_wallet_id=draw(st.sampled_from([*targets, source])),
                amount=draw(st.integers(min_value=1, max_value=60) | st.integers(min_value=1, max_value=300)
                            | amounts()),
                description=None, metadata=None,
                idempotency=None if key is None else Idempotency(
                    scope="s", key=key, fingerprint=draw(st.sampled_from([b"a", b"a", b"b"]))),
                owner_id=draw(st.sampled_from([None] * 6 + ["o1", "o2"])),
            ))
            number += 1
        result.append(batch)
    return result


@dataclass
class Shards:
    """The deciding shard's state and the other shard's, one directory, and their log."""

    home: State
    other: State
    reserved: dict[str, int]  # the home shard's reservations for transfers in flight
    log: list[bytes] = field(default_factory=list)

    def append(self, record: Event) -> int:
        """Logs ``record`` at the next LSN; applies its directory part unless it posts transfers
        (the path under test applies those)."""
        self.log.append(encode_event(record))
        lsn = self.home.directory.lsn + 1
        if not isinstance(record, Transferred | TransfersPosted):
            apply_directory(self.home.directory, record, lsn)
        return lsn


def _setup(specs: list[WalletSpec]) -> Shards:
    whole = new_state()
    commands: list[Any] = [CreateAsset(code="USD", scale=2), CreateAsset(code="EUR", scale=2)]
    for spec in specs:
        commands.append(CreateWallet(
            wallet_id=spec.wallet_id, owner_id=spec.owner, asset=spec.asset, metadata=None, idempotency=None,
            overdraft_limit=spec.overdraft, daily_limit=spec.daily, monthly_limit=spec.monthly,
        ))
        if spec.deposit:
            commands.append(Transfer(
                transaction_id=f"d{spec.wallet_id}", type=TransactionType.DEPOSIT, from_wallet_id=None,
                to_wallet_id=spec.wallet_id, amount=spec.deposit, description=None, metadata=None, idempotency=None,
            ))
        if spec.alert is not None:
            field_, direction, threshold = spec.alert
            commands.append(CreateAlert(alert_id=f"a{spec.wallet_id}", wallet_id=spec.wallet_id, field=field_,
                                        direction=direction, threshold=threshold, owner_id=None))
        if spec.status != WalletStatus.ACTIVE:
            commands.append(ChangeWalletStatus(wallet_id=spec.wallet_id, status=spec.status))
    for command in commands:
        decision = decide(whole, command, NOW_US - DAY_US)
        if isinstance(decision, Rejection) and isinstance(command, Transfer):
            continue  # a deposit the treasury cannot make (int64): the wallet stays poorer
        assert isinstance(decision, list), (command, decision)
        for event in decision:
            apply(whole, event, whole.directory.lsn + 1)
    whole.crossings.clear()
    home = State(directory=whole.directory)
    other = State(directory=whole.directory)
    side = {spec.wallet_id: spec.home for spec in specs}
    for wallet_id, wallet in whole.wallets.items():
        (home if side.get(wallet_id, True) else other).wallets[wallet_id] = wallet
    for alert_id, alert in whole.alerts.items():
        target = home if side[alert.wallet_id] else other
        target.alerts[alert_id] = alert
        target.watched.setdefault(alert.wallet_id, []).append(alert)
    # Reservations of transfers in flight into some of the home shard's wallets.
    reserved = {spec.wallet_id: 7 for spec in specs if spec.home and spec.deposit < 1000}
    return Shards(home=home, other=other, reserved=reserved)


def _reference(shards: Shards, items: list[tuple[Transfer, CreditCheck | None]], now_us: int) -> list[PartOutcome]:
    decisions = decide_transfers(shards.home, items, now_us, shards.reserved)
    outcomes: list[PartOutcome] = []
    for decision in decisions:
        if isinstance(decision, list):
            (event,) = decision
            assert isinstance(event, Transferred)
            outcomes.append(transfer_row(event))
        else:
            outcomes.append(decision)
    return outcomes


def _reference_apply(state: State, record: Event, local: list[bool], lsn: int) -> None:
    apply_directory(state.directory, record, lsn)
    transfers = record.transfers if isinstance(record, TransfersPosted) else (record,)
    for transfer, here in zip(transfers, local, strict=True):
        assert isinstance(transfer, Transferred)
        apply_debit(state, transfer, lsn)
        if here:
            apply_credit(state, transfer, lsn)


def _reference_credits(state: State, credits: list[Credit]) -> None:
    for row, at_us, lsn in credits:
        apply_credit(state, transferred_of(row, at_us), lsn)


Decider = Callable[[Shards, list[tuple[Transfer, CreditCheck | None]], int], list[PartOutcome]]
Applier = Callable[[State, Event, list[bool], int], None]
Crediter = Callable[[State, list[Credit]], None]


@dataclass(frozen=True)
class Path:
    """Step 1's credit check, the part's decision, the record's apply, step 3."""

    checker: Callable[[State, Transfer, int], CreditCheck]
    decider: Decider
    applier: Applier
    crediter: Crediter


REFERENCE = Path(
    checker=lambda state, command, pending: check_credit(state, command, pending=pending),
    decider=_reference,
    applier=_reference_apply,
    crediter=_reference_credits,
)
BATCH_SHAPED = Path(
    checker=part_check_credit,
    decider=lambda shards, items, now_us: decide_part(shards.home, items, now_us, shards.reserved),
    applier=apply_posted,
    crediter=apply_credits,
)


def _run(shards: Shards, batch: list[Transfer], now_us: int, path: Path) -> list[Any]:
    """A batch part through the steps of ``Shard._on_credit_group`` / ``_decide_part`` /
    ``_on_apply_credits`` (one record: the batches are small), by ``path``."""
    home, other = shards.home, shards.other
    in_flight: dict[str, int] = {}  # the other shard's step-1 reservations
    items: list[tuple[Transfer, CreditCheck | None]] = []
    for command in batch:
        if command.to_wallet_id in home.wallets:
            items.append((command, None))
        else:
            before = in_flight.get(command.to_wallet_id, 0)
            credit = path.checker(other, command, before)
            if credit.failure is None:
                in_flight[command.to_wallet_id] = before + command.amount
            items.append((command, credit))
    outcomes = path.decider(shards, items, now_us)
    accepted = [(command, credit, outcome) for (command, credit), outcome in zip(items, outcomes, strict=True)
                if type(outcome) is tuple]
    refusals = [(command.idempotency, outcome) for (command, _), outcome in zip(items, outcomes, strict=True)
                if command.idempotency is not None and type(outcome) is Rejection
                and refusal_recorded(home.directory, command.idempotency, outcome)]
    credits: list[Credit] = []
    if accepted:
        rows = [outcome for _, _, outcome in accepted]
        assert all(type(row) is tuple for row in rows)
        # As ``ledger._batch._records`` makes it: a lone transfer is a plain ``Transferred``.
        record: Event = transferred_of(rows[0], now_us) if len(rows) == 1 else TransfersPosted(
            rows=tuple(rows), at_us=now_us)
        lsn = shards.append(record)
        path.applier(home, record, [credit is None for _, credit, _ in accepted], lsn)
        credits = [(row, now_us, lsn) for (_, credit, row) in accepted if credit is not None]
    if refusals:
        shards.append(RequestsRefused(refusals=tuple(refusals), at_us=now_us))
    path.crediter(other, credits)
    for state in (home, other):
        # The firings the changes owe, as the shards record them (the log compares them).
        for firing in decide_firings(state, now_us):
            lsn = shards.append(firing)
            apply_alerts(state, firing, lsn)
        assert not state.crossings
    return list(outcomes)


@settings(max_examples=scaled(100, 600), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), specs=wallet_specs())
def test_the_batch_shaped_part_equals_the_per_item_path(data: Any, specs: list[WalletSpec]) -> None:
    ids = [spec.wallet_id for spec in specs]
    home_ids = [spec.wallet_id for spec in specs if spec.home]
    plan = data.draw(batches(home_ids or ids, ids))
    times = sorted(data.draw(st.lists(st.sampled_from([0, 1, 3_600_000_000, DAY_US, 40 * DAY_US]),
                                      min_size=3, max_size=3)))
    reference = _setup(specs)
    batch_shaped = _setup(specs)  # built again, not deep-copied: compiled (mypyc) classes refuse deepcopy
    assert digest_state(reference.home) == digest_state(batch_shaped.home)
    for batch, offset in zip(plan, times, strict=True):
        now_us = NOW_US + offset
        expected = _run(reference, batch, now_us, REFERENCE)
        got = _run(batch_shaped, batch, now_us, BATCH_SHAPED)
        assert got == expected
        assert batch_shaped.log == reference.log
        assert digest_state(batch_shaped.home) == digest_state(reference.home)
        assert digest_state(batch_shaped.other) == digest_state(reference.other)
        assert batch_shaped.home.directory.idempotency == reference.home.directory.idempotency


def test_every_fast_path_row_is_exercised() -> None:
    """A hand-made part where each inline row fails once (and one item passes them all): the
    batch-shaped path answers each with the reference's rejection."""
    specs = [
        WalletSpec("w0", True, "USD", "o1", 100, 0, None, None, WalletStatus.ACTIVE,
                   (AlertField.BALANCE, AlertDirection.BELOW, 95)),
        WalletSpec("w1", True, "USD", "o2", 0, 0, None, None, WalletStatus.ACTIVE,
                   (AlertField.AVAILABLE, AlertDirection.ABOVE, 5)),
        WalletSpec("w2", True, "EUR", "o1", 100, 0, None, None, WalletStatus.ACTIVE, None),
        WalletSpec("w3", True, "USD", "o1", 100, 0, None, None, WalletStatus.FROZEN, None),
        WalletSpec("w4", True, "USD", "o1", 0, 0, None, None, WalletStatus.CLOSED, None),
        WalletSpec("w5", True, "EUR", "o1", INT64_MAX - 3000, 0, None, None, WalletStatus.ACTIVE, None),
        WalletSpec("w6", True, "USD", "o1", 100, 50, 20, None, WalletStatus.ACTIVE, None),
    ]

    def transfer(number: int, source: str, target: str, amount: int, owner: str | None = None) -> Transfer:
        return Transfer(transaction_id=f"t{number}", type=TransactionType.TRANSFER, from_wallet_id=source,
                        to_wallet_id=target, amount=amount, description=None, metadata=None,
                        idempotency=Idempotency(scope="s", key=f"k{number}", fingerprint=b"a"), owner_id=owner)

    batch = [
        transfer(0, "w0", "w1", 10),  # passes
        transfer(1, MISSING, "w1", 10),  # 1
        transfer(2, "w0", "w1", 10, owner="o2"),  # 1b
        transfer(3, "w0", MISSING, 10),  # 2
        transfer(4, "w0", "w0", 10),  # 3
        transfer(5, "w0", "w2", 10),  # 4
        transfer(6, "w3", "w1", 10),  # 5
        transfer(7, "w0", "w4", 10),  # 6
        transfer(8, "w1", "w0", 11),  # 7 (w1 holds the 10 of item 0)
        transfer(9, "w6", "w1", 30),  # 7b
        transfer(10, "w2", "w5", 10),  # 8 (with what is in flight into w5)
    ]
    reference = _setup(specs)
    reference.reserved["w5"] = 5000
    batch_shaped = _setup(specs)  # built again, not deep-copied: compiled (mypyc) classes refuse deepcopy
    batch_shaped.reserved["w5"] = 5000
    expected = _run(reference, batch, NOW_US, REFERENCE)
    got = _run(batch_shaped, batch, NOW_US, BATCH_SHAPED)
    assert got == expected
    reasons = [None if type(outcome) is tuple else outcome.reason.name for outcome in got]
    assert reasons == [None, "SENDER_NOT_FOUND", "FORBIDDEN", "RECEIVER_NOT_FOUND", "SAME_WALLET", "ASSET_MISMATCH",
                       "SENDER_FROZEN", "RECEIVER_CLOSED", "INSUFFICIENT_FUNDS", "SPEND_LIMIT_EXCEEDED",
                       "BALANCE_OVERFLOW"]
    assert batch_shaped.log == reference.log
    assert digest_state(batch_shaped.home) == digest_state(reference.home)
    # Both alerts fired (w0 debited below 95, w1 credited above 5), by one record.
    assert [alert.id for alert in reference.home.alerts.values() if alert.triggered] == ["aw0", "aw1"]
    assert [alert.id for alert in batch_shaped.home.alerts.values() if alert.triggered] == ["aw0", "aw1"]
    # The same batch again: every key answers as recorded (replays and final refusals).
    expected = _run(reference, batch, NOW_US + 1, REFERENCE)
    got = _run(batch_shaped, batch, NOW_US + 1, BATCH_SHAPED)
    assert got == expected
    assert batch_shaped.log == reference.log
    assert digest_state(batch_shaped.home) == digest_state(reference.home)


@pytest.mark.skipif(_model.__file__.endswith((".so", ".pyd")), reason="compiled: module globals are bound")
def test_a_batch_part_is_decided_applied_and_replayed_without_building_a_transferred(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch path works on rows: a part of accepted transfers, keyed and not, on both
    shards, is decided, recorded, applied, credited and replayed without one ``Transferred``
    (a lone transfer is its own ``Transferred`` record, so the part has several); a retry's
    answer builds the one it answers with."""
    specs = [WalletSpec(f"w{n}", n < 3, "USD", "o", 1000, 0, None, None, WalletStatus.ACTIVE, None)
             for n in range(6)]
    batch = [Transfer(transaction_id=f"t{n}", type=TransactionType.TRANSFER, from_wallet_id=f"w{n % 3}",
                      to_wallet_id=f"w{(n + 1) % 6}", amount=n + 1, description=None, metadata={"n": n},
                      idempotency=Idempotency(scope="s", key=f"k{n}", fingerprint=b"f") if n % 2 else None)
             for n in range(8)]
    shards = _setup(specs)
    built: list[object] = []
    real = _model.new_transferred
    monkeypatch.setattr(_model, "new_transferred", lambda *fields: built.append(fields) or real(*fields))
    outcomes = _run(shards, batch, NOW_US, BATCH_SHAPED)
    assert all(type(outcome) is tuple for outcome in outcomes)
    record = decode_event(shards.log[-1])
    assert type(record) is TransfersPosted and len(record.rows) == 8
    replayed = _setup(specs)
    local = [row[3] in replayed.home.wallets for row in record.rows]
    assert True in local and False in local
    apply_posted(replayed.home, record, local, replayed.home.directory.lsn + 1)
    assert built == []
    duplicate = check_idempotency(shards.home.directory, batch[3].idempotency)
    assert isinstance(duplicate, _model.Duplicate)
    assert duplicate.record.event == transferred_of(record.rows[3], record.at_us)
    assert len(built) == 2  # the answer, and the expected value above


def test_the_keys_of_a_batch_record_share_its_payload_and_answer_from_it() -> None:
    """The idempotency records of a batch record keep its log encoding, one bytes object for all
    its keys (not its decoded rows: about half the memory per key), and answer a retry with the
    transfer it encodes; a record decoded from the log keeps the bytes it was decoded from."""
    specs = [WalletSpec(f"w{n}", True, "USD", "o", 1000, 0, None, None, WalletStatus.ACTIVE, None)
             for n in range(4)]
    shards = _setup(specs)
    items: list[tuple[Transfer, CreditCheck | None]] = [
        (Transfer(transaction_id=f"t{n}", type=TransactionType.TRANSFER, from_wallet_id=f"w{n % 4}",
                  to_wallet_id=f"w{(n + 1) % 4}", amount=n + 1, description="d" if n else None,
                  metadata={"n": [n]}, idempotency=Idempotency(scope="s", key=f"k{n}", fingerprint=bytes([n]))),
         None)
        for n in range(5)
    ]
    rows = decide_part(shards.home, items, NOW_US, {})
    ((payload, record, count),) = _records(rows, NOW_US)
    assert type(record) is TransfersPosted and count == 5
    assert record.payload is payload and decode_event(payload) == record
    apply_posted(shards.home, record, [True] * 5, shards.home.directory.lsn + 1)
    keyed = [shards.home.directory.idempotency[("s", f"k{n}")] for n in range(5)]
    assert all(entry.source is payload for entry in keyed)
    assert [entry.event for entry in keyed] == [transferred_of(row, NOW_US) for row in rows]
    assert [entry.fingerprint for entry in keyed] == [bytes([n]) for n in range(5)]
    decoded = decode_event(payload)
    assert type(decoded) is TransfersPosted and decoded.payload is payload


def test_a_replayed_batch_record_keeps_one_scope_string_and_shared_positions() -> None:
    """Memory per key: a record decoded from the log has its own copy of the scope in every
    row; the keys keep one (interned), and positions past the small ints are shared objects."""
    specs = [WalletSpec(f"w{n}", True, "USD", "o", 10_000, 0, None, None, WalletStatus.ACTIVE, None)
             for n in range(2)]
    moves = [Transferred(transaction_id=f"t{n}", type=TransactionType.TRANSFER, from_wallet_id=f"w{n % 2}",
                         to_wallet_id=f"w{(n + 1) % 2}", asset="USD", amount=1, description=None, metadata=None,
                         at_us=NOW_US, idempotency=Idempotency(scope="owner:" + "o" * 20, key=f"k{n}",
                                                               fingerprint=b"f"))
             for n in range(300)]
    record = decode_event(encode_event(transfers_posted(moves, NOW_US)))
    assert isinstance(record, TransfersPosted)
    assert record.rows[0][8] is not None and record.rows[1][8] is not None
    assert record.rows[0][8][0] is not record.rows[1][8][0]  # the decoder's copies
    state = _setup(specs).home
    apply_posted(state, record, [True] * 300, state.directory.lsn + 1)
    keys = [key for key in state.directory.idempotency if key[1].startswith("k")]
    assert len(keys) == 300 and len({id(scope) for scope, _ in keys}) == 1
    entries = [state.directory.idempotency[key] for key in keys]
    assert [entry.position for entry in entries] == list(range(300))
    again = decode_event(encode_event(transfers_posted(moves, NOW_US)))
    other = _setup(specs).home
    assert isinstance(again, TransfersPosted)
    apply_posted(other, again, [True] * 300, other.directory.lsn + 1)
    others = [other.directory.idempotency[key] for key in keys]
    if not _model.__file__.endswith((".so", ".pyd")):  # compiled, a record stores its position unboxed
        assert all(a.position is b.position for a, b in zip(entries, others, strict=True))
