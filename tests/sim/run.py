"""``make sim``: the deterministic simulation outside pytest.

    SIM_SEED=42 make sim          # replay one seed exactly, print what it did
    make sim SECONDS=600          # random seeds until the time is up; a failure prints its seed
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time

from tests.sim.sim import Faults, Simulation, SimulationFailed


def main() -> int:
    logging.disable(logging.ERROR)  # the simulated faults log errors by design
    steps = int(os.environ.get("SIM_STEPS", "2000"))
    heavy = Faults(crash=0.02, sync_error=0.01, disk_full=0.01, flip=0.8)
    if os.environ.get("SIM_SEED"):
        seed = int(os.environ["SIM_SEED"])
        stats = Simulation(seed, steps=steps, faults=heavy).run()
        print(f"seed {seed}: {stats}")
        return 0
    seconds = float(os.environ.get("SECONDS_BUDGET", "60"))
    deadline = time.monotonic() + seconds
    runs = 0
    totals: dict[str, int] = {}
    while time.monotonic() < deadline:
        seed = random.SystemRandom().randrange(1, 2**31)
        try:
            stats = Simulation(seed, steps=steps, faults=heavy).run()
        except SimulationFailed as error:
            print(f"FAILED: {error}")
            return 1
        except Exception as error:
            print(f"FAILED: seed {seed}: {type(error).__name__}: {error} (replay with SIM_SEED={seed} make sim)")
            raise
        runs += 1
        for name in ("crashes", "refused_and_repaired", "storage_failures", "snapshots", "acknowledged"):
            totals[name] = totals.get(name, 0) + getattr(stats, name)
    print(f"{runs} seeds passed in {seconds:.0f} s: {totals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
