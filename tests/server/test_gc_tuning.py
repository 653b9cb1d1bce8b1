"""Every process of the server runs with the collector's thresholds of ``server._serve``
(``GC_THRESHOLDS``), set before its event loop starts."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server import _serve
from server._gc import GC_THRESHOLDS
from server._serve import ServeOptions


@pytest.fixture
def default_thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


@pytest.mark.parametrize("entry", ["run", "ledger", "projector", "worker"])
def test_each_entry_point_tunes_the_collector_before_its_loop(
    entry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_thresholds: None
) -> None:
    seen: list[tuple[int, ...]] = []

    def fake_run(*args: Any, **kwargs: Any) -> int:
        seen.append(gc.get_threshold())
        return 0

    monkeypatch.setattr(_serve.anyio, "run", fake_run)
    options = ServeOptions(data_dir=tmp_path)
    if entry == "run":
        _serve.run(options)
    elif entry == "ledger":
        _serve.serve_ledger_process(options, "unused.sock")
    elif entry == "projector":
        _serve.serve_projector_process(options, "unused.sock")
    else:
        _serve.serve_worker_process(options, "unused.sock", fd=3, slot=0)
    assert seen == [GC_THRESHOLDS]


@pytest.mark.parametrize("argv", [["wal", "verify"], ["wal", "replay", "--until-lsn", "1", "--out"]])
def test_the_log_tools_replay_with_the_same_thresholds(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_thresholds: None
) -> None:
    from server import cli

    seen: list[tuple[int, ...]] = []

    def fake_tool(*args: Any, **kwargs: Any) -> int:
        seen.append(gc.get_threshold())
        return 0

    monkeypatch.setattr(cli.tools, "wal_verify", fake_tool)
    monkeypatch.setattr(cli.tools, "wal_replay", fake_tool)
    arguments = [*argv[:2], "--data", str(tmp_path), *argv[2:]]
    if arguments[-1] == "--out":
        arguments.append(str(tmp_path / "out"))
    assert cli.main(arguments) == 0
    assert seen == [GC_THRESHOLDS]


def test_the_thresholds_can_be_set_from_the_environment() -> None:
    from server._gc import GC_THRESHOLDS_ENV, thresholds

    assert thresholds({}) == GC_THRESHOLDS
    assert thresholds({GC_THRESHOLDS_ENV: " "}) == GC_THRESHOLDS
    assert thresholds({GC_THRESHOLDS_ENV: "700, 10,10"}) == (700, 10, 10)
    for wrong in ("1,2", "a,b,c", "-1,2,3", "1,2,3,4", "1.5,2,3"):
        with pytest.raises(ValueError, match=GC_THRESHOLDS_ENV):
            thresholds({GC_THRESHOLDS_ENV: wrong})


def test_a_wrong_value_stops_the_command_line_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from server import cli
    from server._gc import GC_THRESHOLDS_ENV

    monkeypatch.setenv(GC_THRESHOLDS_ENV, "lots")
    assert cli.main(["wal", "verify", "--data", str(tmp_path)]) == 2
    assert GC_THRESHOLDS_ENV in capsys.readouterr().err
