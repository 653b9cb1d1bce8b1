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
COVERAGE_SEEDS = [*CI_SEEDS[:5], 28]


def test_the_faults_are_exercised_across_the_ci_seeds() -> None:
    totals = {"crashes": 0, "storage_failures": 0, "refused_and_repaired": 0, "snapshots": 0,
              "batches": 0, "atomic_failed": 0}
    for seed in COVERAGE_SEEDS:
        stats = Simulation(seed, steps=STEPS, faults=Faults(crash=0.02, sync_error=0.01, disk_full=0.01, flip=0.8)).run()
        for name in totals:
            totals[name] += getattr(stats, name)
    assert all(count > 0 for count in totals.values()), totals


def test_a_seed_replays_exactly() -> None:
    first = Simulation(7, steps=600).run()
    second = Simulation(7, steps=600).run()
    assert first == second
