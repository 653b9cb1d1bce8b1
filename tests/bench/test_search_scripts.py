"""The search benchmarks run on small inputs: ``bench.make_ledger --history-only`` writes a read
model whose every transfer is searchable by its metadata, ``bench.search`` reports every shape,
``bench.search_index_choice`` reports the three layouts."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from bench import make_ledger, search, search_index_choice


def test_a_history_only_ledger_is_searched_by_every_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert make_ledger.main(["--history-only", "--data", str(data), "--wallets", "40", "--transfers", "3000"]) == 0
    with sqlite3.connect(data / "history.sqlite3") as connection:
        transfers, = connection.execute("SELECT count(*) FROM transactions WHERE type = 1").fetchone()
        channels, = connection.execute("SELECT count(*) FROM transaction_metadata WHERE key = 'channel'").fetchone()
    connection.close()
    assert transfers == channels == 3000
    assert search.main(["--data", str(data), "--queries", "5"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if re.search(r"p50 +[\d.]+ ms +p99", line)]
    assert len(lines) == len(search.shapes(search.Draw(data / "history.sqlite3", 1), 50))


def test_the_index_choice_reports_each_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert search_index_choice.main(["--transactions", "3000", "--wallets", "50", "--queries", "5",
                                     "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0].strip() for line in out.splitlines()] == ["none", "table", "json"]
    assert "by channel" in out
