"""``wallet bench --url`` finds the admin token where ``wallet seed`` does: ``--token``, else
``WALLET_ADMIN_TOKEN``, else ``DATA/admin.token`` (one helper, ``server._admin_token``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench import add_arguments
from bench._run import Refused, make_plan
from server._admin_token import find_admin_token


def plan_token(*flags: str) -> str:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    # --shards given: the plan does not ask the (absent) server's /metrics.
    return make_plan(parser.parse_args(["--url", "http://127.0.0.1:9", "--shards", "4", *flags])).token


def test_bench_reads_the_token_from_the_data_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WALLET_ADMIN_TOKEN", raising=False)
    (tmp_path / "admin.token").write_text("from-file\n")
    assert plan_token("--data", str(tmp_path)) == "from-file"
    monkeypatch.setenv("WALLET_ADMIN_TOKEN", "from-env")
    assert plan_token("--data", str(tmp_path)) == "from-env"
    assert plan_token("--data", str(tmp_path), "--token", "given") == "given"
    monkeypatch.delenv("WALLET_ADMIN_TOKEN")
    with pytest.raises(Refused, match=r"admin\.token"):
        plan_token("--data", str(tmp_path / "nothing"))


def test_one_order_for_every_tool(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("  file  \n")
    assert find_admin_token(explicit="t", data_dir=tmp_path, environ={"WALLET_ADMIN_TOKEN": "e"}) == "t"
    assert find_admin_token(explicit=None, data_dir=tmp_path, environ={"WALLET_ADMIN_TOKEN": "e"}) == "e"
    assert find_admin_token(explicit=None, data_dir=tmp_path, environ={}) == "file"
    assert find_admin_token(explicit=None, data_dir=tmp_path / "none", environ={}) is None
    assert find_admin_token(explicit=None, data_dir=None, environ={}) is None
