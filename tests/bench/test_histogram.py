"""The mergeable histogram against exact nearest-rank percentiles computed from the raw values."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bench._histogram import (
    EXACT_BELOW,
    SUB_BUCKETS,
    Histogram,
    bucket_bounds,
    bucket_of,
    exact_percentile,
    nearest_rank,
)
from bench._loop import Outcome, Recorder

FRACTIONS = [0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0]


def values(seed: int, count: int) -> list[int]:
    rng = random.Random(seed)
    # Latency-like: mostly a few ms, a long tail to seconds, and some exact small values.
    return [int(rng.lognormvariate(8.5, 1.2)) if rng.random() < 0.95 else rng.randrange(0, 300) for _ in range(count)]


def histogram_of(items: list[int]) -> Histogram:
    histogram = Histogram()
    for item in items:
        histogram.record(item)
    return histogram


def test_every_value_falls_in_its_bucket_and_buckets_are_narrow() -> None:
    probes = list(range(0, 70_000)) + [2**k + d for k in range(17, 40) for d in (-1, 0, 1)]
    previous = -1
    for value in probes:
        index = bucket_of(value)
        lower, upper = bucket_bounds(index)
        assert lower <= value <= upper
        if value < EXACT_BELOW:
            assert lower == upper == value
        assert upper - lower + 1 <= max(1, lower // SUB_BUCKETS)
        if value < 70_000:
            assert index >= previous  # monotonic: sorted buckets are sorted values
            previous = index
    for index in range(0, 5000):  # buckets tile the line with no gap and no overlap
        assert bucket_bounds(index + 1)[0] == bucket_bounds(index)[1] + 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_are_the_exact_values_bucket_upper_bound(seed: int) -> None:
    raw = values(seed, 5000)
    histogram = histogram_of(raw)
    for fraction in FRACTIONS:
        exact = exact_percentile(raw, fraction)
        reported = histogram.percentile_us(fraction)
        assert reported == max(min(raw), min(bucket_bounds(bucket_of(exact))[1], max(raw)))
        assert exact <= reported <= exact + exact / SUB_BUCKETS
    assert histogram.count == len(raw)
    assert histogram.min_us == min(raw)
    assert histogram.max_us == max(raw)
    assert histogram.sum_us == sum(raw)


def test_merged_histograms_equal_the_histogram_of_all_values() -> None:
    parts = [values(seed, size) for seed, size in ((4, 3000), (5, 10), (6, 700))]
    merged = Histogram()
    for part in parts:
        merged.merge(histogram_of(part))
    everything = [value for part in parts for value in part]
    whole = histogram_of(everything)
    assert merged.counts == whole.counts
    assert (merged.count, merged.sum_us, merged.min_us, merged.max_us) == (
        whole.count, whole.sum_us, whole.min_us, whole.max_us)
    for fraction in FRACTIONS:
        assert merged.percentile_us(fraction) == whole.percentile_us(fraction)
        exact = exact_percentile(everything, fraction)
        assert exact <= merged.percentile_us(fraction) <= exact + exact / SUB_BUCKETS  # type: ignore[operator]


def test_merging_is_not_averaging_percentiles() -> None:
    fast = [1000] * 990 + [2000] * 10  # p99 2 ms... of a fast process
    slow = [50_000] * 100  # and a slow one
    merged = histogram_of(fast)
    merged.merge(histogram_of(slow))
    averaged = (histogram_of(fast).percentile_us(0.99) + histogram_of(slow).percentile_us(0.99)) / 2  # type: ignore[operator]
    exact = exact_percentile(fast + slow, 0.99)
    assert exact == 50_000
    assert merged.percentile_us(0.99) == 50_000
    assert averaged != exact


def test_nearest_rank_is_not_pushed_up_by_float_error() -> None:
    assert nearest_rank(0.999, 1000) == 999
    assert nearest_rank(0.99, 100) == 99
    assert nearest_rank(0.5, 1) == 1
    assert nearest_rank(0.001, 10) == 1
    assert nearest_rank(1.0, 7) == 7


def test_empty_and_json_round_trip() -> None:
    empty = Histogram()
    assert empty.percentile_us(0.5) is None
    assert empty.summary_ms()["p99"] is None
    empty.merge(Histogram())
    assert empty.count == 0
    full = histogram_of(values(9, 500))
    again = Histogram.from_json(full.to_json())
    assert again.counts == full.counts
    assert again.percentile_us(0.99) == full.percentile_us(0.99)


def test_recorders_merge_by_window_second_and_round_trip_through_json() -> None:
    a, b = Recorder(10.0, 13.0), Recorder(10.0, 13.0)
    a.record(9.5, 9.6, Outcome(status="201", transfers=1, transfers_ok=1))  # warm-up: not counted
    a.record(10.2, 10.25, Outcome(status="201", transfers=1, transfers_ok=1))
    b.record(10.7, 10.8, Outcome(status="422", transfers=1, errors=Counter({"422 insufficient_funds": 1})))
    b.record(12.1, 12.3, Outcome(status="200", transfers=4, transfers_ok=3, errors=Counter({"item 409 x": 1})))
    b.record(13.0, 13.1, Outcome(status="201", transfers=1, transfers_ok=1))  # after the window
    merged = Recorder.from_json(a.to_json())
    merged.merge(Recorder.from_json(b.to_json()))
    assert merged.requests == 3
    assert merged.transfers == 6
    assert merged.transfers_ok == 4
    assert merged.warmup_requests == 1
    assert merged.errors == Counter({"422 insufficient_funds": 1, "item 409 x": 1})
    assert merged.statuses == Counter({"201": 1, "422": 1, "200": 1})
    assert sorted(merged.seconds) == [0, 2]
    assert merged.seconds[0].requests == 2
    assert merged.seconds[2].transfers_ok == 3
    assert merged.histogram.max_us == 200_000
    assert merged.histogram.min_us == 50_000
