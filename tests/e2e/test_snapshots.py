"""Snapshots, compaction, graceful shutdown and the operator's tools, on real data directories
produced by the real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._budget import loops
from tests.e2e._load import (
    Ledgerbook,
    balances,
    expected_balances,
    history_ids,
    send,
    setup_wallets,
)
from tests.e2e._server import TEST_LOOPS, ServerProcess, on_each_loop, started_with_assets
from tests.e2e.test_holds import funded, money, pending, resolve
from tests.e2e.test_withdrawals import accepted, ends, get

ROOT = Path(__file__).resolve().parents[2]
DEPOSIT = 10**9


def wallet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def replayed_on_start(server: ServerProcess) -> int:
    found = re.findall(r"ready: (\d+) records replayed", server.log())
    assert found, server.log()
    return int(found[-1])


async def load(server: ServerProcess, ids: list[str], count: int, prefix: str, book: Ledgerbook) -> None:
    async with server.async_client() as http:
        for index in range(count):
            source, target = ids[index % len(ids)], ids[(index + 1) % len(ids)]
            await send(http, f"{prefix}-{index}", {"from_wallet_id": source, "to_wallet_id": target, "amount": 1 + index % 7}, book)


@on_each_loop
async def test_sigterm_exits_0_writes_a_snapshot_and_restart_replays_nothing(server: ServerProcess) -> None:
    import trio

    ids = [f"g{index}" for index in range(6)]
    async with server.async_client() as http:
        await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
    book = Ledgerbook()

    async def client(number: int) -> None:
        await load(server, ids, 40, f"c{number}", book)

    async with trio.open_nursery() as nursery:
        for number in range(8):
            nursery.start_soon(client, number)
        await trio.sleep(0.3)
        # SIGTERM under load: in-flight requests are answered, the rest are refused or cut.
        assert await trio.to_thread.run_sync(server.terminate) == 0
    assert "stopped cleanly" in server.log()
    assert list((server.data_dir / "snapshots").glob("*.snap"))
    server.start()
    assert replayed_on_start(server) == 0
    async with server.async_client() as http:
        for key, body in list(book.unanswered.items()):
            await send(http, key, body, book)
        assert not book.unanswered and not book.rejected
        assert await balances(http, ids) == expected_balances(ids, DEPOSIT, book.acknowledged)


def stopped_at(server: ServerProcess) -> int:
    """The durable LSN the last graceful stop reported."""
    found = re.findall(r"stopped cleanly at LSN (\d+)", server.log())
    assert found, server.log_tail()
    return int(found[-1])


def assert_snapshot_at(server: ServerProcess, lsn: int) -> None:
    """``wallet snapshot list`` shows an image at ``lsn`` and ``wallet snapshot verify`` loads
    every image (digest and invariants)."""
    listed = wallet("snapshot", "list", "--data", str(server.data_dir))
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()[1:]  # below the header line
    assert lsn in [int(line.split()[0]) for line in rows], listed.stdout
    verified = wallet("snapshot", "verify", "--data", str(server.data_dir))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"OK (LSN {lsn}," in verified.stdout, verified.stdout


@pytest.mark.parametrize("loop", loops(TEST_LOOPS))  # uvloop too under `make test-long`
def test_sigterm_with_pending_holds_and_withdrawals_exits_0_and_snapshots_them(tmp_path: Path, loop: str) -> None:
    # The final snapshot used to be built from the wallets alone: with a hold or a withdrawal in
    # the ledger its invariant check failed, the process exited 1 and wrote no image.
    server = started_with_assets(tmp_path / "data", "USD", loop=loop)
    try:
        with server.client() as http:
            source, target = funded(http)
            kept = pending(http, source, target, 100)
            captured = pending(http, source, target, 50)
            assert resolve(http, captured["id"], "capture").status_code == 200
            paid = accepted(http, source, 30)
            ends(http, paid["id"], "completed")  # the built-in simulated bank pays
            assert money(http, source) == (920, 100, 820)
        assert server.terminate() == 0, server.log_tail()
        assert_snapshot_at(server, stopped_at(server))

        # Now a bank that always fails: the next withdrawal stays pending (or processing) with
        # its hold through the second graceful stop.
        server.extra_args = ["--bank-failure-rate", "1", "--payout-max-attempts", "1000000"]
        server.start()
        assert replayed_on_start(server) == 0
        with server.client() as http:
            assert http.get(f"/v1/transactions/{kept['id']}").json()["status"] == "pending"
            assert get(http, paid["id"])["status"] == "completed"
            waiting = accepted(http, source, 40)
            assert money(http, source) == (920, 140, 780)
        assert server.terminate() == 0, server.log_tail()
        assert_snapshot_at(server, stopped_at(server))

        server.extra_args = []
        server.start()
        assert replayed_on_start(server) == 0
        with server.client() as http:
            assert http.get(f"/v1/transactions/{kept['id']}").json()["status"] == "pending"
            # The bank pays it now; the hold was there to be captured.
            ends(http, waiting["id"], "completed")
            assert resolve(http, kept["id"], "capture").status_code == 200
            assert money(http, source) == (780, 0, 780)
            assert money(http, target) == (150, 0, 150)
        assert server.terminate() == 0, server.log_tail()
    finally:
        server.kill()


async def test_periodic_snapshots_compact_the_log_and_restart_replays_only_the_suffix(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", extra_args=["--snapshot-every", "50", "--segment-bytes", "4096"])
    server.start()
    try:
        ids = [f"p{index}" for index in range(5)]
        async with server.async_client() as http:
            await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
        book = Ledgerbook()
        await load(server, ids, 300, "p", book)
        import trio

        for _ in range(100):  # the snapshotter checks once a second
            if "WAL segment(s) below" in server.log():
                break
            await trio.sleep(0.1)
        assert "snapshot at LSN" in server.log()
        assert "WAL segment(s) below" in server.log()
        segments = sorted((server.data_dir / "wal").glob("*.wal"))
        assert segments[0].name != "00000000000000000001.wal", "nothing was compacted"
        assert len(list((server.data_dir / "snapshots").glob("*.snap"))) <= 2
        async with server.async_client() as http:
            before_history = await history_ids(http, ids[0])
        server.restart()  # SIGKILL: no final snapshot
        assert replayed_on_start(server) < 300
        async with server.async_client() as http:
            assert await balances(http, ids) == expected_balances(ids, DEPOSIT, book.acknowledged)
            assert await history_ids(http, ids[0]) == before_history  # history outlives its log
        server.kill()
        assert wallet("wal", "verify", "--data", str(server.data_dir)).returncode == 0
    finally:
        server.kill()


async def test_a_damaged_newest_snapshot_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    server.start()
    try:
        ids = ["s0", "s1"]
        async with server.async_client() as http:
            await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
        book = Ledgerbook()
        await load(server, ids, 20, "a", book)
        with server.client() as http:
            assert http.post("/v1/admin/snapshots").status_code == 201
        await load(server, ids, 20, "b", book)
        with server.client() as http:
            assert http.post("/v1/admin/snapshots").status_code == 201
        server.kill()
        newest = sorted((server.data_dir / "snapshots").glob("*.snap"))[-1]
        data = bytearray(newest.read_bytes())
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
        assert wallet("snapshot", "verify", "--data", str(server.data_dir)).returncode == 1
        server.start()
        assert "is damaged" in server.log()
        async with server.async_client() as http:
            assert await balances(http, ids) == expected_balances(ids, DEPOSIT, book.acknowledged)
    finally:
        server.kill()


async def test_the_replay_tool_rebuilds_the_ledger_as_it_was(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    server.start()
    try:
        ids = ["r0", "r1"]
        async with server.async_client() as http:
            await setup_wallets(http, ids, asset="USD", deposit=DEPOSIT)
        book = Ledgerbook()
        await load(server, ids, 10, "early", book)
        with server.client() as http:
            middle = http.get("/v1/wallets/r0").json()
            middle_lsn = http.get("/ready").json()["durable_lsn"]
        early = dict(book.acknowledged)
        await load(server, ids, 10, "late", book)
        # A running server holds the directory: tools that change it refuse.
        assert wallet("wal", "repair", "--data", str(server.data_dir)).returncode == 2
        server.terminate()
    finally:
        server.kill()
    data = server.data_dir
    verify = wallet("wal", "verify", "--data", str(data))
    assert verify.returncode == 0, verify.stdout
    dump = wallet("wal", "dump", "--data", str(data), "--format", "jsonl")
    assert dump.returncode == 0 and len(dump.stdout.splitlines()) == middle_lsn + 10
    listing = wallet("snapshot", "list", "--data", str(data))
    assert listing.returncode == 0 and ".snap" in listing.stdout
    assert wallet("snapshot", "verify", "--data", str(data)).returncode == 0

    out = tmp_path / "at-middle"
    replay = wallet("wal", "replay", "--data", str(data), "--until-lsn", str(middle_lsn), "--out", str(out))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "balances digest" in replay.stdout
    assert wallet("wal", "verify", "--data", str(out)).returncode == 0
    restored = ServerProcess(out)
    restored.start()
    try:
        with restored.client() as http:
            assert http.get("/v1/wallets/r0").json()["balance"] == middle["balance"]
            assert http.get("/ready").json()["durable_lsn"] == middle_lsn
        async with restored.async_client() as http:
            assert await balances(http, ids) == expected_balances(ids, DEPOSIT, early)
    finally:
        restored.kill()

    at_time = tmp_path / "at-time"
    replay = wallet("wal", "replay", "--data", str(data), "--until-time", middle["updated_at"], "--out", str(at_time))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert f"LSN {middle_lsn}" in replay.stdout

    # A damaged log: verify says where, dump refuses, replay past the damage refuses.
    segment = sorted((data / "wal").glob("*.wal"))[0]
    raw = bytearray(segment.read_bytes())
    raw[200] ^= 0x01
    segment.write_bytes(bytes(raw))
    verify = wallet("wal", "verify", "--data", str(data))
    assert verify.returncode == 1 and "FAILED" in verify.stdout and "LSN" in verify.stdout
    assert wallet("wal", "dump", "--data", str(data)).returncode == 1
    damaged = wallet("wal", "replay", "--data", str(data), "--until-lsn", str(middle_lsn + 5), "--out", str(tmp_path / "x"))
    assert damaged.returncode == 1
