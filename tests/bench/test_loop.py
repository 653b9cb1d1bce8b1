"""Open and closed loops under trio's MockClock: the open loop measures latency from the intended
send time (coordinated omission is not hidden), the closed loop from the actual send."""

from __future__ import annotations

import itertools

import trio
import trio.testing

from bench._loop import Outcome, Recorder, Schedule, closed_loop, open_loop
from bench._scenario import Op, Transfers

SERVICE_S = 0.010  # the fake server answers in 10 ms
OP = Transfers((("a", "b"),))


async def fake_server(op: Op) -> Outcome:
    await trio.sleep(SERVICE_S)
    return Outcome(status="201", transfers=1, transfers_ok=1)


async def test_open_loop_latency_counts_from_the_intended_send_time(autojump_clock: trio.testing.MockClock) -> None:
    # 200 requests/s intended (one every 5 ms) on one connection that takes 10 ms each: the
    # server falls behind by 5 ms per request, and the figures must show it.
    start = trio.current_time()
    end = start + 0.095  # off the 10 ms grid, so float sums of sleeps cannot straddle it
    recorder = Recorder(start, end)
    schedule = Schedule(start=start, rate=200)
    seen: list[float] = []

    async def timed(op: Op) -> Outcome:
        seen.append(trio.current_time() - start)
        return await fake_server(op)

    await open_loop([timed], lambda: OP, recorder, schedule, end=end, now=trio.current_time, sleep=trio.sleep)
    assert [round(t * 1000) for t in seen] == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    # Request k was due at 5k ms and answered at 10(k+1) ms: latency 5k + 10 ms.
    expected_ms = [5 * k + 10 for k in range(10)]
    assert recorder.requests == 10
    assert recorder.histogram.min_us == 10_000
    assert recorder.histogram.max_us == 55_000
    assert recorder.histogram.sum_us == 1000 * sum(expected_ms)
    assert recorder.histogram.percentile_us(0.5) == _bucket_top(30_000)
    # The 9 sends due at 50..90 ms never went out: counted, not forgotten.
    assert recorder.missed_sends == 9


async def test_closed_loop_latency_counts_from_the_actual_send(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    end = start + 0.095
    recorder = Recorder(start, end)
    await closed_loop([fake_server], lambda: OP, recorder, start=start, end=end, now=trio.current_time,
                      sleep=trio.sleep)
    assert recorder.requests == 10
    assert recorder.histogram.min_us == recorder.histogram.max_us == 10_000
    assert recorder.missed_sends == 0


async def test_open_loop_that_keeps_up_has_service_latency_only(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    end = start + 0.995
    recorder = Recorder(start, end)
    schedule = Schedule(start=start, rate=50)  # every 20 ms, served in 10 ms
    await open_loop([fake_server, fake_server], lambda: OP, recorder, schedule, end=end, now=trio.current_time,
                    sleep=trio.sleep)
    assert recorder.requests == 50
    assert recorder.histogram.min_us == recorder.histogram.max_us == 10_000
    assert recorder.missed_sends == 0


async def test_warm_up_requests_run_but_are_not_recorded(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    recorder = Recorder(start + 0.045, start + 0.095)
    await closed_loop([fake_server], lambda: OP, recorder, start=start, end=start + 0.095, now=trio.current_time,
                      sleep=trio.sleep)
    assert recorder.warmup_requests == 5
    assert recorder.requests == 5


def test_processes_interleave_into_one_even_schedule() -> None:
    schedules = [Schedule(start=100.0, rate=1000, processes=3, phase=phase) for phase in range(3)]
    times = sorted(s.at(i) for s in schedules for i in range(10))
    gaps = {round((b - a) * 1e6) for a, b in itertools.pairwise(times)}
    assert gaps == {1000}
    for s in schedules:
        assert s.count_before(100.01) == sum(1 for i in range(20) if s.at(i) < 100.01)
        assert s.count_before(99.0) == 0


def _bucket_top(value_us: int) -> int:
    from bench._histogram import bucket_bounds, bucket_of

    return bucket_bounds(bucket_of(value_us))[1]
