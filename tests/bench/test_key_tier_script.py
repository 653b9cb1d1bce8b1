"""``python -m bench.key_tier`` runs and reports the records in memory, on disk and the RSS."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_key_tier_script_reports_its_figures() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.key_tier", "--cap", "1000", "--seconds", "3", "--every", "1"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("t=")]
    assert lines, result.stdout
    last = re.search(r"memory=([\d,]+) spilled=([\d,]+) rss=(\d+) MB", lines[-1])
    assert last is not None, lines[-1]
    assert int(last.group(2).replace(",", "")) > 0  # the run went past the cap and spilled
