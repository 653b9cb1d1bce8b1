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


def test_payout_and_bank_options_have_their_defaults_and_sources(tmp_path: Path) -> None:
    values = resolve(parse([]), {})
    assert (values["payout_workers"], values["payout_max_attempts"], values["bank_url"]) == (16, 8, None)
    assert (values["bank_latency_ms"], values["bank_failure_rate"], values["bank_timeout_s"]) == (50.0, 0.0, 10.0)
    config = tmp_path / "wallet.toml"
    config.write_text('bank_timeout_s = 2.5\npayout_max_attempts = 3\nbank_url = "https://bank.example/v1/payouts"\n')
    values = resolve(parse(["--config", str(config), "--payout-workers", "4", "--bank-latency-ms", "0"]),
                     {"WALLET_BANK_FAILURE_RATE": "0.25"})
    assert values["payout_workers"] == 4 and values["bank_latency_ms"] == 0.0  # command line
    assert values["bank_failure_rate"] == 0.25  # environment
    assert values["bank_timeout_s"] == 2.5 and values["payout_max_attempts"] == 3  # file
    assert values["bank_url"] == "https://bank.example/v1/payouts"
    assert resolve(parse(["--bank-url", "http://127.0.0.1:8081/payouts"]), {})["bank_url"] == (
        "http://127.0.0.1:8081/payouts")


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("WALLET_PAYOUT_WORKERS", "0", "at least 1"),
        ("WALLET_PAYOUT_MAX_ATTEMPTS", "-2", "at least 1"),
        ("WALLET_BANK_URL", "ftp://bank.example/payouts", "http:// or https://"),
        ("WALLET_BANK_URL", "bank.example/payouts", "http:// or https://"),
        ("WALLET_BANK_URL", "http:///payouts", "with a host"),
        ("WALLET_BANK_URL", "http://bank.example:99999/payouts", "bad port"),
        ("WALLET_BANK_LATENCY_MS", "-1", "at least 0"),
        ("WALLET_BANK_LATENCY_MS", "inf", "finite"),
        ("WALLET_BANK_FAILURE_RATE", "1.5", "between 0 and 1"),
        ("WALLET_BANK_FAILURE_RATE", "nan", "finite"),
        ("WALLET_BANK_FAILURE_RATE", "often", "could not convert"),
        ("WALLET_BANK_TIMEOUT_S", "0", "more than 0"),
    ],
)
def test_bad_payout_and_bank_values_are_refused(variable: str, raw: str, message: str) -> None:
    name = variable.removeprefix("WALLET_").lower()
    with pytest.raises(SystemExit, match=f"{name} from {variable}: .*{re.escape(message)}"):
        resolve(parse([]), {variable: raw})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--failure-rate", "1.5"], "between 0 and 1"),
        (["--drop-response-rate", "-0.1"], "between 0 and 1"),
        (["--fail-first", "-1"], "at least 0"),
        (["--latency-ms", "nan"], "finite"),
    ],
)
def test_bank_sim_refuses_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["bank-sim", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_bank_sim_arguments_have_their_defaults() -> None:
    arguments = build_parser().parse_args(["bank-sim", "--port", "0", "--seed", "3"])
    assert (arguments.host, arguments.port, arguments.seed) == ("127.0.0.1", 0, 3)
    assert (arguments.latency_ms, arguments.failure_rate, arguments.fail_first, arguments.drop_response_rate) == (
        0.0, 0.0, 0, 0.0)
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


def test_every_option_has_its_field_and_every_field_its_option() -> None:
    import dataclasses

    from server._config import FIELD_OF, SERVE_OPTIONS, resolve, serve_options
    from server._serve import ServeOptions

    # ``cluster``, ``groups`` and ``nats_servers`` are no options of ``serve``: ``wallet cluster up`` sets them
    # for the processes it starts.
    fields = {field.name for field in dataclasses.fields(ServeOptions)} - {"cluster", "groups", "nats_servers"}
    assert {FIELD_OF.get(option.name, option.name) for option in SERVE_OPTIONS} == fields
    arguments = build_parser().parse_args(["serve", "--port", "9", "--body-timeout", "3"])
    options = serve_options(resolve(arguments, environ={}))
    assert options.port == 9 and options.body_timeout_s == 3.0
