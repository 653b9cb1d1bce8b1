"""The history read model for holds: a pending hold shows on the sender's statement without
moving its balance; a capture replaces it with posted entries at the capture's LSN; a void
marks it voided (a refused withdrawal: failed); the transaction row follows; the result is the
same whether creation and resolution land in one projector batch or in two; and a schema 1
file is migrated in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from ledger import (
    History,
    HoldCaptured,
    HoldCreated,
    HoldVoided,
    TransactionStatus,
    TransactionType,
    Transferred,
    VoidReason,
    WalletCreated,
)
from ledger._history import SCHEMA_VERSION


def created(lsn: int, tx: str, amount: int, type_: TransactionType = TransactionType.TRANSFER) -> HoldCreated:
    return HoldCreated(transaction_id=tx, type=type_, from_wallet_id="a",
                       to_wallet_id="b" if type_ == TransactionType.TRANSFER else "treasury:USD",
                       asset="USD", amount=amount, description="hold", metadata=None, at_us=lsn * 10,
                       deadline_us=lsn * 10 + 5 if type_ == TransactionType.TRANSFER else 0,
                       destination=None if type_ == TransactionType.TRANSFER else {"iban": "X"},
                       idempotency=None)


def records() -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = [
        (1, WalletCreated(wallet_id="a", owner_id="o", asset="USD", metadata=None, at_us=1, idempotency=None)),
        (2, WalletCreated(wallet_id="b", owner_id="o", asset="USD", metadata=None, at_us=2, idempotency=None)),
        (3, Transferred(transaction_id="dep", type=TransactionType.DEPOSIT, from_wallet_id="treasury:USD",
                        to_wallet_id="a", asset="USD", amount=100, description=None, metadata=None, at_us=30,
                        idempotency=None)),
        (4, created(4, "h1", 30)),
        (5, created(5, "h2", 20)),
        (6, created(6, "wd", 10, TransactionType.WITHDRAWAL)),
    ]
    common = dict(type=TransactionType.TRANSFER, from_wallet_id="a", to_wallet_id="b", asset="USD",
                  description="hold", metadata=None, idempotency=None)
    out.append((7, HoldCaptured(transaction_id="h1", amount=25, held_amount=30, created_at_us=40, created_lsn=4,
                                at_us=70, reference=None, **common)))  # type: ignore[arg-type]
    out.append((8, HoldVoided(transaction_id="h2", amount=20, created_at_us=50, created_lsn=5, at_us=80,
                              reason=VoidReason.EXPIRED, detail=None, **common)))  # type: ignore[arg-type]
    out.append((9, HoldVoided(transaction_id="wd", type=TransactionType.WITHDRAWAL, from_wallet_id="a",
                              to_wallet_id="treasury:USD", asset="USD", amount=10, description="hold",
                              metadata=None, created_at_us=60, created_lsn=6, at_us=90,
                              reason=VoidReason.REFUSED, detail="refused", idempotency=None)))
    return out


def read(history: History, wallet_id: str, **filters: Any) -> list[tuple[Any, ...]]:
    async def go() -> list[tuple[Any, ...]]:
        entries = await history.entries(wallet_id, before=None, limit=100, **filters)
        return [(e.lsn, e.transaction_id, e.direction, e.amount, e.balance_after, e.status) for e in entries]

    return trio.run(go)


def row(history: History, transaction_id: str) -> Any:
    return trio.run(history.transaction, transaction_id)


@pytest.mark.parametrize("split", [None, 4, 5, 6, 7, 8])
def test_statements_and_rows_follow_the_holds(tmp_path: Path, split: int | None) -> None:
    history = History.open(tmp_path / "h.sqlite3")
    try:
        everything = records()
        if split is None:
            history.project_blocking(everything)
        else:
            history.project_blocking(everything[:split])
            history.project_blocking(everything[split:])
        assert read(history, "a") == [
            (7, "h1", "debit", 25, 75, TransactionStatus.POSTED),
            (6, "wd", "debit", 10, 100, TransactionStatus.FAILED),
            (5, "h2", "debit", 20, 100, TransactionStatus.VOIDED),
            (3, "dep", "credit", 100, 100, TransactionStatus.POSTED),
        ]
        assert read(history, "b") == [(7, "h1", "credit", 25, 25, TransactionStatus.POSTED)]
        assert read(history, "a", status=TransactionStatus.VOIDED) == [
            (5, "h2", "debit", 20, 100, TransactionStatus.VOIDED)
        ]
        captured = row(history, "h1")
        assert (captured.status, captured.amount, captured.lsn) == (TransactionStatus.POSTED, 25, 7)
        assert row(history, "h2").status == TransactionStatus.VOIDED
        assert row(history, "wd").status == TransactionStatus.FAILED
        assert row(history, "wd").type == TransactionType.WITHDRAWAL
    finally:
        history.stop_thread()


def test_a_pending_hold_shows_without_moving_the_balance(tmp_path: Path) -> None:
    history = History.open(tmp_path / "h.sqlite3")
    try:
        history.project_blocking(records()[:4])
        assert read(history, "a")[0] == (4, "h1", "debit", 30, 100, TransactionStatus.PENDING)
        assert row(history, "h1").status == TransactionStatus.PENDING
        assert read(history, "b") == []
    finally:
        history.stop_thread()


def test_a_schema_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    connection = sqlite3.connect(path)
    connection.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE transactions (
            id TEXT PRIMARY KEY, lsn INTEGER NOT NULL, type INTEGER NOT NULL,
            from_wallet_id TEXT NOT NULL, to_wallet_id TEXT NOT NULL, asset TEXT NOT NULL,
            amount INTEGER NOT NULL, description TEXT, metadata TEXT, at_us INTEGER NOT NULL);
        CREATE TABLE entries (
            wallet_id TEXT NOT NULL, lsn INTEGER NOT NULL, transaction_id TEXT NOT NULL,
            type INTEGER NOT NULL, direction INTEGER NOT NULL, amount INTEGER NOT NULL,
            balance_after INTEGER NOT NULL, counterparty_wallet_id TEXT NOT NULL, at_us INTEGER NOT NULL,
            PRIMARY KEY (wallet_id, lsn)) WITHOUT ROWID;
        INSERT INTO meta VALUES ('schema', 1), ('applied_lsn', 3);
        INSERT INTO transactions VALUES ('dep', 3, 0, 'treasury:USD', 'a', 'USD', 100, NULL, NULL, 30);
        INSERT INTO entries VALUES ('a', 3, 'dep', 0, 1, 100, 100, 'treasury:USD', 30);
        CREATE TABLE balances (wallet_id TEXT PRIMARY KEY, balance INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO balances VALUES ('a', 100), ('treasury:USD', -100);
    """)
    connection.close()
    history = History.open(path)
    try:
        assert history.applied_lsn == 3
        assert read(history, "a") == [(3, "dep", "credit", 100, 100, TransactionStatus.POSTED)]
        history.project_blocking(records()[3:4])
        assert read(history, "a")[0] == (4, "h1", "debit", 30, 100, TransactionStatus.PENDING)
    finally:
        history.stop_thread()
    check = sqlite3.connect(path)
    assert check.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (SCHEMA_VERSION,)  # through schema 2 to the current one
    check.close()
