"""``/ready`` under a supervisor waits for every live HTTP worker to have reached the ledger
process (a worker still starting would refuse its share of the connections 503)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from server._supervisor import PROCESSES_FILE, prepare_run_dir, run_dir, workers_not_up


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    prepare_run_dir(tmp_path)
    yield tmp_path
    shutil.rmtree(run_dir(tmp_path), ignore_errors=True)


def write_table(data_dir: Path, workers: dict[int, bool]) -> None:
    items = [{"role": "supervisor", "pid": os.getppid(), "alive": True},  # this process's parent
             {"role": "ledger", "pid": 10, "alive": True}]
    items += [{"role": "http", "pid": pid, "alive": alive} for pid, alive in workers.items()]
    (run_dir(data_dir) / PROCESSES_FILE).write_text(json.dumps({"items": items}))


def mark_up(data_dir: Path, pid: int) -> None:
    (run_dir(data_dir) / f"up-{pid}").touch()


def test_every_live_worker_must_have_reached_the_ledger(data_dir: Path) -> None:
    write_table(data_dir, {101: True, 102: True})
    assert workers_not_up(data_dir) == "HTTP worker 101 has not reached the ledger process yet"
    mark_up(data_dir, 101)
    assert workers_not_up(data_dir) == "HTTP worker 102 has not reached the ledger process yet"
    mark_up(data_dir, 102)
    assert workers_not_up(data_dir) is None


def test_a_dead_worker_does_not_hold_readiness_but_its_replacement_does(data_dir: Path) -> None:
    mark_up(data_dir, 101)
    write_table(data_dir, {101: True, 102: False})  # 102 died: its replacement is not listed yet
    assert workers_not_up(data_dir) is None
    write_table(data_dir, {101: True, 102: False, 103: True})
    assert workers_not_up(data_dir) == "HTTP worker 103 has not reached the ledger process yet"


def test_without_a_supervisor_nothing_is_waited_for(tmp_path: Path) -> None:
    assert workers_not_up(tmp_path) is None  # no run folder, no table: one process
