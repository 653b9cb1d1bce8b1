"""The short crash loop CI runs (``make crashloop`` runs a long one)."""

from __future__ import annotations

from pathlib import Path

from tests._budget import scaled
from tests.e2e.crashloop import crash_loop

ITERATIONS = scaled(3, 8)  # `make crashloop` runs a long one with random seeds


async def test_crash_loop_short(tmp_path: Path) -> None:
    totals = await crash_loop(tmp_path / "data", iterations=ITERATIONS, seed=11)
    assert totals["iterations"] == ITERATIONS
    assert totals["acknowledged"] > 0
    assert totals["retried"] > 0, "no request was in flight at any kill: the loop proved nothing"
