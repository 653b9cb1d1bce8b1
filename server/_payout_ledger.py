"""The ledger's side of payouts (``PayoutLedger``): each payout step becomes a ledger command,
durable before the call returns.

A step the ledger refuses because the withdrawal already moved on (a second worker, or a replay
after a crash: ``WITHDRAWAL_NOT_PAYABLE`` / ``NOT_FOUND``) is not an error: the durable state is
the truth and the worker drops the order. Any other refusal of ``paid`` (the treasury would
leave int64) raises ``PayoutRefused``, so the worker keeps the order and tries the ledger again
later: the bank has paid, the ledger must not forget it.
"""

from __future__ import annotations

import logging

from ledger import (
    AdvanceWithdrawal,
    Ledger,
    PayoutStep,
    Reason,
    Rejection,
    WithdrawalStatus,
    WithdrawalView,
)
from server._payouts import PayoutOrder

log = logging.getLogger("payouts")

_MOVED_ON = {Reason.WITHDRAWAL_NOT_PAYABLE, Reason.WITHDRAWAL_NOT_FOUND}


class PayoutRefused(Exception):
    """The ledger refused to record a payout step for a reason that will not fix itself."""


def order_of(view: WithdrawalView) -> PayoutOrder:
    return PayoutOrder(
        withdrawal_id=view.id, wallet_id=view.wallet_id, asset=view.asset, amount=view.amount,
        destination=view.destination, attempts=view.attempts, next_attempt_at_us=view.next_attempt_at_us,
    )


class LedgerPayouts:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def payable(self) -> list[PayoutOrder]:
        views = await self._ledger.withdrawals(
            statuses=frozenset({WithdrawalStatus.PENDING, WithdrawalStatus.PROCESSING})
        )
        return [order_of(view) for view in views]

    async def begin_attempt(self, withdrawal_id: str) -> PayoutOrder | None:
        decision = await self._ledger.advance_withdrawal(
            AdvanceWithdrawal(withdrawal_id=withdrawal_id, step=PayoutStep.BEGIN)
        )
        if isinstance(decision, Rejection):
            return None
        view = await self._ledger.withdrawal(withdrawal_id)
        assert view is not None and view.status == WithdrawalStatus.PROCESSING
        return order_of(view)

    async def paid(self, withdrawal_id: str, bank_reference: str | None) -> None:
        decision = await self._ledger.complete_withdrawal(withdrawal_id, bank_reference)
        self._check("paid", withdrawal_id, decision)

    async def refused(self, withdrawal_id: str, reason: str) -> None:
        await self._step(withdrawal_id, PayoutStep.REFUSED, reason)

    async def transient(self, withdrawal_id: str, error: str, retry_at_us: int) -> None:
        await self._step(withdrawal_id, PayoutStep.TRANSIENT, error, retry_at_us)

    async def dead(self, withdrawal_id: str, error: str) -> None:
        await self._step(withdrawal_id, PayoutStep.DEAD, error)

    async def _step(self, withdrawal_id: str, step: PayoutStep, detail: str, retry_at_us: int = 0) -> None:
        decision = await self._ledger.advance_withdrawal(
            AdvanceWithdrawal(withdrawal_id=withdrawal_id, step=step, detail=detail, retry_at_us=retry_at_us)
        )
        self._check(step.name.lower(), withdrawal_id, decision)

    def _check(self, what: str, withdrawal_id: str, decision: object) -> None:
        if not isinstance(decision, Rejection):
            return
        if decision.reason in _MOVED_ON:
            log.info("payout %s of %s not recorded: %s", what, withdrawal_id, decision.detail)
            return
        raise PayoutRefused(f"{what} of {withdrawal_id}: {decision.detail}")
