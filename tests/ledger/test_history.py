"""The history projector: a batch is applied in one SQLite transaction together with its LSN, so a
failure in the middle of a batch leaves neither part of it nor a moved LSN; projecting again gives
exactly the incremental result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ledger import History, TransactionType, Transferred, WalletCreated


def events() -> list[tuple[int, Any]]:
    records: list[tuple[int, Any]] = []
    for index, wallet_id in enumerate(["a", "b"], start=1):
        records.append((index, WalletCreated(wallet_id=wallet_id, owner_id="o", asset="USD", metadata=None,
                                             at_us=index, idempotency=None)))
    for lsn in range(3, 23):
        source, target = ("a", "b") if lsn % 2 else ("b", "a")
        records.append((lsn, Transferred(transaction_id=f"t{lsn}", type=TransactionType.TRANSFER,
                                         from_wallet_id=source, to_wallet_id=target, asset="USD", amount=lsn,
                                         description=None, metadata=None, at_us=lsn * 10, idempotency=None)))
    return records


def statement(history: History, wallet_id: str) -> list[tuple[int, int]]:
    import trio

    async def read() -> list[tuple[int, int]]:
        entries = await history.entries(wallet_id, before=None, limit=1000)
        return [(entry.lsn, entry.balance_after) for entry in entries]

    return trio.run(read)


def test_a_failed_batch_leaves_nothing_behind_and_a_retry_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = events()
    history = History.open(tmp_path / "h.sqlite3")
    try:
        history.project_blocking(records[:10])
        assert history.applied_lsn == 10
        before = statement(history, "a")
        connection = history._connection
        original = connection.executemany
        calls = {"n": 0}

        async def failing(sql: str, rows: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 2:  # after the transactions went in, before the entries
                raise OSError("disk went away (simulated)")
            return await original(sql, rows)

        monkeypatch.setattr(connection, "executemany", failing)
        with pytest.raises(OSError):
            history.project_blocking(records[10:])
        monkeypatch.setattr(connection, "executemany", original)
        assert history.applied_lsn == 10
        assert statement(history, "a") == before  # nothing of the failed batch is visible
        history._fed_lsn = 10  # the projector resumes from the LSN the database holds
        history.project_blocking(records[10:])
        assert history.applied_lsn == 22
        incremental = statement(history, "a")
    finally:
        history.stop_thread()
    rebuilt = History.open(tmp_path / "rebuilt.sqlite3")
    try:
        rebuilt.project_blocking(records)
        assert statement(rebuilt, "a") == incremental
        reopened = History.open(tmp_path / "h.sqlite3")
        try:
            assert reopened.applied_lsn == 22
        finally:
            reopened.stop_thread()
    finally:
        rebuilt.stop_thread()
    # Each entry's balance_after follows from the amounts, in log order.
    balance = 0
    expected = []
    for lsn, event in records:
        if isinstance(event, Transferred):
            balance += event.amount if event.to_wallet_id == "a" else -event.amount
            expected.append((lsn, balance))
    assert incremental == expected[::-1]
