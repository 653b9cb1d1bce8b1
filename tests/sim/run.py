"""``make sim``: the deterministic simulations outside pytest: the ledger on a faulty disk
(``sim.py``), cluster mode over a faulty stream (``cluster_sim.py``) and several groups with
transfers between them (``groups_sim.py``), seeds taking turns.

    SIM_SEED=42 make sim                  # replay one seed of each exactly, print what it did
    SIM_SEED=42 SIM_KIND=cluster make sim # only the cluster simulation (SIM_KIND=disk or groups: only that one)
    make sim SECONDS=600                  # random seeds until the time is up; a failure prints its seed
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from typing import Any

from tests.sim.cluster_sim import ClusterSimulation
from tests.sim.groups_sim import GroupsSimulation
from tests.sim.sim import Faults, Simulation, SimulationFailed

KINDS = ("disk", "cluster", "groups")
TOTALS = {
    "disk": ("crashes", "refused_and_repaired", "storage_failures", "snapshots", "acknowledged"),
    "cluster": ("takeovers", "owner_crashes", "fenced_after_pause", "lost_acks", "unavailable", "acknowledged"),
    "groups": ("takeovers", "fenced", "stalls_failed", "across_acknowledged", "owed_credited",
               "reservations_resolved", "aborted", "atomic_groups", "parts_ended"),
}


def simulate(kind: str, seed: int, steps: int) -> Any:
    if kind == "cluster":
        return ClusterSimulation(seed, steps=steps).run()
    if kind == "groups":
        return GroupsSimulation(seed, steps=steps).run()
    return Simulation(seed, steps=steps, faults=Faults(crash=0.02, sync_error=0.01, disk_full=0.01, flip=0.8)).run()


def main() -> int:
    logging.disable(logging.CRITICAL)  # the simulated faults log errors by design
    steps = int(os.environ.get("SIM_STEPS", "2000"))
    kinds = [os.environ["SIM_KIND"]] if os.environ.get("SIM_KIND") else list(KINDS)
    assert all(kind in KINDS for kind in kinds), f"SIM_KIND is one of {KINDS}"
    if os.environ.get("SIM_SEED"):
        seed = int(os.environ["SIM_SEED"])
        for kind in kinds:
            print(f"{kind} seed {seed}: {simulate(kind, seed, steps)}")
        return 0
    seconds = float(os.environ.get("SECONDS_BUDGET", "60"))
    deadline = time.monotonic() + seconds
    runs = {kind: 0 for kind in kinds}
    totals: dict[str, int] = {}
    while time.monotonic() < deadline:
        kind = kinds[sum(runs.values()) % len(kinds)]
        seed = random.SystemRandom().randrange(1, 2**31)
        try:
            stats = simulate(kind, seed, steps)
        except SimulationFailed as error:
            print(f"FAILED: {kind}: {error}")
            return 1
        except Exception as error:
            print(f"FAILED: {kind} seed {seed}: {type(error).__name__}: {error} "
                  f"(replay with SIM_SEED={seed} SIM_KIND={kind} make sim)")
            raise
        runs[kind] += 1
        for name in TOTALS[kind]:
            totals[f"{kind}.{name}"] = totals.get(f"{kind}.{name}", 0) + getattr(stats, name)
    print(f"{runs} seeds passed in {seconds:.0f} s: {totals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
