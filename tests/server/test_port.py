"""The ledger port over a real Unix socket (``serve_port`` <-> ``RemotePort``): the same answers
as the local port, coalesced frames, immediate revocation, and a dropped ledger process turned
into ``Unavailable`` rather than a hang."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio
import pytest
import trio

from ledger import (
    Committed,
    CreateAsset,
    CreateToken,
    CreateWallet,
    Duplicate,
    Gone,
    Idempotency,
    Ledger,
    Reason,
    Rejection,
    RevokeToken,
    TransactionQuery,
    TransactionType,
    Transfer,
    WalletView,
    recover,
)
from server._port import LocalPort, RemotePort, Unauthorized, Unavailable, current_auth, serve_port


def _transfer(number: int, source: str | None, target: str, amount: int, key: str) -> Transfer:
    return Transfer(
        transaction_id=f"tx{number}",
        type=TransactionType.DEPOSIT if source is None else TransactionType.TRANSFER,
        from_wallet_id=source, to_wallet_id=target, amount=amount, description=None, metadata={"n": number},
        idempotency=Idempotency(scope="admin", key=key, fingerprint=key.encode()),
    )


class _Pair:
    def __init__(self, ledger: Ledger, remote: RemotePort, scope: trio.CancelScope) -> None:
        self.ledger = ledger
        self.remote = remote
        self.server_scope = scope
        self.transport = trio.CancelScope()

    async def stop(self) -> None:
        self.transport.cancel()
        await self.ledger.stop()


async def _start(nursery: trio.Nursery, tmp_path: Path) -> _Pair:
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=4)
    await nursery.start(ledger.run)
    port = LocalPort(ledger)
    path = str(tmp_path / "ledger.sock")
    listener = await anyio.create_unix_listener(path)
    server_scope = trio.CancelScope()

    async def serve() -> None:
        with server_scope:
            await serve_port(lambda: port, listener)

    remote = RemotePort(path)
    pair = _Pair(ledger, remote, server_scope)

    async def transport(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with pair.transport:
            async with trio.open_nursery() as inner:
                inner.start_soon(serve)
                await inner.start(remote.run)
                task_status.started()

    await nursery.start(transport)
    await remote.connected.wait()
    return pair


async def test_the_remote_port_gives_the_local_answers(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        pair = await _start(nursery, tmp_path)
        remote = pair.remote
        assert await remote.create_asset(CreateAsset(code="USD", scale=2))
        assert (await remote.asset("USD")).scale == 2
        for wallet_id in ("a", "b"):
            created = await remote.create_wallet(
                CreateWallet(wallet_id=wallet_id, owner_id="o", asset="USD", metadata=None, idempotency=None)
            )
            assert isinstance(created, list) and created
        deposit = await remote.transfer(_transfer(1, None, "a", 100, "k1"))
        assert isinstance(deposit, Committed) and deposit.event.amount == 100
        again = await remote.transfer(_transfer(1, None, "a", 100, "k1"))
        assert isinstance(again, Duplicate) and again.record.lsn == deposit.lsn
        refused = await remote.transfer(_transfer(2, "a", "b", 1000, "k2"))
        assert isinstance(refused, Rejection) and refused.reason == Reason.INSUFFICIENT_FUNDS
        # Many calls at once travel coalesced and each gets its own answer.
        results: dict[int, object] = {}

        async def move(number: int) -> None:
            results[number] = await remote.transfer(_transfer(10 + number, "a", "b", 1, f"m{number}"))

        async with trio.open_nursery() as movers:
            for number in range(50):
                movers.start_soon(move, number)
        assert all(isinstance(result, Committed) for result in results.values())
        views = await remote.wallets(["a", "b"])
        assert [type(view) for view in views] == [WalletView, WalletView]
        assert [view.balance for view in views] == [50, 50]
        assert views == await pair.ledger.wallets(["a", "b"])
        # Reads of the history read model show what was durable when they arrived.
        row = await remote.transaction("tx1")
        assert row is not None and row.amount == 100
        entries = await remote.entries("b", None, 100, None, None, None, None)
        assert len(entries) == 50
        rows, before = await remote.search_transactions(TransactionQuery(wallet_id="a", min_amount=100, limit=5))
        assert ([row.id for row in rows], before) == (["tx1"], None)
        found = await remote.events(0, 1000, 0.0)
        assert found and found[-1][0] == (await remote.status()).durable_lsn
        assert (await remote.status()).reason is None
        await pair.stop()


async def test_a_revoked_token_stops_at_once_on_every_connection(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        pair = await _start(nursery, tmp_path)
        remote = pair.remote
        token_hash = hashlib.sha256(b"wt_secret").digest()
        assert await remote.create_token(CreateToken(token_hash=token_hash, prefix="wt_secret", owner_id="o"))
        current_auth.set(token_hash)
        assert await remote.assets() == []
        current_auth.set(None)
        assert await remote.revoke_token(RevokeToken(prefix="wt_secret"))
        current_auth.set(token_hash)
        with pytest.raises(Unauthorized):
            await remote.assets()
        current_auth.set(None)
        await pair.stop()


async def test_gone_crosses_with_its_lsn(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        pair = await _start(nursery, tmp_path)

        async def gone(after: int, *, limit: int, wait_s: float = 0) -> list[object]:
            raise Gone(42)

        pair.ledger.events.read = gone  # type: ignore[method-assign]
        with pytest.raises(Gone) as caught:
            await pair.remote.events(0, 10, 0.0)
        assert caught.value.oldest_lsn == 42
        await pair.stop()


async def test_calls_fail_unavailable_when_the_ledger_side_goes_away(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        pair = await _start(nursery, tmp_path)
        assert await pair.remote.assets() == []
        pair.server_scope.cancel()
        with trio.fail_after(5):
            while pair.remote.connected.is_set():
                await trio.sleep(0.01)
        with pytest.raises(Unavailable):
            await pair.remote.assets()
        assert (await pair.remote.status()).reason is not None
        await pair.stop()


async def test_batches_cross_packed_and_answer_as_in_process(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        pair = await _start(nursery, tmp_path)
        remote = pair.remote
        assert await remote.create_asset(CreateAsset(code="USD", scale=2))
        for wallet_id in ("a", "b"):
            await remote.create_wallet(
                CreateWallet(wallet_id=wallet_id, owner_id="o", asset="USD", metadata=None, idempotency=None)
            )
        assert isinstance(await remote.transfer(_transfer(1, None, "a", 10, "d")), Committed)
        items = [_transfer(100 + n, "a", "b", 3, f"b{n}") for n in range(5)]  # the 4th has no funds
        outcome = await remote.transfer_batch(items, False)
        assert [type(result) for result in outcome] == [Committed] * 3 + [Rejection] * 2
        assert outcome[3].reason == Reason.INSUFFICIENT_FUNDS
        again = await remote.transfer_batch(items[:3], False)
        assert [type(result) for result in again] == [Duplicate] * 3
        assert [result.record.event for result in again] == [result.event for result in outcome[:3]]
        failed = await remote.transfer_batch([_transfer(200, "a", "b", 999, "x")], True)
        assert type(failed).__name__ == "BatchFailed"
        await pair.stop()


async def test_a_call_made_before_the_connection_is_up_waits_for_it(tmp_path: Path) -> None:
    """A worker just started (or whose ledger restarts) gets a request before its connection is
    up: the call waits for the connection rather than answering 503 at once."""
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        path = str(tmp_path / "late.sock")
        remote = RemotePort(path, reconnect_s=0.05)
        transport = trio.CancelScope()
        answers: list[object] = []

        async def run() -> None:
            with transport:
                async with trio.open_nursery() as inner:
                    await inner.start(remote.run)

                    async def ask() -> None:
                        answers.append(await remote.assets())

                    inner.start_soon(ask)
                    await trio.sleep(0.3)  # the call is waiting; now the ledger side listens
                    listener = await anyio.create_unix_listener(path)
                    port = LocalPort(ledger)
                    inner.start_soon(serve_port, lambda: port, listener)
                    with trio.fail_after(5):
                        while not answers:
                            await trio.sleep(0.01)
                    inner.cancel_scope.cancel()

        await run()
        assert answers == [[]]
        await ledger.stop()
