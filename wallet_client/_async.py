"""``AsyncWalletClient``: the routes of ``_operations`` over an ``httpx.AsyncClient``, on any
event loop anyio runs on (asyncio, uvloop, trio). This module only sends and sleeps; what to
send, how to read the answer and whether to try again are ``_core``'s and ``_retry``'s.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio
import httpx

from wallet_client._core import AsyncSender, Call, Exchange, Retry, new_key
from wallet_client._operations import Operations
from wallet_client._retry import RetryPolicy
from wallet_client._sync import DEFAULT_TIMEOUT_S

T = TypeVar("T")


class AsyncWalletClient(AsyncSender, Operations):
    """The asynchronous twin of ``WalletClient``: the same methods, awaited; the ``iter_*``
    methods are async iterators. Same keys, retries and errors.

    Example::

        from wallet_client import AsyncWalletClient

        async with AsyncWalletClient("http://127.0.0.1:8080", token=admin_token) as client:
            await client.create_wallet("alice", "USD", id="alice-usd")
            tx = await client.deposit("alice-usd", 100_00, idempotency_key="welcome-alice")
            async for event in client.iter_events(after=0):
                print(event.lsn, event.type)

    Works under asyncio and trio (httpx and the retries' sleeps go through anyio).
    """

    def __init__(
        self,
        base_url: str = "",
        *,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
        key_factory: Callable[[], str] = new_key,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
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
            http = httpx.AsyncClient(base_url=base_url, headers=all_headers, timeout=timeout_s, transport=transport,
                                     limits=limits or httpx.Limits())
        self.http = http
        self._key_factory = key_factory
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    def _new_key(self) -> str:
        return self._key_factory()

    async def _run(self, call: Call[T]) -> T:
        exchange = Exchange(call, self.retry, self._rng)
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if call.extra_timeout_s:
            timeout = self.timeout_s + call.extra_timeout_s
        request = self.http.build_request(**call.request_parts(), timeout=timeout)
        started = self._clock()
        while True:
            step: T | Retry
            try:
                response = await self.http.send(request)
            except httpx.TransportError as error:
                step = exchange.failed(error, self._clock() - started)
            else:
                step = exchange.answered(response.status_code, response.headers, response.content,
                                         self._clock() - started)
            if not isinstance(step, Retry):
                return step
            await self._sleep(step.delay_s)

    async def aclose(self) -> None:
        """Closes the HTTP connections (not those of an ``http`` client passed in)."""
        if self._owned:
            await self.http.aclose()

    async def __aenter__(self) -> AsyncWalletClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
