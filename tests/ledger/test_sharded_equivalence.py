"""Transfers split across shards, the way ``ledger/_shard.py`` runs them, against one full State.

``ShardedLedger`` replays the actors' synchronous steps without trio: N ``State`` objects share
one ``Directory``, wallets live on ``shard_of(id, N)``, and a transfer runs ``check_credit`` on the
receiver's shard (reserving the amount in ``pending`` when the sender lives elsewhere), then
``decide_transfer`` + ``apply_directory`` + ``apply_debit`` on the sender's shard (the commit
point), then ``apply_credit`` on the receiver's shard, possibly after other commands ran.

What must hold:

* credits applied at once: every outcome, the log and the final digest equal one State's run;
* credits delayed: every outcome equals what one State holding the log so far (the "serial"
  state) would answer, except that money still on its way cannot be spent yet (the sharded run
  may refuse a debit with INSUFFICIENT_FUNDS or, for a treasury, BALANCE_OVERFLOW where the
  serial state accepts, or refuses with the later row BALANCE_OVERFLOW); at every step each wallet's balance plus its reservation equals the
  serial balance; once every credit is applied, the invariants hold and the state equals a
  replay of the log.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import hypothesis.strategies as st
from hypothesis import example, given, settings

from ledger import (
    INT64_MIN,
    ChangeWalletStatus,
    Command,
    CreateAsset,
    CreateToken,
    CreateWallet,
    Decision,
    Directory,
    Duplicate,
    Event,
    Idempotency,
    Reason,
    Rejection,
    RevokeToken,
    State,
    TransactionType,
    Transfer,
    Transferred,
    Wallet,
    WalletStatus,
    check_credit,
    check_invariants,
    decide,
    decide_transfer,
    is_treasury,
    new_state,
    shard_of,
    state_digest,
    treasury_id,
)
from ledger._apply import apply, apply_credit, apply_debit, apply_directory, apply_wallets
from ledger._decide import (
    decide_change_status,
    decide_create_asset,
    decide_create_token,
    decide_create_wallet,
    decide_revoke_token,
)
from ledger.testing import amounts, digest, replay

START_US = 1_000_000
# Spread over every shard for 2, 3 and 4 shards (checked by test_wallet_ids_cover_every_shard).
WALLET_IDS = ["alice", "bob", "erin", "frank", "mallory", "judy"]
ANY_WALLET_IDS = [*WALLET_IDS, treasury_id("USD"), treasury_id("EUR"), "ghost"]
# Most transfers move USD between the wallets the setup creates (erin starts empty, so she
# often spends money that may still be on its way).
USUAL_WALLET_IDS = ["alice", "bob", "erin"]


def _deposit(to_wallet_id: str, amount: int) -> Transfer:
    return Transfer(
        transaction_id="", type=TransactionType.DEPOSIT, from_wallet_id=None,
        to_wallet_id=to_wallet_id, amount=amount, description=None, metadata=None, idempotency=None,
    )


def _wallet(wallet_id: str, owner_id: str, asset: str) -> CreateWallet:
    return CreateWallet(wallet_id=wallet_id, owner_id=owner_id, asset=asset, metadata=None, idempotency=None)


SETUP: list[Command] = [
    CreateAsset(code="USD", scale=2),
    CreateAsset(code="EUR", scale=0),
    _wallet("alice", "o1", "USD"),
    _wallet("bob", "o2", "USD"),
    _wallet("erin", "o1", "USD"),
    _wallet("frank", "o2", "EUR"),
    _deposit("alice", 1000),
    _deposit("bob", 1000),
    _deposit("frank", 1000),
]


@dataclass(frozen=True)
class Deliver:
    """Applies the ``index``-th (modulo) credit still in flight, if any."""

    index: int


Op = Command | Deliver
Program = list[tuple[int, Op]]  # (clock advance in us, op)
Outcome = tuple[Any, ...]

idempotencies = st.none() | st.builds(
    Idempotency, scope=st.just("admin"), key=st.sampled_from(["k1", "k2"]),
    fingerprint=st.sampled_from([b"a", b"b"]),
)
transfer_amounts = st.integers(min_value=1, max_value=300) | amounts()
transfers = st.builds(
    Transfer,
    transaction_id=st.just(""),
    type=st.just(TransactionType.TRANSFER),
    from_wallet_id=st.sampled_from(USUAL_WALLET_IDS) | st.sampled_from(ANY_WALLET_IDS),
    to_wallet_id=st.sampled_from(USUAL_WALLET_IDS) | st.sampled_from(ANY_WALLET_IDS),
    amount=transfer_amounts,
    description=st.none(),
    metadata=st.none(),
    idempotency=idempotencies,
    owner_id=st.sampled_from([None, None, None, "o1", "o2"]),
)
deposits = st.builds(
    Transfer,
    transaction_id=st.just(""),
    type=st.just(TransactionType.DEPOSIT),
    from_wallet_id=st.none(),
    to_wallet_id=st.sampled_from(WALLET_IDS),
    amount=transfer_amounts,
    description=st.none(),
    metadata=st.none(),
    idempotency=idempotencies,
)
ops: st.SearchStrategy[Op] = st.one_of(
    transfers,
    transfers,
    transfers,
    deposits,
    st.builds(ChangeWalletStatus, wallet_id=st.sampled_from(ANY_WALLET_IDS), status=st.sampled_from(list(WalletStatus))),
    st.builds(
        CreateWallet, wallet_id=st.sampled_from(WALLET_IDS), owner_id=st.sampled_from(["o1", "o2"]),
        asset=st.sampled_from(["USD", "EUR", "GBP"]), metadata=st.none(), idempotency=idempotencies,
    ),
    st.builds(CreateAsset, code=st.sampled_from(["USD", "EUR", "GBP"]), scale=st.integers(0, 18)),
    st.builds(CreateToken, token_hash=st.sampled_from([b"h1", b"h2"]), prefix=st.sampled_from(["p1", "p2"]), owner_id=st.just("o1")),
    st.builds(RevokeToken, prefix=st.sampled_from(["p1", "p2"])),
    st.builds(Deliver, index=st.integers(min_value=0, max_value=20)),
    st.builds(Deliver, index=st.integers(min_value=0, max_value=20)),
)
programs: st.SearchStrategy[Program] = st.lists(
    st.tuples(st.sampled_from([0, 1, 7]), ops), min_size=8, max_size=60
)
shard_counts = st.sampled_from([1, 2, 3, 4])


def _numbered(program: Program) -> Program:
    """The setup and the program, each command stamped with a unique transaction id."""
    numbered: Program = []
    for index, (delta_us, op) in enumerate([(0, command) for command in SETUP] + program):
        if isinstance(op, Transfer):
            op = dataclasses.replace(op, transaction_id=f"tx{index}")
        numbered.append((delta_us, op))
    return numbered


def _outcome(decision: Decision) -> Outcome:
    if isinstance(decision, Rejection):
        return ("rejected", decision.reason)
    if isinstance(decision, Duplicate):
        return ("duplicate", decision.record.lsn)
    return ("accepted", tuple(decision))


class ShardedLedger:
    """The shard actors' synchronous steps, with the third step of a transfer deferred."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.directory = Directory()
        self.states = [State(directory=self.directory) for _ in range(shards)]
        self.pending: list[dict[str, int]] = [{} for _ in range(shards)]
        self.in_flight: list[tuple[int, Transferred, int]] = []  # (credit shard, event, lsn)
        self.log: list[Event] = []

    def shard(self, wallet_id: str) -> int:
        return shard_of(wallet_id, self.shards)

    def wallets(self) -> list[Wallet]:
        return [wallet for state in self.states for wallet in state.wallets.values()]

    def reserved(self, wallet_id: str) -> int:
        return self.pending[self.shard(wallet_id)].get(wallet_id, 0)

    def _append(self, event: Event) -> int:
        self.log.append(event)
        return len(self.log)

    def _release(self, shard: int, wallet_id: str, amount: int) -> None:
        remaining = self.pending[shard][wallet_id] - amount
        assert remaining >= 0
        if remaining:
            self.pending[shard][wallet_id] = remaining
        else:
            del self.pending[shard][wallet_id]

    def execute(self, command: Command, now_us: int) -> Decision:
        if isinstance(command, Transfer):
            return self._transfer(command, now_us)
        return self._command(command, now_us)

    def _transfer(self, command: Transfer, now_us: int) -> Decision:
        # Step 1, on the receiver's shard.
        credit_shard = self.shard(command.to_wallet_id)
        pending = self.pending[credit_shard].get(command.to_wallet_id, 0)
        credit = check_credit(self.states[credit_shard], command, pending=pending)
        sender_id = command.from_wallet_id
        if sender_id is None and credit.asset is not None:
            sender_id = treasury_id(credit.asset)
        debit_shard = credit_shard if sender_id is None else self.shard(sender_id)
        reserved = debit_shard != credit_shard and credit.failure is None
        if reserved:
            self.pending[credit_shard][command.to_wallet_id] = pending + command.amount
        # Step 2, on the sender's shard: the commit point.
        decision = decide_transfer(self.states[debit_shard], command, now_us, credit)
        if not isinstance(decision, list):
            if reserved:
                self._release(credit_shard, command.to_wallet_id, command.amount)
            return decision
        (event,) = decision
        assert isinstance(event, Transferred)
        lsn = self._append(event)
        apply_directory(self.directory, event, lsn)
        apply_debit(self.states[debit_shard], event, lsn)
        if debit_shard == credit_shard:
            apply_credit(self.states[credit_shard], event, lsn)
        else:
            assert reserved
            self.in_flight.append((credit_shard, event, lsn))  # step 3 comes later
        return decision

    def deliver(self, index: int) -> None:
        """Step 3 of a transfer still in flight."""
        credit_shard, event, lsn = self.in_flight.pop(index)
        self._release(credit_shard, event.to_wallet_id, event.amount)
        apply_credit(self.states[credit_shard], event, lsn)

    def deliver_all(self) -> None:
        while self.in_flight:
            self.deliver(len(self.in_flight) - 1)  # newest first: the most reordering

    def _command(self, command: Command, now_us: int) -> Decision:
        decision: Decision
        if isinstance(command, CreateWallet):
            shard = self.shard(command.wallet_id)
            decision = decide_create_wallet(self.states[shard], command, now_us)
        elif isinstance(command, ChangeWalletStatus):
            shard = self.shard(command.wallet_id)
            pending = self.pending[shard].get(command.wallet_id, 0)
            decision = decide_change_status(self.states[shard], command, now_us, pending=pending)
        elif isinstance(command, CreateAsset):
            shard = self.shard(treasury_id(command.code))
            decision = decide_create_asset(self.states[shard], command, now_us)
        elif isinstance(command, CreateToken):
            shard = 0
            decision = decide_create_token(self.states[shard], command, now_us)
        else:
            assert isinstance(command, RevokeToken)
            shard = 0
            decision = decide_revoke_token(self.states[shard], command, now_us)
        if isinstance(decision, list):
            for event in decision:
                lsn = self._append(event)
                apply_directory(self.directory, event, lsn)
                apply_wallets(self.states[shard], event, lsn)
        return decision

    def check_invariants(self) -> None:
        assert not self.in_flight
        assert not any(self.pending)
        check_invariants(self.wallets(), self.directory)
        for index, state in enumerate(self.states):
            for wallet_id in state.wallets:
                assert self.shard(wallet_id) == index, wallet_id


def run_one_state(program: Program) -> tuple[list[Outcome], State]:
    state = new_state()
    outcomes: list[Outcome] = []
    now_us = START_US
    for delta_us, op in program:
        now_us += delta_us
        if isinstance(op, Deliver):
            continue
        decision = decide(state, op, now_us)
        if isinstance(decision, list):
            for event in decision:
                apply(state, event, state.directory.lsn + 1)
        outcomes.append(_outcome(decision))
    return outcomes, state


def run_sharded(program: Program, shards: int, *, interleave: bool) -> tuple[list[Outcome], ShardedLedger]:
    """Runs ``program``; with ``interleave`` credits wait for ``Deliver`` ops, and every
    outcome and balance is checked against the serial state (one State holding the log)."""
    ledger = ShardedLedger(shards)
    serial = new_state()
    outcomes: list[Outcome] = []
    now_us = START_US
    for delta_us, op in program:
        now_us += delta_us
        if isinstance(op, Deliver):
            if interleave and ledger.in_flight:
                ledger.deliver(op.index % len(ledger.in_flight))
            continue
        expected = decide(serial, op, now_us)
        decision = ledger.execute(op, now_us)
        outcomes.append(_outcome(decision))
        if _outcome(decision) != _outcome(expected):
            _check_money_on_its_way(ledger, op, decision, expected)
        for lsn in range(serial.directory.lsn + 1, len(ledger.log) + 1):
            apply(serial, ledger.log[lsn - 1], lsn)
        if not interleave:
            ledger.deliver_all()
            ledger.check_invariants()
        _check_against_serial(ledger, serial)
    ledger.deliver_all()
    _check_against_serial(ledger, serial)
    ledger.check_invariants()
    return outcomes, ledger


def _check_money_on_its_way(ledger: ShardedLedger, op: Op, decision: Decision, expected: Decision) -> None:
    """The one allowed difference: a debit refused because credits to the sender are still in
    flight, where the serial state (which has them) gets past the funds check: it accepts, or
    (row 8 coming after row 7) refuses for the receiver's overflow instead."""
    assert isinstance(op, Transfer), (op, decision, expected)
    assert isinstance(decision, Rejection), (op, decision, expected)
    sender_id = op.from_wallet_id
    if sender_id is None:
        sender_id = treasury_id(ledger.states[ledger.shard(op.to_wallet_id)].wallets[op.to_wallet_id].asset)
    sender = ledger.states[ledger.shard(sender_id)].wallets[sender_id]
    reserved = ledger.reserved(sender_id)
    assert reserved > 0, (op, decision, expected)
    if is_treasury(sender_id):
        assert decision.reason == Reason.BALANCE_OVERFLOW, (op, decision)
        assert sender.balance - op.amount < INT64_MIN <= sender.balance + reserved - op.amount
        assert isinstance(expected, list), (op, decision, expected)
    else:
        assert decision.reason == Reason.INSUFFICIENT_FUNDS, (op, decision)
        assert sender.available < op.amount <= sender.available + reserved
        if not isinstance(expected, list):
            assert isinstance(expected, Rejection), (op, decision, expected)
            assert expected.reason == Reason.BALANCE_OVERFLOW, (op, decision, expected)


def _check_against_serial(ledger: ShardedLedger, serial: State) -> None:
    """Each wallet lives on its shard only, and its balance plus what is reserved for it
    (the credits in flight) is the serial balance."""
    assert ledger.directory.lsn == serial.directory.lsn == len(ledger.log)
    assert sum(len(state.wallets) for state in ledger.states) == len(serial.wallets)
    in_flight: dict[str, int] = {}
    for _, event, _ in ledger.in_flight:
        in_flight[event.to_wallet_id] = in_flight.get(event.to_wallet_id, 0) + event.amount
    assert {k: v for pending in ledger.pending for k, v in pending.items()} == in_flight
    for wallet_id, expected in serial.wallets.items():
        wallet = ledger.states[ledger.shard(wallet_id)].wallets[wallet_id]
        assert wallet.balance + ledger.reserved(wallet_id) == expected.balance, wallet_id
        assert wallet.status == expected.status, wallet_id
        assert wallet.owner_id == expected.owner_id, wallet_id
        assert wallet.asset == expected.asset, wallet_id
        assert wallet.held == expected.held, wallet_id


def test_wallet_ids_cover_every_shard() -> None:
    for shards in (2, 3, 4):
        assert {shard_of(wallet_id, shards) for wallet_id in WALLET_IDS} == set(range(shards))


@settings(max_examples=150, deadline=None)
@given(shards=shard_counts, program=programs)
def test_credits_applied_at_once_match_one_state(shards: int, program: Program) -> None:
    program = _numbered(program)
    expected_outcomes, one = run_one_state(program)
    outcomes, sharded = run_sharded(program, shards, interleave=False)
    assert outcomes == expected_outcomes
    assert state_digest(sharded.wallets(), sharded.directory) == digest(one)
    assert digest(replay(sharded.log)) == digest(one)
    # The wallet LSN (what a read waits for) is the same too, though the digest leaves it out.
    assert {w.id: w.lsn for w in sharded.wallets()} == {w.id: w.lsn for w in one.wallets.values()}


# alice and bob live on different shards when there are two; bob is frozen after alice's
# transfer to him committed and before its credit arrived (the case b677f8d fixed).
LATE_CREDIT: Program = [
    (1, Transfer(
        transaction_id="", type=TransactionType.TRANSFER, from_wallet_id="alice", to_wallet_id="bob",
        amount=10, description=None, metadata=None, idempotency=None,
    )),
    (1, ChangeWalletStatus(wallet_id="bob", status=WalletStatus.FROZEN)),
]


@settings(max_examples=150, deadline=None)
@given(shards=shard_counts, program=programs)
@example(shards=2, program=LATE_CREDIT)
def test_delayed_credits_agree_with_the_serial_log(shards: int, program: Program) -> None:
    """Outcomes and balances are checked step by step inside ``run_sharded``; once every
    credit is applied the state equals a replay of the log, digest and wallet LSNs alike."""
    _outcomes, sharded = run_sharded(_numbered(program), shards, interleave=True)
    replayed = replay(sharded.log)
    assert state_digest(sharded.wallets(), sharded.directory) == digest(replayed)
    assert {w.id: w.lsn for w in sharded.wallets()} == {w.id: w.lsn for w in replayed.wallets.values()}


def test_delayed_credit_does_not_move_the_update_time_backwards() -> None:
    assert shard_of("alice", 2) != shard_of("bob", 2)
    ledger = ShardedLedger(2)
    now_us = START_US
    program = _numbered(LATE_CREDIT)
    for index, (_, command) in enumerate(program):
        assert not isinstance(command, Deliver)
        if index == len(SETUP):
            ledger.deliver_all()  # only the transfer below stays in flight
        now_us += 1
        decision = ledger.execute(command, now_us)
        assert isinstance(decision, list), decision
        assert decision
    # The transfer committed at t and bob was frozen at t + 1; the credit arrives now.
    ((_, event, _),) = ledger.in_flight
    frozen_at_us = ledger.log[-1].at_us
    assert event.at_us < frozen_at_us
    ledger.deliver_all()
    bob = ledger.states[ledger.shard("bob")].wallets["bob"]
    replayed = replay(ledger.log).wallets["bob"]
    assert replayed.updated_at_us == frozen_at_us
    assert bob.updated_at_us == replayed.updated_at_us
