"""A log written by an earlier version still replays to the same state: ``tests/fixtures/log-v1``
holds every kind of record codec version 1 writes (``tests/fixtures/make_log_v1.py`` made it),
kept as bytes. A change to the codec or to ``apply`` that reads them differently fails here."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from ledger._codec import decode_event
from ledger._recovery import recover
from ledger.testing import digest
from server.cli import main as wallet
from wal import ScanResult, scan

FIXTURE = Path(__file__).parent.parent / "fixtures" / "log-v1"
LAST_LSN = 31
DIGEST = "7a891a444573cc216495796e0cc5a913"


def copy(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    return data


def test_the_old_log_replays_to_the_state_it_was_written_with(tmp_path: Path) -> None:
    recovered = recover(copy(tmp_path), project_history=False)
    assert recovered.state.directory.lsn == LAST_LSN
    assert digest(recovered.state) == DIGEST
    assert sorted(recovered.state.holds) == ["h2"]  # h0 captured, h1 voided


def test_it_holds_every_kind_of_record(tmp_path: Path) -> None:
    kinds = Counter(type(decode_event(record.payload)).__name__ for record in scan(copy(tmp_path) / "wal", ScanResult()))
    assert set(kinds) >= {"AssetCreated", "WalletCreated", "WalletStatusChanged", "Transferred",
                          "TransfersPosted", "HoldCreated", "HoldCaptured", "HoldVoided"}


def test_wal_verify_accepts_it(tmp_path: Path) -> None:
    assert wallet(["wal", "verify", "--data", str(copy(tmp_path)), "--no-progress"]) == 0
