"""Helpers for testing the payout workers (shipped, like ``trio.testing``): an in-memory
``PayoutLedger`` that records every call, and a scripted, instrumented ``Bank`` (unit and end to
end tests); for webhooks, ``Receivers``: an httpx transport that hands each host's requests to
its own in-process app (``wallet webhook-sim``'s); ``in_process_api``: the whole API over a real
ledger in this process, for route tests. Nothing here is used by the server itself."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx

from ledger import Ledger, recover
from server._payouts import BankResult, PayoutOrder
from server._port import LocalPort
from server.api import Deps, build_app

PAYABLE = ("pending", "processing")


@asynccontextmanager
async def in_process_api(tmp_path: Path, *, shards: int = 4) -> AsyncIterator[httpx.AsyncClient]:
    """A ledger on ``tmp_path`` with ``shards`` actors, the API in front of it through a
    ``LocalPort`` (admin token ``admin``, sent on every request), and the asset USD (scale 2).
    On exit the ledger's invariants are checked and it stops."""
    ledger = Ledger(await anyio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=shards)
    async with anyio.create_task_group() as group:
        await group.start(ledger.run)
        app = build_app(Deps.build(admin_token="admin", port=LocalPort(ledger)))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                     headers={"Authorization": "Bearer admin"}) as http:
            assert (await http.post("/v1/assets", json={"code": "USD", "scale": 2})).status_code == 201
            yield http
        ledger.check_invariants()
        await ledger.stop()


def order(withdrawal_id: str, *, amount: int = 100, asset: str = "USD", account: str = "acct-1",
          attempts: int = 0, next_attempt_at_us: int = 0) -> PayoutOrder:
    return PayoutOrder(withdrawal_id=withdrawal_id, wallet_id="wallet-" + withdrawal_id, asset=asset,
                       amount=amount, destination={"account": account}, attempts=attempts,
                       next_attempt_at_us=next_attempt_at_us)


class FakeLedger:
    """Status per withdrawal as the real ledger keeps it. ``raises[method]`` is a list of
    exceptions the next calls of that method raise (before changing anything)."""

    def __init__(self, orders: list[PayoutOrder], *, clock: Callable[[], int] = lambda: 0,
                 statuses: dict[str, str] | None = None) -> None:
        self.orders = {item.withdrawal_id: item for item in orders}
        self.status = {item.withdrawal_id: "processing" if item.attempts else "pending" for item in orders}
        self.status.update(statuses or {})
        self.reference: dict[str, str | None] = {}
        self.reason: dict[str, str] = {}
        self.calls: list[tuple[Any, ...]] = []  # (method, id, ..., clock at the call)
        self.raises: dict[str, list[BaseException]] = {}
        self.clock = clock
        self._changed: anyio.Event | None = None

    def add(self, item: PayoutOrder) -> None:
        self.orders[item.withdrawal_id] = item
        self.status[item.withdrawal_id] = "pending"

    def calls_of(self, method: str, withdrawal_id: str | None = None) -> list[tuple[Any, ...]]:
        return [call for call in self.calls
                if call[0] == method and (withdrawal_id is None or call[1] == withdrawal_id)]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            if self._changed is None or self._changed.is_set():
                self._changed = anyio.Event()
            await self._changed.wait()

    async def wait_settled(self, ids: list[str] | None = None) -> None:
        wanted = list(self.orders) if ids is None else ids
        await self.wait_until(lambda: all(self.status[item] not in PAYABLE for item in wanted))

    def _record(self, method: str, *arguments: Any) -> None:
        self.calls.append((method, *arguments, self.clock()))
        self._changed_now()
        failures = self.raises.get(method)
        if failures:
            raise failures.pop(0)

    def _changed_now(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def payable(self) -> list[PayoutOrder]:
        self._record("payable", None)
        await anyio.sleep(0)
        return [self.orders[key] for key, status in self.status.items() if status in PAYABLE]

    async def begin_attempt(self, withdrawal_id: str) -> PayoutOrder | None:
        self._record("begin_attempt", withdrawal_id)
        await anyio.sleep(0)
        if self.status.get(withdrawal_id) not in PAYABLE:
            return None
        item = self.orders[withdrawal_id]
        item = dataclasses.replace(item, attempts=item.attempts + 1)
        self.orders[withdrawal_id] = item
        self.status[withdrawal_id] = "processing"
        self._changed_now()
        return item

    async def paid(self, withdrawal_id: str, bank_reference: str | None) -> None:
        self._record("paid", withdrawal_id, bank_reference)
        await anyio.sleep(0)
        assert self.status[withdrawal_id] == "processing"
        self.status[withdrawal_id] = "completed"
        self.reference[withdrawal_id] = bank_reference
        self._changed_now()

    async def refused(self, withdrawal_id: str, reason: str) -> None:
        self._record("refused", withdrawal_id, reason)
        await anyio.sleep(0)
        assert self.status[withdrawal_id] == "processing"
        self.status[withdrawal_id] = "failed"
        self.reason[withdrawal_id] = reason
        self._changed_now()

    async def transient(self, withdrawal_id: str, error: str, retry_at_us: int) -> None:
        self._record("transient", withdrawal_id, error, retry_at_us)
        await anyio.sleep(0)
        assert self.status[withdrawal_id] == "processing"
        self.orders[withdrawal_id] = dataclasses.replace(self.orders[withdrawal_id], next_attempt_at_us=retry_at_us)
        self._changed_now()

    async def dead(self, withdrawal_id: str, error: str) -> None:
        self._record("dead", withdrawal_id, error)
        await anyio.sleep(0)
        assert self.status[withdrawal_id] == "processing"
        self.status[withdrawal_id] = "dead"
        self.reason[withdrawal_id] = error
        self._changed_now()

    def retry(self, withdrawal_id: str) -> None:
        """What ``POST /v1/withdrawals/{id}/retry`` does to a dead one."""
        assert self.status[withdrawal_id] == "dead"
        self.status[withdrawal_id] = "pending"
        self.orders[withdrawal_id] = dataclasses.replace(self.orders[withdrawal_id], attempts=0)
        self._changed_now()


PAID = BankResult(outcome="paid", detail="", reference="ref")
REFUSED = BankResult(outcome="refused", detail="422 account_closed: closed")
TRANSIENT = BankResult(outcome="transient", detail="503 unavailable")
HANG = "hang"  # the bank never answers
RAISE = "raise"  # the bank raises


class FakeBank:
    """Answers from a script per withdrawal (then ``default``); counts concurrent calls."""

    def __init__(self, script: dict[str, list[Any]] | None = None, *, default: Any = PAID,
                 latency_s: float = 0.01, clock: Callable[[], int] = lambda: 0,
                 journal: list[tuple[Any, ...]] | None = None) -> None:
        self.script = {key: list(value) for key, value in (script or {}).items()}
        self.default = default
        self.latency_s = latency_s
        self.clock = clock
        self.calls: list[tuple[str, int, int]] = []  # (id, attempts, clock)
        self.in_flight = 0
        self.in_flight_max = 0
        self.entered: anyio.Event | None = None  # set at each call's start, for tests that wait
        self.journal = journal  # e.g. the ledger's calls, to see the order of ledger and bank calls

    def calls_for(self, withdrawal_id: str) -> list[tuple[str, int, int]]:
        return [call for call in self.calls if call[0] == withdrawal_id]

    async def pay(self, order: PayoutOrder) -> BankResult:
        self.calls.append((order.withdrawal_id, order.attempts, self.clock()))
        if self.journal is not None:
            self.journal.append(("bank", order.withdrawal_id, order.attempts, self.clock()))
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        if self.entered is not None:
            self.entered.set()
        try:
            script = self.script.get(order.withdrawal_id)
            answer = script.pop(0) if script else self.default
            if answer == HANG:
                await anyio.sleep_forever()
            await anyio.sleep(self.latency_s)
            if answer == RAISE:
                raise RuntimeError("the bank client blew up")
            assert isinstance(answer, BankResult)
            if answer.outcome == "paid":
                return dataclasses.replace(answer, reference=f"ref-{order.withdrawal_id}")
            return answer
        finally:
            self.in_flight -= 1


class Receivers(httpx.AsyncBaseTransport):
    """Routes each request to the ASGI app of its host (``http://<host>/...``), in process; a
    host without an app refuses the connection, as a receiver that is down does."""

    def __init__(self, apps: dict[str, Any]) -> None:
        self._transports = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self._transports.get(request.url.host)
        if transport is None:
            raise httpx.ConnectError("connection refused", request=request)
        return await transport.handle_async_request(request)
