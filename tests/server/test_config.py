"""Options of ``wallet serve``: command line over environment over TOML file over defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server._config import SERVE_OPTIONS, resolve
from server.cli import build_parser


def parse(argv: list[str]) -> object:
    return build_parser().parse_args(["serve", *argv])


def test_precedence_is_command_line_then_environment_then_file_then_default(tmp_path: Path) -> None:
    config = tmp_path / "wallet.toml"
    config.write_text('port = 9001\nshards = 3\nsnapshot_every = 77\narchive = true\nhost = "0.0.0.0"\n')
    environ = {"WALLET_SHARDS": "5", "WALLET_PORT": "9002"}
    values = resolve(parse(["--config", str(config), "--port", "9003"]), environ)
    assert values["port"] == 9003  # command line
    assert values["shards"] == 5  # environment
    assert values["snapshot_every"] == 77 and values["archive"] is True and values["host"] == "0.0.0.0"  # file
    assert values["read_timeout"] == 30  # default
    assert resolve(parse(["--archive"]), {})["archive"] is True
    assert resolve(parse([]), {"WALLET_CONFIG": str(config)})["port"] == 9001


def test_every_option_has_a_flag_an_environment_variable_and_help() -> None:
    text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    for option in SERVE_OPTIONS:
        assert "--" + option.name.replace("_", "-") in text
        assert "WALLET_" + option.name.upper() in text


@pytest.mark.parametrize(
    ("argv", "environ", "contents", "message"),
    [
        ([], {"WALLET_SHARDS": "0"}, None, "shards from WALLET_SHARDS"),
        ([], {"WALLET_PORT": "eighty"}, None, "port from WALLET_PORT"),
        (["--config", "CONFIG"], {}, "portt = 1\n", "unknown option(s)"),
        (["--config", "CONFIG"], {}, "port = [\n", "cannot read"),
        (["--config", "CONFIG"], {}, "archive = 'maybe'\n", "archive from"),
        ([], {"WALLET_LOOP": "tokio"}, None, "loop from WALLET_LOOP: must be one of trio, asyncio, uvloop"),
        (["--config", "CONFIG"], {}, "loop = 'gevent'\n", "loop from"),
    ],
)
def test_bad_values_are_refused_with_their_source(tmp_path: Path, argv: list[str], environ: dict[str, str],
                                                 contents: str | None, message: str) -> None:
    config = tmp_path / "wallet.toml"
    if contents is not None:
        config.write_text(contents)
    argv = [str(config) if item == "CONFIG" else item for item in argv]
    with pytest.raises(SystemExit, match=re.escape(message)):
        resolve(parse(argv), environ)


def test_the_event_loop_is_trio_unless_asked_from_any_source(tmp_path: Path) -> None:
    config = tmp_path / "wallet.toml"
    config.write_text('loop = "asyncio"\n')
    assert resolve(parse([]), {})["loop"] == "trio"
    assert resolve(parse(["--loop", "uvloop"]), {})["loop"] == "uvloop"
    assert resolve(parse([]), {"WALLET_LOOP": "UVLOOP"})["loop"] == "uvloop"  # case does not matter
    assert resolve(parse(["--config", str(config)]), {})["loop"] == "asyncio"
    assert resolve(parse(["--config", str(config)]), {"WALLET_LOOP": "uvloop"})["loop"] == "uvloop"
    assert resolve(parse(["--config", str(config), "--loop", "trio"]), {"WALLET_LOOP": "uvloop"})["loop"] == "trio"


def test_a_bad_loop_on_the_command_line_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["--loop", "tokio"])
    assert exited.value.code == 2
    assert "must be one of trio, asyncio, uvloop" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("loop", "backend", "factory_module"),
    [("trio", "trio", None), ("asyncio", "asyncio", None), ("uvloop", "asyncio", "uvloop")],
)
def test_each_loop_maps_to_an_anyio_backend(loop: str, backend: str, factory_module: str | None) -> None:
    from server._serve import backend_of

    chosen, options = backend_of(loop)
    assert chosen == backend
    factory = options.get("loop_factory")
    assert (None if factory is None else factory.__module__.split(".")[0]) == factory_module
