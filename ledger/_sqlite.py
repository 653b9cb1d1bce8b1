"""A dedicated thread running its own asyncio loop, so aiosqlite can serve a trio program.

aiosqlite delivers results through asyncio futures; awaited directly under trio it fails on the
first await. Rather than run the whole server on trio-asyncio, the history read model's asyncio
code lives on one thread with its own loop (``AsyncioThread``); trio awaits a call by submitting
the coroutine with ``run_coroutine_threadsafe`` and being woken through its own token when the
future completes. ADR 0003 records the choice and the alternatives measured.

Only coroutines that touch the database run on that loop; nothing on it touches ledger state.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio
import trio

T = TypeVar("T")


class AsyncioThread:
    """One daemon thread running an asyncio loop until ``stop``."""

    def __init__(self, name: str) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def submit(self, coroutine: Awaitable[T]) -> Future[T]:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)  # type: ignore[arg-type]

    def run_blocking(self, coroutine: Awaitable[T]) -> T:
        """For start-up and tools: block the calling (non-asyncio) thread until done."""
        return self.submit(coroutine).result()

    async def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Runs ``function(*args)`` on the asyncio loop and waits for it from trio without
        occupying a worker thread. If the caller is cancelled, the coroutine is cancelled too."""
        future = self.submit(function(*args))
        done = anyio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: Future[T]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
