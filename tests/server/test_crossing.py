"""What an owner finishes of the transfers between groups (``server._crossing``): a credit is
asked of the receiver's group only for a transfer whose commit is durable. A transfer is owed
from the moment its shard decided it; with the log stalled (a stream leader being elected), an
owner that asked for the credit then and died before its record was stored would have credited
money its group never debited (found by ``tests/sim/groups_sim.py``)."""

from __future__ import annotations

import threading
from pathlib import Path

import trio

from ledger import Committed, CreditCheck, Ledger, recover
from ledger.testing import setup, transfer
from server._crossing import Crossing
from server._groups import group_of


class Gate:
    """A ``replicate`` hook that holds every group commit while closed (the stream's ack in
    flight)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()

    def replicate(self, first_lsn: int, last_lsn: int, data: bytes) -> None:
        assert self.open.wait(30), "the gate stayed closed"


class Receiver:
    """The receiving group's port: records the credits asked of it, and fails when one is
    asked while the sender's commit is held (rather than waiting: ``Crossing.step`` would then
    wait for the held log, shielded)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.credits: list[tuple[str, str, bool]] = []

    async def settle_reservation(self, transaction_id: str, wallet_id: str, credit: bool) -> bool:
        assert self.gate.open.is_set(), f"asked to credit {transaction_id}, whose commit is not durable"
        self.credits.append((transaction_id, wallet_id, credit))
        return True


async def test_a_credit_is_asked_only_once_the_commit_is_durable(tmp_path: Path) -> None:
    sender = next(f"s{n}" for n in range(100) if group_of(f"s{n}", 2) == 0)
    receiver = next(f"r{n}" for n in range(100) if group_of(f"r{n}", 2) == 1)
    gate = Gate()
    ledger = Ledger(recover(tmp_path), tmp_path, group=0, groups=2, shards=2, replicate=gate.replicate)
    port = Receiver(gate)
    now = [0.0]
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        crossing = Crossing(ledger, {1: port}, owed_after_s=0, clock=lambda: now[0])  # type: ignore[dict-item]
        await setup(ledger, [sender], 1_000)
        outcome: list[object] = []

        async def commit() -> None:
            outcome.append(await ledger.transfer_across(transfer(1, sender, receiver, 300),
                                                        CreditCheck(asset="USD", failure=None)))

        gate.open.clear()
        nursery.start_soon(commit)
        with trio.fail_after(10):
            while "tx1" not in ledger.owed():
                await trio.sleep(0.01)
        # Decided and owed, its record not durable: nothing is asked, however long it waits.
        try:
            for _ in range(3):
                now[0] += 10
                await crossing.step()
            assert port.credits == [] and not outcome
        finally:
            gate.open.set()
        with trio.fail_after(10):
            while not outcome:
                await trio.sleep(0.01)
        assert isinstance(outcome[0], Committed)
        now[0] += 10
        await crossing.step()
        assert port.credits == [("tx1", receiver, True)]
        assert ledger.owed() == {} and crossing.credited == 1
        await ledger.stop()
