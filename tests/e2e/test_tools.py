"""The operator's tools through the real ``wallet`` command on data directories written by the
real server: a wrong ``--data`` is an error, an LSN past the end is a wrong argument (not
damage), and the long-running tools show a progress bar with a total and an ETA."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e._server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
WALLET = Path(sys.executable).with_name("wallet")  # the console script installed with the project


def wallet(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(WALLET)] if WALLET.exists() else [sys.executable, "-m", "server.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """A data directory with a healthy log and no snapshot (the server is SIGKILLed), and its
    last LSN."""
    server = ServerProcess(tmp_path_factory.mktemp("tools") / "data")
    server.start()
    try:
        with server.client() as http:
            assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
            for owner in ("a", "b"):
                http.post("/v1/wallets", json={"id": owner, "owner_id": owner, "asset": "USD"}).raise_for_status()
            http.post("/v1/deposits", headers={"Idempotency-Key": "d"},
                      json={"wallet_id": "a", "amount": 10_000}).raise_for_status()
            for number in range(20):
                http.post("/v1/transfers", headers={"Idempotency-Key": f"t{number}"},
                          json={"from_wallet_id": "a", "to_wallet_id": "b", "amount": 1}).raise_for_status()
            last = http.get("/ready").json()["durable_lsn"]
    finally:
        server.kill()
    yield server.data_dir, last


@pytest.fixture
def data(written: tuple[Path, int], tmp_path: Path) -> tuple[Path, int]:
    """A private copy of ``written`` (tools may add snapshots)."""
    source, last = written
    copy = tmp_path / "data"
    shutil.copytree(source, copy)
    (copy / "LOCK").unlink(missing_ok=True)
    return copy, last


# -- a missing or empty data directory -----------------------------------------------------------

READING_TOOLS = [
    ["wal", "verify"], ["wal", "dump"], ["snapshot", "list"], ["snapshot", "verify"],
    ["wal", "replay", "--until-lsn", "1", "--out", "OUT"], ["snapshot", "create"],
]


@pytest.mark.parametrize("tool", READING_TOOLS, ids=lambda tool: " ".join(tool[:2]))
@pytest.mark.parametrize("kind", ["missing", "empty", "empty-wal"])
def test_a_data_directory_without_a_log_is_an_error(tmp_path: Path, tool: list[str], kind: str) -> None:
    directory = tmp_path / "no-such-dir"
    if kind != "missing":
        directory.mkdir()
    if kind == "empty-wal":
        (directory / "wal").mkdir()
    args = [str(tmp_path / "out") if item == "OUT" else item for item in tool]
    result = wallet(*args[:2], "--data", str(directory), *args[2:])
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(directory) in result.stderr
    assert ("does not exist" if kind == "missing" else "no write-ahead log") in result.stderr
    assert "OK" not in result.stdout and "segments:" not in result.stdout
    assert not (tmp_path / "out").exists()
    if kind == "missing":
        assert not directory.exists()  # nothing made on the way (the lock would make it)


def test_the_tools_still_read_a_healthy_directory(data: tuple[Path, int]) -> None:
    directory, last = data
    verify = wallet("wal", "verify", "--data", str(directory))
    assert verify.returncode == 0 and f"LSNs:      1..{last}" in verify.stdout, verify.stdout
    listing = wallet("snapshot", "list", "--data", str(directory))
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split()[:3] == ["LSN", "BYTES", "RECORDS"] and "(none)" in listing.stdout
    assert wallet("snapshot", "verify", "--data", str(directory)).returncode == 0


# -- an LSN past the end of the log --------------------------------------------------------------


@pytest.mark.parametrize("tool", [["wal", "replay", "--out", "OUT"], ["snapshot", "create"]],
                         ids=["wal replay", "snapshot create"])
def test_an_lsn_past_the_end_is_a_wrong_argument_not_damage(data: tuple[Path, int], tmp_path: Path,
                                                           tool: list[str]) -> None:
    directory, last = data
    before = {path.name: path.read_bytes() for path in (directory / "wal").iterdir()}
    args = [str(tmp_path / "out") if item == "OUT" else item for item in tool]
    result = wallet(*args[:2], "--data", str(directory), "--until-lsn", str(last + 476), *args[2:])
    said = result.stdout + result.stderr
    assert result.returncode == 2, said
    assert f"LSN {last + 476} is past the end of the log" in result.stderr
    assert f"the last LSN is {last}" in result.stderr
    assert "repair" not in said and "damaged" not in said and "truncate" not in said
    assert not (tmp_path / "out").exists()
    assert {path.name: path.read_bytes() for path in (directory / "wal").iterdir()} == before
    assert not list((directory / "snapshots").glob("*.snap")) if (directory / "snapshots").exists() else True
    # The last LSN itself is fine.
    args = [str(tmp_path / "out") if item == "OUT" else item for item in tool]
    assert wallet(*args[:2], "--data", str(directory), "--until-lsn", str(last), *args[2:]).returncode == 0


def test_replay_past_a_damaged_record_still_says_damaged(data: tuple[Path, int], tmp_path: Path) -> None:
    directory, last = data
    (segment,) = sorted((directory / "wal").glob("*.wal"))
    raw = bytearray(segment.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    segment.write_bytes(bytes(raw))
    result = wallet("wal", "replay", "--data", str(directory), "--until-lsn", str(last + 5),
                    "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "damaged" in result.stdout, result.stdout + result.stderr
    assert "past the end" not in result.stderr


# -- progress ------------------------------------------------------------------------------------

FINISHED = r"{label}: 100%\|[^|]*\| (\S+)/\1 \[\d\d:\d\d<\d\d:\d\d"  # done, of a known total, with an ETA


@pytest.mark.parametrize(
    ("label", "args"),
    [
        ("wal verify", ["wal", "verify"]),
        ("wal replay", ["wal", "replay", "--until-lsn", "LAST", "--out", "OUT"]),
        ("snapshot", ["snapshot", "create"]),
    ],
)
def test_long_tools_show_a_progress_bar_with_a_total_and_an_eta_when_asked(
    data: tuple[Path, int], tmp_path: Path, label: str, args: list[str]
) -> None:
    directory, last = data
    args = [str(last) if item == "LAST" else str(tmp_path / "out") if item == "OUT" else item for item in args]
    shown = wallet(*args[:2], "--data", str(directory), *args[2:], "--progress")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert re.search(FINISHED.format(label=label), shown.stderr), shown.stderr
    if label == "wal replay":
        assert f" {last}/{last} " in shown.stderr  # records: the total is the LSNs to replay
    assert "%|" not in shown.stdout  # stdout stays the tool's own output
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    for snapshot in (directory / "snapshots").glob("*.snap"):
        snapshot.unlink()
    quiet = wallet(*args[:2], "--data", str(directory), *args[2:])  # stderr is a pipe here
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


# -- wal dump ------------------------------------------------------------------------------------

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.mark.parametrize("fmt", ["jsonl", "text"])
def test_dump_prints_json_with_rfc3339_times(data: tuple[Path, int], fmt: str) -> None:
    directory, last = data
    result = wallet("wal", "dump", "--data", str(directory), "--format", fmt)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == last
    for number, line in enumerate(lines, start=1):
        if fmt == "text":
            lsn, kind, fields = line.split(maxsplit=2)
            record = {"lsn": int(lsn), "type": kind, **json.loads(fields)}
        else:
            record = json.loads(line)
        assert record["lsn"] == number
        assert RFC3339.match(record["at"]), record
        assert "at_us" not in record
    assert "None" not in result.stdout  # JSON null, not a Python repr
    created = json.loads(wallet("wal", "dump", "--data", str(directory), "--to-lsn", "2").stdout.splitlines()[1])
    assert created["type"] == "WalletCreated" and created["metadata"] is None  # the default is jsonl
