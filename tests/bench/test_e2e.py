"""Short end-to-end runs of ``wallet bench`` (1 s measured each): the JSON has every field, and
money conservation was checked and held. No timing assertions: the machine is shared."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from bench import _wrk, add_arguments
from bench._run import run
from ledger import Ledger, Overloaded
from tests.e2e._server import ADMIN_TOKEN, ServerProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TOP = {"schema", "title", "started_at", "git_revision", "git_dirty", "machine", "parameters", "service",
       "baseline_echo", "ratio_to_echo", "conservation", "notes", "chart"}
MACHINE = {"hostname", "platform", "python", "implementation", "cpus", "cpu_model", "memory_bytes", "load_average"}
RUN = {"duration_s", "requests", "reads", "transfers", "transfers_ok", "throughput", "latency_ms", "latency_source",
       "statuses", "errors", "missed_sends", "warmup_requests", "timeseries", "histogram", "wal_records",
       "wal_group_commits", "records_per_fsync", "server_cpu", "generator_cpu", "driver"}
LATENCY = {"p50", "p90", "p99", "p99.9", "max", "mean"}
SECOND = {"second", "requests", "transfers_ok", "p50_ms", "p90_ms", "p99_ms", "max_ms", "partial"}
CONSERVATION = {"checked", "conserved", "wallets", "wallets_sum", "treasury", "deposited", "negative_wallets"}
SHORT = ["--duration", "1", "--warmup", "0.5"]


def every_flag() -> set[str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return {action.dest for action in parser._actions if action.dest != "help"}


def wallet_bench(*flags: str) -> tuple[int, str, str]:
    completed = subprocess.run(
        [sys.executable, "-m", "server.cli", "bench", *flags], cwd=ROOT, capture_output=True, text=True,
        timeout=300, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    return completed.returncode, completed.stdout, completed.stderr


def check_run(figures: dict[str, Any], *, driver: str) -> None:
    assert RUN <= set(figures), RUN - set(figures)
    assert set(figures["latency_ms"]) == LATENCY
    assert set(figures["throughput"]) == {"transfers_per_s", "requests_per_s"}
    assert figures["driver"] == driver
    assert figures["requests"] > 0
    assert figures["timeseries"]
    for row in figures["timeseries"]:
        assert set(row) == SECOND
    assert figures["generator_cpu"]
    for cpu in figures["generator_cpu"]:
        assert {"process", "cpu_s", "wall_s", "share_of_one_core"} <= set(cpu)
    if driver != "wrk":
        assert figures["histogram"]["count"] == figures["requests"]


def check_result(path: Path) -> dict[str, Any]:
    result = json.loads(path.read_text())
    assert TOP <= set(result), TOP - set(result)
    assert MACHINE <= set(result["machine"])
    assert every_flag() - {"token"} <= set(result["parameters"])
    assert {"driver", "shards", "run_id", "asset", "scenario", "deposit_per_wallet"} <= set(result["parameters"])
    assert result["git_revision"] == "unknown" or len(result["git_revision"]) == 40
    assert set(result["conservation"]) == CONSERVATION
    assert result["conservation"]["checked"] is True
    assert result["conservation"]["conserved"] is True
    if importlib.util.find_spec("matplotlib") is not None:
        assert result["chart"] is not None and Path(result["chart"]).stat().st_size > 0
    else:
        assert result["chart"] is None
        assert any("matplotlib is not installed" in note for note in result["notes"])
    return result


def test_http_with_the_default_driver_and_the_echo_baseline(tmp_path: Path) -> None:
    out = tmp_path / "http.json"
    status, stdout, stderr = wallet_bench(
        "--mode", "http", *SHORT, "--wallets", "200", "--connections", "4", "--baseline-echo", "--out", str(out))
    assert status == 0, stderr
    assert "money conserved: yes" in stdout
    result = check_result(out)
    driver = "wrk" if _wrk.available() else "python"
    check_run(result["service"], driver=driver)
    check_run(result["baseline_echo"], driver=driver)
    assert result["service"]["transfers_ok"] > 0
    assert result["service"]["errors"] == {}  # no key sent twice (409), no refusal: the script is right
    assert result["service"]["records_per_fsync"] is not None
    assert result["service"]["server_cpu"]["seconds"] >= 0
    assert result["baseline_echo"]["server_cpu"] is not None
    assert set(result["ratio_to_echo"]) == {"transfers_per_s", "requests_per_s"}
    assert result["parameters"]["shards"] == 4


def test_http_workers_with_both_baselines(tmp_path: Path) -> None:
    out = tmp_path / "workers.json"
    status, stdout, stderr = wallet_bench(
        "--mode", "http", *SHORT, "--wallets", "200", "--connections", "4", "--workers", "1", "--baseline-echo",
        "--baseline-one-process", "--out", str(out))
    assert status == 0, stderr
    assert "money conserved: yes" in stdout
    result = check_result(out)
    driver = "wrk" if _wrk.available() else "python"
    for key in ("service", "baseline_one_process", "baseline_echo"):
        check_run(result[key], driver=driver)
    assert result["parameters"]["workers"] == 1
    assert result["service"]["errors"] == {}
    roles = [item["role"] for item in result["service"]["server_cpu"]["processes"]]
    assert {"http", "ledger", "supervisor"} <= set(roles)  # and any child they run (a snapshot)
    assert roles.count("http") == 1
    one = result["baseline_one_process"]["server_cpu"]["processes"]
    assert one[0]["role"] == "server (one process)"
    echo_roles = sorted(item["role"] for item in result["baseline_echo"]["server_cpu"]["processes"])
    assert echo_roles == ["echo parent", "echo worker"]
    assert set(result["ratio_to_one_process"]) == {"transfers_per_s", "requests_per_s"}
    assert set(result["ratio_to_echo"]) == {"transfers_per_s", "requests_per_s"}


@pytest.fixture
def running_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", shards=3)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_http_python_driver_processes_open_loop_against_a_url(tmp_path: Path, running_server: ServerProcess) -> None:
    out = tmp_path / "url.json"
    assert running_server.process is not None
    status, _stdout, stderr = wallet_bench(
        "--mode", "http", "--url", running_server.url, "--token", ADMIN_TOKEN,
        "--server-pid", str(running_server.process.pid), "--driver", "python", "--processes", "2",
        "--rate", "40", "--read-share", "0.25", "--cross-shard", "0.5", *SHORT, "--wallets", "60",
        "--connections", "4", "--out", str(out),
    )
    assert status == 0, stderr
    result = check_result(out)
    check_run(result["service"], driver="python")
    assert result["parameters"]["shards"] == 3  # read from the server's /metrics
    assert len(result["service"]["generator_cpu"]) == 2
    assert result["service"]["reads"] > 0
    assert result["service"]["server_cpu"] is not None
    assert result["conservation"]["wallets"] == 60


def test_core_mode(tmp_path: Path) -> None:
    out = tmp_path / "core.json"
    status, _stdout, stderr = wallet_bench("--mode", "core", *SHORT, "--wallets", "200", "--connections", "8",
                                          "--out", str(out))
    assert status == 0, stderr
    result = check_result(out)
    check_run(result["service"], driver="core")
    assert result["service"]["transfers_ok"] > 0
    assert result["service"]["records_per_fsync"] is not None
    # The default builds the input before the run; this short run cannot use it all up.
    made = result["service"]["input"]
    assert made["prebuilt_transfers"] == int(40_000 * 1.5) and made["built_inline_transfers"] == 0
    assert 0 < made["left_unused"] < made["prebuilt_transfers"] - result["service"]["transfers"]


class FakeBatchLedger:
    """``Ledger.transfer_batch`` for a build without it: every item through ``transfer``, at once."""

    made: list[FakeBatchLedger] = []

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.batches = 0
        FakeBatchLedger.made.append(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    async def transfer_batch(self, commands: list[Any], *, atomic: bool) -> list[Any]:
        assert atomic is False
        self.batches += 1
        decisions: list[Any] = [None] * len(commands)

        async def one(index: int) -> None:
            try:
                decisions[index] = await self._ledger.transfer(commands[index])
            except Overloaded as error:
                decisions[index] = error

        async with trio.open_nursery() as nursery:
            for index in range(len(commands)):
                nursery.start_soon(one, index)
        return decisions


def bench_arguments(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(flags))


def test_core_mode_batches_through_a_fake_transfer_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "core-batch.json"
    FakeBatchLedger.made.clear()
    status = run(bench_arguments("--mode", "core", "--batch", "20", *SHORT, "--wallets", "200", "--connections", "2",
                                 "--out", str(out)), wrap=FakeBatchLedger)
    assert status == 0, capsys.readouterr().err
    result = check_result(out)
    check_run(result["service"], driver="core")
    assert FakeBatchLedger.made[0].batches > 0
    assert result["service"]["transfers"] == 20 * result["service"]["requests"]
    assert result["service"]["transfers_ok"] == result["service"]["transfers"]


def test_money_not_conserved_exits_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import bench._run as harness
    from bench._service import verdict

    async def broken(ledger: Any, asset: str, ids: list[str], deposit: int = 0) -> dict[str, Any]:
        return verdict(balances={"a": 5}, treasury=-4, deposited=5)

    monkeypatch.setattr(harness, "conservation_ledger", broken)
    status = run(bench_arguments("--mode", "core", "--duration", "0.3", "--warmup", "0", "--wallets", "20",
                                 "--connections", "2"))
    assert status == 1
    assert "money conserved: NO" in capsys.readouterr().out
