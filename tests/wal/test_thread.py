"""The writer's long-lived thread: results, exceptions and cancellation, on trio and asyncio."""

from __future__ import annotations

import threading

import anyio
import pytest

from wal._thread import BlockingThread

BACKENDS = ["trio", "asyncio"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_runs_in_one_other_thread_in_order_and_returns_results(backend: str) -> None:
    async def main() -> None:
        thread = BlockingThread("test-writer")
        seen: list[tuple[int, int]] = []

        def job(number: int) -> int:
            seen.append((number, threading.get_ident()))
            return number * 2

        results = [await thread.run_sync(job, number) for number in range(50)]
        thread.close()
        assert results == [number * 2 for number in range(50)]
        assert [number for number, _ in seen] == list(range(50))
        (ident,) = {ident for _, ident in seen}
        assert ident != threading.get_ident()

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_exception_in_the_thread_is_raised_to_the_caller(backend: str) -> None:
    async def main() -> None:
        thread = BlockingThread("test-writer")

        def fail() -> None:
            raise OSError(5, "disk said no")

        with pytest.raises(OSError, match="disk said no"):
            await thread.run_sync(fail)
        assert await thread.run_sync(lambda: "still serving") == "still serving"
        thread.close()

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancelled_caller_still_waits_for_its_job_to_end(backend: str) -> None:
    async def main() -> None:
        thread = BlockingThread("test-writer")
        started = threading.Event()
        release = threading.Event()
        finished: list[str] = []

        def slow() -> None:
            started.set()
            release.wait(5)
            finished.append("done")

        async def caller(scope: anyio.CancelScope) -> None:
            with scope:
                await thread.run_sync(slow)
                finished.append("returned")
                await anyio.sleep(0)
            finished.append("caller went on")

        scope = anyio.CancelScope()
        async with anyio.create_task_group() as group:
            group.start_soon(caller, scope)
            await anyio.to_thread.run_sync(started.wait)
            scope.cancel()
            await anyio.sleep(0.05)
            assert finished == []  # shielded: the caller has not been torn out mid-write
            release.set()
        assert finished == ["done", "returned", "caller went on"]
        thread.close()

    anyio.run(main, backend=backend)
