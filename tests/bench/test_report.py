"""The report without matplotlib (the ``plot`` extra is optional) and the table's verdict line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench._report import chart, conservation_line
from bench._service import verdict


def test_the_chart_is_skipped_with_a_reason_when_matplotlib_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    why_not = chart(tmp_path / "c.png", {"service": {"timeseries": []}, "title": "t"})
    # The project is installed from its checkout (make install), not from a registry.
    assert why_not is not None and "pip install -e '.[plot]'" in why_not
    assert not (tmp_path / "c.png").exists()


def test_the_verdict_needs_both_sums() -> None:
    assert verdict(balances={"a": 3, "b": 2}, treasury=-5, deposited=5)["conserved"] is True
    assert verdict(balances={"a": 3, "b": 2}, treasury=-4, deposited=5)["conserved"] is False  # not zero
    assert verdict(balances={"a": 3, "b": 1}, treasury=-4, deposited=5)["conserved"] is False  # money left
    line = conservation_line(verdict(balances={"a": 1}, treasury=-1, deposited=2))
    assert line.startswith("money conserved: NO")
