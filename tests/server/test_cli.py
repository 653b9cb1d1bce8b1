"""The ``wallet`` command line itself: every option of every subcommand says what it does, and
on/off options are switches (``--x`` / ``--no-x``), never ``--x [X]``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from server._config import flag
from server.cli import build_parser


def parsers(parser: argparse.ArgumentParser, name: str = "wallet") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def options() -> Iterator[tuple[str, argparse.Action]]:
    for name, parser in parsers(build_parser()):
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield name, action


def test_the_walk_reaches_every_subcommand() -> None:
    names = {name for name, _ in parsers(build_parser())}
    assert {"wallet serve", "wallet wal verify", "wallet wal dump", "wallet wal replay", "wallet wal repair",
            "wallet snapshot create", "wallet snapshot list", "wallet snapshot verify", "wallet seed",
            "wallet bench", "wallet bank-sim"} <= names


def test_every_option_has_help() -> None:
    missing = [f"{name} {action.option_strings[0]}" for name, action in options()
               if not action.help or not action.help.strip()]
    assert missing == []


def test_no_on_off_option_takes_a_value() -> None:
    wrong = []
    for name, action in options():
        on_off = action.type in (flag, bool) or isinstance(action.default, bool) or isinstance(action.const, bool)
        if on_off and action.nargs != 0:
            wrong.append(f"{name} {action.option_strings[0]} (nargs={action.nargs!r})")
    assert wrong == []


def test_an_on_off_serve_option_can_be_turned_off_on_the_command_line() -> None:
    from server._config import resolve

    parse = build_parser().parse_args
    assert resolve(parse(["serve", "--no-archive"]), {"WALLET_ARCHIVE": "true"})["archive"] is False
    assert resolve(parse(["serve"]), {"WALLET_ARCHIVE": "true"})["archive"] is True
    assert resolve(parse(["serve", "--rate-limit-admin"]), {})["rate_limit_admin"] is True
