"""One long-lived thread for the writer's blocking work (framing, ``write``, ``fdatasync``).

``anyio.to_thread.run_sync`` hands each call to a thread from a cache and back through a cancel
scope and an outcome object: about 120 µs of CPU per call on this project's machine, paid once
per group commit, in the process that should do nothing but ledger work. Here the thread stays,
jobs go through a ``SimpleQueue`` and the event loop is woken with its own thread-safe
"call soon" (trio's token or asyncio's loop): about 40 µs per call, measured the same way
(``docs/performance.md``).

A job runs to its end whatever happens to the task that waits for it (the wait is shielded), as
with ``to_thread.run_sync``: a write half done must be known before anything else happens.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

import anyio


def call_soon_threadsafe() -> Callable[[Callable[[], object]], object]:
    """The running event loop's way to run a function soon, callable from another thread (the
    WAL writer's here; the NATS client's in ``server._natsport``). Once the loop has ended it
    raises ``RuntimeError`` (trio's ``RunFinishedError`` is one)."""
    try:
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    except RuntimeError:  # not inside trio
        return asyncio.get_running_loop().call_soon_threadsafe


class BlockingThread:
    """Runs blocking functions one at a time in one thread started on first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._call_soon: Callable[[Callable[[], object]], object] | None = None

    async def run_sync(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in the thread; its result, or its exception raised here."""
        if self._thread is None:
            self._call_soon = call_soon_threadsafe()
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()
        call_soon = self._call_soon
        assert call_soon is not None
        done = anyio.Event()
        outcome: list[Any] = []

        def job() -> None:
            try:
                outcome.append((True, function(*args)))
            except BaseException as error:  # handed to the waiting task, which raises it
                outcome.append((False, error))
            call_soon(done.set)

        self._jobs.put(job)
        with anyio.CancelScope(shield=True):
            await done.wait()
        succeeded, value = outcome[0]
        if not succeeded:
            raise value
        return value

    def close(self) -> None:
        """Lets the thread end once its queued jobs are done (it is a daemon: never waited for)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()
