"""``python -m bench.pg``, the PostgreSQL row-lock comparison: pgbench's output and per-transaction
log parsed, percentiles and the measured window, the checks, the scripts; then the whole thing
for real, briefly (skipped when PostgreSQL is not installed). No timing assertions."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from bench import pg

SUMMARY_15 = """\
pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: bench/postgres/uniform.sql
scaling factor: 1
query mode: prepared
number of clients: 64
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 26422
number of failed transactions: 3 (0.011%)
latency average = 12.079 ms
initial connection time = 74.946 ms
tps = 5298.410056 (without initial connection time)
"""


def test_summary_lines_are_read() -> None:
    assert pg.parse_summary(SUMMARY_15) == {"processed": 26422, "failed": 3, "tps": 5298.410056}
    older = SUMMARY_15.replace("number of failed transactions: 3 (0.011%)\n", "")
    assert pg.parse_summary(older)["failed"] == 0
    with pytest.raises(ValueError):
        pg.parse_summary("pgbench: error: connection refused\n")


def test_log_lines_are_read() -> None:
    assert pg.parse_log_line("3 1 89218 0 1796439960 370100\n") == pg.Transaction(
        end_s=1796439960.3701, latency_us=89218)
    assert pg.parse_log_line("5 7 12 0 1796439961 5 0 2") == pg.Transaction(end_s=1796439961.000005, latency_us=12)
    for word in ("failed", "serialization", "deadlock", "skipped"):
        assert pg.parse_log_line(f"5 7 {word} 0 1796439961 5") == pg.Transaction(
            end_s=1796439961.000005, latency_us=None)
    assert pg.parse_log_line("\n") is None
    for bad in ("3 1 89218 0 1796439960", "3 1 -4 0 1796439960 1", "3 1 oops 0 1796439960 1"):
        with pytest.raises(ValueError):
            pg.parse_log_line(bad)


def test_every_thread_log_of_the_prefix_is_read(tmp_path: Path) -> None:
    (tmp_path / "hot-1.4242").write_text("0 0 100 0 1000 0\n1 0 200 0 1000 500000\n")
    (tmp_path / "hot-1.4242.1").write_text("2 0 300 0 1001 0\n\n")
    (tmp_path / "hot-2.4243").write_text("0 0 999 0 1000 0\n")  # another run's
    latencies = sorted(t.latency_us or 0 for t in pg.read_logs(tmp_path / "hot-1"))
    assert latencies == [100, 200, 300]


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert pg.percentile(values, 0.50) == 50
    assert pg.percentile(values, 0.99) == 99
    assert pg.percentile(values, 0.999) == 100
    assert pg.percentile(values, 0.0) == 1
    assert pg.percentile([7], 0.99) == 7
    assert pg.percentile([], 0.5) is None
    # 1000 values: p99 is the 990th, p99.9 the 999th
    assert pg.percentile(list(range(1000)), 0.99) == 989
    assert pg.percentile(list(range(1000)), 0.999) == 998


def test_the_window_starts_after_the_warmup_from_the_first_transaction() -> None:
    # the first transaction began at t=100 (it ended at 100.01, after 10 ms); transaction i ends at
    # 100.005 + i/100 after i ms; two failures, one inside the window
    transactions = [pg.Transaction(end_s=100.01, latency_us=10_000)]
    transactions += [pg.Transaction(end_s=100.005 + i / 100, latency_us=i * 1000) for i in range(1, 500)]
    transactions += [pg.Transaction(end_s=102.5, latency_us=None), pg.Transaction(end_s=103.5, latency_us=None)]
    figures = pg.window_figures(transactions, warmup_s=1, duration_s=2)
    # the window [101, 103) holds i = 100..299: 200 transactions of 100..299 ms
    assert figures["transactions"] == 200
    assert figures["failed"] == 1
    assert figures["throughput"] == 100
    latency = figures["latency_ms"]
    assert latency["p50"] == 199  # the 100th
    assert latency["p99"] == 297  # the 198th
    assert latency["max"] == 299
    assert latency["mean"] == pytest.approx((100 + 299) / 2)
    with pytest.raises(ValueError):
        pg.window_figures([], warmup_s=0, duration_s=1)


def test_conservation_checks_the_sum_and_the_transfer_rows() -> None:
    def check(balance_sum: int, negative: int = 0, transfers: int = 90, processed: int = 100) -> dict[str, Any]:
        after = pg.Totals(accounts=10, balance_sum=balance_sum, negative=negative, transfers=transfers)
        return pg.conservation(after, accounts=10, balance=1000, processed=processed)

    assert check(10_000)["ok"] and check(10_000)["refused"] == 10
    assert not check(10_001)["conserved"] and not check(10_001)["ok"]
    assert not check(10_000, negative=1)["ok"]
    assert check(10_000, transfers=101)["conserved"] and not check(10_000, transfers=101)["ok"]


def test_cpu_shares() -> None:
    before = pg.CpuReading(at_s=10, server_s=5, generator_s=1, ours_s=0.5, busy_s=100, steal_s=2)
    after = pg.CpuReading(at_s=20, server_s=17, generator_s=4, ours_s=1.5, busy_s=119, steal_s=3)
    assert pg.cpu_figures(before, after) == {"wall_s": 10, "server_cores": 1.2, "pgbench_cores": 0.3,
                                             "other_cores": 0.3, "machine_busy_cores": 1.9, "steal_cores": 0.1}
    # readings are not taken at the same instant: others never go negative
    assert pg.cpu_figures(before, pg.CpuReading(at_s=20, server_s=25, generator_s=4, ours_s=1.5, busy_s=119,
                                                steal_s=3))["other_cores"] == 0
    reading = pg.cpu_reading(os.getpid())  # this process as the "server": /proc is read
    assert reading.server_s > 0 and reading.busy_s > 0


def _transfer_lines(script: Path) -> list[str]:
    lines = script.read_text().splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("\\set amount")):]


def test_both_scripts_run_the_same_transfer() -> None:
    uniform, hot = (_transfer_lines(pg.SCENARIOS[name]) for name in ("uniform", "hot"))
    assert uniform == hot
    statements = "\n".join(uniform)
    for expected in ("WHERE id = :lo FOR UPDATE", "WHERE id = :hi FOR UPDATE", "\\if :src_balance >= :amount",
                     "INSERT INTO transfers", "COMMIT;", "ROLLBACK;"):
        assert expected in statements
    assert statements.index(":lo FOR UPDATE") < statements.index(":hi FOR UPDATE")  # id order
    assert "random(1, 2)" in pg.SCENARIOS["hot"].read_text()


def _run(throughput: float, p50: float, p99: float) -> dict[str, Any]:
    return {"throughput": throughput, "latency_ms": {"p50": p50, "p99": p99}, "load_average": [p50 / 10, 1.0, 0.5],
            "started_at": throughput, "checks": {"refused": 0, "conserved": True},
            "cpu": {"server_cores": 1.25, "pgbench_cores": 0.5, "other_cores": throughput / 10_000, "steal_cores": 0}}


def test_medians_and_table() -> None:
    runs = [_run(4000, 10, 30), _run(5000, 12, 33), _run(4500, 11, 40)]
    assert pg.medians(runs) == {"throughput": 4500, "p50_ms": 11, "p99_ms": 33, "server_cores": 1.25,
                                "pgbench_cores": 0.5, "other_cores": 0.45, "steal_cores": 0}
    hot = [_run(800, 40, 380)]
    result = {"postgres": {"version": "postgres (PostgreSQL) 15"}, "machine": {"load_average": [0.25, 0.1, 0.1]},
              "parameters": {"clients": 64, "jobs": 2, "accounts": 10_000, "duration_s": 20, "warmup_s": 3, "runs": 3},
              "scenarios": {"uniform": {"runs": runs, "median": pg.medians(runs)},
                            "hot": {"runs": hot, "median": pg.medians(hot)}}}
    text = pg.table(result)
    assert "4,500 [4,000, 5,000]" in text
    assert "33.0 [30.0, 40.0]" in text
    assert "hot / uniform: 0.18" in text
    assert "1.25 / 0.50 / 0.45 / 0.00" in text and "1.25 / 0.50 / 0.08 / 0.00" in text
    assert "before the cluster started: 0.25; at each run's start, in order: 4.00, 1.00, 1.10, 1.20 " in text


def test_binaries_are_found_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    for name in ("initdb", "pg_ctl", "postgres", "psql"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    assert pg.find_binaries([tmp_path]) is None  # no pgbench here nor on PATH
    (tmp_path / "pgbench").write_text("#!/bin/sh\n")
    (tmp_path / "pgbench").chmod(0o755)
    found = pg.find_binaries([tmp_path / "empty", tmp_path])
    assert found is not None and found.pgbench == tmp_path / "pgbench" and found.initdb == tmp_path / "initdb"


def test_the_server_account(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg.os, "geteuid", lambda: 1000)
    assert pg.server_account() is None
    with pytest.raises(pg.PgError, match="needs root"):
        pg.server_account("postgres")
    monkeypatch.setattr(pg.os, "geteuid", lambda: 0)

    def missing(name: str) -> Any:
        raise KeyError(name)

    monkeypatch.setattr(pg.pwd, "getpwnam", missing)
    with pytest.raises(pg.PgError, match="refuses"):
        pg.server_account()


# -- for real ---------------------------------------------------------------------------

installed = pytest.mark.skipif(pg.find_binaries() is None, reason="PostgreSQL (initdb, pgbench) is not installed")


def _main(monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, list[Path]]:
    """Runs ``python -m bench.pg`` in process; its exit status and the temporary directories it made."""
    made: list[Path] = []
    mkdtemp = tempfile.mkdtemp

    def recording(*args: Any, **kwargs: Any) -> str:
        path = mkdtemp(*args, **kwargs)
        made.append(Path(path))
        return path

    monkeypatch.setattr(pg.tempfile, "mkdtemp", recording)
    return pg.main(list(argv)), made


@installed
@pytest.mark.e2e
def test_both_scenarios_for_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "pg.json"
    status, made = _main(monkeypatch, "--duration", "2", "--warmup", "0", "--runs", "1", "--json", str(out))
    assert status == 0
    assert made and not any(os.path.exists(path) for path in made)  # the cluster was removed
    result = json.loads(out.read_text())
    assert result["ok"] is True
    assert result["postgres"]["settings"]["fsync"] == "on"
    for name in ("uniform", "hot"):
        (run,) = result["scenarios"][name]["runs"]
        assert run["transactions"] > 0 and run["failed"] == 0
        assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["p99"] <= run["latency_ms"]["max"]
        checks = run["checks"]
        assert checks["conserved"] and checks["refused"] == 0
        assert checks["transfer_rows"] == run["pgbench"]["processed"] >= run["transactions"]
        assert result["scenarios"][name]["median"]["throughput"] == run["throughput"]
        assert run["cpu"]["server_cores"] > 0 and run["cpu"]["pgbench_cores"] > 0


@installed
@pytest.mark.e2e
def test_transfers_without_funds_are_refused_for_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 50 per account, amounts 1-100 between 2 accounts: many transfers find too little money
    out = tmp_path / "pg.json"
    status, _ = _main(monkeypatch, "--duration", "1", "--warmup", "0", "--runs", "1", "--scenarios", "hot",
                      "--balance", "50", "--json", str(out))
    assert status == 0
    (run,) = json.loads(out.read_text())["scenarios"]["hot"]["runs"]
    assert run["checks"]["refused"] > 0
    assert run["checks"]["conserved"] and run["checks"]["balance_sum"] == 10_000 * 50
