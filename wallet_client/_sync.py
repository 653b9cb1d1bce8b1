"""``WalletClient``: the routes of ``_operations`` over a blocking ``httpx.Client``. This module
only sends and sleeps; what to send, how to read the answer and whether to try again are
``_core``'s and ``_retry``'s.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx

from wallet_client._core import Call, Exchange, Retry, SyncSender, new_key
from wallet_client._operations import Operations
from wallet_client._retry import RetryPolicy

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 30.0


class WalletClient(SyncSender, Operations):
    """A blocking client of the wallet ledger's HTTP API: one method per route.

    Money-moving calls get an ``Idempotency-Key`` (made unless you pass ``idempotency_key``)
    that is sent again on every retry; transport errors, ``429`` and ``503`` are retried as
    ``retry`` allows (``RetryPolicy``), honouring ``Retry-After``. Problem answers raise
    ``WalletError`` subclasses carrying ``code``. ``iter_*`` methods walk every page.

    Example::

        from wallet_client import WalletClient, InsufficientFunds

        with WalletClient("http://127.0.0.1:8080", token=admin_token) as client:
            client.create_asset("USD", scale=2)
            client.create_wallet("alice", "USD", id="alice-usd")
            client.create_wallet("bob", "USD", id="bob-usd")
            client.deposit("alice-usd", 100_00)
            tx = client.transfer("alice-usd", "bob-usd", 25_00, description="lunch")
            for entry in client.iter_wallet_transactions("alice-usd"):
                print(entry.direction, entry.amount, entry.balance_after)
            try:
                client.transfer("alice-usd", "bob-usd", 10**9)
            except InsufficientFunds as error:
                print(error.code, error.detail)

    ``http`` may be an ``httpx.Client`` of your own (its base URL and headers are used as they
    are, and you close it); ``transport`` an ``httpx`` transport for the client made here.
    ``sleep``, ``clock`` and ``rng`` are there for tests.
    """

    def __init__(
        self,
        base_url: str = "",
        *,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        http: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        key_factory: Callable[[], str] = new_key,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s
        self._owned = http is None
        if http is None:
            all_headers = dict(headers or {})
            if token is not None:
                all_headers["Authorization"] = f"Bearer {token}"
            http = httpx.Client(base_url=base_url, headers=all_headers, timeout=timeout_s, transport=transport)
        self.http = http
        self._key_factory = key_factory
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    def _new_key(self) -> str:
        return self._key_factory()

    def _run(self, call: Call[T]) -> T:
        exchange = Exchange(call, self.retry, self._rng)
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if call.extra_timeout_s:
            timeout = self.timeout_s + call.extra_timeout_s
        request = self.http.build_request(**call.request_parts(), timeout=timeout)
        started = self._clock()
        while True:
            step: T | Retry
            try:
                response = self.http.send(request)
            except httpx.TransportError as error:
                step = exchange.failed(error, self._clock() - started)
            else:
                step = exchange.answered(response.status_code, response.headers, response.content,
                                         self._clock() - started)
            if not isinstance(step, Retry):
                return step
            self._sleep(step.delay_s)

    def close(self) -> None:
        """Closes the HTTP connections (not those of an ``http`` client passed in)."""
        if self._owned:
            self.http.close()

    def __enter__(self) -> WalletClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
