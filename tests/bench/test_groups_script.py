"""``python -m bench.groups`` runs both loads over one and two groups and reports every transfer
it committed (a tiny run: no figure is asserted, only that the script measures what it says)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.parametrize(("mode", "groups", "expected"), [
    ("batch", 1, 2000), ("batch", 2, 2000), ("single", 2, 4 * 25)])
def test_the_groups_bench_commits_every_transfer_and_reports_it(mode: str, groups: int, expected: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.groups", mode, "--groups", str(groups), "--wallets", "40", "--batches", "2",
         "--clients", "4", "--each", "25"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    found = re.fullmatch(rf"{mode}  groups {groups}  [\d,]+ transfers/s  \((\d+) in [\d.]+ s\)\n", result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert int(found.group(1)) == expected
