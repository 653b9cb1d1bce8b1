"""A scripted HTTP server for the client's tests, as an ``httpx.MockTransport``: it records
every request and answers from a queue of responses (or one fixed response)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from wallet_client import AsyncWalletClient, RetryPolicy, WalletClient

NOW = "2026-11-22T10:00:00.123456Z"
WALLET = {"id": "w-1", "owner_id": "alice", "asset": "USD", "balance": 1500, "held": 200, "available": 1300,
          "status": "active", "metadata": {"k": "v"}, "created_at": NOW, "updated_at": NOW}
TRANSACTION = {"id": "tx_1", "type": "transfer", "status": "posted", "from_wallet_id": "w-1",
               "to_wallet_id": "w-2", "asset": "USD", "amount": 100, "description": None, "metadata": {},
               "created_at": NOW, "lsn": 7}
ENTRY = {"transaction_id": "tx_1", "type": "transfer", "status": "posted", "direction": "debit", "amount": 100,
         "balance_after": 1400, "counterparty_wallet_id": "w-2", "description": None, "created_at": NOW, "lsn": 7}
ASSET = {"code": "USD", "scale": 2, "treasury_wallet_id": "treasury:USD", "created_at": NOW}
WITHDRAWAL = {"id": "wd_1", "wallet_id": "w-1", "amount": 100, "asset": "USD", "status": "pending", "attempts": 0,
              "destination": {"iban": "X"}, "last_error": None, "bank_reference": None, "next_attempt_at": None,
              "created_at": NOW, "updated_at": NOW}
EVENT = {"lsn": 3, "type": "transfer.posted", "created_at": NOW, "data": TRANSACTION}
ALERT = {"id": "al_1", "wallet_id": "w-1", "field": "available", "below": 100, "state": "armed", "created_at": NOW}
WEBHOOK = {"id": "wh_1", "url": "https://example.com/hook", "events": ["*"], "status": "enabled",
           "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "created_at": NOW}
DELIVERY = {"event_id": "evt_3_0", "attempt": 1, "status_code": 500, "error": None, "at": NOW}


def reply(status: int = 200, body: Any = None, *, headers: dict[str, str] | None = None,
          problem: bool = False) -> httpx.Response:
    content_type = "application/problem+json" if problem else "application/json"
    return httpx.Response(status, content=json.dumps(body).encode(),
                          headers={"content-type": content_type, **(headers or {})})


def problem(status: int, code: str, detail: str = "", **extra: Any) -> httpx.Response:
    headers = {}
    if "retry_after" in extra:
        headers["retry-after"] = str(extra.pop("retry_after"))
    body = {"type": "about:blank", "title": code.replace("_", " ").capitalize(), "status": status, "code": code,
            "detail": detail, **extra}
    return reply(status, body, headers=headers, problem=True)


def snapshot(request: httpx.Request) -> httpx.Request:
    """What ``request`` is now (method, URL, headers, body), apart from later changes to it."""
    return httpx.Request(request.method, request.url, headers=request.headers.copy(), content=request.content,
                         extensions=dict(request.extensions))


Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeServer:
    """Answers with ``script`` in order (the last one repeats); records the requests."""

    script: list[Answer] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        # A copy: the client sends the same Request object on every attempt, and a record must
        # show what each attempt carried.
        self.requests.append(snapshot(request))
        answer = self.script[min(len(self.requests), len(self.script)) - 1]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer

    def bodies(self) -> list[Any]:
        return [json.loads(request.content) if request.content else None for request in self.requests]

    def keys(self) -> list[str | None]:
        return [request.headers.get("idempotency-key") for request in self.requests]


@dataclass
class Sleeps:
    """A fake clock and sleep: sleeping advances the clock."""

    now: float = 0.0
    slept: list[float] = field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def clock(self) -> float:
        return self.now


def sync_client(server: FakeServer, *, retry: RetryPolicy | None = None, sleeps: Sleeps | None = None,
                **options: Any) -> WalletClient:
    sleeps = sleeps or Sleeps()
    return WalletClient("http://wallet.test", token="tok", transport=httpx.MockTransport(server),
                        retry=retry, sleep=sleeps.sleep, clock=sleeps.clock, **options)


def async_client(server: FakeServer, *, retry: RetryPolicy | None = None, sleeps: Sleeps | None = None,
                 **options: Any) -> AsyncWalletClient:
    sleeps = sleeps or Sleeps()
    return AsyncWalletClient("http://wallet.test", token="tok", transport=httpx.MockTransport(server),
                             retry=retry, sleep=sleeps.async_sleep, clock=sleeps.clock, **options)
