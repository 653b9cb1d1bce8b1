"""Transfers between two ledger groups under random interleavings (ADR 0013's two-phase commit):
workers that stop after any step, groups that are restarted from their logs at any moment, owners
that finish what was left (``server._crossing``), closes of receivers in the middle, transfers
inside a group beside them. The oracle, against the clients' record of what was committed:
once the owners have finished, every committed transfer was credited exactly once (alone, or in
an atomic batch with others of its sending group and one inside it), and every committed refund
of one (never more than its amount in all), nothing else
moved, no reservation and nothing owed is left, every group replays to the state it had live,
and the two groups together are zero-sum (wallets, treasury parts and transit accounts)."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from ledger import (
    Aborted,
    ChangeWalletStatus,
    Committed,
    CreateAsset,
    CreateWallet,
    Ledger,
    Reason,
    Refund,
    Rejection,
    ReserveCredit,
    TransactionStatus,
    TransactionType,
    WalletStatus,
    check_state,
    digest_state,
    recover,
)
from ledger.testing import hold, transfer
from server._crossing import Crossing
from server._groups import group_of
from server._port import LocalPort
from tests._budget import scaled

START = 1_000
# Three wallets in each group, by the group table (the owners' ``Crossing`` routes by it).
WALLETS = {group: [f"w{n}" for n in range(40) if group_of(f"w{n}", 2) == group][:3] for group in (0, 1)}
GROUP_OF = {wallet_id: group for group, ids in WALLETS.items() for wallet_id in ids}


@dataclass
class Group:
    path: Path
    number: int
    ledger: Ledger | None = None
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


class Harness:
    def __init__(self, tmp_path: Path, nursery: trio.Nursery, rng: random.Random) -> None:
        self.groups = [Group(tmp_path / f"g{number}", number) for number in (0, 1)]
        self.nursery = nursery
        self.rng = rng
        self.expected = {wallet_id: START for wallet_id in GROUP_OF}
        self.now = [0.0]
        self.crossings: list[Crossing] = []

    async def start(self, group: Group) -> None:
        ledger = Ledger(await trio.to_thread.run_sync(recover, group.path), group.path, group=group.number,
                        groups=2, shards=2)
        group.ledger = ledger
        group.done = trio.Event()
        await self.nursery.start(self._run, ledger, group.done)

    @staticmethod
    async def _run(ledger: Ledger, done: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            await ledger.run(task_status=task_status)
        finally:
            done.set()

    async def restart(self, group: Group) -> None:
        """Stops the group (everything it acknowledged is in its log) and starts it again from
        its log and snapshots: what lived only in memory is gone, as after a crash."""
        assert group.ledger is not None
        live = group.ledger.digest()
        await group.ledger.stop()
        await group.done.wait()
        recovered = await trio.to_thread.run_sync(recover, group.path)
        try:
            check_state(recovered.state)
            assert digest_state(recovered.state) == live
        finally:
            recovered.close()
        await self.start(group)

    def port(self, wallet_id: str) -> LocalPort:
        ledger = self.groups[GROUP_OF[wallet_id]].ledger
        assert ledger is not None
        return LocalPort(ledger)

    def crossing(self, group: Group) -> Crossing:
        assert group.ledger is not None
        other = self.groups[1 - group.number].ledger
        assert other is not None
        crossing = Crossing(group.ledger, {1 - group.number: LocalPort(other)}, owed_after_s=0,  # type: ignore[dict-item]
                            reserved_after_s=0, clock=lambda: self.now[0])
        self.crossings.append(crossing)
        return crossing


async def _setup(harness: Harness) -> None:
    for group in harness.groups:
        await harness.start(group)
        assert group.ledger is not None
        await group.ledger.create_asset(CreateAsset(code="USD", scale=2))
        for number, wallet_id in enumerate(WALLETS[group.number]):
            await group.ledger.create_wallet(CreateWallet(wallet_id=wallet_id, owner_id="o", asset="USD",
                                                          metadata=None, idempotency=None))
            deposit = transfer(-1 - number, None, wallet_id, START)
            assert isinstance(await group.ledger.transfer(deposit), Committed)


@pytest.mark.parametrize("seed", range(scaled(6, 40)))  # ``make test-long``: 40 seeds
async def test_random_transfers_between_groups_with_restarts_conserve_money(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    async with trio.open_nursery() as nursery:
        harness = Harness(tmp_path, nursery, rng)
        await _setup(harness)
        prepared: list[tuple[str, str, str, int, object]] = []  # reserved, not yet committed
        committed: list[tuple[str, str, str, int]] = []  # committed, maybe not credited
        batches = [0, 0]  # atomic batches committed whole, and refused or aborted whole
        refunded: dict[str, int] = {}  # what refunds of a committed transfer sent back
        holds: dict[str, tuple[str, str, int]] = {}  # holds between groups made: sender, receiver, amount
        resolved: set[str] = set()  # of those, captured or voided
        captures = 0
        for step in range(200):
            roll = rng.random()
            if roll < 0.40:
                # A worker's transfer between groups; it may stop after any of its steps.
                sender = rng.choice(list(GROUP_OF))
                receiver = rng.choice([w for w in GROUP_OF if GROUP_OF[w] != GROUP_OF[sender]])
                amount, tx = rng.randint(1, 400), f"t{seed}-{step}"
                reservations = [ReserveCredit(
                    transaction_id=f"{tx}-{n}", to_wallet_id=receiver, amount=amount, from_wallet_id=sender,
                    from_group=GROUP_OF[sender], description=None, metadata=None) for n in range(rng.randint(1, 3))]
                port = harness.port(receiver)
                verdicts = ([await port.reserve_credit(reservations[0])] if len(reservations) == 1
                            else await port.reserve_credits(reservations))  # a batch's items, one call
                for reservation, verdict in zip(reservations, verdicts, strict=True):
                    if verdict.failure is None:
                        prepared.append((reservation.transaction_id, sender, receiver, amount, verdict))
            elif roll < 0.60 and prepared and rng.random() < 0.35:
                # An atomic batch: prepared items of one sending group and one inside it, at a
                # random place, committed whole or not at all; step 3 maybe by the worker.
                group = GROUP_OF[rng.choice(prepared)[1]]
                chosen = [item for item in prepared if GROUP_OF[item[1]] == group][-rng.randint(1, 4):]  # the newest
                prepared = [item for item in prepared if item not in chosen]
                commands = [dataclasses.replace(transfer(0, sender, receiver, amount), transaction_id=tx)
                            for tx, sender, receiver, amount, _ in chosen]
                credits = [verdict for *_, verdict in chosen]
                inside_sender, inside_receiver = rng.sample(WALLETS[group], 2)
                place = rng.randint(0, len(commands))
                commands.insert(place, transfer(20_000 + step, inside_sender, inside_receiver, rng.randint(1, 50)))
                credits.insert(place, None)
                result = await harness.port(inside_sender).transfer_batch_across(commands, credits)  # type: ignore[arg-type]
                whole = isinstance(result, list) and all(isinstance(outcome, Committed) for outcome in result)
                assert whole or not isinstance(result, list) or not any(
                    isinstance(outcome, Committed) for outcome in result), result
                batches[0 if whole else 1] += 1
                if whole:
                    for command in commands:
                        harness.expected[command.from_wallet_id or ""] -= command.amount
                        harness.expected[command.to_wallet_id] += command.amount
                    committed.extend((tx, sender, receiver, amount) for tx, sender, receiver, amount, _ in chosen)
                for tx, _, receiver, _, _ in chosen:
                    if rng.random() < 0.6:
                        await harness.port(receiver).settle_reservation(tx, receiver, whole)
            elif roll < 0.60 and prepared:
                # A worker's step 2 (and maybe 3) for one of them, in any order, or for several
                # of one sending group at once (a non-atomic batch's items: one call per step).
                first = prepared.pop(rng.randrange(len(prepared)))
                chosen = [first]
                if rng.random() < 0.5:
                    chosen += [item for item in prepared if GROUP_OF[item[1]] == GROUP_OF[first[1]]][:rng.randint(0, 3)]
                    prepared = [item for item in prepared if item not in chosen]
                commands = [dataclasses.replace(transfer(0, sender, receiver, amount), transaction_id=tx)
                            for tx, sender, receiver, amount, _ in chosen]
                port = harness.port(first[1])
                if len(chosen) == 1:
                    outcomes = [await port.transfer_across(commands[0], first[4])]  # type: ignore[arg-type]
                else:
                    outcomes = await port.transfers_across(commands, [item[4] for item in chosen])  # type: ignore[misc]
                settle = []
                for (tx, sender, receiver, amount, _), outcome in zip(chosen, outcomes, strict=True):
                    if isinstance(outcome, Committed):
                        committed.append((tx, sender, receiver, amount))
                        harness.expected[sender] -= amount
                        harness.expected[receiver] += amount
                    if rng.random() < 0.6:  # step 3 by the worker; else the owners' job
                        settle.append((tx, receiver, isinstance(outcome, Committed)))
                for group in (0, 1):
                    mine = [item for item in settle if GROUP_OF[item[1]] == group]
                    if len(mine) == 1:
                        await harness.port(mine[0][1]).settle_reservation(*mine[0])
                    elif mine:
                        await harness.port(mine[0][1]).settle_reservations(mine)
            elif roll < 0.69:
                # A hold between groups, or an attempt to capture or void one of them (maybe one
                # already resolved): each capture attempt under an id of its own, committed by the
                # worker or abandoned after its reservation, credited by the worker or the owners.
                action = rng.random()
                if action < 0.35 or not holds:
                    sender = rng.choice(list(GROUP_OF))
                    receiver = rng.choice([w for w in GROUP_OF if GROUP_OF[w] != GROUP_OF[sender]])
                    amount = rng.randint(1, 300)
                    command = dataclasses.replace(hold(0, sender, receiver, amount), transaction_id=f"h{seed}-{step}")
                    verdict = await harness.port(receiver).credit_check(receiver, amount)
                    if isinstance(await harness.port(sender).transfer_across(command, verdict), Committed):
                        holds[command.transaction_id] = (sender, receiver, amount)
                elif action < 0.85:
                    hold_id = rng.choice(list(holds))
                    sender, receiver, amount = holds[hold_id]
                    attempt, take = f"c{seed}-{step}", rng.randint(1, amount)
                    verdict = await harness.port(receiver).reserve_credit(ReserveCredit(
                        transaction_id=attempt, to_wallet_id=receiver, amount=take, from_wallet_id=sender,
                        from_group=GROUP_OF[sender], description=None, metadata=None, capture_of=hold_id))
                    if verdict.failure is None and rng.random() < 0.85:
                        outcome = await harness.port(sender).capture_across(
                            hold_id, attempt, take, None, None, verdict)
                        if isinstance(outcome, Committed):
                            assert hold_id not in resolved, hold_id  # a hold is captured or voided once
                            resolved.add(hold_id)
                            harness.expected[sender] -= take
                            harness.expected[receiver] += take
                            captures += 1
                        if rng.random() < 0.6:
                            await harness.port(receiver).settle_reservation(
                                attempt, receiver, isinstance(outcome, Committed))
                else:
                    hold_id = rng.choice(list(holds))
                    voided = await harness.port(holds[hold_id][0]).resolve_hold(hold_id, False, None, None, None)
                    if isinstance(voided, Committed):
                        assert hold_id not in resolved, hold_id
                        resolved.add(hold_id)
            elif roll < 0.73 and committed:
                # A refund of a committed transfer between groups (of a random amount, maybe more
                # than is left): reserved at the original sender's group, decided by the original
                # receiver's (which keeps the cap), credited by the worker or left to the owners;
                # or the worker stops after the reservation.
                tx, sender, receiver, amount = rng.choice(committed)
                ask, refund_id = rng.randint(1, amount), f"rf{seed}-{step}"
                verdict = await harness.port(sender).reserve_credit(ReserveCredit(
                    transaction_id=refund_id, to_wallet_id=sender, amount=ask, from_wallet_id=receiver,
                    from_group=GROUP_OF[receiver], description=None, metadata=None, refund_of=tx))
                if verdict.failure is None and rng.random() < 0.85:
                    outcome = await harness.port(receiver).refund_across(Refund(
                        transaction_id=refund_id, refund_of=tx, from_wallet_id=receiver, to_wallet_id=sender,
                        amount=ask, original_type=TransactionType.TRANSFER, original_status=TransactionStatus.POSTED,
                        original_amount=amount, description=None, metadata=None, idempotency=None), verdict)
                    if isinstance(outcome, Committed):
                        refunded[tx] = refunded.get(tx, 0) + ask
                        assert refunded[tx] <= amount, (tx, refunded[tx], amount)
                        harness.expected[receiver] -= ask
                        harness.expected[sender] += ask
                    else:
                        assert isinstance(outcome, Rejection | Aborted), outcome
                        assert not isinstance(outcome, Rejection) or outcome.reason in (
                            Reason.REFUND_EXCEEDS_REMAINING, Reason.INSUFFICIENT_FUNDS), outcome
                    if rng.random() < 0.6:
                        await harness.port(sender).settle_reservation(refund_id, sender, isinstance(outcome, Committed))
            elif roll < 0.77:
                # A transfer inside one group.
                group = rng.choice([0, 1])
                sender, receiver = rng.sample(WALLETS[group], 2)
                amount = rng.randint(1, 300)
                outcome = await harness.port(sender).transfer(transfer(10_000 + step, sender, receiver, amount))
                if isinstance(outcome, Committed):
                    harness.expected[sender] -= amount
                    harness.expected[receiver] += amount
            elif roll < 0.81:
                # An attempt to close a wallet: refused while it has money or reservations.
                wallet_id = rng.choice(list(GROUP_OF))
                closing = await harness.port(wallet_id).change_status(
                    ChangeWalletStatus(wallet_id=wallet_id, status=WalletStatus.CLOSED))
                assert isinstance(closing, Rejection), (wallet_id, closing)
            elif roll < 0.9:
                await harness.restart(rng.choice(harness.groups))
            else:
                harness.now[0] += 1
                await harness.crossing(rng.choice(harness.groups)).step()
        # The workers are gone: the owners finish everything.
        for _ in range(3):
            for group in harness.groups:
                await harness.crossing(group).step()
        ledgers = [group.ledger for group in harness.groups]
        assert all(ledger is not None for ledger in ledgers)
        balances: dict[str, int] = {}
        transit = 0
        for ledger in ledgers:
            assert ledger is not None
            assert ledger.owed() == {} and ledger.all_reservations() == []
            ledger.check_invariants()
            balances.update({wallet.id + f"@{ledger.directory.group}": wallet.balance
                             for wallet in ledger.all_wallets()})
            transit += ledger.directory.transit.get("USD", 0)
        assert transit == 0
        assert sum(balances.values()) == 0
        for wallet_id, balance in harness.expected.items():
            assert balances[f"{wallet_id}@{GROUP_OF[wallet_id]}"] == balance, wallet_id
        assert committed, "the run committed no transfer between groups"
        assert batches[0] > 0, "the run committed no atomic batch between groups"
        assert refunded, "the run refunded nothing between groups"
        assert captures, "the run captured no hold between groups"
        # The owners had work of both kinds: credits the workers left, and reservations whose
        # commit never came (aborted for good in the sender's group).
        assert sum(crossing.credited for crossing in harness.crossings) > 0
        assert sum(crossing.resolved for crossing in harness.crossings) > 0
        assert any(ledger.directory.aborted for ledger in ledgers if ledger is not None)
        for group in harness.groups:
            await harness.restart(group)  # and each replays to the state it had live
        for ledger in [group.ledger for group in harness.groups]:
            assert ledger is not None
            await ledger.stop()
