"""The payout workers over the real ledger (``LedgerPayouts``: shard actors, WAL, router) at a
graceful stop, in the order ``server._serve`` stops them: the payouts' scope is cancelled, then
``Ledger.stop``, then the log finishes its last group commit.

A worker whose ledger call is waiting (shielded) for the log when the stop begins is not stopped
by the cancellation: it wakes after the actors have stopped and, with no checkpoint in between,
makes its next ledger call (``begin_attempt`` is a command, then a query). That call must be
refused at once; queued to a stopped actor it would wait forever and the server would never
exit (the hang of ``test_sigterm_with_pending_holds_and_withdrawals_exits_0_and_snapshots_them``).

The log's group commit is held on a gate, so the interleaving is exact on every backend. Each run
is in a daemon thread joined with a time limit: a hang fails the test instead of blocking it."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from ledger import (
    Committed,
    CreateAsset,
    CreateWallet,
    Ledger,
    RequestWithdrawal,
    TransactionType,
    Transfer,
    WithdrawalStatus,
    recover,
)
from server._payout_ledger import LedgerPayouts
from server._payouts import BankResult, PayoutOrder, Payouts
from server._serve import backend_of

RUN_LIMIT_S = 30.0


class OutageBank:
    """Every payment fails for now (the e2e test's ``--bank-failure-rate 1``)."""

    def __init__(self) -> None:
        self.calls = 0

    async def pay(self, order: PayoutOrder) -> BankResult:
        self.calls += 1
        await anyio.sleep(0)
        return BankResult(outcome="transient", detail="503 unavailable: outage")


class GatedLog:
    """Holds the log's group commits (in the writer's worker thread) until ``open``."""

    def __init__(self, ledger: Ledger) -> None:
        self._write = ledger.wal._write_batch
        self._open = threading.Event()
        ledger.wal._write_batch = self._held  # type: ignore[method-assign]

    def _held(self, batch: Any) -> None:
        self._open.wait(RUN_LIMIT_S)
        self._write(batch)

    def open(self) -> None:
        self._open.set()


async def _funded_withdrawal(ledger: Ledger) -> None:
    assert await ledger.create_asset(CreateAsset(code="USD", scale=2))
    created = await ledger.create_wallet(
        CreateWallet(wallet_id="w", owner_id="o", asset="USD", metadata=None, idempotency=None))
    assert isinstance(created, list) and created
    deposit = Transfer(transaction_id="d", type=TransactionType.DEPOSIT, from_wallet_id=None, to_wallet_id="w",
                       amount=100, description=None, metadata=None, idempotency=None)
    assert isinstance(await ledger.transfer(deposit), Committed)
    requested = await ledger.request_withdrawal(RequestWithdrawal(
        withdrawal_id="wd", wallet_id="w", amount=40, destination={"account": "a"}, owner_id=None,
        idempotency=None))
    assert isinstance(requested, Committed)


async def _stop_during_an_attempt(path: Path) -> dict[str, Any]:
    ledger = Ledger(await anyio.to_thread.run_sync(recover, path), path, shards=4)
    bank = OutageBank()
    async with anyio.create_task_group() as group:
        await group.start(ledger.run)
        await _funded_withdrawal(ledger)
        before = ledger.wal.last_lsn
        gate = GatedLog(ledger)
        payouts = Payouts(LedgerPayouts(ledger), bank, workers=1, max_attempts=1_000_000,
                          rng=random.Random(3))
        scope = anyio.CancelScope()
        payouts_done = anyio.Event()

        async def run_payouts() -> None:
            try:
                with scope:
                    await payouts.run()
            finally:
                payouts_done.set()

        group.start_soon(run_payouts)
        # The worker's begin_attempt is appended and decided; its reply waits for the log.
        while ledger.wal.last_lsn == before:
            await anyio.sleep(0.001)
        assert bank.calls == 0
        scope.cancel()
        await ledger.stop()
        gate.open()
        await payouts_done.wait()
    return {"bank_calls": bank.calls, "status": _status(ledger)}


def _status(ledger: Ledger) -> WithdrawalStatus:
    (withdrawal,) = ledger.all_withdrawals()
    return withdrawal.status


@pytest.mark.parametrize("loop", ["trio", "asyncio", "uvloop"])
def test_a_stop_during_a_payout_attempt_ends_and_leaves_it_processing(tmp_path: Path, loop: str) -> None:
    backend, options = backend_of(loop)
    outcome: list[Any] = []

    def main() -> None:
        try:
            outcome.append(anyio.run(_stop_during_an_attempt, tmp_path, backend=backend, backend_options=options))
        except BaseException as error:  # reported by the test's thread below
            outcome.append(error)

    runner = threading.Thread(target=main, name="stop-during-attempt", daemon=True)
    runner.start()
    runner.join(RUN_LIMIT_S)
    assert not runner.is_alive(), "the stop hung: a ledger call made after Ledger.stop() was never answered"
    (result,) = outcome
    if isinstance(result, BaseException):
        raise result
    # The attempt was counted before the stop and the bank never called: the next start sends it
    # again under the same key.
    assert result == {"bank_calls": 0, "status": WithdrawalStatus.PROCESSING}
