"""Balance alerts in the state machine: the crossing rule against a tiny reference model (a
property test over deposits, transfers, holds, captures, voids and alerts on both fields and
both directions, the treasury's negative balance included), the edge cases one by one, the
decision table of ``ledger._decide`` (one test per row), the record and snapshot codecs, replay
equality, and what recovery does with a firing that a crash cut off the log."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import msgpack
import pytest
import trio
from hypothesis import given, settings

from ledger import (
    ALERTS_PER_WALLET_MAX,
    AlertCreated,
    AlertDirection,
    AlertField,
    AlertFired,
    AlertsTriggered,
    CreateAlert,
    CreateAsset,
    CreateWallet,
    DeleteAlert,
    Event,
    Ledger,
    Reason,
    Rejection,
    ResolveHold,
    apply,
    decide,
    decode_event,
    decode_state,
    encode_event,
    encode_state,
    new_state,
    recover,
    treasury_id,
)
from ledger._decide import decide_firings
from ledger.testing import digest, hold, replay, transfer
from wal import ScanResult, scan
from wal.testing import frames_in, truncate

BELOW, ABOVE = AlertDirection.BELOW, AlertDirection.ABOVE
AVAILABLE, BALANCE = AlertField.AVAILABLE, AlertField.BALANCE
NOW = 1_700_000_000_000_000


class World:
    """One ``State`` holding every wallet, driven the way a shard drives it: decide, apply each
    accepted event, then record what the changes owe (``decide_firings``) in the same step."""

    def __init__(self, wallets: tuple[str, ...] = ("a", "b")) -> None:
        self.state = new_state()
        self.log: list[Event] = []
        self.fired: list[AlertFired] = []
        self.alerts = 0
        self.now = NOW
        self.do(CreateAsset(code="USD", scale=2))
        for wallet_id in wallets:
            self.do(CreateWallet(wallet_id=wallet_id, owner_id="o", asset="USD", metadata=None, idempotency=None))

    def do(self, command: Any) -> list[Event] | Rejection:
        self.now += 1
        decision = decide(self.state, command, self.now)
        if not isinstance(decision, list):
            assert isinstance(decision, Rejection), decision
            return decision
        for event in decision:
            self.append(event)
        for record in decide_firings(self.state, self.now):
            self.append(record)
            self.fired.extend(record.firings)
        assert not self.state.crossings
        return decision

    def append(self, event: Event) -> None:
        apply(self.state, decode_event(encode_event(event)), self.state.directory.lsn + 1)
        self.log.append(event)

    def alert(self, wallet_id: str, field: AlertField, direction: AlertDirection, threshold: int,
              owner_id: str | None = None) -> AlertCreated | Rejection:
        self.alerts += 1
        decision = self.do(CreateAlert(alert_id=f"al{self.alerts}", wallet_id=wallet_id, field=field,
                                       direction=direction, threshold=threshold, owner_id=owner_id))
        if isinstance(decision, Rejection):
            return decision
        (event,) = decision
        assert isinstance(event, AlertCreated)
        return event

    def triggered(self, alert_id: str) -> bool:
        return self.state.alerts[alert_id].triggered


def resolve(transaction_id: str, source: str, target: str, *, capture: bool) -> ResolveHold:
    return ResolveHold(transaction_id=transaction_id, capture=capture, amount=None, from_wallet_id=source,
                       to_wallet_id=target, owner_id=None, idempotency=None)


# -- the crossing rule against a reference model -------------------------------------------------


class Reference:
    """Balances and held amounts kept by plain arithmetic, and each alert's condition before the
    last change of its wallet: a firing is expected exactly when a change turns it true."""

    def __init__(self) -> None:
        self.balance: dict[str, int] = {}
        self.held: dict[str, int] = {}
        self.alerts: dict[str, tuple[str, AlertField, AlertDirection, int]] = {}
        self.was: dict[str, bool] = {}
        self.expected: list[tuple[str, int, str]] = []  # (alert id, value, transaction id)

    def value(self, wallet_id: str, field: AlertField) -> int:
        balance = self.balance.get(wallet_id, 0)
        return balance if field == BALANCE else balance - self.held.get(wallet_id, 0)

    def condition(self, alert_id: str) -> bool:
        wallet_id, field, direction, threshold = self.alerts[alert_id]
        value = self.value(wallet_id, field)
        return value < threshold if direction == BELOW else value > threshold

    def change(self, wallet_id: str, transaction_id: str, *, balance: int = 0, held: int = 0) -> None:
        self.balance[wallet_id] = self.balance.get(wallet_id, 0) + balance
        self.held[wallet_id] = self.held.get(wallet_id, 0) + held
        for alert_id, (owner, field, _, _) in self.alerts.items():
            if owner != wallet_id:
                continue
            now = self.condition(alert_id)
            if now and not self.was[alert_id]:
                self.expected.append((alert_id, self.value(wallet_id, field), transaction_id))
            self.was[alert_id] = now

    def create(self, alert_id: str, wallet_id: str, field: AlertField, direction: AlertDirection,
               threshold: int) -> bool:
        self.alerts[alert_id] = (wallet_id, field, direction, threshold)
        self.was[alert_id] = self.condition(alert_id)
        return self.was[alert_id]

    def delete(self, alert_id: str) -> None:
        del self.alerts[alert_id]
        del self.was[alert_id]


WALLETS = ("a", "b")
ALERTED = (*WALLETS, treasury_id("USD"))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), st.sampled_from(WALLETS), st.integers(1, 150)),
        st.tuples(st.just("transfer"), st.sampled_from(WALLETS), st.integers(1, 150)),
        st.tuples(st.just("hold"), st.sampled_from(WALLETS), st.integers(1, 150)),
        st.tuples(st.just("capture"), st.integers(0, 5)),
        st.tuples(st.just("void"), st.integers(0, 5)),
        st.tuples(st.just("alert"), st.sampled_from(ALERTED), st.sampled_from(list(AlertField)),
                  st.sampled_from(list(AlertDirection)), st.integers(-300, 300)),
        st.tuples(st.just("delete"), st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_an_alert_fires_once_per_crossing_like_the_reference_model(ops: list[tuple[Any, ...]]) -> None:
    world = World(WALLETS)
    reference = Reference()
    treasury = treasury_id("USD")
    holds: list[tuple[str, str, str, int]] = []
    alerts: list[str] = []
    for number, op in enumerate(ops):
        kind = op[0]
        if kind == "deposit":
            _, wallet_id, amount = op
            if not isinstance(world.do(transfer(number, None, wallet_id, amount)), Rejection):
                reference.change(treasury, f"tx{number}", balance=-amount)
                reference.change(wallet_id, f"tx{number}", balance=amount)
        elif kind == "transfer":
            _, source, amount = op
            target = "b" if source == "a" else "a"
            if not isinstance(world.do(transfer(number, source, target, amount)), Rejection):
                reference.change(source, f"tx{number}", balance=-amount)
                reference.change(target, f"tx{number}", balance=amount)
        elif kind == "hold":
            _, source, amount = op
            target = "b" if source == "a" else "a"
            if not isinstance(world.do(hold(number, source, target, amount)), Rejection):
                reference.change(source, f"h{number}", held=amount)
                holds.append((f"h{number}", source, target, amount))
        elif kind in ("capture", "void") and holds:
            transaction_id, source, target, amount = holds.pop(op[1] % len(holds))
            assert not isinstance(world.do(resolve(transaction_id, source, target, capture=kind == "capture")),
                                  Rejection)
            if kind == "capture":
                reference.change(source, transaction_id, balance=-amount, held=-amount)
                reference.change(target, transaction_id, balance=amount)
            else:
                reference.change(source, transaction_id, held=-amount)
        elif kind == "alert":
            _, wallet_id, field, direction, threshold = op
            event = world.alert(wallet_id, field, direction, threshold)
            assert isinstance(event, AlertCreated)
            assert event.triggered == reference.create(event.alert_id, wallet_id, field, direction, threshold)
            alerts.append(event.alert_id)
        elif kind == "delete" and alerts:
            alert_id = alerts.pop(op[1] % len(alerts))
            assert not isinstance(world.do(DeleteAlert(alert_id=alert_id, owner_id=None)), Rejection)
            reference.delete(alert_id)
    assert [(f.alert_id, f.value, f.transaction_id) for f in world.fired] == reference.expected
    for alert_id in alerts:
        assert world.triggered(alert_id) == reference.was[alert_id]
    # Replay of the log (firing records included) and a snapshot rebuild the same state.
    assert digest(replay(world.log)) == digest(world.state)
    assert digest(decode_state(b"".join(encode_state(world.state)))) == digest(world.state)


# -- edge cases -----------------------------------------------------------------------------------


def funded(amount: int = 100) -> World:
    world = World()
    world.do(transfer(0, None, "a", amount))
    return world


def test_an_alert_created_while_its_condition_holds_starts_triggered_and_fires_only_after_rearming() -> None:
    world = funded(100)
    event = world.alert("a", BALANCE, ABOVE, 50)
    assert isinstance(event, AlertCreated) and event.triggered
    world.do(transfer(1, None, "a", 10))  # still above: nothing
    assert world.fired == []
    world.do(transfer(2, "a", "b", 70))  # 40: re-armed, silently
    assert world.fired == [] and not world.triggered(event.alert_id)
    world.do(transfer(3, None, "a", 11))  # 51: the crossing
    assert [(f.alert_id, f.value, f.transaction_id) for f in world.fired] == [(event.alert_id, 51, "tx3")]


def test_below_and_above_each_fire_on_their_own_crossing() -> None:
    world = funded(100)
    below = world.alert("a", BALANCE, BELOW, 20)
    above = world.alert("a", BALANCE, ABOVE, 150)
    assert isinstance(below, AlertCreated) and isinstance(above, AlertCreated)
    world.do(transfer(1, "a", "b", 85))  # 15
    world.do(transfer(2, "a", "b", 5))  # 10: still below, no second firing
    world.do(transfer(3, None, "a", 200))  # 210: below re-arms, above crosses
    world.do(transfer(4, "a", "b", 200))  # 10: above re-arms, below crosses again
    assert [(f.alert_id, f.direction, f.threshold, f.value, f.transaction_id) for f in world.fired] == [
        (below.alert_id, BELOW, 20, 15, "tx1"),
        (above.alert_id, ABOVE, 150, 210, "tx3"),
        (below.alert_id, BELOW, 20, 10, "tx4"),
    ]


def test_the_threshold_is_strict() -> None:
    world = funded(100)
    event = world.alert("a", BALANCE, BELOW, 50)
    world.do(transfer(1, "a", "b", 50))  # exactly 50: not below
    assert world.fired == []
    world.do(transfer(2, "a", "b", 1))
    assert [f.value for f in world.fired] == [49]
    assert isinstance(event, AlertCreated)


def test_a_hold_moves_available_but_not_balance() -> None:
    world = funded(100)
    on_available = world.alert("a", AVAILABLE, BELOW, 50)
    on_balance = world.alert("a", BALANCE, BELOW, 50)
    assert isinstance(on_available, AlertCreated) and isinstance(on_balance, AlertCreated)
    world.do(hold(1, "a", "b", 60))  # available 40, balance 100
    assert [(f.alert_id, f.field, f.value, f.transaction_id) for f in world.fired] == [
        (on_available.alert_id, AVAILABLE, 40, "h1")
    ]
    world.do(resolve("h1", "a", "b", capture=False))  # voided: available 100 again, re-armed
    assert not world.triggered(on_available.alert_id)
    world.do(hold(2, "a", "b", 60))
    world.do(resolve("h2", "a", "b", capture=True))  # captured: balance 40 crosses now
    assert [(f.alert_id, f.value, f.transaction_id) for f in world.fired][1:] == [
        (on_available.alert_id, 40, "h2"), (on_balance.alert_id, 40, "h2"),
    ]


def test_the_receiver_of_a_transfer_and_a_negative_threshold_on_the_treasury() -> None:
    world = World()
    receiver = world.alert("b", BALANCE, ABOVE, 0)
    treasury = world.alert(treasury_id("USD"), BALANCE, BELOW, -1000)
    world.do(transfer(1, None, "a", 1000))  # treasury -1000: not below
    world.do(transfer(2, "a", "b", 1))
    world.do(transfer(3, None, "b", 1))  # treasury -1001
    assert isinstance(receiver, AlertCreated) and isinstance(treasury, AlertCreated)
    assert [(f.alert_id, f.value, f.transaction_id) for f in world.fired] == [
        (receiver.alert_id, 1, "tx2"), (treasury.alert_id, -1001, "tx3"),
    ]


def test_a_deleted_alert_fires_no_more() -> None:
    world = funded(100)
    event = world.alert("a", BALANCE, BELOW, 50)
    assert isinstance(event, AlertCreated)
    world.do(DeleteAlert(alert_id=event.alert_id, owner_id=None))
    world.do(transfer(1, "a", "b", 90))
    assert world.fired == [] and not world.state.alerts and not world.state.watched


# -- the decision table (``ledger._decide``, balance alerts), one test per row --------------------


def test_create_row_1_the_wallet_must_exist() -> None:
    refused = World().alert("nope", BALANCE, BELOW, 1)
    assert isinstance(refused, Rejection) and refused.reason == Reason.SENDER_NOT_FOUND


def test_create_row_2_the_caller_must_own_the_wallet() -> None:
    world = World()
    refused = world.alert("a", BALANCE, BELOW, 1, owner_id="mallory")
    assert isinstance(refused, Rejection) and refused.reason == Reason.FORBIDDEN
    refused = world.alert(treasury_id("USD"), BALANCE, BELOW, 1, owner_id="o")  # the system's
    assert isinstance(refused, Rejection) and refused.reason == Reason.FORBIDDEN
    assert isinstance(world.alert("a", BALANCE, BELOW, 1, owner_id="o"), AlertCreated)


def test_create_row_3_a_wallet_has_at_most_so_many_alerts() -> None:
    world = World()
    for threshold in range(ALERTS_PER_WALLET_MAX):
        assert isinstance(world.alert("a", BALANCE, BELOW, threshold), AlertCreated)
    refused = world.alert("a", BALANCE, BELOW, 0)
    assert isinstance(refused, Rejection) and refused.reason == Reason.ALERT_LIMIT_REACHED
    assert refused.reason.code == "alert_limit_reached"
    assert isinstance(world.alert("b", BALANCE, BELOW, 0), AlertCreated)  # per wallet


def test_delete_row_1_the_alert_must_exist() -> None:
    refused = World().do(DeleteAlert(alert_id="al_nope", owner_id=None))
    assert isinstance(refused, Rejection) and refused.reason == Reason.ALERT_NOT_FOUND


def test_delete_row_2_the_caller_must_own_its_wallet() -> None:
    world = World()
    event = world.alert("a", BALANCE, BELOW, 1)
    assert isinstance(event, AlertCreated)
    refused = world.do(DeleteAlert(alert_id=event.alert_id, owner_id="mallory"))
    assert isinstance(refused, Rejection) and refused.reason == Reason.FORBIDDEN
    assert world.do(DeleteAlert(alert_id=event.alert_id, owner_id="o"))


# -- codecs ---------------------------------------------------------------------------------------


def test_alert_records_round_trip_through_the_codec() -> None:
    world = funded(100)
    world.alert("a", AVAILABLE, ABOVE, 2**63 - 1)
    world.alert("a", BALANCE, BELOW, -(2**63))
    world.alert("a", BALANCE, BELOW, 50)
    world.do(transfer(1, "a", "b", 60))
    world.do(DeleteAlert(alert_id="al1", owner_id=None))
    kinds = {type(event).__name__ for event in world.log}
    assert {"AlertCreated", "AlertDeleted", "AlertsTriggered"} <= kinds
    for event in world.log:
        assert decode_event(encode_event(event)) == event


def test_a_snapshot_carries_alerts_their_state_and_owed_firings() -> None:
    world = funded(100)
    world.alert("a", BALANCE, BELOW, 50)
    world.alert("a", AVAILABLE, ABOVE, 10)
    # A change applied and its firing not yet recorded (a snapshot cut between the two records).
    decision = decide(world.state, transfer(1, "a", "b", 60), world.now + 1)
    assert isinstance(decision, list)
    world.append(decision[0])
    assert len(world.state.crossings) == 1
    image = decode_state(b"".join(encode_state(world.state)))
    assert digest(image) == digest(world.state)
    assert [alert.key() for alert in image.alerts.values()] == [alert.key() for alert in world.state.alerts.values()]
    assert image.crossings == world.state.crossings
    assert [alert.id for alert in image.watched["a"]] == ["al1", "al2"]


def test_a_snapshot_written_before_alerts_still_loads() -> None:
    world = funded(100)
    body = b"".join(encode_state(world.state))
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(body)
    header = unpacker.unpack()
    assert header[0] == 4 and header[-4:] == [0, 0, 0, 0]  # alerts, crossings, refusals, refund tallies
    old_header = msgpack.packb([2, *header[1:-4]])
    assert body.endswith(msgpack.packb(0))  # version 4's limits section: no wallet has limits or spent
    old = decode_state(old_header + body[len(msgpack.packb(header)):-1])
    assert digest(old) == digest(world.state) and not old.alerts


def test_a_damaged_alert_record_is_a_codec_error() -> None:
    from ledger import CodecError

    good = msgpack.unpackb(encode_event(AlertsTriggered(firings=(AlertFired(
        alert_id="al1", wallet_id="a", field=BALANCE, direction=BELOW, threshold=1, value=0, transaction_id="t",
    ),), at_us=1)))
    for bad in ([*good[:3], []], [*good[:3], [["al1"]]], [*good[:3], [[*good[3][0][:4], "1", 0, "t"]]]):
        with pytest.raises(CodecError):
            decode_event(msgpack.packb(bad))
    created = msgpack.unpackb(encode_event(AlertCreated(
        alert_id="al1", wallet_id="a", field=BALANCE, direction=BELOW, threshold=1, triggered=False, at_us=1,
    )))
    created[7] = 0  # triggered must be a boolean
    with pytest.raises(CodecError):
        decode_event(msgpack.packb(created))


# -- recovery: a firing cut off the log is recorded once, before serving -------------------------


def _kinds(data: Path) -> list[Event]:
    return [decode_event(frame.payload) for frame in scan(data / "wal", ScanResult())]


async def test_a_firing_lost_in_a_crash_is_recorded_at_the_restart_and_only_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ledger = Ledger(await trio.to_thread.run_sync(recover, data), data, shards=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        assert await ledger.create_asset(CreateAsset(code="USD", scale=2))
        for wallet_id in ("a", "b"):
            assert await ledger.create_wallet(
                CreateWallet(wallet_id=wallet_id, owner_id="o", asset="USD", metadata=None, idempotency=None))
        assert await ledger.create_alert(CreateAlert(alert_id="al1", wallet_id="b", field=BALANCE,
                                                     direction=ABOVE, threshold=5, owner_id=None))
        await ledger.transfer(transfer(1, None, "b", 10))
        await ledger.stop()
    records = _kinds(data)
    assert isinstance(records[-1], AlertsTriggered) and records[-1].firings[0].transaction_id == "tx1"
    # The crash: the log loses its last record (the firing), the deposit stays.
    cut = tmp_path / "cut"
    shutil.copytree(data, cut, ignore=shutil.ignore_patterns("snapshots"))
    segment = sorted((cut / "wal").glob("*.wal"))[-1]
    offset, last = frames_in(segment)[-1]
    assert isinstance(decode_event(last.payload), AlertsTriggered)
    truncate(segment, offset)
    recovered = await trio.to_thread.run_sync(recover, cut)
    assert [firing.transaction_id for firing in recovered.state.crossings] == ["tx1"]  # owed
    assert recovered.state.alerts["al1"].triggered
    recovered.close()
    for _ in range(2):  # two restarts: the owed firing is recorded by the first, not again
        ledger = Ledger(await trio.to_thread.run_sync(recover, cut), cut, shards=4)
        async with trio.open_nursery() as nursery:
            await nursery.start(ledger.run)
            await ledger.stop()
    firings = [f.transaction_id for event in _kinds(cut) if isinstance(event, AlertsTriggered) for f in event.firings]
    assert firings == ["tx1"]

