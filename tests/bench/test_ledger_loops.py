"""``python -m bench.ledger_loops`` times the batch part loop and replay, and reports them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*arguments: str) -> str:
    result = subprocess.run([sys.executable, "-m", *arguments], capture_output=True, text=True, timeout=300,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_part_loop_reports_cpu_per_transfer() -> None:
    out = _run("bench.ledger_loops", "part", "--batches", "2", "--repeat", "1")
    found = re.search(r"part: ([\d.]+) us of CPU per transfer \(([\d,]+) transfers/s\)", out)
    assert found is not None, out
    assert float(found.group(1)) > 0


def test_replay_counts_the_records_and_transfers_of_a_log(tmp_path: Path) -> None:
    _run("bench.make_ledger", "--data", str(tmp_path), "--wallets", "50", "--transfers", "400")
    out = _run("bench.ledger_loops", "replay", "--data", str(tmp_path), "--repeat", "1")
    found = re.search(r"replay: ([\d,]+) records \(([\d,]+) transfers\)", out)
    assert found is not None, out
    records, transfers = (int(group.replace(",", "")) for group in found.groups())
    # The asset and 50 wallets (a record each), 50 deposits and 400 transfers (single or batch
    # records, each transfer counted once).
    assert transfers == 50 + 400
    assert 1 + 50 < records <= 1 + 50 + transfers
