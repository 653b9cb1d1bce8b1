"""Workers and a group's owner over real NATS nodes (``server._natsport``): the same answers as
the local port, coalesced both ways, confirmed before they leave; and the rules that keep a
worker's call from hanging: no owner subscribed (NATS's no-responders, at once), an owner that
stopped answering (its heartbeat falls silent), an owner replaced (a heartbeat of a newer
epoch), an owner that never answers (the timeout)."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import cast

import anyio
import anyio.abc
import msgpack
import pytest
import trio
import trio.testing

from ledger import (
    Asset,
    Committed,
    CreateAsset,
    CreateWallet,
    Duplicate,
    Idempotency,
    Ledger,
    TransactionType,
    Transfer,
    recover,
)
from server._member import heartbeat_subject
from server._natsnodes import NatsCluster
from server._natsport import CALL_TIMEOUT_S, NatsPort, rpc_subject, serve_nats
from server._port import LocalPort, Unavailable
from wal import StreamClient
from wal.testing import connected

_groups = itertools.count(100)  # each test its own group, so its subjects are its own


@pytest.fixture(scope="module")
def nodes(nats_nodes: NatsCluster) -> NatsCluster:
    return nats_nodes


@pytest.fixture
def client(nodes: NatsCluster) -> Iterator[StreamClient]:
    """The owner's connection (a member's ``StreamClient``)."""
    with connected(nodes.urls, "test-owner") as owner:
        yield owner


def _transfer(number: int, source: str | None, target: str, amount: int) -> Transfer:
    key = f"k{number}"
    return Transfer(
        transaction_id=f"tx{number}",
        type=TransactionType.DEPOSIT if source is None else TransactionType.TRANSFER,
        from_wallet_id=source, to_wallet_id=target, amount=amount, description=None, metadata=None,
        idempotency=Idempotency(scope="admin", key=key, fingerprint=key.encode()),
    )


async def _worker(nursery: trio.Nursery, port: NatsPort) -> None:
    await nursery.start(port.run)
    with trio.fail_after(15):
        await port.connected.wait()


def _beat(client: StreamClient, group: int, epoch: int, *, serving: bool = True) -> None:
    client.publish_core(heartbeat_subject(group), msgpack.packb([epoch, 1, "test", serving]))


async def test_a_worker_calls_the_owner_over_nats_and_gets_the_local_answers(
        nodes: NatsCluster, client: StreamClient, tmp_path: Path) -> None:
    group = next(_groups)
    confirmed: list[float] = []

    async def confirm(arrived: float) -> None:
        confirmed.append(arrived)

    async with trio.open_nursery() as nursery:
        ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=4)
        await nursery.start(ledger.run)
        local = LocalPort(ledger)
        await nursery.start(lambda task_status: serve_nats(client, group, lambda: local, confirm=confirm,
                                                           task_status=task_status))
        port = NatsPort(nodes.urls, group=group)
        await _worker(nursery, port)
        assert await port.create_asset(CreateAsset(code="USD", scale=2))
        for wallet_id in ("a", "b"):
            created = await port.create_wallet(
                CreateWallet(wallet_id=wallet_id, owner_id="o", asset="USD", metadata=None, idempotency=None))
            assert isinstance(created, list) and created
        deposit = await port.transfer(_transfer(1, None, "a", 100))
        assert isinstance(deposit, Committed) and deposit.event.amount == 100
        again = await port.transfer(_transfer(1, None, "a", 100))
        assert isinstance(again, Duplicate) and again.record.lsn == deposit.lsn
        # Many calls at once travel coalesced (fewer NATS messages than calls) and each gets
        # its own answer, confirmed before it left.
        frames_before, confirmed_before = port.frames_sent, len(confirmed)
        results: dict[int, object] = {}

        async def move(number: int) -> None:
            results[number] = await port.transfer(_transfer(10 + number, "a", "b", 1))

        async with trio.open_nursery() as movers:
            for number in range(50):
                movers.start_soon(move, number)
        assert len(results) == 50 and all(isinstance(result, Committed) for result in results.values())
        assert port.frames_sent - frames_before < 50
        assert len(confirmed) - confirmed_before == 50
        views = await port.wallets(["a", "b"])
        assert [view.balance for view in views] == [50, 50]
        assert views == await ledger.wallets(["a", "b"])
        assert (await port.status()).reason is None
        assert port.no_responders == 0
        nursery.cancel_scope.cancel()
    await ledger.stop()


async def test_with_no_owner_subscribed_a_call_fails_at_once(nodes: NatsCluster) -> None:
    """NATS answers "no responders" when nobody subscribes to the group's subject: the worker
    fails the call with Unavailable at once, long before the silence rule (2 s) or the timeout."""
    group = next(_groups)
    async with trio.open_nursery() as nursery:
        port = NatsPort(nodes.urls, group=group)
        await _worker(nursery, port)
        started = trio.current_time()
        with pytest.raises(Unavailable, match="no responders"):
            await port.wallet("a")
        elapsed = trio.current_time() - started
        assert elapsed < 0.5, elapsed
        assert port.no_responders == 1
        nursery.cancel_scope.cancel()


class _Stalling:
    """A port whose ``wallet`` never answers: an owner that took the request and went away."""

    def __init__(self) -> None:
        self.asked = trio.Event()

    async def wallet(self, wallet_id: str) -> None:
        self.asked.set()
        await trio.sleep_forever()


async def _stalled_call(nodes: NatsCluster, client: StreamClient, port: NatsPort, group: int,
                        during: Callable[[trio.CancelScope], Awaitable[None]],
                        epoch: int | None = None) -> tuple[BaseException, float]:
    """Serves ``group`` with a stalling port, makes one call (once the worker has heard a
    heartbeat of ``epoch``, if given), runs ``during(owner_scope)`` once the owner has it, and
    returns how the call ended and how long after ``during`` began."""
    stalling = _Stalling()
    owner_scope = trio.CancelScope()
    outcome: list[BaseException] = []
    ended = trio.Event()
    async with trio.open_nursery() as nursery:

        async def owner(*, task_status: anyio.abc.TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED) -> None:
            with owner_scope:
                await serve_nats(client, group, lambda: cast(LocalPort, stalling), task_status=task_status)

        await nursery.start(owner)
        await _worker(nursery, port)
        with trio.fail_after(10):
            while epoch is not None and port.epoch != epoch:
                await trio.to_thread.run_sync(_beat, client, group, epoch)
                await trio.sleep(0.05)

        async def call() -> None:
            try:
                await port.wallet("a")
            except Exception as error:  # the test looks at what it was
                outcome.append(error)
                ended.set()

        nursery.start_soon(call)
        with trio.fail_after(10):
            await stalling.asked.wait()
        began = trio.current_time()
        await during(owner_scope)
        with trio.fail_after(10):
            await ended.wait()
        nursery.cancel_scope.cancel()
    return outcome[0], trio.current_time() - began


async def test_a_call_in_flight_fails_when_the_owner_stops_answering_and_beating(
        nodes: NatsCluster, client: StreamClient) -> None:
    """The owner unsubscribes (stops serving) with the call in flight and its heartbeat stops:
    the call fails Unavailable after the silence interval, not after the timeout."""
    group = next(_groups)
    silence_s = 0.6
    port = NatsPort(nodes.urls, group=group, silence_s=silence_s, tick_s=0.05)
    beating = trio.CancelScope()

    async def stop_owner(owner_scope: trio.CancelScope) -> None:
        owner_scope.cancel()
        beating.cancel()

    async def beats(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with beating:
            task_status.started()
            while True:
                await trio.to_thread.run_sync(_beat, client, group, 1)
                await trio.sleep(0.1)

    async with trio.open_nursery() as nursery:
        await nursery.start(beats)
        error, elapsed = await _stalled_call(nodes, client, port, group, stop_owner)
    assert isinstance(error, Unavailable) and "fell silent" in str(error), error
    assert elapsed < silence_s + 1.0 < CALL_TIMEOUT_S, elapsed
    assert port.reachable() is False  # the port stopped with its nursery


async def test_a_call_in_flight_fails_at_once_when_a_newer_owner_beats(
        nodes: NatsCluster, client: StreamClient) -> None:
    """A heartbeat of a newer epoch than the owner the call was sent to: that owner was
    replaced, so the call fails at once (the silence interval is long here)."""
    group = next(_groups)
    port = NatsPort(nodes.urls, group=group, silence_s=30.0, tick_s=0.05)

    async def new_owner_beats(owner_scope: trio.CancelScope) -> None:
        await trio.to_thread.run_sync(_beat, client, group, 8)

    error, elapsed = await _stalled_call(nodes, client, port, group, new_owner_beats, epoch=7)
    assert isinstance(error, Unavailable) and "replaced (epoch 8" in str(error), error
    assert elapsed < 2.0, elapsed


async def test_a_call_the_owner_never_answers_ends_at_the_timeout(
        nodes: NatsCluster, client: StreamClient) -> None:
    """The backstop: an owner that beats and is subscribed but never answers one call."""
    group = next(_groups)
    port = NatsPort(nodes.urls, group=group, silence_s=30.0, call_timeout_s=0.5, tick_s=0.05)

    async def nothing(owner_scope: trio.CancelScope) -> None:
        pass

    error, elapsed = await _stalled_call(nodes, client, port, group, nothing)
    assert isinstance(error, Unavailable) and "did not answer within 0.5 s" in str(error), error
    assert elapsed < 2.0, elapsed


class _Wallets:
    async def wallet(self, wallet_id: str) -> str:
        return f"view of {wallet_id}"


async def test_a_call_waits_for_a_new_owner_to_serve_instead_of_reaching_only_the_paused_one(
        nodes: NatsCluster, client: StreamClient) -> None:
    """Found by the cluster crash loop (no acknowledgement for 60 s after an owner's SIGSTOP):
    a new owner beats from the moment it won, but subscribes only once its process runs. A call
    sent in between reached only the paused owner it replaced (still subscribed) and waited for
    the 45 s backstop. The worker now holds calls until the new owner's heartbeat says it serves."""
    group = next(_groups)
    port = NatsPort(nodes.urls, group=group, silence_s=30.0, tick_s=0.05)
    stalling = _Stalling()
    answer: list[object] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_nats(client, group, lambda: cast(LocalPort, stalling),
                                                           task_status=task_status))
        await _worker(nursery, port)
        with trio.fail_after(10):
            while port.epoch != 7:
                await trio.to_thread.run_sync(_beat, client, group, 7)
                await trio.sleep(0.05)
        # Epoch 7's owner is paused from here on; epoch 8's won and is recovering.
        with trio.fail_after(10):
            while port.epoch != 8:
                await trio.to_thread.run_sync(partial(_beat, client, group, 8, serving=False))
                await trio.sleep(0.05)
        frames = port.frames_sent

        async def call() -> None:
            answer.append(await port.wallet("a"))

        nursery.start_soon(call)
        await trio.sleep(0.5)
        assert port.held == 1 and port.frames_sent == frames and not answer
        assert not stalling.asked.is_set(), "the call went to the replaced owner"
        await nursery.start(lambda task_status: serve_nats(client, group, lambda: cast(LocalPort, _Wallets()),
                                                           task_status=task_status))
        await trio.to_thread.run_sync(_beat, client, group, 8)
        with trio.fail_after(10):
            while not answer:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert answer == ["view of a"]


async def test_a_call_held_for_an_owner_that_does_not_come_to_serve_fails_unavailable(
        nodes: NatsCluster, client: StreamClient) -> None:
    group = next(_groups)
    port = NatsPort(nodes.urls, group=group, silence_s=30.0, tick_s=0.05, start_wait_s=0.3)
    async with trio.open_nursery() as nursery:
        await _worker(nursery, port)
        with trio.fail_after(10):
            while port.epoch != 3:
                await trio.to_thread.run_sync(partial(_beat, client, group, 3, serving=False))
                await trio.sleep(0.05)
        with pytest.raises(Unavailable, match=r"new owner \(epoch 3\) is still recovering after 0.3 s"):
            await port.wallet("a")
        assert port.frames_sent == 0
        nursery.cancel_scope.cancel()


def test_the_subjects_are_named_per_group() -> None:
    assert [rpc_subject(g) for g in (0, 3)] == ["wallet.g0.rpc", "wallet.g3.rpc"]
    assert [heartbeat_subject(g) for g in (0, 3)] == ["wallet.g0.hb", "wallet.g3.hb"]


class _Assets:
    async def assets(self) -> list[Asset]:
        return [Asset(code="USD", scale=2, created_at_us=1)]


def test_both_sides_run_on_asyncio_too(nodes: NatsCluster, client: StreamClient) -> None:
    """``--loop asyncio``/``uvloop`` workers: NATS messages cross into an asyncio loop through
    ``call_soon_threadsafe`` instead of trio's token; answers and no-responders alike."""
    group = next(_groups)

    async def main() -> tuple[list[Asset], float]:
        async with anyio.create_task_group() as tasks:
            port = NatsPort(nodes.urls, group=group)
            await tasks.start(port.run)
            with anyio.fail_after(15):
                await port.connected.wait()
            started = anyio.current_time()
            with pytest.raises(Unavailable, match="no responders"):
                await port.assets()
            refused_s = anyio.current_time() - started
            await tasks.start(lambda task_status: serve_nats(client, group, lambda: cast(LocalPort, _Assets()),
                                                             task_status=task_status))
            # The owner's subscription reaches the worker's node over a route: a moment later
            # under load (a real owner's heartbeat, which says it serves, travels behind it).
            with anyio.fail_after(10):
                while True:
                    try:
                        answered = await port.assets()
                        break
                    except Unavailable:
                        await anyio.sleep(0.05)
            tasks.cancel_scope.cancel()
        return answered, refused_s

    answered, refused_s = anyio.run(main, backend="asyncio")
    assert answered == [Asset(code="USD", scale=2, created_at_us=1)]
    assert refused_s < 0.5, refused_s


class _Slow:
    """A port whose ``wallet`` answers once the test lets it."""

    def __init__(self) -> None:
        self.asked = trio.Event()
        self.go = trio.Event()

    async def wallet(self, wallet_id: str) -> str:
        self.asked.set()
        await self.go.wait()
        return f"view of {wallet_id}"


async def test_a_stopping_owner_unsubscribes_at_once_and_answers_the_calls_in_hand(
        nodes: NatsCluster, client: StreamClient) -> None:
    """``stop``: requests sent after it are refused at once, then get no-responders (the
    next owner is who to wait for), while the call the owner already holds is still answered."""
    group = next(_groups)
    slow = _Slow()
    stop = trio.Event()
    answers: list[object] = []
    async with trio.open_nursery() as nursery:
        served = trio.Event()

        async def owner(*, task_status: anyio.abc.TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED) -> None:
            await serve_nats(client, group, lambda: cast(LocalPort, slow), stop=stop, drain_s=10.0,
                             task_status=task_status)
            served.set()

        await nursery.start(owner)
        port = NatsPort(nodes.urls, group=group, silence_s=30.0)  # no heartbeats here
        await _worker(nursery, port)
        answered = trio.Event()

        async def held() -> None:
            answers.append(await port.wallet("a"))
            answered.set()

        nursery.start_soon(held)
        with trio.fail_after(10):
            await slow.asked.wait()
        stop.set()
        # The owner has seen the stop (it waits for its unsubscription in a thread): a request
        # sent from now on cannot be taken as a call any more.
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(10):
            refusals = []
            while True:  # refused by the owner until its unsubscription took effect, then NATS
                with pytest.raises(Unavailable) as refused:
                    await port.wallet("b")
                refusals.append(str(refused.value))
                if "no responders" in refusals[-1]:
                    break
            assert all("is stopping" in refusal for refusal in refusals[:-1]), refusals
        assert not answers and not served.is_set()
        slow.go.set()
        with trio.fail_after(10):
            await served.wait()
            await answered.wait()
        assert answers == ["view of a"]
        nursery.cancel_scope.cancel()


async def test_while_no_owner_beats_a_call_fails_before_it_is_sent(
        nodes: NatsCluster, client: StreamClient) -> None:
    """A subscription NATS still routes to (a host it has not noticed is gone) gets nothing:
    once the owner's heartbeat has been silent for the interval, a call fails at once."""
    group = next(_groups)
    silence_s = 0.3
    stalling = _Stalling()
    async with trio.open_nursery() as nursery:

        async def owner(*, task_status: anyio.abc.TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED) -> None:
            await serve_nats(client, group, lambda: cast(LocalPort, stalling), task_status=task_status)

        await nursery.start(owner)
        port = NatsPort(nodes.urls, group=group, silence_s=silence_s, tick_s=0.05)
        await _worker(nursery, port)
        with trio.fail_after(10):
            while port.epoch != 1:
                await trio.to_thread.run_sync(_beat, client, group, 1)
                await trio.sleep(0.05)
        await trio.sleep(silence_s)  # the silence itself is what is tested
        started = trio.current_time()
        with pytest.raises(Unavailable, match="no heartbeat"):
            await port.wallet("a")
        assert trio.current_time() - started < 0.1
        assert not stalling.asked.is_set()  # never sent
        nursery.cancel_scope.cancel()
