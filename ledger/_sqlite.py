"""Where the history read model's aiosqlite coroutines run: on the server's own asyncio loop when
there is one, else on a dedicated thread running an asyncio loop of its own.

aiosqlite delivers results through asyncio futures created on the awaiting thread's running
loop; awaited directly under trio (which has none) it fails on the first await. So:

- ``AsyncioThread`` runs one asyncio loop on a daemon thread. The caller (trio, or any plain
  thread) submits a coroutine with ``run_coroutine_threadsafe`` and is woken through its own
  event loop's token (anyio's, so the same code serves trio and asyncio) when the future
  completes. Recovery and the command-line tools always use it: they are blocking code.
- ``Native`` awaits the coroutine in place. ``History.attach`` switches to it when the server
  runs on asyncio or uvloop (``wallet serve --loop``), so a query costs aiosqlite's own hop to
  its connection thread and back, not two more through the extra loop; the thread is stopped.

An aiosqlite connection is not bound to a loop (each call makes its future on the caller's
running loop), so a connection opened on the thread during recovery carries on natively. ADR
0003 records the choice and the measurements.

Only coroutines that touch the database run here; nothing on them touches ledger state.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

T = TypeVar("T")


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop running in this thread (asyncio or uvloop), None under trio."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


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
        """For start-up and tools: block the calling (non-event-loop) thread until done."""
        return self.submit(coroutine).result()

    async def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Runs ``function(*args)`` on the thread's loop and waits for it from the caller's event
        loop (trio or asyncio) without occupying a worker thread. If the caller is cancelled,
        the coroutine is cancelled too."""
        future = self.submit(function(*args))
        done = anyio.Event()
        token = anyio.lowlevel.current_token()

        def wake(_: Future[T]) -> None:
            # Runs on this thread; must not block it, so schedule rather than run the wake-up
            # (the backend's ``run_sync_soon`` is what anyio's own blocking portal uses).
            try:
                token.backend_class.run_sync_soon(done.set, (), token.native_token)
            except anyio.RunFinishedError:
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


class Native:
    """aiosqlite on the caller's own asyncio loop: the coroutine is awaited in place."""

    async def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await function(*args)
