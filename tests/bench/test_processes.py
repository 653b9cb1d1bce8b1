"""The multi-process pieces of ``wallet bench``: CPU summed over a server's process tree (parsing
``/proc/<pid>/stat``, finding descendants, the per-process window), the ``--workers`` flag as it
reaches ``wallet serve`` and the echo server, and the echo server's own ``--workers N`` (N
processes on one port). No timing assertions: only what was counted and who was found."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import add_arguments
from bench._http import Client
from bench._options import WORKERS_DEFAULT
from bench._report import process_cpu, server_figures
from bench._run import make_plan, workers_of
from bench._service import (
    descendants,
    echo_command,
    free_port,
    parse_stat,
    serve_command,
    tree_cpu_seconds,
)
from server._config import SERVE_OPTIONS

ROOT = Path(__file__).resolve().parents[2]


def arguments(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(flags))


# -- /proc -------------------------------------------------------------------------------


def stat_line(pid: int, name: str, ppid: int, utime: int, stime: int) -> str:
    # proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime ...
    return f"{pid} ({name}) S {ppid} 1 1 0 -1 4194560 10 0 0 0 {utime} {stime} 7 9 20 0 1 0 5\n"


@pytest.mark.parametrize("name", ["python", "a b", "x) S 1 2 (y", "((", ")"])
def test_parse_stat_reads_parent_and_ticks_whatever_the_command_name(name: str) -> None:
    assert parse_stat(stat_line(42, name, 7, 300, 45)) == (7, 345)


def test_parse_stat_leaves_out_the_children_s_ticks() -> None:
    # cutime and cstime (fields 16 and 17) are waited-for children's: counting them would count
    # a restarted worker twice.
    assert parse_stat(stat_line(1, "p", 0, 1, 2))[1] == 3


def test_descendants_walks_the_whole_tree_root_first() -> None:
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 13: 12, 20: 1, 30: 5, 31: 30}
    assert descendants(10, parents) == [10, 11, 12, 13]
    assert descendants(30, parents) == [30, 31]
    assert descendants(13, parents) == [13]
    assert descendants(99, parents) == [99]  # unknown: itself only


def test_tree_cpu_seconds_finds_a_child_of_this_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        found = tree_cpu_seconds(os.getpid())
        assert os.getpid() in found
        assert child.pid in found
        assert all(seconds >= 0 for seconds in found.values())
    finally:
        child.kill()
        child.wait()


def test_tree_cpu_seconds_of_a_process_that_is_gone_raises() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(OSError):
        tree_cpu_seconds(child.pid)


def test_process_cpu_per_pid_over_the_window() -> None:
    before = {100: 1.0, 101: 5.0, 102: 2.0, 103: 9.0}
    after = {100: 1.1, 101: 8.0, 102: 4.0, 104: 0.5}  # 103 exited; 104 started inside the window
    items = process_cpu(before, after, {100: "supervisor", 101: "ledger"}, 2.0, child_role="worker")
    assert [item["pid"] for item in items] == [101, 102, 104, 100]  # busiest first
    by_pid = {item["pid"]: item for item in items}
    assert by_pid[101]["role"] == "ledger"
    assert by_pid[102]["role"] == "worker"
    assert by_pid[101]["seconds"] == pytest.approx(3.0)
    assert by_pid[101]["share_of_one_core"] == pytest.approx(1.5)
    assert by_pid[104]["seconds"] == pytest.approx(0.5)
    assert by_pid[104]["whole_window"] is False
    assert by_pid[100]["whole_window"] is True
    assert 103 not in by_pid


def test_server_figures_sum_the_processes() -> None:
    before = {"at": 10.0, "server_cpu_s": 8.0, "cpu_by_pid": {1: 1.0, 2: 3.0, 3: 4.0}, "roles": {}}
    after = {"at": 12.0, "server_cpu_s": 13.0, "cpu_by_pid": {1: 1.0, 2: 5.0, 3: 7.0},
             "roles": {1: "supervisor", 2: "ledger"}, "cpu_of": "the server's processes, summed"}
    cpu = server_figures(before, after)["server_cpu"]
    assert cpu["seconds"] == pytest.approx(5.0)
    assert cpu["share_of_one_core"] == pytest.approx(2.5)
    assert [(item["role"], item["pid"]) for item in cpu["processes"]] == [("child", 3), ("ledger", 2),
                                                                          ("supervisor", 1)]


def test_server_figures_without_a_process_tree_keep_one_figure() -> None:
    cpu = server_figures({"at": 0.0, "server_cpu_s": 1.0}, {"at": 1.0, "server_cpu_s": 1.5})["server_cpu"]
    assert cpu["seconds"] == pytest.approx(0.5)
    assert cpu["processes"] is None


# -- --workers ---------------------------------------------------------------------------


def test_workers_default_is_the_server_s() -> None:
    (option,) = [option for option in SERVE_OPTIONS if option.name == "workers"]
    assert WORKERS_DEFAULT == option.default


def test_serve_command_passes_workers_only_when_given(tmp_path: Path) -> None:
    plain = serve_command(data_dir=tmp_path, port=1, shards=4, loop=None)
    assert "--workers" not in plain
    given = serve_command(data_dir=tmp_path, port=1, shards=4, loop="uvloop", workers=2)
    assert given[given.index("--workers") + 1] == "2"
    assert given[given.index("--loop") + 1] == "uvloop"
    zero = serve_command(data_dir=tmp_path, port=1, shards=4, loop=None, workers=0)
    assert zero[zero.index("--workers") + 1] == "0"


def test_echo_command_runs_worker_processes_only_when_asked() -> None:
    assert "--workers" not in echo_command(port=1, loop=None)
    assert "--workers" not in echo_command(port=1, loop=None, workers=0)
    command = echo_command(port=1, loop="trio", workers=3)
    assert command[command.index("--workers") + 1] == "3"


def test_plan_carries_workers_and_the_default() -> None:
    plan = make_plan(arguments("--wallets", "100", "--workers", "2", "--baseline-one-process"))
    assert plan.workers == 2
    assert workers_of(plan) == 2
    assert plan.baseline_one_process is True
    default = make_plan(arguments("--wallets", "100"))
    assert default.workers is None
    assert workers_of(default) == WORKERS_DEFAULT
    assert default.baseline_one_process is False


def test_workers_must_not_be_negative() -> None:
    with pytest.raises(SystemExit):
        arguments("--workers", "-1")


# -- the echo server's worker processes ----------------------------------------------------


@pytest.mark.e2e
def test_echo_workers_serve_one_port_and_stop_on_sigterm() -> None:
    port = free_port()
    echo = subprocess.Popen(echo_command(port=port, loop="trio", workers=2), cwd=ROOT)
    try:
        import trio

        async def health() -> int:
            client = Client(f"http://127.0.0.1:{port}", None)
            try:
                for _ in range(400):
                    try:
                        return (await client.call("GET", "/health")).status
                    except Exception:
                        await trio.sleep(0.05)
                return 0
            finally:
                await client.aclose()

        assert trio.run(health) == 200
        workers = [pid for pid in tree_cpu_seconds(echo.pid) if pid != echo.pid]
        assert len(workers) == 2
        echo.send_signal(signal.SIGTERM)
        assert echo.wait(timeout=30) == 0
        for pid in workers:  # the workers were stopped, not orphaned
            for _ in range(200):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)
            assert not Path(f"/proc/{pid}").exists()
    finally:
        if echo.poll() is None:
            echo.kill()
            echo.wait()
