"""A mergeable latency histogram in integer microseconds (log-linear buckets, HdrHistogram's idea
in a few lines), so several generator processes can be combined exactly: counts add, and
percentiles are computed once from the merged counts. Averaging per-process percentiles would be
wrong (the p99 of a union is not the mean of p99s).

Buckets: every value below ``2 * SUB_BUCKETS`` (256 µs) has its own bucket; above, each power of
two is split into ``SUB_BUCKETS`` (128) equal buckets, so a bucket's width is at most 1/128 of its
lower bound. A percentile is the nearest-rank value's bucket upper bound, clamped to the largest
value seen: it never under-reports, and over-reports by less than 0.8%.

This module knows nothing of HTTP, trio or the ledger; it never reads a clock.
"""

from __future__ import annotations

import math
from typing import Any

SUB_BUCKET_BITS = 7
SUB_BUCKETS = 1 << SUB_BUCKET_BITS
EXACT_BELOW = 2 * SUB_BUCKETS
assert SUB_BUCKETS == 128
assert EXACT_BELOW == 256

# The percentiles every report shows (as fractions), with their labels.
PERCENTILES = ((0.50, "p50"), (0.90, "p90"), (0.99, "p99"), (0.999, "p99.9"))


def bucket_of(value_us: int) -> int:
    assert value_us >= 0
    if value_us < EXACT_BELOW:
        return value_us
    shift = value_us.bit_length() - (SUB_BUCKET_BITS + 1)
    assert shift >= 1
    mantissa = value_us >> shift
    assert SUB_BUCKETS <= mantissa < 2 * SUB_BUCKETS
    return shift * SUB_BUCKETS + mantissa


def bucket_bounds(index: int) -> tuple[int, int]:
    """The smallest and the largest value (inclusive) that fall in bucket ``index``."""
    assert index >= 0
    if index < EXACT_BELOW:
        return index, index
    shift = index // SUB_BUCKETS - 1
    mantissa = index - shift * SUB_BUCKETS
    assert SUB_BUCKETS <= mantissa < 2 * SUB_BUCKETS
    return mantissa << shift, ((mantissa + 1) << shift) - 1


class Histogram:
    """Counts per bucket, plus the exact count, sum, min and max."""

    __slots__ = ("count", "counts", "max_us", "min_us", "sum_us")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.sum_us = 0
        self.min_us = 0
        self.max_us = 0

    def record(self, value_us: int, times: int = 1) -> None:
        assert times >= 1
        value_us = max(0, int(value_us))
        index = bucket_of(value_us)
        self.counts[index] = self.counts.get(index, 0) + times
        if self.count == 0 or value_us < self.min_us:
            self.min_us = value_us
        if value_us > self.max_us:
            self.max_us = value_us
        self.count += times
        self.sum_us += value_us * times

    def record_seconds(self, seconds: float) -> None:
        self.record(round(seconds * 1_000_000))

    def merge(self, other: Histogram) -> None:
        if other.count == 0:
            return
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        self.min_us = other.min_us if self.count == 0 else min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)
        self.count += other.count
        self.sum_us += other.sum_us

    def percentile_us(self, fraction: float) -> int | None:
        """The nearest-rank percentile (``fraction`` in (0, 1]); None when empty."""
        assert 0 < fraction <= 1
        if self.count == 0:
            return None
        rank = nearest_rank(fraction, self.count)
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return max(self.min_us, min(bucket_bounds(index)[1], self.max_us))
        raise AssertionError("counts do not add up to count")

    def mean_us(self) -> float | None:
        return None if self.count == 0 else self.sum_us / self.count

    def summary_ms(self) -> dict[str, float | None]:
        """p50/p90/p99/p99.9/max (and mean) in milliseconds, for reports."""
        figures: dict[str, float | None] = {}
        for fraction, label in PERCENTILES:
            value = self.percentile_us(fraction)
            figures[label] = None if value is None else value / 1000
        figures["max"] = self.max_us / 1000 if self.count else None
        mean = self.mean_us()
        figures["mean"] = None if mean is None else mean / 1000
        return figures

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count, "sum_us": self.sum_us, "min_us": self.min_us, "max_us": self.max_us,
            "buckets": {str(index): count for index, count in sorted(self.counts.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        histogram = cls()
        histogram.counts = {int(index): int(count) for index, count in data["buckets"].items()}
        histogram.count = int(data["count"])
        histogram.sum_us = int(data["sum_us"])
        histogram.min_us = int(data["min_us"])
        histogram.max_us = int(data["max_us"])
        assert sum(histogram.counts.values()) == histogram.count
        return histogram


def exact_percentile(values: list[int], fraction: float) -> int:
    """Nearest-rank percentile of raw values: the reference the histogram is tested against."""
    assert values
    ordered = sorted(values)
    return ordered[nearest_rank(fraction, len(ordered)) - 1]


def nearest_rank(fraction: float, count: int) -> int:
    """The 1-based rank of the ``fraction`` percentile among ``count`` values. The tolerance
    keeps float error from pushing an exact product up a rank (0.999 * 1000 is 999.0000000000001)."""
    assert 0 < fraction <= 1
    assert count >= 1
    return min(count, max(1, math.ceil(fraction * count - 1e-9)))
