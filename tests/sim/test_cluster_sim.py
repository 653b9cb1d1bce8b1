"""The deterministic simulation of cluster mode (``tests/sim/cluster_sim.py``), bounded for CI:
a fixed set of seeds. ``make sim`` runs random seeds of it too; ``SIM_SEED=n SIM_KIND=cluster
make sim`` replays one."""

from __future__ import annotations

import os

import pytest

from tests.sim.cluster_sim import ClusterFaults, ClusterSimulation

CI_SEEDS = list(range(1, 9))
STEPS = int(os.environ.get("SIM_CLUSTER_STEPS", "1500"))


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_cluster_simulation_seed(seed: int) -> None:
    stats = ClusterSimulation(seed, steps=STEPS).run()
    assert stats.acknowledged > 0
    assert stats.takeovers >= 1


def test_the_cluster_faults_are_exercised_across_the_ci_seeds() -> None:
    """Every fault happens (crash, a pause past a takeover then the fence, a lost ack, leader
    loss, a standby restart), at raised rates, on the CI seeds until all were seen."""
    totals = {"owner_crashes": 0, "fenced_after_pause": 0, "lost_acks": 0, "unavailable": 0,
              "standby_restarts": 0, "exits_unavailable": 0, "barriers": 0}
    faults = ClusterFaults(crash=0.004, pause=0.006, lost_ack=0.006, unavailable=0.003, standby_restart=0.004)
    for seed in CI_SEEDS:
        stats = ClusterSimulation(seed, steps=800, faults=faults).run()
        for name in totals:
            totals[name] += getattr(stats, name)
        if all(count > 0 for count in totals.values()):
            break
    assert all(count > 0 for count in totals.values()), totals


def test_a_cluster_seed_replays_exactly() -> None:
    first = ClusterSimulation(5, steps=500).run()
    second = ClusterSimulation(5, steps=500).run()
    assert first == second
