"""The deterministic simulation, bounded for CI: a fixed set of seeds. ``make sim`` runs random
seeds for longer; ``SIM_SEED=n make sim`` replays one."""

from __future__ import annotations

import os

import pytest

from tests.sim.sim import Faults, Simulation

CI_SEEDS = list(range(1, 13))
STEPS = int(os.environ.get("SIM_STEPS", "1500"))


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_simulation_seed(seed: int) -> None:
    stats = Simulation(seed, steps=STEPS).run()
    assert stats.acknowledged > 0
    assert stats.crashes >= 1


# A refusal to start (damage followed by valid records in the unsynced tail) needs a bit flip in
# the middle of the torn bytes: about one seed in sixteen with these faults. 28 is one (found by
# scanning seeds 1-80 after batches joined the workload); the others cover the rest.


def test_the_faults_are_exercised_across_the_ci_seeds() -> None:
    # A refusal needs a failed sync that left several unsynced records, one of them flipped:
    # rare, so the rates are raised here and the seeds run until every fault was seen.
    totals = {"crashes": 0, "storage_failures": 0, "refused_and_repaired": 0, "snapshots": 0,
              "batches": 0, "atomic_failed": 0}
    faults = Faults(crash=0.02, sync_error=0.05, disk_full=0.01, flip=0.8, partial_write=0.2)
    for seed in CI_SEEDS:
        stats = Simulation(seed, steps=STEPS, faults=faults).run()
        for name in totals:
            totals[name] += getattr(stats, name)
        if all(count > 0 for count in totals.values()):
            break
    assert all(count > 0 for count in totals.values()), totals


def test_holds_withdrawals_refunds_and_limits_are_exercised() -> None:
    """The workload reaches every hold, payout and refund record kind, records refusals (final
    outcomes) and wallet limits, through crashes. Since refused keys stay refused, fewer
    withdrawals get far enough to be refused by the bank: the seeds run until every kind was seen."""
    wanted = ("HoldCreated", "HoldCaptured", "HoldVoided.voided", "HoldVoided.expired", "HoldVoided.refused",
              "WithdrawalUpdated", "RequestsRefused", "WalletUpdated", "Refunded")
    kinds: dict[str, int] = {}
    limited = 0
    for seed in CI_SEEDS:
        stats = Simulation(seed, steps=STEPS).run()
        limited += stats.limited_debits
        for kind, count in stats.kinds.items():
            kinds[kind] = kinds.get(kind, 0) + count
        if limited > 0 and all(kinds.get(kind, 0) > 0 for kind in wanted):
            break
    for kind in wanted:
        assert kinds.get(kind, 0) > 0, (kind, kinds)
    assert limited > 0  # the limits oracle saw debits of wallets with limits


def test_a_seed_replays_exactly() -> None:
    first = Simulation(7, steps=600).run()
    second = Simulation(7, steps=600).run()
    assert first == second
